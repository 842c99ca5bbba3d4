//! Every SIMD kernel, one module per path. All `unsafe` SIMD code of the crate lives here.

pub(crate) mod dequant;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
