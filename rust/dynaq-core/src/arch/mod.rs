//! Every SIMD kernel, one module per path. All `unsafe` SIMD code of the crate lives here.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub(crate) mod dequant;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
