"""Writes the committed seed corpus under ``fuzz/corpus/<target>/`` (run from anywhere; rerun
after a format change). Seeds are small valid inputs: serialized weights of awkward shapes,
small safetensors files (plain and dynaq-quantized), kernel inputs of each operation, and
layers (their bytes, version 2 and the version-1 files of tests/data/legacy, and the choice
bytes of fuzz_layers.py's structure-aware modes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import sys
import tempfile

import dynaq
import numpy as np
from dynaq import safetensors as st

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def _put(target: str, data: bytes, out: dict[str, list[bytes]]) -> None:
    out.setdefault(target, []).append(data)


def packed_weights(out: dict[str, list[bytes]]) -> None:
    rng = np.random.default_rng(0)
    for n, k, per_channel in [
        (1, 1, True),
        (3, 5, False),
        (17, 4, True),
        (2, 0, False),
        (0, 3, True),
        (16, 33, True),
        (5, 2, False),
    ]:
        w = rng.standard_normal((n, k)).astype(np.float32)
        pw = dynaq.pack_weight(w, per_channel=per_channel)
        for b in (pw.to_bytes(), _version_1(pw)):
            _put("packed_weight", b"\x00" + b, out)  # checksum as stored
            _put("packed_weight", b"\x01" + b, out)  # checksum fixed by the target
    # 4-bit weights (format version 3): group-wise and per channel, both grids.
    for n, k, opts in [
        (3, 32, dict(group_size=32)),
        (5, 64, dict(group_size=32, symmetric=True)),
        (2, 128, dict(group_size=128)),
        (3, 7, dict(group_size=None)),
        (4, 5, dict(group_size=None, symmetric=True)),
    ]:
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = dynaq.pack_weight(w, bits=4, **opts).to_bytes()
        _put("packed_weight", b"\x00" + b, out)
        _put("packed_weight", b"\x01" + b, out)


def _version_1(pw: dynaq.PackedWeight) -> bytes:
    """The weight as format version 1 (DYNAQPW) stored it (still read)."""
    import zlib

    values, scales = pw.unpack()
    n, k = pw.shape
    body = b"DYNAQPW\0" + struct.pack("<IIQQ", 1, int(pw.per_channel), n, k)
    body += scales.astype("<f4").tobytes() + values.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def safetensors_files(out: dict[str, list[bytes]]) -> None:
    rng = np.random.default_rng(1)
    tmp = tempfile.mkdtemp()
    try:
        plain = os.path.join(tmp, "plain.safetensors")
        st.write(
            plain,
            {
                "w": rng.standard_normal((3, 4)).astype(np.float32),
                "b": np.arange(3, dtype=np.float16),
                "i": np.array([1, -2], dtype=np.int8),
                "e": np.zeros((0, 2), dtype=np.float32),
                "bf": st.RawTensor("BF16", (2,), b"\x80\x3f\x00\x40"),
            },
            metadata={"k": "v"},
        )
        q = os.path.join(tmp, "quantized.safetensors")
        st.quantize_file(plain, q)
        qt = os.path.join(tmp, "quantized_tensor.safetensors")
        st.quantize_file(plain, qt, per_channel=False)
        empty = os.path.join(tmp, "empty.safetensors")
        st.write(empty, {})
        for p in (plain, q, qt, empty):
            with open(p, "rb") as f:
                data = f.read()
            _put("safetensors", b"\x00" + data, out)
            _put("safetensors", b"\x01" + data, out)
    finally:
        shutil.rmtree(tmp)


def layers(out: dict[str, list[bytes]]) -> None:
    # fuzz_layers.py: first byte = 4 * class index + mode (see its docs).
    from dynaq import layers as L

    classes = [L.Linear, L.LSTM, L.GRU, L.LSTMCell, L.GRUCell]
    legacy = os.path.join(os.path.dirname(HERE), "tests", "data", "legacy")
    files = {
        L.Linear: ["linear", "linear_static"],
        L.LSTM: ["lstm"],
        L.GRU: ["gru"],
        L.LSTMCell: ["lstmcell"],
        L.GRUCell: ["grucell"],
    }
    sys.path.insert(0, HERE)
    from _harness import Consumer
    from fuzz_layers import make_layer

    for i, cls in enumerate(classes):
        blobs = [make_layer(cls, Consumer(bytes([s, 1, 3, 2, 1, 1, 1]))).to_bytes() for s in (0, 7)]
        for name in files[cls]:
            with open(os.path.join(legacy, f"{name}.v1.bin"), "rb") as f:
                blobs.append(f.read())
        for b in blobs:
            _put("layers", bytes([4 * i]) + b, out)  # as stored
            _put("layers", bytes([4 * i + 1]) + b, out)  # checksum fixed
        choices = (bytes([1, 1, 2, 0, 1, 1, 1, 4, 3]), bytes([9, 0, 5, 3, 0, 1, 0, 1, 6, 0, 2]))
        for choice in choices:
            _put("layers", bytes([4 * i + 2]) + choice, out)  # structure-aware
            _put("layers", bytes([4 * i + 3]) + choice, out)  # structure-aware, state dict


def kernel_inputs(out: dict[str, list[bytes]]) -> None:
    # Byte layouts follow fuzz_kernels.py's Consumer reads: op, then each op's fields.
    def f32(*v: float) -> bytes:
        return struct.pack(f"<{len(v)}f", *v)

    # linear: op 0; m, n, k; per_channel, gran, check, bias, layer; x style 0 (raw), values;
    # w style 4 (bytes); bias style 1 (ints).
    lin = bytes([0, 3, 5, 7, 1, 0, 1, 1, 1, 0]) + f32(*np.linspace(-1, 2, 21)) + bytes([4])
    lin += bytes(range(0, 250, 7))[:35] + bytes([1, 30]) + bytes([1, 2, 3, 4, 5])
    _put("kernels", lin, out)
    _put("kernels", bytes([0, 1, 17, 33, 0, 1, 0, 0, 0, 3, 40]) + bytes(range(80)), out)
    _put("kernels", bytes([0, 2, 1, 1, 1, 1, 0, 0, 0, 0]) + f32(float("nan"), 1.0), out)
    # quantize: op 1; rows, cols (2 bytes); 2-D?; gran, sym, check; x style 2 (one value).
    _put("kernels", bytes([1, 4, 65, 0, 1, 0, 0, 1, 2]) + f32(3e38), out)
    _put("kernels", bytes([1, 3, 16, 0, 1, 1, 1, 1, 1, 20]) + bytes(range(48)), out)
    _put("kernels", bytes([1, 1, 67, 0, 0, 0, 0, 0, 0]) + f32(*([1e-40] * 67)), out)
    # dynamic_quantize_linear: op 2; count (2 bytes); x style 3 (ramp with outliers).
    _put("kernels", bytes([2, 63, 0, 3, 20, 2]) + b"\x05" + f32(-7.5) + b"\x09" + f32(1e-45), out)
    _put("kernels", bytes([2, 17, 0, 0]) + f32(*range(-8, 9)), out)
    # matmul_integer: op 3; m, k, n; dtypes; batch choices; values; zero-point mode.
    _put(
        "kernels",
        bytes([3, 4, 33, 17, 0, 1, 0, 0])
        + bytes(range(256))[: 4 * 33 + 33 * 17]
        + bytes([2])
        + bytes(range(4))
        + bytes(range(17)),
        out,
    )
    _put(
        "kernels",
        bytes([3, 2, 9, 5, 1, 0, 1, 2, 1, 1]) + bytes(range(255, 0, -1)) + bytes([1, 7, 9]),
        out,
    )


def main() -> None:
    out: dict[str, list[bytes]] = {}
    packed_weights(out)
    safetensors_files(out)
    kernel_inputs(out)
    layers(out)
    for target, seeds in out.items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for s in seeds:
            name = hashlib.sha1(s).hexdigest()
            with open(os.path.join(d, name), "wb") as f:
                f.write(s)
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
