//! `PackedWeight`: the Python face of `dynaq_core::PackedWeight`, and `pack_weight`.

use crate::args::{self, detach, float_array, int8_array, Array, GroupSizeArg, WeightSpec};
use crate::errors::{named, shape, to_py, type_error, value_error, Role};
use dynaq_core::int4::Int4Weight;
use dynaq_core::isa::active_isa;
use dynaq_core::pack::PackedB;
use dynaq_core::PackedWeight;
use numpy::ndarray::ArrayView1;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// A weight quantized once, in the layout every kernel path reads: symmetric int8 (one scale per
/// output channel, or one in all), or 4-bit levels with a scale and minimum per group of 32, 64
/// or 128 along the input features (or per output channel). The layout does not depend on the
/// CPU: a weight packed on one machine, or on one path, computes the same results on every
/// other.
///
/// Build one with :func:`dynaq.pack_weight` or :meth:`PackedWeight.from_quantized`. It is
/// immutable and can be shared between threads; it pickles, and ``to_bytes()`` /
/// ``PackedWeight.from_bytes()`` give its versioned serialized form.
#[pyclass(module = "dynaq", name = "PackedWeight", frozen)]
pub struct PyPackedWeight {
    pub(crate) inner: PackedWeight,
}

/// Quantizes a float weight `(out_features, in_features)` (the ``torch.nn.Linear``
/// convention) to int8, naming it `name` in errors.
pub fn pack(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    name: &str,
    per_channel: bool,
) -> PyResult<PackedWeight> {
    pack_as(py, weight, name, WeightSpec::Int8 { per_channel })
}

/// Quantizes a float weight as `spec` says, naming it `name` in errors.
pub fn pack_as(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    name: &str,
    spec: WeightSpec,
) -> PyResult<PackedWeight> {
    pack_calibrated(py, weight, name, spec, None)
}

/// The `importance` argument of a weight to pack with `spec`, checked: 4-bit only, a 1-D float
/// array (its length and values are checked by the core, against the weight).
pub fn importance_arg<'py>(
    spec: &WeightSpec,
    importance: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Array<'py, f32>>> {
    let Some(obj) = importance else {
        return Ok(None);
    };
    if matches!(spec, WeightSpec::Int8 { .. }) {
        return Err(value_error(
            "importance applies to 4-bit weights (bits=4): it weights the least-squares search \
             of their grids",
        ));
    }
    let a = float_array(obj, "importance")?;
    if a.shape().len() != 1 {
        return Err(value_error(format!(
            "importance must be 1-D (one value per input feature), got shape {}",
            shape(a.shape())
        )));
    }
    Ok(Some(a))
}

/// [`pack_as`], the 4-bit search weighted by `importance` (one value per input feature) when
/// given.
pub fn pack_calibrated(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    name: &str,
    spec: WeightSpec,
    importance: Option<&[f32]>,
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
    detach(py, || match spec {
        WeightSpec::Int8 { per_channel } => PackedWeight::from_float(isa, ws, n, k, per_channel),
        WeightSpec::Int4 {
            group,
            symmetric,
            method,
        } => PackedWeight::from_float_int4(ws, n, k, group, symmetric, method, importance),
    })
    .map_err(|e| match e {
        // E.g. a group size that does not divide K: say which weight (a layer has several).
        dynaq_core::Error::Shape(m) => value_error(format!("{m} ({name} has shape ({n}, {k}))")),
        e => named(e, name, Role::Weight),
    })
}

/// Quantize a float weight once for the kernels: to symmetric int8 (the default) or to 4 bits.
///
/// Parameters
/// ----------
/// weight : array_like of float, shape (out_features, in_features)
///     The ``torch.nn.Linear`` convention. float64 and float16 are converted.
/// per_channel : bool
///     int8: one scale per output channel (default, more accurate) or one for the whole
///     tensor. 4-bit weights are always per group or per channel.
/// bits : int
///     8 (default) or 4.
/// group_size : int or None
///     4-bit only: 32 (the default), 64 or 128 input features share a scale and a minimum
///     (the group size must divide ``in_features``); ``None`` gives one per output channel.
/// symmetric : bool
///     4-bit only: levels ``scale * (q - 8)`` instead of the default ``scale * q + minimum``.
/// method : str
///     4-bit only: ``"search"`` (default) chooses each group's scale and minimum by a
///     least-squares search, ``"rtn"`` by min-max round-to-nearest.
/// importance : array_like of float, shape (in_features,), optional
///     4-bit search only: calibrated quantization. One weight per input feature, finite and
///     >= 0, typically the mean of the squared activations over calibration data
///     (``(x_calib ** 2).mean(axis=0)``): the search then minimises
///     ``sum_k importance[k] * (w[n, k] - dequantized[n, k]) ** 2`` in each group instead of
///     the plain squared error, so the columns that see large activations are quantized more
///     finely (as llama.cpp's imatrix); never worse than the plain search in that error.
///     Only the choice of grids changes: the format, and what ``linear`` computes from it,
///     are the same. A group whose importance is uniform, all zero included (columns that
///     never see an activation), gets the plain search; ``None`` (the default) or all ones
///     give the plain weight, byte for byte. It takes 3-5 times as long as the plain search.
///
/// Returns
/// -------
/// PackedWeight
///
/// Raises
/// ------
/// TypeError
///     When ``weight`` is not a float array, or an unknown option is passed.
/// ValueError
///     When it is not 2-D, has more than 2**24 columns, or holds NaN or infinity (always
///     checked: a non-finite weight would poison every call); when ``bits`` is not 8 or 4, an
///     option does not apply to the bits asked for, or the group size is not 32, 64, 128 or
///     ``None`` or does not divide ``in_features``; when ``importance`` is given with
///     ``bits=8`` or ``method="rtn"``, is not 1-D with one value per input feature, holds NaN,
///     infinity or a negative value, or is all zero. (``TypeError`` when it is not a float
///     array.)
#[pyfunction]
#[pyo3(signature = (
    weight, *, per_channel = true, bits = 8, group_size = GroupSizeArg::Unset, symmetric = None,
    method = None, importance = None
))]
#[allow(clippy::too_many_arguments)]
pub fn pack_weight(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    per_channel: bool,
    bits: i64,
    group_size: GroupSizeArg,
    symmetric: Option<bool>,
    method: Option<&str>,
    importance: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyPackedWeight> {
    let spec = args::weight_spec(py, bits, per_channel, group_size, symmetric, method)?;
    let importance = importance_arg(&spec, importance)?;
    Ok(PyPackedWeight {
        inner: pack_calibrated(
            py,
            weight,
            "weight",
            spec,
            importance.as_ref().map(|a| a.as_slice()),
        )?,
    })
}

/// The format :func:`pack_weight` gives a weight of ``in_features`` columns with these options,
/// as ``(bits, group_size, symmetric, per_channel)``, raising what it would raise; without
/// quantizing anything (a model skeleton's shapes depend on it).
#[pyfunction]
#[pyo3(signature = (
    in_features, *, per_channel = true, bits = 8, group_size = GroupSizeArg::Unset,
    symmetric = None, method = None
))]
pub fn weight_format(
    py: Python<'_>,
    in_features: usize,
    per_channel: bool,
    bits: i64,
    group_size: GroupSizeArg,
    symmetric: Option<bool>,
    method: Option<&str>,
) -> PyResult<(u32, Option<usize>, bool, bool)> {
    match args::weight_spec(py, bits, per_channel, group_size, symmetric, method)? {
        WeightSpec::Int8 { per_channel } => Ok((8, None, true, per_channel)),
        WeightSpec::Int4 {
            group, symmetric, ..
        } => {
            // The checks a weight of this width gets (the group size must divide it).
            Int4Weight::code_panels_len(0, in_features, group).map_err(to_py)?;
            Ok((4, group, symmetric, true))
        }
    }
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

    /// A 4-bit ``PackedWeight`` from the memory its kernels read, as :attr:`panels`,
    /// :attr:`code_panels` and :attr:`row_factors` of another weight gave it (kept, for
    /// example, in torch buffers). Every part is checked: the lengths, the codes, the factors
    /// (finite, their grids within float32) and the padding (zero).
    ///
    /// Parameters
    /// ----------
    /// panels : array_like of uint8, shape (PackedWeight.panels_size(out_features, in_features, bits=4),)
    /// scale_codes, min_codes : array_like of uint8, shape (PackedWeight.code_panels_size(out_features, in_features, group_size),)
    /// row_scales, row_minima : array_like of float, shape (out_features,)
    /// out_features, in_features : int
    /// group_size : int or None
    ///     32, 64 or 128, or None for one scale per output channel.
    /// symmetric : bool
    #[staticmethod]
    #[pyo3(signature = (
        panels, scale_codes, min_codes, row_scales, row_minima, out_features, in_features, *,
        group_size, symmetric
    ))]
    #[allow(clippy::too_many_arguments)]
    fn from_int4_panels(
        py: Python<'_>,
        panels: &Bound<'_, PyAny>,
        scale_codes: &Bound<'_, PyAny>,
        min_codes: &Bound<'_, PyAny>,
        row_scales: &Bound<'_, PyAny>,
        row_minima: &Bound<'_, PyAny>,
        out_features: usize,
        in_features: usize,
        group_size: GroupSizeArg,
        symmetric: bool,
    ) -> PyResult<Self> {
        let bytes = |obj: &Bound<'_, PyAny>, name: &str| -> PyResult<Vec<u8>> {
            let a = match int8_array(obj, name, true, false, "a uint8 array")? {
                args::Int8Array::U8(v) => v,
                args::Int8Array::I8(_) => unreachable!("only uint8 was allowed"),
            };
            if a.shape().len() != 1 {
                return Err(value_error(format!(
                    "{name} must be 1-D, got shape {}",
                    shape(a.shape())
                )));
            }
            Ok(a.as_slice().to_vec())
        };
        let factors = |obj: &Bound<'_, PyAny>, name: &str| -> PyResult<Vec<f32>> {
            let a = float_array(obj, name)?;
            if a.shape() != [out_features] {
                return Err(value_error(format!(
                    "{name} must have shape ({out_features},), got shape {}",
                    shape(a.shape())
                )));
            }
            Ok(a.as_slice().to_vec())
        };
        let (p, cd, cm) = (
            bytes(panels, "panels")?,
            bytes(scale_codes, "scale_codes")?,
            bytes(min_codes, "min_codes")?,
        );
        let (fd, fm) = (
            factors(row_scales, "row_scales")?,
            factors(row_minima, "row_minima")?,
        );
        let group = group_size.size();
        let w = detach(py, || {
            Int4Weight::from_panels(
                out_features,
                in_features,
                group,
                symmetric,
                &p,
                &cd,
                &cm,
                fd,
                fm,
            )
        })
        .map_err(to_py)?;
        Ok(PyPackedWeight {
            inner: PackedWeight::from_int4(w),
        })
    }

    /// Bytes of the packed panels of an ``(out_features, in_features)`` weight of ``bits``
    /// bits (the length of :attr:`panels`).
    #[staticmethod]
    #[pyo3(signature = (out_features, in_features, bits = 8))]
    fn panels_size(out_features: usize, in_features: usize, bits: i64) -> PyResult<usize> {
        match bits {
            8 => PackedB::panels_len(out_features, in_features).map_err(to_py),
            4 => Int4Weight::panels_len(out_features, in_features).map_err(to_py),
            other => Err(value_error(format!("bits must be 8 or 4, got {other}"))),
        }
    }

    /// Bytes of each of the code panels (:attr:`code_panels`) of an ``(out_features,
    /// in_features)`` 4-bit weight in groups of ``group_size`` (None: per channel).
    #[staticmethod]
    fn code_panels_size(
        out_features: usize,
        in_features: usize,
        group_size: GroupSizeArg,
    ) -> PyResult<usize> {
        Int4Weight::code_panels_len(out_features, in_features, group_size.size()).map_err(to_py)
    }

    /// The packed panels: a read-only view (no copy) of the memory the kernels read, in the
    /// layout that is the same on every CPU. int8 weights: int8 values
    /// (``PackedWeight.from_panels`` takes them back); 4-bit weights: uint8, two levels per
    /// byte (``PackedWeight.from_int4_panels``).
    #[getter]
    fn panels<'py>(slf: Bound<'py, Self>) -> Bound<'py, PyAny> {
        let w = &slf.get().inner;
        match (w.int8(), w.int4()) {
            (Some(w8), _) => {
                // SAFETY: the panels live in this frozen object's weight.
                unsafe { own_view(&slf, w8.packed().data()) }.into_any()
            }
            (None, Some(w4)) => {
                // SAFETY: the panels live in this frozen object's weight.
                unsafe { own_view(&slf, w4.panels()) }.into_any()
            }
            (None, None) => unreachable!("a weight is int8 or 4-bit"),
        }
    }

    /// A 4-bit weight's group codes as the kernels read them, ``(scale_codes, min_codes)``:
    /// read-only uint8 views (no copy); ``ValueError`` for int8 weights.
    #[getter]
    fn code_panels<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let Some(w4) = slf.get().inner.int4() else {
            return Err(value_error("an int8 weight has no group codes"));
        };
        // SAFETY: both code panels live in this frozen object's weight.
        let (cd, cm) = unsafe {
            (
                own_view(&slf, w4.cd_panels()),
                own_view(&slf, w4.cm_panels()),
            )
        };
        PyTuple::new(slf.py(), [cd, cm])
    }

    /// A 4-bit weight's row factors ``(row_scales, row_minima)``, float32 ``(out_features,)``
    /// each (copies): group ``g`` of output ``o`` has scale ``row_scales[o] * scale_code`` and
    /// minimum ``row_minima[o] * min_code``; ``ValueError`` for int8 weights.
    #[getter]
    fn row_factors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let Some(w4) = self.inner.int4() else {
            return Err(value_error("an int8 weight has no row factors"));
        };
        let (fd, fm) = w4.row_factors();
        PyTuple::new(
            py,
            [fd.to_vec().into_pyarray(py), fm.to_vec().into_pyarray(py)],
        )
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

    /// Whether each output channel has its own scales (always so for 4-bit weights).
    #[getter]
    fn per_channel(&self) -> bool {
        self.inner.per_channel()
    }

    /// Bits per weight value: 8 or 4.
    #[getter]
    fn bits(&self) -> u32 {
        self.inner.bits()
    }

    /// Input features per scale of a 4-bit weight (32, 64 or 128); ``None`` when there is one
    /// scale per output channel (or per tensor), and for int8.
    #[getter]
    fn group_size(&self) -> Option<usize> {
        self.inner.group_size()
    }

    /// Whether the levels are symmetric about zero (always so for int8).
    #[getter]
    fn symmetric(&self) -> bool {
        self.inner.symmetric()
    }

    /// The scales, float32: int8 ``(out_features,)`` per channel or ``(1,)`` per tensor;
    /// 4-bit ``(out_features, groups)`` (one group per channel when ``group_size`` is None).
    #[getter]
    fn scales<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match (self.inner.int8(), self.inner.int4()) {
            (Some(w), _) => Ok(w.scales().to_vec().into_pyarray(py).into_any()),
            (None, Some(w)) => {
                let (scales, _) = w.grids();
                Ok(scales
                    .into_pyarray(py)
                    .reshape([w.shape().0, w.groups()])?
                    .into_any())
            }
            (None, None) => unreachable!("a weight is int8 or 4-bit"),
        }
    }

    /// Bytes of memory the packed weight holds.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// int8: ``(values, scales)``, int8 ``(out_features, in_features)`` and the float32
    /// scales. 4-bit: ``(levels, scales, minima)``, uint8 levels in 0..15
    /// ``(out_features, in_features)`` and float32 ``(out_features, groups)``: input feature
    /// ``i`` of output ``o`` is ``levels[o, i] * scales[o, g] + minima[o, g]`` with
    /// ``g = i // group_size`` (``g = 0`` per channel); symmetric weights have
    /// ``minima = -8 * scales``.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (n, k) = (self.inner.n(), self.inner.k());
        match (self.inner.int8(), self.inner.int4()) {
            (Some(w), _) => {
                let v = detach(py, || w.values());
                let (values, scales): Unpacked<'py> = (
                    v.into_pyarray(py).reshape([n, k])?,
                    w.scales().to_vec().into_pyarray(py),
                );
                PyTuple::new(py, [values.into_any(), scales.into_any()])
            }
            (None, Some(w)) => {
                let (levels, (scales, minima)) = detach(py, || (w.values(), w.grids()));
                let g = w.groups();
                PyTuple::new(
                    py,
                    [
                        levels.into_pyarray(py).reshape([n, k])?.into_any(),
                        scales.into_pyarray(py).reshape([n, g])?.into_any(),
                        minima.into_pyarray(py).reshape([n, g])?.into_any(),
                    ],
                )
            }
            (None, None) => unreachable!("a weight is int8 or 4-bit"),
        }
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
        let py_bool = |b: bool| if b { "True" } else { "False" };
        let (n, k, nbytes) = (self.inner.n(), self.inner.k(), self.inner.nbytes());
        if self.inner.bits() == 4 {
            let group = self
                .inner
                .group_size()
                .map_or("None".to_string(), |g| g.to_string());
            format!(
                "PackedWeight(out_features={n}, in_features={k}, bits=4, group_size={group}, \
                 symmetric={}, nbytes={nbytes})",
                py_bool(self.inner.symmetric())
            )
        } else {
            format!(
                "PackedWeight(out_features={n}, in_features={k}, per_channel={}, \
                 nbytes={nbytes})",
                py_bool(self.inner.per_channel())
            )
        }
    }
}

/// A read-only array over `data` whose base is `owner`.
///
/// # Safety
/// `data` must be memory `owner`'s weight holds: the object is frozen and its weight never
/// modified, moved out of or reallocated, and the array keeps `owner` (its base) alive, so the
/// memory outlives the array.
unsafe fn own_view<'py, T: numpy::Element>(
    owner: &Bound<'py, PyPackedWeight>,
    data: &[T],
) -> Bound<'py, PyArray1<T>> {
    let view = ArrayView1::from(data);
    // SAFETY: the caller's promise: `data` lives as long as `owner`, the array's base.
    let array = unsafe { PyArray1::borrow_from_array(&view, owner.clone().into_any()) };
    array.readwrite().make_nonwriteable();
    array
}
