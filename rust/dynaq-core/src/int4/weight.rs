//! [`Int4Weight`]: a float weight quantized once to 4 bits (groups of 32, 64 or 128 along K, or
//! per channel; asymmetric or symmetric), its levels packed `K8N16` for the kernels, with the
//! per-group column sums the integer epilogue needs. Layout and formulas: `README.md`.

use super::quant::{self, code_row, CodedRow, Grid, Method};
use crate::error::{try_zeroed, Error, Result};

mod epilogue;
pub(crate) use epilogue::epilogue_row;
pub use epilogue::{epilogue_one, linear_ref};

/// Columns per panel, as for int8 (`pack::PANEL`).
pub const PANEL: usize = 16;
/// Bytes per block of 8 k in a panel: 16 columns x 8 nibbles.
pub const BLOCK_BYTES: usize = 64;
/// A block of rows coded by one work item: its index, its rows' grids and their levels.
type CodedBlock = (usize, Vec<CodedRow>, Vec<u8>);

/// Rows quantized per work item of [`Int4Weight::from_float`].
const ROWS_PER_ITEM: usize = 16;
/// The group sizes along K (per-channel aside).
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// A 4-bit weight of shape `(n, k)` (the `nn.Linear` convention). Level `q` of column `n` at
/// `k` stands for `fd[n]·cd[n][g]·q + fm[n]·cm[n][g]` (asymmetric) or `fd[n]·cd[n][g]·(q − 8)`
/// (symmetric), `g = k / group`; per channel, `group == k` and the codes are 1.
///
/// Besides the levels, it keeps what the kernels read next to them: the codes of each panel
/// and group as 16 bytes (`cd_panels`, `cm_panels`), and per column the constants of the
/// epilogue, `C1 = Σ_g cd·Q_g` and `C2 = Σ_g cm·G` (`README.md`, "The arithmetic").
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weight {
    n: usize,
    k: usize,
    group: usize,
    per_channel: bool,
    symmetric: bool,
    /// `K8N16` panels of the levels `q` (padding: 0).
    panels: Vec<u8>,
    fd: Vec<f32>,
    fm: Vec<f32>,
    /// `cd` per panel and group, 16 columns each (padding columns: 0).
    cd_panels: Vec<u8>,
    /// `cm` likewise.
    cm_panels: Vec<u8>,
    /// `C1 = Σ_g cd·Q_g` per column.
    c1: Vec<i64>,
    /// `C1` as i32 (saturated): exact, and used, whenever K fits one chunk of the driver.
    c1_32: Vec<i32>,
    /// `C2 = Σ_g cm·G` per column.
    c2: Vec<i64>,
    /// `C2` as i32, likewise.
    c2_32: Vec<i32>,
}

impl Int4Weight {
    /// Quantizes `w` (`n x k`, row-major, finite). `group`: `Some(32 | 64 | 128)`, dividing `k`,
    /// or `None` for per-channel.
    ///
    /// `importance` (calibrated quantization): one value per column `k`, finite, `>= 0`, not
    /// all zero (typically the mean of the squared calibration activations); the search then
    /// minimises the error weighted by it ([`quant::search_grid_weighted`]). Only the choice of
    /// grids changes; `None` is the plain search. Refused with [`Method::Rtn`] (round to
    /// nearest has no objective to weight).
    pub fn from_float(
        w: &[f32],
        n: usize,
        k: usize,
        group: Option<usize>,
        symmetric: bool,
        method: Method,
        importance: Option<&[f32]>,
    ) -> Result<Int4Weight> {
        if let Some(imp) = importance {
            check_importance(imp, k, method)?;
        }
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
        let groups = probe.groups();
        // `n` is not bounded by the input when `k = 0`: every allocation must fail as an error.
        let mut levels: Vec<u8> = try_zeroed(n * k, "4-bit levels")?;
        let (mut fd, mut fm): (Vec<f32>, Vec<f32>) =
            (try_zeroed(n, "row factors")?, try_zeroed(n, "row factors")?);
        let (mut cd, mut cm): (Vec<u8>, Vec<u8>) = (
            try_zeroed(n * groups, "codes")?,
            try_zeroed(n * groups, "codes")?,
        );
        // The search costs ~0.3 us per weight: rows are coded on every thread, in blocks whose
        // results are gathered by index (each block's rows are disjoint).
        let blocks = n.div_ceil(ROWS_PER_ITEM);
        let done: std::sync::Mutex<Vec<CodedBlock>> = std::sync::Mutex::new(Vec::new());
        crate::threads::for_each_index(blocks, crate::threads::num_threads() - 1, |b| {
            let rows = b * ROWS_PER_ITEM..((b + 1) * ROWS_PER_ITEM).min(n);
            let mut q = vec![0u8; rows.len() * k];
            let mut coded = Vec::with_capacity(rows.len());
            for (i, r) in rows.enumerate() {
                let row = &w[r * k..(r + 1) * k];
                let c = probe.coded_row(row, method, importance);
                c.levels(row, size, &mut q[i * k..(i + 1) * k]);
                coded.push(c);
            }
            done.lock()
                .expect("no panics while held")
                .push((b, coded, q));
            Ok::<(), Error>(())
        })?;
        for (b, coded, q) in done.into_inner().expect("no panics while held") {
            let r0 = b * ROWS_PER_ITEM;
            levels[r0 * k..r0 * k + q.len()].copy_from_slice(&q);
            for (i, c) in coded.into_iter().enumerate() {
                let r = r0 + i;
                (fd[r], fm[r]) = (c.fd, c.fm);
                cd[r * groups..(r + 1) * groups].copy_from_slice(&c.cd);
                cm[r * groups..(r + 1) * groups].copy_from_slice(&c.cm);
            }
        }
        probe.assemble(&levels, fd, fm, cd, cm)
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
        // Every decoded value (`fd·cd·q + fm·cm`, codes up to 255, levels up to 15) must be a
        // finite float32 too.
        let widest = |d: f32, m: f32| 255.0 * 15.0 * d as f64 - 255.0 * m as f64;
        if fd
            .iter()
            .zip(&fm)
            .any(|(&d, &m)| widest(d, m) > f32::MAX as f64)
        {
            return Err(Error::Value(
                "row factors so large that their grids overflow float32".into(),
            ));
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
        probe.assemble(levels, fd, fm, cd, cm)
    }

    /// A weight from the memory the kernels read, as [`Int4Weight::panels`],
    /// [`Int4Weight::cd_panels`] and [`Int4Weight::cm_panels`] gave it (kept, say, in a
    /// torch buffer), and its row factors ([`Int4Weight::row_factors`]). Decoded and checked as
    /// [`Int4Weight::from_parts`] checks its parts; padding that is not zero is refused (the
    /// bytes must be exactly what packing the decoded parts gives).
    #[allow(clippy::too_many_arguments)]
    pub fn from_panels(
        n: usize,
        k: usize,
        group: Option<usize>,
        symmetric: bool,
        panels: &[u8],
        cd_panels: &[u8],
        cm_panels: &[u8],
        fd: Vec<f32>,
        fm: Vec<f32>,
    ) -> Result<Int4Weight> {
        let size = group_len(group, k)?;
        let probe = Int4Weight::empty(n, k, size, group.is_none(), symmetric);
        let (want, codes) = (Self::panels_len(n, k)?, Self::code_panels_len(n, k, group)?);
        if panels.len() != want {
            return Err(Error::Shape(format!(
                "the panels of a ({n}, {k}) 4-bit weight are {want} bytes, got {}",
                panels.len()
            )));
        }
        if cd_panels.len() != codes || cm_panels.len() != codes {
            return Err(Error::Shape(format!(
                "the code panels of a ({n}, {k}) 4-bit weight in groups of {size} are {codes} \
                 bytes each, got {} and {}",
                cd_panels.len(),
                cm_panels.len()
            )));
        }
        let groups = probe.groups();
        let mut levels: Vec<u8> = try_zeroed(n * k, "4-bit levels")?;
        for col in 0..n {
            for kk in 0..k {
                let (byte, high) = probe.index(col, kk);
                let b = panels[byte];
                levels[col * k + kk] = if high { b >> 4 } else { b & 0x0F };
            }
        }
        let code = |src: &[u8], i: usize| {
            let (col, g) = (i / groups, i % groups);
            src[((col / PANEL) * groups + g) * PANEL + col % PANEL]
        };
        let cd = (0..n * groups).map(|i| code(cd_panels, i)).collect();
        let cm = (0..n * groups).map(|i| code(cm_panels, i)).collect();
        let w = Int4Weight::from_parts(n, k, group, symmetric, &levels, fd, fm, cd, cm)?;
        if w.panels != panels || w.cd_panels != cd_panels || w.cm_panels != cm_panels {
            return Err(Error::Value(
                "the panels' padding (columns past out_features, k past in_features) must be \
                 zero"
                    .into(),
            ));
        }
        Ok(w)
    }

    /// Bytes of the level panels of an `(n, k)` weight ([`Int4Weight::panels`]).
    pub fn panels_len(n: usize, k: usize) -> Result<usize> {
        n.div_ceil(PANEL)
            .checked_mul(k.div_ceil(8))
            .and_then(|v| v.checked_mul(BLOCK_BYTES))
            .ok_or_else(|| Error::Memory(format!("4-bit weight {n} x {k} is too large")))
    }

    /// Bytes of each of the code panels ([`Int4Weight::cd_panels`]) of an `(n, k)` weight in
    /// groups of `group` (`None`: per channel).
    pub fn code_panels_len(n: usize, k: usize, group: Option<usize>) -> Result<usize> {
        let groups = if group.is_none() {
            1
        } else {
            k / group_len(group, k)?
        };
        n.div_ceil(PANEL)
            .checked_mul(groups * PANEL)
            .ok_or_else(|| Error::Memory(format!("4-bit weight {n} x {k} is too large")))
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
            cd_panels: Vec::new(),
            cm_panels: Vec::new(),
            c1: Vec::new(),
            c2: Vec::new(),
            c1_32: Vec::new(),
            c2_32: Vec::new(),
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
    ) -> Result<Int4Weight> {
        let (n, k) = (self.n, self.k);
        let groups = self.groups();
        let panels = n.div_ceil(PANEL);
        self.panels = try_zeroed(panels * k.div_ceil(8) * BLOCK_BYTES, "4-bit panels")?;
        self.cd_panels = try_zeroed(panels * groups * PANEL, "codes")?;
        self.cm_panels = try_zeroed(panels * groups * PANEL, "codes")?;
        self.c1 = try_zeroed(n, "column constants")?;
        self.c2 = try_zeroed(n, "column constants")?;
        self.c1_32 = try_zeroed(n, "column constants")?;
        self.c2_32 = try_zeroed(n, "column constants")?;
        for (col, row) in levels.chunks(k.max(1)).take(n).enumerate() {
            for (kk, &q) in row.iter().enumerate() {
                self.set_level(col, kk, q);
            }
        }
        (self.fd, self.fm) = (fd, fm);
        for col in 0..n {
            let (p, c) = (col / PANEL, col % PANEL);
            let (mut c1, mut c2) = (0i64, 0i64);
            for g in 0..groups {
                let i = col * groups + g;
                let at = (p * groups + g) * PANEL + c;
                self.cd_panels[at] = cd[i];
                self.cm_panels[at] = cm[i];
                let span = self.span(g);
                let qsum: i64 = levels[col * k..][span.clone()]
                    .iter()
                    .map(|&q| q as i64)
                    .sum();
                c1 += cd[i] as i64 * qsum;
                c2 += cm[i] as i64 * span.len() as i64;
            }
            (self.c1[col], self.c2[col]) = (c1, c2);
            let narrow = |v: i64| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            (self.c1_32[col], self.c2_32[col]) = (narrow(c1), narrow(c2));
        }
        Ok(self)
    }

    /// The coded grids of one row (`importance`: checked, as long as the row).
    fn coded_row(&self, row: &[f32], method: Method, importance: Option<&[f32]>) -> CodedRow {
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
        // The importances of group `g` (`len` values), when given.
        let imp = |g: usize, len: usize| importance.map(|m| &m[g * size..g * size + len]);
        if self.symmetric {
            let scales: Vec<Grid> = row
                .chunks(size)
                .enumerate()
                .map(|(g, x)| {
                    let d = match (method, imp(g, x.len())) {
                        (Method::Rtn, _) => quant::rtn_sym(x),
                        (Method::Search, None) => quant::search_sym(x),
                        (Method::Search, Some(m)) => quant::search_sym_weighted(x, m),
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
            let grids: Vec<Grid> = row
                .chunks(size)
                .enumerate()
                .map(|(g, x)| match (method, imp(g, x.len())) {
                    (Method::Search, Some(m)) => quant::search_grid_weighted(x, m),
                    _ => quant::grid(x, method),
                })
                .collect();
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
        self.panels[byte] |= if high { q << 4 } else { q };
    }

    /// The level `q` (`0..=15`) of column `col` at `kk`, read back from the panels.
    pub fn level(&self, col: usize, kk: usize) -> u8 {
        let (byte, high) = self.index(col, kk);
        if high {
            self.panels[byte] >> 4
        } else {
            self.panels[byte] & 0x0F
        }
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

    /// The row factors `(fd, fm)`, one of each per column.
    pub fn row_factors(&self) -> (&[f32], &[f32]) {
        (&self.fd, &self.fm)
    }

    /// The decoded grid of column `col`, group `g`.
    pub fn grid(&self, col: usize, g: usize) -> Grid {
        let (cd, cm) = self.code(col, g);
        Grid::decode(self.fd[col], cd, self.fm[col], cm)
    }

    /// Row factors and codes of column `col`: `(fd, fm, cd, cm)`.
    pub fn codes(&self, col: usize) -> (f32, f32, Vec<u8>, Vec<u8>) {
        let (cd, cm) = (0..self.groups()).map(|g| self.code(col, g)).unzip();
        (self.fd[col], self.fm[col], cd, cm)
    }

    /// The codes `(cd, cm)` of column `col`, group `g`.
    pub fn code(&self, col: usize, g: usize) -> (u8, u8) {
        let at = ((col / PANEL) * self.groups() + g) * PANEL + col % PANEL;
        (self.cd_panels[at], self.cm_panels[at])
    }

    /// The codes `cd` of every panel and group, 16 columns each: panel `p`, group `g` at
    /// `(p·groups + g)·16`.
    pub fn cd_panels(&self) -> &[u8] {
        &self.cd_panels
    }

    /// The codes `cm`, laid out as [`Int4Weight::cd_panels`].
    pub fn cm_panels(&self) -> &[u8] {
        &self.cm_panels
    }

    /// `C1 = Σ_g cd·Σ q` and `C2 = Σ_g cm·G` of column `col`.
    pub fn constants(&self, col: usize) -> (i64, i64) {
        (self.c1[col], self.c2[col])
    }

    /// Bytes held in memory.
    pub fn nbytes(&self) -> usize {
        self.panels.len()
            + 4 * (self.fd.len() + self.fm.len())
            + self.cd_panels.len()
            + self.cm_panels.len()
            + 8 * (self.c1.len() + self.c2.len())
            + 4 * (self.c1_32.len() + self.c2_32.len())
    }

    /// `Σ q` of column `col` over group `g`.
    pub fn qsum(&self, col: usize, g: usize) -> i32 {
        self.span(g).map(|kk| self.level(col, kk) as i32).sum()
    }

    /// Every group's decoded scale and minimum, `(n, groups)` row-major each.
    pub fn grids(&self) -> (Vec<f32>, Vec<f32>) {
        let groups = self.groups();
        let all: Vec<Grid> = (0..self.n * groups)
            .map(|i| self.grid(i / groups, i % groups))
            .collect();
        (
            all.iter().map(|g| g.scale).collect(),
            all.iter().map(|g| g.min).collect(),
        )
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
        Some(g) if GROUP_SIZES.contains(&g) && k == 0 => Err(Error::Shape(format!(
            "group_size {g} needs in_features > 0 (group_size=None quantizes per channel)"
        ))),
        Some(g) if GROUP_SIZES.contains(&g) && k.is_multiple_of(g) => Ok(g),
        Some(g) if GROUP_SIZES.contains(&g) => Err(Error::Shape(format!(
            "group_size {g} does not divide in_features = {k}"
        ))),
        Some(g) => Err(Error::Value(format!(
            "group_size must be 32, 64, 128 or None, got {g}"
        ))),
    }
}

/// Checks a calibration importance for a weight of `k` columns: one value per column, finite,
/// `>= 0`, not all zero, and a method that has an objective to weight.
fn check_importance(importance: &[f32], k: usize, method: Method) -> Result<()> {
    if method == Method::Rtn {
        return Err(Error::Value(
            "importance applies to method 'search': round to nearest ('rtn') has no objective to \
             weight"
                .into(),
        ));
    }
    if importance.len() != k {
        return Err(Error::Value(format!(
            "importance has {} values, not one per input feature (in_features = {k})",
            importance.len()
        )));
    }
    if let Some(i) = importance.iter().position(|v| !v.is_finite()) {
        return Err(Error::Value(format!(
            "importance contains NaN or infinity (index {i})"
        )));
    }
    if let Some(i) = importance.iter().position(|&v| v < 0.0) {
        return Err(Error::Value(format!(
            "importance must be >= 0, got {} at index {i}",
            importance[i]
        )));
    }
    if k > 0 && importance.iter().all(|&v| v == 0.0) {
        return Err(Error::Value(
            "importance is all zero: no column would count (pass importance=None for the \
             unweighted search)"
                .into(),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests;
