//! The 4-bit quantizers: a group of weights (32, 64 or 128 along K, or a whole row for
//! per-channel) gets a grid of 16 levels, `w ~ scale * q + min` with `q` in `0..=15`
//! (asymmetric), or `w ~ scale * (q - 8)` (symmetric). Plain scalar code, f64 sums: the same
//! grids on every CPU and thread count (the kernels only ever see the result).
//!
//! * [`rtn_grid`] / [`rtn_sym`]: round to nearest on the min-max range (the baseline).
//! * [`search_grid`] / [`search_sym`]: least-squares search. Candidate grids (rescaled ranges,
//!   and for long groups clipped ones) each round the weights, then refit scale and minimum to
//!   those levels by least squares; the grid with the smallest squared error wins. RTN is the
//!   first candidate, so the search is never worse than RTN.
//! * [`code_row`]: a row's grids as u8 codes against one float32 factor each for scales and
//!   minima (`scale = fd * cd`, `min = fm * cm`): 16 bits per group instead of 64, and the
//!   reduction over K stays in integers. [`CodedRow::levels`] rounds again on the decoded grids.

/// The largest level: 16 levels, `0..=15`.
pub const QMAX: u8 = 15;

/// How a group's grid is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest on the group's min-max range.
    Rtn,
    /// Least-squares search (never worse than [`Method::Rtn`] in squared error).
    Search,
}

/// One group's affine grid: `w ~ scale * q + min`, `q` in `0..=QMAX`; `scale >= 0`, `min <= 0`
/// (a group of positive weights keeps 0 in range, so that minima code against one factor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub scale: f32,
    pub min: f32,
}

impl Grid {
    /// The level of `v`: `round_half_even((v - min) / scale)` clamped to `0..=QMAX` (0 when the
    /// scale is 0: a constant group).
    pub fn level(self, v: f32) -> u8 {
        if self.scale == 0.0 {
            return 0;
        }
        let q = ((v as f64 - self.min as f64) / self.scale as f64).round_ties_even();
        q.clamp(0.0, QMAX as f64) as u8
    }

    /// The value of level `q`.
    pub fn value(self, q: u8) -> f32 {
        (self.scale as f64 * q as f64 + self.min as f64) as f32
    }

    /// The grid coded as `scale = fd·cd`, `min = fm·cm` (see [`code_row`]).
    pub fn decode(fd: f32, cd: u8, fm: f32, cm: u8) -> Grid {
        Grid {
            scale: (fd as f64 * cd as f64) as f32,
            min: (fm as f64 * cm as f64) as f32,
        }
    }

    /// The squared error of `x` quantized on this grid (f64).
    pub fn sq_error(self, x: &[f32]) -> f64 {
        x.iter()
            .map(|&v| (self.value(self.level(v)) as f64 - v as f64).powi(2))
            .sum()
    }
}

/// Round to nearest on `[min(x, 0), max(x)]`: `scale = (max - min) / 15`. Weights must be
/// finite (checked by the callers, as for int8).
pub fn rtn_grid(x: &[f32]) -> Grid {
    let (lo, hi) = range(x);
    grid_for(lo.min(0.0), hi)
}

/// The least-squares search (see the module notes). Groups longer than 128 (per-channel rows)
/// also try clipped ranges, `r * [lo, hi]` for r down to 0.05 (every 0.05, then every 0.01
/// around the best): outliers in a long row would otherwise stretch every step.
///
/// Candidates are compared by the error of their refit grid on their own levels (from the
/// sums of the fit, no second pass over the group); the best is then re-rounded and refit
/// twice, and kept only if its true error beats round-to-nearest's.
pub fn search_grid(x: &[f32]) -> Grid {
    let (lo, hi) = range(x);
    let lo = lo.min(0.0);
    let rtn = rtn_grid(x);
    if hi <= lo {
        return rtn;
    }
    let width = hi as f64 - lo as f64;
    let mut levels = vec![0u8; x.len()];
    let mut best: Option<(Grid, f64)> = None;
    let consider = |levels: &[u8], best: &mut Option<(Grid, f64)>| {
        if let Some((g, e)) = fit(x, levels) {
            if best.is_none_or(|(_, b)| e < b) {
                *best = Some((g, e));
            }
        }
    };
    // Rescaled ranges: 14.0 to 16.0 steps across [lo, hi], in 20 increments.
    for step in 0..=20 {
        let iscale = (QMAX as f64 - 1.0 + 0.1 * step as f64) / width;
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = ((v as f64 - lo as f64) * iscale)
                .round_ties_even()
                .clamp(0.0, QMAX as f64) as u8;
        }
        consider(&levels, &mut best);
    }
    if x.len() > 128 {
        let clipped = |r: f64, levels: &mut [u8], best: &mut Option<(Grid, f64)>| -> f64 {
            let g = grid_for((lo as f64 * r) as f32, (hi as f64 * r) as f32);
            for (q, &v) in levels.iter_mut().zip(x) {
                *q = g.level(v);
            }
            let before = best.map_or(f64::INFINITY, |(_, e)| e);
            consider(levels, best);
            best.map_or(f64::INFINITY, |(_, e)| e).min(before)
        };
        let (mut best_r, mut best_e) = (1.0, f64::INFINITY);
        for step in 1..=19 {
            let r = 1.0 - 0.05 * step as f64;
            let e = clipped(r, &mut levels, &mut best);
            if e < best_e {
                (best_r, best_e) = (r, e);
            }
        }
        for d in [-4i32, -3, -2, -1, 1, 2, 3, 4] {
            let r = best_r + 0.01 * d as f64;
            if r > 0.0 && r < 1.0 {
                clipped(r, &mut levels, &mut best);
            }
        }
    }
    let Some((mut grid, _)) = best else {
        return rtn;
    };
    // Two rounds of re-rounding on the best grid and refitting.
    for _ in 0..2 {
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = grid.level(v);
        }
        match fit(x, &levels) {
            Some((g, _)) if g.sq_error(x) < grid.sq_error(x) => grid = g,
            _ => break,
        }
    }
    if grid.sq_error(x) < rtn.sq_error(x) {
        grid
    } else {
        rtn
    }
}

/// Symmetric round to nearest: `w ~ scale * s`, `s` in `-8..=7`. The scale puts the
/// largest-magnitude weight on -8 when it is negative and on 7 when it is positive.
pub fn rtn_sym(x: &[f32]) -> f32 {
    let (lo, hi) = range(x);
    let s = if -lo >= hi {
        -lo as f64 / 8.0
    } else {
        hi as f64 / 7.0
    };
    s as f32
}

/// Symmetric least-squares search: scales from 0.7 to 1.1 times [`rtn_sym`]'s, each refit by
/// least squares to its levels.
pub fn search_sym(x: &[f32]) -> f32 {
    let base = rtn_sym(x);
    let mut best = base;
    let mut best_err = sym_error(x, base);
    if base == 0.0 {
        return base;
    }
    for step in 0..=40 {
        let d = base as f64 * (0.7 + 0.01 * step as f64);
        let (mut sl2, mut slx) = (0.0f64, 0.0f64);
        for &v in x {
            let s = sym_level(v as f64, d) as f64;
            sl2 += s * s;
            slx += s * v as f64;
        }
        if sl2 > 0.0 && slx > 0.0 {
            let fitted = (slx / sl2) as f32;
            let e = sym_error(x, fitted);
            if e < best_err {
                best = fitted;
                best_err = e;
            }
        }
    }
    best
}

/// The symmetric level of `v` (`-8..=7`) at scale `d`.
pub fn sym_level(v: f64, d: f64) -> i8 {
    if d == 0.0 {
        return 0;
    }
    (v / d).round_ties_even().clamp(-8.0, 7.0) as i8
}

/// The squared error of `x` on the symmetric grid of scale `d`.
pub fn sym_error(x: &[f32], d: f32) -> f64 {
    x.iter()
        .map(|&v| {
            ((d as f64 * sym_level(v as f64, d as f64) as f64) as f32 as f64 - v as f64).powi(2)
        })
        .sum()
}

/// A row's grids coded: `scale[g] = fd * cd[g]`, `min[g] = fm * cm[g]`, codes `0..=255`.
#[derive(Clone, Debug, PartialEq)]
pub struct CodedRow {
    pub fd: f32,
    pub fm: f32,
    pub cd: Vec<u8>,
    pub cm: Vec<u8>,
}

impl CodedRow {
    /// Group `g`'s decoded grid.
    pub fn grid(&self, g: usize) -> Grid {
        Grid::decode(self.fd, self.cd[g], self.fm, self.cm[g])
    }

    /// The levels of a row (`row.len()` a multiple of `group`), rounded on the decoded grids.
    pub fn levels(&self, row: &[f32], group: usize, out: &mut [u8]) {
        for (g, (x, q)) in row.chunks(group).zip(out.chunks_mut(group)).enumerate() {
            let grid = self.grid(g);
            for (q, &v) in q.iter_mut().zip(x) {
                *q = grid.level(v);
            }
        }
    }
}

/// Codes a row's grids: `fd = max scale / 255`, `fm = min min / 255` (<= 0), each code rounded
/// to nearest. A group whose scale is far below the row's largest loses relative precision
/// (its code is small); the levels are rounded again on the decoded grid, which recovers most
/// of it.
pub fn code_row(grids: &[Grid]) -> CodedRow {
    let dmax = grids.iter().fold(0.0f32, |m, g| m.max(g.scale));
    let mmin = grids.iter().fold(0.0f32, |m, g| m.min(g.min));
    let fd = if dmax > 0.0 { dmax / 255.0 } else { 0.0 };
    let fm = if mmin < 0.0 { mmin / 255.0 } else { 0.0 };
    let code = |v: f32, f: f32| -> u8 {
        if f == 0.0 {
            0
        } else {
            (v as f64 / f as f64).round_ties_even().clamp(0.0, 255.0) as u8
        }
    };
    CodedRow {
        fd,
        fm,
        cd: grids.iter().map(|g| code(g.scale, fd)).collect(),
        cm: grids.iter().map(|g| code(g.min, fm)).collect(),
    }
}

/// The grid of one group by `method`.
pub fn grid(x: &[f32], method: Method) -> Grid {
    match method {
        Method::Rtn => rtn_grid(x),
        Method::Search => search_grid(x),
    }
}

fn range(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The round-to-nearest grid of `[lo, hi]` (`lo <= 0`). Computed in f64: a range as wide as
/// float32 allows (`hi - lo` overflowing f32) still gets a finite scale.
fn grid_for(lo: f32, hi: f32) -> Grid {
    if hi <= lo || hi.is_nan() || lo.is_nan() {
        return Grid {
            scale: 0.0,
            min: lo.min(0.0),
        };
    }
    Grid {
        scale: ((hi as f64 - lo as f64) / QMAX as f64) as f32,
        min: lo,
    }
}

/// The least-squares grid for fixed levels: minimises `sum (scale * q + min - x)^2` over
/// `(scale, min)`, with `min <= 0` (then `scale = sum qx / sum q^2`) and `scale >= 0`, and
/// that sum at the optimum (the error on these levels; rounding `x` on the new grid can only
/// lower it). None when the levels are all equal (no scale to fit).
fn fit(x: &[f32], levels: &[u8]) -> Option<(Grid, f64)> {
    let n = x.len() as f64;
    let (mut sq, mut sq2, mut sx, mut sqx, mut sx2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&q, &v) in levels.iter().zip(x) {
        let (q, v) = (q as f64, v as f64);
        sq += q;
        sq2 += q * q;
        sx += v;
        sqx += q * v;
        sx2 += v * v;
    }
    let det = n * sq2 - sq * sq;
    if det <= 0.0 {
        return None;
    }
    let mut scale = (n * sqx - sx * sq) / det;
    let mut min = (sq2 * sx - sq * sqx) / det;
    if min > 0.0 {
        min = 0.0;
        scale = sqx / sq2;
    }
    if scale.is_nan() || scale <= 0.0 || !scale.is_finite() || !min.is_finite() {
        return None;
    }
    let err = scale * scale * sq2 + 2.0 * scale * min * sq + n * min * min
        - 2.0 * scale * sqx
        - 2.0 * min * sx
        + sx2;
    Some((
        Grid {
            scale: scale as f32,
            min: min as f32,
        },
        err.max(0.0),
    ))
}

#[cfg(test)]
mod tests;
