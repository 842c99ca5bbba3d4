"""The formats a mixed-precision plan chooses from, one per layer, and their names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from .. import _dynaq

__all__ = ["DEFAULT_FORMATS", "Format", "parse_formats"]


@dataclass(frozen=True)
class Format:
    """One weight format: float (kept as it is), int8, or 4-bit with its group size.

    Parameters
    ----------
    bits : int or None
        8 or 4; None keeps the layer in float.
    group_size : int or None
        4 bits: 32, 64 or 128 input features per scale and minimum, or None for one per output
        channel.
    symmetric : bool
        4 bits: levels symmetric about zero (no minima).
    method : {"search", "rtn"}
        4 bits: how each group's grid is found.

    Notes
    -----
    Names (:attr:`name`, and what :meth:`parse` reads): ``"float"``, ``"int8"``, ``"int4"``
    (group 32), ``"int4-g64"``, ``"int4-g128"``, ``"int4-channel"``, with ``-sym`` and/or
    ``-rtn`` appended for the 4-bit options.
    """

    bits: Optional[int]
    group_size: Optional[int] = None
    symmetric: bool = False
    method: str = "search"

    def __post_init__(self) -> None:
        if self.bits is None:
            if (self.group_size, self.symmetric, self.method) != (None, False, "search"):
                raise ValueError("a float format takes no 4-bit options")
            return
        if self.bits == 8 and (self.group_size, self.symmetric, self.method) != (
            None,
            False,
            "search",
        ):
            raise ValueError("group_size, symmetric and method apply to 4-bit formats only")
        # The one place for the rules: what pack_weight accepts (128 columns: every group divides).
        _dynaq.weight_format(128, **self._pack_options())

    def _pack_options(self) -> dict[str, Any]:
        if self.bits == 8:
            return {"bits": 8}
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "method": self.method,
        }

    @property
    def is_float(self) -> bool:
        """True for the format that keeps a layer in float."""
        return self.bits is None

    @property
    def name(self) -> str:
        """The format's name, as :meth:`parse` reads it."""
        if self.bits is None:
            return "float"
        if self.bits == 8:
            return "int8"
        group = "-channel" if self.group_size is None else f"-g{self.group_size}"
        if self.group_size == 32:
            group = ""
        return (
            f"int4{group}{'-sym' if self.symmetric else ''}{'-rtn' if self.method == 'rtn' else ''}"
        )

    def options(self) -> Optional[dict[str, Any]]:
        """The weight options of ``quantize_dynamic``'s ``qconfig_spec`` (and
        :func:`dynaq.pack_weight`) for this format; None for float."""
        return None if self.bits is None else self._pack_options()

    def layer_options(self, per_channel: bool = True) -> Optional[dict[str, Any]]:
        """:meth:`options` with ``per_channel``, which is int8's option (4-bit weights have
        scales per group or per output channel whatever it says); None for float."""
        opts = self.options()
        if opts is not None:
            opts["per_channel"] = per_channel if self.bits == 8 else True
        return opts

    def fits(self, in_features: int) -> bool:
        """Whether a weight of ``in_features`` columns can take this format (a group size
        must divide it)."""
        if self.bits is None:
            return True
        try:
            _dynaq.weight_format(in_features, **self._pack_options())
        except ValueError:
            return False
        return True

    @classmethod
    def parse(cls, spec: Union[Format, str, Mapping[str, Any], None]) -> Format:
        """A format from its name (``"int4-g128"``), a dict of options (``{"bits": 4,
        "group_size": 128}``; None or ``{"bits": None}`` for float), or a Format.

        Raises
        ------
        ValueError
            An unknown name or an unsupported combination.
        """
        if isinstance(spec, Format):
            return spec
        if spec is None:
            return FLOAT
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"bits", "group_size", "symmetric", "method"})
            if unknown:
                raise ValueError(f"unknown format option(s) {unknown}")
            bits = spec.get("bits")
            group = spec.get("group_size", 32 if bits == 4 else None)
            return cls(bits, group, bool(spec.get("symmetric")), spec.get("method") or "search")
        if not isinstance(spec, str):
            raise TypeError(f"a format is a name, a dict or a Format, got {type(spec).__name__}")
        match = _NAME.fullmatch(spec.strip().lower())
        if match is None:
            raise ValueError(
                f"unknown format {spec!r}: expected float, int8, int4, int4-g64, int4-g128 or "
                "int4-channel (4-bit ones may end in -sym and/or -rtn)"
            )
        kind, group, sym, rtn = match.groups()
        if kind == "float" or kind == "int8":
            if group or sym or rtn:
                raise ValueError(f"format {spec!r}: group sizes, -sym and -rtn are 4-bit options")
            return FLOAT if kind == "float" else cls(8)
        size = None if group == "channel" else int((group or "32").lstrip("g"))
        return cls(4, size, bool(sym), "rtn" if rtn else "search")


_NAME = re.compile(r"(float|int8|int4)(?:-(g?\d+|channel))?(-sym)?(-rtn)?")


def parse_formats(specs: Optional[Iterable[Any]]) -> tuple[Format, ...]:
    """The candidate formats of a plan: :data:`DEFAULT_FORMATS` for None, else each entry
    parsed (names, dicts or Formats), without repeats, float included whether named or not
    (a layer no format fits stays float).

    Raises
    ------
    ValueError
        No entry, or an entry :meth:`Format.parse` refuses.
    """
    if specs is None:
        return DEFAULT_FORMATS
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    out: list[Format] = []
    for spec in specs:
        fmt = Format.parse(spec)
        if fmt not in out:
            out.append(fmt)
    if not any(not f.is_float for f in out):
        raise ValueError("formats must name at least one quantized format (int8 or int4-...)")
    if FLOAT not in out:
        out.append(FLOAT)
    return tuple(out)


FLOAT = Format(None)
#: What a plan chooses from unless told otherwise: every 4-bit group size (asymmetric, searched
#: grids), int8 per channel, and float.
DEFAULT_FORMATS = (
    Format(4, None),
    Format(4, 128),
    Format(4, 64),
    Format(4, 32),
    Format(8),
    FLOAT,
)
