//! From a 4-bit weight's exact integer sums to float outputs: the one float expression every path
//! and the oracle share ([`epilogue_one`]), its vectorized row form for the driver
//! ([`epilogue_row`], over i64 sums or, when K fits one chunk, i32), and [`linear_ref`], the
//! scalar oracle of `linear` on a 4-bit weight.

use super::Int4Weight;

/// The scalar oracle of `linear` on a 4-bit weight: `a` (`m x k` u8 activation levels, zero
/// point `zx` and scale `sx` per row, as `quantize_u8_rows` makes them). Integer sums in i64
/// (exact for any K), then one float expression per output, in this order:
/// `sx·(fd·f32(X1) + fm·f32(X2)) + bias` (symmetric: `sx·(fd·f32(X1 − 8·X2)) + bias`), where
/// `X1 = Σ_g cd·(Σ a·q − zx·Σ q)` and `X2 = Σ_g cm·(Σ a − zx·G)`. The float terms of an
/// asymmetric weight can cancel: their rounding (2^-24 of each) is far below the 4-bit error.
pub fn linear_ref(
    a: &[u8],
    zx: &[i32],
    sx: &[f32],
    m: usize,
    w: &Int4Weight,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (n, k, groups) = (w.n, w.k, w.groups());
    assert_eq!(a.len(), m * k);
    let mut out = vec![0.0f32; m * n];
    for r in 0..m {
        let row = &a[r * k..(r + 1) * k];
        let asum: Vec<i64> = (0..groups)
            .map(|g| row[w.span(g)].iter().map(|&v| v as i64).sum())
            .collect();
        for col in 0..n {
            let (_, _, cd, cm) = w.codes(col);
            let (mut x1, mut x2) = (0i64, 0i64);
            for g in 0..groups {
                let t: i64 = w
                    .span(g)
                    .map(|kk| row[kk] as i64 * w.level(col, kk) as i64)
                    .sum();
                x1 += cd[g] as i64 * (t - zx[r] as i64 * w.qsum(col, g) as i64);
                x2 += cm[g] as i64 * (asum[g] - zx[r] as i64 * w.span(g).len() as i64);
            }
            out[r * n + col] = epilogue_one(w, col, sx[r], x1, x2, bias);
        }
    }
    out
}

/// One output from its exact integers X1 and X2: `sx·(fd·f32(X1) + fm·f32(X2)) + bias`, or
/// for a symmetric weight (min = −8·scale, so one integer `Σ_g cd·Σ (a − zx)·(q − 8)`)
/// `sx·(fd·f32(X1 − 8·X2)) + bias`. The one float expression of every path and the oracle.
#[inline]
pub fn epilogue_one(
    w: &Int4Weight,
    col: usize,
    sx: f32,
    x1: i64,
    x2: i64,
    bias: Option<&[f32]>,
) -> f32 {
    let b = bias.map_or(0.0, |b| b[col]);
    output(w.symmetric, sx, w.fd[col], w.fm[col], x1, x2, b)
}

/// The float expression itself (see [`epilogue_one`]), on X1 and X2 of either width.
#[inline(always)]
fn output<T: EpilogueInt>(symmetric: bool, sx: f32, fd: f32, fm: f32, x1: T, x2: T, b: f32) -> f32 {
    let y = if symmetric {
        sx * (fd * x1.minus_8x(x2).to_f32())
    } else {
        sx * (fd * x1.to_f32() + fm * x2.to_f32())
    };
    y + b
}

/// The integers of the epilogue: i64 (any K), or i32 when K fits one chunk of the driver. Then
/// the kernels' sums are below 2^31 and `C1`, `C2` below `2^31 / 255` (`int4::gemm`), so `X1`,
/// `X2` (and `X1 − 8·X2` of a symmetric weight, `|Σ cd·Σ (a − zx)·(q − 8)| <= 255·255·8·2048`)
/// are exact i32 values, formed with wrapping arithmetic, whose float conversion equals the
/// i64 one; the i32 loop vectorizes fully (no i64 multiply).
pub(crate) trait EpilogueInt: Copy {
    /// The column constants `(C1, C2)` of this width.
    fn constants(w: &Int4Weight) -> (&[Self], &[Self]);
    /// `s − zx·c`.
    fn less(self, zx: i32, c: Self) -> Self;
    /// `self − 8·x2`.
    fn minus_8x(self, x2: Self) -> Self;
    /// To float32, rounding to nearest.
    fn to_f32(self) -> f32;
}

impl EpilogueInt for i64 {
    fn constants(w: &Int4Weight) -> (&[i64], &[i64]) {
        (&w.c1, &w.c2)
    }
    fn less(self, zx: i32, c: i64) -> i64 {
        self - zx as i64 * c
    }
    fn minus_8x(self, x2: i64) -> i64 {
        self - 8 * x2
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl EpilogueInt for i32 {
    fn constants(w: &Int4Weight) -> (&[i32], &[i32]) {
        (&w.c1_32, &w.c2_32)
    }
    fn less(self, zx: i32, c: i32) -> i32 {
        self.wrapping_sub(zx.wrapping_mul(c))
    }
    fn minus_8x(self, x2: i32) -> i32 {
        self.wrapping_sub(x2.wrapping_mul(8))
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// [`epilogue_one`] for the columns `n0..n0 + dst.len()` of one row, from the kernels' sums
/// `s1 = Σ cd·P` and `s2 = Σ cm·A` (summed in i64 over several chunks, or i32 for one; see
/// [`EpilogueInt`]): `X1 = s1 − zx·C1`, `X2 = s2 − zx·C2`. The same float expression, in a
/// loop the compiler vectorizes.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn epilogue_row<T: EpilogueInt>(
    w: &Int4Weight,
    n0: usize,
    zx: i32,
    sx: f32,
    s1: &[T],
    s2: &[T],
    bias: Option<&[f32]>,
    dst: &mut [f32],
) {
    let cols = dst.len();
    let r = n0..n0 + cols;
    let (c1, c2) = T::constants(w);
    let (fd, fm, c1, c2) = (&w.fd[r.clone()], &w.fm[r.clone()], &c1[r.clone()], &c2[r]);
    let (s1, s2) = (&s1[..cols], &s2[..cols]);
    for c in 0..cols {
        let (x1, x2) = (s1[c].less(zx, c1[c]), s2[c].less(zx, c2[c]));
        let b = bias.map_or(0.0, |b| b[c]);
        dst[c] = output(w.symmetric, sx, fd[c], fm[c], x1, x2, b);
    }
}
