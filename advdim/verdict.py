"""Typed verdict records: one comparison of a prediction with a measurement.

Every check of the toolkit (theory vs simulation, a first-order identity on a trained net, ...)
returns a :class:`Verdict`; reports and the ``verify`` table read only these records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check.

    Attributes:
        claim: what is checked, in words.
        reference: where in the paper (e.g. ``"Theorem 4"``).
        predicted: the predicted value (``None`` when the theory gives none).
        measured: the measured value.
        interval: the acceptance interval or confidence interval ``(lo, hi)`` around ``measured``.
        passed: True, False, or None when there is nothing to compare.
        detail: one line on how the tolerance was derived, sample sizes, seeds.
        extra: machine-readable details.  Two keys are read by the report (``advdim.report``):

            - ``"series"``: data of a plot, drawn by the report from the record (a dict, or a list
              of dicts for several lines): ``{"figure": title shared by the verdicts drawn on
              the same axes, "label": legend text, "x": [...], "y": [...], "lo": [...],
              "hi": [...] (optional interval of y), "predicted": [...] (optional predicted y at
              x), "fit": [...] (optional fitted y at x), "xlabel": str, "ylabel": str,
              "loglog": bool}``; lists of equal length.  Optional ``"logx"`` / ``"logy"``: one
              logarithmic axis (x spanning more than three decades is drawn on a log axis anyway).
            - ``"plots"``: paths of PNG or SVG files a check drew itself (under
              ``Budget.out_dir``); the report embeds them.
    """

    claim: str
    reference: str
    predicted: float | None
    measured: float | None
    interval: tuple[float, float] | None
    passed: bool | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else list(self.interval)
        for key in ("predicted", "measured"):
            v = out[key]
            if isinstance(v, float) and not math.isfinite(v):
                out[key] = None
        return out
