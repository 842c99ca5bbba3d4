//! x86-64 kernels: AVX2 and AVX-512 VNNI. See `README.md` in this folder for the design.

pub mod avx2;
pub mod avx512vnni;
