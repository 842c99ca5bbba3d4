use super::*;

/// The statistical tests measure accuracy, which no CPU or ISA changes (the quantizers are
/// plain scalar code): skipped in the slow runs, valgrind (`DYNAQ_TEST_SCALE=small`) and QEMU
/// (`DYNAQ_TEST_QUICK=1`), which exist to test the kernels.
fn slow_run() -> bool {
    std::env::var("DYNAQ_TEST_SCALE").is_ok_and(|v| v.trim() == "small")
        || std::env::var("DYNAQ_TEST_QUICK").is_ok_and(|v| v.trim() == "1")
}

/// A small deterministic generator (xorshift64*), normal by Box-Muller: no dependency, the same
/// numbers everywhere.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Student's t with 4 degrees of freedom: heavy tails, as trained weights have.
    fn student4(&mut self) -> f64 {
        let chi2: f64 = (0..4).map(|_| self.normal().powi(2)).sum();
        self.normal() / (chi2 / 4.0).sqrt()
    }
}

fn matrix(rows: usize, cols: usize, seed: u64, heavy: bool) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..rows * cols)
        .map(|_| (if heavy { rng.student4() } else { rng.normal() }) as f32)
        .collect()
}

/// Relative Frobenius error of quantizing each row of `w` in groups of `group` (`cols` for
/// per-channel), on searched or RTN grids, coded per row when `coded`.
fn rel_error(w: &[f32], cols: usize, group: usize, method: Method, coded: bool) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for row in w.chunks(cols) {
        let grids: Vec<Grid> = row.chunks(group).map(|x| grid(x, method)).collect();
        let decoded: Vec<Grid> = if coded {
            let c = code_row(&grids);
            (0..grids.len()).map(|g| c.grid(g)).collect()
        } else {
            grids
        };
        for (x, g) in row.chunks(group).zip(&decoded) {
            err += g.sq_error(x);
            norm += x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        }
    }
    (err / norm).sqrt()
}

#[test]
fn rtn_rounds_to_the_nearest_level() {
    let x = matrix(1, 512, 1, false);
    for group in x.chunks(32) {
        let g = rtn_grid(group);
        assert!(g.scale > 0.0 && g.min <= 0.0);
        for &v in group {
            let err = (g.value(g.level(v)) - v).abs();
            assert!(
                err <= g.scale / 2.0 * (1.0 + 1e-6),
                "{v}: {err} > {}",
                g.scale / 2.0
            );
        }
    }
}

#[test]
fn constant_and_zero_groups_are_exact() {
    for c in [0.0f32, -3.25, -1e-30] {
        let x = [c; 32];
        for method in [Method::Rtn, Method::Search] {
            let g = grid(&x, method);
            assert_eq!(g.sq_error(&x), 0.0, "{c} {method:?}");
        }
    }
    assert_eq!(rtn_sym(&[0.0; 32]), 0.0);
    assert_eq!(sym_error(&[0.0; 32], search_sym(&[0.0; 32])), 0.0);
}

#[test]
fn extreme_magnitudes_give_finite_grids() {
    let mut x = vec![0.0f32; 32];
    x[0] = f32::MAX;
    x[1] = -f32::MAX;
    x[2] = 1e-40;
    for method in [Method::Rtn, Method::Search] {
        let g = grid(&x, method);
        assert!(
            g.scale.is_finite() && g.scale > 0.0 && g.min.is_finite(),
            "{g:?}"
        );
        assert_eq!(g.value(g.level(f32::MAX)), f32::MAX);
    }
    let tiny: Vec<f32> = (0..32).map(|i| i as f32 * 1e-44).collect();
    let g = search_grid(&tiny);
    assert!(g.scale.is_finite() && g.sq_error(&tiny) <= rtn_grid(&tiny).sq_error(&tiny));
}

#[test]
fn search_is_never_worse_than_rtn() {
    let mut rng = Rng(7);
    for case in 0..300 {
        let len = [32, 64, 128, 200][case % 4];
        let heavy = case % 3 == 0;
        let x: Vec<f32> = (0..len)
            .map(|_| {
                (if heavy {
                    rng.student4()
                } else {
                    rng.normal() * 0.02 + 0.01
                }) as f32
            })
            .collect();
        let (r, s) = (rtn_grid(&x), search_grid(&x));
        assert!(s.sq_error(&x) <= r.sq_error(&x), "case {case}");
        assert!(s.scale >= 0.0 && s.min <= 0.0);
        let (rs, ss) = (rtn_sym(&x), search_sym(&x));
        assert!(
            sym_error(&x, ss) <= sym_error(&x, rs),
            "case {case} (symmetric)"
        );
    }
}

#[test]
fn codes_stay_in_range_and_decode_close() {
    let x = matrix(4, 4096, 3, true);
    for row in x.chunks(4096) {
        let grids: Vec<Grid> = row.chunks(32).map(search_grid).collect();
        let c = code_row(&grids);
        assert!(c.fd > 0.0 && c.fm <= 0.0);
        assert_eq!((c.cd.len(), c.cm.len()), (128, 128));
        assert!(c.cd.contains(&255) && c.cm.contains(&255));
        for (g, grid) in grids.iter().enumerate() {
            let d = c.grid(g);
            // Codes round to nearest: within half a code step of the searched values.
            assert!((d.scale - grid.scale).abs() <= c.fd / 2.0 * 1.0001);
            assert!((d.min - grid.min).abs() <= -c.fm / 2.0 * 1.0001);
        }
        let mut levels = vec![0u8; 4096];
        c.levels(row, 32, &mut levels);
        assert!(levels.iter().all(|&q| q <= QMAX));
    }
}

/// The accuracy the W4A8 issue asks of group 32 (its targets are on `linear`'s output; with
/// isotropic activations the weight error is that error less the activations' own).
#[test]
fn group_32_accuracy_gaussian_and_heavy_tailed() {
    if slow_run() {
        return;
    }
    let (rows, cols) = (64, 2048);
    for (heavy, target) in [(false, 0.072), (true, 0.086)] {
        let w = matrix(rows, cols, if heavy { 11 } else { 10 }, heavy);
        let rtn = rel_error(&w, cols, 32, Method::Rtn, false);
        let searched = rel_error(&w, cols, 32, Method::Search, false);
        let coded = rel_error(&w, cols, 32, Method::Search, true);
        println!("heavy={heavy}: RTN {rtn:.4}, searched {searched:.4}, coded {coded:.4}");
        assert!(
            coded < target && searched < target,
            "heavy={heavy}: {coded} / {searched}"
        );
        assert!(
            searched < 0.93 * rtn,
            "heavy={heavy}: {searched} vs RTN {rtn}"
        );
    }
}

/// Per-channel on heavy-tailed rows: the clipping search ends far below min-max RTN, whose
/// steps the outliers stretch (the issue asks >= 35% below; K = 4096).
#[test]
fn per_channel_search_beats_rtn_on_heavy_tails() {
    if slow_run() {
        return;
    }
    let cols = 4096;
    let w = matrix(16, cols, 12, true);
    let rtn = rel_error(&w, cols, cols, Method::Rtn, false);
    let searched = rel_error(&w, cols, cols, Method::Search, false);
    println!("per-channel, K = {cols}: RTN {rtn:.4}, searched {searched:.4}");
    assert!(searched < 0.65 * rtn, "{searched} vs RTN {rtn}");
}

/// Importances as calibration gives them: log-uniform over 1..1000 (activation scales from 1
/// to ~30), a tenth of them zero when `zeros` (columns that never see an activation).
fn importance(len: usize, rng: &mut Rng, zeros: bool) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let w = (rng.uniform() * 1000f64.ln()).exp() as f32;
            if zeros && rng.uniform() < 0.1 {
                0.0
            } else {
                w
            }
        })
        .collect()
}

/// The calibrated searches against RTN and the plain searches, in the weighted error, on random
/// groups (every group length, Gaussian and heavy-tailed, with and without zero importances).
#[test]
fn weighted_search_is_never_worse_than_rtn_or_the_plain_search() {
    let mut rng = Rng(21);
    let (mut plain_total, mut weighted_total) = (0.0f64, 0.0f64);
    for case in 0..400 {
        let len = [32, 64, 128, 256][case % 4];
        let heavy = case % 3 == 0;
        let x: Vec<f32> = (0..len)
            .map(|_| (if heavy { rng.student4() } else { rng.normal() }) as f32)
            .collect();
        let imp = importance(len, &mut rng, case % 5 == 0);
        let imp = &imp[..];
        let (r, p, w) = (rtn_grid(&x), search_grid(&x), search_grid_weighted(&x, imp));
        assert!(w.scale.is_finite() && w.scale >= 0.0 && w.min.is_finite() && w.min <= 0.0);
        let we = w.weighted_error(&x, imp);
        assert!(we <= r.weighted_error(&x, imp), "case {case}: RTN");
        assert!(we <= p.weighted_error(&x, imp), "case {case}: plain search");
        plain_total += p.weighted_error(&x, imp);
        weighted_total += we;
        let (rs, ps, ws) = (rtn_sym(&x), search_sym(&x), search_sym_weighted(&x, imp));
        assert!(ws.is_finite() && ws >= 0.0);
        let wse = sym_error_by(&x, ws, imp);
        assert!(
            wse <= sym_error_by(&x, rs, imp),
            "case {case}: symmetric RTN"
        );
        assert!(
            wse <= sym_error_by(&x, ps, imp),
            "case {case}: symmetric plain"
        );
    }
    // Not only never worse: far better (~0.7 of the plain search's weighted error here).
    println!(
        "weighted error, calibrated / plain: {:.3}",
        weighted_total / plain_total
    );
    assert!(
        weighted_total < 0.85 * plain_total,
        "{weighted_total} vs {plain_total}"
    );
}

/// A uniform importance (all zero included: a group whose columns never see an activation) is
/// the plain objective: the plain grids, bit for bit. So is every group of a row whose importance
/// is all ones.
#[test]
fn uniform_importance_gives_the_plain_search() {
    let mut rng = Rng(22);
    for len in [32, 64, 128, 300] {
        let x: Vec<f32> = (0..len).map(|_| rng.student4() as f32).collect();
        for c in [0.0f32, 1.0, 3.5, 1e-30] {
            let imp = vec![c; len];
            assert_eq!(search_grid_weighted(&x, &imp), search_grid(&x), "{len} {c}");
            assert_eq!(
                search_sym_weighted(&x, &imp).to_bits(),
                search_sym(&x).to_bits(),
                "{len} {c}"
            );
        }
    }
}

/// Importance on a few values only (the others zero): a valid grid, exact where the fit can be.
#[test]
fn sparse_importance_gives_valid_grids() {
    let mut rng = Rng(23);
    let x: Vec<f32> = (0..32).map(|_| rng.normal() as f32).collect();
    for nonzero in [1usize, 2, 5] {
        let mut imp = vec![0.0f32; 32];
        for i in 0..nonzero {
            imp[3 + 7 * i] = 1.0 + i as f32;
        }
        let g = search_grid_weighted(&x, &imp);
        assert!(g.scale.is_finite() && g.scale >= 0.0 && g.min.is_finite() && g.min <= 0.0);
        assert!(g.weighted_error(&x, &imp[..]) <= search_grid(&x).weighted_error(&x, &imp[..]));
        assert!(x
            .iter()
            .all(|&v| g.level(v) <= QMAX && g.value(g.level(v)).is_finite()));
        let d = search_sym_weighted(&x, &imp);
        assert!(d.is_finite() && d >= 0.0);
    }
    // Constant and extreme groups, as for the plain search.
    let imp: Vec<f32> = (0..32).map(|i| (i % 7) as f32).collect();
    assert_eq!(
        search_grid_weighted(&[-3.25; 32], &imp).sq_error(&[-3.25; 32]),
        0.0
    );
    assert_eq!(search_sym_weighted(&[0.0; 32], &imp), 0.0);
    let mut x = vec![0.0f32; 32];
    (x[0], x[1]) = (f32::MAX, -f32::MAX);
    let g = search_grid_weighted(&x, &imp);
    assert!(
        g.scale.is_finite() && g.scale > 0.0 && g.min.is_finite(),
        "{g:?}"
    );
}
