//! Every detected path's 4-bit kernels against the scalar oracle, bit for bit.
//!
//! * (a) the microkernel of each path on tiles of every `rows x panels` shape, with padded
//!   strides, several groups per call, shared codes (per channel), and the longest chunks the
//!   driver hands out at the largest values;
//! * (b) `ops::linear` on 4-bit weights against `int4::weight::linear_ref` over a grid of
//!   shapes, group sizes, both grids, K at the chunk limits;
//! * (c) property tests of random shapes, levels and codes.
//!
//! `DYNAQ_MAX_ISA`, `DYNAQ_TEST_PATHS` and `DYNAQ_TEST_SCALE` work as for `paths.rs`.

mod common;

use common::{cases, paths, quick, scale, Rng, Scale};
use dynaq_core::dispatch::int4_kernels;
use dynaq_core::int4::gemm::{CHANNEL_CHUNK, GROUP_CHUNK};
use dynaq_core::int4::kernel::Int4Kernel;
use dynaq_core::int4::kernel::Int4Tile;
use dynaq_core::int4::quant::Method;
use dynaq_core::int4::weight::{linear_ref, BLOCK_BYTES, PANEL};
use dynaq_core::int4::Int4Weight;
use dynaq_core::ops;
use dynaq_core::quant::{Granularity, Matrix, Quantization};
use dynaq_core::{Isa, PackedWeight};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// (a) Microkernels.
// ---------------------------------------------------------------------------------------------

/// How a tile's operands are filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// Every activation 255, every level 15, every code 255: the largest sums.
    Max,
}

struct TileCase {
    rows: usize,
    panels: usize,
    groups: usize,
    group_blocks: usize,
    shared_codes: bool,
    fill: Fill,
}

/// Runs one of `isa`'s 4-bit microkernels on one tile and checks both outputs against the
/// definition, and that nothing outside the tile's part of C is written.
fn check_tile(isa: Isa, kern: &Int4Kernel, rng: &mut Rng, t: &TileCase) {
    let blocks = t.groups * t.group_blocks;
    let lda = 8 * blocks + 8 * rng.below(3) as usize;
    let panel_stride = blocks * BLOCK_BYTES + BLOCK_BYTES * rng.below(2) as usize;
    let code_groups = if t.shared_codes { 1 } else { t.groups };
    let code_stride = code_groups * PANEL + PANEL * rng.below(2) as usize;
    let lds = t.groups + rng.below(2) as usize;
    let ldc = t.panels * PANEL + 16 * rng.below(2) as usize;
    let max = matches!(t.fill, Fill::Max);
    let byte = |rng: &mut Rng| if max { 0xFF } else { rng.u8() };
    let a: Vec<u8> = (0..t.rows * lda).map(|_| byte(rng)).collect();
    let b: Vec<u8> = (0..t.panels * panel_stride).map(|_| byte(rng)).collect();
    // Shared codes are the per-channel case, where every code is 1.
    let code = |rng: &mut Rng| if t.shared_codes && max { 1 } else { byte(rng) };
    let cd: Vec<u8> = (0..t.panels * code_stride).map(|_| code(rng)).collect();
    let cm: Vec<u8> = (0..t.panels * code_stride).map(|_| code(rng)).collect();
    // The sums of a group of activations (the driver's), any values up to 255·G for the kernel.
    let gk = 8 * t.group_blocks;
    let asum: Vec<i32> = (0..t.rows * lds)
        .map(|i| {
            let (r, g) = (i / lds, i % lds);
            if g < t.groups {
                a[r * lda + g * gk..r * lda + (g + 1) * gk]
                    .iter()
                    .map(|&v| v as i32)
                    .sum()
            } else {
                0
            }
        })
        .collect();
    const SENTINEL: i32 = 0x5A5A_5A5A;
    let (mut c1, mut c2) = (vec![SENTINEL; t.rows * ldc], vec![SENTINEL; t.rows * ldc]);
    let code_step = if t.shared_codes { 0 } else { PANEL };
    kern.run(&mut Int4Tile {
        rows: t.rows,
        panels: t.panels,
        groups: t.groups,
        group_blocks: t.group_blocks,
        a: &a,
        lda,
        asum: &asum,
        lds,
        b: &b,
        panel_stride,
        cd: &cd,
        cm: &cm,
        code_stride,
        code_step,
        c1: &mut c1,
        c2: &mut c2,
        ldc,
    });
    // The definition: level of column c at k = 8h + j (+4) in the low (high) nibble of byte
    // 4c + j of block h.
    let level = |p: usize, c: usize, kk: usize| -> i64 {
        let byte = b[p * panel_stride + (kk / 8) * BLOCK_BYTES + 4 * c + kk % 4];
        (if kk % 8 >= 4 { byte >> 4 } else { byte & 0x0F }) as i64
    };
    for r in 0..t.rows {
        for j in 0..ldc {
            let (g1, g2) = (c1[r * ldc + j], c2[r * ldc + j]);
            if j >= t.panels * PANEL {
                assert_eq!(
                    (g1, g2),
                    (SENTINEL, SENTINEL),
                    "{}: wrote outside",
                    kern.name
                );
                continue;
            }
            let (p, c) = (j / PANEL, j % PANEL);
            let (mut w1, mut w2) = (0i64, 0i64);
            for g in 0..t.groups {
                let at = p * code_stride + g * code_step + c;
                let s: i64 = (g * gk..(g + 1) * gk)
                    .map(|kk| a[r * lda + kk] as i64 * level(p, c, kk))
                    .sum();
                w1 += cd[at] as i64 * s;
                w2 += cm[at] as i64 * asum[r * lds + g] as i64;
            }
            assert_eq!(
                (g1 as i64, g2 as i64),
                (w1, w2),
                "{} ({isa:?}) {}x{} groups {}x{} shared {} {:?}: c[{r}][{j}]",
                kern.name,
                t.rows,
                t.panels,
                t.groups,
                t.group_blocks,
                t.shared_codes,
                t.fill
            );
        }
    }
}

#[test]
fn int4_microkernels_every_tile_shape() {
    let mut rng = Rng::new(11);
    let small = scale() == Scale::Small || quick();
    for (isa, kern) in paths()
        .into_iter()
        .flat_map(|isa| int4_kernels(isa).into_iter().map(move |k| (isa, k)))
    {
        println!(
            "{isa:?}: 4-bit kernel {} ({}x{})",
            kern.name,
            kern.mr,
            kern.np * PANEL
        );
        assert!(kern.mr >= 1 && kern.mr <= 8 && kern.np >= 1 && kern.np <= 4);
        for rows in 1..=kern.mr {
            for panels in 1..=kern.np {
                let shapes: &[(usize, usize)] = if small {
                    &[(1, 1), (3, 4), (2, 16)]
                } else {
                    &[(1, 1), (1, 5), (2, 4), (3, 8), (5, 16), (1, 33)]
                };
                for &(groups, group_blocks) in shapes {
                    for shared_codes in [false, true] {
                        let case = TileCase {
                            rows,
                            panels,
                            groups,
                            group_blocks,
                            shared_codes,
                            fill: Fill::Random,
                        };
                        check_tile(isa, kern, &mut rng, &case);
                    }
                }
            }
        }
    }
}

/// The longest chunks the driver hands a kernel, at the largest values: group-wise, `Σ cd·P`
/// reaches `255·3825·2048 = 1,997,568,000`; per channel `3825·2^19 = 2,005,401,600`. Neither
/// may wrap.
#[test]
fn int4_microkernels_longest_chunks_at_the_largest_values() {
    let mut rng = Rng::new(12);
    let small = scale() == Scale::Small || quick();
    for (isa, kern) in paths()
        .into_iter()
        .flat_map(|isa| int4_kernels(isa).into_iter().map(move |k| (isa, k)))
    {
        for g in [32, 64, 128] {
            let case = TileCase {
                rows: kern.mr,
                panels: kern.np,
                groups: GROUP_CHUNK / g,
                group_blocks: g / 8,
                shared_codes: false,
                fill: Fill::Max,
            };
            check_tile(isa, kern, &mut rng, &case);
        }
        let (rows, panels) = if small { (1, 1) } else { (kern.mr, kern.np) };
        let case = TileCase {
            rows,
            panels,
            groups: 1,
            group_blocks: CHANNEL_CHUNK / 8,
            shared_codes: true,
            fill: Fill::Max,
        };
        check_tile(isa, kern, &mut rng, &case);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) `linear` through the driver.
// ---------------------------------------------------------------------------------------------

/// A weight from random parts: levels, row factors and codes (the quantizer is tested on its
/// own; here any weight the format can hold must compute exactly). `max`: every level 15 and
/// every code 255.
fn random_weight(
    rng: &mut Rng,
    n: usize,
    k: usize,
    group: Option<usize>,
    symmetric: bool,
    max: bool,
) -> Int4Weight {
    let groups = match group {
        Some(g) => k / g,
        None => 1,
    };
    let levels: Vec<u8> = (0..n * k)
        .map(|_| if max { 15 } else { rng.u8() & 15 })
        .collect();
    let fd: Vec<f32> = (0..n).map(|_| 1e-4 * (1.0 + rng.unit().abs())).collect();
    let fm: Vec<f32> = if symmetric {
        fd.iter().map(|d| -8.0 * d).collect()
    } else {
        (0..n).map(|_| -1e-3 * rng.unit().abs()).collect()
    };
    let code = |rng: &mut Rng| match (group, max) {
        (None, _) => 1,
        (_, true) => 255,
        _ => rng.u8(),
    };
    let cd: Vec<u8> = (0..n * groups).map(|_| code(rng)).collect();
    let cm: Vec<u8> = if symmetric {
        cd.clone()
    } else {
        (0..n * groups).map(|_| code(rng)).collect()
    };
    Int4Weight::from_parts(n, k, group, symmetric, &levels, fd, fm, cd, cm).unwrap()
}

/// `linear` on every path, bit for bit the oracle on the same quantized activations.
fn check_linear(rng: &mut Rng, m: usize, w: Int4Weight, x_max: bool, gran: Granularity) {
    let (n, k) = w.shape();
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            if x_max {
                (i % 2) as f32 * 8.0 - 4.0
            } else {
                rng.unit() * 3.0
            }
        })
        .collect();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.125 - 1.0).collect();
    let pw = PackedWeight::from_int4(w.clone());
    for isa in paths() {
        let how = Quantization::dynamic(gran);
        let (qa, sx, zx) =
            ops::quantize_activations(isa, Matrix::new(&x, m, k).unwrap(), how).unwrap();
        let a: Vec<u8> = (0..m).flat_map(|i| qa.row(i).to_vec()).collect();
        let want = linear_ref(&a, &zx, &sx, m, &w, Some(&bias));
        let mut out = vec![f32::NAN; m * n];
        ops::linear(
            isa,
            Matrix::new(&x, m, k).unwrap(),
            &pw,
            Some(&bias),
            how,
            &mut out,
        )
        .unwrap();
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{isa:?} linear {m}x{n}x{k} group {:?} symmetric {}: out[{}][{}] = {g} != {w}",
                pw.group_size(),
                pw.symmetric(),
                i / n,
                i % n
            );
        }
    }
}

#[test]
fn int4_linear_shape_grid() {
    let mut rng = Rng::new(13);
    let small = scale() == Scale::Small || quick();
    let ms: &[usize] = if small {
        &[1, 3, 9]
    } else {
        &[1, 2, 3, 4, 5, 8, 9, 17]
    };
    let ns: &[usize] = if small {
        &[1, 17, 33]
    } else {
        &[1, 15, 16, 17, 33, 48, 65]
    };
    for &m in ms {
        for &n in ns {
            for (k, group) in [
                (32, Some(32)),
                (96, Some(32)),
                (128, Some(64)),
                (384, Some(128)),
                (1, None),
                (7, None),
                (8, None),
                (13, None),
                (100, None),
            ] {
                for symmetric in [false, true] {
                    let w = random_weight(&mut rng, n, k, group, symmetric, false);
                    check_linear(&mut rng, m, w, false, Granularity::Row);
                }
            }
        }
    }
    // Per-tensor activations, and a weight from the quantizer itself.
    let wf: Vec<f32> = (0..33 * 256).map(|_| rng.unit()).collect();
    for group in [Some(32), Some(128), None] {
        let w = Int4Weight::from_float(&wf, 33, 256, group, false, Method::Search, None).unwrap();
        check_linear(&mut rng, 5, w, false, Granularity::Tensor);
    }
}

/// K at and beyond the chunk limits, at the largest values the format holds.
#[test]
fn int4_linear_chunk_limits() {
    let mut rng = Rng::new(14);
    let small = scale() == Scale::Small || quick();
    for g in [32, 64, 128] {
        for k in [GROUP_CHUNK, GROUP_CHUNK + g, 2 * GROUP_CHUNK + g] {
            // One chunk (K = GROUP_CHUNK) takes the driver's i32 epilogue, more the i64 one.
            for (max, symmetric) in [(true, false), (true, true), (false, false)] {
                let w = random_weight(&mut rng, 17, k, Some(g), symmetric, max);
                check_linear(&mut rng, 3, w, max, Granularity::Row);
            }
            if small {
                break;
            }
        }
    }
    let ks: &[usize] = if small {
        &[CHANNEL_CHUNK + 13]
    } else {
        &[CHANNEL_CHUNK, CHANNEL_CHUNK + 13]
    };
    for &k in ks {
        for symmetric in [false, true] {
            let w = random_weight(&mut rng, 3, k, None, symmetric, true);
            check_linear(&mut rng, 2, w, true, Granularity::Row);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Properties.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]
    #[test]
    fn int4_linear_random(
        m in 1usize..12,
        n in 1usize..70,
        groups in 1usize..6,
        gi in 0usize..4,
        pk in 0usize..40,
        symmetric in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let (k, group) = match gi {
            3 => (pk, None),
            _ => {
                let g = [32, 64, 128][gi];
                (g * groups, Some(g))
            }
        };
        let w = random_weight(&mut rng, n, k, group, symmetric, false);
        check_linear(&mut rng, m, w, false, Granularity::Row);
    }
}
