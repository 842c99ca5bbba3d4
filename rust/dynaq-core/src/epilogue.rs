//! Epilogues: what happens to an exact i32 (or i64) tile.
//!
//! * [`LinearEpilogue`]: `y = f32(acc - zx[m] * colsum[n]) * (sx[m] * sw[n]) + bias[n]`, the
//!   fused dequantization of `linear`. One implementation for every path, so the float results
//!   agree bit for bit whenever the integers do.
//! * [`IntegerEpilogue`]: ONNX `MatMulInteger` zero-point corrections in i64, then a checked
//!   conversion to i32 (an overflow is reported, never wrapped).

use crate::arch::dequant::{dequant_row, RowDequant};
use crate::gemm::{Epilogue, SharedOut};
use crate::kernel::GemmKernel;
use crate::reference::linear_epilogue_one;
use std::sync::Mutex;

/// The dequantizing epilogue of `linear`.
pub struct LinearEpilogue<'a> {
    pub(crate) out: SharedOut<'a, f32>,
    /// Output row stride (= n).
    pub(crate) n: usize,
    /// Activation zero point per row.
    pub(crate) zx: &'a [i32],
    /// Activation scale per row.
    pub(crate) sx: &'a [f32],
    /// Weight column sums.
    pub(crate) colsum: &'a [i32],
    /// Weight scale per output column.
    pub(crate) sw: &'a [f32],
    /// Bias per output column.
    pub(crate) bias: Option<&'a [f32]>,
    /// The kernel computing the tiles: the dequantizing loop uses its path's vector width.
    pub(crate) kernel: &'static GemmKernel,
}

impl Epilogue for LinearEpilogue<'_> {
    fn tile_i32(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i32], ldc: usize) {
        let (cs, sw) = (&self.colsum[n0..n0 + cols], &self.sw[n0..n0 + cols]);
        let bias = self.bias.map(|b| &b[n0..n0 + cols]);
        for r in 0..rows {
            let m = m0 + r;
            // SAFETY: this call owns the tile (m0.., n0..) of the output; its row `m` is handed
            // out once here and dropped at the end of the iteration.
            let dst = unsafe { self.out.tile_row(m * self.n + n0, cols) };
            let accs = &acc[r * ldc..r * ldc + cols];
            let p = RowDequant {
                colsum: cs,
                sw,
                bias,
                zx: self.zx[m],
                sx: self.sx[m],
            };
            dequant_row(self.kernel, accs, &p, dst);
        }
    }

    fn tile_i64(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i64], ldc: usize) {
        for r in 0..rows {
            let m = m0 + r;
            // SAFETY: as in `tile_i32`.
            let dst = unsafe { self.out.tile_row(m * self.n + n0, cols) };
            for (c, d) in dst.iter_mut().enumerate() {
                let j = n0 + c;
                *d = linear_epilogue_one(
                    acc[r * ldc + c],
                    self.zx[m],
                    self.colsum[j],
                    self.sx[m],
                    self.sw[j],
                    self.bias.map_or(0.0, |b| b[j]),
                );
            }
        }
    }
}

/// The first result that did not fit in i32: `(row, column, value)`.
pub type OverflowAt = (usize, usize, i64);

/// `out = acc + cb[n] * rowsum[m] + ra[m] * colsum[n] + k * ra[m] * cb[n]`, checked into i32.
///
/// With canonical operands `a' = a - oa` (u8) and `b' = b - ob` (s8), and zero points `za`, `zb`:
/// `sum (a - za)(b - zb) = sum a'b' + (ob - zb) sum a' + (oa - za) sum b' + k (oa - za)(ob - zb)`,
/// so `ra = oa - za` and `cb = ob - zb`.
pub struct IntegerEpilogue<'a> {
    pub(crate) out: SharedOut<'a, i32>,
    pub(crate) n: usize,
    pub(crate) k: i64,
    pub(crate) ra: &'a [i64],
    pub(crate) rowsum: &'a [i64],
    pub(crate) cb: &'a [i64],
    pub(crate) colsum: &'a [i32],
    /// The first overflow seen (any thread), if one was.
    pub(crate) first_overflow: Mutex<Option<OverflowAt>>,
}

impl IntegerEpilogue<'_> {
    fn write<T: Copy + Into<i64>>(
        &self,
        m0: usize,
        n0: usize,
        rows: usize,
        cols: usize,
        acc: &[T],
        ldc: usize,
    ) {
        for r in 0..rows {
            let m = m0 + r;
            let (ra, rs) = (self.ra[m], self.rowsum[m]);
            let mut bad = None;
            // SAFETY: this call owns the tile (m0.., n0..) of the output; its row `m` is handed
            // out once here and dropped at the end of the iteration.
            let dst = unsafe { self.out.tile_row(m * self.n + n0, cols) };
            for (c, d) in dst.iter_mut().enumerate() {
                let j = n0 + c;
                let cb = self.cb[j];
                let v = acc[r * ldc + c].into()
                    + cb * rs
                    + ra * self.colsum[j] as i64
                    + self.k * ra * cb;
                *d = i32::try_from(v).unwrap_or_else(|_| {
                    bad.get_or_insert((m, j, v));
                    0
                });
            }
            if let Some(at) = bad {
                let mut f = self
                    .first_overflow
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                f.get_or_insert(at);
            }
        }
    }
}

impl Epilogue for IntegerEpilogue<'_> {
    fn tile_i32(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i32], ldc: usize) {
        self.write(m0, n0, rows, cols, acc, ldc)
    }
    fn tile_i64(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i64], ldc: usize) {
        self.write(m0, n0, rows, cols, acc, ldc)
    }
}
