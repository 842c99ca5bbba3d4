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
//! * [`search_grid_weighted`] / [`search_sym_weighted`]: the search for an error weighted value
//!   by value, `Σ importance[k]·(w[k] − ŵ[k])²` (calibrated quantization: the importance of a
//!   column is typically the mean of its squared activations). Every fit and comparison is
//!   weighted; never worse than the plain search in that error. A group whose importance is
//!   uniform (all zero included) gets the plain search. Only the grids change: levels are
//!   rounded, and grids coded, as ever.
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
        self.weighted_error(x, Unit)
    }

    /// The squared error of `x` quantized on this grid, value `i`'s weighted by `imp.at(i)`.
    pub fn weighted_error(self, x: &[f32], imp: impl Importance) -> f64 {
        x.iter()
            .enumerate()
            .map(|(i, &v)| imp.at(i) * (self.value(self.level(v)) as f64 - v as f64).powi(2))
            .sum()
    }
}

/// How much each value's squared error counts in a search: [`Unit`] (all alike, the plain
/// search) or a slice of importances, one per value of the group (finite, `>= 0`). Multiplying
/// by [`Unit`]'s 1.0 is exact, so the plain search is the weighted code with unit weights, bit
/// for bit.
pub trait Importance: Copy {
    /// Whether the weights vary from value to value (calibrated): the search then tries more
    /// candidates ([`search_grid_weighted`]).
    const CALIBRATED: bool;

    /// The weight of value `i`.
    fn at(self, i: usize) -> f64;
}

/// Every value's error counts alike.
#[derive(Clone, Copy, Debug)]
pub struct Unit;

impl Importance for Unit {
    const CALIBRATED: bool = false;

    #[inline(always)]
    fn at(self, _: usize) -> f64 {
        1.0
    }
}

impl Importance for &[f32] {
    const CALIBRATED: bool = true;

    #[inline(always)]
    fn at(self, i: usize) -> f64 {
        self[i] as f64
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
    search_grid_by(x, Unit)
}

/// [`search_grid`] minimising `Σ importance[i]·(x[i] − ŵ[i])²`: every fit, every comparison
/// and the final check against RTN weighted, over the same candidates (the plain search runs
/// beside it, sharing each candidate's levels: about 1.8 times its time, against 2.2 run one
/// after the other). `importance` is as long as `x`, finite and `>= 0`. The plain
/// search's grid is a candidate too, so the result is never worse than it (nor than RTN) in
/// the weighted error. A group whose importance is uniform (all zero included: its columns
/// never see an activation) has the plain objective: it gets [`search_grid`], bit for bit.
///
/// Trying clipped and one-sided ranges on every group as well lowered the output error a
/// further 4% at group 32 (19.9% below the plain search instead of 15.9%, on activations of
/// spread scales) for 2x the time; a mixed-precision budget quantizes every layer in every
/// format, so the time won.
pub fn search_grid_weighted(x: &[f32], importance: &[f32]) -> Grid {
    assert_eq!(x.len(), importance.len(), "one importance per value");
    if uniform(importance) {
        return search_grid(x);
    }
    // One pass over the candidates for both objectives: each candidate's levels are computed
    // once and fitted twice (the plain search and the weighted one, exactly as each alone).
    let (mut plain, mut weighted) = (Track::new(Unit), Track::new(importance));
    let grids = search_tracks(x, &mut [&mut plain, &mut weighted]);
    let error = |g: Grid| g.weighted_error(x, importance);
    if error(grids[0]) < error(grids[1]) {
        grids[0]
    } else {
        grids[1]
    }
}

fn search_grid_by<I: Importance>(x: &[f32], imp: I) -> Grid {
    search_tracks(x, &mut [&mut Track::new(imp)])[0]
}

/// One objective of a search: its importance, its best candidate so far, and the clip ratio
/// that gave its best clipped candidate.
struct Track<I> {
    imp: I,
    best: Option<(Grid, f64)>,
    best_r: f64,
    best_e: f64,
}

impl<I: Importance> Track<I> {
    fn new(imp: I) -> Self {
        Track {
            imp,
            best: None,
            best_r: 1.0,
            best_e: f64::INFINITY,
        }
    }
}

/// What [`search_tracks`] needs of a [`Track`], whatever its importance.
trait Search {
    /// Fits a grid to `levels` and keeps it if it beats the best (by its refit error).
    fn offer(&mut self, x: &[f32], levels: &[u8]);
    /// The best candidate's error so far.
    fn best_error(&self) -> f64;
    /// Records clip ratio `r` if its candidate made the best error the track has seen.
    fn clip_tried(&mut self, r: f64, error: f64);
    /// The clip ratio around which to refine.
    fn best_clip(&self) -> f64;
    /// The best candidate re-rounded and refit twice, kept only if it beats `rtn`.
    fn finish(&self, x: &[f32], levels: &mut [u8], rtn: Grid) -> Grid;
}

impl<I: Importance> Search for Track<I> {
    fn offer(&mut self, x: &[f32], levels: &[u8]) {
        if let Some((g, e)) = fit(x, levels, self.imp) {
            if self.best.is_none_or(|(_, b)| e < b) {
                self.best = Some((g, e));
            }
        }
    }

    fn best_error(&self) -> f64 {
        self.best.map_or(f64::INFINITY, |(_, e)| e)
    }

    fn clip_tried(&mut self, r: f64, error: f64) {
        if error < self.best_e {
            (self.best_r, self.best_e) = (r, error);
        }
    }

    fn best_clip(&self) -> f64 {
        self.best_r
    }

    fn finish(&self, x: &[f32], levels: &mut [u8], rtn: Grid) -> Grid {
        let imp = self.imp;
        let Some((mut grid, _)) = self.best else {
            return rtn;
        };
        // Two rounds of re-rounding on the best grid and refitting.
        for _ in 0..2 {
            for (q, &v) in levels.iter_mut().zip(x) {
                *q = grid.level(v);
            }
            match fit(x, levels, imp) {
                Some((g, _)) if g.weighted_error(x, imp) < grid.weighted_error(x, imp) => grid = g,
                _ => break,
            }
        }
        if grid.weighted_error(x, imp) < rtn.weighted_error(x, imp) {
            grid
        } else {
            rtn
        }
    }
}

/// The search of the module notes, for each track at once: every shared candidate's levels
/// are computed once and offered to every track; each track refines its own clip ratio and
/// finishes on its own, so each result is the one its search alone would give.
fn search_tracks<const N: usize>(x: &[f32], tracks: &mut [&mut dyn Search; N]) -> [Grid; N] {
    let (lo, hi) = range(x);
    let lo = lo.min(0.0);
    let rtn = rtn_grid(x);
    if hi <= lo {
        return [rtn; N];
    }
    let width = hi as f64 - lo as f64;
    let mut levels = vec![0u8; x.len()];
    // Rescaled ranges: 14.0 to 16.0 steps across [lo, hi], in 20 increments.
    for step in 0..=20 {
        let iscale = (QMAX as f64 - 1.0 + 0.1 * step as f64) / width;
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = ((v as f64 - lo as f64) * iscale)
                .round_ties_even()
                .clamp(0.0, QMAX as f64) as u8;
        }
        for t in tracks.iter_mut() {
            t.offer(x, &levels);
        }
    }
    if x.len() > 128 {
        let clipped_levels = |r: f64, levels: &mut [u8]| {
            let g = grid_for((lo as f64 * r) as f32, (hi as f64 * r) as f32);
            for (q, &v) in levels.iter_mut().zip(x) {
                *q = g.level(v);
            }
        };
        for step in 1..=19 {
            let r = 1.0 - 0.05 * step as f64;
            clipped_levels(r, &mut levels);
            for t in tracks.iter_mut() {
                t.offer(x, &levels);
                let e = t.best_error();
                t.clip_tried(r, e);
            }
        }
        for t in tracks.iter_mut() {
            let best_r = t.best_clip();
            for d in [-4i32, -3, -2, -1, 1, 2, 3, 4] {
                let r = best_r + 0.01 * d as f64;
                if r > 0.0 && r < 1.0 {
                    clipped_levels(r, &mut levels);
                    t.offer(x, &levels);
                }
            }
        }
    }
    let mut out = [rtn; N];
    for (g, t) in out.iter_mut().zip(tracks.iter()) {
        *g = t.finish(x, &mut levels, rtn);
    }
    out
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
    search_sym_by(x, Unit)
}

/// [`search_sym`] minimising the error weighted by `importance`, as [`search_grid_weighted`]:
/// the scales go down to 0.2 times [`rtn_sym`]'s (clipping), the plain search's scale is a
/// candidate, and a uniform importance gives [`search_sym`].
pub fn search_sym_weighted(x: &[f32], importance: &[f32]) -> f32 {
    calibrated(x, importance, search_sym, search_sym_by, |d: f32| {
        sym_error_by(x, d, importance)
    })
}

/// A calibrated search: the `plain` one for a uniform importance (the same objective, scaled),
/// else the better of the `weighted` one and the `plain` one in the weighted `error`.
fn calibrated<'a, T: Copy>(
    x: &[f32],
    importance: &'a [f32],
    plain: fn(&[f32]) -> T,
    weighted: fn(&[f32], &'a [f32]) -> T,
    error: impl Fn(T) -> f64,
) -> T {
    assert_eq!(x.len(), importance.len(), "one importance per value");
    let p = plain(x);
    if uniform(importance) {
        return p;
    }
    let w = weighted(x, importance);
    if error(p) < error(w) {
        p
    } else {
        w
    }
}

fn search_sym_by<I: Importance>(x: &[f32], imp: I) -> f32 {
    let base = rtn_sym(x);
    let mut best = base;
    let mut best_err = sym_error_by(x, base, imp);
    if base == 0.0 {
        return base;
    }
    // Scales from `first` to 1.1 times RTN's, every 0.01.
    let (first, steps) = if I::CALIBRATED { (0.2, 90) } else { (0.7, 40) };
    for step in 0..=steps {
        let d = base as f64 * (first + 0.01 * step as f64);
        let (mut sl2, mut slx) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let (s, w) = (sym_level(v as f64, d) as f64, imp.at(i));
            sl2 += w * (s * s);
            slx += w * (s * v as f64);
        }
        if sl2 > 0.0 && slx > 0.0 {
            let fitted = (slx / sl2) as f32;
            let e = sym_error_by(x, fitted, imp);
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
    sym_error_by(x, d, Unit)
}

/// [`sym_error`] with value `i`'s error weighted by `imp.at(i)`.
pub fn sym_error_by(x: &[f32], d: f32, imp: impl Importance) -> f64 {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let q = (d as f64 * sym_level(v as f64, d as f64) as f64) as f32;
            imp.at(i) * (q as f64 - v as f64).powi(2)
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

/// Whether every importance is the same (all zero included): the plain objective, scaled.
fn uniform(importance: &[f32]) -> bool {
    importance.iter().all(|&w| w == importance[0])
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

/// The least-squares grid for fixed levels: minimises `sum imp * (scale * q + min - x)^2` over
/// `(scale, min)`, with `min <= 0` (then `scale = sum qx / sum q^2`) and `scale >= 0`, and
/// that sum at the optimum (the error on these levels; rounding `x` on the new grid can only
/// lower it). None when the levels are all equal (no scale to fit), or all those of nonzero
/// importance are.
fn fit(x: &[f32], levels: &[u8], imp: impl Importance) -> Option<(Grid, f64)> {
    // With unit weights, `n` is the count and every product by 1.0 is exact: the plain fit.
    let (mut n, mut sq, mut sq2) = (0.0f64, 0.0f64, 0.0f64);
    let (mut sx, mut sqx, mut sx2) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&q, &v)) in levels.iter().zip(x).enumerate() {
        let (q, v, w) = (q as f64, v as f64, imp.at(i));
        n += w;
        sq += w * q;
        sq2 += w * (q * q);
        sx += w * v;
        sqx += w * (q * v);
        sx2 += w * (v * v);
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
