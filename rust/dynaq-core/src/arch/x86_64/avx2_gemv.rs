//! The AVX2 int8 GEMM kernel of one or two rows ([`GEMV`], `avx2_u8s8_i32_madd16_2x48`).
//!
//! A kernel of its own because few rows are bound by reading the weight, not by arithmetic:
//! the general 6 x 16 kernel (`avx2.rs`) streams one panel at a time in two passes per K block,
//! while this one reads each 64-byte group of B once, all 16 columns in one pass, with up to
//! [`GEMV_NP`] panels side by side (more streams in flight). Same exact arithmetic as `avx2.rs`
//! (A widened to i16, B sign-extended, `vpmaddwd`). `dispatch::gemm_kernel_for` gives it
//! M <= `GEMV_ROWS`; `README.md` in this folder, "AVX2 GEMV", has the measurements.

use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, Tile};
use crate::pack::{GROUP_BYTES, PANEL};
use core::arch::x86_64::*;

/// The GEMM kernel of one or two rows (`README.md`, "AVX2 GEMV"): [`GEMV_NP`] panels side by
/// side (more streams in flight), each 64-byte group of B read once, all 16 columns in one
/// pass. One row takes 3 panels at once (12 accumulators), two rows 1 (8).
pub static GEMV: GemmKernel = GemmKernel {
    name: "avx2_u8s8_i32_madd16_2x48",
    isa: Isa::Avx2,
    mr: 2,
    np: GEMV_NP,
    a_format: AFormat::I16,
    func: gemv_entry,
};

/// Panels of [`GEMV`]'s tiles.
const GEMV_NP: usize = 3;

/// `R` rows against `P` panels over `k4` groups: per row and panel, the 4 quads'
/// adjacent-pair partial sums.
///
/// # Safety
/// The CPU must have AVX2. For `r < R`, `p < P`, `g < k4`: `a + r·lda + 4g .. + 4` (i16) and
/// `b + p·panel_stride + 64g .. + 64` are readable.
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn gemv<const R: usize, const P: usize>(
    a: *const i16,
    lda: usize,
    b: *const i8,
    panel_stride: usize,
    k4: usize,
) -> [[[__m256i; 4]; P]; R] {
    let zero = _mm256_setzero_si256();
    let mut s = [[[zero; 4]; P]; R];
    for g in 0..k4 {
        let av: [__m256i; R] = std::array::from_fn(|r| {
            // SAFETY: row `r < R`, elements `4g .. + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<i64>().read_unaligned() };
            _mm256_set1_epi64x(word)
        });
        for p in 0..P {
            for q in 0..4 {
                // SAFETY: panel `p < P`, group `g < k4`, quad `q < 4`: 16 of its 64 readable
                // bytes (contract above).
                let raw = unsafe {
                    _mm_loadu_si128(b.add(p * panel_stride + g * GROUP_BYTES + 16 * q).cast())
                };
                let bq = _mm256_cvtepi8_epi16(raw);
                for r in 0..R {
                    s[r][p][q] = _mm256_add_epi32(s[r][p][q], _mm256_madd_epi16(av[r], bq));
                }
            }
        }
    }
    s
}

/// Panels `p0 .. p0 + P` of a tile of `R` rows.
///
/// # Safety
/// The CPU must have AVX2, `t` must satisfy the bounds asserted by [`GemmKernel::run`], its
/// activations must be i16, and `R == t.rows`, `p0 + P <= t.panels`.
#[target_feature(enable = "avx2")]
unsafe fn gemv_panels<const R: usize, const P: usize>(t: &mut Tile<'_>, p0: usize) {
    let AData::I16(a) = t.a else {
        unreachable!("the avx2 kernels read i16 activations")
    };
    debug_assert!(t.rows == R && p0 + P <= t.panels);
    // SAFETY: `GemmKernel::run` asserted that rows `r < rows` of A hold `4·k4` values from
    // `r·lda` and that panels `p < panels` hold `64·k4` bytes from `p·panel_stride`; this call
    // reads panels `p0 .. p0 + P <= panels`.
    let acc = unsafe {
        gemv::<R, P>(
            a.as_ptr(),
            t.lda,
            t.b.as_ptr().add(p0 * t.panel_stride),
            t.panel_stride,
            t.k4,
        )
    };
    for (r, panels) in acc.iter().enumerate() {
        for (p, quads) in panels.iter().enumerate() {
            for h in 0..2 {
                // As in `avx2::gemm_tile`: pairs summed within 128-bit halves, then reordered.
                let s = _mm256_hadd_epi32(quads[2 * h], quads[2 * h + 1]);
                let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                let at = r * t.ldc + (p0 + p) * PANEL + 8 * h;
                // SAFETY: row `r < rows`, columns `16(p0 + p) + 8h .. + 8 <= 16·panels`: inside
                // the C tile (asserted by `GemmKernel::run`).
                unsafe { _mm256_storeu_si256(t.c.as_mut_ptr().add(at).cast(), s) };
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`GemmKernel::run`] (the
/// only caller).
unsafe fn gemv_entry(t: &mut Tile<'_>) {
    // SAFETY: `GemmKernel::run` asserted that the CPU supports `Isa::Avx2` and the bounds, and
    // that A is in this kernel's format (i16); each call covers panels inside `0..panels`.
    unsafe {
        match (t.rows, t.panels) {
            (1, 1) => gemv_panels::<1, 1>(t, 0),
            (1, 2) => gemv_panels::<1, 2>(t, 0),
            (2, 1) => gemv_panels::<2, 1>(t, 0),
            (1, 3) => gemv_panels::<1, 3>(t, 0),
            (2, 2) => {
                gemv_panels::<2, 1>(t, 0);
                gemv_panels::<2, 1>(t, 1);
            }
            (2, 3) => {
                gemv_panels::<2, 1>(t, 0);
                gemv_panels::<2, 1>(t, 1);
                gemv_panels::<2, 1>(t, 2);
            }
            _ => unreachable!("tile shape out of range"),
        }
    }
}
