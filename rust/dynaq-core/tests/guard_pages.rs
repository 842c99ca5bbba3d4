//! Inputs and outputs placed directly against an inaccessible guard page, on every path.
//!
//! Each buffer lives in its own anonymous mapping between two `PROT_NONE` pages, either flush
//! against the trailing one (its last element is the last accessible byte: any over-read or
//! over-write in a SIMD tail faults) or against the leading one (its first element is the first
//! accessible byte: any under-read faults). Every public entry that takes caller memory runs on
//! such buffers with lengths 0..=67 and ragged shapes, on every detected path, and must give
//! exactly what the scalar path gives on ordinary vectors. 4-bit weights too (their kernels,
//! `linear` and their bytes), at the end.
//!
//! A fault kills the test binary with SIGSEGV, which `cargo test` reports as a failure.

#![cfg(unix)]

mod common;

use common::{paths, scale, Rng, Scale};
use dynaq_core::dispatch::{gemm_kernels, int4_kernel, int4_kernels, quant_kernels};
use dynaq_core::gemm::K_CHUNK;
use dynaq_core::int4::kernel::{Int4Kernel, Int4Tile};
use dynaq_core::int4::quant::Method;
use dynaq_core::int4::weight::BLOCK_BYTES as INT4_BLOCK_BYTES;
use dynaq_core::kernel::{AData, AFormat, Tile};
use dynaq_core::ops::{self, Int8Data, MatmulOperand, MatmulShape};
use dynaq_core::pack::{PackedB, GROUP_BYTES, PANEL};
use dynaq_core::quant::{
    quantize_i8_rows, quantize_u8_rows, Granularity, Matrix, Quantization, Scheme, U8Out,
};
use dynaq_core::reference;
use dynaq_core::{Error, Isa, PackedWeight};
use std::ops::{Deref, DerefMut};

// ---------------------------------------------------------------------------------------------
// Guarded buffers.
// ---------------------------------------------------------------------------------------------

/// Which guard page the data touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The first element follows the leading guard page.
    Head,
    /// The last element precedes the trailing guard page.
    Tail,
}

const PLACES: [Place; 2] = [Place::Head, Place::Tail];

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert!(p > 0, "sysconf(_SC_PAGESIZE) failed");
    p as usize
}

/// A slice of `T` in its own mapping, `PROT_NONE` pages on both sides.
struct Guarded<T: Copy> {
    map: *mut libc::c_void,
    map_len: usize,
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> Guarded<T> {
    fn new(values: &[T], place: Place) -> Guarded<T> {
        let page = page_size();
        let size = std::mem::size_of::<T>();
        assert!(page.is_multiple_of(std::mem::align_of::<T>()));
        assert_eq!(size % std::mem::align_of::<T>(), 0);
        let bytes = std::mem::size_of_val(values);
        let data_pages = bytes.div_ceil(page).max(1);
        let map_len = (data_pages + 2) * page;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice; the result
        // is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(map != libc::MAP_FAILED, "mmap of {map_len} bytes failed");
        let base = map as *mut u8;
        // SAFETY: both ranges are whole pages inside the mapping just made.
        unsafe {
            let trailing = base.add((data_pages + 1) * page);
            assert_eq!(libc::mprotect(map, page, libc::PROT_NONE), 0);
            assert_eq!(
                libc::mprotect(trailing as *mut libc::c_void, page, libc::PROT_NONE),
                0
            );
        }
        let offset = match place {
            Place::Head => page,
            Place::Tail => (data_pages + 1) * page - bytes,
        };
        // SAFETY: `offset..offset + bytes` lies in the accessible pages; `offset` is a multiple
        // of `size_of::<T>()` (pages are, and so is `bytes`), hence aligned for `T`.
        let ptr = unsafe { base.add(offset) } as *mut T;
        // SAFETY: `ptr` is valid for `values.len()` writes of `T` and does not overlap `values`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr, values.len()) };
        Guarded {
            map,
            map_len,
            ptr,
            len: values.len(),
        }
    }

    /// `len` copies of `v`.
    fn filled(v: T, len: usize, place: Place) -> Guarded<T> {
        Guarded::new(&vec![v; len], place)
    }
}

impl<T: Copy> Deref for Guarded<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is aligned, non-null and valid for `len` initialized elements for as
        // long as the mapping lives (until drop).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Copy> DerefMut for Guarded<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for Guarded<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this length and is unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// The guard really faults: a child process that reads one element past a tail-placed buffer
/// must die of SIGSEGV (or SIGBUS). Checks the harness itself, not the kernels.
#[test]
fn guard_page_faults() {
    // SAFETY: the child only reads memory and exits; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let g = Guarded::new(&[1u8, 2, 3], Place::Tail);
        let p = g.as_ptr();
        // SAFETY: deliberately not: this reads the guard page and must fault.
        let v = unsafe { std::ptr::read_volatile(p.add(3)) };
        // SAFETY: `_exit` is always safe to call; reaching it means the guard did not fault.
        unsafe { libc::_exit(i32::from(v) + 10) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status)
            && [libc::SIGSEGV, libc::SIGBUS].contains(&libc::WTERMSIG(status)),
        "reading past a guarded buffer did not fault (status {status:#x})"
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs.
// ---------------------------------------------------------------------------------------------

/// Lengths of the 1-D tests: every length up to 67 (every SIMD tail of 8, 16 and 64 lanes, and
/// none at all), then a few longer ones.
fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=67).collect();
    v.extend([127, 128, 129, 255, 256, 257]);
    if scale() != Scale::Small {
        v.extend([1000, 4096 + 37]);
    }
    v
}

/// Floats in one of several styles: ordinary, exact ties, awkward values (signed zeros,
/// subnormals, extremes), or with non-finite values among them.
fn floats(rng: &mut Rng, len: usize, style: usize) -> Vec<f32> {
    const SPECIAL: [f32; 10] = [
        0.0,
        -0.0,
        1e-45,
        -3e-39,
        1e38,
        -1e38,
        f32::MAX,
        f32::MIN,
        2.5,
        -0.5,
    ];
    (0..len)
        .map(|i| match style % 4 {
            0 => rng.unit() * 4.0 + (i % 3) as f32,
            1 => (rng.below(600) as f32 - 300.0) * 0.5,
            2 => SPECIAL[rng.below(SPECIAL.len() as u64) as usize],
            _ => {
                if i % 5 == 2 {
                    [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3]
                } else {
                    rng.unit()
                }
            }
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Quantization kernels and front ends.
// ---------------------------------------------------------------------------------------------

#[test]
fn quant_kernels_against_guards() {
    let scalar = quant_kernels(Isa::Scalar);
    let mut rng = Rng::new(101);
    for len in lengths() {
        for style in 0..4 {
            let x = floats(&mut rng, len, style);
            let mm = scalar.minmax(&x);
            for isa in paths() {
                let q = quant_kernels(isa);
                for place in PLACES {
                    let gx = Guarded::new(&x, place);
                    let got = q.minmax(&gx);
                    assert!(
                        got.min == mm.min && got.max == mm.max && got.nonfinite == mm.nonfinite,
                        "{isa:?} minmax len {len} style {style} {place:?}: {got:?} != {mm:?}"
                    );
                    for (s, zp) in [(1.0 / 255.0, 0u8), (0.5, 128), (1e-30, 255), (7.5, 3)] {
                        let mut want = vec![0u8; len];
                        scalar.quantize_u8(&x, s, zp, &mut want);
                        for out_place in PLACES {
                            let mut out = Guarded::filled(0xA5u8, len, out_place);
                            q.quantize_u8(&gx, s, zp, &mut out);
                            assert_eq!(
                                &out[..],
                                &want[..],
                                "{isa:?} quantize_u8 len {len} style {style} scale {s} zp {zp} \
                                 x {place:?} out {out_place:?}"
                            );
                        }
                    }
                    for s in [1.0 / 127.0, 0.5, 1e-30] {
                        let mut want = vec![0i8; len];
                        scalar.quantize_i8(&x, s, &mut want);
                        for out_place in PLACES {
                            let mut out = Guarded::filled(0x5Ai8, len, out_place);
                            q.quantize_i8(&gx, s, &mut out);
                            assert_eq!(
                                &out[..],
                                &want[..],
                                "{isa:?} quantize_i8 len {len} style {style} scale {s} x \
                                 {place:?} out {out_place:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Shapes `rows x cols` with ragged rows: every width up to 67 at a few heights.
fn row_shapes() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for cols in 1..=67 {
        for rows in [1, 2, 3, 5] {
            if scale() == Scale::Small && rows == 5 && cols % 2 == 0 {
                continue;
            }
            v.push((rows, cols));
        }
    }
    v.extend([(0, 5), (4, 0), (3, 129), (2, 257)]);
    v
}

#[test]
fn quantize_rows_against_guards() {
    let mut rng = Rng::new(102);
    for (rows, cols) in row_shapes() {
        let style = (rows + cols) % 3; // finite styles: the non-finite check is tested below
        let x = floats(&mut rng, rows * cols, style);
        for gran in [Granularity::Row, Granularity::Tensor] {
            let groups = if gran == Granularity::Row { rows } else { 1 };
            for scheme in [Scheme::Robust, Scheme::Onnx] {
                let mut want = vec![0u8; rows * cols];
                let (mut ws, mut wz) = (vec![0f32; groups], vec![0u8; groups]);
                let how = Quantization {
                    granularity: gran,
                    scheme,
                    check_finite: true,
                };
                let wr = quantize_u8_rows(
                    Isa::Scalar,
                    Matrix::new(&x, rows, cols).unwrap(),
                    how,
                    U8Out {
                        values: &mut want,
                        stride: cols,
                        scales: &mut ws,
                        zero_points: &mut wz,
                    },
                );
                for isa in paths() {
                    for place in PLACES {
                        let gx = Guarded::new(&x, place);
                        let mut out = Guarded::filled(0xA5u8, rows * cols, place);
                        let mut s = Guarded::filled(f32::NAN, groups, place);
                        let mut z = Guarded::filled(0x33u8, groups, place);
                        let r = quantize_u8_rows(
                            isa,
                            Matrix::new(&gx, rows, cols).unwrap(),
                            how,
                            U8Out {
                                values: &mut out,
                                stride: cols,
                                scales: &mut s,
                                zero_points: &mut z,
                            },
                        );
                        let what = format!("{isa:?} u8 rows {rows}x{cols} {gran:?} {place:?}");
                        assert_eq!(r, wr, "{what}");
                        if wr.is_ok() {
                            assert_eq!(&out[..], &want[..], "{what}");
                            assert_eq!(bits(&s), bits(&ws), "{what}: scales");
                            assert_eq!(&z[..], &wz[..], "{what}: zero points");
                        }
                    }
                }
            }
            let mut want = vec![0i8; rows * cols];
            let mut ws = vec![0f32; groups];
            let xm = Matrix::new(&x, rows, cols).unwrap();
            let wr = quantize_i8_rows(Isa::Scalar, xm, gran, true, &mut want, &mut ws);
            for isa in paths() {
                for place in PLACES {
                    let gx = Guarded::new(&x, place);
                    let mut out = Guarded::filled(0x5Ai8, rows * cols, place);
                    let mut s = Guarded::filled(f32::NAN, groups, place);
                    let gm = Matrix::new(&gx, rows, cols).unwrap();
                    let r = quantize_i8_rows(isa, gm, gran, true, &mut out, &mut s);
                    let what = format!("{isa:?} i8 rows {rows}x{cols} {gran:?} {place:?}");
                    assert_eq!(r, wr, "{what}");
                    if wr.is_ok() {
                        assert_eq!(&out[..], &want[..], "{what}");
                        assert_eq!(bits(&s), bits(&ws), "{what}: scales");
                    }
                }
            }
        }
    }
}

#[test]
fn dynamic_quantize_linear_against_guards() {
    let mut rng = Rng::new(103);
    for len in lengths() {
        for style in 0..4 {
            let x = floats(&mut rng, len, style);
            for check in [true, false] {
                let mut want = vec![0u8; len];
                let wr = ops::dynamic_quantize_linear(Isa::Scalar, &x, &mut want, check);
                for isa in paths() {
                    for place in PLACES {
                        let gx = Guarded::new(&x, place);
                        let mut out = Guarded::filled(0xA5u8, len, place);
                        let r = ops::dynamic_quantize_linear(isa, &gx, &mut out, check);
                        let what = format!("{isa:?} DQL len {len} style {style} {place:?}");
                        match (&r, &wr) {
                            (Ok((s, z)), Ok((ws, wz))) => {
                                assert_eq!((s.to_bits(), z), (ws.to_bits(), wz), "{what}");
                                assert_eq!(&out[..], &want[..], "{what}");
                            }
                            _ => assert_eq!(r, wr, "{what}"),
                        }
                    }
                }
                if check && style == 3 && len > 2 {
                    assert!(matches!(wr, Err(Error::NonFinite { .. })));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// linear (quantization, GEMM, dequantizing epilogue) and the weight constructors.
// ---------------------------------------------------------------------------------------------

/// `(m, n, k)` for the whole-operation tests: every n and every k up to 67, at several m.
fn gemm_shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for l in 1..=67usize {
        v.push((1, l, l));
        v.push((l % 9 + 1, 68 - l, l));
        if scale() != Scale::Small || l % 2 == 1 {
            v.push((2, l, 5));
            v.push((5, 3, l));
            v.push((9, l, 68 - l));
        }
    }
    v.extend([
        (17, 33, 31),
        (8, 64, 64),
        (3, 65, 129),
        (0, 5, 7),
        (3, 17, 0),
    ]);
    v
}

#[test]
fn linear_against_guards() {
    let mut rng = Rng::new(104);
    for (m, n, k) in gemm_shapes() {
        let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let per_channel = (m + n + k) % 2 == 0;
        let gran = if (m + k) % 2 == 0 {
            Granularity::Row
        } else {
            Granularity::Tensor
        };
        let ws = PackedWeight::from_float(Isa::Scalar, &w, n, k, per_channel).unwrap();
        let mut want = vec![0f32; m * n];
        ops::linear(
            Isa::Scalar,
            Matrix::new(&x, m, ws.k()).unwrap(),
            &ws,
            Some(&bias),
            Quantization::dynamic(gran),
            &mut want,
        )
        .unwrap();
        let mut want_nb = vec![0f32; m * n];
        ops::linear(
            Isa::Scalar,
            Matrix::new(&x, m, ws.k()).unwrap(),
            &ws,
            None,
            Quantization::dynamic(gran),
            &mut want_nb,
        )
        .unwrap();
        let mut want_static = vec![0f32; m * n];
        let fixed = Quantization {
            granularity: Granularity::Tensor,
            scheme: Scheme::Fixed {
                scale: 0.02,
                zero_point: 130,
            },
            check_finite: true,
        };
        let xm = Matrix::new(&x, m, k).unwrap();
        ops::linear(Isa::Scalar, xm, &ws, Some(&bias), fixed, &mut want_static).unwrap();
        let (wqa, wsx, wzx) = ops::quantize_activations(
            Isa::Scalar,
            Matrix::new(&x, m, k).unwrap(),
            Quantization::dynamic(gran),
        )
        .unwrap();
        for isa in paths() {
            for place in PLACES {
                let what = format!("{isa:?} linear {m}x{n}x{k} {gran:?} {place:?}");
                let gw = Guarded::new(&w, place);
                let pw = PackedWeight::from_float(isa, &gw, n, k, per_channel).unwrap();
                assert_eq!(pw, ws, "{what}: from_float");
                let gx = Guarded::new(&x, place);
                let gb = Guarded::new(&bias, place);
                let mut out = Guarded::filled(f32::NAN, m * n, place);
                ops::linear(
                    isa,
                    Matrix::new(&gx, m, pw.k()).unwrap(),
                    &pw,
                    Some(&gb),
                    Quantization::dynamic(gran),
                    &mut out,
                )
                .unwrap();
                assert_eq!(bits(&out), bits(&want), "{what}");
                let mut out = Guarded::filled(f32::NAN, m * n, place);
                ops::linear(
                    isa,
                    Matrix::new(&gx, m, pw.k()).unwrap(),
                    &pw,
                    None,
                    Quantization::dynamic(gran),
                    &mut out,
                )
                .unwrap();
                assert_eq!(bits(&out), bits(&want_nb), "{what} without bias");
                let mut out = Guarded::filled(f32::NAN, m * n, place);
                let gxm = Matrix::new(&gx, m, k).unwrap();
                ops::linear(isa, gxm, &pw, Some(&gb), fixed, &mut out).unwrap();
                assert_eq!(bits(&out), bits(&want_static), "{what} static");
                let (qa, sx, zx) = ops::quantize_activations(
                    isa,
                    Matrix::new(&gx, m, k).unwrap(),
                    Quantization::dynamic(gran),
                )
                .unwrap();
                for i in 0..m {
                    assert_eq!(qa.row(i), wqa.row(i), "{what}: quantized row {i}");
                }
                assert_eq!(
                    (bits(&sx), &zx),
                    (bits(&wsx), &wzx),
                    "{what}: activation params"
                );
            }
        }
    }
}

/// One reduction beyond `K_CHUNK` (the i64 path of the driver and epilogue), kept at every
/// scale.
#[test]
fn linear_long_k_against_guards() {
    let mut rng = Rng::new(105);
    let (m, n, k) = (2, 17, K_CHUNK + 37);
    let x: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
    let wq: Vec<i8> = (0..n * k).map(|_| rng.i8().max(-127)).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-3).collect();
    let w = PackedWeight::from_quantized(&wq, &scales, n, k, true).unwrap();
    let mut want = vec![0f32; m * n];
    ops::linear(
        Isa::Scalar,
        Matrix::new(&x, m, w.k()).unwrap(),
        &w,
        None,
        Quantization::dynamic(Granularity::Row),
        &mut want,
    )
    .unwrap();
    for isa in paths() {
        let gx = Guarded::new(&x, Place::Tail);
        let mut out = Guarded::filled(f32::NAN, m * n, Place::Tail);
        ops::linear(
            isa,
            Matrix::new(&gx, m, w.k()).unwrap(),
            &w,
            None,
            Quantization::dynamic(Granularity::Row),
            &mut out,
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&want), "{isa:?} linear K = {k}");
    }
}

#[test]
fn weight_constructors_and_bytes_against_guards() {
    let mut rng = Rng::new(106);
    for (n, k) in [
        (1, 1),
        (3, 5),
        (17, 1),
        (16, 64),
        (33, 31),
        (65, 67),
        (2, 0),
        (0, 3),
    ] {
        for per_channel in [true, false] {
            let values: Vec<i8> = (0..n * k).map(|_| rng.i8().max(-127)).collect();
            let scales: Vec<f32> = (0..if per_channel { n } else { 1 })
                .map(|j| 0.5 + j as f32)
                .collect();
            let want = PackedWeight::from_quantized(&values, &scales, n, k, per_channel).unwrap();
            let bytes = want.to_bytes();
            for place in PLACES {
                let what = format!("{n}x{k} per_channel {per_channel} {place:?}");
                let gv = Guarded::new(&values, place);
                let gs = Guarded::new(&scales, place);
                let w = PackedWeight::from_quantized(&gv, &gs, n, k, per_channel).unwrap();
                assert_eq!(w, want, "{what}: from_quantized");
                let gb = Guarded::new(&bytes, place);
                let w = PackedWeight::from_bytes(&gb).unwrap();
                assert_eq!(w, want, "{what}: from_bytes");
                assert_eq!(w.to_bytes(), bytes, "{what}: round trip");
                every_corruption_is_refused(&bytes, place, &what);
                // The packers on guarded operands.
                let p = PackedB::from_nk(&gv, n, k).unwrap();
                assert_eq!(&p, want.int8().unwrap().packed(), "{what}: from_nk");
                let kn: Vec<i8> = (0..k * n).map(|i| values[(i % n) * k + i / n]).collect();
                let gkn = Guarded::new(&kn, place);
                assert_eq!(
                    &PackedB::from_kn(&gkn, k, n).unwrap(),
                    want.int8().unwrap().packed(),
                    "{what}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// matmul_integer.
// ---------------------------------------------------------------------------------------------

enum Operand {
    U8(Vec<u8>),
    I8(Vec<i8>),
}

enum GuardedOperand {
    U8(Guarded<u8>),
    I8(Guarded<i8>),
}

impl Operand {
    fn data(&self) -> Int8Data<'_> {
        match self {
            Operand::U8(v) => Int8Data::U8(v),
            Operand::I8(v) => Int8Data::I8(v),
        }
    }
    fn guarded(&self, place: Place) -> GuardedOperand {
        match self {
            Operand::U8(v) => GuardedOperand::U8(Guarded::new(v, place)),
            Operand::I8(v) => GuardedOperand::I8(Guarded::new(v, place)),
        }
    }
}

impl GuardedOperand {
    fn data(&self) -> Int8Data<'_> {
        match self {
            GuardedOperand::U8(v) => Int8Data::U8(v),
            GuardedOperand::I8(v) => Int8Data::I8(v),
        }
    }
}

#[test]
fn matmul_integer_against_guards() {
    let mut rng = Rng::new(107);
    for (i, (m, n, k)) in gemm_shapes().into_iter().enumerate() {
        // Two stored A matrices and one B, broadcast over a batch of 2 (every other shape).
        let batch = 1 + i % 2;
        let (a_count, a_index, b_index) = if batch == 2 {
            (2, vec![1usize, 0], vec![0usize, 0])
        } else {
            (1, vec![0], vec![0])
        };
        let a = if i % 3 == 0 {
            Operand::I8((0..a_count * m * k).map(|_| rng.i8()).collect())
        } else {
            Operand::U8((0..a_count * m * k).map(|_| rng.u8()).collect())
        };
        let b = if i % 5 < 2 {
            Operand::U8((0..k * n).map(|_| rng.u8()).collect())
        } else {
            Operand::I8((0..k * n).map(|_| rng.i8()).collect())
        };
        let za: Vec<i32> = if i % 4 < 2 {
            vec![(rng.u8() % 100) as i32]
        } else {
            (0..batch * m).map(|_| (rng.u8() % 100) as i32).collect()
        };
        let zb: Vec<i32> = if i % 4 == 1 {
            vec![3]
        } else {
            (0..batch * n).map(|_| (rng.i8() / 2) as i32).collect()
        };
        let shape = MatmulShape { batch, m, k, n };
        let mut want = vec![0i32; batch * m * n];
        let wr = ops::matmul_integer(
            Isa::Scalar,
            shape,
            MatmulOperand {
                data: a.data(),
                index: &a_index,
                zero_point: &za,
            },
            MatmulOperand {
                data: b.data(),
                index: &b_index,
                zero_point: &zb,
            },
            &mut want,
        );
        for isa in paths() {
            for place in PLACES {
                let (ga, gb) = (a.guarded(place), b.guarded(place));
                let (gai, gbi) = (Guarded::new(&a_index, place), Guarded::new(&b_index, place));
                let (gza, gzb) = (Guarded::new(&za, place), Guarded::new(&zb, place));
                let mut out = Guarded::filled(i32::MIN, batch * m * n, place);
                let r = ops::matmul_integer(
                    isa,
                    shape,
                    MatmulOperand {
                        data: ga.data(),
                        index: &gai,
                        zero_point: &gza,
                    },
                    MatmulOperand {
                        data: gb.data(),
                        index: &gbi,
                        zero_point: &gzb,
                    },
                    &mut out,
                );
                let what = format!("{isa:?} matmul_integer {batch}x{m}x{k}x{n} {place:?}");
                assert_eq!(r, wr, "{what}");
                assert_eq!(&out[..], &want[..], "{what}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM microkernels: the SIMD loads of A and B and the stores of C, on exact-length slices.
// ---------------------------------------------------------------------------------------------

#[test]
fn microkernels_against_guards() {
    let mut rng = Rng::new(108);
    let k4s: &[usize] = if scale() == Scale::Small {
        &[0, 1, 2, 3, 5, 16, 17]
    } else {
        &[0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33]
    };
    for kern in paths().into_iter().flat_map(gemm_kernels) {
        for rows in 1..=kern.mr {
            for panels in 1..=kern.np {
                for &k4 in k4s {
                    for lda_pad in [0usize, 4] {
                        let k = 4 * k4;
                        let lda = k + lda_pad;
                        let ldc = panels * PANEL;
                        let n = panels * PANEL;
                        // Exactly what the tile addresses: the last row of A stops at its K.
                        let a_len = (rows - 1) * lda + k;
                        let a: Vec<u8> = (0..a_len).map(|_| rng.u8()).collect();
                        let a16: Vec<i16> = a.iter().map(|&v| v as i16).collect();
                        let b_nk: Vec<i8> = (0..n * k).map(|_| rng.i8()).collect();
                        let packed = PackedB::from_nk(&b_nk, n, k).unwrap();
                        let b_len = (panels - 1) * packed.panel_stride() + k4 * GROUP_BYTES;
                        let b = &packed.data()[..b_len];
                        let c_len = (rows - 1) * ldc + panels * PANEL;
                        let a_tight: Vec<u8> = (0..rows)
                            .flat_map(|r| a[r * lda..r * lda + k].to_vec())
                            .collect();
                        let want = reference::gemm_u8s8(&a_tight, &b_nk, rows, n, k);
                        for place in PLACES {
                            let ga = Guarded::new(&a, place);
                            let ga16 = Guarded::new(&a16, place);
                            let gb = Guarded::new(b, place);
                            let mut gc = Guarded::filled(0x5A5A_5A5Ai32, c_len, place);
                            let mut tile = Tile {
                                rows,
                                panels,
                                k4,
                                a: match kern.a_format {
                                    AFormat::U8 => AData::U8(&ga),
                                    AFormat::I16 => AData::I16(&ga16),
                                },
                                lda,
                                b: &gb,
                                panel_stride: packed.panel_stride(),
                                c: &mut gc,
                                ldc,
                            };
                            kern.run(&mut tile);
                            for r in 0..rows {
                                for j in 0..n {
                                    assert_eq!(
                                        gc[r * ldc + j] as i64,
                                        want[r * n + j],
                                        "{} tile {rows}x{panels} k4 {k4} lda {lda} {place:?}: \
                                         c[{r}][{j}]",
                                        kern.name
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit weights.
// ---------------------------------------------------------------------------------------------

/// Each path's 4-bit microkernel on operands of exactly the lengths it addresses, against the
/// scalar kernel on ordinary vectors.
#[test]
fn int4_microkernels_against_guards() {
    let mut rng = Rng::new(109);
    let shapes: &[(usize, usize)] = if scale() == Scale::Small {
        &[(1, 1), (2, 3), (1, 4)]
    } else {
        &[(1, 1), (1, 2), (2, 1), (2, 3), (3, 4), (1, 5)]
    };
    let scalar = int4_kernel(Isa::Scalar);
    for kern in paths().into_iter().flat_map(int4_kernels) {
        for rows in 1..=kern.mr {
            for panels in 1..=kern.np {
                for &(groups, group_blocks) in shapes {
                    for code_step in [0, PANEL] {
                        let blocks = groups * group_blocks;
                        let (lda, lds, ldc) = (8 * blocks, groups, panels * PANEL);
                        let panel_stride = blocks * INT4_BLOCK_BYTES;
                        let code_stride = if code_step == 0 {
                            PANEL
                        } else {
                            groups * PANEL
                        };
                        let a: Vec<u8> = (0..(rows - 1) * lda + 8 * blocks)
                            .map(|_| rng.u8())
                            .collect();
                        let asum: Vec<i32> = (0..(rows - 1) * lds + groups)
                            .map(|_| rng.below(255 * 8 * group_blocks as u64) as i32)
                            .collect();
                        let b: Vec<u8> = (0..(panels - 1) * panel_stride
                            + blocks * INT4_BLOCK_BYTES)
                            .map(|_| rng.u8())
                            .collect();
                        let codes_len =
                            (panels - 1) * code_stride + (groups - 1) * code_step + PANEL;
                        let cd: Vec<u8> = (0..codes_len).map(|_| rng.u8()).collect();
                        let cm: Vec<u8> = (0..codes_len).map(|_| rng.u8()).collect();
                        let c_len = (rows - 1) * ldc + panels * PANEL;
                        let run = |k: &Int4Kernel, bufs: [&[u8]; 4], asum: &[i32]| {
                            let (mut c1, mut c2) = (vec![0i32; c_len], vec![0i32; c_len]);
                            k.run(&mut Int4Tile {
                                rows,
                                panels,
                                groups,
                                group_blocks,
                                a: bufs[0],
                                lda,
                                asum,
                                lds,
                                b: bufs[1],
                                panel_stride,
                                cd: bufs[2],
                                cm: bufs[3],
                                code_stride,
                                code_step,
                                c1: &mut c1,
                                c2: &mut c2,
                                ldc,
                            });
                            (c1, c2)
                        };
                        // The scalar kernel, one panel at a time (it takes fewer at once).
                        let mut want = (vec![0i32; c_len], vec![0i32; c_len]);
                        for p in 0..panels {
                            scalar.run(&mut Int4Tile {
                                rows,
                                panels: 1,
                                groups,
                                group_blocks,
                                a: &a,
                                lda,
                                asum: &asum,
                                lds,
                                b: &b[p * panel_stride..],
                                panel_stride,
                                cd: &cd[p * code_stride..],
                                cm: &cm[p * code_stride..],
                                code_stride,
                                code_step,
                                c1: &mut want.0[p * PANEL..],
                                c2: &mut want.1[p * PANEL..],
                                ldc,
                            });
                        }
                        for place in PLACES {
                            let (ga, gb) = (Guarded::new(&a, place), Guarded::new(&b, place));
                            let (gcd, gcm) = (Guarded::new(&cd, place), Guarded::new(&cm, place));
                            let gs = Guarded::new(&asum, place);
                            let got = run(kern, [&ga, &gb, &gcd, &gcm], &gs);
                            assert_eq!(
                                got, want,
                                "{} {rows}x{panels} groups {groups}x{group_blocks} step \
                                 {code_step} {place:?}",
                                kern.name
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `linear` on 4-bit weights with guarded activations, bias and output, and the weight's bytes
/// (whole, every truncation, flipped bits) read from guarded memory.
#[test]
fn int4_linear_and_bytes_against_guards() {
    let mut rng = Rng::new(110);
    for (m, n, k, group) in [
        (1, 1, 32, Some(32)),
        (3, 17, 64, Some(32)),
        (5, 33, 128, Some(64)),
        (2, 5, 13, None),
        (9, 16, 256, Some(128)),
        (4, 3, 0, None),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let symmetric = (m + n) % 2 == 0;
        let pw = PackedWeight::from_float_int4(&w, n, k, group, symmetric, Method::Search, None)
            .unwrap();
        let how = Quantization::dynamic(Granularity::Row);
        let mut want = vec![0f32; m * n];
        let xm = Matrix::new(&x, m, k).unwrap();
        ops::linear(Isa::Scalar, xm, &pw, Some(&bias), how, &mut want).unwrap();
        let bytes = pw.to_bytes();
        for place in PLACES {
            let what = format!("{m}x{n}x{k} {group:?} {place:?}");
            let gw = Guarded::new(&w, place);
            let gpw =
                PackedWeight::from_float_int4(&gw, n, k, group, symmetric, Method::Search, None)
                    .unwrap();
            assert_eq!(gpw, pw, "{what}: from_float_int4");
            for isa in paths() {
                let gx = Guarded::new(&x, place);
                let gb = Guarded::new(&bias, place);
                let mut out = Guarded::filled(f32::NAN, m * n, place);
                let gxm = Matrix::new(&gx, m, k).unwrap();
                ops::linear(isa, gxm, &pw, Some(&gb), how, &mut out).unwrap();
                assert_eq!(bits(&out), bits(&want), "{isa:?} {what}");
            }
            let gb = Guarded::new(&bytes, place);
            assert_eq!(
                PackedWeight::from_bytes(&gb).unwrap(),
                pw,
                "{what}: from_bytes"
            );
            every_corruption_is_refused(&bytes, place, &what);
        }
    }
}

/// Every truncation of a weight's `bytes`, and one flipped bit in each byte (every 7th under
/// `DYNAQ_TEST_SCALE=small`), read from guarded memory: a clean `Corrupt` error, no fault.
fn every_corruption_is_refused(bytes: &[u8], place: Place, what: &str) {
    let step = if scale() == Scale::Small { 7 } else { 1 };
    for cut in (0..bytes.len()).step_by(step) {
        let gb = Guarded::new(&bytes[..cut], place);
        let r = PackedWeight::from_bytes(&gb);
        assert!(
            matches!(r, Err(Error::Corrupt(_))),
            "{what}: cut {cut}: {r:?}"
        );
    }
    for i in (0..bytes.len()).step_by(step) {
        let mut b = bytes.to_vec();
        b[i] ^= 1 << (i % 8);
        let gb = Guarded::new(&b, place);
        let r = PackedWeight::from_bytes(&gb);
        assert!(
            matches!(r, Err(Error::Corrupt(_))),
            "{what}: flip {i}: {r:?}"
        );
    }
}
