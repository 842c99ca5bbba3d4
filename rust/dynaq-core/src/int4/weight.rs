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
        let size = group_len(group, k)?;
        if let Some(row) = w
            .chunks(k.max(1))
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::NonFinite { row: Some(row) });
        }
        let probe = Int4Weight::empty(n, k, size, group.is_none(), symmetric);
        let (mut levels, mut fd, mut fm) = (
            vec![0u8; n * k],
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut cd, mut cm) = (
            Vec::with_capacity(n * probe.groups()),
            Vec::with_capacity(n * probe.groups()),
        );
        for r in 0..n {
            let (row, q) = (&w[r * k..(r + 1) * k], &mut levels[r * k..(r + 1) * k]);
            let coded = probe.code(row, method);
            coded.levels(row, size, q);
            fd.push(coded.fd);
            fm.push(coded.fm);
            cd.extend(&coded.cd);
            cm.extend(&coded.cm);
        }
        Ok(probe.assemble(&levels, fd, fm, cd, cm))
    }

    /// A weight from its stored parts (levels `n x k` in `0..=15`, row factors, codes), every
    /// part checked: what a reader builds. Per channel (`group` None) the codes are all 1;
    /// symmetric weights have `fm = −8·fd` and `cm = cd`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        n: usize,
        k: usize,
        group: Option<usize>,
        symmetric: bool,
        levels: &[u8],
        fd: Vec<f32>,
        fm: Vec<f32>,
        cd: Vec<u8>,
        cm: Vec<u8>,
    ) -> Result<Int4Weight> {
        let size = group_len(group, k)?;
        let probe = Int4Weight::empty(n, k, size, group.is_none(), symmetric);
        let groups = probe.groups();
        if levels.len() != n * k
            || fd.len() != n
            || fm.len() != n
            || cd.len() != n * groups
            || cm.len() != n * groups
        {
            return Err(Error::Shape(format!(
                "the parts do not fit a ({n}, {k}) weight in groups of {size}"
            )));
        }
        if levels.iter().any(|&q| q > quant::QMAX) {
            return Err(Error::Value("levels must be in 0..=15".into()));
        }
        if fd.iter().chain(&fm).any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { row: None });
        }
        if fd.iter().any(|&d| d < 0.0) || fm.iter().any(|&m| m > 0.0) {
            return Err(Error::Value(
                "row scale factors must be >= 0 and minimum factors <= 0".into(),
            ));
        }
        if group.is_none() && (cd.iter().chain(&cm).any(|&c| c != 1)) {
            return Err(Error::Value(
                "a per-channel weight has no group codes".into(),
            ));
        }
        if symmetric && (cm != cd || fd.iter().zip(&fm).any(|(d, m)| *m != -8.0 * d)) {
            return Err(Error::Value(
                "a symmetric weight's minima must be -8 scales".into(),
            ));
        }
        Ok(probe.assemble(levels, fd, fm, cd, cm))
    }

    fn empty(n: usize, k: usize, group: usize, per_channel: bool, symmetric: bool) -> Int4Weight {
        Int4Weight {
            n,
            k,
            group,
            per_channel,
            symmetric,
            panels: Vec::new(),
            fd: Vec::new(),
            fm: Vec::new(),
            cd: Vec::new(),
            cm: Vec::new(),
            qsum: Vec::new(),
        }
    }

    /// Packs checked parts: the panels and the per-group level sums.
    fn assemble(
        mut self,
        levels: &[u8],
        fd: Vec<f32>,
        fm: Vec<f32>,
        cd: Vec<u8>,
        cm: Vec<u8>,
    ) -> Int4Weight {
        let (n, k) = (self.n, self.k);
        self.panels = vec![0; n.div_ceil(PANEL) * k.div_ceil(8) * BLOCK_BYTES];
        for (col, row) in levels.chunks(k.max(1)).take(n).enumerate() {
            for (kk, &q) in row.iter().enumerate() {
                self.set_level(col, kk, q);
            }
        }
        let groups = self.groups();
        for col in 0..n {
            for g in 0..groups {
                let span = self.span(g);
                self.qsum
                    .push(levels[col * k..][span].iter().map(|&q| q as i32).sum());
            }
        }
        (self.fd, self.fm, self.cd, self.cm) = (fd, fm, cd, cm);
        self
    }

    /// The coded grids of one row.
    fn code(&self, row: &[f32], method: Method) -> CodedRow {
        let size = self.group;
        if row.is_empty() {
            // in_features = 0: nothing to quantize, one (empty) per-channel group.
            return CodedRow {
                fd: 0.0,
                fm: if self.symmetric { -0.0 } else { 0.0 },
                cd: vec![1],
                cm: vec![1],
            };
        }
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

    /// Groups per row (1 per channel, also when `k` is 0).
    pub fn groups(&self) -> usize {
        if self.per_channel {
            1
        } else {
            self.k / self.group
        }
    }

    /// The k of group `g`.
    pub fn span(&self, g: usize) -> std::ops::Range<usize> {
        (g * self.group).min(self.k)..((g + 1) * self.group).min(self.k)
    }

    /// The `K8N16` panels.
    pub fn panels(&self) -> &[u8] {
        &self.panels
    }

    /// The decoded grid of column `col`, group `g`.
    pub fn grid(&self, col: usize, g: usize) -> Grid {
        let i = col * self.groups() + g;
        Grid::decode(self.fd[col], self.cd[i], self.fm[col], self.cm[i])
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

/// The length of a group along K: `group` when it is one of [`GROUP_SIZES`] and divides `k`,
/// the whole row (`k`, at least 1) per channel (`None`).
fn group_len(group: Option<usize>, k: usize) -> Result<usize> {
    match group {
        None => Ok(k.max(1)),
        Some(g) if GROUP_SIZES.contains(&g) && k.is_multiple_of(g) => Ok(g),
        Some(g) if GROUP_SIZES.contains(&g) => Err(Error::Shape(format!(
            "group_size {g} does not divide in_features = {k}"
        ))),
        Some(g) => Err(Error::Value(format!(
            "group_size must be 32, 64, 128 or None, got {g}"
        ))),
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
    let (n, k, groups) = (w.n, w.k, w.groups());
    assert_eq!(a.len(), m * k);
    let mut out = vec![0.0f32; m * n];
    for r in 0..m {
        let row = &a[r * k..(r + 1) * k];
        let asum: Vec<i64> = (0..groups)
            .map(|g| row[w.span(g)].iter().map(|&v| v as i64).sum())
            .collect();
        for col in 0..n {
            let (fd, fm, cd, cm) = w.codes(col);
            let (mut x1, mut x2) = (0i64, 0i64);
            for g in 0..groups {
                let t: i64 = w
                    .span(g)
                    .map(|kk| row[kk] as i64 * w.level(col, kk) as i64)
                    .sum();
                x1 += cd[g] as i64 * (t - zx[r] as i64 * w.qsum(col, g) as i64);
                x2 += cm[g] as i64 * (asum[g] - zx[r] as i64 * w.span(g).len() as i64);
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
