//! The numpy operations: `linear`, `quantize`, `dynamic_quantize_linear`, and the two helpers
//! the layers share (`as_float32`, `check_granularity`). `matmul_integer` is in `matmul.rs`.
//!
//! Each is one `#[pyfunction]` with its real signature: it checks and converts its arguments
//! with `args`, runs the core operation with the GIL released, and maps errors with `errors`.

use crate::args::{self, detach, float_array, Array, GroupSizeArg};
use crate::errors::{named, shape, value_error, Role};
use crate::quantized::QuantizedTensor;
use crate::weight::{importance_arg, pack, pack_calibrated, PyPackedWeight};
use dynaq_core::isa::active_isa;
use dynaq_core::ops;
use dynaq_core::quant::{
    quantize_i8_rows, quantize_u8_rows, Granularity, Matrix, Quantization, Scheme, U8Out,
};
use dynaq_core::PackedWeight;
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

/// ``x @ weight.T + bias`` with dynamic int8 quantization of ``x``.
///
/// ``x`` is quantized at run time to uint8 (one scale and zero point per row by default, so a
/// row's result never depends on the rest of the batch), multiplied with the int8 weight with
/// exact int32 accumulation, and dequantized with the bias added:
/// ``y = float32(acc - zx * colsum(wq)) * (sx * sw) + bias``.
///
/// Parameters
/// ----------
/// x : array_like of float, shape (..., in_features)
///     float64 and float16 are converted to float32.
/// weight : PackedWeight or array_like of float, shape (out_features, in_features)
///     A float weight is packed on the fly (per channel); pack it once with
///     :func:`pack_weight` when it is reused.
/// bias : array_like of float, shape (out_features,), optional
/// granularity : {"row", "tensor"}
///     Activation scales per row (default) or one for the whole ``x``.
/// out : ndarray of float32, shape (..., out_features), optional
///     Written in place and returned. Must be exactly float32, C-contiguous, writeable and of
///     the result's shape (numpy's strict rule), else ``TypeError``/``ValueError``. It may
///     overlap ``x`` or ``bias``.
/// check_finite : bool
///     Raise ``ValueError`` when ``x`` holds NaN or infinity (default).
///
/// Returns
/// -------
/// ndarray of float32, shape (..., out_features)
#[pyfunction]
#[pyo3(signature = (x, weight, bias = None, *, granularity = "row", out = None, check_finite = true))]
pub fn linear<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    granularity: &str,
    out: Option<&Bound<'py, PyAny>>,
    check_finite: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let how = Quantization {
        granularity: args::granularity(py, granularity)?,
        scheme: Scheme::Robust,
        check_finite,
    };
    run_linear(py, (x, "x", Role::Activation), weight, bias, out, how)
}

/// ``linear`` for the layers: ``x`` named ``name`` in errors (``input``, ``h_0``, a layer's
/// state), NaN and infinity always refused, activations quantized per ``granularity``, or with
/// a fixed ``scale`` and ``zero_point`` for every row when both are given (static
/// quantization, as ``dynaq.layers.Linear`` after ``calibrate``).
#[pyfunction]
#[pyo3(signature = (x, weight, bias, *, name, granularity = "row", scale = None, zero_point = None, out = None))]
#[allow(clippy::too_many_arguments)] // the Python signature: each one a separate argument
pub fn layer_linear<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    name: &str,
    granularity: &str,
    scale: Option<f32>,
    zero_point: Option<u8>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let how = match (scale, zero_point) {
        (Some(scale), Some(zero_point)) => Quantization {
            granularity: Granularity::Tensor,
            scheme: Scheme::Fixed { scale, zero_point },
            check_finite: true,
        },
        (None, None) => Quantization {
            granularity: args::granularity(py, granularity)?,
            scheme: Scheme::Robust,
            check_finite: true,
        },
        _ => return Err(value_error("scale and zero_point go together")),
    };
    run_linear(py, (x, name, Role::Layer), weight, bias, out, how)
}

/// The input of a linear call: the object, its name in errors, and what a NaN in it means.
type Input<'a, 'py> = (&'a Bound<'py, PyAny>, &'a str, Role);

fn run_linear<'py>(
    py: Python<'py>,
    (x, x_name, role): Input<'_, 'py>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
    how: Quantization,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let mut xa = float_array(x, x_name)?;
    let packed: PackedWeight;
    let held = weight.cast::<PyPackedWeight>();
    let w = match &held {
        Ok(w) => &w.get().inner,
        Err(_) => {
            packed = pack(py, weight, "weight", true)?;
            &packed
        }
    };
    let (n, k) = (w.n(), w.k());
    let Some((&last, lead)) = xa.shape().split_last().filter(|(&last, _)| last == k) else {
        return Err(value_error(format!(
            "{x_name} has shape {}: its last axis must equal in_features = {k} of the weight of \
             shape ({n}, {k})",
            shape(xa.shape())
        )));
    };
    debug_assert_eq!(last, k);
    let m = args::product(lead);
    let mut out_shape = lead.to_vec();
    out_shape.push(n);
    let mut ba = match bias.filter(|b| !b.is_none()) {
        Some(b) => Some(float_array(b, "bias")?),
        None => None,
    };
    if let Some(b) = &ba {
        if b.shape() != [n] {
            return Err(value_error(format!(
                "bias must have shape ({n},) for a weight of shape ({n}, {k}), got {}",
                shape(b.shape())
            )));
        }
    }
    let y = match out.filter(|o| !o.is_none()) {
        Some(o) => {
            let y = args::out_array(o, &out_shape)?;
            xa = xa.unalias(&y)?;
            ba = ba.map(|b| b.unalias(&y)).transpose()?;
            y
        }
        None => args::new_array::<f32>(py, &out_shape)?,
    };
    if m * n > 0 {
        let mut yw = match y.try_readwrite() {
            Ok(w) => w,
            Err(_) => {
                // `out` shares its base array with a borrowed input in a way the borrow checker
                // of rust-numpy does not tell apart from an overlap: read copies instead.
                xa = xa.into_owned()?;
                ba = ba.map(Array::into_owned).transpose()?;
                y.try_readwrite()
                    .map_err(|e| value_error(format!("out cannot be written: {e}")))?
            }
        };
        let ys = yw.as_slice_mut().expect("out is C-contiguous");
        let xm = Matrix::new(xa.as_slice(), m, k).expect("x has m rows of k");
        let bs = ba.as_ref().map(Array::as_slice);
        let isa = active_isa();
        detach(py, || ops::linear(isa, xm, w, bs, how, ys)).map_err(|e| named(e, x_name, role))?;
    }
    Ok(y)
}

/// Quantize a float array to 8 bits with one scale per tensor or per row.
///
/// Asymmetric (default): uint8 with a zero point, the parameters of ONNX
/// ``DynamicQuantizeLinear`` (so ``granularity="tensor"`` equals :func:`dynamic_quantize_linear`),
/// except where those are degenerate: a range wider than float32 can hold gets
/// ``scale = max/255 - min/255`` instead of infinity, a scale that underflows to 0 becomes 1,
/// and a subnormal scale is rounded up so that the whole range stays representable.
/// Symmetric: int8 in [-127, 127], ``scale = max|x| / 127`` (1 for an all-zero group),
/// zero point 0.
///
/// Parameters
/// ----------
/// x : array_like of float
///     float64 and float16 are converted to float32. ``granularity="row"`` needs at least one
///     dimension; the last axis is the one reduced.
/// granularity : {"tensor", "row"}
/// symmetric : bool
/// check_finite : bool
///     Raise ``ValueError`` on NaN or infinity (default).
///
/// Returns
/// -------
/// QuantizedTensor
#[pyfunction]
#[pyo3(signature = (x, *, granularity = "tensor", symmetric = false, check_finite = true))]
pub fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    granularity: &str,
    symmetric: bool,
    check_finite: bool,
) -> PyResult<QuantizedTensor> {
    let gran = args::granularity(py, granularity)?;
    let xa = float_array(x, "x")?;
    let (rows, cols, groups): (usize, usize, &[usize]) = match gran {
        Granularity::Tensor => (1, xa.as_slice().len(), &[]),
        Granularity::Row => match xa.shape().split_last() {
            Some((&c, lead)) => (args::product(lead), c, lead),
            None => {
                return Err(value_error(
                    "granularity='row' needs x with at least 1 dimension, got a scalar",
                ))
            }
        },
    };
    let xm = Matrix::new(xa.as_slice(), rows, cols).expect("x is rows x cols");
    let scale = args::new_array::<f32>(py, groups)?;
    let named_x = |e| named(e, "x", Role::Activation);
    let isa = active_isa();
    let (values, zero_point) = if symmetric {
        let values = args::new_array::<i8>(py, xa.shape())?;
        {
            let (mut vw, mut sw) = (values.readwrite(), scale.readwrite());
            let vs = vw.as_slice_mut().expect("new arrays are contiguous");
            let ss = sw.as_slice_mut().expect("new arrays are contiguous");
            detach(py, || quantize_i8_rows(isa, xm, gran, check_finite, vs, ss))
                .map_err(named_x)?;
        }
        let zp = args::new_array::<i8>(py, groups)?;
        zp.readwrite().as_slice_mut().expect("contiguous").fill(0);
        (values.into_any(), zp.into_any())
    } else {
        let values = args::new_array::<u8>(py, xa.shape())?;
        let zp = args::new_array::<u8>(py, groups)?;
        {
            let (mut vw, mut sw, mut zw) = (values.readwrite(), scale.readwrite(), zp.readwrite());
            let dst = U8Out {
                values: vw.as_slice_mut().expect("new arrays are contiguous"),
                stride: cols,
                scales: sw.as_slice_mut().expect("new arrays are contiguous"),
                zero_points: zw.as_slice_mut().expect("new arrays are contiguous"),
            };
            let how = Quantization {
                granularity: gran,
                scheme: Scheme::Robust,
                check_finite,
            };
            detach(py, || quantize_u8_rows(isa, xm, how, dst)).map_err(named_x)?;
        }
        (values.into_any(), zp.into_any())
    };
    Ok(QuantizedTensor::new(
        values,
        scale.into_any(),
        zero_point,
        gran,
        symmetric,
    ))
}

/// ONNX ``DynamicQuantizeLinear``: asymmetric uint8 quantization of a whole tensor.
///
/// The range ``[min(x), max(x)]`` is widened to include 0; ``scale = (max - min) / 255`` in
/// float32 (1 when the range is empty); ``zero_point = round(clamp(-min / scale, 0, 255))``;
/// ``y = clamp(round(x / scale) + zero_point, 0, 255)``, rounding half to even. Bit-identical to
/// ONNX Runtime for every finite float32 input.
///
/// Parameters
/// ----------
/// x : array_like of float, any shape
///     float64 and float16 are converted to float32.
/// check_finite : bool
///     Raise ``ValueError`` when ``x`` holds NaN or infinity (default). When False the check is
///     skipped and such values give unspecified (but memory-safe) results.
///
/// Returns
/// -------
/// y : ndarray of uint8, shape of ``x``
/// y_scale : numpy.float32
/// y_zero_point : numpy.uint8
#[pyfunction]
#[pyo3(signature = (x, *, check_finite = true))]
pub fn dynamic_quantize_linear<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    check_finite: bool,
) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    let xa = float_array(x, "x")?;
    let y = args::new_array::<u8>(py, xa.shape())?;
    let (s, z) = {
        let mut yw = y.readwrite();
        let ys = yw.as_slice_mut().expect("new arrays are contiguous");
        let xs = xa.as_slice();
        let isa = active_isa();
        detach(py, || {
            ops::dynamic_quantize_linear(isa, xs, ys, check_finite)
        })
        .map_err(|e| named(e, "x", Role::Activation))?
    };
    args::tuple(
        py,
        vec![y.into_any(), args::scalar(py, s)?, args::scalar(py, z)?],
    )
}

/// ``obj`` as a C-contiguous float32 array under dynaq's input rules (float64 and float16
/// converted, other dtypes a ``TypeError`` naming ``name``; with ``shape``, any other shape a
/// ``ValueError``): the object itself when it already is one. For the layers, which check
/// their own parameters and states by these rules.
#[pyfunction]
#[pyo3(signature = (obj, name, shape = None))]
pub fn as_float32<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    name: &str,
    shape: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let a = float_array(obj, name)?;
    if let Some(want) = shape {
        if a.shape() != want.as_slice() {
            return Err(value_error(format!(
                "{name} must have shape {}, got {}",
                crate::errors::shape(&want),
                crate::errors::shape(a.shape())
            )));
        }
    }
    a.into_pyarray(py)
}

/// ``obj`` itself when it is a :class:`PackedWeight`, else a float weight quantized as
/// :func:`pack_weight` does (with the same options, ``importance`` included), with errors
/// naming ``name`` (a layer's parameter). ``importance`` with a :class:`PackedWeight` is a
/// ``ValueError``: it is already quantized.
#[pyfunction]
#[pyo3(signature = (
    obj, name, per_channel = true, *, bits = 8, group_size = GroupSizeArg::Unset,
    symmetric = None, method = None, importance = None
))]
#[allow(clippy::too_many_arguments)]
pub fn as_packed_weight<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    name: &str,
    per_channel: bool,
    bits: i64,
    group_size: GroupSizeArg,
    symmetric: Option<bool>,
    method: Option<&str>,
    importance: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyPackedWeight>> {
    let spec = args::weight_spec(py, bits, per_channel, group_size, symmetric, method)?;
    if let Ok(w) = obj.cast::<PyPackedWeight>() {
        if importance.is_some() {
            return Err(value_error(format!(
                "importance calibrates the quantization of a float weight; {name} is already a \
                 PackedWeight"
            )));
        }
        return Ok(w.clone());
    }
    let importance = importance_arg(&spec, importance)?;
    let importance = importance.as_ref().map(|a| a.as_slice());
    let inner = pack_calibrated(py, obj, name, spec, importance)?;
    Bound::new(py, PyPackedWeight { inner })
}

/// ``ValueError`` unless ``granularity`` is ``"row"`` or ``"tensor"``.
#[pyfunction]
pub fn check_granularity(py: Python<'_>, granularity: &str) -> PyResult<()> {
    args::granularity(py, granularity).map(|_| ())
}
