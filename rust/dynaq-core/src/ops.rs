//! The operations of the Python package, on plain slices, for an explicit path.
//!
//! Every function takes the [`Isa`] to run on (the bindings pass [`crate::isa::active_isa`];
//! tests pass each detected path in turn). The shapes are checked here too (the crate's own
//! safety checks: a mismatch is an [`Error::Shape`], never an out-of-bounds access), so the crate
//! is safe to call directly; the bindings check their arguments first and name them in their
//! errors.

use crate::dispatch::{gemm_kernel, gemm_kernel_for, int4_kernel_for};
use crate::epilogue::{IntegerEpilogue, LinearEpilogue};
use crate::error::{Error, Result};
use crate::gemm::{gemm, QuantizedA, SharedOut};
use crate::int4::{self, gemm::Int4Linear};
use crate::pack::{PackedB, MAX_K};
use crate::quant::{quantize_u8_rows, Granularity, Matrix, Quantization, Scheme, U8Out};
use crate::weight::PackedWeight;
use crate::Isa;
use std::collections::HashMap;
use std::sync::Mutex;

/// ONNX `DynamicQuantizeLinear`: quantizes all of `x` to `out`, returning `(scale, zero_point)`,
/// bit-identical to ONNX Runtime for finite inputs.
pub fn dynamic_quantize_linear(
    isa: Isa,
    x: &[f32],
    out: &mut [u8],
    check_finite: bool,
) -> Result<(f32, u8)> {
    if x.len() != out.len() {
        return Err(Error::Shape(format!(
            "output has {} elements for an input of {}",
            out.len(),
            x.len()
        )));
    }
    let (mut s, mut z) = ([0f32], [0u8]);
    let cols = x.len();
    let how = Quantization {
        granularity: Granularity::Tensor,
        scheme: Scheme::Onnx,
        check_finite,
    };
    let dst = U8Out {
        values: out,
        stride: cols,
        scales: &mut s,
        zero_points: &mut z,
    };
    quantize_u8_rows(isa, Matrix::new(x, 1, cols)?, how, dst)?;
    if x.is_empty() {
        // ONNX Runtime's range of an empty tensor is [0, 0]: scale 1, zero point 0.
        return Ok((1.0, 0));
    }
    Ok((s[0], z[0]))
}

/// Activation quantization as `linear` does it, into a fresh buffer. Returns the buffer, the
/// scale per row and the zero point per row (replicated when per tensor).
pub fn quantize_activations(
    isa: Isa,
    x: Matrix<'_, f32>,
    how: Quantization,
) -> Result<(QuantizedA, Vec<f32>, Vec<i32>)> {
    let mut s = Scratch::default();
    quantize_into(&mut s, isa, x, how, 4)?;
    Ok((s.a, s.sx, s.zx))
}

/// Buffers `linear` reuses from call to call on each thread, so that the hot path allocates
/// nothing once warm.
#[derive(Default)]
struct Scratch {
    a: QuantizedA,
    sx: Vec<f32>,
    zx: Vec<i32>,
    zp: Vec<u8>,
}

/// Scratch larger than this is released after the call instead of being kept for the next one.
const SCRATCH_KEEP_BYTES: usize = 16 << 20;

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Quantizes `x` into the scratch buffers, rows padded to a multiple of `align` (4 for the
/// int8 kernels, 8 for the 4-bit ones).
fn quantize_into(
    s: &mut Scratch,
    isa: Isa,
    x: Matrix<'_, f32>,
    how: Quantization,
    align: usize,
) -> Result<()> {
    let m = x.rows();
    s.a.reshape_aligned(m, x.cols(), align)?;
    let groups = match how.granularity {
        Granularity::Row => m,
        Granularity::Tensor => 1,
    };
    s.sx.clear();
    s.sx.resize(m.max(1), 0.0);
    s.zp.clear();
    s.zp.resize(groups, 0);
    let (buf, stride) = s.a.strided_mut();
    let dst = U8Out {
        values: buf,
        stride,
        scales: &mut s.sx[..groups],
        zero_points: &mut s.zp,
    };
    quantize_u8_rows(isa, x, how, dst)?;
    s.sx.truncate(m);
    if how.granularity == Granularity::Tensor {
        let s0 = s.sx.first().copied().unwrap_or(1.0);
        s.sx.fill(s0);
    }
    s.zx.clear();
    s.zx.extend((0..m).map(|i| s.zp[i.min(groups - 1)] as i32));
    Ok(())
}

/// The fused linear layer: `out = dequant(quant(x) @ wq^T) + bias` for `x` of `m x k` and `out`
/// of `m x n`, the activations quantized as `how` says: dynamically from their own range
/// ([`Quantization::dynamic`]), or with fixed parameters ([`Scheme::Fixed`], e.g. from
/// calibration: static quantization).
pub fn linear(
    isa: Isa,
    x: Matrix<'_, f32>,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    how: Quantization,
    out: &mut [f32],
) -> Result<()> {
    let (m, k, n) = (x.rows(), w.k(), w.n());
    if x.cols() != k {
        return Err(Error::Shape(format!(
            "the input has rows of {}, the weight in_features = {k}",
            x.cols()
        )));
    }
    if m.checked_mul(n) != Some(out.len()) {
        return Err(Error::Shape(format!(
            "the output has {} elements, not {m} x {n}",
            out.len()
        )));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(Error::Shape(format!(
                "the bias has {} elements; expected out_features = {n}",
                b.len()
            )));
        }
    }
    if let Scheme::Fixed { scale, .. } = how.scheme {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Value(format!(
                "activation scale must be finite and positive, got {scale}"
            )));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    SCRATCH.with(|cell| {
        // Taken out for the call (a nested call on this thread would find a fresh one).
        let mut s = cell.take();
        let r = linear_with(&mut s, isa, x, w, bias, how, out);
        if s.a.capacity() <= SCRATCH_KEEP_BYTES {
            cell.set(s);
        }
        r
    })
}

fn linear_with(
    s: &mut Scratch,
    isa: Isa,
    x: Matrix<'_, f32>,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    how: Quantization,
    out: &mut [f32],
) -> Result<()> {
    let w8 = match (w.int8(), w.int4()) {
        (Some(w8), _) => w8,
        (None, Some(w4)) => {
            quantize_into(s, isa, x, how, 8)?;
            let call = Int4Linear {
                a: &s.a,
                zx: &s.zx,
                sx: &s.sx,
                w: w4,
                bias,
            };
            return int4::gemm::linear(int4_kernel_for(isa, s.a.m()), &call, out);
        }
        (None, None) => unreachable!("a weight is int8 or 4-bit"),
    };
    quantize_into(s, isa, x, how, 4)?;
    let kernel = gemm_kernel_for(isa, s.a.m());
    let epi = LinearEpilogue {
        kernel,
        out: SharedOut::new(out),
        n: w.n(),
        zx: &s.zx,
        sx: &s.sx,
        colsum: w8.packed().colsums(),
        sw: w8.scales_full(),
        bias,
    };
    gemm(kernel, &s.a, w8.packed(), &epi)
}

/// An 8-bit integer operand of `matmul_integer`.
#[derive(Clone, Copy, Debug)]
pub enum Int8Data<'a> {
    /// uint8 values.
    U8(&'a [u8]),
    /// int8 values.
    I8(&'a [i8]),
}

impl Int8Data<'_> {
    fn len(&self) -> usize {
        match self {
            Int8Data::U8(v) => v.len(),
            Int8Data::I8(v) => v.len(),
        }
    }
    /// The offset `o` with `value = canonical + o`: 0 for u8 activations (canonical u8),
    /// -128 for i8 ones (canonical `a + 128`).
    fn a_offset(&self) -> i64 {
        match self {
            Int8Data::U8(_) => 0,
            Int8Data::I8(_) => -128,
        }
    }
    /// 128 for u8 right operands (canonical `b - 128`), 0 for i8 ones.
    fn b_offset(&self) -> i64 {
        match self {
            Int8Data::U8(_) => 128,
            Int8Data::I8(_) => 0,
        }
    }
}

/// Shapes of a batched `matmul_integer`.
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    /// Output batches.
    pub batch: usize,
    /// Rows of each A.
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Columns of each B.
    pub n: usize,
}

/// One operand of a batched `matmul_integer`: the stored matrices, which of them each output
/// batch uses (numpy broadcasting reduced to indices), and the zero points: one value, or one per
/// row of each output batch's A (`batch * m`) / per column of its B (`batch * n`).
#[derive(Clone, Copy, Debug)]
pub struct MatmulOperand<'a> {
    /// The stored matrices, back to back (`m x k` each for A, `k x n` for B).
    pub data: Int8Data<'a>,
    /// The stored matrix of each output batch.
    pub index: &'a [usize],
    /// The zero points (widened to i32).
    pub zero_point: &'a [i32],
}

/// ONNX `MatMulInteger`: `out[t] = (A[a.index[t]] - za) @ (B[b.index[t]] - zb)` in exact int32,
/// for `t < batch`. A result outside int32 is an [`Error::Overflow`] naming the first such
/// element.
pub fn matmul_integer(
    isa: Isa,
    shape: MatmulShape,
    a: MatmulOperand<'_>,
    b: MatmulOperand<'_>,
    out: &mut [i32],
) -> Result<()> {
    let MatmulOperand {
        data: a,
        index: a_index,
        zero_point: a_zero_point,
    } = a;
    let MatmulOperand {
        data: b,
        index: b_index,
        zero_point: b_zero_point,
    } = b;
    let MatmulShape { batch, m, k, n } = shape;
    if k > MAX_K {
        return Err(Error::Shape(format!(
            "K = {k} exceeds the supported maximum {MAX_K}"
        )));
    }
    let (mk, kn, mn) = (m * k, k * n, m * n);
    if a_index.len() != batch || b_index.len() != batch || out.len() != batch * mn {
        return Err(Error::Shape(
            "matmul_integer: inconsistent batch sizes".into(),
        ));
    }
    let a_count = a.len().checked_div(mk).unwrap_or(0);
    let b_count = b.len().checked_div(kn).unwrap_or(0);
    if (mk > 0 && !a.len().is_multiple_of(mk)) || (kn > 0 && !b.len().is_multiple_of(kn)) {
        return Err(Error::Shape(
            "matmul_integer: operand sizes are not whole matrices".into(),
        ));
    }
    if mk > 0 && a_index.iter().any(|&i| i >= a_count)
        || kn > 0 && b_index.iter().any(|&i| i >= b_count)
    {
        return Err(Error::Shape(
            "matmul_integer: batch index out of range".into(),
        ));
    }
    let zp_ok = |z: &[i32], per: usize| z.len() == 1 || z.len() == batch * per;
    if !zp_ok(a_zero_point, m) || !zp_ok(b_zero_point, n) {
        return Err(Error::Shape(
            "matmul_integer: zero points must have 1 value or one per row (a) / column (b)".into(),
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    let (oa, ob) = (a.a_offset(), b.b_offset());
    let kernel = gemm_kernel(isa);
    // Each distinct B is packed once, in canonical s8 (`b - ob`).
    let packs: Mutex<HashMap<usize, std::sync::Arc<PackedB>>> = Mutex::new(HashMap::new());
    let packed_b = |bi: usize| -> Result<std::sync::Arc<PackedB>> {
        if let Some(p) = packs.lock().unwrap_or_else(|e| e.into_inner()).get(&bi) {
            return Ok(p.clone());
        }
        let canon: Vec<i8> = match b {
            Int8Data::U8(v) => v[bi * kn..(bi + 1) * kn]
                .iter()
                .map(|&x| (x ^ 0x80) as i8)
                .collect(),
            Int8Data::I8(v) => v[bi * kn..(bi + 1) * kn].to_vec(),
        };
        let p = std::sync::Arc::new(PackedB::from_kn(&canon, k, n)?);
        packs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bi, p.clone());
        Ok(p)
    };
    for t in 0..batch {
        let out_t = &mut out[t * mn..(t + 1) * mn];
        let (ai, bi) = (a_index[t], b_index[t]);
        let mut qa = QuantizedA::zeroed(m, k)?;
        for r in 0..m {
            let row = qa.row_mut(r);
            match a {
                Int8Data::U8(v) => row.copy_from_slice(&v[ai * mk + r * k..ai * mk + (r + 1) * k]),
                Int8Data::I8(v) => {
                    for (d, &s) in row
                        .iter_mut()
                        .zip(&v[ai * mk + r * k..ai * mk + (r + 1) * k])
                    {
                        *d = (s as u8) ^ 0x80;
                    }
                }
            }
        }
        let pb = if k == 0 {
            std::sync::Arc::new(PackedB::from_kn(&[], 0, n)?)
        } else {
            packed_b(bi)?
        };
        let za = |r: usize| {
            if a_zero_point.len() == 1 {
                a_zero_point[0]
            } else {
                a_zero_point[t * m + r]
            }
        } as i64;
        let zb = |c: usize| {
            if b_zero_point.len() == 1 {
                b_zero_point[0]
            } else {
                b_zero_point[t * n + c]
            }
        } as i64;
        let ra: Vec<i64> = (0..m).map(|r| oa - za(r)).collect();
        let cb: Vec<i64> = (0..n).map(|c| ob - zb(c)).collect();
        let rowsum = qa.row_sums();
        let epi = IntegerEpilogue {
            out: SharedOut::new(out_t),
            n,
            k: k as i64,
            ra: &ra,
            rowsum: &rowsum,
            cb: &cb,
            colsum: pb.colsums(),
            first_overflow: Mutex::new(None),
        };
        gemm(kernel, &qa, &pb, &epi)?;
        let first = *epi.first_overflow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, c, v)) = first {
            let at = if batch > 1 {
                format!("batch {t}, ")
            } else {
                String::new()
            };
            return Err(Error::Overflow(format!(
                "matmul_integer result at ({at}row {r}, column {c}) is {v}, outside int32 \
                 (K = {k} is too long for these values)"
            )));
        }
    }
    Ok(())
}
