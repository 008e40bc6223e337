"""Plot helpers shared by every figure of advdim (the report's and simulate's): outcome colours, wrapped
titles, short target names, readable log axes, lines through measured points.  Core: no report, no CLI."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from advdim.verdict import Outcome

#: colours of the outcomes (also used in the HTML)
COLOURS = {Outcome.PASS: "#1a7f37", Outcome.FAIL: "#cf222e", Outcome.INCONCLUSIVE: "#9a6700",
           Outcome.REPORTED: "#6e7781"}


#: average width of a character of DejaVu Sans, in ems (a little above the mean, so wrapped text fits)
_EM_PER_CHAR = 0.6


def chars_per_line(inches: float, fontsize: float) -> int:
    """How many characters of ``fontsize``-point text fit on ``inches`` of width (an estimate)."""
    return max(12, int(inches * 72 / (fontsize * _EM_PER_CHAR)))


def wrap(text: str, inches: float, fontsize: float, max_lines: int = 3) -> str:
    """``text`` wrapped to ``inches`` at ``fontsize``, cut with "..." after ``max_lines`` lines.

    Lines break at spaces; a word too long for a line (a spec text without spaces) breaks after a
    comma or a ``>``, and only then inside the word.

    >>> len(wrap("a " * 40, 1.0, 10, max_lines=2).splitlines()), wrap("short", 3, 9)
    (2, 'short')
    >>> wrap("vit(activation=gelu,classes=10,depth=2,dim=32,heads=2)", 2.0, 10).splitlines()[0]
    'vit(activation=gelu,'
    """

    width = chars_per_line(inches, fontsize)
    pieces: list[tuple[str, bool]] = []  # (piece, joins the previous piece without a space)
    for word in str(text).split():
        parts = re.findall(r"[^,>]*[,>]|[^,>]+", word) if len(word) > width else [word]
        pieces += [(part, k > 0) for k, part in enumerate(parts)]
    lines: list[str] = []
    line = ""
    for piece, glued in pieces:
        candidate = line + ("" if glued or not line else " ") + piece
        if len(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = piece
        while len(line) > width:  # a piece longer than a line: cut inside it
            lines.append(line[:width])
            line = line[width:]
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, min(len(lines[-1]), width - 3))].rstrip() + "..."
    return "\n".join(lines)


def short_name(text: str, limit: int = 36) -> str:
    """A target's text short enough for a title: itself, or its first characters and "..." (the full
    text goes into the figure's caption).

    >>> short_name("strided"), short_name("3x8x8 > conv(8) > relu > avgpool(2) > conv(8) > relu > flatten > dense(10)")
    ('strided', '3x8x8 > conv(8) > relu > avgpool(2) ...')
    """
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" >,(") + " ..."


def _nice_log_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values (1, 2, 5 x 10^k, then finer) inside ``[lo, hi]``, at most ``most`` of them, spread."""
    import numpy as np

    if not (lo > 0 and hi > lo):
        return []
    k0, k1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)):
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in subs if lo <= m * 10.0**k <= hi]
        if len(ticks) >= 3 or (len(ticks) >= 2 and subs != (1.0,)):
            return _thin(ticks, lo, hi, most)
    return [float(f"{v:.2g}") for v in np.geomspace(lo, hi, 4)[1:-1]]


def _thin(values: Sequence[float], lo: float, hi: float, most: int) -> list[float]:
    """Keep values at least 1/``most`` of the log range apart (the first one always)."""
    span = math.log(hi / lo)
    kept: list[float] = []
    for v in sorted(values):
        if not kept or math.log(v / kept[-1]) >= span / most * 0.999:
            kept.append(v)
    return kept


def _tick_text(v: float) -> str:
    """``192``, ``12288``, ``0.05``, ``2.5e-05``: plain numbers, integers in full up to a million."""
    if float(v).is_integer() and 1 <= v < 1e6:
        return str(int(v))
    if v >= 1e5 or v < 1e-3:
        mant, exp = f"{v:.1e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{v:.3g}"


def readable_log_axis(ax: Any, axis: str, values: Sequence[float] | None = None, most: int = 5) -> None:
    """Label a log axis with a few plain numbers, never two overlapping ones: the data's own values
    (``values``, e.g. the dimensions d measured) when they spread well, else round values; minor
    ticks stay unlabelled ("3x10^2 4x10^2" no more)."""
    import matplotlib.ticker as mticker

    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks: list[float] = []
    if values is not None:
        inside = sorted({float(v) for v in values if math.isfinite(float(v)) and lo <= float(v) <= hi and v > 0})
        ticks = _thin(inside, lo, hi, most) if len(inside) >= 2 and hi > lo > 0 else []
    if len(ticks) < 2:
        ticks = _nice_log_ticks(lo, hi, most)
    target.set_major_locator(mticker.FixedLocator(ticks))
    target.set_major_formatter(mticker.FixedFormatter([_tick_text(v) for v in ticks]))
    target.set_minor_formatter(mticker.NullFormatter())


def through_points(x: Iterable[float], y: Iterable[float], slope: float) -> list[float]:
    """The power law ``c x^slope`` through the geometric mean of the points ``(x, y)`` (positive ones),
    evaluated at ``x``: a reference line of a given slope drawn among the data.

    >>> [round(v, 6) for v in through_points([1.0, 4.0], [2.0, 2.0], 0.5)]
    [1.414214, 2.828427]
    """
    x, y = [float(a) for a in x], [float(b) for b in y]
    pts = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
    if not pts:
        return [math.nan] * len(x)
    mx = sum(math.log(a) for a, _ in pts) / len(pts)
    my = sum(math.log(b) for _, b in pts) / len(pts)
    return [math.exp(my + slope * (math.log(a) - mx)) if a > 0 else math.nan for a in x]


#: the label of the paper's law drawn on rows without a law of their own
PAPER_LAW_LABEL = "paper's law d^(1/q-1/2) (reference)"
#: the reference line of a token-readout network's rows (advdim.theory._tokens): its own exponent-only law
TOKEN_LAW_LABEL = "token-readout law d^(1/q-1) (exponent only)"


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
