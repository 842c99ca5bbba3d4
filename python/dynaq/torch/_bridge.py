"""Tensors to numpy and back: what the modules accept (CPU, dense, float32; float64, float16 and
bfloat16 converted) and return (the input's dtype)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_CONVERTED_DTYPES = (torch.float64, torch.float16, torch.bfloat16)


def to_numpy(x: Any, name: str, owner: str) -> np.ndarray:
    """A CPU float tensor as float32 numpy, without a copy when it already is float32."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError(f"{owner}: {name} must be a dense tensor, got a nested tensor")
    if x.device.type != "cpu":
        raise ValueError(
            f"{owner}: {name} is on device {str(x.device)!r}; dynaq runs on the CPU (move the "
            "input with .cpu(), or keep this module in float on the accelerator)"
        )
    if x.dtype != torch.float32:
        if x.dtype not in _CONVERTED_DTYPES:
            raise TypeError(
                f"{owner}: {name} must be a floating-point tensor (float32; float64, float16 and "
                f"bfloat16 are converted), got {x.dtype}"
            )
        x = x.float()
    if x.layout != torch.strided:
        raise TypeError(f"{owner}: {name} must be a dense tensor, got layout {x.layout}")
    return x.detach().numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t if dtype == torch.float32 else t.to(dtype)


def param_numpy(p: torch.Tensor, name: str) -> np.ndarray:
    if not p.dtype.is_floating_point:
        raise TypeError(f"parameter {name} must be floating point, got {p.dtype}")
    if p.device.type == "meta":
        raise ValueError(f"parameter {name} is on the meta device (it has no values to quantize)")
    return p.detach().to("cpu", torch.float32).contiguous().numpy()
