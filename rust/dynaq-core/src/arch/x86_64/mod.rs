//! x86-64 kernels: AVX2 and AVX-512 VNNI. See `README.md` in this folder for the design.

pub mod avx2;

// The AVX-512 intrinsics and the `avx512vnni` target feature are stable since Rust 1.89.
#[clippy::msrv = "1.89"]
pub mod avx512vnni;
