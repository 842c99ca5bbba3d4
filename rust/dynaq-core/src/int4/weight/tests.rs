use super::*;
use crate::reference::{asym_params, minmax, quantize_u8};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn values(&mut self, len: usize, scale: f64) -> Vec<f32> {
        (0..len)
            .map(|_| ((self.next() * 2.0 - 1.0) * scale) as f32)
            .collect()
    }
}

const SHAPES: [(usize, usize); 7] = [
    (1, 32),
    (3, 64),
    (17, 128),
    (16, 96),
    (33, 256),
    (5, 384),
    (0, 64),
];

fn cases() -> Vec<(usize, usize, Option<usize>, bool)> {
    let mut out = vec![];
    for &(n, k) in &SHAPES {
        for group in [Some(32), Some(64), Some(128), None] {
            if group.is_some_and(|g| k % g != 0) {
                continue;
            }
            for symmetric in [false, true] {
                out.push((n, k, group, symmetric));
            }
        }
    }
    // Per channel, K not a multiple of 8 (padding nibbles), odd N.
    for (n, k) in [(3, 13), (17, 1), (19, 9), (4, 0)] {
        out.push((n, k, None, false));
        out.push((n, k, None, true));
    }
    out
}

#[test]
fn packing_holds_the_quantizer_levels() {
    let mut rng = Rng(1);
    for (n, k, group, symmetric) in cases() {
        let w = rng.values(n * k, 0.5);
        let q = Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, None).unwrap();
        let size = group.unwrap_or(k.max(1));
        assert_eq!(
            (q.shape(), q.group(), q.per_channel()),
            ((n, k), size, group.is_none())
        );
        let values = q.values();
        for col in 0..n {
            for kk in 0..k {
                let grid = q.grid(col, kk / size);
                // The stored level is the one the decoded grid rounds to.
                assert_eq!(
                    values[col * k + kk],
                    grid.level(w[col * k + kk]),
                    "{n}x{k} {group:?}"
                );
            }
            for g in 0..q.groups() {
                let brute: i32 = q.span(g).map(|kk| values[col * k + kk] as i32).sum();
                assert_eq!(q.qsum(col, g), brute);
            }
        }
        // Padding (columns beyond n, k beyond the last block's real ones) holds 0.
        let real: usize = n * k;
        let nonzero_nibbles: usize = q
            .panels()
            .iter()
            .map(|b| (b & 0x0F != 0) as usize + (b >> 4 != 0) as usize)
            .sum();
        assert!(nonzero_nibbles <= real);
        if symmetric {
            for col in 0..n {
                for g in 0..q.groups() {
                    let grid = q.grid(col, g);
                    assert_eq!(grid.min, (-8.0 * grid.scale as f64) as f32);
                }
            }
        }
    }
}

#[test]
fn dequantized_error_is_that_of_the_grids() {
    let mut rng = Rng(2);
    let (n, k) = (8, 256);
    let w = rng.values(n * k, 1.0);
    for group in [Some(32), None] {
        let q = Int4Weight::from_float(&w, n, k, group, false, Method::Search, None).unwrap();
        let d = q.dequantize();
        let err: f64 = d
            .iter()
            .zip(&w)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let norm: f64 = w.iter().map(|v| (*v as f64).powi(2)).sum();
        let rel = (err / norm).sqrt();
        // Uniform weights on 16 levels: about 1/(15·sqrt(3)) / (1/sqrt(3)) = 0.067 of the norm.
        assert!(rel < 0.075, "{group:?}: {rel}");
    }
}

#[test]
fn bad_shapes_groups_and_values_are_refused() {
    let w = vec![0.5f32; 4 * 96];
    let e = Int4Weight::from_float(&w, 4, 96, Some(48), false, Method::Rtn, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("group_size must be 32, 64, 128 or None"),
        "{e}"
    );
    let e = Int4Weight::from_float(&w, 4, 96, Some(64), false, Method::Rtn, None).unwrap_err();
    assert!(
        e.to_string().contains("does not divide in_features = 96"),
        "{e}"
    );
    assert!(Int4Weight::from_float(&w, 4, 95, None, false, Method::Rtn, None).is_err());
    let mut bad = w.clone();
    bad[2 * 96 + 5] = f32::NAN;
    let e = Int4Weight::from_float(&bad, 4, 96, Some(32), false, Method::Rtn, None).unwrap_err();
    assert_eq!(e, Error::NonFinite { row: Some(2) });
}

/// The oracle against float64 arithmetic on the dequantized weight, and the integer identity the
/// kernels use.
#[test]
fn oracle_matches_float64_and_the_kernels_decomposition() {
    let mut rng = Rng(3);
    for (n, k, group, symmetric) in cases() {
        let m = 3;
        let w = rng.values(n * k, 0.3);
        let q = Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, None).unwrap();
        let x = rng.values(m * k, 2.0);
        let (mut a, mut zx, mut sx) = (vec![0u8; m * k], vec![], vec![]);
        for r in 0..m {
            let mm = minmax(&x[r * k..(r + 1) * k]);
            let (s, z) = asym_params(mm.min, mm.max);
            quantize_u8(&x[r * k..(r + 1) * k], s, z, &mut a[r * k..(r + 1) * k]);
            zx.push(z as i32);
            sx.push(s);
        }
        let bias = rng.values(n, 1.0);
        let y = linear_ref(&a, &zx, &sx, m, &q, Some(&bias));
        let deq = q.dequantize();
        for r in 0..m {
            for col in 0..n {
                let exact: f64 = (0..k)
                    .map(|kk| {
                        sx[r] as f64
                            * (a[r * k + kk] as f64 - zx[r] as f64)
                            * deq[col * k + kk] as f64
                    })
                    .sum::<f64>()
                    + bias[col] as f64;
                let scale: f64 = (0..k)
                    .map(|kk| {
                        (sx[r] as f64
                            * (a[r * k + kk] as f64 - zx[r] as f64)
                            * deq[col * k + kk] as f64)
                            .abs()
                    })
                    .sum::<f64>()
                    + bias[col].abs() as f64;
                let got = y[r * n + col] as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * scale + 1e-30,
                    "{n}x{k} {group:?} {symmetric}: {got} vs {exact}"
                );
                // What the kernels sum (`P = Σ a·q` and `A = Σ a` per group, times the codes
                // as laid out beside the panels), less the column constants, is X1 and X2.
                let (_, _, cd, cm) = q.codes(col);
                let groups = q.groups();
                let (c1, c2) = q.constants(col);
                let (mut x1, mut x2, mut lhs1, mut lhs2) = (0i64, 0i64, 0i64, 0i64);
                for g in 0..groups {
                    let ks = q.span(g);
                    let at = ((col / 16) * groups + g) * 16 + col % 16;
                    assert_eq!((q.cd_panels()[at], q.cm_panels()[at]), (cd[g], cm[g]));
                    let p: i64 = ks
                        .clone()
                        .map(|kk| a[r * k + kk] as i64 * q.level(col, kk) as i64)
                        .sum();
                    let asum: i64 = ks.clone().map(|kk| a[r * k + kk] as i64).sum();
                    lhs1 += cd[g] as i64 * p;
                    lhs2 += cm[g] as i64 * asum;
                    let z = zx[r] as i64;
                    x1 += cd[g] as i64 * (p - z * q.qsum(col, g) as i64);
                    x2 += cm[g] as i64 * (asum - z * ks.len() as i64);
                }
                let (lhs, rhs) = (
                    (lhs1 - zx[r] as i64 * c1, lhs2 - zx[r] as i64 * c2),
                    (x1, x2),
                );
                assert_eq!(lhs, rhs);
            }
        }
    }
}

#[test]
fn the_kernels_memory_gives_the_weight_back() {
    let mut rng = Rng(7);
    for (n, k, group, symmetric) in cases() {
        let w = rng.values(n * k, 0.5);
        let q = Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, None).unwrap();
        let (fd, fm) = q.row_factors();
        assert_eq!(q.panels().len(), Int4Weight::panels_len(n, k).unwrap());
        assert_eq!(
            q.cd_panels().len(),
            Int4Weight::code_panels_len(n, k, group).unwrap()
        );
        let back = Int4Weight::from_panels(
            n,
            k,
            group,
            symmetric,
            q.panels(),
            q.cd_panels(),
            q.cm_panels(),
            fd.to_vec(),
            fm.to_vec(),
        )
        .unwrap();
        assert_eq!(back, q, "({n}, {k}) group {group:?} symmetric {symmetric}");
    }
}

#[test]
fn the_kernels_memory_is_checked() {
    // 19 columns (13 of padding in the second panel), K = 9 (7 padding levels per row).
    let (n, k) = (19, 9);
    let w = Rng(3).values(n * k, 1.0);
    let q = Int4Weight::from_float(&w, n, k, None, false, Method::Rtn, None).unwrap();
    let (fd, fm) = (q.row_factors().0.to_vec(), q.row_factors().1.to_vec());
    let build = |p: &[u8], cd: &[u8], cm: &[u8]| {
        Int4Weight::from_panels(n, k, None, false, p, cd, cm, fd.clone(), fm.clone())
    };
    let (p, cd, cm) = (q.panels(), q.cd_panels(), q.cm_panels());
    assert!(build(p, cd, cm).is_ok());
    assert!(matches!(build(&p[1..], cd, cm), Err(Error::Shape(_))));
    assert!(matches!(build(p, &cd[1..], cm), Err(Error::Shape(_))));
    // A padding column (col 21, panel 1), a padding level (k = 12 of col 0), a code of a
    // padding column: each refused.
    let mut bad = p.to_vec();
    let blocks = k.div_ceil(8);
    bad[blocks * BLOCK_BYTES + 5 * 4] = 1;
    assert!(matches!(build(&bad, cd, cm), Err(Error::Value(_))));
    let mut bad = p.to_vec();
    bad[BLOCK_BYTES] |= 0x10; // block 1, column 0, high nibble: k = 12
    let r = build(&bad, cd, cm);
    assert!(matches!(r, Err(Error::Value(_))), "{r:?}");
    let mut bad = cd.to_vec();
    bad[PANEL + 5] = 1; // panel 1, column 21
    assert!(matches!(build(p, &bad, cm), Err(Error::Value(_))));
    // A per-channel weight's codes are 1.
    let mut bad = cm.to_vec();
    bad[0] = 2;
    assert!(matches!(build(p, cd, &bad), Err(Error::Value(_))));
}

/// Calibrated packing: no importance is the plain packing, and so is an importance of all ones,
/// bit for bit; an importance that varies changes the grids only (every level still the one its
/// decoded grid rounds to), and a group of zero importance still gets a valid grid.
#[test]
fn calibrated_packing_changes_only_the_grids() {
    let mut rng = Rng(8);
    for (n, k, group, symmetric) in cases() {
        let w = rng.values(n * k, 0.5);
        let plain =
            Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, None).unwrap();
        let calibrated = |imp: Option<&[f32]>| {
            Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, imp).unwrap()
        };
        let what = format!("({n}, {k}) group {group:?} symmetric {symmetric}");
        assert_eq!(calibrated(None), plain, "{what}");
        if k == 0 {
            continue;
        }
        assert_eq!(calibrated(Some(&vec![1.0; k])), plain, "{what}: all ones");
        // Scales 1..~30 squared, the first 32 columns never active.
        let imp: Vec<f32> = (0..k)
            .map(|kk| {
                if kk < 32 {
                    0.0
                } else {
                    (1.0 + 29.0 * rng.next()).powi(2) as f32
                }
            })
            .collect();
        if imp.iter().all(|&v| v == 0.0) {
            continue;
        }
        let q = calibrated(Some(&imp));
        let (size, values, deq) = (q.group(), q.values(), q.dequantize());
        assert!(deq.iter().all(|v| v.is_finite()), "{what}");
        for col in 0..n {
            for kk in 0..k {
                assert_eq!(
                    values[col * k + kk],
                    q.grid(col, kk / size).level(w[col * k + kk])
                );
            }
        }
    }
}

#[test]
fn bad_importances_are_refused() {
    let (n, k) = (4, 64);
    let w = Rng(9).values(n * k, 1.0);
    let pack = |imp: &[f32], method: Method| {
        Int4Weight::from_float(&w, n, k, Some(32), false, method, Some(imp))
            .unwrap_err()
            .to_string()
    };
    let ones = vec![1.0f32; k];
    assert!(pack(&ones, Method::Rtn).contains("importance applies to method 'search'"));
    assert!(pack(&ones[1..], Method::Search).contains("importance has 63 values"));
    let mut bad = ones.clone();
    bad[5] = f32::NAN;
    assert!(pack(&bad, Method::Search).contains("NaN or infinity (index 5)"));
    bad[5] = f32::INFINITY;
    assert!(pack(&bad, Method::Search).contains("NaN or infinity (index 5)"));
    bad[5] = -0.5;
    assert!(pack(&bad, Method::Search).contains("importance must be >= 0, got -0.5 at index 5"));
    assert!(pack(&[0.0; 64], Method::Search).contains("importance is all zero"));
}
