"""dynaq: fast, exact dynamic int8 quantization and int8 GEMM for CPUs.

Weights are quantized to int8 once (:func:`pack_weight`); activations are quantized at run time
from their own range, per row by default (:func:`linear`); the int8 GEMM accumulates exactly in
int32 on every kernel path (scalar, AVX2, AVX-512 VNNI on x86-64; NEON, dotprod, i8mm on
aarch64), and a fused epilogue returns float32.

Also: ONNX-exact :func:`dynamic_quantize_linear` and :func:`matmul_integer`, the general
:func:`quantize`, and :func:`cpu_info` / :func:`set_max_isa` to see and choose the kernel path.

Every operation is a function of the native module ``dynaq._dynaq`` (re-exported here): it
checks and converts its arguments, releases the GIL while it computes, and raises ``TypeError``
/ ``ValueError`` / ``OverflowError`` / ``MemoryError`` naming the argument at fault
(``docs/CONTRACT.md``).
"""

from __future__ import annotations

import warnings

from . import _dynaq
from ._dynaq import (
    PackedWeight,
    QuantizedTensor,
    dynamic_quantize_linear,
    get_max_isa,
    get_num_threads,
    linear,
    matmul_integer,
    pack_weight,
    quantize,
    set_max_isa,
    set_num_threads,
)
from ._runtime import cpu_info, use_isa

__version__: str = _dynaq.__version__

__all__ = [
    "PackedWeight",
    "QuantizedTensor",
    "__version__",
    "cpu_info",
    "dynamic_quantize_linear",
    "get_max_isa",
    "get_num_threads",
    "linear",
    "matmul_integer",
    "pack_weight",
    "quantize",
    "set_max_isa",
    "set_num_threads",
    "use_isa",
]

_env_warning = _dynaq.env_warning()
if _env_warning:
    warnings.warn(_env_warning, RuntimeWarning, stacklevel=2)
