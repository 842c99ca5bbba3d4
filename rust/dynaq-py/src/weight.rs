//! `PackedWeight`: the Python face of `dynaq_core::PackedWeight`, and `pack_weight`.

use crate::args::{self, detach, float_array, int8_array};
use crate::errors::{named, shape, to_py, type_error, value_error, Role};
use dynaq_core::isa::active_isa;
use dynaq_core::pack::PackedB;
use dynaq_core::PackedWeight;
use numpy::ndarray::ArrayView1;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A weight quantized once to symmetric int8 (one scale per output channel, or one in all),
/// in the layout every kernel path reads. The layout does not depend on the CPU: a weight
/// packed on one machine, or on one path, computes the same results on every other.
///
/// Build one with :func:`dynaq.pack_weight` or :meth:`PackedWeight.from_quantized`. It is
/// immutable and can be shared between threads; it pickles, and ``to_bytes()`` /
/// ``PackedWeight.from_bytes()`` give its versioned serialized form.
#[pyclass(module = "dynaq", name = "PackedWeight", frozen)]
pub struct PyPackedWeight {
    pub(crate) inner: PackedWeight,
}

/// Quantizes a float weight `(out_features, in_features)` (the ``torch.nn.Linear``
/// convention), naming it `name` in errors.
pub fn pack(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    name: &str,
    per_channel: bool,
) -> PyResult<PackedWeight> {
    let w = float_array(weight, name)?;
    let &[n, k] = w.shape() else {
        return Err(value_error(format!(
            "{name} must be 2-D (out_features, in_features), got shape {}",
            shape(w.shape())
        )));
    };
    let isa = active_isa();
    let ws = w.as_slice();
    detach(py, || PackedWeight::from_float(isa, ws, n, k, per_channel))
        .map_err(|e| named(e, name, Role::Weight))
}

/// Quantize a float weight once to symmetric int8 for the kernels.
///
/// Parameters
/// ----------
/// weight : array_like of float, shape (out_features, in_features)
///     The ``torch.nn.Linear`` convention. float64 and float16 are converted.
/// per_channel : bool
///     One scale per output channel (default, more accurate) or one for the whole tensor.
///
/// Returns
/// -------
/// PackedWeight
///
/// Raises
/// ------
/// TypeError
///     When ``weight`` is not a float array.
/// ValueError
///     When it is not 2-D, has more than 2**24 columns, or holds NaN or infinity (always
///     checked: a non-finite weight would poison every call).
#[pyfunction]
#[pyo3(signature = (weight, *, per_channel = true))]
pub fn pack_weight(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    per_channel: bool,
) -> PyResult<PyPackedWeight> {
    Ok(PyPackedWeight {
        inner: pack(py, weight, "weight", per_channel)?,
    })
}

/// int8 values and float32 scales.
type Unpacked<'py> = (Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>);

/// Quantized weight values: an int8 array `(out_features, in_features)` (`TypeError` /
/// `ValueError` naming `name` otherwise), with its two dimensions.
pub fn int8_values<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<(args::Array<'py, i8>, usize, usize)> {
    let v = match int8_array(obj, name, false, true, "an int8 array")? {
        args::Int8Array::I8(v) => v,
        args::Int8Array::U8(_) => unreachable!("only int8 was allowed"),
    };
    let &[n, k] = v.shape() else {
        return Err(value_error(format!(
            "{name} must be 2-D (out_features, in_features), got shape {}",
            shape(v.shape())
        )));
    };
    Ok((v, n, k))
}

/// Whether scales of shape `dims` are per channel (`(n,)`) or per tensor (a scalar or `(1,)`);
/// `ValueError` otherwise, the message ending with `context`.
fn per_channel_scales(dims: &[usize], n: usize, context: &str) -> PyResult<bool> {
    match dims {
        [] => Ok(false),
        [1] if n != 1 => Ok(false),
        [c] if *c == n => Ok(true),
        other => Err(value_error(format!(
            "scales must have shape ({n},) (per channel) or be a scalar (per tensor); got shape \
             {}{context}",
            shape(other)
        ))),
    }
}

#[pymethods]
impl PyPackedWeight {
    /// A ``PackedWeight`` from already-quantized values.
    ///
    /// Parameters
    /// ----------
    /// values : array_like of int8, shape (out_features, in_features)
    ///     Each in [-127, 127].
    /// scales : array_like of float
    ///     Finite and positive: shape (out_features,) for one scale per output channel, or a
    ///     scalar / shape (1,) for one per tensor.
    #[staticmethod]
    fn from_quantized(
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (v, n, k) = int8_values(values, "values")?;
        let s = float_array(scales, "scales")?;
        let per_channel = per_channel_scales(
            s.shape(),
            n,
            &format!(" for values of shape {}", shape(v.shape())),
        )?;
        let (vs, ss) = (v.as_slice(), s.as_slice());
        let inner = detach(py, || {
            PackedWeight::from_quantized(vs, ss, n, k, per_channel)
        })
        .map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// A ``PackedWeight`` from panels in the packed layout, as :attr:`panels` of another
    /// weight gave them (kept, for example, in a torch buffer), and its scales.
    ///
    /// Parameters
    /// ----------
    /// panels : array_like of int8, shape (PackedWeight.panels_size(out_features, in_features),)
    ///     Values in [-127, 127]; the padding zero.
    /// scales : array_like of float
    ///     As :meth:`from_quantized` takes them.
    /// out_features, in_features : int
    #[staticmethod]
    fn from_panels(
        py: Python<'_>,
        panels: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
        out_features: usize,
        in_features: usize,
    ) -> PyResult<Self> {
        let p = match int8_array(panels, "panels", false, true, "an int8 array")? {
            args::Int8Array::I8(v) => v,
            args::Int8Array::U8(_) => unreachable!("only int8 was allowed"),
        };
        if p.shape().len() != 1 {
            return Err(value_error(format!(
                "panels must be 1-D, got shape {}",
                shape(p.shape())
            )));
        }
        let s = float_array(scales, "scales")?;
        let n = out_features;
        let per_channel = per_channel_scales(s.shape(), n, "")?;
        let (ps, ss) = (p.as_slice(), s.as_slice());
        let inner = detach(py, || {
            PackedWeight::from_panels(ps.to_vec(), ss, n, in_features, per_channel)
        })
        .map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// Bytes of the packed panels of an ``(out_features, in_features)`` weight (the length of
    /// :attr:`panels`).
    #[staticmethod]
    fn panels_size(out_features: usize, in_features: usize) -> PyResult<usize> {
        PackedB::panels_len(out_features, in_features).map_err(to_py)
    }

    /// The packed panels: a read-only int8 view (no copy) of the memory the kernels read, in
    /// the layout that is the same on every CPU (``PackedWeight.from_panels`` takes it back).
    #[getter]
    fn panels<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray1<i8>>> {
        let view = ArrayView1::from(slf.get().inner.packed().data());
        // SAFETY: the panels live in this frozen object's `PackedWeight`, which is never
        // modified, moved out of or reallocated; the array keeps this object (its base) alive,
        // so the memory outlives the array.
        let array = unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) };
        array.readwrite().make_nonwriteable();
        Ok(array)
    }

    /// Reads bytes written by :meth:`to_bytes` (any version this build knows).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = detach(py, || PackedWeight::from_bytes(data)).map_err(to_py)?;
        Ok(PyPackedWeight { inner })
    }

    /// The versioned serialized form (the same on every CPU and path).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = detach(py, || self.inner.to_bytes());
        PyBytes::new(py, &b)
    }

    /// ``(out_features, in_features)``.
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

    /// The scales (float32; ``(out_features,)`` per channel, ``(1,)`` per tensor).
    #[getter]
    fn scales<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.inner.scales().to_vec().into_pyarray(py)
    }

    /// Bytes of memory the packed weight holds.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// ``(values, scales)``: int8 ``(out_features, in_features)`` and float32 scales.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Unpacked<'py>> {
        let (n, k) = (self.inner.n(), self.inner.k());
        let v = detach(py, || self.inner.values());
        Ok((v.into_pyarray(py).reshape([n, k])?, self.scales(py)))
    }

    /// ``values * scale`` as float32 ``(out_features, in_features)``.
    fn dequantize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (n, k) = (self.inner.n(), self.inner.k());
        let v = detach(py, || self.inner.dequantize());
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
        Err(type_error("unhashable type: 'PackedWeight'"))
    }

    fn __repr__(&self) -> String {
        format!(
            "PackedWeight(out_features={}, in_features={}, per_channel={}, nbytes={})",
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
