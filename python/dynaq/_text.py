"""Text output shared by the command line, the reports and the benchmark: one table formatter
and one progress display.

Both write plain text only (no colours, no terminal control beyond ``\\r``), so their output
reads the same in a terminal, a log file and a CI transcript.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "format_table"]


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int] = (),
    groups: Sequence[int] = (),
    footer: Sequence[Sequence[str]] = (),
) -> list[str]:
    """Lines of a plain-text table: a header, a rule, the rows, and an optional footer below a
    second rule.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows, footer : sequence of sequence of str
        Cells, already formatted; every row has one cell per column.
    right : sequence of int
        Indices of the columns aligned right (numbers); the others are aligned left.
    groups : sequence of int
        Indices of the columns that start a new group: a ``|`` separates them from the column
        before.

    Returns
    -------
    list of str
        One string per line, trailing blanks removed.
    """
    every = [list(header), *map(list, rows), *map(list, footer)]
    ncols = len(header)
    for r in every:
        if len(r) != ncols:
            raise ValueError(f"table row {r!r} has {len(r)} cells, not {ncols}")
    widths = [max(len(r[i]) for r in every) for i in range(ncols)]
    right_set, group_set = set(right), set(groups)

    def line(cells: Sequence[str]) -> str:
        out = ""
        for i, (c, w) in enumerate(zip(cells, widths)):
            if i:
                out += " | " if i in group_set else "  "
            out += c.rjust(w) if i in right_set else c.ljust(w)
        return out.rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    lines = [line(header), rule, *(line(r) for r in rows)]
    if footer:
        lines += [rule, *(line(r) for r in footer)]
    return lines


def format_db(value: Optional[float]) -> str:
    """A level in decibels for a table: two decimals, ``inf`` when exact, ``-`` when absent."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) and value > 0 else f"{value:.2f}"


def _count(done: float, total: float) -> str:
    return f"{done:.0f}/{total:.0f}"


class Progress:
    """Progress of a long job on a stream: a bar redrawn in place on a terminal, one line per
    section otherwise, or nothing.

    Parameters
    ----------
    total : float
        Units of work in all (steps, bytes, ...).
    mode : {"bar", "lines", "off", "auto"}
        ``"auto"`` draws a bar when ``stream`` is a terminal and prints nothing otherwise.
    stream : file
        Where to write (usually ``sys.stderr``).
    amount : callable, optional
        ``amount(done, total)`` as shown beside the bar; ``"3/10"`` by default.
    clock : callable, optional
        Seconds, monotonic (``time.monotonic`` by default; tests pass their own).
    width : int
        Characters of the bar itself.

    Notes
    -----
    :meth:`step` and :meth:`update` say that work is starting (the bar counts the units done
    before it), :meth:`note` names what is happening, :meth:`section` prints a line that stays,
    and :meth:`close` erases the bar.
    """

    def __init__(
        self,
        total: float,
        mode: str = "auto",
        stream: Optional[TextIO] = None,
        *,
        amount: Callable[[float, float], str] = _count,
        clock: Callable[[], float] = time.monotonic,
        width: int = 24,
    ) -> None:
        if stream is None:
            import sys

            stream = sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "off"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"mode must be 'bar', 'lines', 'off' or 'auto', got {mode!r}")
        self.total = total if total > 0 else 1
        self.mode = mode
        self.stream = stream
        self.done = 0.0
        self.label = ""
        self._steps = 0
        self._amount = amount
        self._clock = clock
        self._start = clock()
        self._drawn = False
        self._bar = width

    def elapsed(self) -> str:
        """Time since the start, as ``m:ss``."""
        s = int(self._clock() - self._start)
        return f"{s // 60}:{s % 60:02d}"

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 80
        return columns if columns >= 20 else 80  # a pseudo-terminal may report 0

    def _draw(self) -> None:
        width = self._width()
        fill = round(min(self.done / self.total, 1.0) * self._bar)
        text = (
            f"[{'#' * fill}{'.' * (self._bar - fill)}] {self._amount(self.done, self.total)} "
            f"{self.elapsed()} {self.label}"
        )
        self.stream.write("\r" + text[: width - 1].ljust(width - 1))
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (self._width() - 1) + "\r")
            self._drawn = False

    def update(self, done: float, label: Optional[str] = None) -> None:
        """``done`` units are finished; ``label`` names what comes next (or what just ended)."""
        self.done = done
        if label is not None:
            self.label = label
        if self.mode == "bar":
            self._draw()

    def step(self, label: str) -> None:
        """One more unit starts (the ones before it are done)."""
        self._steps += 1
        self.update(self._steps - 1, label)

    def note(self, label: str) -> None:
        """What is happening now (work that is not a unit of its own)."""
        self.update(self.done, label)

    def section(self, text: str) -> None:
        """A line that stays: printed above the bar, or alone in ``lines`` mode."""
        if self.mode == "off":
            return
        self._clear()
        self.stream.write(f"[{self.elapsed()}] {text}\n")
        self.stream.flush()
        if self.mode == "bar":
            self._draw()

    def close(self) -> None:
        """Erases the bar (or ends the section lines with ``done``)."""
        if self.mode == "bar":
            self._clear()
            self.stream.flush()
        elif self.mode == "lines":
            self.stream.write(f"[{self.elapsed()}] done\n")
            self.stream.flush()
