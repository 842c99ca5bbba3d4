//! The GEMM driver: tiles, K chunks and threads around a microkernel.
//!
//! ```text
//! LOOP 1 (parallel): work items = blocks of M rows x blocks of N tiles (see `Plan`)
//! LOOP 2: groups of n tiles of the item whose weights fit in half of L2
//! LOOP 3: m tiles of the item (mr rows); the A micro-panel (mr x K) stays in L1
//! LOOP 4: n tiles of the group (nr = np * 16 columns)
//! LOOP 5: K chunks of at most K_CHUNK (one chunk for K <= 65536)
//!         microkernel -> i32 tile; several chunks add up in an i64 tile
//! epilogue: the tile goes to the caller's `Epilogue`, which writes the output
//! ```
//!
//! The driver never lets an i32 accumulator overflow: a chunk sums at most `K_CHUNK` products
//! of magnitude at most `255 * 128`, and `65536 * 32640 = 2,139,095,040 < 2^31`.

use crate::error::Result;
use crate::kernel::{AData, AFormat, GemmKernel, Tile};
use crate::pack::{PackedB, GROUP_BYTES, PANEL};
use std::marker::PhantomData;

/// Largest reduction one i32 accumulator sums (a multiple of 4).
pub const K_CHUNK: usize = 65536;

/// Most rows and columns a microkernel tile may have; tile buffers are this size.
pub(crate) const MAX_MR: usize = 8;
pub(crate) const MAX_NR: usize = 64;

/// Where the driver hands finished tiles. Implementations write disjoint parts of an output,
/// possibly from several threads at once.
pub trait Epilogue: Sync {
    /// Rows `m0..m0+rows`, columns `n0..n0+cols`, from `acc[r * ldc + c]`.
    fn tile_i32(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i32], ldc: usize);
    /// The same for reductions longer than [`K_CHUNK`], summed in i64.
    fn tile_i64(&self, m0: usize, n0: usize, rows: usize, cols: usize, acc: &[i64], ldc: usize);
}

/// Quantized activations: `m` rows of `k` u8 values, row stride `lda` (a multiple of 4, the
/// padding zero).
#[derive(Clone, Debug, Default)]
pub struct QuantizedA {
    m: usize,
    k: usize,
    lda: usize,
    data: Vec<u8>,
}

impl QuantizedA {
    /// A zeroed buffer for `m x k`.
    pub fn zeroed(m: usize, k: usize) -> Result<QuantizedA> {
        let mut a = QuantizedA::default();
        a.reshape(m, k)?;
        Ok(a)
    }

    /// Makes this buffer `m x k`, reusing its memory. Values are stale until written; the
    /// padding past `k` in each row is zero, as the kernels need.
    pub fn reshape(&mut self, m: usize, k: usize) -> Result<()> {
        self.reshape_aligned(m, k, 4)
    }

    /// [`QuantizedA::reshape`] with rows padded to a multiple of `align` (4 for the int8
    /// kernels, 8 for the 4-bit ones, which read 8 k at a time).
    pub fn reshape_aligned(&mut self, m: usize, k: usize, align: usize) -> Result<()> {
        let lda = k.div_ceil(align) * align;
        let len = m
            .checked_mul(lda)
            .ok_or_else(|| crate::Error::Memory(format!("activations {m} x {k} are too large")))?;
        if len > self.data.len() {
            self.data
                .try_reserve(len - self.data.len())
                .map_err(|_| crate::Error::Memory(format!("cannot allocate {len} bytes")))?;
        }
        self.data.resize(len, 0);
        if lda > k {
            for row in self.data.chunks_exact_mut(lda) {
                row[k..].fill(0);
            }
        }
        (self.m, self.k, self.lda) = (m, k, lda);
        Ok(())
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Columns.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Row `i` (its `k` values, without padding).
    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.lda..i * self.lda + self.k]
    }
    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.lda..i * self.lda + self.k]
    }
    /// The whole buffer and its row stride, for quantizers that write rows in place (the
    /// padding past `k` must stay zero).
    pub fn strided_mut(&mut self) -> (&mut [u8], usize) {
        (&mut self.data, self.lda)
    }
    /// The whole buffer and its row stride.
    pub fn strided(&self) -> (&[u8], usize) {
        (&self.data, self.lda)
    }
    /// `sum_k a[i][k]` for each row.
    pub fn row_sums(&self) -> Vec<i64> {
        (0..self.m)
            .map(|i| self.row(i).iter().map(|&v| v as i64).sum())
            .collect()
    }
}

/// How one GEMM is cut into work items (LOOP 1).
///
/// * M is cut in blocks of about [`A_BLOCK_BYTES`] of activations, so that a block of A stays in
///   L2 while every weight panel streams past it, and so that the output rows written for one
///   block span few pages (one pass over 512 rows of a 3072-wide output touched 6 MiB and lost
///   ~25% to TLB misses).
/// * With several threads, N is cut too, until there are about four items per thread (small M
///   is common, and each N block streams its own weights); a GEMM smaller than
///   [`PARALLEL_MIN_MACS`] stays on the calling thread, where waking a worker would cost more
///   than it saves.
/// * Items are numbered M-block-major, so consecutive items share their block of A.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) threads: usize,
    m_tiles: usize,
    n_tiles: usize,
    nt_per: usize,
    m_blocks: usize,
    n_blocks: usize,
}

/// Activation bytes per M block (256 KiB: a quarter of Zen 4's and Skylake-SP's 1 MiB L2).
pub(crate) const A_BLOCK_BYTES: usize = 256 << 10;
/// Weight bytes of one group of N tiles (LOOP 2): half of a 1 MiB L2, the other half for the
/// block of activations.
pub(crate) const B_GROUP_BYTES: usize = 512 << 10;
/// Below this many multiply-adds (about 2.5 us on one core), a GEMM runs on one thread: a
/// spinning worker joins within ~2 us, a sleeping one too late to matter (and is not waited for).
const PARALLEL_MIN_MACS: usize = 1 << 20;

impl Plan {
    /// `macs` is the GEMM's real work, `m * n * k`.
    pub(crate) fn new(
        m_tiles: usize,
        n_tiles: usize,
        mr: usize,
        k: usize,
        macs: usize,
        threads: usize,
    ) -> Plan {
        let rows_per_block = (A_BLOCK_BYTES / k.max(1)).max(mr);
        let mut mt_per = (rows_per_block / mr).clamp(1, m_tiles.max(1));
        let threads = if macs < PARALLEL_MIN_MACS {
            1
        } else {
            threads.max(1)
        };
        let mut m_blocks = m_tiles.div_ceil(mt_per);
        let mut n_blocks = 1;
        if threads > 1 {
            let want = 4 * threads;
            if m_blocks < want {
                n_blocks = want.div_ceil(m_blocks).min(n_tiles);
            }
            if m_blocks * n_blocks < want {
                // Few N tiles too: cut M finer.
                mt_per = m_tiles.div_ceil(want.div_ceil(n_blocks)).max(1);
                m_blocks = m_tiles.div_ceil(mt_per);
            }
        }
        let nt_per = n_tiles.div_ceil(n_blocks.max(1));
        let n_blocks = n_tiles.div_ceil(nt_per.max(1));
        if threads > 1 && !(m_blocks * n_blocks).is_multiple_of(threads) && m_blocks < m_tiles {
            // A count of items that the threads share evenly: 13 blocks of K = 3072 rows on 2
            // threads left one thread a 7th block while the other idled (2 threads ran 1.85x
            // one, 1.97x with 14 blocks). `item` spreads the tiles evenly over the blocks.
            let per = threads / gcd(threads, n_blocks);
            m_blocks = m_blocks.next_multiple_of(per).min(m_tiles);
        }
        Plan {
            threads,
            m_tiles,
            n_tiles,
            nt_per,
            m_blocks,
            n_blocks,
        }
    }

    pub(crate) fn items(&self) -> usize {
        self.m_blocks * self.n_blocks
    }

    /// Tiles of item `idx`: M tiles spread evenly over the M blocks (their sizes differ by at
    /// most one tile), N tiles in blocks of `nt_per`.
    pub(crate) fn item(&self, idx: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (mb, nb) = (idx / self.n_blocks, idx % self.n_blocks);
        let m_at = |b: usize| b * self.m_tiles / self.m_blocks;
        (
            m_at(mb)..m_at(mb + 1),
            nb * self.nt_per..((nb + 1) * self.nt_per).min(self.n_tiles),
        )
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `acc[i][j] = sum_k a[i][k] * b[k][j]`, exactly, delivered tile by tile to `epi`.
pub fn gemm<E: Epilogue>(kernel: &GemmKernel, a: &QuantizedA, b: &PackedB, epi: &E) -> Result<()> {
    assert_eq!(a.k, b.k(), "inner dimensions differ");
    let (m, n) = (a.m, b.n());
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (mr, np) = (kernel.mr.min(MAX_MR), kernel.np.min(MAX_NR / PANEL));
    let n_tiles = b.panels().div_ceil(np);
    let m_tiles = m.div_ceil(mr);
    let macs = m.saturating_mul(n).saturating_mul(a.k.max(1));
    let plan = Plan::new(
        m_tiles,
        n_tiles,
        mr,
        a.k,
        macs,
        crate::threads::num_threads(),
    );
    let lda = a.lda;
    let item = |idx: usize| -> Result<()> {
        let (mts, nts) = plan.item(idx);
        let block = Block {
            row0: mts.start * mr,
            rows: (mts.end * mr).min(m) - mts.start * mr,
            n_tiles: nts,
        };
        let rows_bytes = block.row0 * lda..(block.row0 + block.rows) * lda;
        match kernel.a_format {
            AFormat::U8 => {
                run_block(kernel, AData::U8(&a.data[rows_bytes]), lda, b, epi, &block);
                Ok(())
            }
            AFormat::I16 => WIDENED.with(|w| {
                // Widen this block's rows only (at most A_BLOCK_BYTES of u8): widening all of A
                // at once spilled 786 KB of i16 out of L2 at M = 128, K = 3072.
                let mut w = w.borrow_mut();
                w.clear();
                w.try_reserve(rows_bytes.len()).map_err(|_| {
                    crate::Error::Memory("cannot allocate widened activations".into())
                })?;
                w.extend(a.data[rows_bytes].iter().map(|&v| v as i16));
                run_block(kernel, AData::I16(&w), lda, b, epi, &block);
                Ok(())
            }),
        }
    };
    crate::threads::for_each_index_on(plan.items(), plan.threads - 1, macs >= TEAM_MIN_MACS, item)
}

/// From this many multiply-adds (about 40 us on one core), a multi-threaded GEMM may run on a
/// shared OpenMP team ([`crate::threads::share_openmp_team`]), whose closing barrier waits for
/// every team thread, also one that has to wake first (~30 us).
pub(crate) const TEAM_MIN_MACS: usize = 1 << 24;

thread_local! {
    /// Per-thread buffer of activations widened to i16 for [`AFormat::I16`] kernels, reused
    /// from call to call.
    static WIDENED: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One work item: rows `row0..row0 + rows` of A against the N tiles `n_tiles`.
struct Block {
    row0: usize,
    rows: usize,
    n_tiles: std::ops::Range<usize>,
}

/// LOOPS 2-5 for one work item; `a` starts at the block's first row.
fn run_block<E: Epilogue>(
    kernel: &GemmKernel,
    a: AData<'_>,
    lda: usize,
    b: &PackedB,
    epi: &E,
    block: &Block,
) {
    let (mr, np) = (kernel.mr.min(MAX_MR), kernel.np.min(MAX_NR / PANEL));
    let k4 = b.k4();
    let chunk4 = K_CHUNK / 4;
    let chunks = k4.div_ceil(chunk4).max(1);
    let ldc = np * PANEL;
    let mut c32 = [0i32; MAX_MR * MAX_NR];
    let mut c64 = if chunks > 1 {
        vec![0i64; MAX_MR * MAX_NR]
    } else {
        Vec::new()
    };
    // LOOP 2: groups of N tiles whose weights (K x nr each) fit in about B_GROUP_BYTES, so they
    // stay in L2 while every m tile of the block passes over them.
    let group = (B_GROUP_BYTES / (k4 * GROUP_BYTES * np).max(1)).max(1);
    let n_tiles = block.n_tiles.clone();
    for g_start in n_tiles.clone().step_by(group) {
        let g_tiles = g_start..(g_start + group).min(n_tiles.end);
        // LOOP 3: m tiles; the A micro-panel (mr x K) stays in L1 across the group, and each
        // output row band is written left to right (writing column strips down 512 rows cost
        // 15% at N = 3072 in page walks and read-for-ownership misses).
        for r0 in (0..block.rows).step_by(mr) {
            let rows = mr.min(block.rows - r0);
            let m0 = block.row0 + r0;
            // LOOP 4: n tiles of the group.
            for nt in g_tiles.clone() {
                let p0 = nt * np;
                let panels = np.min(b.panels() - p0);
                let n0 = p0 * PANEL;
                let cols = (panels * PANEL).min(b.n() - n0);
                c64.iter_mut().for_each(|v| *v = 0);
                // LOOP 5: K chunks (one unless K > K_CHUNK).
                for ch in 0..chunks {
                    let g0 = ch * chunk4;
                    let g = chunk4.min(k4 - g0);
                    let a_off = r0 * lda + 4 * g0;
                    let mut t = Tile {
                        rows,
                        panels,
                        k4: g,
                        a: match a {
                            AData::U8(d) => AData::U8(&d[a_off..]),
                            AData::I16(d) => AData::I16(&d[a_off..]),
                        },
                        lda,
                        b: &b.data()[p0 * b.panel_stride() + g0 * GROUP_BYTES..],
                        panel_stride: b.panel_stride(),
                        c: &mut c32,
                        ldc,
                    };
                    if g == 0 {
                        // k == 0: every sum is empty.
                        t.c.iter_mut().for_each(|v| *v = 0);
                    } else {
                        kernel.run(&mut t);
                    }
                    if chunks > 1 {
                        for r in 0..rows {
                            for c in 0..cols {
                                c64[r * ldc + c] += c32[r * ldc + c] as i64;
                            }
                        }
                    }
                }
                if chunks > 1 {
                    epi.tile_i64(m0, n0, rows, cols, &c64, ldc);
                } else {
                    epi.tile_i32(m0, n0, rows, cols, &c32, ldc);
                }
            }
        }
    }
}

/// The output of one GEMM, shared by its threads, each writing its own tiles.
///
/// Tiles cover disjoint index ranges of the output and the driver hands each tile to exactly one
/// [`Epilogue`] call, so the rows handed out by [`SharedOut::tile_row`] never overlap.
pub(crate) struct SharedOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: a `SharedOut` is a `&mut [T]` split among threads by disjoint ranges (see above);
// sending it is sending that exclusive borrow.
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
// SAFETY: shared use only hands out disjoint ranges (the contract of `tile_row`), so no element
// is ever reachable from two threads at once.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub(crate) fn new(out: &'a mut [T]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _buf: PhantomData,
        }
    }

    /// The output elements `start..start + len`, to be written by one tile.
    ///
    /// # Safety
    /// No other live reference may cover any of these elements: call it only for the tile the
    /// current [`Epilogue`] call was handed, and drop the slice before returning.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn tile_row(&self, start: usize, len: usize) -> &mut [T] {
        let end = start.checked_add(len).expect("tile outside the output");
        assert!(end <= self.len, "tile outside the output");
        // SAFETY: `start..end` lies inside the borrowed buffer (asserted above), which outlives
        // `'a`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_tile_once() {
        for (m_tiles, n_tiles, k, threads) in [
            (1, 1, 1, 1),
            (1, 64, 3072, 2),
            (16, 64, 3072, 2),
            (64, 64, 768, 1),
            (64, 64, 768, 2),
            (3, 2, 100_000, 8),
            (200, 5, 64, 16),
            (128, 16, 3072, 2),
            (128, 16, 3072, 3),
            (7, 3, 4096, 4),
            (1000, 1, 8192, 6),
        ] {
            let macs = m_tiles * 8 * n_tiles * 48 * k;
            let plan = Plan::new(m_tiles, n_tiles, 8, k, macs, threads);
            let mut seen = vec![0u8; m_tiles * n_tiles];
            for i in 0..plan.items() {
                let (ms, ns) = plan.item(i);
                for mt in ms {
                    for nt in ns.clone() {
                        seen[mt * n_tiles + nt] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&v| v == 1), "{plan:?}");
            // Blocks of M differ by at most one tile.
            let sizes: Vec<usize> = (0..plan.m_blocks)
                .map(|b| plan.item(b * plan.n_blocks).0.len())
                .collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{plan:?} {sizes:?}");
        }
    }

    #[test]
    fn multi_threaded_plans_share_items_evenly() {
        // K = 3072, M = 1024 (128 tiles of 8): 13 blocks of A would leave one thread a 7th.
        let plan = Plan::new(128, 16, 8, 3072, 1 << 30, 2);
        assert_eq!(plan.items() % 2, 0, "{plan:?}");
        let plan = Plan::new(128, 16, 8, 3072, 1 << 30, 3);
        assert_eq!(plan.items() % 3, 0, "{plan:?}");
    }
}
