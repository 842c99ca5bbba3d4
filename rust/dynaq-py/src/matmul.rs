//! `matmul_integer`: ONNX `MatMulInteger` with numpy's `matmul` shapes (1-D promotion, batch
//! broadcasting) and ONNX's zero points, reduced to the core's batched form: stored matrices,
//! an index per output batch, and flat zero points.

use crate::args::{self, detach, int8_array, Int8Array};
use crate::errors::{shape, to_py, type_error, value_error};
use dynaq_core::isa::active_isa;
use dynaq_core::ops::{self, Int8Data, MatmulOperand, MatmulShape};
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

/// ONNX ``MatMulInteger``: ``(a - a_zero_point) @ (b - b_zero_point)`` in exact int32.
///
/// Parameters
/// ----------
/// a : array_like of uint8 or int8, shape (..., M, K) or (K,)
/// b : array_like of uint8 or int8, shape (..., K, N) or (K,)
///     Batch dimensions broadcast as in ``numpy.matmul``; 1-D operands are promoted and the
///     added dimension removed from the result, as in ``numpy.matmul``.
/// a_zero_point : scalar or array of a's dtype, optional
///     One value, or one per row of ``a``: shape (M,) for a 2-D ``a``, (..., M, 1) otherwise.
/// b_zero_point : scalar or array of b's dtype, optional
///     One value, or one per column of ``b``: shape (N,) for a 2-D ``b``, (..., 1, N) otherwise.
///
/// Returns
/// -------
/// ndarray of int32
///
/// Raises
/// ------
/// OverflowError
///     When an exact result does not fit in int32 (it is never wrapped).
#[pyfunction]
#[pyo3(signature = (a, b, a_zero_point = None, b_zero_point = None))]
pub fn matmul_integer<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    a_zero_point: Option<&Bound<'py, PyAny>>,
    b_zero_point: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<i32>>> {
    const OPERAND: &str = "a uint8 or int8 array";
    let aa = int8_array(a, "a", true, true, OPERAND)?;
    let ba = int8_array(b, "b", true, true, OPERAND)?;
    for (name, arr) in [("a", &aa), ("b", &ba)] {
        if arr.shape().is_empty() {
            return Err(value_error(format!(
                "{name} must have at least 1 dimension (matmul does not take scalars)"
            )));
        }
    }
    let (a_shape, b_shape) = (aa.shape().to_vec(), ba.shape().to_vec());
    // numpy.matmul's promotion: a 1-D a is one row, a 1-D b one column.
    let a2: Vec<usize> = if a_shape.len() == 1 {
        vec![1, a_shape[0]]
    } else {
        a_shape.clone()
    };
    let b2: Vec<usize> = if b_shape.len() == 1 {
        vec![b_shape[0], 1]
    } else {
        b_shape.clone()
    };
    let (a_batch, &[m, k]) = a2.split_at(a2.len() - 2) else {
        unreachable!()
    };
    let (b_batch, &[kb, n]) = b2.split_at(b2.len() - 2) else {
        unreachable!()
    };
    if k != kb {
        return Err(value_error(format!(
            "matmul_integer: a of shape {} and b of shape {} have different inner dimensions \
             ({k} != {kb})",
            shape(&a_shape),
            shape(&b_shape)
        )));
    }
    let Some(batch_shape) = broadcast_shapes(a_batch, b_batch) else {
        return Err(value_error(format!(
            "matmul_integer: batch dimensions of a {} and b {} do not broadcast",
            shape(&a_shape),
            shape(&b_shape)
        )));
    };
    let batch = args::product(&batch_shape);
    let zp = |zp, name, operand: &Int8Array<'_>, nd: usize, per: usize, full: Vec<usize>| {
        zero_point(zp, name, operand, nd, per, &full, batch)
    };
    let za = zp(
        a_zero_point,
        "a_zero_point",
        &aa,
        a_shape.len(),
        m,
        [&batch_shape[..], &[m, 1]].concat(),
    )?;
    let zb = zp(
        b_zero_point,
        "b_zero_point",
        &ba,
        b_shape.len(),
        n,
        [&batch_shape[..], &[1, n]].concat(),
    )?;

    let mut out_shape = batch_shape.clone();
    out_shape.extend([m, n]);
    let out = args::new_array::<i32>(py, &out_shape)?;
    if batch * m * n > 0 {
        let ai = broadcast_index(a_batch, &batch_shape);
        let bi = broadcast_index(b_batch, &batch_shape);
        let mut w = out.readwrite();
        let os = w.as_slice_mut().expect("new arrays are contiguous");
        let isa = active_isa();
        let mshape = MatmulShape { batch, m, k, n };
        let (ad, bd) = (data(&aa), data(&ba));
        detach(py, || {
            let a = MatmulOperand {
                data: ad,
                index: &ai,
                zero_point: &za,
            };
            let b = MatmulOperand {
                data: bd,
                index: &bi,
                zero_point: &zb,
            };
            ops::matmul_integer(isa, mshape, a, b, os)
        })
        .map_err(to_py)?;
    }
    // Remove the dimensions the promotion added (numpy.matmul).
    let mut final_shape = batch_shape;
    if a_shape.len() > 1 {
        final_shape.push(m);
    }
    if b_shape.len() > 1 {
        final_shape.push(n);
    }
    if final_shape.len() == out_shape.len() {
        return Ok(out);
    }
    out.reshape(final_shape)
}

fn data<'a>(x: &'a Int8Array<'_>) -> Int8Data<'a> {
    match x {
        Int8Array::U8(v) => Int8Data::U8(v.as_slice()),
        Int8Array::I8(v) => Int8Data::I8(v.as_slice()),
    }
}

/// numpy's broadcasting of two batch shapes, or `None`.
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let nd = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < nd - s.len() {
            1
        } else {
            s[i - (nd - s.len())]
        }
    };
    (0..nd)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// For each position of `batch` (row-major), the index of the stored matrix of an operand
/// whose batch shape `src` broadcasts to it.
fn broadcast_index(src: &[usize], batch: &[usize]) -> Vec<usize> {
    let total = args::product(batch);
    let off = batch.len() - src.len();
    (0..total)
        .map(|mut t| {
            let (mut idx, mut stride) = (0, 1);
            for i in (0..batch.len()).rev() {
                let coord = t % batch[i];
                t /= batch[i];
                if i >= off {
                    let d = src[i - off];
                    if d != 1 {
                        idx += coord * stride;
                    }
                    stride *= d;
                }
            }
            idx
        })
        .collect()
}

/// A zero point as the core wants it: one value, or `batch * per` values (one per row of A or
/// column of B in each output batch). See `matmul_integer`'s docs for what is accepted.
fn zero_point(
    zp: Option<&Bound<'_, PyAny>>,
    name: &str,
    operand: &Int8Array<'_>,
    operand_ndim: usize,
    per: usize,
    full: &[usize],
    batch: usize,
) -> PyResult<Vec<i32>> {
    let Some(zp) = zp.filter(|z| !z.is_none()) else {
        return Ok(vec![0]);
    };
    let dtype = operand.dtype_name();
    let (lo, hi) = match operand {
        Int8Array::U8(_) => (0i64, 255i64),
        Int8Array::I8(_) => (-128, 127),
    };
    // A Python int (not a bool) is checked against the operand's range.
    if zp.is_instance_of::<PyInt>() && !zp.is_instance_of::<PyBool>() {
        let v: i64 = zp
            .extract()
            .map_err(|_| value_error(format!("{name} = {zp} is outside the range of {dtype}")))?;
        if !(lo..=hi).contains(&v) {
            return Err(value_error(format!(
                "{name} = {v} is outside the range of {dtype}"
            )));
        }
        return Ok(vec![v as i32]);
    }
    let arr = args::ndarray(zp, name, "an integer array")?;
    let got = args::dtype_name(&arr);
    if got != dtype {
        return Err(type_error(format!(
            "{name} must have the dtype of its operand ({dtype}), got {got}"
        )));
    }
    let z = int8_array(&arr, name, true, true, "a uint8 or int8 array")?;
    let values: Vec<i32> = match &z {
        Int8Array::U8(v) => v.as_slice().iter().map(|&x| x as i32).collect(),
        Int8Array::I8(v) => v.as_slice().iter().map(|&x| x as i32).collect(),
    };
    let zshape = z.shape().to_vec();
    if values.len() == 1 && zshape.len() <= 1 {
        return Ok(values);
    }
    // One per row (column) of a 2-D operand, the same in every batch.
    let per_shape_ok = match operand_ndim {
        2 => zshape == [per],
        1 => zshape == [1],
        _ => false,
    };
    if per_shape_ok {
        return Ok((0..batch).flat_map(|_| values.iter().copied()).collect());
    }
    // Anything that broadcasts to the full (batch..., M, 1) or (batch..., 1, N) shape.
    let Some(idx) = broadcast_to(&zshape, full) else {
        let per_desc = match operand_ndim {
            2 => format!("({per},)"),
            1 => "(1,)".to_string(),
            _ => "(-1,)".to_string(),
        };
        return Err(value_error(format!(
            "{name} of shape {} is neither a scalar, shape {per_desc}, nor broadcastable to {}",
            shape(&zshape),
            shape(full)
        )));
    };
    Ok(idx.into_iter().map(|i| values[i]).collect())
}

/// For each position of `full` (row-major), the index into an array of shape `src` that
/// broadcasts to it; `None` when it does not broadcast.
fn broadcast_to(src: &[usize], full: &[usize]) -> Option<Vec<usize>> {
    if src.len() > full.len() {
        return None;
    }
    let off = full.len() - src.len();
    if src
        .iter()
        .zip(&full[off..])
        .any(|(&s, &f)| s != f && s != 1)
    {
        return None;
    }
    Some(broadcast_index(src, full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[2, 1], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shapes(&[], &[4]), Some(vec![4]));
        assert_eq!(broadcast_shapes(&[2], &[3]), None);
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[], &[2]), vec![0, 0]);
        assert_eq!(broadcast_to(&[2, 1], &[2, 2, 1]), Some(vec![0, 1, 0, 1]));
        assert_eq!(broadcast_to(&[3], &[2, 1]), None);
    }
}
