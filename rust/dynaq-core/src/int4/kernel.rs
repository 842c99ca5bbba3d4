//! What a 4-bit GEMM kernel is: a tile of rows against 16-column panels of `K8N16` nibbles,
//! over whole groups, with the group codes applied inside (`README.md`, "The arithmetic").
//! Like [`crate::kernel`], a kernel is a struct with one `unsafe fn` and one safe door that
//! checks every bound the kernel addresses; only [`crate::dispatch`] hands kernels out.

use super::weight::{BLOCK_BYTES, PANEL};
use crate::isa::Isa;

/// One microkernel call, over `groups` groups of `group_blocks` blocks of 8 k each. For rows
/// `r < rows` and columns `j < 16·panels` (panel `p = j / 16`, column `c = j % 16`), it
/// overwrites
///
/// ```text
/// c1[r][j] = Σ_g cd[p][g][c] · Σ_{k in group g} a[r][k] · q[k][j]
/// c2[r][j] = Σ_g cm[p][g][c] · asum[r][g]
/// ```
///
/// The driver keeps both in i32 range by the length of the chunks it hands out.
#[derive(Debug)]
pub struct Int4Tile<'a> {
    /// Rows of A (and C), `1..=mr`.
    pub rows: usize,
    /// 16-column panels, `1..=np`.
    pub panels: usize,
    /// Groups in this call (at least 1).
    pub groups: usize,
    /// Blocks of 8 k per group (at least 1).
    pub group_blocks: usize,
    /// u8 activations from the first k of this call; row `r` at `r·lda`.
    pub a: &'a [u8],
    /// Row stride of `a` (a multiple of 8).
    pub lda: usize,
    /// `asum[r·lds + g]`: the sum of row `r`'s activations over group `g`.
    pub asum: &'a [i32],
    /// Row stride of `asum`.
    pub lds: usize,
    /// Panels from this call's first block; panel `p` at `p·panel_stride`.
    pub b: &'a [u8],
    /// Bytes from one panel to the next.
    pub panel_stride: usize,
    /// Codes `cd` from this call's first group: panel `p`, group `g` at
    /// `p·code_stride + g·code_step`, 16 bytes.
    pub cd: &'a [u8],
    /// Codes `cm`, laid out as `cd`.
    pub cm: &'a [u8],
    /// Bytes from one panel's codes to the next.
    pub code_stride: usize,
    /// Bytes from one group's codes to the next: 16, or 0 when every group shares the codes
    /// (per channel, where each chunk of K is a group of code 1).
    pub code_step: usize,
    /// `Σ cd·P`, row `r` at `r·ldc`.
    pub c1: &'a mut [i32],
    /// `Σ cm·A`, laid out as `c1`.
    pub c2: &'a mut [i32],
    /// Row stride of `c1` and `c2`.
    pub ldc: usize,
}

/// A tile's operands as raw pointers, for the SIMD kernels: [`Int4Kernel::run`] has checked
/// every bound they address before a kernel builds this (see [`Int4Tile::ptrs`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Int4Ptrs {
    pub a: *const u8,
    pub lda: usize,
    pub asum: *const i32,
    pub lds: usize,
    pub b: *const u8,
    pub cd: *const u8,
    pub cm: *const u8,
    pub code_step: usize,
    pub groups: usize,
    pub group_blocks: usize,
}

impl Int4Tile<'_> {
    /// The operands as raw pointers, from this call's first k, group and codes.
    pub(crate) fn ptrs(&self) -> Int4Ptrs {
        Int4Ptrs {
            a: self.a.as_ptr(),
            lda: self.lda,
            asum: self.asum.as_ptr(),
            lds: self.lds,
            b: self.b.as_ptr(),
            cd: self.cd.as_ptr(),
            cm: self.cm.as_ptr(),
            code_step: self.code_step,
            groups: self.groups,
            group_blocks: self.group_blocks,
        }
    }
}

/// A 4-bit GEMM microkernel.
pub struct Int4Kernel {
    /// Name: path, operands, tile (`avx2_u8u4_i32_4x16`).
    pub name: &'static str,
    /// The path. Only [`crate::dispatch`] hands out kernels, and only for detected paths.
    pub isa: Isa,
    /// Most rows per tile.
    pub mr: usize,
    /// Most 16-column panels per tile.
    pub np: usize,
    /// # Safety
    /// The CPU must support `isa`, and the tile's slices must cover what its dimensions
    /// address (checked by [`Int4Kernel::run`]).
    pub(crate) func: unsafe fn(&mut Int4Tile<'_>),
}

impl Int4Kernel {
    /// Runs the kernel on one tile after checking every bound it relies on.
    pub fn run(&self, t: &mut Int4Tile<'_>) {
        assert!((1..=self.mr).contains(&t.rows), "tile rows out of range");
        assert!(
            (1..=self.np).contains(&t.panels),
            "tile panels out of range"
        );
        assert!(t.groups >= 1 && t.group_blocks >= 1);
        let blocks = t.groups * t.group_blocks;
        assert!(t.lda.is_multiple_of(8) && t.lda >= 8 * blocks);
        assert!(t.a.len() >= (t.rows - 1) * t.lda + 8 * blocks);
        assert!(t.lds >= t.groups && t.asum.len() >= (t.rows - 1) * t.lds + t.groups);
        assert!(t.panel_stride >= blocks * BLOCK_BYTES);
        assert!(t.b.len() >= (t.panels - 1) * t.panel_stride + blocks * BLOCK_BYTES);
        assert!(t.code_step == 0 || t.code_step == PANEL);
        let codes = (t.panels - 1) * t.code_stride + (t.groups - 1) * t.code_step + PANEL;
        assert!(t.cd.len() >= codes && t.cm.len() >= codes);
        assert!(t.ldc >= t.panels * PANEL);
        let c_len = (t.rows - 1) * t.ldc + t.panels * PANEL;
        assert!(t.c1.len() >= c_len && t.c2.len() >= c_len);
        debug_assert!(self.isa.is_supported());
        // SAFETY: the CPU supports `self.isa` (a kernel is only handed out for a detected path,
        // see `crate::dispatch`), and the asserts above are exactly the bounds the kernels
        // address.
        unsafe { (self.func)(t) }
    }
}

/// The scalar 4-bit kernel: plain Rust over the same layout, the baseline of every SIMD one.
fn scalar_tile(t: &mut Int4Tile<'_>) {
    let gb = t.group_blocks;
    for r in 0..t.rows {
        for p in 0..t.panels {
            let (mut acc1, mut acc2) = ([0i32; PANEL], [0i32; PANEL]);
            for g in 0..t.groups {
                let mut sum = [0i32; PANEL];
                for blk in g * gb..(g + 1) * gb {
                    let a = &t.a[r * t.lda + 8 * blk..][..8];
                    let b = &t.b[p * t.panel_stride + blk * BLOCK_BYTES..][..BLOCK_BYTES];
                    for (c, s) in sum.iter_mut().enumerate() {
                        for j in 0..4 {
                            let byte = b[4 * c + j];
                            *s += a[j] as i32 * (byte & 0x0F) as i32
                                + a[4 + j] as i32 * (byte >> 4) as i32;
                        }
                    }
                }
                let at = p * t.code_stride + g * t.code_step;
                let asum = t.asum[r * t.lds + g];
                for c in 0..PANEL {
                    acc1[c] += t.cd[at + c] as i32 * sum[c];
                    acc2[c] += t.cm[at + c] as i32 * asum;
                }
            }
            let at = r * t.ldc + p * PANEL;
            t.c1[at..at + PANEL].copy_from_slice(&acc1);
            t.c2[at..at + PANEL].copy_from_slice(&acc2);
        }
    }
}

/// # Safety
/// Always safe; `unsafe` only to fit the kernel table.
unsafe fn scalar_tile_entry(t: &mut Int4Tile<'_>) {
    scalar_tile(t)
}

/// The scalar 4-bit kernel.
pub static SCALAR_INT4: Int4Kernel = Int4Kernel {
    name: "scalar_u8u4_i32_4x32",
    isa: Isa::Scalar,
    mr: 4,
    np: 2,
    func: scalar_tile_entry,
};
