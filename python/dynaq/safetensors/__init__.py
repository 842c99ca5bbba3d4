"""Model files: safetensors reading and writing, and int8 quantization of whole files.

The safetensors format is an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON
(``{name: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str:
str}}``), then the data: every tensor's bytes, C order, little-endian, back to back. dynaq reads
and writes it with numpy and its native module alone (the ``safetensors`` package is not
needed, and files are interchangeable with it), checks every field when reading, and writes
atomically.

- :func:`read`, :func:`read_raw`, :func:`read_metadata`, :func:`write` and :class:`RawTensor`:
  any safetensors file (``_io.py``).
- :func:`quantize_file`: every 2-D floating-point tensor of a file to int8 values (stored as
  ``I8`` under the tensor's own name ``W``) and float32 scales (``W_scale``, one per output
  channel or one in all), exactly what :func:`dynaq.pack_weight` would use; everything else
  copied byte for byte (``_quantize.py``); with a budget or a plan, a format per tensor
  (``_choose.py``).
- :func:`load_quantized` reads such a file back into :class:`dynaq.PackedWeight` objects and
  :func:`load_linear` builds :class:`dynaq.layers.Linear` layers from it (``_load.py``).

Reading and format errors are ``ValueError`` naming the file and, where there is one, the tensor;
wrong argument types are ``TypeError``; ``OSError`` comes from the operating system.
"""

from __future__ import annotations

from ._io import RawTensor, read, read_metadata, read_raw, write
from ._load import load_linear, load_quantized
from ._quantize import ACTIONS, FORMAT_VERSION, QuantizeReport, TensorReport, quantize_file

__all__ = [
    "ACTIONS",
    "FORMAT_VERSION",
    "QuantizeReport",
    "RawTensor",
    "TensorReport",
    "load_linear",
    "load_quantized",
    "quantize_file",
    "read",
    "read_metadata",
    "read_raw",
    "write",
]
