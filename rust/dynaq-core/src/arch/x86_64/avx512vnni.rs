//! avx512vnni kernels (placeholder tables pointing at the scalar kernels until the SIMD code lands).

use crate::dispatch::Isa;
use crate::kernels::{GemmKernel, QuantKernels, SCALAR_GEMM, SCALAR_QUANT};

/// GEMM kernel of this path.
pub static GEMM: GemmKernel = GemmKernel {
    name: "avx512vnni_u8s8_i32_tmp",
    isa: Isa::Avx512Vnni,
    mr: SCALAR_GEMM.mr,
    np: SCALAR_GEMM.np,
    a_format: SCALAR_GEMM.a_format,
    func: SCALAR_GEMM.func,
};

/// Quantization kernels of this path.
pub static QUANT: QuantKernels = QuantKernels {
    name_minmax: "avx512vnni_minmax_tmp",
    name_quantize: "avx512vnni_quantize_tmp",
    isa: Isa::Avx512Vnni,
    minmax: SCALAR_QUANT.minmax,
    quantize_u8: SCALAR_QUANT.quantize_u8,
    quantize_i8: SCALAR_QUANT.quantize_i8,
};
