"""Typed verdict records: one comparison of a prediction with a measurement.

Every check of the toolkit (theory vs simulation, a first-order identity on a trained net, ...)
returns a :class:`Verdict`; reports and the ``verify`` table read only these records.

A verdict is three-valued (:class:`Outcome`): **pass**, **fail** or **inconclusive**, plus
**n/a** for a row that is only reported (no prediction the theory backs).  A test at false
rejection rate alpha may always say "fail"; it may say "pass" only when it could have caught the
smallest error the claim is about: its ``power`` against that error (``resolution``) is at least
:data:`MIN_POWER`.  A passed test without that power is inconclusive; so is a passed test that
states no power at all (the safe side: a producer that forgets the power never prints "pass").
Claims that are not equivalence tests (a one-sided "A is below B") set ``status`` themselves.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advdim.stats import TwoSided

#: the least power against the claim's stated error (``Verdict.resolution``) at which a passed
#: test says "pass" rather than "inconclusive"
MIN_POWER = 0.8


class Outcome(enum.Enum):
    """What a verdict says."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    REPORTED = "n/a"  # reported, not judged: the theory backs no prediction here

    @property
    def judged(self) -> bool:
        return self is not Outcome.REPORTED


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check.

    Attributes:
        claim: what is checked, in words.
        reference: where in the paper (e.g. ``"Theorem 4"``).
        predicted: the predicted value (``None`` when the theory gives none).
        measured: the measured value.
        interval: the acceptance interval or confidence interval ``(lo, hi)`` around ``measured``.
        passed: the test's own answer: True (inside the acceptance interval), False, or None when
            there is nothing to compare.  Read :attr:`outcome`, not this, for what the row says.
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
    power: float | None = None
    resolution: str = ""
    status: Outcome | None = None
    #: the two-sided test behind a judged row (``advdim.stats.TwoSided``): what :func:`advdim.stats.holm`
    #: re-judges at a family-wise rate; None for rows that are not such a test
    test: TwoSided | None = None

    @property
    def outcome(self) -> Outcome:
        """pass, fail, inconclusive or n/a (see the module docstring)."""
        if self.status is not None:
            return self.status
        if self.passed is None:
            return Outcome.REPORTED
        if not self.passed:
            return Outcome.FAIL
        if self.power is None or not self.power >= MIN_POWER:
            return Outcome.INCONCLUSIVE
        return Outcome.PASS

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = None if self.status is None else self.status.value
        out["outcome"] = self.outcome.value
        out["interval"] = None if self.interval is None else list(self.interval)
        out["test"] = None if self.test is None else self.test.to_json()
        for key in ("predicted", "measured"):
            v = out[key]
            if isinstance(v, float) and not math.isfinite(v):
                out[key] = None
        return out


#: an outcome in the words of tables and reports
WORDS = {Outcome.PASS: "pass", Outcome.FAIL: "FAIL", Outcome.INCONCLUSIVE: "inconclusive", Outcome.REPORTED: "n/a"}


def status(outcome: Outcome) -> str:
    """``"pass"``, ``"FAIL"``, ``"inconclusive"`` or ``"n/a"``."""
    return WORDS[outcome]


def power_note(power: float | None, resolution: str) -> str:
    """``"power 0.93 against slope +-0.05"`` for a detail line ("power not stated" when unknown)."""
    if power is None:
        return "power not stated"
    return f"power {power:.3f} against {resolution}" if resolution else f"power {power:.3f}"


def count(verdicts: list[Verdict]) -> dict[Outcome, int]:
    """How many verdicts say each outcome (every outcome present, zeros included)."""
    out = dict.fromkeys(Outcome, 0)
    for v in verdicts:
        out[v.outcome] += 1
    return out
