"""Numpy layers on dynaq's int8 kernels: ``Linear``, ``LSTM``, ``GRU`` and their cells.

Weights are quantized once (symmetric int8, per output channel by default); activations are
quantized at run time, per row by default, so one sequence's result never depends on the others
in the batch. Recurrent layers take PyTorch-format parameters (``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse`` for the second direction) in PyTorch's gate order
(LSTM: input, forget, cell, output; GRU: reset, update, new) and compute what ``torch.nn.LSTM`` /
``torch.nn.GRU`` compute in inference, up to quantization error. Every layer pickles, round-trips
through ``to_bytes()`` / ``from_bytes()`` (dynaq's one on-disk form: plain named tensors with
PyTorch's names), and has a readable ``repr``.

``linear.py`` holds ``Linear``; ``recurrent.py`` the recurrent layers and cells; ``_common.py``
what they share (weight and bias conversion, serialization).
"""

from __future__ import annotations

from .linear import Linear
from .recurrent import GRU, LSTM, GRUCell, LSTMCell

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "Linear"]
