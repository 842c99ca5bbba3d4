//! The `linear` epilogue's inner loop, compiled for the widest vectors the path allows.
//!
//! One body, [`dequant_row_body`], is the definition; the `#[target_feature]` copies only let the
//! compiler use AVX2 / AVX-512 for it (`vpmulld` for the exact zero-point correction, 8 or 16
//! lanes). The float operations are the same IEEE multiplies and adds in the same order on every
//! copy (Rust never fuses them into FMAs), so every copy gives the same bits. Compiled for the
//! x86-64 baseline (SSE2, which has no 32-bit multiply), the loop took ~10% of `linear` at
//! M = 512, K = 768, N = 3072; with AVX-512 it takes ~3%.

use crate::dispatch::Isa;

/// `dst[c] = f32(acc[c] - zx * colsum[c]) * (sx * sw[c]) + bias[c]` (bias 0 when absent).
///
/// The i32 arithmetic wraps, which is exact when the true difference fits i32 (one K chunk of
/// the driver: `|sum (a - zx) w| <= 255 * 128 * 65536 < 2^31`).
#[inline(always)]
fn dequant_row_body(
    acc: &[i32],
    colsum: &[i32],
    sw: &[f32],
    bias: Option<&[f32]>,
    zx: i32,
    sx: f32,
    dst: &mut [f32],
) {
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
fn dequant_row_avx2(
    acc: &[i32],
    colsum: &[i32],
    sw: &[f32],
    bias: Option<&[f32]>,
    zx: i32,
    sx: f32,
    dst: &mut [f32],
) {
    dequant_row_body(acc, colsum, sw, bias, zx, sx, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dequant_row_avx512(
    acc: &[i32],
    colsum: &[i32],
    sw: &[f32],
    bias: Option<&[f32]>,
    zx: i32,
    sx: f32,
    dst: &mut [f32],
) {
    dequant_row_body(acc, colsum, sw, bias, zx, sx, dst)
}

/// One output row of a tile on the given path (the path must be supported by this CPU).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequant_row(
    isa: Isa,
    acc: &[i32],
    colsum: &[i32],
    sw: &[f32],
    bias: Option<&[f32]>,
    zx: i32,
    sx: f32,
    dst: &mut [f32],
) {
    assert!(isa.is_supported());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 VNNI support (asserted above) includes AVX-512 F.
        Isa::Avx512Vnni => unsafe { dequant_row_avx512(acc, colsum, sw, bias, zx, sx, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the AVX2 path is supported (asserted above).
        Isa::Avx2 => unsafe { dequant_row_avx2(acc, colsum, sw, bias, zx, sx, dst) },
        _ => dequant_row_body(acc, colsum, sw, bias, zx, sx, dst),
    }
}
