//! Every detected ISA path against the scalar oracle, bit for bit.
//!
//! * (a) the GEMM microkernel of each path on tiles of every `rows x panels` shape, with padded
//!   strides, K remainders and the longest chunk (`K_CHUNK`) at extreme values;
//! * (b) the whole GEMM through `ops::linear` and `ops::matmul_integer` over a grid of shapes,
//!   long reductions (`K = 5000`) and the i64 chunk path (`K > 65536`);
//! * (c) min/max and quantization kernels on awkward values and every tail length;
//! * (d) property tests of random shapes and values through the GEMM on every path.
//!
//! Paths are passed explicitly (never through the process-global cap), so the tests may run in
//! parallel. `DYNAQ_MAX_ISA` limits the paths tested; `DYNAQ_TEST_SCALE=small` shrinks the heavy
//! tests for slow runs (valgrind) and `DYNAQ_TEST_SCALE=long` runs many more random cases (see
//! `tests/common/mod.rs`).

mod common;

use common::{cases, paths, quick, scale, Rng, Scale};
use dynaq_core::dispatch::{gemm_kernel, gemm_kernels, quant_kernels};
use dynaq_core::gemm::K_CHUNK;
use dynaq_core::kernel::GemmKernel;
use dynaq_core::kernel::{AData, AFormat, Tile};
use dynaq_core::ops::{self, Int8Data, MatmulOperand, MatmulShape};
use dynaq_core::pack::{PackedB, GROUP_BYTES, PANEL};
use dynaq_core::quant::{Granularity, Matrix, Quantization};
use dynaq_core::reference;
use dynaq_core::{Error, Isa, PackedWeight};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// How operand values are filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// A at 255, B at -128 (or -127 for weights): the largest products.
    Extreme,
    Zero,
    /// Alternating extremes: 255/0 against 127/-128.
    Alternating,
}

fn fill_u8(rng: &mut Rng, len: usize, fill: Fill) -> Vec<u8> {
    (0..len)
        .map(|i| match fill {
            Fill::Random => rng.u8(),
            Fill::Extreme => 255,
            Fill::Zero => 0,
            Fill::Alternating => {
                if i % 2 == 0 {
                    255
                } else {
                    0
                }
            }
        })
        .collect()
}

/// Signed values; `min` is -128 for general int8 and -127 for symmetric weights.
fn fill_i8(rng: &mut Rng, len: usize, fill: Fill, min: i8) -> Vec<i8> {
    (0..len)
        .map(|i| match fill {
            Fill::Random => rng.i8().max(min),
            Fill::Extreme => min,
            Fill::Zero => 0,
            Fill::Alternating => {
                if i % 3 == 0 {
                    127
                } else {
                    min
                }
            }
        })
        .collect()
}

const ALL_FILLS: [Fill; 4] = [Fill::Random, Fill::Extreme, Fill::Zero, Fill::Alternating];

/// The shapes every dimension takes in the grid tests.
const DIMS: [usize; 18] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
];

/// The `(m, n, k)` triples of the grid tests: all of `DIMS`^3, or at `DYNAQ_TEST_SCALE=small`
/// every value of `DIMS` in each position against a few partners (216 triples instead of 5832).
fn shape_grid() -> Vec<(usize, usize, usize)> {
    if scale() != Scale::Small {
        return DIMS
            .iter()
            .flat_map(|&m| {
                DIMS.iter()
                    .flat_map(move |&n| DIMS.iter().map(move |&k| (m, n, k)))
            })
            .collect();
    }
    let mut v = Vec::new();
    for d in DIMS {
        for (a, b) in [(1, 1), (7, 17), (17, 64), (65, 3)] {
            v.extend([(d, a, b), (a, d, b), (a, b, d)]);
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// (a) Microkernels.
// ---------------------------------------------------------------------------------------------

/// Runs one of `isa`'s microkernels on one `rows x panels` tile of `k4` groups and checks it
/// against the oracle, including that nothing outside the tile's part of C is written.
fn check_tile(
    isa: Isa,
    kern: &GemmKernel,
    rng: &mut Rng,
    rows: usize,
    panels: usize,
    k4: usize,
    fill: Fill,
) {
    let k = 4 * k4;
    // Padded strides: A rows and B panels longer than the tile's K, C rows wider than the tile.
    let lda = k + 4 * (rng.below(3) as usize);
    let k_packed = k + 4 * (rng.below(2) as usize);
    let ldc = panels * PANEL + 16 * (rng.below(2) as usize);
    let a_full = fill_u8(rng, rows * lda, fill);
    let n = panels * PANEL;
    let b_nk = fill_i8(rng, n * k_packed, fill, -128);
    let packed = PackedB::from_nk(&b_nk, n, k_packed).unwrap();
    let a16: Vec<i16> = a_full.iter().map(|&v| v as i16).collect();
    const SENTINEL: i32 = 0x5A5A_5A5A;
    let mut c = vec![SENTINEL; rows * ldc];

    let mut tile = Tile {
        rows,
        panels,
        k4,
        a: match kern.a_format {
            AFormat::U8 => AData::U8(&a_full),
            AFormat::I16 => AData::I16(&a16),
        },
        lda,
        b: packed.data(),
        panel_stride: packed.panel_stride(),
        c: &mut c,
        ldc,
    };
    kern.run(&mut tile);

    // The oracle over the first `k` values of each row of A and of each column of B.
    let a_tight: Vec<u8> = (0..rows)
        .flat_map(|r| a_full[r * lda..r * lda + k].to_vec())
        .collect();
    let b_tight: Vec<i8> = (0..n)
        .flat_map(|j| b_nk[j * k_packed..j * k_packed + k].to_vec())
        .collect();
    let want = reference::gemm_u8s8(&a_tight, &b_tight, rows, n, k);
    for r in 0..rows {
        for j in 0..ldc {
            let got = c[r * ldc + j];
            if j < n {
                assert_eq!(
                    got as i64,
                    want[r * n + j],
                    "{} ({isa:?}) tile {rows}x{panels}, k4 = {k4}, {fill:?}: c[{r}][{j}]",
                    kern.name
                );
            } else {
                assert_eq!(got, SENTINEL, "{}: wrote outside the tile", kern.name);
            }
        }
    }
}

#[test]
fn microkernels_every_tile_shape() {
    let mut rng = Rng::new(1);
    let small = scale() == Scale::Small;
    for isa in paths() {
        assert_eq!(
            gemm_kernel(isa).isa,
            isa,
            "a detected path gets its own kernel"
        );
    }
    for (isa, kern) in paths()
        .into_iter()
        .flat_map(|isa| gemm_kernels(isa).into_iter().map(move |k| (isa, k)))
    {
        assert_eq!(kern.isa, isa);
        assert!(kern.mr >= 1 && kern.np >= 1 && kern.np * PANEL <= 64 && kern.mr <= 8);
        println!(
            "{isa:?}: kernel {} ({}x{}, {:?})",
            kern.name,
            kern.mr,
            kern.nr(),
            kern.a_format
        );
        for rows in 1..=kern.mr {
            for panels in 1..=kern.np {
                let k4s: &[usize] = if small {
                    &[0, 1, 2, 3, 5, 16, 33]
                } else {
                    &[0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 33]
                };
                for &k4 in k4s {
                    check_tile(isa, kern, &mut rng, rows, panels, k4, Fill::Random);
                }
                let fills: &[Fill] = if small {
                    &[Fill::Extreme]
                } else {
                    &[Fill::Extreme, Fill::Zero, Fill::Alternating]
                };
                for &fill in fills {
                    check_tile(isa, kern, &mut rng, rows, panels, 13, fill);
                }
            }
        }
    }
}

/// The longest chunk the driver hands a kernel, at the largest products: the i32 accumulators
/// reach `65536 * 255 * -128 = -2,139,095,040` and must not wrap or saturate.
#[test]
fn microkernels_longest_chunk_extremes() {
    let mut rng = Rng::new(2);
    let small = scale() == Scale::Small;
    for (isa, kern) in paths()
        .into_iter()
        .flat_map(|isa| gemm_kernels(isa).into_iter().map(move |k| (isa, k)))
    {
        for (rows, panels) in [(kern.mr, kern.np), (1, 1)] {
            for fill in [Fill::Extreme, Fill::Alternating] {
                // Small: the full tile at the largest products only.
                if small && !(rows == kern.mr && matches!(fill, Fill::Extreme)) {
                    continue;
                }
                check_tile(isa, kern, &mut rng, rows, panels, K_CHUNK / 4, fill);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Whole GEMMs through the operations.
// ---------------------------------------------------------------------------------------------

/// `linear` on every path against the float result built from the oracle integers.
fn check_linear(m: usize, n: usize, k: usize, x: &[f32], wq: &[i8], gran: Granularity) {
    let scales: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 0.0007).collect();
    let w = PackedWeight::from_quantized(wq, &scales, n, k, true).unwrap();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
    let colsum: Vec<i32> = (0..n)
        .map(|j| wq[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
        .collect();
    assert_eq!(w.int8().unwrap().packed().colsums(), &colsum[..]);
    let mut first_q: Option<Vec<u8>> = None;
    for isa in paths() {
        let (qa, sx, zx) = ops::quantize_activations(
            isa,
            Matrix::new(x, m, k).unwrap(),
            Quantization::dynamic(gran),
        )
        .unwrap();
        let xq: Vec<u8> = (0..m).flat_map(|i| qa.row(i).to_vec()).collect();
        // Every path quantizes the activations identically.
        match &first_q {
            None => first_q = Some(xq.clone()),
            Some(q) => assert_eq!(q, &xq, "{isa:?}: quantized activations differ"),
        }
        let acc = reference::gemm_u8s8(&xq, wq, m, n, k);
        let mut out = vec![f32::NAN; m * n];
        ops::linear(
            isa,
            Matrix::new(x, m, w.k()).unwrap(),
            &w,
            Some(&bias),
            Quantization::dynamic(gran),
            &mut out,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n {
                let want = reference::linear_epilogue_one(
                    acc[i * n + j],
                    zx[i],
                    colsum[j],
                    sx[i],
                    scales[j],
                    bias[j],
                );
                assert_eq!(
                    out[i * n + j].to_bits(),
                    want.to_bits(),
                    "{isa:?} linear {m}x{n}x{k} {gran:?}: out[{i}][{j}] = {} != {want}",
                    out[i * n + j]
                );
            }
        }
    }
}

/// The naive `MatMulInteger`: `sum_k (a - za[i]) (b - zb[j])` in i64.
fn naive_matmul(
    a: &[i64],
    b: &[i64],
    m: usize,
    k: usize,
    n: usize,
    za: &[i32],
    zb: &[i32],
) -> Vec<i64> {
    let zai = |i: usize| if za.len() == 1 { za[0] } else { za[i] } as i64;
    let zbj = |j: usize| if zb.len() == 1 { zb[0] } else { zb[j] } as i64;
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| (a[i * k + p] - zai(i)) * (b[p * n + j] - zbj(j)))
                .sum();
        }
    }
    c
}

/// Integer operands of one `matmul_integer` case, in either signedness.
enum Operand {
    U8(Vec<u8>),
    I8(Vec<i8>),
}

impl Operand {
    fn data(&self) -> Int8Data<'_> {
        match self {
            Operand::U8(v) => Int8Data::U8(v),
            Operand::I8(v) => Int8Data::I8(v),
        }
    }
    fn wide(&self) -> Vec<i64> {
        match self {
            Operand::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Operand::I8(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }
}

/// `matmul_integer` (batch 1) on every path against [`naive_matmul`]; an out-of-range result
/// must be reported as [`Error::Overflow`].
fn check_matmul(m: usize, k: usize, n: usize, a: &Operand, b: &Operand, za: &[i32], zb: &[i32]) {
    let want = naive_matmul(&a.wide(), &b.wide(), m, k, n, za, zb);
    let fits = want.iter().all(|&v| i32::try_from(v).is_ok());
    let shape = MatmulShape { batch: 1, m, k, n };
    for isa in paths() {
        let mut out = vec![i32::MIN; m * n];
        let r = ops::matmul_integer(
            isa,
            shape,
            MatmulOperand {
                data: a.data(),
                index: &[0],
                zero_point: za,
            },
            MatmulOperand {
                data: b.data(),
                index: &[0],
                zero_point: zb,
            },
            &mut out,
        );
        if fits {
            r.unwrap();
            for (idx, (&g, &w)) in out.iter().zip(&want).enumerate() {
                assert_eq!(
                    g as i64,
                    w,
                    "{isa:?} matmul_integer {m}x{k}x{n}: out[{}][{}]",
                    idx / n,
                    idx % n
                );
            }
        } else {
            assert!(
                matches!(r, Err(Error::Overflow(_))),
                "{isa:?} matmul_integer {m}x{k}x{n}: expected an overflow error, got {r:?}"
            );
        }
    }
}

/// Activations whose quantization exercises the whole u8 range.
fn activations(rng: &mut Rng, len: usize, fill: Fill) -> Vec<f32> {
    (0..len)
        .map(|i| match fill {
            Fill::Random => rng.unit() * 3.0,
            // All equal and positive: every value quantizes to 255 (zero point 0).
            Fill::Extreme => 1.5,
            Fill::Zero => 0.0,
            Fill::Alternating => {
                if i % 2 == 0 {
                    2.0
                } else {
                    -2.0
                }
            }
        })
        .collect()
}

#[test]
fn linear_shape_grid() {
    let mut rng = Rng::new(3);
    for (m, n, k) in shape_grid() {
        let fill = ALL_FILLS[(m + 3 * n + 7 * k) % 4];
        let x = activations(&mut rng, m * k, fill);
        let wq = fill_i8(&mut rng, n * k, fill, -127);
        let gran = if (m + n + k) % 2 == 0 {
            Granularity::Row
        } else {
            Granularity::Tensor
        };
        check_linear(m, n, k, &x, &wq, gran);
    }
}

#[test]
fn matmul_integer_shape_grid() {
    let mut rng = Rng::new(4);
    for (m, n, k) in shape_grid() {
        let sel = m + 3 * n + 7 * k;
        let fill = ALL_FILLS[sel % 4];
        let a = if sel % 3 == 0 {
            Operand::I8(fill_i8(&mut rng, m * k, fill, -128))
        } else {
            Operand::U8(fill_u8(&mut rng, m * k, fill))
        };
        let b = if sel % 5 < 2 {
            Operand::U8(fill_u8(&mut rng, k * n, fill))
        } else {
            Operand::I8(fill_i8(&mut rng, k * n, fill, -128))
        };
        let (za, zb): (Vec<i32>, Vec<i32>) = match sel % 4 {
            0 => (vec![0], vec![0]),
            1 => (vec![rng.u8() as i32], vec![rng.i8() as i32]),
            2 => (
                (0..m).map(|_| rng.u8() as i32).collect(),
                (0..n).map(|_| rng.i8() as i32).collect(),
            ),
            _ => (vec![-7], (0..n).map(|_| rng.u8() as i32).collect()),
        };
        check_matmul(m, k, n, &a, &b, &za, &zb);
    }
}

#[test]
fn long_reductions() {
    let mut rng = Rng::new(5);
    let (shapes, fills): (&[(usize, usize, usize)], &[Fill]) = if scale() == Scale::Small {
        (&[(3, 17, 4999)], &[Fill::Random, Fill::Extreme])
    } else {
        (&[(1, 17, 5000), (9, 65, 5000), (3, 48, 4999)], &ALL_FILLS)
    };
    for &(m, n, k) in shapes {
        for &fill in fills {
            let x = activations(&mut rng, m * k, fill);
            let wq = fill_i8(&mut rng, n * k, fill, -127);
            check_linear(m, n, k, &x, &wq, Granularity::Row);
            let a = Operand::U8(fill_u8(&mut rng, m * k, fill));
            let b = Operand::I8(fill_i8(&mut rng, k * n, fill, -128));
            check_matmul(m, k, n, &a, &b, &[3], &[0]);
        }
    }
}

/// Reductions longer than one i32 chunk: the driver adds the chunks in i64.
#[test]
fn chunked_reductions_beyond_k_chunk() {
    let mut rng = Rng::new(6);
    let k = 70_000;
    assert!(k > K_CHUNK);
    // Kept at every scale (the one large K of a small run), on fewer shapes.
    let shapes: &[(usize, usize)] = if scale() == Scale::Small {
        &[(2, 3)]
    } else {
        &[(2, 3), (9, 33)]
    };
    for &(m, n) in shapes {
        // 255 x -127 per product: the sum (-2.27e9) does not fit in i32.
        let x = activations(&mut rng, m * k, Fill::Extreme);
        let wq = fill_i8(&mut rng, n * k, Fill::Extreme, -127);
        check_linear(m, n, k, &x, &wq, Granularity::Row);
        let x = activations(&mut rng, m * k, Fill::Random);
        let wq = fill_i8(&mut rng, n * k, Fill::Random, -127);
        check_linear(m, n, k, &x, &wq, Granularity::Tensor);

        // MatMulInteger: the canonical accumulator overflows i32 (255 * -128 * 70000), but
        // the zero point brings the result back into range: (255 - 128) * -128 * 70000.
        let a = Operand::U8(vec![255; m * k]);
        let b = Operand::I8(vec![-128; k * n]);
        check_matmul(m, k, n, &a, &b, &[128], &[0]);
        // Without it the result is out of range and must be reported, not wrapped.
        check_matmul(m, k, n, &a, &b, &[0], &[0]);
        // Signed A, unsigned B.
        let a = Operand::I8(fill_i8(&mut rng, m * k, Fill::Random, -128));
        let b = Operand::U8(fill_u8(&mut rng, k * n, Fill::Random));
        check_matmul(m, k, n, &a, &b, &[-3], &[200]);
    }
}

/// A batched call with broadcast operands and per-row / per-column zero points.
#[test]
fn batched_matmul_integer() {
    let mut rng = Rng::new(7);
    let (m, k, n) = (5, 37, 19);
    let a: Vec<u8> = fill_u8(&mut rng, 2 * m * k, Fill::Random);
    let b: Vec<i8> = fill_i8(&mut rng, k * n, Fill::Random, -128);
    let (a_index, b_index) = ([1usize, 0, 1], [0usize, 0, 0]);
    let za: Vec<i32> = (0..3 * m).map(|_| rng.u8() as i32).collect();
    let zb: Vec<i32> = (0..3 * n).map(|_| rng.i8() as i32).collect();
    let shape = MatmulShape { batch: 3, m, k, n };
    let aw: Vec<i64> = a.iter().map(|&v| v as i64).collect();
    let bw: Vec<i64> = b.iter().map(|&v| v as i64).collect();
    for isa in paths() {
        let mut out = vec![0i32; 3 * m * n];
        ops::matmul_integer(
            isa,
            shape,
            MatmulOperand {
                data: Int8Data::U8(&a),
                index: &a_index,
                zero_point: &za,
            },
            MatmulOperand {
                data: Int8Data::I8(&b),
                index: &b_index,
                zero_point: &zb,
            },
            &mut out,
        )
        .unwrap();
        for t in 0..3 {
            let ai = a_index[t];
            let want = naive_matmul(
                &aw[ai * m * k..(ai + 1) * m * k],
                &bw,
                m,
                k,
                n,
                &za[t * m..(t + 1) * m],
                &zb[t * n..(t + 1) * n],
            );
            let got: Vec<i64> = out[t * m * n..(t + 1) * m * n]
                .iter()
                .map(|&v| v as i64)
                .collect();
            assert_eq!(got, want, "{isa:?} batch {t}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Quantization kernels.
// ---------------------------------------------------------------------------------------------

/// Awkward floats: zeros of both signs, subnormals, extremes, non-finite values.
const SPECIAL: [f32; 16] = [
    0.0,
    -0.0,
    1e-45,
    -1e-45,
    1.1754942e-38,
    -3e-39,
    1e38,
    -1e38,
    f32::MAX,
    f32::MIN,
    0.5,
    -0.5,
    2.5,
    -2.5,
    1.0,
    -1.0,
];

/// Values of `len` elements in one of several styles (`style` picks).
fn quant_input(rng: &mut Rng, len: usize, style: usize) -> Vec<f32> {
    (0..len)
        .map(|i| match style {
            0 => rng.unit() * 10.0,
            1 => SPECIAL[rng.below(SPECIAL.len() as u64) as usize],
            // Exact ties for scale 0.5 / 1 / 2: halves of integers.
            2 => (rng.below(600) as f32 - 300.0) * 0.5,
            3 => f32::from_bits(rng.next() as u32), // anything, NaN and infinities included
            4 => {
                if i % 7 == 3 {
                    [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3]
                } else {
                    rng.unit()
                }
            }
            _ => rng.unit() * 1e-40, // subnormal range
        })
        .collect()
}

const SCALES: [f32; 14] = [
    1.0,
    0.5,
    2.0,
    0.25,
    1.0 / 255.0,
    0.0117647,
    1e-30,
    1e30,
    3e38,
    1e-45,
    0.0,
    -0.75,
    f32::INFINITY,
    f32::NAN,
];

fn check_quant_slice(isa: Isa, x: &[f32], what: &str) {
    let q = quant_kernels(isa);
    let got = q.minmax(x);
    let want = reference::minmax(x);
    // `==` treats -0 and +0 as equal: the sign of a zero extreme may differ between paths.
    assert!(
        got.min == want.min && got.max == want.max && got.nonfinite == want.nonfinite,
        "{isa:?} {} on {what} (len {}): {got:?} != {want:?}",
        q.name_minmax,
        x.len()
    );
    for &s in &SCALES {
        for zp in [0u8, 1, 127, 128, 200, 255] {
            let mut got = vec![0xAAu8; x.len()];
            let mut want = vec![0x55u8; x.len()];
            q.quantize_u8(x, s, zp, &mut got);
            reference::quantize_u8(x, s, zp, &mut want);
            assert_eq!(
                got,
                want,
                "{isa:?} {} u8 on {what} (len {}, scale {s:e}, zp {zp})",
                q.name_quantize,
                x.len()
            );
        }
        let mut got = vec![0x2Ai8; x.len()];
        let mut want = vec![-0x2Ai8; x.len()];
        q.quantize_i8(x, s, &mut got);
        reference::quantize_i8(x, s, &mut want);
        assert_eq!(
            got,
            want,
            "{isa:?} {} i8 on {what} (len {}, scale {s:e})",
            q.name_quantize,
            x.len()
        );
    }
}

#[test]
fn quantization_kernels_every_tail_length() {
    let mut rng = Rng::new(8);
    for isa in paths() {
        let long: &[usize] = if scale() == Scale::Small {
            &[127, 128, 129, 1000]
        } else {
            &[127, 128, 129, 1000, 4099]
        };
        for len in (0..=70).chain(long.iter().copied()) {
            for style in 0..6 {
                let x = quant_input(&mut rng, len, style);
                check_quant_slice(isa, &x, &format!("style {style}"));
            }
        }
    }
}

/// Sub-slices at every alignment, so vector loads start at odd addresses and the masked or
/// scalar tails stop just before the end of the allocation.
#[test]
fn quantization_kernels_unaligned_subslices() {
    let mut rng = Rng::new(9);
    let x = quant_input(&mut rng, 200, 1);
    for isa in paths() {
        for start in 0..17 {
            for end in [start, start + 1, start + 31, start + 33, 200] {
                check_quant_slice(isa, &x[start..end], &format!("x[{start}..{end}]"));
            }
        }
    }
}

#[test]
fn minmax_extremes_and_zeros() {
    for isa in paths() {
        let q = quant_kernels(isa);
        for len in [2usize, 15, 16, 17, 33, 64, 100] {
            for pos in [0, len / 2, len - 1] {
                let mut x = vec![0.25f32; len];
                x[pos] = -7.0;
                let r = q.minmax(&x);
                assert_eq!((r.min, r.max, r.nonfinite), (-7.0, 0.25, false), "{isa:?}");
                x[pos] = f32::NAN;
                let r = q.minmax(&x);
                assert!(r.nonfinite, "{isa:?}: NaN at {pos} of {len} not flagged");
                assert_eq!((r.min, r.max), (0.25, 0.25), "{isa:?}: NaN took part");
                x[pos] = f32::NEG_INFINITY;
                let r = q.minmax(&x);
                assert!(r.nonfinite && r.min == f32::NEG_INFINITY, "{isa:?}");
                // Largest finite magnitudes are finite.
                x[pos] = f32::MIN;
                let r = q.minmax(&x);
                assert!(!r.nonfinite && r.min == f32::MIN, "{isa:?}");
            }
        }
        let r = q.minmax(&[]);
        assert_eq!(r, reference::MinMax::EMPTY, "{isa:?} empty");
        let r = q.minmax(&[-0.0; 37]);
        assert!(r.min == 0.0 && r.max == 0.0 && !r.nonfinite, "{isa:?}");
    }
}

/// Scales of the reciprocal fast path (`2^-100 <= |scale| <= 2^100`, see the x86-64 README) and
/// just outside it, where the kernels must switch to the division for the whole call.
fn tie_scales() -> Vec<f32> {
    let lo = f32::from_bits(27 << 23); // 2^-100
    let hi = f32::from_bits(227 << 23); // 2^100
    vec![
        1.0,
        0.04,
        1.0 / 255.0,
        0.0117647,
        5.0 / 255.0,
        3.3e-3,
        7.7,
        -0.75,
        1e-30,
        1e30,
        lo,
        hi,
        -lo,
        lo.next_down(),
        hi.next_up(),
        0.1f32.next_up(),
        (1.0f32 / 3.0).next_down(),
    ]
}

/// Quotients within a few rounding errors of a half-integer, on both sides of the kernels' tie
/// threshold (`2^-13` around each tie, flagged below `2^-12` of fraction), across the whole
/// clamp range and past it. Each candidate sits alone in a 64-lane block of zeros (zeros are
/// far from ties), in slices of 4 blocks, so that blocks with a flagged lane (recomputed by
/// division) do not hide the others and the kernels never give up on the call.
fn tie_candidates(scale: f32, lo: i32, hi: i32) -> Vec<f32> {
    const OFFSETS: [f64; 15] = [
        0.0, 1e-7, 1e-6, 1e-5, 3e-5, 6e-5, 1e-4, 1.2e-4, 1.25e-4, 1.3e-4, 2e-4, 2.44e-4, 2.5e-4,
        3e-4, 1e-3,
    ];
    let mut v = Vec::new();
    for h2 in 2 * lo - 3..=2 * hi + 3 {
        let h = h2 as f64 / 2.0;
        for off in OFFSETS {
            for sign in [-1.0, 1.0] {
                let q = h + sign * off;
                let x = (q * scale as f64) as f32;
                v.push(x);
                // Neighbouring floats, whose quotients round differently.
                v.push(x.next_up());
                v.push(x.next_down());
            }
        }
    }
    v
}

/// Every kernel path on the tie candidates of [`tie_candidates`], against the reference.
#[test]
fn quantization_near_ties() {
    // Under QEMU (`DYNAQ_TEST_QUICK=1`, set by `scripts/test-aarch64.sh`) the whole sweep took
    // minutes: it runs the small set there, and every 4th group of candidates (a different
    // phase per scale).
    let small = scale() == Scale::Small || quick();
    let stride = if quick() { 4 } else { 1 };
    let mut scales = tie_scales();
    if small {
        // The ordinary scales, both ends of the fast path and just outside it.
        scales = [0, 2, 7, 10, 11, 13, 14]
            .iter()
            .map(|&i| scales[i])
            .collect();
    }
    for isa in paths() {
        let q = quant_kernels(isa);
        for (si, &scale) in scales.iter().enumerate() {
            let phase = si % stride;
            let zps: &[u8] = if small {
                &[0, 128, 255]
            } else {
                &[0, 1, 127, 128, 254, 255]
            };
            for &zp in zps {
                let cands = tie_candidates(scale, -(zp as i32), 255 - zp as i32);
                let mut x = vec![0f32; 256];
                let (mut got, mut want) = (vec![0u8; 256], vec![0u8; 256]);
                for (c, chunk) in cands.chunks(4).enumerate().skip(phase).step_by(stride) {
                    x.fill(0.0);
                    for (b, &v) in chunk.iter().enumerate() {
                        x[64 * b + (7 * c + 13 * b) % 64] = v;
                    }
                    q.quantize_u8(&x, scale, zp, &mut got);
                    reference::quantize_u8(&x, scale, zp, &mut want);
                    assert_eq!(
                        got, want,
                        "{isa:?} {} u8 near ties, scale {scale:e}, zp {zp}, candidates {chunk:?}",
                        q.name_quantize
                    );
                }
            }
            let cands = tie_candidates(scale, -127, 127);
            let mut x = vec![0f32; 256];
            let (mut got, mut want) = (vec![0i8; 256], vec![0i8; 256]);
            for (c, chunk) in cands.chunks(4).enumerate().skip(phase).step_by(stride) {
                x.fill(0.0);
                for (b, &v) in chunk.iter().enumerate() {
                    x[64 * b + (7 * c + 13 * b) % 64] = v;
                }
                q.quantize_i8(&x, scale, &mut got);
                reference::quantize_i8(&x, scale, &mut want);
                assert_eq!(
                    got, want,
                    "{isa:?} {} i8 near ties, scale {scale:e}, candidates {chunk:?}",
                    q.name_quantize
                );
            }
        }
    }
}

/// Long slices full of exact ties (the kernels give up on the reciprocal path part way) and
/// slices mixing ties, extremes and non-finite values with ordinary data, at many lengths.
#[test]
fn quantization_tie_heavy_and_mixed() {
    let mut rng = Rng::new(10);
    for isa in paths() {
        let q = quant_kernels(isa);
        let lens: &[usize] = if scale() == Scale::Small {
            &[64, 1000]
        } else {
            &[64, 640, 1000, 4096 + 37]
        };
        for &len in lens {
            // Every quotient an integer or a half-integer for scale 0.5.
            let ties: Vec<f32> = (0..len).map(|i| (i % 1100) as f32 * 0.25 - 140.0).collect();
            let mixed: Vec<f32> = (0..len)
                .map(|i| match rng.below(40) {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => f32::MAX,
                    4 => -f32::MAX,
                    5 => (rng.below(600) as f32 - 300.0) * 0.5 * 0.04,
                    _ => rng.unit() * 5.0 + (i % 3) as f32,
                })
                .collect();
            for (x, scales) in [(&ties, [0.5f32, -0.5]), (&mixed, [0.04, 5.0 / 255.0])] {
                for s in scales {
                    for zp in [0u8, 3, 128, 255] {
                        let (mut got, mut want) = (vec![0u8; len], vec![1u8; len]);
                        q.quantize_u8(x, s, zp, &mut got);
                        reference::quantize_u8(x, s, zp, &mut want);
                        assert_eq!(got, want, "{isa:?} u8 len {len} scale {s} zp {zp}");
                    }
                    let (mut got, mut want) = (vec![0i8; len], vec![1i8; len]);
                    q.quantize_i8(x, s, &mut got);
                    reference::quantize_i8(x, s, &mut want);
                    assert_eq!(got, want, "{isa:?} i8 len {len} scale {s}");
                }
            }
        }
    }
}

/// The integer min/max reductions (the bits of finite floats) on sign patterns that exercise
/// every branch: all negative, all non-negative, mixed, signed zeros, subnormals, extremes, and
/// non-finite values (the kernels then fall back to float comparisons).
#[test]
fn minmax_sign_patterns() {
    let mut rng = Rng::new(11);
    let pools: [&[f32]; 6] = [
        &[-1.0, -0.5, -3e-39, -1e-45, -f32::MAX, -7.0],
        &[0.0, 1e-45, 2.5, f32::MAX, 3e-39, 1.0],
        &[-0.0, 0.0, -1e-45, 1e-45],
        &[-0.0, -1e-45, -2.0],
        &[0.0, -0.0],
        &[
            1.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -f32::NAN,
        ],
    ];
    for isa in paths() {
        let q = quant_kernels(isa);
        for pool in pools {
            for len in (1..=70).chain([127, 200, 1025]) {
                let x: Vec<f32> = (0..len)
                    .map(|_| pool[rng.below(pool.len() as u64) as usize])
                    .collect();
                let (got, want) = (q.minmax(&x), reference::minmax(&x));
                assert!(
                    got.min == want.min && got.max == want.max && got.nonfinite == want.nonfinite,
                    "{isa:?} {} on {x:?}: {got:?} != {want:?}",
                    q.name_minmax
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Property tests.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn prop_matmul_integer_random(
        m in 1usize..20,
        n in 1usize..80,
        k in 1usize..300,
        seed in any::<u64>(),
        a_signed in any::<bool>(),
        b_signed in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let a = if a_signed {
            Operand::I8(fill_i8(&mut rng, m * k, Fill::Random, -128))
        } else {
            Operand::U8(fill_u8(&mut rng, m * k, Fill::Random))
        };
        let b = if b_signed {
            Operand::I8(fill_i8(&mut rng, k * n, Fill::Random, -128))
        } else {
            Operand::U8(fill_u8(&mut rng, k * n, Fill::Random))
        };
        let za: Vec<i32> = (0..m).map(|_| rng.u8() as i32).collect();
        let zb = vec![rng.i8() as i32];
        check_matmul(m, k, n, &a, &b, &za, &zb);
    }

    #[test]
    fn prop_linear_random(
        m in 1usize..20,
        n in 1usize..80,
        k in 1usize..300,
        seed in any::<u64>(),
        per_row in any::<bool>(),
        magnitude in -20i32..20,
    ) {
        let mut rng = Rng::new(seed);
        let mag = 2f32.powi(magnitude);
        let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * mag).collect();
        let wq = fill_i8(&mut rng, n * k, Fill::Random, -127);
        let gran = if per_row { Granularity::Row } else { Granularity::Tensor };
        check_linear(m, n, k, &x, &wq, gran);
    }

    #[test]
    fn prop_microkernel_random(
        rows_sel in any::<usize>(),
        panels_sel in any::<usize>(),
        k4 in 1usize..200,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        for isa in paths() {
            for kern in gemm_kernels(isa) {
                let rows = 1 + rows_sel % kern.mr;
                let panels = 1 + panels_sel % kern.np;
                check_tile(isa, kern, &mut rng, rows, panels, k4, Fill::Random);
            }
        }
    }

    #[test]
    fn prop_quantization_random(
        x in proptest::collection::vec(any::<f32>(), 0..100),
        scale in any::<f32>(),
        zp in any::<u8>(),
    ) {
        for isa in paths() {
            let q = quant_kernels(isa);
            let (got, want) = (q.minmax(&x), reference::minmax(&x));
            prop_assert!(got.min == want.min && got.max == want.max);
            prop_assert_eq!(got.nonfinite, want.nonfinite);
            let (mut g, mut w) = (vec![0u8; x.len()], vec![0u8; x.len()]);
            q.quantize_u8(&x, scale, zp, &mut g);
            reference::quantize_u8(&x, scale, zp, &mut w);
            prop_assert_eq!(&g, &w);
            let (mut g, mut w) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            q.quantize_i8(&x, scale, &mut g);
            reference::quantize_i8(&x, scale, &mut w);
            prop_assert_eq!(&g, &w);
        }
    }
}

/// Packed weights hold every group a kernel reads (sanity of the layout constants the kernels
/// rely on).
#[test]
fn packed_layout_constants() {
    assert_eq!(GROUP_BYTES, 64);
    assert_eq!(PANEL, 16);
    let p = PackedB::from_nk(&[1i8; 17 * 5], 17, 5).unwrap();
    assert_eq!(p.panel_stride(), 2 * GROUP_BYTES);
    assert_eq!(p.data().len(), 2 * p.panel_stride());
}
