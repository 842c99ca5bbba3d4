//! `dynaq._dynaq`: the one crossing between Python and `dynaq-core`.
//!
//! Every public operation of the `dynaq` package is a function of this module, with its real
//! signature: Python calls it directly, it turns the Python arguments into checked arrays
//! (`args`: the numpy rules, written once), runs the core operation with the GIL released, and
//! maps core errors to Python exceptions naming the user's argument (`errors`). The core keeps
//! only its own safety and shape checks.
//!
//! * `args`: argument conversion (float and 8-bit arrays, `out=`, options) and result arrays.
//! * `gil`: `detach`, the GIL release every kernel call goes through.
//! * `errors`: core errors -> `ValueError` / `OverflowError` / `MemoryError`, worded per argument.
//! * `ops`: `linear`, `quantize`, `dynamic_quantize_linear`, and the layers' helpers.
//! * `matmul`: `matmul_integer` (numpy's matmul shapes, ONNX zero points).
//! * `weight`: `PackedWeight` and `pack_weight`; `quantized`: `QuantizedTensor`.
//! * `format`: the on-disk form (dynaq blobs, a weight as plain tensors, the safetensors header
//!   rules the Python file reader uses).
//! * `runtime`: kernel paths, threads, CPU information; `openmp`: sharing PyTorch's threads.

mod args;
mod errors;
mod format;
mod gil;
mod matmul;
mod openmp;
mod ops;
mod quantized;
mod runtime;
mod weight;

use pyo3::prelude::*;

#[pymodule]
fn _dynaq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<weight::PyPackedWeight>()?;
    m.add_class::<quantized::QuantizedTensor>()?;
    m.add_function(wrap_pyfunction!(ops::linear, m)?)?;
    m.add_function(wrap_pyfunction!(ops::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(ops::dynamic_quantize_linear, m)?)?;
    m.add_function(wrap_pyfunction!(matmul::matmul_integer, m)?)?;
    m.add_function(wrap_pyfunction!(weight::pack_weight, m)?)?;
    m.add_function(wrap_pyfunction!(weight::weight_format, m)?)?;
    m.add_function(wrap_pyfunction!(ops::layer_linear, m)?)?;
    m.add_function(wrap_pyfunction!(ops::as_float32, m)?)?;
    m.add_function(wrap_pyfunction!(ops::as_packed_weight, m)?)?;
    m.add_function(wrap_pyfunction!(ops::check_granularity, m)?)?;
    m.add_function(wrap_pyfunction!(format::write_blob, m)?)?;
    m.add_function(wrap_pyfunction!(format::read_blob, m)?)?;
    m.add_function(wrap_pyfunction!(format::weight_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(format::weight_from_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(format::safetensors_header_len, m)?)?;
    m.add_function(wrap_pyfunction!(format::parse_safetensors_header, m)?)?;
    m.add_function(wrap_pyfunction!(format::encode_safetensors_header, m)?)?;
    m.add_function(wrap_pyfunction!(format::safetensors_data_order, m)?)?;
    m.add_function(wrap_pyfunction!(format::safetensors_dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::detected_isas, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::arch_isas, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_max_isa, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::set_max_isa, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::env_warning, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::kernels, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::physical_cores, m)?)?;
    m.add_function(wrap_pyfunction!(openmp::share_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(openmp::sharing_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(gil::hold_detached_calls, m)?)?;
    m.add_function(wrap_pyfunction!(gil::held_calls, m)?)?;
    m.add("ARCH", std::env::consts::ARCH)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", dynaq_core::format::FORMAT_VERSION)?;
    m.add("FORMAT_KEY", dynaq_core::format::FORMAT_KEY)?;
    m.add("KIND_KEY", dynaq_core::format::KIND_KEY)?;
    m.add("QUANTIZED_KEY", dynaq_core::format::QUANTIZED_KEY)?;
    m.add("SCALE_SUFFIX", dynaq_core::format::SCALE_SUFFIX)?;
    m.add(
        "FORMAT_VERSION_INT4",
        dynaq_core::format::FORMAT_VERSION_INT4,
    )?;
    m.add(
        "WEIGHT_PART_SUFFIXES",
        dynaq_core::format::WEIGHT_PART_SUFFIXES.to_vec(),
    )?;
    m.add("MAX_K", dynaq_core::pack::MAX_K)?;
    Ok(())
}
