//! The process-wide settings: kernel paths (ISAs), threads, and what the CPU offers.

use crate::errors::{to_py, type_error, value_error};
use dynaq_core::isa::{self, Isa};
use dynaq_core::{dispatch, threads};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt};

/// CPU features this build checks, as ``(name, present)`` pairs.
#[pyfunction]
pub fn cpu_features() -> Vec<(&'static str, bool)> {
    isa::cpu_features()
}

/// The kernel paths this CPU supports, slowest first.
#[pyfunction]
pub fn detected_isas() -> Vec<&'static str> {
    isa::detected().iter().map(|i| i.name()).collect()
}

/// Every path name of this architecture, supported or not.
#[pyfunction]
pub fn arch_isas() -> Vec<&'static str> {
    Isa::of_this_arch().iter().map(|i| i.name()).collect()
}

/// The path kernels run on now.
#[pyfunction]
pub fn active_isa() -> &'static str {
    isa::active_isa().name()
}

/// The cap in force (the best path when nothing caps it).
#[pyfunction]
pub fn get_max_isa() -> &'static str {
    isa::max_isa().name()
}

/// Cap the kernel path at ``name`` for the whole process; ``None`` lifts the cap.
///
/// Names on x86-64: ``"scalar"``, ``"avx2"``, ``"avx512vnni"``; on aarch64: ``"scalar"``,
/// ``"neon"``, ``"dotprod"``, ``"i8mm"``. A path this CPU lacks selects the best one below it.
/// Every path computes the same integers; the cap only changes speed. Returns the path now
/// active. Raises ``ValueError`` for an unknown name or one of another architecture.
#[pyfunction]
#[pyo3(signature = (name))]
pub fn set_max_isa(name: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let isa = if name.is_none() {
        None
    } else {
        let Ok(s) = name.extract::<String>() else {
            return Err(type_error(format!(
                "name must be a str or None, got {}",
                name.get_type().name()?
            )));
        };
        Some(Isa::from_name(&s).map_err(to_py)?)
    };
    isa::set_max_isa(isa).map(|i| i.name()).map_err(to_py)
}

/// The warning from reading ``DYNAQ_MAX_ISA``, if its value was unusable.
#[pyfunction]
pub fn env_warning() -> Option<String> {
    isa::env_warning()
}

/// Operation name -> kernel name on the active path.
#[pyfunction]
pub fn kernels<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for k in dispatch::kernel_report() {
        d.set_item(k.op, k.kernel)?;
    }
    Ok(d)
}

/// Number of threads the kernels use (the calling thread included).
#[pyfunction]
pub fn get_num_threads() -> usize {
    threads::num_threads()
}

/// Number of threads the kernels use (default: ``DYNAQ_NUM_THREADS`` or the physical cores).
/// Calls already running keep their threads. ``TypeError`` for a non-int, ``ValueError`` for
/// ``n < 1``.
#[pyfunction]
pub fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    if !n.is_instance_of::<PyInt>() || n.is_instance_of::<PyBool>() {
        return Err(type_error(format!(
            "n must be an int, got {}",
            n.get_type().name()?
        )));
    }
    let v: i64 = n.extract().unwrap_or(i64::MAX);
    if v < 1 {
        return Err(value_error(format!("n must be at least 1, got {v}")));
    }
    threads::set_num_threads(usize::try_from(v).unwrap_or(usize::MAX)).map_err(to_py)
}

/// Physical cores available to this process.
#[pyfunction]
pub fn physical_cores() -> usize {
    threads::physical_cores()
}
