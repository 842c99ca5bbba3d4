//! 4-bit weights for int8 activations (W4A8): the parts built so far. Design notes, formulas and
//! the plan of what comes next: `README.md` beside this file.
//!
//! * [`quant`]: choosing each group's grid (scale and minimum) by round-to-nearest min-max or by
//!   a least-squares search, and coding a row's grids as u8 codes against two float32 factors
//!   per row.

//! * [`weight`]: [`Int4Weight`], a weight quantized and packed (`K8N16` nibbles) with its
//!   per-group column sums, and [`weight::linear_ref`], the scalar oracle of `linear` on it.
//! * [`format`]: the weight as plain named tensors (`W`, `W_scale`, `W_min`, `W_gscale`,
//!   `W_gmin`) and back, every tensor checked.

pub mod format;
pub mod quant;
pub mod weight;

pub use weight::Int4Weight;
