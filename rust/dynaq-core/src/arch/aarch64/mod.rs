//! aarch64 kernels: plain NEON (every ARMv8 CPU), dotprod (`sdot`, ARMv8.2) and i8mm (`usdot`,
//! ARMv8.6). See `README.md` in this folder for the design and the exactness argument.
//!
//! Every kernel is compiled with `#[target_feature]` and chosen at run time by
//! `is_aarch64_feature_detected!` (in [`crate::dispatch`]); nothing depends on the features the
//! crate is compiled for, so a wheel built for the ARMv8.0 baseline runs the best path each CPU
//! has. The dot-product instructions are not stable intrinsics in Rust yet, so they are emitted
//! with `asm!`, one instruction per statement, leaving register allocation to the compiler.
//!
//! The min/max and quantization kernels are the NEON ones on all three paths: the dot-product
//! extensions add nothing to them.

pub mod dotprod;
pub mod i8mm;
pub mod neon;
