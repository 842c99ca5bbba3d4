"""Type stubs of the native module (the PyO3 glue around dynaq-core)."""

from typing import Optional, final

import numpy as np
import numpy.typing as npt

ARCH: str
FORMAT_VERSION: int
MAX_K: int
__version__: str
__all__ = [
    "ARCH",
    "FORMAT_VERSION",
    "MAX_K",
    "PackedWeight",
    "__version__",
    "active_isa",
    "all_isas",
    "arch_isas",
    "cpu_features",
    "detected_isas",
    "dql_fast",
    "dynamic_quantize_linear",
    "env_warning",
    "get_num_threads",
    "kernels",
    "linear",
    "linear_fast",
    "linear_static",
    "matmul_integer",
    "max_isa",
    "physical_cores",
    "quantize_fast",
    "quantize_i8",
    "quantize_u8",
    "set_max_isa",
    "set_num_threads",
    "share_openmp_team",
    "sharing_openmp_team",
]

@final
class PackedWeight:
    """A float weight quantized to symmetric int8 and packed for this CPU's kernels."""

    @staticmethod
    def _from_float(weight: npt.NDArray[np.float32], per_channel: bool) -> PackedWeight: ...
    @staticmethod
    def from_quantized(values: npt.ArrayLike, scales: npt.ArrayLike) -> PackedWeight: ...
    @staticmethod
    def _from_quantized(
        values: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], per_channel: bool
    ) -> PackedWeight: ...
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
    def scales(self) -> npt.NDArray[np.float32]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def layout(self) -> str: ...
    def unpack(self) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
    def dequantize(self) -> npt.NDArray[np.float32]: ...
    def __reduce__(self) -> tuple[object, tuple[bytes]]: ...
    def __eq__(self, other: object, /) -> bool: ...

def dynamic_quantize_linear(
    x: npt.NDArray[np.float32], out: npt.NDArray[np.uint8], check_finite: bool
) -> tuple[float, int]: ...
def quantize_u8(
    x: npt.NDArray[np.float32], per_row: bool, check_finite: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.uint8]]: ...
def quantize_i8(
    x: npt.NDArray[np.float32], per_row: bool, check_finite: bool
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def linear(
    x: npt.NDArray[np.float32],
    weight: PackedWeight,
    bias: Optional[npt.NDArray[np.float32]],
    per_row: bool,
    check_finite: bool,
    out: npt.NDArray[np.float32],
) -> None: ...
def matmul_integer(
    a: npt.NDArray[np.generic],
    a_index: npt.NDArray[np.int64],
    b: npt.NDArray[np.generic],
    b_index: npt.NDArray[np.int64],
    a_zero_point: npt.NDArray[np.int32],
    b_zero_point: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> None: ...
def linear_fast(
    x: object,
    weight: object,
    bias: object,
    granularity: str,
    out: object,
    check_finite: bool,
) -> Optional[npt.NDArray[np.float32]]: ...
def quantize_fast(
    x: object, granularity: str, symmetric: bool, check_finite: bool
) -> Optional[tuple[npt.NDArray[np.generic], npt.NDArray[np.float32], npt.NDArray[np.generic]]]: ...
def dql_fast(
    x: object, check_finite: bool
) -> Optional[tuple[npt.NDArray[np.uint8], float, int]]: ...
def linear_static(
    x: npt.NDArray[np.float32],
    weight: PackedWeight,
    bias: Optional[npt.NDArray[np.float32]],
    scale: float,
    zero_point: int,
    check_finite: bool,
    out: npt.NDArray[np.float32],
) -> None: ...
def cpu_features() -> list[tuple[str, bool]]: ...
def detected_isas() -> list[str]: ...
def arch_isas() -> list[str]: ...
def all_isas() -> list[str]: ...
def active_isa() -> str: ...
def max_isa() -> str: ...
def set_max_isa(name: Optional[str] = None) -> str: ...
def env_warning() -> Optional[str]: ...
def kernels() -> dict[str, str]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def physical_cores() -> int: ...
def share_openmp_team(path: Optional[str]) -> None: ...
def sharing_openmp_team() -> bool: ...
