//! The numpy rules, once: how a Python argument becomes a checked array, and how results become
//! numpy arrays.
//!
//! * Float arguments ([`float_array`]): float32 in C order is used where it lies; float64 and
//!   float16 are converted (values beyond float32's range become infinities, refused later by
//!   the NaN/infinity check, never a warning); every other dtype is a `TypeError` naming the
//!   argument. Any layout is accepted: a non-contiguous view is copied to C order first.
//! * 8-bit integer operands ([`int8_array`]): uint8 or int8 as the caller allows, copied only
//!   when not C-contiguous.
//! * `out=` ([`out_array`]): numpy's strict rule: exactly float32, the result's shape,
//!   C-contiguous and writeable, else `TypeError`/`ValueError`; an input that shares memory
//!   with it is copied first ([`Array::unalias`]).
//! * Results ([`new_array`], [`scalar`]) are allocated by numpy, so an impossible size is a
//!   `MemoryError`, never an abort.
//!
//! Every kernel call releases the GIL through `gil::detach`.

use crate::errors::{shape, type_error, value_error};
pub use crate::gil::detach;
use dynaq_core::int4::quant::Method;
use dynaq_core::quant::Granularity;
use numpy::npyffi::{self, npy_intp, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescr, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyString, PyTuple};
use std::ops::Range;

// ---------------------------------------------------------------------------------------------
// Arrays read from Python.
// ---------------------------------------------------------------------------------------------

/// A C-contiguous array argument: the caller's own memory when it already was one (borrowed
/// for reading), else a copy.
pub struct Array<'py, T: Element> {
    data: Data<'py, T>,
    shape: Vec<usize>,
}

enum Data<'py, T: Element> {
    Borrowed(PyReadonlyArrayDyn<'py, T>),
    Owned(Vec<T>),
}

impl<'py, T: Element + Copy> Array<'py, T> {
    /// `a` itself when it is C-contiguous (and not being written by another dynaq call), else a
    /// C-order copy.
    fn of(a: &Bound<'py, PyArrayDyn<T>>) -> PyResult<Self> {
        let shape = a.shape().to_vec();
        if a.is_c_contiguous() {
            if let Ok(r) = a.try_readonly() {
                return Ok(Array {
                    data: Data::Borrowed(r),
                    shape,
                });
            }
        }
        let r = a.try_readonly().map_err(|e| value_error(e.to_string()))?;
        let view = r.as_array();
        let data = collect(view.len(), view.iter().copied())?;
        Ok(Array {
            data: Data::Owned(data),
            shape,
        })
    }

    /// The elements in C order.
    pub fn as_slice(&self) -> &[T] {
        match &self.data {
            Data::Borrowed(r) => r.as_slice().expect("borrowed only when C-contiguous"),
            Data::Owned(v) => v,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether its memory overlaps `range` (bytes); a copy never does.
    fn overlaps(&self, range: &Range<usize>) -> bool {
        match &self.data {
            Data::Borrowed(r) => {
                let start = r.as_slice().map_or(0, |s| s.as_ptr() as usize);
                let len = r.len() * std::mem::size_of::<T>();
                len > 0 && !range.is_empty() && start < range.end && range.start < start + len
            }
            Data::Owned(_) => false,
        }
    }

    /// This argument as a copy (releasing its read borrow of the caller's array).
    pub fn into_owned(self) -> PyResult<Self> {
        if let Data::Owned(_) = self.data {
            return Ok(self);
        }
        let data = collect(self.as_slice().len(), self.as_slice().iter().copied())?;
        Ok(Array {
            data: Data::Owned(data),
            shape: self.shape,
        })
    }

    /// This argument, copied when it shares memory with `out` (so that writing `out` cannot
    /// change what is read: `linear(x, w, out=x)` is correct).
    pub fn unalias(self, out: &Bound<'py, PyArrayDyn<f32>>) -> PyResult<Self> {
        let start = out.data() as usize;
        let range = start..start + out.len() * std::mem::size_of::<f32>();
        if self.overlaps(&range) {
            self.into_owned()
        } else {
            Ok(self)
        }
    }

    /// The argument as a numpy array: the caller's object when it was used as it is.
    pub fn into_pyarray(self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
        match self.data {
            Data::Borrowed(r) => Ok(r.as_array_bound().clone()),
            Data::Owned(v) => {
                let out = new_array::<T>(py, &self.shape)?;
                let mut w = out
                    .try_readwrite()
                    .map_err(|e| value_error(e.to_string()))?;
                w.as_slice_mut()
                    .expect("a new array is C-contiguous")
                    .copy_from_slice(&v);
                drop(w);
                Ok(out)
            }
        }
    }
}

/// Helper for [`Array::into_pyarray`]: the array a read borrow refers to.
trait AsArrayBound<'py, T: Element> {
    fn as_array_bound(&self) -> &Bound<'py, PyArrayDyn<T>>;
}

impl<'py, T: Element> AsArrayBound<'py, T> for PyReadonlyArrayDyn<'py, T> {
    fn as_array_bound(&self) -> &Bound<'py, PyArrayDyn<T>> {
        self
    }
}

/// `iter` (of `len` items) in a new vector, or `MemoryError`.
fn collect<T>(len: usize, iter: impl Iterator<Item = T>) -> PyResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        PyMemoryError::new_err(format!(
            "cannot allocate {len} elements of {} bytes",
            std::mem::size_of::<T>()
        ))
    })?;
    v.extend(iter);
    Ok(v)
}

/// `obj` as a numpy array: itself when it is one, else `numpy.asarray(obj)`; a `TypeError`
/// naming the argument when numpy cannot make an array of it (ragged lists and the like).
pub fn ndarray<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    if obj.cast::<PyUntypedArray>().is_ok() {
        return Ok(obj.clone());
    }
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    let asarray = ASARRAY.import(py, "numpy", "asarray")?;
    asarray.call1((obj,)).map_err(|e| {
        let err = type_error(format!("{name} must be {what}: {}", e.value(py)));
        err.set_cause(py, Some(e));
        err
    })
}

fn dtype_of<'py>(a: &Bound<'py, PyAny>) -> Bound<'py, PyArrayDescr> {
    a.cast::<PyUntypedArray>().expect("an ndarray").dtype()
}

/// The name numpy prints for the dtype of the array `a` (``int64``, ``<U1``, ...).
pub fn dtype_name(a: &Bound<'_, PyAny>) -> String {
    dtype_of(a).to_string()
}

/// A float argument as C-contiguous float32 (see the module docs).
pub fn float_array<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Array<'py, f32>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        return Array::of(a);
    }
    let a = ndarray(obj, name, "a float array")?;
    if let Ok(a) = a.cast::<PyArrayDyn<f32>>() {
        return Array::of(a);
    }
    let dtype = dtype_of(&a);
    if dtype.kind() != b'f' {
        return Err(type_error(format!(
            "{name} must be a floating-point array (float32; float64 and float16 are \
             converted), got dtype {dtype}"
        )));
    }
    if let Ok(a) = a.cast::<PyArrayDyn<f64>>() {
        // `as` rounds to nearest and gives +-infinity beyond float32's range, silently.
        return converted(a, |v: f64| v as f32);
    }
    if let Ok(a) = a.cast::<PyArrayDyn<half::f16>>() {
        return converted(a, |v: half::f16| v.to_f32());
    }
    // Other float types (long double, non-native byte order): numpy converts them, with its
    // overflow warning silenced as above.
    let py = obj.py();
    let errstate = py.import("numpy")?.call_method(
        "errstate",
        (),
        Some(&[("over", "ignore")].into_py_dict(py)?),
    )?;
    errstate.call_method0("__enter__")?;
    let cast = a.call_method1("astype", ("=f4",));
    errstate.call_method1("__exit__", (py.None(), py.None(), py.None()))?;
    Array::of(cast?.cast::<PyArrayDyn<f32>>()?)
}

fn converted<'py, S: Element + Copy>(
    a: &Bound<'py, PyArrayDyn<S>>,
    f: impl Fn(S) -> f32,
) -> PyResult<Array<'py, f32>> {
    let r = a.try_readonly().map_err(|e| value_error(e.to_string()))?;
    let view = r.as_array();
    let data = collect(view.len(), view.iter().map(|&v| f(v)))?;
    Ok(Array {
        data: Data::Owned(data),
        shape: a.shape().to_vec(),
    })
}

/// An 8-bit integer array argument (uint8 or int8).
pub enum Int8Array<'py> {
    /// uint8 values.
    U8(Array<'py, u8>),
    /// int8 values.
    I8(Array<'py, i8>),
}

impl Int8Array<'_> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Int8Array::U8(a) => a.shape(),
            Int8Array::I8(a) => a.shape(),
        }
    }
    /// The numpy name of the dtype.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Int8Array::U8(_) => "uint8",
            Int8Array::I8(_) => "int8",
        }
    }
}

/// An 8-bit integer argument: uint8 when `unsigned`, int8 when `signed` (`TypeError` naming
/// the argument and `expected` otherwise).
pub fn int8_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    unsigned: bool,
    signed: bool,
    expected: &str,
) -> PyResult<Int8Array<'py>> {
    let a = ndarray(obj, name, expected)?;
    if signed {
        if let Ok(t) = a.cast::<PyArrayDyn<i8>>() {
            return Ok(Int8Array::I8(Array::of(t)?));
        }
    }
    if unsigned {
        if let Ok(t) = a.cast::<PyArrayDyn<u8>>() {
            return Ok(Int8Array::U8(Array::of(t)?));
        }
    }
    Err(type_error(format!(
        "{name} must be {expected}, got dtype {}",
        dtype_of(&a)
    )))
}

// ---------------------------------------------------------------------------------------------
// Arrays written for Python.
// ---------------------------------------------------------------------------------------------

/// `out` under numpy's strict rule for a result of `want` (see the module docs).
pub fn out_array<'py>(
    out: &Bound<'py, PyAny>,
    want: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let Ok(u) = out.cast::<PyUntypedArray>() else {
        return Err(type_error(format!(
            "out must be a numpy.ndarray, got {}",
            out.get_type().name()?
        )));
    };
    let Ok(a) = out.cast::<PyArrayDyn<f32>>() else {
        return Err(type_error(format!(
            "out must have dtype float32, got {}",
            u.dtype()
        )));
    };
    if a.shape() != want {
        return Err(value_error(format!(
            "out must have shape {}, got {}",
            shape(want),
            shape(a.shape())
        )));
    }
    if !a.is_c_contiguous() {
        return Err(value_error("out must be C-contiguous"));
    }
    // SAFETY: reads the flags of a live array object (the pointer comes from `a`).
    let flags = unsafe { (*a.as_array_ptr()).fields.flags };
    if flags & npyffi::NPY_ARRAY_WRITEABLE == 0 {
        return Err(value_error("out is read-only"));
    }
    Ok(a.clone())
}

/// A new, uninitialized C-contiguous array, allocated by numpy (`MemoryError` when it cannot
/// be). The caller writes every element before Python sees it.
pub fn new_array<'py, T: Element>(
    py: Python<'py>,
    dims: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let mut d: Vec<npy_intp> = Vec::with_capacity(dims.len());
    for &x in dims {
        d.push(npy_intp::try_from(x).map_err(|_| {
            PyMemoryError::new_err(format!("cannot allocate an array of shape {}", shape(dims)))
        })?);
    }
    let descr = T::get_dtype(py);
    // SAFETY: `PyArray_NewFromDescr` steals the reference to `descr` (handed over with
    // `into_dtype_ptr`), reads `d.len()` dimensions from `d`, and returns a new reference to a
    // fresh C-contiguous array, or NULL with a Python exception set (`from_owned_ptr_or_err`
    // turns that into the `PyErr`). The array's type is that of `T`.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
            descr.into_dtype_ptr(),
            d.len() as std::ffi::c_int,
            d.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

/// A numpy scalar (`numpy.float32(v)`, `numpy.uint8(v)`, ...).
pub fn scalar<'py, T: Element + Copy>(py: Python<'py>, v: T) -> PyResult<Bound<'py, PyAny>> {
    let descr = T::get_dtype(py);
    let mut v = v;
    // SAFETY: `PyArray_Scalar` copies one element of `descr`'s type from `&mut v` (a live `T`)
    // and borrows `descr` (kept alive above); it returns a new reference or NULL with an
    // exception set. No base object is needed for a plain numeric type.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_Scalar(
            py,
            (&mut v as *mut T).cast(),
            descr.as_dtype_ptr(),
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    }
}

/// A tuple of Python objects (the results of a call).
pub fn tuple<'py>(py: Python<'py>, items: Vec<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, items)
}

// ---------------------------------------------------------------------------------------------
// Options.
// ---------------------------------------------------------------------------------------------

/// `"row"` or `"tensor"` (`ValueError` otherwise).
pub fn granularity(py: Python<'_>, value: &str) -> PyResult<Granularity> {
    match value {
        "row" => Ok(Granularity::Row),
        "tensor" => Ok(Granularity::Tensor),
        other => Err(value_error(format!(
            "granularity must be 'tensor' or 'row', got {}",
            PyString::new(py, other).repr()?
        ))),
    }
}

/// How a float weight is quantized (`pack_weight`'s options, checked).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightSpec {
    /// Symmetric int8, one scale per output channel or per tensor.
    Int8 { per_channel: bool },
    /// 4-bit levels in groups of `group` along K (`None`: per channel).
    Int4 {
        group: Option<usize>,
        symmetric: bool,
        method: Method,
    },
}

/// `pack_weight`'s `group_size` as passed: absent (the default: groups of
/// [`DEFAULT_GROUP_SIZE`] for 4 bits), `None` (per channel), or a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSizeArg {
    /// Not passed.
    Unset,
    /// `None`: one group per output channel.
    PerChannel,
    /// A size, checked against the supported ones where K is known.
    Size(usize),
}

impl<'a, 'py> FromPyObject<'a, 'py> for GroupSizeArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(GroupSizeArg::PerChannel);
        }
        let bad = || {
            let r = obj.repr().map_or_else(|_| "?".into(), |r| r.to_string());
            value_error(format!("group_size must be 32, 64, 128 or None, got {r}"))
        };
        if obj.is_instance_of::<pyo3::types::PyBool>() {
            return Err(bad());
        }
        obj.extract::<usize>()
            .map(GroupSizeArg::Size)
            .map_err(|_| bad())
    }
}

impl GroupSizeArg {
    /// The group size this stands for: None per channel, the default when not given.
    pub fn size(&self) -> Option<usize> {
        match self {
            GroupSizeArg::Unset => Some(DEFAULT_GROUP_SIZE),
            GroupSizeArg::PerChannel => None,
            GroupSizeArg::Size(g) => Some(*g),
        }
    }
}

/// The group size 4-bit weights get when none is given.
pub const DEFAULT_GROUP_SIZE: usize = 32;

/// `pack_weight`'s options as a [`WeightSpec`]. `ValueError` for bits other than 4 and 8,
/// options that do not apply to the bits asked for, and unknown methods; the group size itself
/// (32, 64 or 128 dividing K) is checked where K is known.
pub fn weight_spec(
    py: Python<'_>,
    bits: i64,
    per_channel: bool,
    group_size: GroupSizeArg,
    symmetric: Option<bool>,
    method: Option<&str>,
) -> PyResult<WeightSpec> {
    match bits {
        8 => {
            if group_size != GroupSizeArg::Unset {
                return Err(value_error(
                    "group_size applies to bits=4 only (int8 weights have one scale per output \
                     channel, or per tensor with per_channel=False)",
                ));
            }
            if symmetric == Some(false) {
                return Err(value_error(
                    "int8 weights are symmetric; symmetric=False applies to bits=4 only",
                ));
            }
            if method.is_some() {
                return Err(value_error("method applies to bits=4 only"));
            }
            Ok(WeightSpec::Int8 { per_channel })
        }
        4 => {
            if !per_channel {
                return Err(value_error(
                    "per_channel=False (one scale per tensor) is int8 only; 4-bit weights have \
                     scales per group (group_size=32, 64, 128) or per output channel \
                     (group_size=None)",
                ));
            }
            let method = match method.unwrap_or("search") {
                "search" => Method::Search,
                "rtn" => Method::Rtn,
                other => {
                    return Err(value_error(format!(
                        "method must be 'search' or 'rtn', got {}",
                        PyString::new(py, other).repr()?
                    )))
                }
            };
            Ok(WeightSpec::Int4 {
                group: group_size.size(),
                symmetric: symmetric.unwrap_or(false),
                method,
            })
        }
        other => Err(value_error(format!("bits must be 8 or 4, got {other}"))),
    }
}

/// The product of `dims` (1 for none).
pub fn product(dims: &[usize]) -> usize {
    dims.iter().product()
}
