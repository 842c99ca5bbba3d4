//! The scalar oracle: one plain implementation of every operation.
//!
//! SIMD paths are tested against these functions bit for bit. They are also what the `scalar` path
//! runs for quantization (the scalar GEMM path runs [`crate::kernels`]'s panel kernel, which is
//! itself tested against [`gemm_u8s8`]).
//!
//! The float comparisons below spell out x86's `minps`/`maxps` and C++'s `std::min`/`std::max`
//! on purpose: ONNX Runtime's `DynamicQuantizeLinear` is defined by them in the corner cases
//! (a scale that underflows to 0 or overflows to infinity), and we reproduce it bit for bit.

/// Minimum and maximum of a slice, and whether a NaN or an infinity was seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax {
    /// Smallest element (`+inf` for an empty slice).
    pub min: f32,
    /// Largest element (`-inf` for an empty slice).
    pub max: f32,
    /// True when some element is NaN or infinite; `min`/`max` are then meaningless.
    pub nonfinite: bool,
}

impl MinMax {
    /// The identity of [`MinMax::merge`].
    pub const EMPTY: MinMax = MinMax {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        nonfinite: false,
    };

    /// Combines the results of two parts of a slice.
    pub fn merge(self, o: MinMax) -> MinMax {
        MinMax {
            min: if o.min < self.min { o.min } else { self.min },
            max: if o.max > self.max { o.max } else { self.max },
            nonfinite: self.nonfinite | o.nonfinite,
        }
    }

    /// Largest magnitude, for symmetric quantization (0 for an empty slice).
    pub fn absmax(self) -> f32 {
        if self.min > self.max {
            return 0.0;
        }
        let (a, b) = (self.min.abs(), self.max.abs());
        if a > b {
            a
        } else {
            b
        }
    }
}

/// Scalar min/max with non-finite detection.
pub fn minmax(x: &[f32]) -> MinMax {
    let mut r = MinMax::EMPTY;
    for &v in x {
        if v < r.min {
            r.min = v;
        }
        if v > r.max {
            r.max = v;
        }
        // An exponent of all ones is NaN or an infinity.
        r.nonfinite |= v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    }
    r
}

/// x86 `maxps`: the first operand if it is greater, else the second (NaN gives the second).
#[inline(always)]
pub fn maxps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// x86 `minps`: the first operand if it is smaller, else the second (NaN gives the second).
#[inline(always)]
pub fn minps(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// C++ `std::min(a, b)`: `b < a ? b : a`.
#[inline(always)]
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// C++ `std::max(a, b)`: `a < b ? b : a`.
#[inline(always)]
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// Scale and zero point of ONNX `DynamicQuantizeLinear` (uint8), exactly as ONNX Runtime computes
/// them from the data's min and max: the range is widened to include 0, the scale is
/// `(max - min) / 255` in float32 (1 when the range is empty), and the zero point is
/// `round_half_even(clamp(0 - min / scale, 0, 255))`.
pub fn dql_params(data_min: f32, data_max: f32) -> (f32, u8) {
    let lo = cpp_min(data_min, 0.0);
    let hi = cpp_max(data_max, 0.0);
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let izp = 0.0 - lo / scale;
    let zp = cpp_max(0.0, cpp_min(255.0, izp)).round_ties_even();
    (scale, zp as u8)
}

/// Asymmetric uint8 parameters for our own quantizer: those of [`dql_params`] wherever they are
/// meaningful, with three repairs ONNX lacks: a range whose width overflows float32 gets the
/// scale `max/255 - min/255` (instead of infinity), a scale that underflows to 0 becomes 1 (the
/// data then quantizes to the zero point, an error below 1e-42), and a subnormal scale is rounded
/// up so that the range still fits ([`cover`]).
pub fn asym_params(data_min: f32, data_max: f32) -> (f32, u8) {
    let lo = cpp_min(data_min, 0.0);
    let hi = cpp_max(data_max, 0.0);
    if hi == lo {
        return (1.0, 0);
    }
    let mut scale = (hi - lo) / 255.0;
    if scale.is_infinite() {
        scale = hi / 255.0 - lo / 255.0;
    }
    if scale == 0.0 {
        return (1.0, 0);
    }
    let scale = cover(scale, hi - lo, 255.0);
    let izp = 0.0 - lo / scale;
    let zp = cpp_max(0.0, cpp_min(255.0, izp)).round_ties_even();
    (scale, zp as u8)
}

/// Symmetric int8 scale: `absmax / 127` (rounded up when subnormal, see [`cover`]), or 1 when
/// that is 0 (all zeros, or a range so small it underflows).
pub fn sym_scale(absmax: f32) -> f32 {
    let s = absmax / 127.0;
    if s == 0.0 {
        1.0
    } else {
        cover(s, absmax, 127.0)
    }
}

/// A subnormal scale has few significant bits, so rounding `width / levels` to nearest can lose
/// up to a third of it (1.9e-45 -> 1.4e-45), leaving the top of the range far beyond the last
/// level, where it is clamped. Rounding such a scale up keeps the whole range representable.
/// Normal scales are left alone (their relative rounding error, 2^-24, is harmless).
fn cover(scale: f32, width: f32, levels: f32) -> f32 {
    if scale > 0.0 && scale < f32::MIN_POSITIVE && (scale as f64) * (levels as f64) < width as f64 {
        scale.next_up()
    } else {
        scale
    }
}

/// One element of uint8 quantization, in the order of operations of the SIMD kernels:
/// divide, clamp to `[0 - zp, 255 - zp]` with `maxps`/`minps`, round half to even, add `zp`.
#[inline(always)]
pub fn quantize_u8_one(v: f32, scale: f32, zp: u8) -> u8 {
    let zpf = zp as f32;
    let q = minps(maxps(v / scale, 0.0 - zpf), 255.0 - zpf);
    // q is within [-255, 255] (or NaN, which the SIMD conversion also maps to the clamp bounds
    // above since maxps returns the bound); the cast is exact.
    (q.round_ties_even() as i32 + zp as i32) as u8
}

/// uint8 quantization of a slice: `out[i] = clamp(round(x[i] / scale) + zp, 0, 255)`.
pub fn quantize_u8(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_u8_one(v, scale, zp);
    }
}

/// One element of symmetric int8 quantization: divide, clamp to `[-127, 127]`, round.
#[inline(always)]
pub fn quantize_i8_one(v: f32, scale: f32) -> i8 {
    let q = minps(maxps(v / scale, -127.0), 127.0);
    q.round_ties_even() as i8
}

/// Symmetric int8 quantization of a slice, values in `[-127, 127]`.
pub fn quantize_i8(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_i8_one(v, scale);
    }
}

/// The GEMM oracle: `c[i][j] = sum_k a[i][k] * b[j][k]` in i64, for row-major `a` (`m x k`, u8)
/// and row-major `b` (`n x k`, i8, i.e. the weight layout).
pub fn gemm_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i64> {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), n * k);
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i64;
            for p in 0..k {
                s += a[i * k + p] as i64 * b[j * k + p] as i64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// The `linear` epilogue for one element, shared by every path so that the float results agree
/// bit for bit: `f32(acc - zx * colsum) * (sx * sw) + bias`, with exact integer arithmetic.
#[inline(always)]
pub fn linear_epilogue_one(acc: i64, zx: i32, colsum: i32, sx: f32, sw: f32, bias: f32) -> f32 {
    let corrected = acc - zx as i64 * colsum as i64;
    corrected as f32 * (sx * sw) + bias
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dql_corner_cases_match_onnxruntime() {
        // Values observed from onnxruntime 1.32 DynamicQuantizeLinear.
        assert_eq!(dql_params(0.0, 0.0), (1.0, 0));
        assert_eq!(dql_params(-1.0, -1.0), (1.0 / 255.0, 255));
        assert_eq!(dql_params(1e-45, 1e-45), (0.0, 255));
        assert_eq!(dql_params(-3e38, 3e38), (f32::INFINITY, 0));
        let (s, z) = dql_params(-2.5, 2.5);
        assert_eq!((s, z), (5.0 / 255.0, 127));
        assert_eq!(quantize_u8_one(2.5, s, z), 254);
        assert_eq!(quantize_u8_one(-2.5, s, z), 0);
        // A zero scale: x / 0 is infinite (or NaN for 0) and clamps to a bound.
        assert_eq!(quantize_u8_one(1e-45, 0.0, 255), 255);
        assert_eq!(quantize_u8_one(-1e-45, 0.0, 255), 0);
    }

    #[test]
    fn asym_repairs_overflow_and_underflow() {
        let (s, z) = asym_params(-3e38, 3e38);
        assert!(s.is_finite() && s > 0.0);
        assert_eq!(z, 128);
        assert_eq!(asym_params(1e-45, 1e-45), (1.0, 0));
        assert_eq!(asym_params(-1.0, 2.0), dql_params(-1.0, 2.0));
        // 4.83e-43 / 255 rounds down to the smallest subnormal; rounded up, the top still fits.
        let (s, z) = asym_params(0.0, 4.83e-43);
        assert!(s as f64 * 255.0 >= 4.83e-43_f32 as f64);
        assert_eq!(quantize_u8_one(4.83e-43, s, z), 172);
        assert!(sym_scale(1e-44) as f64 * 127.0 >= 1e-44_f32 as f64);
    }

    #[test]
    fn symmetric_values_stay_in_range() {
        let s = sym_scale(2.0);
        assert_eq!(quantize_i8_one(2.0, s), 127);
        assert_eq!(quantize_i8_one(-2.0, s), -127);
        assert_eq!(quantize_i8_one(-5.0, s), -127);
        assert_eq!(sym_scale(0.0), 1.0);
    }

    #[test]
    fn minmax_flags_nonfinite() {
        assert!(minmax(&[1.0, f32::NAN]).nonfinite);
        assert!(minmax(&[f32::NEG_INFINITY]).nonfinite);
        let r = minmax(&[1.0, -2.0, 3.0]);
        assert_eq!((r.min, r.max, r.nonfinite), (-2.0, 3.0, false));
    }
}
