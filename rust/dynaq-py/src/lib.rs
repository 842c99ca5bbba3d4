//! `dynaq._dynaq`: the PyO3 glue around `dynaq-core`.
//!
//! Glue only: arguments arrive as C-contiguous numpy arrays of the right dtype (the Python layer in
//! `python/dynaq/` converts and validates them, naming the user's argument in its errors), every
//! kernel runs inside `py.detach` (the GIL is released), and core errors map to Python
//! exceptions: `Overflow` -> `OverflowError`, `Memory` -> `MemoryError`, the rest -> `ValueError`.

use dynaq_core::isa::{self, Isa};
use dynaq_core::ops::{self, Int8Data, MatmulShape};
use dynaq_core::quant::{quantize_i8_rows, quantize_u8_rows, Granularity, Scheme};
use dynaq_core::{threads, Error, PackedWeight};
use numpy::{
    Element, IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1,
    PyReadonlyArray2, PyReadonlyArray3, PyReadonlyArrayDyn, PyReadwriteArray2, PyReadwriteArray3,
    PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Overflow(m) => PyOverflowError::new_err(m),
        Error::Memory(m) => PyMemoryError::new_err(m),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn contiguous<'a, T>(r: Result<&'a [T], numpy::AsSliceError>, what: &str) -> PyResult<&'a [T]> {
    r.map_err(|_| PyValueError::new_err(format!("{what} must be C-contiguous")))
}

fn granularity(per_row: bool) -> Granularity {
    if per_row {
        Granularity::Row
    } else {
        Granularity::Tensor
    }
}

/// ONNX DynamicQuantizeLinear of a contiguous float32 array into `out` (uint8, same size).
#[pyfunction]
fn dynamic_quantize_linear(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    mut out: PyReadwriteArrayDyn<'_, u8>,
    check_finite: bool,
) -> PyResult<(f32, u8)> {
    let xs = contiguous(x.as_slice(), "x")?;
    let os = out
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
    let isa = isa::active_isa();
    py.detach(|| ops::dynamic_quantize_linear(isa, xs, os, check_finite))
        .map_err(to_py)
}

type U8Quant<'py> = (
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<u8>>,
);

/// int8 values and float32 scales.
type I8Quant<'py> = (Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>);

/// Asymmetric uint8 quantization of a (rows, cols) float32 array, per row or per tensor.
#[pyfunction]
fn quantize_u8<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    per_row: bool,
    check_finite: bool,
) -> PyResult<U8Quant<'py>> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(x.as_slice(), "x")?;
    let isa = isa::active_isa();
    let groups = if per_row { rows } else { 1 };
    let (v, s, z) = py
        .detach(|| -> dynaq_core::Result<_> {
            let mut v = ops::zeroed::<u8>(rows * cols, "quantized values")?;
            let (mut s, mut z) = (vec![0f32; groups], vec![0u8; groups]);
            quantize_u8_rows(
                isa,
                xs,
                rows,
                cols,
                granularity(per_row),
                Scheme::Robust,
                check_finite,
                "x",
                &mut v,
                cols,
                &mut s,
                &mut z,
            )?;
            Ok((v, s, z))
        })
        .map_err(to_py)?;
    let v = v.into_pyarray(py).reshape([rows, cols])?;
    Ok((v, s.into_pyarray(py), z.into_pyarray(py)))
}

/// Symmetric int8 quantization of a (rows, cols) float32 array, per row or per tensor.
#[pyfunction]
fn quantize_i8<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    per_row: bool,
    check_finite: bool,
) -> PyResult<I8Quant<'py>> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(x.as_slice(), "x")?;
    let isa = isa::active_isa();
    let groups = if per_row { rows } else { 1 };
    let (v, s) = py
        .detach(|| -> dynaq_core::Result<_> {
            let mut v = ops::zeroed::<i8>(rows * cols, "quantized values")?;
            let mut s = vec![0f32; groups];
            quantize_i8_rows(
                isa,
                xs,
                rows,
                cols,
                granularity(per_row),
                check_finite,
                "x",
                &mut v,
                &mut s,
            )?;
            Ok((v, s))
        })
        .map_err(to_py)?;
    Ok((
        v.into_pyarray(py).reshape([rows, cols])?,
        s.into_pyarray(py),
    ))
}

/// A float weight quantized to symmetric int8 and packed for this CPU's kernels.
///
/// Build one with `dynaq.pack_weight(weight)`; see the Python docs for the full interface.
#[pyclass(module = "dynaq", name = "PackedWeight", frozen)]
struct PyPackedWeight {
    inner: PackedWeight,
}

#[pymethods]
impl PyPackedWeight {
    /// Quantizes and packs a C-contiguous float32 (out_features, in_features) array.
    #[staticmethod]
    fn _from_float(
        py: Python<'_>,
        weight: PyReadonlyArray2<'_, f32>,
        per_channel: bool,
    ) -> PyResult<Self> {
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let ws = contiguous(weight.as_slice(), "weight")?;
        let isa = isa::active_isa();
        let inner = py
            .detach(|| PackedWeight::from_float(isa, ws, n, k, per_channel))
            .map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// A `PackedWeight` from already-quantized values.
    ///
    /// `values`: int8 array `(out_features, in_features)`, each in `[-127, 127]`. `scales`: float32
    /// (float64 converted), finite and positive: shape `(out_features,)` for one scale per output
    /// channel, or a scalar / shape `(1,)` for one per tensor.
    #[staticmethod]
    fn from_quantized(
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let prepared = py
            .import("dynaq._functional")?
            .getattr("_prepare_quantized_weight")?
            .call1((values, scales))?;
        let (v, s, per_channel): (PyReadonlyArray2<'_, i8>, PyReadonlyArray1<'_, f32>, bool) =
            prepared.extract()?;
        Self::_from_quantized(py, v, s, per_channel)
    }

    /// Wraps int8 values (C-contiguous (out, in)) and float32 scales ((out,) or (1,)).
    #[staticmethod]
    fn _from_quantized(
        py: Python<'_>,
        values: PyReadonlyArray2<'_, i8>,
        scales: PyReadonlyArray1<'_, f32>,
        per_channel: bool,
    ) -> PyResult<Self> {
        let (n, k) = (values.shape()[0], values.shape()[1]);
        let vs = contiguous(values.as_slice(), "values")?;
        let ss = contiguous(scales.as_slice(), "scales")?;
        let inner = py
            .detach(|| PackedWeight::from_quantized(vs, ss, n, k, per_channel))
            .map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// Reads bytes written by `to_bytes()` (any version this build knows), packing for this CPU.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py
            .detach(|| PackedWeight::from_bytes(data))
            .map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// The versioned, ISA-independent serialized form.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = py.detach(|| self.inner.to_bytes());
        PyBytes::new(py, &b)
    }

    /// `(out_features, in_features)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.inner.n(), self.inner.k())
    }

    /// Number of output channels.
    #[getter]
    fn out_features(&self) -> usize {
        self.inner.n()
    }

    /// Length of each input row.
    #[getter]
    fn in_features(&self) -> usize {
        self.inner.k()
    }

    /// Whether each output channel has its own scale.
    #[getter]
    fn per_channel(&self) -> bool {
        self.inner.per_channel()
    }

    /// The scales (float32; `(out_features,)` per channel, `(1,)` per tensor).
    #[getter]
    fn scales<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.inner.scales().to_vec().into_pyarray(py)
    }

    /// Bytes of memory the packed weight holds.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// The packing format of the panels.
    #[getter]
    fn layout(&self) -> &'static str {
        "K4N16"
    }

    /// `(values, scales)`: int8 `(out_features, in_features)` and float32 scales.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<I8Quant<'py>> {
        let (n, k) = (self.inner.n(), self.inner.k());
        let v = py.detach(|| self.inner.values());
        Ok((v.into_pyarray(py).reshape([n, k])?, self.scales(py)))
    }

    /// `values * scale` as float32 `(out_features, in_features)`.
    fn dequantize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (n, k) = (self.inner.n(), self.inner.k());
        let v = py.detach(|| self.inner.dequantize());
        v.into_pyarray(py).reshape([n, k])
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let py = slf.py();
        let ctor = py.get_type::<PyPackedWeight>().getattr("from_bytes")?;
        Ok((ctor, (slf.get().to_bytes(py),)))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyPackedWeight>() {
            Ok(o) => self.inner == o.get().inner,
            Err(_) => false,
        }
    }

    fn __hash__(&self) -> PyResult<isize> {
        Err(PyTypeError::new_err("unhashable type: 'PackedWeight'"))
    }

    fn __repr__(&self) -> String {
        format!(
            "PackedWeight(out_features={}, in_features={}, per_channel={}, layout=K4N16, \
             nbytes={})",
            self.inner.n(),
            self.inner.k(),
            if self.inner.per_channel() {
                "True"
            } else {
                "False"
            },
            self.inner.nbytes()
        )
    }
}

/// Rows of `x`, and `x`, `bias`, `out` as slices (each C-contiguous, or a ValueError naming it).
type LinearOperands<'a> = (usize, &'a [f32], Option<&'a [f32]>, &'a mut [f32]);

fn linear_operands<'a>(
    x: &'a PyReadonlyArray2<'_, f32>,
    bias: &'a Option<PyReadonlyArray1<'_, f32>>,
    out: &'a mut PyReadwriteArray2<'_, f32>,
) -> PyResult<LinearOperands<'a>> {
    let bs = match bias {
        Some(b) => Some(contiguous(b.as_slice(), "bias")?),
        None => None,
    };
    let os = out
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
    Ok((x.shape()[0], contiguous(x.as_slice(), "x")?, bs, os))
}

/// The fused dynamic-quantization linear layer on C-contiguous 2-D arrays.
#[pyfunction]
fn linear(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    weight: &Bound<'_, PyPackedWeight>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    per_row: bool,
    check_finite: bool,
    mut out: PyReadwriteArray2<'_, f32>,
) -> PyResult<()> {
    let (m, xs, bs, os) = linear_operands(&x, &bias, &mut out)?;
    let w = &weight.get().inner;
    let isa = isa::active_isa();
    py.detach(|| ops::linear(isa, xs, m, w, bs, granularity(per_row), check_finite, os))
        .map_err(to_py)
}

/// `linear` with static activation quantization (fixed scale and zero point for every row).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn linear_static(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    weight: &Bound<'_, PyPackedWeight>,
    bias: Option<PyReadonlyArray1<'_, f32>>,
    scale: f32,
    zero_point: u8,
    check_finite: bool,
    mut out: PyReadwriteArray2<'_, f32>,
) -> PyResult<()> {
    let (m, xs, bs, os) = linear_operands(&x, &bias, &mut out)?;
    let w = &weight.get().inner;
    let isa = isa::active_isa();
    py.detach(|| ops::linear_static(isa, xs, m, w, bs, scale, zero_point, check_finite, os))
        .map_err(to_py)
}

fn index_vec(ix: &PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Vec<usize>> {
    contiguous(ix.as_slice(), what)?
        .iter()
        .map(|&v| {
            usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{what}: negative index")))
        })
        .collect()
}

/// Batched ONNX MatMulInteger on contiguous stacks: a (count_a, m, k), b (count_b, k, n), uint8
/// or int8; `a_index`/`b_index` map each output batch to its operands; zero points are int32
/// arrays of 1 value or one per output batch row/column.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn matmul_integer(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    a_index: PyReadonlyArray1<'_, i64>,
    b: &Bound<'_, PyAny>,
    b_index: PyReadonlyArray1<'_, i64>,
    a_zero_point: PyReadonlyArray1<'_, i32>,
    b_zero_point: PyReadonlyArray1<'_, i32>,
    mut out: PyReadwriteArray3<'_, i32>,
) -> PyResult<()> {
    let (au8, ai8) = (
        a.extract::<PyReadonlyArray3<'_, u8>>().ok(),
        a.extract::<PyReadonlyArray3<'_, i8>>().ok(),
    );
    let (bu8, bi8) = (
        b.extract::<PyReadonlyArray3<'_, u8>>().ok(),
        b.extract::<PyReadonlyArray3<'_, i8>>().ok(),
    );
    let (a_data, m, k) = match (&au8, &ai8) {
        (Some(v), _) => (
            Int8Data::U8(contiguous(v.as_slice(), "a")?),
            v.shape()[1],
            v.shape()[2],
        ),
        (_, Some(v)) => (
            Int8Data::I8(contiguous(v.as_slice(), "a")?),
            v.shape()[1],
            v.shape()[2],
        ),
        _ => return Err(PyTypeError::new_err("a must be a 3-D uint8 or int8 array")),
    };
    let (b_data, kb, n) = match (&bu8, &bi8) {
        (Some(v), _) => (
            Int8Data::U8(contiguous(v.as_slice(), "b")?),
            v.shape()[1],
            v.shape()[2],
        ),
        (_, Some(v)) => (
            Int8Data::I8(contiguous(v.as_slice(), "b")?),
            v.shape()[1],
            v.shape()[2],
        ),
        _ => return Err(PyTypeError::new_err("b must be a 3-D uint8 or int8 array")),
    };
    if kb != k {
        return Err(PyValueError::new_err(format!(
            "inner dimensions differ: a has K = {k}, b has K = {kb}"
        )));
    }
    let batch = out.shape()[0];
    if out.shape()[1] != m || out.shape()[2] != n {
        return Err(PyValueError::new_err("out has the wrong shape"));
    }
    let ai = index_vec(&a_index, "a_index")?;
    let bi = index_vec(&b_index, "b_index")?;
    let za = contiguous(a_zero_point.as_slice(), "a_zero_point")?;
    let zb = contiguous(b_zero_point.as_slice(), "b_zero_point")?;
    let os = out
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
    let isa = isa::active_isa();
    let shape = MatmulShape { batch, m, k, n };
    py.detach(|| ops::matmul_integer(isa, shape, a_data, &ai, b_data, &bi, za, zb, os))
        .map_err(to_py)
}

// ---------------------------------------------------------------------------------------------
// Fast paths: the common, already-valid call handled in one native step (about 0.5 us instead of
// 2-3 us of Python checks and conversions). Each returns `None` whenever anything is unusual
// (dtype, contiguity, shape, aliasing, read-only output), and the Python layer then takes its
// general path, which converts what it can and raises the precise error otherwise.
// ---------------------------------------------------------------------------------------------

/// A C-contiguous float32 array, or `None`.
fn f32_array<'a, 'py>(obj: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, PyArrayDyn<f32>>> {
    obj.cast::<PyArrayDyn<f32>>()
        .ok()
        .filter(|a| a.is_c_contiguous())
}

/// The byte range an array's data occupies (C-contiguous arrays only).
fn byte_range<T: Element>(a: &Bound<'_, PyArrayDyn<T>>) -> std::ops::Range<usize> {
    let start = a.data() as usize;
    start..start + a.len() * std::mem::size_of::<T>()
}

fn overlaps(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    a.start < b.end && b.start < a.end && !a.is_empty() && !b.is_empty()
}

/// Outputs larger than this are left to the Python path: numpy reports a failed allocation as
/// `MemoryError` there, while rust-numpy's constructor would panic.
const FAST_ALLOC_MAX_BYTES: usize = 256 << 20;

/// Whether an output of `shape` is small enough for the fast paths to allocate.
fn fast_alloc_ok<T>(shape: &[usize]) -> bool {
    shape
        .iter()
        .try_fold(std::mem::size_of::<T>(), |acc, &d| acc.checked_mul(d))
        .is_some_and(|bytes| bytes <= FAST_ALLOC_MAX_BYTES)
}

/// A fresh C-contiguous array whose every element the caller writes before Python sees it.
///
/// # Safety
/// The caller must initialize every element (or drop the array unseen, as on an error), and
/// `shape` must pass [`fast_alloc_ok`].
unsafe fn uninit<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<T>> {
    debug_assert!(fast_alloc_ok::<T>(shape));
    // SAFETY: forwarded to the caller (numpy allocates; the contents are uninitialized).
    unsafe { PyArrayDyn::<T>::new(py, shape, false) }
}

/// `linear` for float32 C-contiguous `x`, a `PackedWeight`, a float32 `bias` or None and a valid
/// `out` or None; `None` for anything else.
#[pyfunction]
fn linear_fast<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    granularity: &str,
    out: &Bound<'py, PyAny>,
    check_finite: bool,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let per_row = match granularity {
        "row" => true,
        "tensor" => false,
        _ => return Ok(None),
    };
    let (Some(x), Ok(w)) = (f32_array(x), weight.cast::<PyPackedWeight>()) else {
        return Ok(None);
    };
    let w = &w.get().inner;
    let (n, k) = (w.n(), w.k());
    let shape = x.shape();
    let Some((&last, lead)) = shape.split_last() else {
        return Ok(None);
    };
    if last != k {
        return Ok(None);
    }
    let m: usize = lead.iter().product();
    let bias = if bias.is_none() {
        None
    } else {
        match f32_array(bias) {
            Some(b) if b.ndim() == 1 && b.len() == n => Some(b),
            _ => return Ok(None),
        }
    };
    let mut out_shape = lead.to_vec();
    out_shape.push(n);
    if !fast_alloc_ok::<f32>(&out_shape) {
        return Ok(None);
    }
    let out = if out.is_none() {
        // SAFETY: `ops::linear` writes every element of its output (the bias alone when
        // k == 0); on an error the array is dropped without reaching Python.
        unsafe { uninit::<f32>(py, &out_shape) }
    } else {
        match f32_array(out) {
            Some(o) if o.shape() == out_shape.as_slice() => {
                let r = byte_range(o);
                let aliased = overlaps(&r, &byte_range(x))
                    || bias.is_some_and(|b| overlaps(&r, &byte_range(b)));
                if aliased {
                    return Ok(None);
                }
                o.clone()
            }
            _ => return Ok(None),
        }
    };
    if m * n > 0 {
        // A read-only `out` fails here; the Python path then names the problem.
        let Ok(mut or) = out.try_readwrite() else {
            return Ok(None);
        };
        let Ok(xr) = x.try_readonly() else {
            return Ok(None);
        };
        let br = match bias.map(|b| b.try_readonly()).transpose() {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let xs = contiguous(xr.as_slice(), "x")?;
        let bs = match &br {
            Some(b) => Some(contiguous(b.as_slice(), "bias")?),
            None => None,
        };
        let os = or
            .as_slice_mut()
            .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
        let isa = isa::active_isa();
        let gran = granularity_of(per_row);
        py.detach(|| ops::linear(isa, xs, m, w, bs, gran, check_finite, os))
            .map_err(to_py)?;
    }
    Ok(Some(out.into_any()))
}

/// Three Python objects (values, scale, zero point).
type Triple<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);

/// `quantize` for a float32 C-contiguous `x`: `(values, scale, zero_point)` shaped for the
/// Python `QuantizedTensor`, or `None`.
#[pyfunction]
fn quantize_fast<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    granularity: &str,
    symmetric: bool,
    check_finite: bool,
) -> PyResult<Option<Triple<'py>>> {
    let Some(x) = f32_array(x) else {
        return Ok(None);
    };
    let shape = x.shape().to_vec();
    let (rows, cols, group_shape): (usize, usize, Vec<usize>) = match granularity {
        "tensor" => (1, x.len(), Vec::new()),
        "row" => match shape.split_last() {
            Some((&c, lead)) => (lead.iter().product(), c, lead.to_vec()),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    if !fast_alloc_ok::<f32>(&shape) {
        return Ok(None);
    }
    let per_row = granularity == "row";
    let groups = if per_row { rows } else { 1 };
    let Ok(xr) = x.try_readonly() else {
        return Ok(None);
    };
    let xs = contiguous(xr.as_slice(), "x")?;
    let isa = isa::active_isa();
    let gran = granularity_of(per_row);
    // SAFETY: the quantizer writes every scale; on an error the array is dropped unseen.
    let scale = unsafe { uninit::<f32>(py, &group_shape) };
    if symmetric {
        // SAFETY: the quantizer writes every value; on an error the array is dropped unseen.
        let values = unsafe { uninit::<i8>(py, &shape) };
        {
            let (mut vw, mut sw) = (values.readwrite(), scale.readwrite());
            let (vs, ss) = (slice_mut(&mut vw)?, slice_mut(&mut sw)?);
            py.detach(|| quantize_i8_rows(isa, xs, rows, cols, gran, check_finite, "x", vs, ss))
                .map_err(to_py)?;
        }
        let zp = PyArrayDyn::<i8>::zeros(py, group_shape.as_slice(), false);
        Ok(Some((values.into_any(), scale.into_any(), zp.into_any())))
    } else {
        // SAFETY: the quantizer writes every value; on an error the array is dropped unseen.
        let values = unsafe { uninit::<u8>(py, &shape) };
        // SAFETY: the quantizer writes every zero point; on an error the array is dropped unseen.
        let zp = unsafe { uninit::<u8>(py, &group_shape) };
        {
            let (mut vw, mut sw, mut zw) = (values.readwrite(), scale.readwrite(), zp.readwrite());
            let (vs, ss, zs) = (
                slice_mut(&mut vw)?,
                slice_mut(&mut sw)?,
                slice_mut(&mut zw)?,
            );
            debug_assert_eq!(ss.len(), groups);
            py.detach(|| {
                quantize_u8_rows(
                    isa,
                    xs,
                    rows,
                    cols,
                    gran,
                    Scheme::Robust,
                    check_finite,
                    "x",
                    vs,
                    cols,
                    ss,
                    zs,
                )
            })
            .map_err(to_py)?;
        }
        Ok(Some((values.into_any(), scale.into_any(), zp.into_any())))
    }
}

/// `dynamic_quantize_linear` for a float32 C-contiguous `x`: `(y, scale, zero_point)`, or `None`.
#[pyfunction]
fn dql_fast<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    check_finite: bool,
) -> PyResult<Option<(Bound<'py, PyAny>, f32, u8)>> {
    let Some(x) = f32_array(x) else {
        return Ok(None);
    };
    if !fast_alloc_ok::<f32>(x.shape()) {
        return Ok(None);
    }
    // SAFETY: the quantizer writes every element (the size passed `fast_alloc_ok`); on an error
    // the array is dropped unseen.
    let y = unsafe { uninit::<u8>(py, x.shape()) };
    let Ok(xr) = x.try_readonly() else {
        return Ok(None);
    };
    let (s, z) = {
        let mut yw = y.readwrite();
        let xs = contiguous(xr.as_slice(), "x")?;
        let ys = slice_mut(&mut yw)?;
        let isa = isa::active_isa();
        py.detach(|| ops::dynamic_quantize_linear(isa, xs, ys, check_finite))
            .map_err(to_py)?
    };
    Ok(Some((y.into_any(), s, z)))
}

fn slice_mut<'a, T: Element>(a: &'a mut PyReadwriteArrayDyn<'_, T>) -> PyResult<&'a mut [T]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err("output is not contiguous"))
}

fn granularity_of(per_row: bool) -> Granularity {
    granularity(per_row)
}

/// CPU features this build checks, as (name, present) pairs.
#[pyfunction]
fn cpu_features() -> Vec<(&'static str, bool)> {
    isa::cpu_features()
}

/// The kernel paths this CPU supports, in cap order.
#[pyfunction]
fn detected_isas() -> Vec<&'static str> {
    isa::detected().iter().map(|i| i.name()).collect()
}

/// Every path name of this architecture, supported or not.
#[pyfunction]
fn arch_isas() -> Vec<&'static str> {
    Isa::of_this_arch().iter().map(|i| i.name()).collect()
}

/// Every path name dynaq knows, on any architecture.
#[pyfunction]
fn all_isas() -> Vec<&'static str> {
    Isa::ALL.iter().map(|i| i.name()).collect()
}

/// The path kernels run on now.
#[pyfunction]
fn active_isa() -> &'static str {
    isa::active_isa().name()
}

/// The cap in force.
#[pyfunction]
fn max_isa() -> &'static str {
    isa::max_isa().name()
}

/// Caps the path (`None` lifts the cap); returns the active path.
#[pyfunction]
#[pyo3(signature = (name=None))]
fn set_max_isa(name: Option<&str>) -> PyResult<&'static str> {
    let isa = name.map(Isa::from_name).transpose().map_err(to_py)?;
    isa::set_max_isa(isa).map(|i| i.name()).map_err(to_py)
}

/// The warning from reading `DYNAQ_MAX_ISA`, if its value was unusable.
#[pyfunction]
fn env_warning() -> Option<String> {
    isa::env_warning()
}

/// Operation name -> kernel name on the active path.
#[pyfunction]
fn kernels<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for k in dynaq_core::dispatch::kernel_report() {
        d.set_item(k.op, k.kernel)?;
    }
    Ok(d)
}

/// Threads the kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

/// Sets the number of threads.
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    threads::set_num_threads(n).map_err(to_py)
}

/// Physical cores available to this process.
#[pyfunction]
fn physical_cores() -> usize {
    threads::physical_cores()
}

/// Runs multi-threaded GEMMs on the OpenMP team of the runtime at `path`, a library already
/// loaded in this process (PyTorch's `libgomp`), or on dynaq's own pool again (`None`).
/// Raises OSError when `path` is not loaded or exports no `GOMP_parallel`.
#[pyfunction]
#[pyo3(signature = (path))]
fn share_openmp_team(path: Option<&str>) -> PyResult<()> {
    let Some(path) = path else {
        // SAFETY: `None` unregisters; no address is used.
        unsafe { threads::share_openmp_team(None) };
        return Ok(());
    };
    #[cfg(unix)]
    {
        let addr = openmp_symbol(path).map_err(pyo3::exceptions::PyOSError::new_err)?;
        // SAFETY: `addr` is `GOMP_parallel` of a library that was already loaded; the handle
        // from `dlopen` is never closed, so the library stays loaded for the process.
        unsafe { threads::share_openmp_team(Some(addr)) };
        Ok(())
    }
    #[cfg(not(unix))]
    {
        Err(pyo3::exceptions::PyOSError::new_err(format!(
            "sharing an OpenMP team is not supported on this platform ({path})"
        )))
    }
}

/// `GOMP_parallel` of the already loaded library `path` (never loads one).
#[cfg(unix)]
fn openmp_symbol(path: &str) -> Result<usize, String> {
    let c_path = std::ffi::CString::new(path).map_err(|_| format!("bad library path {path:?}"))?;
    // SAFETY: `c_path` is a NUL-terminated string; RTLD_NOLOAD only returns a handle to a
    // library already in the process (no initializers run), and the handle is deliberately
    // never closed.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return Err(format!("{path} is not loaded in this process"));
    }
    // SAFETY: `handle` is a valid handle and the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"GOMP_parallel".as_ptr()) };
    if sym.is_null() {
        return Err(format!("{path} has no GOMP_parallel"));
    }
    Ok(sym as usize)
}

/// Whether multi-threaded GEMMs run on a shared OpenMP team.
#[pyfunction]
fn sharing_openmp_team() -> bool {
    threads::sharing_openmp_team()
}

#[pymodule]
fn _dynaq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPackedWeight>()?;
    m.add_function(wrap_pyfunction!(dynamic_quantize_linear, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_u8, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_i8, m)?)?;
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_integer, m)?)?;
    m.add_function(wrap_pyfunction!(linear_fast, m)?)?;
    m.add_function(wrap_pyfunction!(linear_static, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_fast, m)?)?;
    m.add_function(wrap_pyfunction!(dql_fast, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(detected_isas, m)?)?;
    m.add_function(wrap_pyfunction!(arch_isas, m)?)?;
    m.add_function(wrap_pyfunction!(all_isas, m)?)?;
    m.add_function(wrap_pyfunction!(active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(max_isa, m)?)?;
    m.add_function(wrap_pyfunction!(set_max_isa, m)?)?;
    m.add_function(wrap_pyfunction!(env_warning, m)?)?;
    m.add_function(wrap_pyfunction!(kernels, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(physical_cores, m)?)?;
    m.add_function(wrap_pyfunction!(share_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(sharing_openmp_team, m)?)?;
    m.add("ARCH", std::env::consts::ARCH)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", dynaq_core::weight::FORMAT_VERSION)?;
    m.add("MAX_K", dynaq_core::pack::MAX_K)?;
    Ok(())
}
