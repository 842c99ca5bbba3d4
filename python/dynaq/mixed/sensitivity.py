"""What each candidate format costs each layer: its bytes, and the error it adds.

A :class:`Sensitivity` table holds one :class:`LayerCosts` per layer. Its ``noise`` column is
what the selection adds up and minimises (or bounds):

- measured with sample inputs (``dynaq.torch``): the error energy the layer adds to the
  model's output in that format, so ``signal / sum(noise)`` predicts the mixed model's output
  SQNR (errors of different layers are close to independent, so their energies add; the final
  measurement of the mixed model checks it);
- from the weights alone (:func:`measure_weights`): the layer's own relative output error
  energy on synthetic activations, every layer counting the same; ``signal`` is then the
  number of layers and the "SQNR" is that of the mean layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _dynaq
from .formats import Format

__all__ = ["LayerCosts", "Sensitivity", "measure_weights", "sqnr_db"]

#: Synthetic activation rows per layer for the weights-only measurement: enough that the error
#: energy is stable to ~1% (its relative spread falls as 1/sqrt(rows * out_features)).
SYNTHETIC_ROWS = 64


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``: inf when the noise is 0, -inf when the signal is."""
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class LayerCosts:
    """One layer's row of a :class:`Sensitivity` table: the formats it can take (those whose
    group size divides its input width, and float) and, for each, its stored bytes, its own
    output SQNR, its weight SQNR and its ``noise`` (see the module's notes).

    Attributes
    ----------
    name, kind : str
        The layer's name in its model (or tensor name in its file) and type.
    shapes : list of (int, int)
        Its weight matrices' ``(out, in)`` shapes.
    formats : tuple of Format
    nbytes : numpy.ndarray of int64
        Stored bytes of the layer's weights in each format: levels, scales and minima as
        dynaq's on-disk form holds them (float: the float weights as they are).
    layer_sqnr_db, weight_sqnr_db, noise : numpy.ndarray of float64
    """

    name: str
    kind: str
    shapes: list[tuple[int, int]]
    formats: tuple[Format, ...]
    nbytes: np.ndarray
    layer_sqnr_db: np.ndarray
    weight_sqnr_db: np.ndarray
    noise: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> int:
        """How many weights the layer holds."""
        return sum(n * k for n, k in self.shapes)

    def index(self, fmt: Format) -> int:
        """The position of ``fmt`` in :attr:`formats` (``ValueError`` when the layer cannot
        take it)."""
        try:
            return self.formats.index(fmt)
        except ValueError:
            raise ValueError(
                f"layer {self.name!r} cannot take format {fmt.name} (its input width "
                f"{self.shapes[0][1]} is not a multiple of the group size)"
            ) from None


@dataclass
class Sensitivity:
    """The table a plan is chosen from.

    Attributes
    ----------
    layers : list of LayerCosts
    signal : float
        The energy the noise is measured against (see the module's notes).
    calibrated : bool
        True when measured on the model with sample inputs; False from the weights alone.
    """

    layers: list[LayerCosts]
    signal: float
    calibrated: bool

    def predicted_sqnr_db(self, choice: Sequence[int]) -> float:
        """The SQNR the table predicts for one format index per layer."""
        noise = sum(float(lay.noise[j]) for lay, j in zip(self.layers, choice))
        return sqnr_db(self.signal, noise)

    def nbytes(self, choice: Sequence[int]) -> int:
        """Stored bytes of one format index per layer."""
        return sum(int(lay.nbytes[j]) for lay, j in zip(self.layers, choice))

    @property
    def weights(self) -> int:
        """How many weights the layers hold in all."""
        return sum(lay.weights for lay in self.layers)

    def uniform(self, fmt: Format) -> Optional[list[int]]:
        """The choice giving every layer ``fmt``; None when a layer cannot take it."""
        if any(fmt not in lay.formats for lay in self.layers):
            return None
        return [lay.formats.index(fmt) for lay in self.layers]


def stored_nbytes(weight: _dynaq.PackedWeight) -> int:
    """Bytes of a packed weight's stored form (levels, scales, minima; no padding)."""
    return sum(int(a.nbytes) for a in _dynaq.weight_tensors(weight).values())


def measure_weights(
    name: str,
    kind: str,
    matrices: Sequence[np.ndarray],
    formats: Sequence[Format],
    *,
    float_itemsize: int = 4,
    per_channel: bool = True,
    granularity: str = "row",
    rows: int = SYNTHETIC_ROWS,
    seed: int = 0,
) -> LayerCosts:
    """A layer's costs from its weights alone: each format's bytes, weight SQNR, and output
    SQNR on ``rows`` synthetic activation rows (standard normal, the same for every format),
    activations quantized as the layer will (``granularity``).

    Parameters
    ----------
    name, kind : str
    matrices : sequence of numpy.ndarray
        The layer's float weights, each ``(out, in)`` (an LSTM has several).
    formats : sequence of Format
        Candidates; those the layer cannot take (a group size that does not divide its input
        width) are left out of the row.
    float_itemsize : int
        Bytes per weight kept in float (the model's dtype).
    per_channel : bool
        int8 scales per output channel (default) or one per matrix.

    Returns
    -------
    LayerCosts
        ``noise`` is the relative output error energy.

    Raises
    ------
    ValueError
        A weight holds NaN or infinity, naming the layer.
    """
    ws = [np.ascontiguousarray(m, dtype=np.float32) for m in matrices]
    for w in ws:
        if w.ndim != 2 or not np.isfinite(w).all():
            raise ValueError(f"layer {name!r}: weights must be finite 2-D matrices")
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows, w.shape[1]), dtype=np.float32) for w in ws]
    refs = [x.astype(np.float64) @ w.T.astype(np.float64) for x, w in zip(xs, ws)]
    signal = sum(float(np.vdot(r, r)) for r in refs)
    w_energy = sum(float(np.vdot(w, w)) for w in ws)
    fits = tuple(f for f in formats if all(f.fits(w.shape[1]) for w in ws))
    nbytes, layer_db, weight_db, noise = [], [], [], []
    for fmt in fits:
        if fmt.is_float:
            nbytes.append(sum(w.size for w in ws) * float_itemsize)
            layer_db.append(math.inf)
            weight_db.append(math.inf)
            noise.append(0.0)
            continue
        out_noise = w_noise = 0.0
        size = 0
        for w, x, ref in zip(ws, xs, refs):
            opts = fmt.options() or {}
            packed = _dynaq.pack_weight(w, per_channel=per_channel or opts["bits"] == 4, **opts)
            size += stored_nbytes(packed)
            d = w - packed.dequantize()
            w_noise += float(np.vdot(d, d))
            e = ref - _dynaq.linear(x, packed, granularity=granularity)
            out_noise += float(np.vdot(e, e))
        nbytes.append(size)
        layer_db.append(sqnr_db(signal, out_noise))
        weight_db.append(sqnr_db(w_energy, w_noise))
        noise.append(out_noise / signal if signal > 0 else 0.0)
    return LayerCosts(
        name=name,
        kind=kind,
        shapes=[(int(w.shape[0]), int(w.shape[1])) for w in ws],
        formats=fits,
        nbytes=np.asarray(nbytes, dtype=np.int64),
        layer_sqnr_db=np.asarray(layer_db, dtype=np.float64),
        weight_sqnr_db=np.asarray(weight_db, dtype=np.float64),
        noise=np.asarray(noise, dtype=np.float64),
    )
