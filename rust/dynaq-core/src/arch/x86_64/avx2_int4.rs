//! The AVX2 4-bit GEMM microkernel (`README.md` of `int4`, "The arithmetic").
//!
//! Levels are stored unsigned (`q ∈ 0..=15`), so `vpmaddubsw(a, q)` (u8 × s8) is exact here:
//! a pair of products is at most `2·255·15 = 7,650`, far from i16 saturation, and four such
//! pairs (two blocks of 8 k) still fit an i16 lane (30,600 ≤ 32,767). One `vpmaddwd` with ones
//! per two blocks then widens to i32. Unpacking is `and 0x0F` and `srl 4; and 0x0F` on 32
//! bytes (8 columns × 8 k), shared by every row of the tile.
//!
//! The general kernel applies a group's codes in the widening step: `vpmaddwd` takes, instead
//! of ones, each column's `cd` in both i16 halves of its lane, so `Σ cd·P` accumulates directly
//! (no per-group sums, no `vpmulld`). The rows' activation sums times `cm` (`Σ cm·A`) are
//! summed in a second, short loop over the groups, two groups per `vpmaddwd` up to groups of
//! 128 (their sums fit i16).
//!
//! Tile: up to [`MR`] rows × 1 panel, in two passes of 8 columns so that the block sums
//! (`MR`), the unpacked levels (4) and the constants fit in 16 ymm registers.
//!
//! [`GEMV_INT4`] is the kernel of one or two rows: several panels side by side, each block
//! read once (`int4/README.md`, "Few rows: the streaming kernel").

use crate::int4::kernel::{Int4Kernel, Int4Ptrs, Int4Tile};
use crate::int4::weight::BLOCK_BYTES;
use crate::isa::Isa;
use core::arch::x86_64::*;

/// Most rows of a tile.
const MR: usize = 4;
/// Blocks (64 bytes each) ahead that the weight stream is prefetched. At M = 1 the kernel
/// waits on its weight loads (~46% of the samples of `perf record` at 4096 x 11008); asking
/// 1 KiB ahead took that call from ~2.6 to ~2.3 ms on one thread here (8, 16, 32 and 64 blocks
/// measured alike).
const PREFETCH: usize = 16;

/// The 4-bit GEMM kernel of this path.
pub static GEMM_INT4: Int4Kernel = Int4Kernel {
    name: "avx2_u8u4_i32_maddubs_4x16",
    isa: Isa::Avx2,
    mr: MR,
    np: 1,
    func: gemm_entry,
};

/// `(levels of k 0..4, levels of k 4..8)` of 8 columns: 32 bytes from `p`.
///
/// # Safety
/// The CPU must have AVX2; `p .. p + 32` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn unpack(p: *const u8, mask: __m256i) -> (__m256i, __m256i) {
    // SAFETY: 32 readable bytes (contract above).
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    (
        _mm256_and_si256(v, mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
    )
}

/// Four activations of a row broadcast to every 32-bit lane.
///
/// # Safety
/// The CPU must have AVX2; `p .. p + 4` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: 4 readable bytes (contract above).
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// One pass of `R` rows: `(Σ cd·P, Σ cm·A)` per row for 8 columns (`p` at this pass's first
/// byte of the panel, `+ 32·pass`, and its first codes, `+ 8·pass`).
///
/// # Safety
/// The CPU must have AVX2. For `r < R`, `g < groups`, block `h < groups·group_blocks`:
/// `a + r·lda + 8h .. + 8`, `asum + r·lds + g`, `b + 64h .. + 32` and
/// `cd/cm + g·code_step .. + 8` are readable. (The sums are exact when each `asum` is a group's
/// activation sum, at most `255·8·group_blocks`, as [`Int4Tile`] defines it.)
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn pass<const R: usize>(p: &Int4Ptrs) -> [[__m256i; 2]; MR] {
    let zero = _mm256_setzero_si256();
    let mask = _mm256_set1_epi8(0x0F);
    let mut out = [[zero; 2]; MR];
    for g in 0..p.groups {
        // SAFETY: group `g < groups`: 8 readable codes (contract above).
        let cd = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cd.add(g * p.code_step).cast())) };
        // Each column's `cd` in both i16 halves of its i32 lane: `vpmaddwd` then applies the
        // group's codes to the pair sums of `vpmaddubsw` (no per-group sums, no `vpmulld`).
        // Exact: four products of a lane sum to at most 4·2·255·15 = 30,600 (< 2^15), times
        // 255, twice: 15.6e6 per two blocks; every partial sum is non-negative and a chunk's
        // total stays below 2^31 (the driver's chunks).
        let cd = _mm256_or_si256(cd, _mm256_slli_epi32::<16>(cd));
        let (mut h, end) = (g * p.group_blocks, (g + 1) * p.group_blocks);
        while h + 2 <= end {
            // SAFETY: blocks `h, h + 1 < end <= groups·group_blocks` and rows `r < R`: every
            // read is inside the ranges of the contract above.
            unsafe {
                // A prefetch never faults; `wrapping_add` keeps the address arithmetic defined
                // past the end of the panel.
                _mm_prefetch::<_MM_HINT_T0>(p.b.wrapping_add(BLOCK_BYTES * (h + PREFETCH)).cast());
                _mm_prefetch::<_MM_HINT_T0>(
                    p.b.wrapping_add(BLOCK_BYTES * (h + PREFETCH + 1)).cast(),
                );
                let (l0, h0) = unpack(p.b.add(BLOCK_BYTES * h), mask);
                let (l1, h1) = unpack(p.b.add(BLOCK_BYTES * (h + 1)), mask);
                for r in 0..R {
                    let a = p.a.add(r * p.lda + 8 * h);
                    let s = _mm256_add_epi16(
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(bcast4(a), l0),
                            _mm256_maddubs_epi16(bcast4(a.add(4)), h0),
                        ),
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(bcast4(a.add(8)), l1),
                            _mm256_maddubs_epi16(bcast4(a.add(12)), h1),
                        ),
                    );
                    out[r][0] = _mm256_add_epi32(out[r][0], _mm256_madd_epi16(s, cd));
                }
            }
            h += 2;
        }
        if h < end {
            // SAFETY: block `h < end`, rows `r < R`, as above.
            unsafe {
                let (l0, h0) = unpack(p.b.add(BLOCK_BYTES * h), mask);
                for r in 0..R {
                    let a = p.a.add(r * p.lda + 8 * h);
                    let s = _mm256_add_epi16(
                        _mm256_maddubs_epi16(bcast4(a), l0),
                        _mm256_maddubs_epi16(bcast4(a.add(4)), h0),
                    );
                    out[r][0] = _mm256_add_epi32(out[r][0], _mm256_madd_epi16(s, cd));
                }
            }
        }
    }
    // `Σ cm·A` in a loop of its own: inside the one above, its accumulators spilled and cost
    // ~15% at group 32. Up to groups of 128 a group's activation sum is at most
    // 255·128 = 32,640 (< 2^15): two groups then go through one `vpmaddwd`, each column's
    // codes `(cm_g, cm_g+1)` against the sums `(A_g, A_g+1)`.
    let pairs = if p.group_blocks <= 16 {
        p.groups / 2
    } else {
        0
    };
    for gp in 0..pairs {
        let g = 2 * gp;
        // SAFETY: groups `g, g + 1 < groups`: 8 readable codes each (contract above).
        let cm = unsafe {
            let c0 = _mm_loadl_epi64(p.cm.add(g * p.code_step).cast());
            let c1 = _mm_loadl_epi64(p.cm.add((g + 1) * p.code_step).cast());
            _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(c0, c1))
        };
        for r in 0..R {
            // SAFETY: row `r < R`, groups `g, g + 1 < groups` (contract above).
            let (s0, s1) = unsafe { (*p.asum.add(r * p.lds + g), *p.asum.add(r * p.lds + g + 1)) };
            let sums = _mm256_set1_epi32((s1 << 16) | s0);
            out[r][1] = _mm256_add_epi32(out[r][1], _mm256_madd_epi16(cm, sums));
        }
    }
    for g in 2 * pairs..p.groups {
        // SAFETY: group `g < groups`: 8 readable codes (contract above).
        let cm = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cm.add(g * p.code_step).cast())) };
        for r in 0..R {
            // SAFETY: row `r < R`, group `g < groups` (contract above).
            let asum = _mm256_set1_epi32(unsafe { *p.asum.add(r * p.lds + g) });
            out[r][1] = _mm256_add_epi32(out[r][1], _mm256_mullo_epi32(asum, cm));
        }
    }
    out
}

/// Rows and panels of the streaming tile ([`GEMV_INT4`]).
const GEMV_MR: usize = 2;
const GEMV_NP: usize = 4;

/// The 4-bit kernel of few rows (M <= 8): up to [`GEMV_NP`] panels read side by side (more
/// streams in flight), each 64-byte block once, all 16 columns of a panel in one pass. One
/// row takes 4 panels at once, two rows 2 (the sums then fill the 16 registers).
pub static GEMV_INT4: Int4Kernel = Int4Kernel {
    name: "avx2_u8u4_i32_maddubs_2x64",
    isa: Isa::Avx2,
    mr: GEMV_MR,
    np: GEMV_NP,
    func: gemv_entry,
};

/// `R` rows against `P` panels: `(Σ cd·P, Σ cm·A)` for 16 columns of each, as 8-column halves
/// (`[row][panel][half]`).
///
/// # Safety
/// The CPU must have AVX2. For `r < R`, `q < P`, `g < groups`, block `h <
/// groups·group_blocks`: `a + r·lda + 8h .. + 8`, `asum + r·lds + g`,
/// `b + q·panel_stride + 64h .. + 64` and `cd/cm + q·code_stride + g·code_step .. + 16` are
/// readable.
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn gemv<const R: usize, const P: usize>(
    p: &Int4Ptrs,
    panel_stride: usize,
    code_stride: usize,
) -> [[[[__m256i; 2]; 2]; P]; R] {
    let zero = _mm256_setzero_si256();
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut out = [[[[zero; 2]; 2]; P]; R];
    // The codes of panel `q`, group `g`, half `half`, zero-extended.
    let codes = |c: *const u8, q: usize, g: usize, half: usize| {
        // SAFETY: panel `q < P`, group `g < groups`: 8 of its 16 readable codes (contract
        // above).
        unsafe {
            let at = c.add(q * code_stride + g * p.code_step + 8 * half);
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(at.cast()))
        }
    };
    for g in 0..p.groups {
        let mut t = [[[zero; 2]; P]; R];
        for h in g * p.group_blocks..(g + 1) * p.group_blocks {
            // SAFETY: block `h < groups·group_blocks`, rows `r < R`, panels `q < P`: inside
            // the ranges of the contract above.
            unsafe {
                let a: [(__m256i, __m256i); R] = std::array::from_fn(|r| {
                    let row = p.a.add(r * p.lda + 8 * h);
                    (bcast4(row), bcast4(row.add(4)))
                });
                for q in 0..P {
                    let blk = p.b.add(q * panel_stride + BLOCK_BYTES * h);
                    for half in 0..2 {
                        let (lo, hi) = unpack(blk.add(32 * half), mask);
                        for r in 0..R {
                            let s = _mm256_add_epi16(
                                _mm256_maddubs_epi16(a[r].0, lo),
                                _mm256_maddubs_epi16(a[r].1, hi),
                            );
                            t[r][q][half] =
                                _mm256_add_epi32(t[r][q][half], _mm256_madd_epi16(s, ones));
                        }
                    }
                }
            }
        }
        for q in 0..P {
            for half in 0..2 {
                let cd = codes(p.cd, q, g, half);
                for r in 0..R {
                    let o = &mut out[r][q][half][0];
                    *o = _mm256_add_epi32(*o, _mm256_mullo_epi32(t[r][q][half], cd));
                }
            }
        }
    }
    for g in 0..p.groups {
        for q in 0..P {
            for half in 0..2 {
                let cm = codes(p.cm, q, g, half);
                for r in 0..R {
                    // SAFETY: row `r < R`, group `g < groups` (contract above).
                    let asum = _mm256_set1_epi32(unsafe { *p.asum.add(r * p.lds + g) });
                    let o = &mut out[r][q][half][1];
                    *o = _mm256_add_epi32(*o, _mm256_mullo_epi32(asum, cm));
                }
            }
        }
    }
    out
}

/// Panels `q0 .. q0 + P` of a tile of `R` rows.
///
/// # Safety
/// The CPU must have AVX2, `t` must satisfy the bounds asserted by [`Int4Kernel::run`], and
/// `R == t.rows`, `q0 + P <= t.panels`.
#[target_feature(enable = "avx2")]
unsafe fn gemv_panels<const R: usize, const P: usize>(t: &mut Int4Tile<'_>, q0: usize) {
    debug_assert!(t.rows == R && q0 + P <= t.panels);
    let p = Int4Ptrs {
        b: t.b[q0 * t.panel_stride..].as_ptr(),
        cd: t.cd[q0 * t.code_stride..].as_ptr(),
        cm: t.cm[q0 * t.code_stride..].as_ptr(),
        ..t.ptrs()
    };
    // SAFETY: `Int4Kernel::run` asserted every range `gemv` reads: for rows `r < rows`,
    // `8·groups·group_blocks` bytes of `a` from `r·lda` and `groups` sums of `asum` from
    // `r·lds`; `64` bytes per block of each panel at `q·panel_stride`, 16 codes per group at
    // `q·code_stride + g·code_step`, for the panels `q0 .. q0 + P <= panels`.
    let out = unsafe { gemv::<R, P>(&p, t.panel_stride, t.code_stride) };
    for (r, panels) in out.iter().enumerate() {
        for (q, halves) in panels.iter().enumerate() {
            for (half, o) in halves.iter().enumerate() {
                let at = r * t.ldc + 16 * (q0 + q) + 8 * half;
                // SAFETY: row `r < rows`, columns `16(q0 + q) + 8·half .. + 8 <= 16·panels`:
                // inside the C tiles (asserted by `Int4Kernel::run`).
                unsafe {
                    _mm256_storeu_si256(t.c1.as_mut_ptr().add(at).cast(), o[0]);
                    _mm256_storeu_si256(t.c2.as_mut_ptr().add(at).cast(), o[1]);
                }
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`Int4Kernel::run`]
/// (the only caller).
unsafe fn gemv_entry(t: &mut Int4Tile<'_>) {
    // SAFETY: `Int4Kernel::run` asserted that the CPU supports `Isa::Avx2` and the bounds;
    // each call covers panels inside `0..panels` with the tile's row count.
    unsafe {
        match (t.rows, t.panels) {
            (1, 1) => gemv_panels::<1, 1>(t, 0),
            (1, 2) => gemv_panels::<1, 2>(t, 0),
            (1, 3) => gemv_panels::<1, 3>(t, 0),
            (1, 4) => gemv_panels::<1, 4>(t, 0),
            (2, 1) => gemv_panels::<2, 1>(t, 0),
            (2, 2) => gemv_panels::<2, 2>(t, 0),
            (2, 3) => {
                gemv_panels::<2, 2>(t, 0);
                gemv_panels::<2, 1>(t, 2);
            }
            (2, 4) => {
                gemv_panels::<2, 2>(t, 0);
                gemv_panels::<2, 2>(t, 2);
            }
            _ => unreachable!("tile shape out of range"),
        }
    }
}

type PassFn = unsafe fn(&Int4Ptrs) -> [[__m256i; 2]; MR];

/// The monomorphized pass for `rows` (`1..=MR`).
fn pass_fn(rows: usize) -> PassFn {
    match rows {
        1 => pass::<1>,
        2 => pass::<2>,
        3 => pass::<3>,
        4 => pass::<4>,
        _ => unreachable!("tile rows out of range"),
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`Int4Kernel::run`].
#[target_feature(enable = "avx2")]
unsafe fn gemm_tile(t: &mut Int4Tile<'_>) {
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels == 1);
    let f = pass_fn(t.rows);
    for half in 0..2 {
        // This pass's half of the panel's first block and of the first group's codes
        // (`Int4Kernel::run` asserted 64 bytes per block and 16 codes per group).
        let p = Int4Ptrs {
            b: t.b[32 * half..].as_ptr(),
            cd: t.cd[8 * half..].as_ptr(),
            cm: t.cm[8 * half..].as_ptr(),
            ..t.ptrs()
        };
        // SAFETY: `Int4Kernel::run` asserted every range `pass` reads: rows `r < rows` of `a`
        // hold `8·groups·group_blocks` bytes from `r·lda`, of `asum` `groups` sums from
        // `r·lds`; the panel holds `64` bytes per block, of which this pass reads 32 from
        // `32·half`; each group's codes are 16 bytes at `g·code_step`, of which it reads 8.
        let out = unsafe { f(&p) };
        for (r, o) in out.iter().enumerate().take(t.rows) {
            let at = r * t.ldc + 8 * half;
            // SAFETY: row `r < rows`, columns `8·half .. + 8 <= 16`: inside the C tiles
            // (asserted by `Int4Kernel::run`).
            unsafe {
                _mm256_storeu_si256(t.c1.as_mut_ptr().add(at).cast(), o[0]);
                _mm256_storeu_si256(t.c2.as_mut_ptr().add(at).cast(), o[1]);
            }
        }
    }
}

/// # Safety
/// The CPU must have AVX2, and `t` must satisfy the bounds asserted by [`Int4Kernel::run`]
/// (the only caller).
unsafe fn gemm_entry(t: &mut Int4Tile<'_>) {
    // SAFETY: `Int4Kernel::run` asserted that the CPU supports `Isa::Avx2` and the bounds.
    unsafe { gemm_tile(t) }
}
