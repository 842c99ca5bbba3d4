//! `QuantizedTensor`: what `dynaq.quantize` returns.

use crate::args::{self, Array};
use crate::errors::{shape, value_error};
use dynaq_core::quant::Granularity;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// Quantized values with their scale(s) and zero point(s), from :func:`dynaq.quantize`.
///
/// Attributes
/// ----------
/// values : ndarray
///     uint8 (asymmetric) or int8 in [-127, 127] (symmetric), the shape of the input.
/// scale : ndarray of float32
///     Shape ``()`` per tensor, or the input's shape without its last axis per row.
/// zero_point : ndarray
///     Same shape as ``scale``; uint8 (asymmetric) or int8 zeros (symmetric).
/// granularity : str
///     ``"tensor"`` or ``"row"``.
/// symmetric : bool
#[pyclass(module = "dynaq", frozen)]
pub struct QuantizedTensor {
    #[pyo3(get)]
    values: Py<PyAny>,
    #[pyo3(get)]
    scale: Py<PyAny>,
    #[pyo3(get)]
    zero_point: Py<PyAny>,
    granularity: Granularity,
    #[pyo3(get)]
    symmetric: bool,
}

impl QuantizedTensor {
    /// Wraps the arrays `quantize` made.
    pub fn new(
        values: Bound<'_, PyAny>,
        scale: Bound<'_, PyAny>,
        zero_point: Bound<'_, PyAny>,
        granularity: Granularity,
        symmetric: bool,
    ) -> Self {
        QuantizedTensor {
            values: values.unbind(),
            scale: scale.unbind(),
            zero_point: zero_point.unbind(),
            granularity,
            symmetric,
        }
    }
}

#[pymethods]
impl QuantizedTensor {
    /// ``"tensor"`` or ``"row"``.
    #[getter]
    fn granularity(&self) -> &'static str {
        match self.granularity {
            Granularity::Tensor => "tensor",
            Granularity::Row => "row",
        }
    }

    /// ``(values - zero_point) * scale`` as float32, the shape of ``values``. Near float32's
    /// limit the product may round to infinity: that is the correct rounding, not an error.
    fn dequantize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (v, vshape) = widen(self.values.bind(py), "values")?;
        let (z, _) = widen(self.zero_point.bind(py), "zero_point")?;
        let s = args::float_array(self.scale.bind(py), "scale")?;
        let s = s.as_slice();
        let groups = match self.granularity {
            Granularity::Tensor => 1,
            Granularity::Row => args::product(&vshape[..vshape.len().saturating_sub(1)]),
        };
        if s.len() != groups || z.len() != groups {
            return Err(value_error(format!(
                "scale and zero_point must hold {groups} values for values of shape {}",
                shape(&vshape)
            )));
        }
        let cols = v.len().checked_div(groups).unwrap_or(0);
        let out = args::new_array::<f32>(py, &vshape)?;
        {
            let mut w = out.readwrite();
            let dst = w.as_slice_mut().expect("new arrays are contiguous");
            for (i, (d, &q)) in dst.iter_mut().zip(&v).enumerate() {
                let g = if groups == 1 { 0 } else { i / cols };
                // The float operations numpy does for (v - z) * s in float32.
                *d = (q - z[g]) * s[g];
            }
        }
        Ok(out)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let values = self
            .values
            .bind(py)
            .cast::<numpy::PyUntypedArray>()?
            .shape()
            .to_vec();
        let scales = self.scale.bind(py).cast::<numpy::PyUntypedArray>()?.len();
        let kind = if self.symmetric {
            "int8 symmetric"
        } else {
            "uint8 asymmetric"
        };
        Ok(format!(
            "QuantizedTensor(shape={}, {kind}, granularity='{}', scales={scales})",
            shape(&values),
            self.granularity()
        ))
    }
}

/// uint8 or int8 values as float32, in C order, with their shape.
fn widen(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let a = args::int8_array(obj, name, true, true, "a uint8 or int8 array")?;
    let shape = a.shape().to_vec();
    let v = match &a {
        args::Int8Array::U8(a) => widened(a),
        args::Int8Array::I8(a) => widened(a),
    };
    Ok((v, shape))
}

fn widened<T: numpy::Element + Copy + Into<f32>>(a: &Array<'_, T>) -> Vec<f32> {
    a.as_slice().iter().map(|&v| v.into()).collect()
}
