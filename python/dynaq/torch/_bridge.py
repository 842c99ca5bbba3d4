"""What the modules accept (CPU, dense, float32; float64, float16 and bfloat16 converted), when
a call may skip the dispatcher, and which foreign modules are linear layers (transformers'
``Conv1D``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_CONVERTED_DTYPES = (torch.float64, torch.float16, torch.bfloat16)
_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def direct(x: Any) -> bool:
    """Whether a call on ``x`` may run dynaq directly through numpy: a plain CPU float32 tensor
    outside any tracing (``torch.compile``, ``torch.export``, ``torch.jit.trace``, fake or
    functorch tensors) that needs no autograd. Everything else goes through the registered
    operator, which computes the same bits."""
    return (
        type(x) is torch.Tensor
        and not torch.compiler.is_compiling()
        and x.dtype == torch.float32
        and x.is_cpu
        and x.layout == torch.strided
        and not x.is_nested
        and torch._C._get_tracing_state() is None  # torch.jit.trace (and the ONNX exporter)
        and not (x.requires_grad and torch.is_grad_enabled())
        and not (_is_wrapped is not None and _is_wrapped(x))
    )


def checked(x: Any, name: str, owner: str, meta: bool = False) -> torch.Tensor:
    """``x`` as a float32 tensor for dynaq's operators (converted from float64, float16 and
    bfloat16), or the documented error naming it; on the ``meta`` device only when ``meta``
    (a module that is itself a skeleton)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError(f"{owner}: {name} must be a dense tensor, got a nested tensor")
    if x.device.type != "cpu" and not (meta and x.device.type == "meta"):
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
    return x


def is_conv1d(t: Any) -> bool:
    """Whether ``t`` (a module or a module type) is transformers' ``Conv1D`` (GPT-2 and the
    models built on it): a linear layer whose weight is stored transposed, ``(in, out)``, with
    ``nx`` inputs and ``nf`` outputs. Recognized without importing transformers."""
    cls = t if isinstance(t, type) else type(t)
    return cls.__name__ == "Conv1D" and cls.__module__.split(".")[0] == "transformers"


def param_numpy(p: torch.Tensor, name: str) -> np.ndarray:
    if not p.dtype.is_floating_point:
        raise TypeError(f"parameter {name} must be floating point, got {p.dtype}")
    return p.detach().to("cpu", torch.float32).contiguous().numpy()
