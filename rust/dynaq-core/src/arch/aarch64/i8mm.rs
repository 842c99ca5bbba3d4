//! Int8 matrix-multiply extension kernels (ARMv8.6 i8mm): an exact u8 x s8 GEMM microkernel on
//! the mixed-sign dot product `usdot`. Quantization runs the NEON kernels.
//!
//! `usdot vd.4s, vn.16b, vm.16b` adds to each i32 lane the dot product of 4 **unsigned** bytes of
//! `vn` with 4 **signed** bytes of `vm`: exactly our u8 activations (broadcast, one row's 4 k in
//! every lane) times our s8 `K4N16` weights (4 columns x 4 k per vector). No correction term, no
//! extra instruction: 16 multiply-accumulates per instruction.
//!
//! Exactness: a lane adds at most `4 * 255 * 128 = 130560` in magnitude per group and `usdot`
//! neither saturates nor widens lossily; over the longest chunk (`K_CHUNK` = 65536 k) the sum is
//! at most `65536 * 255 * 128 < 2^31`, so the accumulators hold the exact sums (and in any case
//! the scalar kernel's i32 sums modulo 2^32).
//!
//! Tile: [`MR`] = 6 rows x 16 columns: 24 accumulators, 4 B vectors and one or two broadcast rows
//! = 29 or 30 of the 32 vector registers. (`usmmla`, 2x8 by 8x2 blocks, would do 32
//! multiply-accumulates per instruction; see `README.md` for why this kernel does not use it yet.)

use crate::dispatch::Isa;
use crate::kernels::{AData, AFormat, GemmKernel, QuantKernels, Tile};
use crate::pack::GROUP_BYTES;
use core::arch::aarch64::*;
use core::arch::asm;

/// Most rows of a tile.
const MR: usize = 6;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "i8mm_u8s8_i32_usdot_6x16",
    isa: Isa::I8mm,
    mr: MR,
    np: 1,
    a_format: AFormat::U8,
    func: gemm_entry,
};

/// Quantization kernels of this path: the NEON ones.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "neon_minmax_f32x16",
    name_quantize: "neon_quantize_f32x16_div",
    isa: Isa::I8mm,
    minmax: super::neon::minmax,
    quantize_u8: super::neon::quantize_u8,
    quantize_i8: super::neon::quantize_i8,
};

/// `acc + usdot(u, s)` (4 lanes, each `acc + sum of 4 u8 x s8 products`).
macro_rules! usdot {
    ($acc:expr, $u:expr, $s:expr) => {{
        let mut acc: int32x4_t = $acc;
        // SAFETY: only used in `#[target_feature(enable = "neon,i8mm")]` functions, which run
        // only where i8mm was detected; the instruction touches registers only.
        unsafe {
            asm!(
                "usdot {acc:v}.4s, {u:v}.16b, {s:v}.16b",
                acc = inout(vreg) acc,
                u = in(vreg) $u,
                s = in(vreg) $s,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }};
}

/// Computes `R` rows x 16 columns over `k4` groups and stores them to `c`.
///
/// # Safety
/// The CPU must have i8mm. For `r < R`: `a + r * lda .. + 4 * k4` is readable and
/// `c + r * ldc .. + 16` writable; `b .. + 64 * k4` is readable.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    k4: usize,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    for g in 0..k4 {
        let mut bq = [vdupq_n_s8(0); 4];
        for (q, v) in bq.iter_mut().enumerate() {
            // SAFETY: group `g < k4`, quad `q < 4`: 16 readable bytes (contract above).
            *v = unsafe { vld1q_s8(b.add(g * GROUP_BYTES + 16 * q)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < R`, bytes `4 g .. 4 g + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<u32>().read_unaligned() };
            // The row's 4 activations (u8) in every lane.
            let av = vreinterpretq_u8_u32(vdupq_n_u32(word));
            for q in 0..4 {
                acc[q] = usdot!(acc[q], av, bq[q]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: row `r < R`, columns `4 q .. 4 q + 4 <= 16`: writable (contract above).
            unsafe { vst1q_s32(c.add(r * ldc + 4 * q), *v) };
        }
    }
}

type TileFn = unsafe fn(*const u8, usize, *const i8, usize, *mut i32, usize);

/// The monomorphized tile for `rows` (`1..=MR`).
fn tile_fn(rows: usize) -> TileFn {
    match rows {
        1 => tile::<1>,
        2 => tile::<2>,
        3 => tile::<3>,
        4 => tile::<4>,
        5 => tile::<5>,
        6 => tile::<6>,
        _ => unreachable!("tile rows out of range"),
    }
}

/// # Safety
/// The CPU must have i8mm, and `t` must satisfy the bounds asserted by [`GemmKernel::run`]
/// (the only caller).
unsafe fn gemm_entry(t: &mut Tile<'_>) {
    let AData::U8(a) = t.a else {
        unreachable!("the i8mm kernel reads u8 activations")
    };
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels == 1);
    let f = tile_fn(t.rows);
    // SAFETY: `GemmKernel::run` asserted that the CPU supports `Isa::I8mm`, that the `rows` rows
    // of A hold `4 * k4` values from `r * lda`, that panel 0 holds `64 * k4` bytes and that C has
    // `rows` rows of `16 * panels >= 16` columns at `r * ldc`.
    unsafe {
        f(
            a.as_ptr(),
            t.lda,
            t.b.as_ptr(),
            t.k4,
            t.c.as_mut_ptr(),
            t.ldc,
        )
    }
}
