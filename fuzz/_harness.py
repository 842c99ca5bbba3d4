"""Shared driver of the fuzz targets: atheris (coverage-guided, libFuzzer) when it is installed,
a plain randomized mutation loop otherwise (or with ``DYNAQ_FUZZ_RANDOM=1``).

Each target defines ``test_one_input(data: bytes)``, which raises on a finding (a crash, an
undocumented exception, or a result that differs between paths or from the reference) and
returns normally otherwise, then calls :func:`main`. Both drivers take libFuzzer's command line:
corpus directories (new inputs go to the first) and ``-max_total_time=SECONDS``; atheris takes
every other libFuzzer flag too.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The numpy references of the test suite (tests/refimpl.py).
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _use_atheris() -> bool:
    if os.environ.get("DYNAQ_FUZZ_RANDOM") == "1":
        return False
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


USE_ATHERIS = _use_atheris()


def instrumented_imports() -> object:
    """Context manager: imports inside it get atheris coverage instrumentation (dynaq's Python
    modules; the native module is not instrumented)."""
    if USE_ATHERIS:
        import atheris

        return atheris.instrument_imports(include=["dynaq"])
    import contextlib

    return contextlib.nullcontext()


def instrument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: atheris coverage for a function of the target itself (its branches on
    outcomes and error messages are the fuzzer's only feedback from the native module)."""
    if USE_ATHERIS:
        import atheris

        return atheris.instrument_func(fn)  # type: ignore[no-any-return]
    return fn


class Consumer:
    """Reads typed values from the front of the fuzzer's bytes. Once they run out, bytes come
    from a generator seeded with the input (deterministic: an input always means the same
    values), so that short inputs still carry varied values rather than zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self._rng: random.Random | None = None

    def take(self, n: int) -> bytes:
        b = self.data[self.pos : self.pos + n]
        self.pos += len(b)
        if len(b) < n:
            if self._rng is None:
                self._rng = random.Random(zlib.crc32(self.data))
            b += self._rng.randbytes(n - len(b))
        return b

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        span = hi - lo + 1
        nbytes = max(1, (span.bit_length() + 7) // 8)
        return lo + int.from_bytes(self.take(nbytes), "little") % span

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def f32_bits(self, n: int) -> list[float]:
        return list(struct.unpack(f"<{n}f", self.take(4 * n)))


_SEAL = b'"dynaq.crc32":"'
#: Version-1 containers, which end with the CRC-32 of everything before it.
_CRC_AT_END = (b"DYNAQPW\0", b"DYNAQLY\0")


def fix_checksum(body: bytes) -> bytes:
    """``body`` with its checksum recomputed where it has one, so that mutations reach the
    checks behind it: the last 4 bytes of a version-1 container, or the ``dynaq.crc32`` digits
    of a version-2 blob (the CRC-32 of the whole buffer with those digits read as zeros)."""
    if body.startswith(_CRC_AT_END):
        if len(body) >= 4:
            body = body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))
        return body
    at = body.find(_SEAL)
    if at < 0 or len(body) < at + len(_SEAL) + 8:
        return body
    at += len(_SEAL)
    zeroed = body[:at] + b"00000000" + body[at + 8 :]
    return zeroed[:at] + b"%08x" % zlib.crc32(zeroed) + zeroed[at + 8 :]


# ---------------------------------------------------------------------------------------------
# The fallback driver.
# ---------------------------------------------------------------------------------------------


def same_on_every_path(compute: Callable[[], Any], what: str) -> Any:
    """Runs ``compute`` under each of dynaq's kernel paths and returns its result; raises
    AssertionError unless every path gives the same bytes."""
    import dynaq

    isas = dynaq.cpu_info()["isas"]
    want = None
    for isa in isas:
        with dynaq.use_isa(isa):
            got = compute()
        if want is None:
            want = got
        elif got.tobytes() != want.tobytes():
            raise AssertionError(f"{what} on {isa} differs from {isas[0]}")
    return want


def _corpus(dirs: list[str]) -> list[bytes]:
    seeds = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    seeds.append(f.read())
    return seeds or [b""]


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        op = rng.randrange(8)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # set a byte to an interesting value
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:  # insert bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and b:  # delete a range
            i = rng.randrange(len(b))
            del b[i : i + rng.randrange(1, 17)]
        elif op == 4 and len(b) >= 8:  # overwrite a little-endian integer
            i = rng.randrange(len(b) - 7)
            width = rng.choice((1, 2, 4, 8))
            v = rng.choice((0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, rng.getrandbits(64)))
            b[i : i + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 5:  # splice with another seed
            other = rng.choice(seeds)
            if other:
                i = rng.randrange(len(other))
                b = b[: rng.randrange(len(b) + 1)] + bytearray(other[i:])
        elif op == 6 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        else:  # copy a chunk within
            if len(b) > 2:
                i, j = rng.randrange(len(b)), rng.randrange(len(b))
                n = rng.randrange(1, 9)
                b[j : j + n] = b[i : i + n]
    return bytes(b[: 1 << 16])


def _random_inputs(seeds: list[bytes], rng: random.Random) -> Iterator[bytes]:
    yield from seeds  # every seed once, as libFuzzer does
    while True:
        if rng.random() < 0.05:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 256)))
        else:
            yield _mutate(rng, rng.choice(seeds), seeds)


def _run_random(test_one_input: Callable[[bytes], None], argv: list[str]) -> None:
    max_time = 60.0
    prefix = ""
    dirs = []
    for a in argv[1:]:
        if a.startswith("-max_total_time="):
            max_time = float(a.split("=", 1)[1])
        elif a.startswith("-artifact_prefix="):
            prefix = a.split("=", 1)[1]
        elif not a.startswith("-"):
            dirs.append(a)
    seed = int(os.environ.get("DYNAQ_FUZZ_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    seeds = _corpus(dirs)
    print(f"random mode (no atheris): seed {seed}, {len(seeds)} corpus inputs", flush=True)
    start = time.monotonic()
    runs = 0
    for data in _random_inputs(seeds, rng):
        if runs % 64 == 0 and time.monotonic() - start >= max_time:
            break
        try:
            test_one_input(data)
        except BaseException:
            path = f"{prefix}crash-random-{seed}-{runs}"
            with open(path, "wb") as f:
                f.write(data)
            print(f"==ERROR: finding on input {runs}; written to {path}", flush=True)
            raise
        runs += 1
    elapsed = time.monotonic() - start
    print(f"Done {runs} runs in {int(elapsed)} second(s)", flush=True)


def main(test_one_input: Callable[[bytes], None]) -> None:
    if USE_ATHERIS:
        import atheris

        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    else:
        _run_random(test_one_input, sys.argv)
