//! # dynaq-core: exact dynamic int8 quantization and int8 GEMM
//!
//! Pure Rust, no Python. The bindings crate (`dynaq-py`) is glue around this one.
//!
//! ## The arithmetic
//!
//! * Activations `x` (float32, `m x k`) are quantized at run time to **u8** with a scale and a zero
//!   point per row (or per tensor): `xq = clamp(round_half_even(x / sx) + zx, 0, 255)`.
//! * Weights `w` (float32, `n x k`, the `torch.nn.Linear` convention) are quantized once to **s8** in
//!   `[-127, 127]` with a symmetric scale per output channel (or per tensor): `wq = round(w / sw)`.
//! * The GEMM accumulates `acc[m][n] = sum_k xq[m][k] * wq[n][k]` exactly in **i32**. Every ISA path
//!   (scalar, AVX2, AVX-512 VNNI, ...) returns the same integers, bit for bit: no path saturates.
//!   K is processed in chunks of at most [`gemm::K_CHUNK`] so that an i32 accumulator can never
//!   overflow (`65536 * 255 * 128 < 2^31`); longer reductions add the chunks in i64.
//! * The epilogue returns `y = f32(acc - zx * colsum(wq)[n]) * (sx * sw[n]) + bias[n]`, where the
//!   correction is exact integer arithmetic and the float operations are the same on every path.
//!
//! ## Layout of the crate
//!
//! * [`reference`]: the scalar oracle for every operation; SIMD paths are tested against it.
//! * [`quant`]: parameter choice (ONNX `DynamicQuantizeLinear`, asymmetric, symmetric) and the
//!   dispatching front end for min/max and quantization.
//! * [`pack`]: the packed weight panels (`K4N16`) and their column sums.
//! * [`gemm`]: the driver (tiling, K chunks, threads) around microkernels.
//! * [`epilogue`]: i32 tiles to float32 (`linear`) or to checked i32 (`matmul_integer`).
//! * [`ops`]: the operations the Python package exposes, on plain slices.
//! * [`weight`]: `PackedWeight`, a weight quantized once and packed for the kernels.
//! * [`format`]: the one on-disk form (int8 values and float32 scales as plain named tensors,
//!   one format version) and the reader of what version 1 wrote.
//! * [`safetensors`]: the one strict safetensors reader and writer (files, sealed blobs), on
//!   [`json`], a strict JSON parser that quotes values as Python's `repr()` does in messages.
//! * [`threads`]: the rayon pool, and the optional shared OpenMP team ([`threads::openmp`]).
//! * [`int4`]: 4-bit weights (W4A8): the quantizers, the packed weight, its oracle, the kernel
//!   type and the driver.
//!
//! The choice of kernels runs one way: [`isa`] (the paths, CPU detection, the `DYNAQ_MAX_ISA`
//! cap) <- [`kernel`] (what a kernel is: a struct with a tile size and one `unsafe fn`) <- `arch`
//! (every `unsafe` SIMD kernel, one module per ISA) <- [`dispatch`] (the kernel table of each
//! path).

pub mod dispatch;
pub mod epilogue;
pub mod error;
pub mod format;
pub mod gemm;
pub mod int4;
pub mod isa;
pub mod json;
pub mod kernel;
pub mod ops;
pub mod pack;
pub mod quant;
pub mod reference;
pub mod safetensors;
pub mod threads;
pub mod weight;

mod arch;

pub use dispatch::KernelInfo;
pub use error::{Error, Result};
pub use isa::Isa;
pub use weight::PackedWeight;
