//! 4-bit weights for int8 activations (W4A8). Design notes, formulas and
//! the plan of what comes next: `README.md` beside this file.
//!
//! * [`quant`]: choosing each group's grid (scale and minimum) by round-to-nearest min-max or by
//!   a least-squares search, and coding a row's grids as u8 codes against two float32 factors
//!   per row.
//! * [`weight`]: [`Int4Weight`], a weight quantized and packed (`K8N16` nibbles) with its codes
//!   beside the panels and its column constants, and [`weight::linear_ref`], the scalar oracle
//!   of `linear` on it.
//! * [`kernel`]: what a 4-bit microkernel is ([`kernel::Int4Tile`]) and the scalar one.
//! * [`gemm`]: the driver around the kernels and the epilogue, run by `ops::linear`.
//! * [`format`]: the weight as plain named tensors (`W`, `W_scale`, `W_min`, `W_gscale`,
//!   `W_gmin`) and back, every tensor checked.

pub mod format;
pub mod gemm;
pub mod kernel;
pub mod quant;
pub mod weight;

pub use weight::Int4Weight;
