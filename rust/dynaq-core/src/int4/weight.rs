//! [`Int4Weight`]: a float weight quantized once to 4 bits (groups of 32, 64 or 128 along K, or
//! per channel; asymmetric or symmetric), its levels packed `K8N16` for the kernels, with the
//! per-group column sums the integer epilogue needs. Layout and formulas: `README.md`.

use super::quant::{self, code_row, CodedRow, Grid, Method};
use crate::error::{Error, Result};

/// Columns per panel, as for int8 (`pack::PANEL`).
pub const PANEL: usize = 16;
/// Bytes per block of 8 k in a panel: 16 columns x 8 nibbles.
pub const BLOCK_BYTES: usize = 64;
/// The group sizes along K (per-channel aside).
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// A 4-bit weight of shape `(n, k)` (the `nn.Linear` convention). Level `q` of column `n` at
/// `k` stands for `fd[n]·cd[n][g]·q + fm[n]·cm[n][g]` (asymmetric) or `fd[n]·cd[n][g]·(q − 8)`
/// (symmetric), `g = k / group`; per channel, `group == k` and the codes are 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weight {
    n: usize,
    k: usize,
    group: usize,
    per_channel: bool,
    symmetric: bool,
    /// `K8N16` panels of signed nibbles `s = q − 8` (padding: `s = 0`).
    panels: Vec<u8>,
    fd: Vec<f32>,
    fm: Vec<f32>,
    cd: Vec<u8>,
    cm: Vec<u8>,
    /// `Σ q` per column and group (`n x groups`).
    qsum: Vec<i32>,
}

impl Int4Weight {
    /// Quantizes `w` (`n x k`, row-major, finite). `group`: `Some(32 | 64 | 128)`, dividing `k`,
    /// or `None` for per-channel.
    pub fn from_float(
        w: &[f32],
        n: usize,
        k: usize,
        group: Option<usize>,
        symmetric: bool,
        method: Method,
    ) -> Result<Int4Weight> {
        if w.len()
            != n.checked_mul(k)
                .ok_or_else(|| Error::Shape("n * k overflows".into()))?
        {
            return Err(Error::Shape(format!(
                "weight has {} values, not {n} x {k}",
                w.len()
            )));
        }
        let size = match group {
            None => k.max(1),
            Some(g) if GROUP_SIZES.contains(&g) && k.is_multiple_of(g) => g,
            Some(g) if GROUP_SIZES.contains(&g) => {
                return Err(Error::Shape(format!(
                    "group_size {g} does not divide in_features = {k}"
                )))
            }
            Some(g) => {
                return Err(Error::Value(format!(
                    "group_size must be 32, 64, 128 or None, got {g}"
                )))
            }
        };
        if let Some(row) = w
            .chunks(k.max(1))
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::NonFinite { row: Some(row) });
        }
        let groups = k / size;
        let mut out = Int4Weight {
            n,
            k,
            group: size,
            per_channel: group.is_none(),
            symmetric,
            panels: vec![0; n.div_ceil(PANEL) * k.div_ceil(8) * BLOCK_BYTES],
            fd: Vec::with_capacity(n),
            fm: Vec::with_capacity(n),
            cd: Vec::with_capacity(n * groups),
            cm: Vec::with_capacity(n * groups),
            qsum: Vec::with_capacity(n * groups),
        };
        let mut levels = vec![0u8; k];
        for (col, row) in w.chunks(k.max(1)).take(n).enumerate() {
            let coded = out.code(row, method);
            coded.levels(row, size, &mut levels);
            for (kk, &q) in levels.iter().enumerate() {
                out.set_level(col, kk, q);
            }
            out.qsum.extend(
                levels
                    .chunks(size)
                    .map(|g| g.iter().map(|&q| q as i32).sum::<i32>()),
            );
            out.fd.push(coded.fd);
            out.fm.push(coded.fm);
            out.cd.extend(&coded.cd);
            out.cm.extend(&coded.cm);
        }
        Ok(out)
    }

    /// The coded grids of one row.
    fn code(&self, row: &[f32], method: Method) -> CodedRow {
        let size = self.group;
        if self.symmetric {
            let scales: Vec<Grid> = row
                .chunks(size)
                .map(|x| {
                    let d = match method {
                        Method::Rtn => quant::rtn_sym(x),
                        Method::Search => quant::search_sym(x),
                    };
                    Grid { scale: d, min: 0.0 }
                })
                .collect();
            let mut c = if self.per_channel {
                per_channel(scales[0])
            } else {
                code_row(&scales)
            };
            // The minimum of a symmetric grid is −8 scales: one factor, codes equal to cd.
            c.fm = -8.0 * c.fd;
            c.cm = c.cd.clone();
            c
        } else {
            let grids: Vec<Grid> = row.chunks(size).map(|x| quant::grid(x, method)).collect();
            if self.per_channel {
                per_channel(grids[0])
            } else {
                code_row(&grids)
            }
        }
    }

    fn index(&self, col: usize, kk: usize) -> (usize, bool) {
        let blocks = self.k.div_ceil(8);
        let (panel, c) = (col / PANEL, col % PANEL);
        let (block, within) = (kk / 8, kk % 8);
        let byte = (panel * blocks + block) * BLOCK_BYTES + c * 4 + within % 4;
        (byte, within >= 4)
    }

    fn set_level(&mut self, col: usize, kk: usize, q: u8) {
        let (byte, high) = self.index(col, kk);
        let s = (q ^ 8) & 0x0F; // q − 8 as a two's complement nibble
        self.panels[byte] |= if high { s << 4 } else { s };
    }

    /// The level `q` (`0..=15`) of column `col` at `kk`, read back from the panels.
    pub fn level(&self, col: usize, kk: usize) -> u8 {
        let (byte, high) = self.index(col, kk);
        let nibble = if high {
            self.panels[byte] >> 4
        } else {
            self.panels[byte] & 0x0F
        };
        nibble ^ 8
    }

    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The group size along K (`k` per channel).
    pub fn group(&self) -> usize {
        self.group
    }

    pub fn per_channel(&self) -> bool {
        self.per_channel
    }

    pub fn symmetric(&self) -> bool {
        self.symmetric
    }

    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.k.checked_div(self.group).unwrap_or(0)
    }

    /// The `K8N16` panels.
    pub fn panels(&self) -> &[u8] {
        &self.panels
    }

    /// The decoded grid of column `col`, group `g`.
    pub fn grid(&self, col: usize, g: usize) -> Grid {
        let i = col * self.groups() + g;
        Grid {
            scale: (self.fd[col] as f64 * self.cd[i] as f64) as f32,
            min: (self.fm[col] as f64 * self.cm[i] as f64) as f32,
        }
    }

    /// Row factors and codes of column `col`: `(fd, fm, cd, cm)`.
    pub fn codes(&self, col: usize) -> (f32, f32, &[u8], &[u8]) {
        let g = self.groups();
        let r = col * g..(col + 1) * g;
        (self.fd[col], self.fm[col], &self.cd[r.clone()], &self.cm[r])
    }

    /// `Σ q` of column `col` over group `g`.
    pub fn qsum(&self, col: usize, g: usize) -> i32 {
        self.qsum[col * self.groups() + g]
    }

    /// The levels, `(n, k)` row-major.
    pub fn values(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for col in 0..self.n {
            out.extend((0..self.k).map(|kk| self.level(col, kk)));
        }
        out
    }

    /// `w` as the kernels see it, `(n, k)` row-major float32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for col in 0..self.n {
            out.extend(
                (0..self.k).map(|kk| self.grid(col, kk / self.group).value(self.level(col, kk))),
            );
        }
        out
    }
}

/// A per-channel row: its grid as the factors, codes 1.
fn per_channel(g: Grid) -> CodedRow {
    CodedRow {
        fd: g.scale,
        fm: g.min,
        cd: vec![1],
        cm: vec![1],
    }
}

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
    let (n, k, size, groups) = (w.n, w.k, w.group, w.groups());
    assert_eq!(a.len(), m * k);
    let mut out = vec![0.0f32; m * n];
    for r in 0..m {
        let row = &a[r * k..(r + 1) * k];
        let asum: Vec<i64> = row
            .chunks(size.max(1))
            .map(|g| g.iter().map(|&v| v as i64).sum())
            .collect();
        for col in 0..n {
            let (fd, fm, cd, cm) = w.codes(col);
            let (mut x1, mut x2) = (0i64, 0i64);
            for g in 0..groups {
                let t: i64 = (g * size..(g + 1) * size)
                    .map(|kk| row[kk] as i64 * w.level(col, kk) as i64)
                    .sum();
                x1 += cd[g] as i64 * (t - zx[r] as i64 * w.qsum(col, g) as i64);
                x2 += cm[g] as i64 * (asum[g] - zx[r] as i64 * size as i64);
            }
            let y = if w.symmetric {
                // min = −8·scale: one integer, `Σ_g cd·Σ (a − zx)·(q − 8)`, one float product.
                sx[r] * (fd * (x1 - 8 * x2) as f32)
            } else {
                sx[r] * (fd * x1 as f32 + fm * x2 as f32)
            };
            out[r * n + col] = y + bias.map_or(0.0, |b| b[col]);
        }
    }
    out
}

#[cfg(test)]
mod tests;
