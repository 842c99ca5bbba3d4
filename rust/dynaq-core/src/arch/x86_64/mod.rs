//! x86-64 kernels: AVX2 and AVX-512 VNNI. See `README.md` in this folder for the design.

pub mod avx2;
pub mod avx2_gemv;
pub mod avx2_int4;
pub mod avx2_quant;

// The AVX-512 intrinsics and the `avx512vnni` target feature are stable since Rust 1.89.
#[clippy::msrv = "1.89"]
pub mod avx512vnni;

use crate::reference::MinMax;

/// Min/max from integer reductions of the bit patterns, or `None` when some element is NaN or
/// infinite (the caller then runs the float kernel, which ignores NaN like the reference).
///
/// `smax` is the signed max of the bits, `umin` / `umax` the unsigned min / max, over a
/// non-empty slice. For finite floats: non-negative floats (sign bit clear) order like their
/// bits as integers and are the only non-negative `i32`s, so if `smax >= 0` it is the largest
/// float; otherwise every element is negative, and the largest is the one of least magnitude,
/// i.e. the least bits as `u32` (`umin`). Symmetrically, if some element has its sign bit set,
/// `umax >= 2^31` is the most negative float; otherwise every element is non-negative and the
/// least is `umin`. An exponent of all ones (NaN, infinity) makes `smax >= 0x7f80_0000` (sign
/// clear) or `umax >= 0xff80_0000` (sign set), and these bounds are reached by nothing else.
/// A zero extreme may come out as `-0.0` where the reference says `+0.0` or the reverse (the
/// reference keeps the first of equal values), which `==` and every consumer ignore.
#[inline]
pub(crate) fn minmax_from_bits(smax: i32, umin: u32, umax: u32) -> Option<MinMax> {
    if smax >= 0x7f80_0000 || umax >= 0xff80_0000 {
        return None;
    }
    let max = if smax >= 0 { smax as u32 } else { umin };
    let min = if umax >= 0x8000_0000 { umax } else { umin };
    Some(MinMax {
        min: f32::from_bits(min),
        max: f32::from_bits(max),
        nonfinite: false,
    })
}

/// Parameters of the reciprocal quantizers (see "Quantization" in `README.md`).
///
/// Each lane computes `t = cvttps2dq(fma(x, r, k))` with `r = 2^16 / scale` and
/// `k = 2^16 * (off + 0.5 + TIE_EPS)`: a fixed-point number whose bits 16.. are
/// `floor(x / scale + off + 0.5 + TIE_EPS)` and whose low 16 bits are its fraction. Away from a
/// tie (fraction `>= 2 * TIE_EPS`, i.e. `t & TIE_MASK != 0`) the integer part is
/// `round_half_even(x / scale) + off`, bit for bit as the reference before its clamp; lanes near
/// a tie are recomputed with the true division. There is no float clamp: the narrowing
/// saturates the high word of `t` (signed) to `0..=255`, which is the clamp for every `t` that
/// `cvttps2dq` represents, and `cvttps2dq` returns `i32::MIN` (fraction 0: recomputed) for NaN,
/// infinities and `|y| >= 2^31`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recip {
    pub r: f32,
    pub k: f32,
}

/// The margin `E` of the tie test: `2^-13`. The reciprocal path's error is below
/// `385 * 2^-23 < 2^-14.4` (README), so `E` leaves a factor of 2.6.
pub(crate) const TIE_EPS: f32 = 1.0 / 8192.0;
/// Fraction bits (low 16 bits of `t`) that are all zero exactly when the fraction is below
/// `2 * TIE_EPS = 2^-12 = 16 / 2^16`.
pub(crate) const TIE_MASK: i32 = 0xfff0;
/// The fixed-point unit.
const ONE: f32 = 65536.0;

impl Recip {
    /// The parameters for `scale` and the offset `off` added to the rounded quotient (`zp` for
    /// u8 outputs, whose integer parts are then the outputs, 127 for i8), or `None` when `scale`
    /// must take the division path: non-finite, zero, or so small or large (`|scale|` outside
    /// `[2^-100, 2^100]`) that `2^16 / scale` could be subnormal, inexact or overflow.
    pub(crate) fn new(scale: f32, off: f32) -> Option<Recip> {
        let a = scale.abs();
        // 2^-100 and 2^100 (`contains` is false for NaN).
        const LO: f32 = f32::from_bits(27 << 23);
        const HI: f32 = f32::from_bits(227 << 23);
        if !(LO..=HI).contains(&a) {
            return None;
        }
        // `1 / scale` is one correctly rounded division (relative error <= 2^-24) and a normal
        // float; the product by 2^16 is exact.
        let r = (1.0 / scale) * ONE;
        // `off + 0.5 + E` is exact (below 2^8, a multiple of 2^-13), and so is its product.
        Some(Recip {
            r,
            k: (off + 0.5 + TIE_EPS) * ONE,
        })
    }
}

/// Whether the CPU has FMA (every AVX2 and AVX-512 CPU we know of; checked anyway).
#[inline]
pub(crate) fn has_fma() -> bool {
    std::is_x86_feature_detected!("fma")
}
