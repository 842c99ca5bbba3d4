//! The 4-bit GEMM driver and its epilogue: `linear` on an [`Int4Weight`].
//!
//! ```text
//! LOOP 1 (parallel): work items = blocks of M rows x blocks of N tiles (`gemm::Plan`)
//! LOOP 2: groups of n tiles whose weights fit in half of L2
//! LOOP 3: m tiles (mr rows)
//! LOOP 4: n tiles of the group (np panels of 16 columns)
//! LOOP 5: K chunks of whole groups -> i32 tiles (Σ cd·P, Σ cm·A), summed in i64
//! epilogue: y = sx·(fd·f32(X1) + fm·f32(X2)) + bias, as `weight::linear_ref`
//! ```
//!
//! **Chunks.** Every product `a·q` is at most `255·15 = 3825`, and codes at most 255, so a
//! chunk of `Σ cd·P` is at most `255·3825·len`: [`GROUP_CHUNK`] = 2,048 k keeps it below
//! 2^31 (1.997e9). Per channel the code is 1, and [`CHANNEL_CHUNK`] = 2^19 k gives 2.005e9.
//! All terms are non-negative, so no partial sum exceeds the chunk's total.

use super::kernel::{Int4Kernel, Int4Tile};
use super::weight::{epilogue_row, Int4Weight, BLOCK_BYTES, PANEL};
use crate::error::Result;
use crate::gemm::{Plan, QuantizedA, SharedOut, B_GROUP_BYTES, MAX_MR, TEAM_MIN_MACS};

/// Longest chunk of K summed in one i32, group-wise (a multiple of every group size).
pub const GROUP_CHUNK: usize = 2048;
/// Longest chunk of K summed in one i32, per channel (a multiple of 8).
pub const CHANNEL_CHUNK: usize = 1 << 19;

/// Most panels per tile of any 4-bit kernel.
const MAX_NP: usize = 4;

/// How K is cut: `chunks` calls of `groups` groups of `group_blocks` blocks each (the last one
/// shorter), and the activation sums the kernels read, one per row and kernel group.
#[derive(Clone, Copy, Debug)]
struct Chunks {
    /// Kernel groups in all (groups of the weight, or chunks per channel).
    groups: usize,
    /// Blocks of 8 k per kernel group (the last group per channel may be shorter).
    group_blocks: usize,
    /// Kernel groups per call.
    per_call: usize,
    /// k per kernel group.
    group_k: usize,
    /// Codes step per kernel group (16, or 0 per channel).
    code_step: usize,
}

impl Chunks {
    fn new(w: &Int4Weight) -> Chunks {
        let k = w.shape().1;
        if w.per_channel() {
            let group_k = CHANNEL_CHUNK;
            Chunks {
                groups: k.div_ceil(group_k),
                group_blocks: group_k / 8,
                per_call: 1,
                group_k,
                code_step: 0,
            }
        } else {
            let g = w.group();
            Chunks {
                groups: w.groups(),
                group_blocks: g / 8,
                per_call: (GROUP_CHUNK / g).max(1),
                group_k: g,
                code_step: PANEL,
            }
        }
    }
}

/// The outputs of one call: `out = sx·(fd·f32(X1) + fm·f32(X2)) + bias` (`m x n`).
pub struct Int4Linear<'a> {
    /// Quantized activations (rows padded to a multiple of 8).
    pub a: &'a QuantizedA,
    /// Activation zero point per row.
    pub zx: &'a [i32],
    /// Activation scale per row.
    pub sx: &'a [f32],
    /// The weight.
    pub w: &'a Int4Weight,
    /// Bias per output column.
    pub bias: Option<&'a [f32]>,
}

/// Runs `linear` on a 4-bit weight into `out` (`m x n`, row-major).
pub fn linear(kernel: &Int4Kernel, call: &Int4Linear<'_>, out: &mut [f32]) -> Result<()> {
    let (n, k) = call.w.shape();
    let m = call.a.m();
    assert_eq!(call.a.k(), k, "inner dimensions differ");
    assert_eq!(out.len(), m * n, "output size");
    assert!(call.zx.len() >= m && call.sx.len() >= m);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (mr, np) = (kernel.mr.min(MAX_MR), kernel.np.min(MAX_NP));
    let ch = Chunks::new(call.w);
    let asum = activation_sums(call.a, &ch)?;
    let panels = n.div_ceil(PANEL);
    let n_tiles = panels.div_ceil(np);
    let m_tiles = m.div_ceil(mr);
    let macs = m.saturating_mul(n).saturating_mul(k.max(1));
    let plan = Plan::new(m_tiles, n_tiles, mr, k, macs, crate::threads::num_threads());
    let out = SharedOut::new(out);
    let item = |idx: usize| -> Result<()> {
        let (mts, nts) = plan.item(idx);
        let row0 = mts.start * mr;
        let rows = (mts.end * mr).min(m) - row0;
        run_block(kernel, call, &ch, &asum, &out, row0, rows, nts);
        Ok(())
    };
    crate::threads::for_each_index_on(plan.items(), plan.threads - 1, macs >= TEAM_MIN_MACS, item)
}

/// `asum[r·groups + g]`: each row's activation sum over each kernel group.
fn activation_sums(a: &QuantizedA, ch: &Chunks) -> Result<Vec<i32>> {
    let (m, k) = (a.m(), a.k());
    let mut asum = crate::error::try_zeroed::<i32>(m * ch.groups.max(1), "activation sums")?;
    for r in 0..m {
        let row = a.row(r);
        for g in 0..ch.groups {
            let span = (g * ch.group_k).min(k)..((g + 1) * ch.group_k).min(k);
            asum[r * ch.groups + g] = row[span].iter().map(|&v| v as i32).sum();
        }
    }
    Ok(asum)
}

/// LOOPS 2-5 and the epilogue for rows `row0..row0 + rows` against the N tiles `nts`.
#[allow(clippy::too_many_arguments)]
fn run_block(
    kernel: &Int4Kernel,
    call: &Int4Linear<'_>,
    ch: &Chunks,
    asum: &[i32],
    out: &SharedOut<'_, f32>,
    row0: usize,
    rows_all: usize,
    nts: std::ops::Range<usize>,
) {
    let w = call.w;
    let (n, k) = w.shape();
    let (mr, np) = (kernel.mr.min(MAX_MR), kernel.np.min(MAX_NP));
    let blocks = k.div_ceil(8);
    let panel_stride = blocks * BLOCK_BYTES;
    let code_stride = w.groups() * PANEL;
    let (a_all, lda) = call.a.strided();
    let ldc = np * PANEL;
    let (mut c1, mut c2) = (
        [0i32; MAX_MR * MAX_NP * PANEL],
        [0i32; MAX_MR * MAX_NP * PANEL],
    );
    let (mut s1, mut s2) = (
        [0i64; MAX_MR * MAX_NP * PANEL],
        [0i64; MAX_MR * MAX_NP * PANEL],
    );
    let calls = ch.groups.div_ceil(ch.per_call);
    // LOOP 2: N tiles whose weights fit in about B_GROUP_BYTES.
    let group = (B_GROUP_BYTES / (panel_stride * np).max(1)).max(1);
    for g_start in nts.clone().step_by(group) {
        let g_tiles = g_start..(g_start + group).min(nts.end);
        // LOOP 3: m tiles.
        for r0 in (0..rows_all).step_by(mr) {
            let rows = mr.min(rows_all - r0);
            let m0 = row0 + r0;
            // LOOP 4: n tiles.
            for nt in g_tiles.clone() {
                let p0 = nt * np;
                let tile_panels = np.min(n.div_ceil(PANEL) - p0);
                let n0 = p0 * PANEL;
                let cols = (tile_panels * PANEL).min(n - n0);
                // LOOP 5: chunks of whole kernel groups; more than one are summed in i64.
                for call_i in 0..calls {
                    let g0 = call_i * ch.per_call;
                    let groups = ch.per_call.min(ch.groups - g0);
                    let b0 = g0 * ch.group_blocks;
                    // Per channel the last chunk may hold fewer blocks.
                    let group_blocks = ch.group_blocks.min(blocks - b0);
                    let mut t = Int4Tile {
                        rows,
                        panels: tile_panels,
                        groups,
                        group_blocks,
                        a: &a_all[m0 * lda + 8 * b0..],
                        lda,
                        asum: &asum[m0 * ch.groups + g0..],
                        lds: ch.groups,
                        b: &w.panels()[p0 * panel_stride + b0 * BLOCK_BYTES..],
                        panel_stride,
                        cd: &w.cd_panels()[p0 * code_stride + g0 * ch.code_step..],
                        cm: &w.cm_panels()[p0 * code_stride + g0 * ch.code_step..],
                        code_stride,
                        code_step: ch.code_step,
                        c1: &mut c1,
                        c2: &mut c2,
                        ldc,
                    };
                    kernel.run(&mut t);
                    if calls > 1 {
                        for r in 0..rows {
                            let at = r * ldc..r * ldc + cols;
                            let sums = s1[at.clone()].iter_mut().zip(&mut s2[at.clone()]);
                            for ((d1, d2), (v1, v2)) in sums.zip(c1[at.clone()].iter().zip(&c2[at]))
                            {
                                (*d1, *d2) = (*d1 + *v1 as i64, *d2 + *v2 as i64);
                            }
                        }
                    }
                }
                for r in 0..rows {
                    let mrow = m0 + r;
                    // SAFETY: this tile (rows m0.., columns n0..) belongs to this call alone
                    // (the plan hands each tile to one item); the row is dropped at once.
                    let dst = unsafe { out.tile_row(mrow * n + n0, cols) };
                    let at = r * ldc..r * ldc + cols;
                    let (zx, sx) = (call.zx[mrow], call.sx[mrow]);
                    let bias = call.bias.map(|b| &b[n0..n0 + cols]);
                    if calls > 1 {
                        epilogue_row(w, n0, zx, sx, &s1[at.clone()], &s2[at], bias, dst);
                        s1[r * ldc..r * ldc + cols].fill(0);
                        s2[r * ldc..r * ldc + cols].fill(0);
                    } else {
                        epilogue_row(w, n0, zx, sx, &c1[at.clone()], &c2[at], bias, dst);
                    }
                }
            }
        }
    }
}
