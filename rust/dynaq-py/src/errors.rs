//! Core errors as Python exceptions, worded with the argument the user passed.
//!
//! The core describes a problem in its own terms ("input contains NaN or infinity (row 1)");
//! only the bindings know which Python argument the input was, so the wording that names it
//! lives here, once.

use dynaq_core::Error;
use pyo3::exceptions::{PyMemoryError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::PyErr;

/// The exception type of each core error: `Overflow` -> `OverflowError`, `Memory` ->
/// `MemoryError`, everything else -> `ValueError`.
pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::Overflow(m) => PyOverflowError::new_err(m),
        Error::Memory(m) => PyMemoryError::new_err(m),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// What a non-finite value in an argument means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Activations: the check can be skipped with `check_finite=False`.
    Activation,
    /// Weights: always checked (a non-finite weight would poison every later call).
    Weight,
    /// A layer's input or state: always checked (layers have no `check_finite`).
    Layer,
}

/// [`to_py`], with a non-finite input named after the argument `arg` it came from.
pub fn named(e: Error, arg: &str, role: Role) -> PyErr {
    match e {
        Error::NonFinite { row } => {
            let at = row.map_or(String::new(), |r| format!(" (row {r})"));
            let why = match role {
                Role::Activation => {
                    "their quantization is meaningless (pass check_finite=False to skip this \
                     check at your own risk)"
                }
                Role::Weight => {
                    "weights are always checked: a non-finite weight would poison every call"
                }
                Role::Layer => "a layer's parameters, inputs and states must be finite",
            };
            PyValueError::new_err(format!("{arg} contains NaN or infinity{at}; {why}"))
        }
        other => to_py(other),
    }
}

/// A shape as Python prints a tuple: `()`, `(3,)`, `(2, 4)`.
pub fn shape(dims: &[usize]) -> String {
    match dims {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// A `TypeError` with this message.
pub fn type_error(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}

/// A `ValueError` with this message.
pub fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}
