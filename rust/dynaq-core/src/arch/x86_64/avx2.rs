//! The AVX2 GEMM microkernel: exact `vpmaddwd` products of i16-widened activations and
//! sign-extended `K4N16` weights, tiles of up to 6 rows x 16 columns.
//!
//! GEMM: `vpmaddubsw` (u8 x s8) would be the obvious instruction, but it saturates the sum of
//! each pair of products to i16 (`255 * 127 * 2 = 64770 > 32767`), so it is not exact on the
//! full range. Instead the driver widens A to i16 ([`AFormat::I16`]) and this kernel
//! sign-extends B (`vpmovsxbw`: 16 bytes of a `K4N16` group = 4 columns x 4 k -> 16 i16). The
//! row's 4 activations of the group are broadcast as one 64-bit pattern (`vpbroadcastq`), and
//! `vpmaddwd` gives, per column, the partial sums `a0 b0 + a1 b1` and `a2 b2 + a3 b3` in
//! adjacent i32 lanes (each at most `2 * 255 * 128` in magnitude: exact). They are accumulated
//! with `vpaddd` and the adjacent pairs added at the end (`vphaddd`).
//!
//! Tile: up to [`MR`] = 6 rows x 1 panel, processed as two passes of 8 columns (2 column quads)
//! so that the accumulators (`2 * MR` = 12), the B registers (2), one row broadcast and one
//! product fit in the 16 ymm registers without spilling. See `README.md` in this folder for the
//! measurements. The kernel of one or two rows is in `avx2_gemv.rs`, the quantization kernels
//! of this path in `avx2_quant.rs`.

use crate::isa::Isa;
use crate::kernel::{AData, AFormat, GemmKernel, Tile};
use crate::pack::{GROUP_BYTES, PANEL};
use core::arch::x86_64::*;

/// Most rows of a tile.
const MR: usize = 6;
/// Most 16-column panels of a tile.
const NP: usize = 1;
/// Column quads (4 columns, 16 bytes of a group) per pass over K: 2 or 4.
const QN: usize = 2;

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "avx2_u8s8_i32_madd16_6x16",
    isa: Isa::Avx2,
    mr: MR,
    np: NP,
    a_format: AFormat::I16,
    func: gemm_entry,
};

/// K groups per block: both passes of a tile run over one block before the next, so that the
/// block of A (`6 x 128 x 4` i16, 6 KiB) is read from L2 once and from L1 by the second pass,
/// with the block of B (8 KiB).
const KB: usize = 128;

/// Raw accumulators of one pass: per row, `QN` vectors of adjacent-pair partial sums.
type Acc = [[__m256i; QN]; MR];

/// Adds `R` rows x `QN` column quads of one panel over `k4` groups to `acc`.
///
/// # Safety
/// The CPU must have AVX2. For `r < R`: `a + r * lda .. + 4 * k4` (i16) is readable;
/// `b + 64 * g + 16 * q .. + 16` is readable for `g < k4`, `q < QN` (`b` points at the first
/// quad of this pass inside a panel; it is not used when `k4 == 0`).
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize>(a: *const i16, lda: usize, b: *const i8, k4: usize, acc: &mut Acc) {
    let zero = _mm256_setzero_si256();
    let mut s = [[zero; QN]; R];
    s.copy_from_slice(&acc[..R]);
    for g in 0..k4 {
        // The B quads first, then one row at a time (broadcast, `QN` products): `2 R` + `QN` + 2
        // live registers, 16 for `R = 6`.
        let mut bv = [zero; QN];
        for (q, bq) in bv.iter_mut().enumerate() {
            // SAFETY: group `g < k4`, quad `q < QN`: 16 readable bytes (contract above).
            let raw = unsafe { _mm_loadu_si128(b.add(g * GROUP_BYTES + 16 * q).cast()) };
            *bq = _mm256_cvtepi8_epi16(raw);
        }
        for r in 0..R {
            // SAFETY: row `r`, elements `4 * g .. + 4` with `g < k4` (contract above).
            let word = unsafe { a.add(r * lda + 4 * g).cast::<i64>().read_unaligned() };
            let av = _mm256_set1_epi64x(word);
            for q in 0..QN {
                s[r][q] = _mm256_add_epi32(s[r][q], _mm256_madd_epi16(av, bv[q]));
            }
        }
    }
    acc[..R].copy_from_slice(&s);
}

type TileFn = unsafe fn(*const i16, usize, *const i8, usize, &mut Acc);

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
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`GemmKernel::run`].
#[target_feature(enable = "avx2")]
unsafe fn gemm_tile(t: &mut Tile<'_>) {
    let AData::I16(a) = t.a else {
        unreachable!("the avx2 kernel reads i16 activations")
    };
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels >= 1 && t.panels <= NP);
    debug_assert!(a.len() >= (t.rows - 1) * t.lda + 4 * t.k4);
    debug_assert!(t.b.len() >= (t.panels - 1) * t.panel_stride + t.k4 * GROUP_BYTES);
    debug_assert!(t.c.len() >= (t.rows - 1) * t.ldc + t.panels * PANEL);
    let f = tile_fn(t.rows);
    let zero = _mm256_setzero_si256();
    // Per panel and pass, the raw accumulators of the tile (kept in memory between K blocks).
    let mut acc = [[[[zero; QN]; MR]; 4 / QN]; NP];
    let mut g0 = 0;
    while g0 < t.k4 {
        let g = KB.min(t.k4 - g0);
        for (p, acc) in acc.iter_mut().enumerate().take(t.panels) {
            for (pass, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `GemmKernel::run` asserted the bounds `tile` relies on: A rows at
                // `r * lda` hold `4 * k4` values, of which this block reads `4 * g0 .. + 4 * g`;
                // panel `p < panels` holds `64 * k4` bytes from `p * panel_stride`, of which
                // this block and pass read bytes `16 * QN * pass .. + 16 * QN` of groups
                // `g0 .. g0 + g` (`g0 + g <= k4`).
                unsafe {
                    f(
                        a.as_ptr().add(4 * g0),
                        t.lda,
                        t.b.as_ptr()
                            .add(p * t.panel_stride + g0 * GROUP_BYTES + 16 * QN * pass),
                        g,
                        acc,
                    )
                }
            }
        }
        g0 += g;
    }
    for (p, acc) in acc.iter().enumerate().take(t.panels) {
        for (pass, acc) in acc.iter().enumerate() {
            for (r, row) in acc.iter().enumerate().take(t.rows) {
                for h in 0..QN / 2 {
                    // Lanes of quad q: (c0, k01) (c0, k23) (c1, k01) ... (c3, k23). `vphaddd`
                    // sums the pairs within 128-bit halves: [c0 c1 c4 c5 | c2 c3 c6 c7]; the
                    // permute restores the column order.
                    let s = _mm256_hadd_epi32(row[2 * h], row[2 * h + 1]);
                    let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                    let col = p * PANEL + 4 * QN * pass + 8 * h;
                    let at = r * t.ldc + col;
                    // SAFETY: row `r < rows`, columns `col .. + 8 <= 16 * panels`: inside the C
                    // tile (asserted by `GemmKernel::run`).
                    unsafe { _mm256_storeu_si256(t.c.as_mut_ptr().add(at).cast(), s) };
                }
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`GemmKernel::run`] (the
/// only caller).
unsafe fn gemm_entry(t: &mut Tile<'_>) {
    // SAFETY: `GemmKernel::run` asserted that the CPU supports `Isa::Avx2` and the bounds.
    unsafe { gemm_tile(t) }
}
