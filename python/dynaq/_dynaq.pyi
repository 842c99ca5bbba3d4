"""Type stubs of the native module, the one crossing between Python and dynaq-core: every
public operation of ``dynaq`` is defined here (its docstring is the native function's)."""

from typing import Any, Optional, final

import numpy as np
import numpy.typing as npt

ARCH: str
FORMAT_VERSION: int
MAX_K: int
__version__: str
FORMAT_KEY: str
KIND_KEY: str
QUANTIZED_KEY: str
SCALE_SUFFIX: str
FORMAT_VERSION_INT4: int
WEIGHT_PART_SUFFIXES: list[str]
__all__ = [
    "ARCH",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "KIND_KEY",
    "MAX_K",
    "PackedWeight",
    "QUANTIZED_KEY",
    "QuantizedTensor",
    "SCALE_SUFFIX",
    "FORMAT_VERSION_INT4",
    "WEIGHT_PART_SUFFIXES",
    "__version__",
    "_held_calls",
    "_hold_detached_calls",
    "active_isa",
    "arch_isas",
    "as_float32",
    "as_packed_weight",
    "check_granularity",
    "cpu_features",
    "detected_isas",
    "dynamic_quantize_linear",
    "encode_safetensors_header",
    "env_warning",
    "get_max_isa",
    "get_num_threads",
    "kernels",
    "layer_linear",
    "linear",
    "matmul_integer",
    "pack_weight",
    "parse_safetensors_header",
    "physical_cores",
    "quantize",
    "read_blob",
    "safetensors_data_order",
    "safetensors_dtypes",
    "safetensors_header_len",
    "set_max_isa",
    "set_num_threads",
    "share_openmp_team",
    "sharing_openmp_team",
    "weight_from_tensors",
    "weight_format",
    "weight_tensors",
    "write_blob",
]

@final
class PackedWeight:
    @staticmethod
    def from_quantized(values: npt.ArrayLike, scales: npt.ArrayLike) -> PackedWeight: ...
    @staticmethod
    def from_panels(
        panels: npt.ArrayLike, scales: npt.ArrayLike, out_features: int, in_features: int
    ) -> PackedWeight: ...
    @staticmethod
    def from_int4_panels(
        panels: npt.ArrayLike,
        scale_codes: npt.ArrayLike,
        min_codes: npt.ArrayLike,
        row_scales: npt.ArrayLike,
        row_minima: npt.ArrayLike,
        out_features: int,
        in_features: int,
        *,
        group_size: Optional[int],
        symmetric: bool,
    ) -> PackedWeight: ...
    @staticmethod
    def panels_size(out_features: int, in_features: int, bits: int = 8) -> int: ...
    @staticmethod
    def code_panels_size(out_features: int, in_features: int, group_size: Optional[int]) -> int: ...
    @property
    def panels(self) -> npt.NDArray[Any]: ...
    @property
    def code_panels(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]: ...
    @property
    def row_factors(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    @staticmethod
    def from_bytes(data: bytes) -> PackedWeight: ...
    def to_bytes(self) -> bytes: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def out_features(self) -> int: ...
    @property
    def in_features(self) -> int: ...
    @property
    def per_channel(self) -> bool: ...
    @property
    def bits(self) -> int: ...
    @property
    def group_size(self) -> Optional[int]: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def scales(self) -> npt.NDArray[np.float32]: ...
    @property
    def nbytes(self) -> int: ...
    def unpack(self) -> tuple[npt.NDArray[Any], ...]: ...
    def dequantize(self) -> npt.NDArray[np.float32]: ...
    def __reduce__(self) -> tuple[object, tuple[bytes]]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class QuantizedTensor:
    @property
    def values(self) -> npt.NDArray[Any]: ...
    @property
    def scale(self) -> npt.NDArray[np.float32]: ...
    @property
    def zero_point(self) -> npt.NDArray[Any]: ...
    @property
    def granularity(self) -> str: ...
    @property
    def symmetric(self) -> bool: ...
    def dequantize(self) -> npt.NDArray[np.float32]: ...

def linear(
    x: npt.ArrayLike,
    weight: PackedWeight | npt.ArrayLike,
    bias: Optional[npt.ArrayLike] = None,
    *,
    granularity: str = "row",
    out: Optional[npt.NDArray[np.float32]] = None,
    check_finite: bool = True,
) -> npt.NDArray[np.float32]: ...
def layer_linear(
    x: npt.ArrayLike,
    weight: PackedWeight | npt.ArrayLike,
    bias: Optional[npt.ArrayLike],
    *,
    name: str,
    granularity: str = "row",
    scale: Optional[float] = None,
    zero_point: Optional[int] = None,
    out: Optional[npt.NDArray[np.float32]] = None,
) -> npt.NDArray[np.float32]: ...
def quantize(
    x: npt.ArrayLike,
    *,
    granularity: str = "tensor",
    symmetric: bool = False,
    check_finite: bool = True,
) -> QuantizedTensor: ...
def dynamic_quantize_linear(
    x: npt.ArrayLike, *, check_finite: bool = True
) -> tuple[npt.NDArray[np.uint8], np.float32, np.uint8]: ...
def matmul_integer(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    a_zero_point: Optional[npt.ArrayLike] = None,
    b_zero_point: Optional[npt.ArrayLike] = None,
) -> npt.NDArray[np.int32]: ...
def pack_weight(
    weight: npt.ArrayLike,
    *,
    per_channel: bool = True,
    bits: int = 8,
    group_size: Optional[int] = ...,
    symmetric: Optional[bool] = None,
    method: Optional[str] = None,
    importance: Optional[npt.ArrayLike] = None,
) -> PackedWeight: ...
def as_float32(
    obj: object, name: str, shape: Optional[tuple[int, ...]] = None
) -> npt.NDArray[np.float32]: ...
def as_packed_weight(
    obj: object,
    name: str,
    per_channel: bool = True,
    *,
    bits: int = 8,
    group_size: Optional[int] = ...,
    symmetric: Optional[bool] = None,
    method: Optional[str] = None,
    importance: Optional[npt.ArrayLike] = None,
) -> PackedWeight: ...
def check_granularity(granularity: str) -> None: ...
def cpu_features() -> list[tuple[str, bool]]: ...
def detected_isas() -> list[str]: ...
def arch_isas() -> list[str]: ...
def active_isa() -> str: ...
def get_max_isa() -> str: ...
def set_max_isa(name: Optional[str]) -> str: ...
def env_warning() -> Optional[str]: ...
def kernels() -> dict[str, str]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def physical_cores() -> int: ...
def share_openmp_team(path: Optional[str]) -> None: ...
def sharing_openmp_team() -> bool: ...
def write_blob(
    kind: str,
    weights: dict[str, PackedWeight],
    tensors: dict[str, npt.NDArray[Any]],
    extra: dict[str, str],
) -> bytes: ...
def read_blob(
    data: bytes, kind: str
) -> tuple[dict[str, PackedWeight], dict[str, npt.NDArray[Any]], dict[str, str]]: ...
def weight_format(
    in_features: int,
    *,
    per_channel: bool = True,
    bits: int = 8,
    group_size: Optional[int] = ...,
    symmetric: Optional[bool] = None,
    method: Optional[str] = None,
) -> tuple[int, Optional[int], bool, bool]: ...
def weight_tensors(weight: PackedWeight, name: str = "weight") -> dict[str, npt.NDArray[Any]]: ...
def weight_from_tensors(tensors: object, name: str = "weight") -> PackedWeight: ...
def safetensors_header_len(prefix: bytes, file_len: int) -> int: ...
def parse_safetensors_header(
    header: bytes, data_len: int
) -> tuple[list[tuple[str, str, tuple[int, ...], int, int]], dict[str, str]]: ...
def encode_safetensors_header(
    items: list[tuple[str, str, list[int], int]], metadata: list[tuple[str, str]]
) -> bytes: ...
def safetensors_data_order(items: list[tuple[str, str]]) -> list[str]: ...
def safetensors_dtypes() -> list[tuple[str, int]]: ...
def _hold_detached_calls(hold: bool) -> None: ...
def _held_calls() -> int: ...
