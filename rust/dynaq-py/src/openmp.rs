//! Sharing PyTorch's OpenMP threads: finding `GOMP_parallel` in a runtime that is already loaded
//! and handing it to the core (`dynaq_core::threads::openmp`). Off unless Python asks for it
//! (`dynaq.torch.share_torch_threads()`).

use dynaq_core::threads;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// Runs multi-threaded loops on the OpenMP team of the runtime at ``path``, a library already
/// loaded in this process (PyTorch's ``libgomp``), or on dynaq's own pool again (``None``).
/// Raises ``OSError`` when ``path`` is not loaded or exports no ``GOMP_parallel``.
#[pyfunction]
#[pyo3(signature = (path))]
pub fn share_openmp_team(path: Option<&str>) -> PyResult<()> {
    let Some(path) = path else {
        // SAFETY: `None` unregisters; no address is used.
        unsafe { threads::share_openmp_team(None) };
        return Ok(());
    };
    #[cfg(unix)]
    {
        let addr = gomp_parallel(path).map_err(PyOSError::new_err)?;
        // SAFETY: `addr` is `GOMP_parallel` of a library that was already loaded; the handle
        // from `dlopen` is never closed, so the library stays loaded for the process.
        unsafe { threads::share_openmp_team(Some(addr)) };
        Ok(())
    }
    #[cfg(not(unix))]
    {
        Err(PyOSError::new_err(format!(
            "sharing an OpenMP team is not supported on this platform ({path})"
        )))
    }
}

/// Whether multi-threaded loops run on a shared OpenMP team.
#[pyfunction]
pub fn sharing_openmp_team() -> bool {
    threads::sharing_openmp_team()
}

/// `GOMP_parallel` of the already loaded library `path` (never loads one).
#[cfg(unix)]
fn gomp_parallel(path: &str) -> Result<usize, String> {
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
