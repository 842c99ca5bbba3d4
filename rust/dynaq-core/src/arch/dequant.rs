//! The `linear` epilogue's inner loop, compiled for the widest vectors the path allows.
//!
//! One body, [`dequant_row_body`], is the definition; the `#[target_feature]` copies only let the
//! compiler use AVX2 / AVX-512 for it (`vpmulld` for the exact zero-point correction, 8 or 16
//! lanes). The float operations are the same IEEE multiplies and adds in the same order on every
//! copy (Rust never fuses them into FMAs), so every copy gives the same bits. Compiled for the
//! x86-64 baseline (SSE2, which has no 32-bit multiply), the loop took ~10% of `linear` at
//! M = 512, K = 768, N = 3072; with AVX-512 it takes ~3%.

#[cfg(target_arch = "x86_64")]
use crate::isa::Isa;
use crate::kernel::GemmKernel;

/// What turns one row of i32 accumulators into floats: the row's activation zero point and
/// scale, and the columns' weight sums, weight scales and biases.
#[derive(Clone, Copy)]
pub(crate) struct RowDequant<'a> {
    /// `sum_k wq[n][k]` per column.
    pub colsum: &'a [i32],
    /// Weight scale per column.
    pub sw: &'a [f32],
    /// Bias per column, if any.
    pub bias: Option<&'a [f32]>,
    /// The row's activation zero point.
    pub zx: i32,
    /// The row's activation scale.
    pub sx: f32,
}

/// `dst[c] = f32(acc[c] - zx * colsum[c]) * (sx * sw[c]) + bias[c]` (bias 0 when absent).
///
/// The i32 arithmetic wraps, which is exact when the true difference fits i32 (one K chunk of
/// the driver: `|sum (a - zx) w| <= 255 * 128 * 65536 < 2^31`).
#[inline(always)]
fn dequant_row_body(acc: &[i32], p: &RowDequant<'_>, dst: &mut [f32]) {
    let RowDequant {
        colsum,
        sw,
        bias,
        zx,
        sx,
    } = *p;
    let n = dst.len();
    let (acc, colsum, sw) = (&acc[..n], &colsum[..n], &sw[..n]);
    match bias {
        Some(bias) => {
            let bias = &bias[..n];
            for c in 0..n {
                let corrected = acc[c].wrapping_sub(zx.wrapping_mul(colsum[c]));
                dst[c] = corrected as f32 * (sx * sw[c]) + bias[c];
            }
        }
        None => {
            for c in 0..n {
                let corrected = acc[c].wrapping_sub(zx.wrapping_mul(colsum[c]));
                // `+ 0.0` as in the biased form with a zero bias (it turns -0.0 into +0.0).
                dst[c] = corrected as f32 * (sx * sw[c]) + 0.0;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequant_row_avx2(acc: &[i32], p: &RowDequant<'_>, dst: &mut [f32]) {
    dequant_row_body(acc, p, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dequant_row_avx512(acc: &[i32], p: &RowDequant<'_>, dst: &mut [f32]) {
    dequant_row_body(acc, p, dst)
}

/// One output row of a tile, with the vector width of the path of `kernel` (the kernel that
/// computed `acc`: holding it proves the CPU supports its path).
pub(crate) fn dequant_row(kernel: &GemmKernel, acc: &[i32], p: &RowDequant<'_>, dst: &mut [f32]) {
    debug_assert!(kernel.isa.is_supported());
    match kernel.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the AVX-512 VNNI path (a kernel of it is held), which includes
        // AVX-512 F.
        Isa::Avx512Vnni => unsafe { dequant_row_avx512(acc, p, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the AVX2 path (a kernel of it is held).
        Isa::Avx2 => unsafe { dequant_row_avx2(acc, p, dst) },
        _ => dequant_row_body(acc, p, dst),
    }
}
