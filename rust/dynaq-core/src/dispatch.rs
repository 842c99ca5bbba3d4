//! The kernel tables: which GEMM and quantization kernels each path runs.
//!
//! The one place that turns a path into kernels, and the only code that names the `arch`
//! kernels. [`gemm_kernel`] and [`quant_kernels`] hand out a kernel only for a path this CPU
//! supports (the best detected one not above the request), and a kernel cannot be built outside
//! the crate, so holding one is the proof that the CPU has its features: the kernels' safe
//! doors ([`GemmKernel::run`], [`QuantKernels`]) check bounds, not the CPU.
//!
//! Dependencies run one way: [`crate::isa`] (paths, detection) <- [`crate::kernel`] (what a
//! kernel is) <- `arch` (the SIMD kernels) <- this module.

use crate::int4::kernel::{Int4Kernel, SCALAR_INT4};
use crate::isa::{active_isa, best_up_to, Isa};
use crate::kernel::{GemmKernel, QuantKernels, SCALAR_GEMM, SCALAR_QUANT};

/// The GEMM kernel for the best supported path not above `isa`.
pub fn gemm_kernel(isa: Isa) -> &'static GemmKernel {
    match best_up_to(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &crate::arch::x86_64::avx512vnni::GEMM,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &crate::arch::x86_64::avx2::GEMM,
        #[cfg(target_arch = "aarch64")]
        Isa::I8mm => &crate::arch::aarch64::i8mm::GEMM,
        #[cfg(target_arch = "aarch64")]
        Isa::Dotprod => &crate::arch::aarch64::dotprod::GEMM,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => &crate::arch::aarch64::neon::GEMM,
        _ => &SCALAR_GEMM,
    }
}

/// The 4-bit GEMM kernel for the best supported path not above `isa`.
///
/// The AVX-512 path runs the AVX2 4-bit kernel (every AVX-512 CPU has AVX2) until a 4-bit
/// AVX-512 kernel exists.
pub fn int4_kernel(isa: Isa) -> &'static Int4Kernel {
    match best_up_to(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx2 => &crate::arch::x86_64::avx2_int4::GEMM_INT4,
        #[cfg(target_arch = "aarch64")]
        Isa::I8mm => &crate::arch::aarch64::i8mm_int4::GEMM_INT4,
        #[cfg(target_arch = "aarch64")]
        Isa::Dotprod => &crate::arch::aarch64::dotprod_int4::GEMM_INT4,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => &crate::arch::aarch64::neon_int4::GEMM_INT4,
        _ => &SCALAR_INT4,
    }
}

/// The GEMM kernel for `m` rows of `linear` on the best supported path not above `isa`: few
/// rows have a streaming kernel of their own where the path has one.
// Only x86 has streaming kernels so far: elsewhere `m` chooses nothing.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn gemm_kernel_for(isa: Isa, m: usize) -> &'static GemmKernel {
    match best_up_to(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if m <= GEMV_ROWS => &crate::arch::x86_64::avx2_gemv::GEMV,
        _ => gemm_kernel(isa),
    }
}

/// Every GEMM kernel the path of `isa` may run (the tests check each).
pub fn gemm_kernels(isa: Isa) -> Vec<&'static GemmKernel> {
    path_kernels(isa, gemm_kernel, gemm_kernel_for)
}

/// The 4-bit kernel for `m` rows on the best supported path not above `isa`: on x86 few rows
/// have a streaming kernel of their own (it reads several panels side by side: more streams in
/// flight); on i8mm one row takes the dotprod kernel (it would waste half of every `ummla`).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_variables)
)]
pub fn int4_kernel_for(isa: Isa, m: usize) -> &'static Int4Kernel {
    match best_up_to(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx2 if m <= GEMV_ROWS => &crate::arch::x86_64::avx2_int4::GEMV_INT4,
        #[cfg(target_arch = "aarch64")]
        Isa::I8mm if m == 1 && Isa::Dotprod.is_supported() => {
            &crate::arch::aarch64::dotprod_int4::GEMM_INT4
        }
        _ => int4_kernel(isa),
    }
}

/// Most rows that take a streaming kernel. On AVX2 at 4096 x 11008, one thread (interleaved
/// medians), the 4-bit one (group 32) ran 1.6x the general kernel at M = 1, 1.24x at M = 2,
/// the same at M = 3 and 0.94x at M = 4; the int8 one 1.6x at M = 1, 1.18x at M = 2, 0.93x at
/// M = 3.
pub const GEMV_ROWS: usize = 2;

/// Every 4-bit kernel the path of `isa` may run (the tests check each).
pub fn int4_kernels(isa: Isa) -> Vec<&'static Int4Kernel> {
    path_kernels(isa, int4_kernel, int4_kernel_for)
}

/// The general kernel of the path of `isa` (`general`) and, where it is another one, the kernel
/// of one row (`for_rows(isa, 1)`): every kernel the path may run, each once.
fn path_kernels<K>(
    isa: Isa,
    general: fn(Isa) -> &'static K,
    for_rows: fn(Isa, usize) -> &'static K,
) -> Vec<&'static K> {
    let (all, one) = (general(isa), for_rows(isa, 1));
    if std::ptr::eq(all, one) {
        vec![all]
    } else {
        vec![all, one]
    }
}

/// The quantization kernels for the best supported path not above `isa`.
pub fn quant_kernels(isa: Isa) -> &'static QuantKernels {
    match best_up_to(isa) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &crate::arch::x86_64::avx512vnni::QUANT,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &crate::arch::x86_64::avx2_quant::QUANT,
        #[cfg(target_arch = "aarch64")]
        Isa::I8mm => &crate::arch::aarch64::i8mm::QUANT,
        #[cfg(target_arch = "aarch64")]
        Isa::Dotprod => &crate::arch::aarch64::dotprod::QUANT,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => &crate::arch::aarch64::neon::QUANT,
        _ => &SCALAR_QUANT,
    }
}

/// What each operation runs on the active path, for `cpu_info()`.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    /// Operation name (`"gemm"`, `"quantize"`, ...).
    pub op: &'static str,
    /// Kernel name, e.g. `avx512vnni_u8s8_i32_8x48`.
    pub kernel: String,
}

/// The kernel each operation uses on the active path.
pub fn kernel_report() -> Vec<KernelInfo> {
    let isa = active_isa();
    let g = gemm_kernel(isa);
    let q = quant_kernels(isa);
    vec![
        KernelInfo {
            op: "gemm",
            kernel: g.name.to_string(),
        },
        KernelInfo {
            op: "gemv",
            kernel: gemm_kernel_for(isa, 1).name.to_string(),
        },
        KernelInfo {
            op: "gemm_int4",
            kernel: int4_kernel(isa).name.to_string(),
        },
        KernelInfo {
            op: "gemv_int4",
            kernel: int4_kernel_for(isa, 1).name.to_string(),
        },
        KernelInfo {
            op: "minmax",
            kernel: q.name_minmax.to_string(),
        },
        KernelInfo {
            op: "quantize",
            kernel: q.name_quantize.to_string(),
        },
    ]
}
