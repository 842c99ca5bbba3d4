//! Kernels as data: each is a small struct naming its path, its tile and the `unsafe fn` that runs
//! it, with one safe door that checks the bounds the kernel relies on. Which kernel a path runs
//! is [`crate::dispatch`]'s business; a kernel value is only ever handed out for a path the CPU
//! supports, so holding one is the proof that the CPU has its features.

use crate::isa::Isa;
use crate::pack::{GROUP_BYTES, PANEL};
use crate::reference::{self, MinMax};

/// How a kernel wants the quantized activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AFormat {
    /// u8, row-major, rows padded with zeros to a multiple of 4.
    U8,
    /// u8 values widened to i16 (for `vpmaddwd`), same layout.
    I16,
}

/// Activation rows handed to a microkernel.
#[derive(Clone, Copy, Debug)]
pub enum AData<'a> {
    /// For [`AFormat::U8`] kernels.
    U8(&'a [u8]),
    /// For [`AFormat::I16`] kernels.
    I16(&'a [i16]),
}

impl AData<'_> {
    fn len(&self) -> usize {
        match self {
            AData::U8(a) => a.len(),
            AData::I16(a) => a.len(),
        }
    }
}

/// One microkernel call: `c[r][j] = sum_{p < 4*k4} a[r][p] * b[p][j]` for `r < rows` and
/// `j < 16*panels`, overwriting `c`.
#[derive(Debug)]
pub struct Tile<'a> {
    /// Rows of A (and C), `1..=mr`.
    pub rows: usize,
    /// 16-column panels of B (and C), `1..=np`.
    pub panels: usize,
    /// Groups of 4 along K.
    pub k4: usize,
    /// A from row 0 and the first k of this tile; row `r` starts at `r * lda`.
    pub a: AData<'a>,
    /// Row stride of A in elements (a multiple of 4).
    pub lda: usize,
    /// B from panel 0 and the first k group; panel `p` starts at `p * panel_stride`.
    pub b: &'a [i8],
    /// Bytes from one panel to the next.
    pub panel_stride: usize,
    /// Output tile, row `r` at `r * ldc`.
    pub c: &'a mut [i32],
    /// Row stride of C in elements.
    pub ldc: usize,
}

/// A GEMM microkernel.
pub struct GemmKernel {
    /// Name: path, operand types, accumulator, tile (`avx512vnni_u8s8_i32_8x48`).
    pub name: &'static str,
    /// The path. Only [`crate::dispatch`] hands out kernels, and only for detected paths.
    pub isa: Isa,
    /// Most rows per tile.
    pub mr: usize,
    /// Most 16-column panels per tile.
    pub np: usize,
    /// The activation format it reads.
    pub a_format: AFormat,
    /// # Safety
    /// The CPU must support `isa`, and the tile's slices must cover what its dimensions
    /// address (checked by [`GemmKernel::run`]).
    pub(crate) func: unsafe fn(&mut Tile<'_>),
}

impl GemmKernel {
    /// Most columns per tile.
    pub fn nr(&self) -> usize {
        self.np * PANEL
    }

    /// Runs the kernel on one tile after checking every bound it relies on.
    pub fn run(&self, t: &mut Tile<'_>) {
        assert!((1..=self.mr).contains(&t.rows), "tile rows out of range");
        assert!(
            (1..=self.np).contains(&t.panels),
            "tile panels out of range"
        );
        assert!(t.lda.is_multiple_of(4) && t.lda >= 4 * t.k4);
        let a_ok = matches!(
            (self.a_format, &t.a),
            (AFormat::U8, AData::U8(_)) | (AFormat::I16, AData::I16(_))
        );
        assert!(a_ok, "activation format does not match the kernel");
        assert!(t.a.len() >= (t.rows - 1) * t.lda + 4 * t.k4);
        assert!(t.panel_stride >= t.k4 * GROUP_BYTES);
        assert!(t.b.len() >= (t.panels - 1) * t.panel_stride + t.k4 * GROUP_BYTES);
        assert!(t.ldc >= t.panels * PANEL);
        assert!(t.c.len() >= (t.rows - 1) * t.ldc + t.panels * PANEL);
        debug_assert!(self.isa.is_supported());
        // SAFETY: the CPU supports `self.isa` (a kernel is only handed out for a detected path,
        // see `crate::dispatch`), and the asserts above are exactly the bounds the kernels
        // address.
        unsafe { (self.func)(t) }
    }
}

/// The scalar microkernel: plain Rust over the same packed layout. It is the `scalar` path and
/// the baseline every SIMD kernel is compared with (itself checked against the oracle).
fn scalar_tile(t: &mut Tile<'_>) {
    let AData::U8(a) = t.a else {
        unreachable!("scalar kernel reads u8 activations")
    };
    for r in 0..t.rows {
        let arow = &a[r * t.lda..r * t.lda + 4 * t.k4];
        for p in 0..t.panels {
            let panel = &t.b[p * t.panel_stride..p * t.panel_stride + t.k4 * GROUP_BYTES];
            let mut acc = [0i32; PANEL];
            for (g, group) in panel.chunks_exact(GROUP_BYTES).enumerate() {
                let av = &arow[4 * g..4 * g + 4];
                for (c, col) in group.chunks_exact(4).enumerate() {
                    let mut s = 0i32;
                    for q in 0..4 {
                        s += av[q] as i32 * col[q] as i32;
                    }
                    acc[c] += s;
                }
            }
            t.c[r * t.ldc + p * PANEL..r * t.ldc + (p + 1) * PANEL].copy_from_slice(&acc);
        }
    }
}

/// # Safety
/// Always safe; `unsafe` only to fit the kernel table.
unsafe fn scalar_tile_entry(t: &mut Tile<'_>) {
    scalar_tile(t)
}

/// The scalar GEMM kernel.
pub static SCALAR_GEMM: GemmKernel = GemmKernel {
    name: "scalar_u8s8_i32_4x32",
    isa: Isa::Scalar,
    mr: 4,
    np: 2,
    a_format: AFormat::U8,
    func: scalar_tile_entry,
};

/// Quantization kernels of one path.
pub struct QuantKernels {
    /// Name of the min/max kernel.
    pub name_minmax: &'static str,
    /// Name of the quantize kernel.
    pub name_quantize: &'static str,
    /// The path. Only [`crate::dispatch`] hands out kernels, and only for detected paths.
    pub isa: Isa,
    /// # Safety: CPU must support `isa`.
    pub(crate) minmax: unsafe fn(&[f32]) -> MinMax,
    /// # Safety: CPU must support `isa`; `x.len() == out.len()`.
    pub(crate) quantize_u8: unsafe fn(&[f32], f32, u8, &mut [u8]),
    /// # Safety: CPU must support `isa`; `x.len() == out.len()`.
    pub(crate) quantize_i8: unsafe fn(&[f32], f32, &mut [i8]),
}

impl QuantKernels {
    /// Min, max and non-finite flag of `x`.
    pub fn minmax(&self, x: &[f32]) -> MinMax {
        debug_assert!(self.isa.is_supported());
        // SAFETY: the path is supported (holding the kernels proves it, see `crate::dispatch`);
        // the kernel reads only `x`.
        unsafe { (self.minmax)(x) }
    }

    /// `out = clamp(round(x / scale) + zp, 0, 255)`, bit-identical to [`reference::quantize_u8`].
    pub fn quantize_u8(&self, x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
        assert_eq!(x.len(), out.len());
        debug_assert!(self.isa.is_supported());
        // SAFETY: the path is supported (holding the kernels proves it) and the lengths match
        // (checked above).
        unsafe { (self.quantize_u8)(x, scale, zp, out) }
    }

    /// `out = clamp(round(x / scale), -127, 127)`, bit-identical to [`reference::quantize_i8`].
    pub fn quantize_i8(&self, x: &[f32], scale: f32, out: &mut [i8]) {
        assert_eq!(x.len(), out.len());
        debug_assert!(self.isa.is_supported());
        // SAFETY: the path is supported (holding the kernels proves it) and the lengths match
        // (checked above).
        unsafe { (self.quantize_i8)(x, scale, out) }
    }
}

/// # Safety
/// Always safe.
unsafe fn scalar_minmax(x: &[f32]) -> MinMax {
    reference::minmax(x)
}
/// # Safety
/// Always safe.
unsafe fn scalar_quantize_u8(x: &[f32], s: f32, zp: u8, out: &mut [u8]) {
    reference::quantize_u8(x, s, zp, out)
}
/// # Safety
/// Always safe.
unsafe fn scalar_quantize_i8(x: &[f32], s: f32, out: &mut [i8]) {
    reference::quantize_i8(x, s, out)
}

/// The scalar quantization kernels.
pub static SCALAR_QUANT: QuantKernels = QuantKernels {
    name_minmax: "scalar_minmax_f32",
    name_quantize: "scalar_quantize_f32",
    isa: Isa::Scalar,
    minmax: scalar_minmax,
    quantize_u8: scalar_quantize_u8,
    quantize_i8: scalar_quantize_i8,
};
