//! The on-disk form for Python: dynaq blobs (weights, layers), a weight as plain tensors (for
//! state dicts and files), and the safetensors header rules the Python file reader uses.
//! The rules themselves are `dynaq_core::format` and `dynaq_core::safetensors`.

use crate::args::{self, detach, float_array};
use crate::errors::{to_py, type_error, value_error};
use crate::weight::{int8_values, PyPackedWeight};
use dynaq_core::format::{self, Tensor};
use dynaq_core::int4::Int4Weight;
use dynaq_core::safetensors::{self, Dtype, TensorInfo};
use dynaq_core::PackedWeight;
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// A sealed blob of ``kind`` (``"Linear"``, ``"LSTM"``, ...) holding ``weights`` (name ->
/// PackedWeight, each stored as its values and scales), ``tensors`` (name -> numpy array) and
/// ``extra`` metadata (str -> str).
#[pyfunction]
pub fn write_blob<'py>(
    py: Python<'py>,
    kind: &str,
    weights: &Bound<'py, PyDict>,
    tensors: &Bound<'py, PyDict>,
    extra: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut held = Vec::with_capacity(weights.len());
    for (name, w) in weights.iter() {
        let name: String = name.extract()?;
        let w = w
            .cast_into::<PyPackedWeight>()
            .map_err(|_| type_error(format!("weights[{name:?}] must be a PackedWeight")))?;
        held.push((name, w));
    }
    let mut plain = Vec::with_capacity(tensors.len());
    for (name, a) in tensors.iter() {
        let name: String = name.extract()?;
        plain.push(to_tensor(&name, &a)?);
    }
    let meta: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
        .collect::<PyResult<_>>()?;
    let bytes = {
        let ws: Vec<(&str, &PackedWeight)> = held
            .iter()
            .map(|(n, w)| (n.as_str(), &w.get().inner))
            .collect();
        let ms: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        detach(py, || format::write_blob(kind, &ws, &plain, &ms)).map_err(to_py)?
    };
    Ok(PyBytes::new(py, &bytes))
}

/// Reads a blob that :func:`write_blob` wrote for ``kind``: ``(weights, tensors, metadata)``,
/// every field checked (``ValueError`` ``"{kind} bytes: ..."`` otherwise).
#[pyfunction]
pub fn read_blob<'py>(py: Python<'py>, data: &[u8], kind: &str) -> PyResult<Bound<'py, PyTuple>> {
    let blob = format::read_blob(data, kind).map_err(to_py)?;
    let weights = PyDict::new(py);
    for name in blob.quantized() {
        let w = detach(py, || blob.weight(name)).map_err(to_py)?;
        weights.set_item(name, PyPackedWeight { inner: w })?;
    }
    let tensors = PyDict::new(py);
    for (info, bytes) in blob.tensors() {
        if !blob.is_weight_part(&info.name) {
            tensors.set_item(
                &info.name,
                from_tensor(py, info, bytes, &format!("{kind} bytes"))?,
            )?;
        }
    }
    PyTuple::new(
        py,
        [weights.into_any(), tensors.into_any(), metadata(py, data)?],
    )
}

/// Every metadata entry of a sealed blob (read again: small).
fn metadata<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let (header, _) = safetensors::read(data).map_err(to_py)?;
    let d = PyDict::new(py);
    for (k, v) in &header.metadata {
        d.set_item(k, v)?;
    }
    Ok(d.into_any())
}

/// The tensors that store a weight under ``name``: int8, ``{name: int8 values (out, in),
/// name + "_scale": float32 scales, (out,) per channel or () per tensor}``; 4-bit, ``name``
/// as uint8 ``(ceil(out / 2), in)`` (two rows' levels per byte), ``name + "_scale"`` and, as
/// the weight needs them, ``_min``, ``_gscale`` and ``_gmin``.
#[pyfunction]
#[pyo3(signature = (weight, name = "weight"))]
pub fn weight_tensors<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyPackedWeight>,
    name: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for t in weight.get().inner.tensors(name) {
        d.set_item(&t.name, bytes_to_array(py, t.dtype, &t.shape, &t.data)?)?;
    }
    Ok(d)
}

/// The weight stored under ``name`` in ``tensors`` (a mapping holding the tensors
/// :func:`weight_tensors` gives: ``name`` and ``name + "_scale"``, and for a 4-bit weight,
/// whose ``name`` is a uint8 array, ``_min``, ``_gscale`` and ``_gmin`` as it has them), every
/// field checked.
#[pyfunction]
#[pyo3(signature = (tensors, name = "weight"))]
pub fn weight_from_tensors(
    py: Python<'_>,
    tensors: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<PyPackedWeight> {
    let scale = format::scale_name(name);
    let get = |key: &str| {
        tensors
            .get_item(key)
            .map_err(|_| value_error(format!("tensor {key:?} is missing")))
    };
    let values = get(name)?;
    if args::ndarray(&values, name, "an array")
        .ok()
        .and_then(|a| a.cast::<PyUntypedArray>().ok().and_then(|u| dtype_of(u)))
        == Some(Dtype::U8)
    {
        // A 4-bit weight: every part the mapping holds, checked by the core's reader.
        let mut parts = Vec::new();
        for part in format::weight_part_names(name) {
            if let Ok(obj) = tensors.get_item(&part) {
                parts.push(to_tensor(&part, &obj)?);
            }
        }
        let find = |t: &str| {
            parts
                .iter()
                .find(|p| p.name == t)
                .map(|p| (p.dtype, p.shape.as_slice(), p.data.as_slice()))
        };
        let inner = detach(py, || Int4Weight::from_tensors(name, find))
            .map(PackedWeight::from_int4)
            .map_err(to_py)?;
        return Ok(PyPackedWeight { inner });
    }
    let (values, n, k) = int8_values(&values, name)?;
    let scales = float_array(&get(&scale)?, &scale)?;
    let (vs, ss, sshape) = (values.as_slice(), scales.as_slice(), scales.shape());
    let inner = detach(py, || PackedWeight::from_stored(vs, n, k, ss, sshape)).map_err(to_py)?;
    Ok(PyPackedWeight { inner })
}

// ---------------------------------------------------------------------------------------------
// The safetensors header, for the Python file reader and writer.
// ---------------------------------------------------------------------------------------------

/// The header length of a safetensors file from its first 8 bytes (fewer when the file is
/// shorter) and its size; ``ValueError`` when it cannot be one.
#[pyfunction]
pub fn safetensors_header_len(prefix: &[u8], file_len: u64) -> PyResult<usize> {
    safetensors::header_len(prefix, file_len).map_err(to_py)
}

/// The checked header of a safetensors file: ``(entries, metadata)``, the entries
/// ``(name, dtype, shape, begin, end)`` in data order. ``ValueError`` (without the file name,
/// which the caller adds) for anything the format does not allow.
#[pyfunction]
pub fn parse_safetensors_header<'py>(
    py: Python<'py>,
    header: &[u8],
    data_len: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    let h = safetensors::parse_header(header, data_len).map_err(to_py)?;
    let entries = PyList::empty(py);
    for t in &h.tensors {
        let dims = PyTuple::new(py, &t.shape)?;
        entries.append((t.name.as_str(), t.dtype.name(), dims, t.begin, t.end))?;
    }
    let meta = PyDict::new(py);
    for (k, v) in &h.metadata {
        meta.set_item(k, v)?;
    }
    PyTuple::new(py, [entries.into_any(), meta.into_any()])
}

/// The header bytes (length prefix included) for ``items`` = ``(name, dtype, shape, nbytes)``
/// stored back to back in that order, with ``metadata``.
#[pyfunction]
pub fn encode_safetensors_header<'py>(
    py: Python<'py>,
    items: Vec<(String, String, Vec<usize>, usize)>,
    metadata: Vec<(String, String)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut parsed = Vec::with_capacity(items.len());
    for (name, dtype, dims, nbytes) in &items {
        let d = Dtype::from_name(dtype)
            .ok_or_else(|| value_error(format!("unknown safetensors dtype {dtype:?}")))?;
        parsed.push((name.as_str(), d, dims.as_slice(), *nbytes));
    }
    let meta: Vec<(&str, &str)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok(PyBytes::new(
        py,
        &safetensors::encode_header(&parsed, &meta),
    ))
}

/// Every safetensors dtype name with its bits per element.
#[pyfunction]
pub fn safetensors_dtypes() -> Vec<(&'static str, u32)> {
    Dtype::ALL.iter().map(|d| (d.name(), d.bits())).collect()
}

/// The stored order of tensors ``(name, dtype)``: widest dtype first, then by name.
#[pyfunction]
pub fn safetensors_data_order(items: Vec<(String, String)>) -> PyResult<Vec<String>> {
    let mut parsed = Vec::with_capacity(items.len());
    for (name, dtype) in &items {
        let d = Dtype::from_name(dtype)
            .ok_or_else(|| value_error(format!("unknown safetensors dtype {dtype:?}")))?;
        parsed.push((name.as_str(), d));
    }
    Ok(safetensors::data_order(&parsed)
        .into_iter()
        .map(|i| items[i].0.clone())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// numpy arrays <-> stored tensors.
// ---------------------------------------------------------------------------------------------

/// The safetensors dtype of a numpy dtype of native byte order.
fn dtype_of(a: &Bound<'_, PyUntypedArray>) -> Option<Dtype> {
    let d = a.dtype();
    if d.is_native_byteorder() == Some(false) {
        return None;
    }
    Some(match (d.kind(), d.itemsize()) {
        (b'f', 2) => Dtype::F16,
        (b'f', 4) => Dtype::F32,
        (b'f', 8) => Dtype::F64,
        (b'i', 1) => Dtype::I8,
        (b'u', 1) => Dtype::U8,
        (b'i', 2) => Dtype::I16,
        (b'u', 2) => Dtype::U16,
        (b'i', 4) => Dtype::I32,
        (b'u', 4) => Dtype::U32,
        (b'i', 8) => Dtype::I64,
        (b'u', 8) => Dtype::U64,
        (b'b', 1) => Dtype::Bool,
        _ => return None,
    })
}

/// A numpy array argument as a tensor to store.
fn to_tensor(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let a = args::ndarray(obj, name, "an array")?;
    let u = a.cast::<PyUntypedArray>()?;
    let Some(dtype) = dtype_of(u) else {
        return Err(type_error(format!(
            "tensor {name:?} has dtype {}, which dynaq does not store",
            args::dtype_name(&a)
        )));
    };
    let dims = u.shape().to_vec();
    // `tobytes` gives C order whatever the layout.
    let data: Vec<u8> = a.call_method0("tobytes")?.extract()?;
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape: dims,
        data,
    })
}

/// A stored tensor as a new numpy array (`what` names the container in errors).
fn from_tensor<'py>(
    py: Python<'py>,
    info: &TensorInfo,
    bytes: &[u8],
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    if info.dtype == Dtype::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(value_error(format!(
            "{what}: tensor {:?} holds a BOOL that is neither 0 nor 1",
            info.name
        )));
    }
    bytes_to_array(py, info.dtype, &info.shape, bytes).map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) {
            value_error(format!("{what}: tensor {:?}: {}", info.name, e.value(py)))
        } else {
            e
        }
    })
}

/// Little-endian bytes as a new numpy array of `dtype` and `dims`.
fn bytes_to_array<'py>(
    py: Python<'py>,
    dtype: Dtype,
    dims: &[usize],
    bytes: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    fn fill<'py, T: Element, const N: usize>(
        py: Python<'py>,
        dims: &[usize],
        bytes: &[u8],
        f: impl Fn([u8; N]) -> T,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a: Bound<'py, PyArrayDyn<T>> = args::new_array::<T>(py, dims)?;
        {
            let mut w = a.readwrite();
            let dst = w.as_slice_mut().expect("new arrays are contiguous");
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(N)) {
                *d = f(c.try_into().expect("N bytes"));
            }
        }
        Ok(a.into_any())
    }
    match dtype {
        Dtype::F32 => fill(py, dims, bytes, f32::from_le_bytes),
        Dtype::F64 => fill(py, dims, bytes, f64::from_le_bytes),
        Dtype::F16 => fill(py, dims, bytes, |b| {
            half::f16::from_bits(u16::from_le_bytes(b))
        }),
        Dtype::I8 => fill(py, dims, bytes, i8::from_le_bytes),
        Dtype::U8 => fill(py, dims, bytes, u8::from_le_bytes),
        Dtype::I16 => fill(py, dims, bytes, i16::from_le_bytes),
        Dtype::U16 => fill(py, dims, bytes, u16::from_le_bytes),
        Dtype::I32 => fill(py, dims, bytes, i32::from_le_bytes),
        Dtype::U32 => fill(py, dims, bytes, u32::from_le_bytes),
        Dtype::I64 => fill(py, dims, bytes, i64::from_le_bytes),
        Dtype::U64 => fill(py, dims, bytes, u64::from_le_bytes),
        Dtype::Bool => fill(py, dims, bytes, |[b]: [u8; 1]| b != 0),
        other => Err(value_error(format!(
            "dtype {} is not one dynaq reads into numpy here",
            other.name()
        ))),
    }
}
