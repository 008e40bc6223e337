"""The best law of each quantity of the finite-d prediction, with its level (what ``advdim theory`` prints).

For each quantity (``E||d_x f_k||_2^2``, ``E||d_x f_k||_q`` for q = 1, 2, inf) and size: the wide-limit
law where an average pool after the first conv makes it differ from the path sum, the path sum beside
it; q = inf by the channel-gate model or the extreme-value fallback; each with its :class:`Level`. Read
from the :class:`~advdim.theory.Prediction` (its hypotheses, reasons, ``approximate``, the q = inf
method), never hard-coded per family.  No CLI imports: the core (the simulation's levels, the Monte
Carlo tables) reads it too; ``advdim.theory._cli`` prints it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advdim.theory import Prediction

#: the quantities of the finite-d prediction, in printing order (JSON keys of ``best``)
SQ = "grad_sq_norm"
NORM_KEYS = ("1", "2", "inf")


class Level(enum.Enum):
    """How far a printed value can be trusted, best first."""

    EXACT = "exact"  # the expectation itself, at every width, given the hypotheses marked as holding
    WIDE = "wide-limit"  # exact as the hidden widths grow; finite widths move it (the note says how)
    APPROXIMATE = "approximate"  # a law with a known or bounded error (the note gives it)
    FALLBACK = "extreme-value fallback"  # q = inf by independent Gaussian coordinates outside the model's envelope
    EXPONENT = "exponent only"  # an asymptotic exponent, no prefactor (token readouts: advdim.theory._tokens)
    NONE = "none"  # no law (max pooling, ...): the simulation measures it


@dataclass(frozen=True)
class Law:
    """One quantity at one size: the best value the toolkit has, its level, how it was computed and
    what is known about its error.

    ``path_sum`` is set on ``E||d_x f_k||_2^2`` when the value is not the path sum (the wide-limit
    law), so that both are shown; ``se`` is a Monte Carlo standard error of the value (None: none).
    """

    value: float | None
    level: Level
    method: str
    note: str = ""
    se: float | None = None
    path_sum: float | None = None
    error: float | None = field(default=None)  # a bound on the relative error, where one is documented

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "level": self.level.value, "method": self.method, "note": self.note,
                "se": self.se, "path_sum": self.path_sum, "relative_error_bound": self.error}


# --------------------------------------------------------------------------------------------
# The best law of each quantity
# --------------------------------------------------------------------------------------------
#: the finite-width note of the Gaussian-coordinate laws (docs/theory.md, section 4)
_FINITE_WIDTH = ("exact as the hidden widths grow; at finite width the gradient is a Gaussian scale mixture and "
                 "the value is lower by E tau / sqrt(E tau^2), more in deep narrow nets (docs/theory.md, section 4)")
#: what is known about the independent-Gaussian q = inf law on a conv first layer (docs/theory.md, section 4)
_FALLBACK_ERROR = ("it ignores the correlated, scale-mixed coordinates of a conv first layer: 11-32% low at s = 64 "
                   "on the built-in members, more the larger d and the fewer the channels")
#: the channel-gate model's documented agreement with real nets (docs/theory.md, 'The q = inf prediction')
CHANNEL_GATE_BOUND = 0.02
#: its bound where a global average pool over more than one position follows the last ReLU: the pooled
#: positions' gates are coupled (as under an average pool), and real nets run 3-6% above the model
#: (8 and 32 channels, s = 8 and 16, any padding; 20000 nets each; issue 22, tests/theory/test_maxnorm.py)
CHANNEL_GATE_GAP_BOUND = 0.07


def channel_gate_bound(spec: Any) -> tuple[float, str]:
    """The relative error bound the channel-gate q = inf law states on ``spec``, and why."""
    from advdim.arch import GlobalAvgPool

    for layer, shape in zip(spec.layers, spec.shapes()):
        if isinstance(layer, GlobalAvgPool) and len(shape) == 3 and shape[1] * shape[2] > 1:
            return CHANNEL_GATE_GAP_BOUND, ("a global average pool merges positions after the last ReLU: real nets "
                                            "run 3-6% above the model (8-32 channels, s = 8-16)")
    return CHANNEL_GATE_BOUND, "within 2% of real nets on the validated members"


def sq_norm_law(pred: Prediction, size: int, wide: bool = True) -> Law:
    """The best law of ``E||d_x f_k||_2^2`` at side ``size``.

    The wide-limit law where :meth:`Prediction.pooling_correction_applies` (unless ``wide`` is
    False or the law refuses the size: the path sum then, marked approximate, with the refusal),
    else the exact path sum (approximate with :attr:`Prediction.approximate`'s reason).
    """
    from advdim.errors import AdvdimError

    if not pred.has_law:
        return Law(None, Level.NONE, "none", pred.reasons.get("law", "no law"))
    path = pred.grad_sq_norm(size)
    if pred.pooling_correction_applies(size):
        why = ("an average pool after the first conv merges paths whose ReLU gates are coupled to the weights and to "
               "the gradient: the path sum drops their cross terms")
        if not wide:
            return Law(path, Level.APPROXIMATE, "path sum", f"{why}; the wide-limit law was skipped (--no-wide)")
        from advdim.theory._meanfield import cached_wide_law

        try:
            law = cached_wide_law(pred.spec_at(size), pred.init, pred.logit)
        except (AdvdimError, MemoryError) as e:
            reason = str(e) if str(e) else "out of memory"
            also = f"; and {pred.approximate}" if pred.approximate is not None else ""
            return Law(path, Level.APPROXIMATE, "path sum", f"{why}; the wide-limit law is not shown: {reason}{also}")
        return Law(law.value, Level.WIDE, "wide-limit covariance recursion (theory/_meanfield.py)",
                   f"{why}, which this law keeps; real nets with >= 64 channels agree within 2.5 se, 16 channels "
                   "run 1-3% higher (docs/theory.md, 'Average pooling beyond the path sum')", law.stderr, path)
    if pred.approximate is not None:
        from advdim.theory import _postact

        if _postact.applies(pred.spec_at(size)):  # ReLUs after residual adds: the chain law, exact as widths grow
            return Law(path, Level.WIDE, "post-activation chain law (theory/_postact.py)", pred.approximate)
        return Law(path, Level.APPROXIMATE, "path sum", pred.approximate)
    return Law(path, Level.EXACT, "path sum on the real graph", "exact at every width")


def norm_law(pred: Prediction, q: str, size: int, sq: Law) -> Law:
    """The best law of ``E||d_x f_k||_q`` (``q`` = ``"1"``, ``"2"`` or ``"inf"``) at side ``size``; ``sq``
    is :func:`sq_norm_law` at that size (its level carries over: the q-norms use the path-sum variances)."""
    from advdim.theory import _maxnorm

    if not pred.has_law:
        return Law(None, Level.NONE, "none", pred.reasons.get("law", "no law"))
    value = pred.expected_norm(q, size)
    spec = pred.spec_at(size)
    if sq.path_sum is not None:  # a wide-limit E||g||_2^2 above the path sum
        off = ("from the path-sum variances, whose sum the wide limit exceeds (E||g||_2^2: best / path sum above); "
               "no wide-limit law of the q-norms yet")
    elif sq.level is Level.APPROXIMATE:
        off = f"from the path-sum variances, themselves approximate: {sq.note}"
    else:
        off = None
    if q == "inf" and not _maxnorm.first_weighted_is_dense(spec):
        why = _maxnorm.covers(spec, pred.init)
        est = _maxnorm.expected_max_norm(spec, pred.init, pred.logit, rel_se=pred.inf_rel_se) if why is None else None
        if est is not None:
            bound, why_bound = channel_gate_bound(spec)
            return Law(value, Level.APPROXIMATE, "channel-gate model of the path sum (Monte Carlo)",
                       f"{why_bound} (docs/theory.md, 'The q = inf prediction for conv nets')"
                       + (f"; {off}" if off else ""), est.se, error=bound)
        return Law(value, Level.FALLBACK, "independent Gaussian coordinates with the path-sum variances",
                   f"outside the channel-gate model ({why or 'beyond the Monte Carlo budget'}); {_FALLBACK_ERROR}")
    method = ("independent Gaussian coordinates with the path-sum variances" if q == "inf" else
              "Gaussian coordinates with the path-sum variances")
    if off is not None:
        return Law(value, Level.APPROXIMATE, method, off)
    return Law(value, Level.WIDE, method, _FINITE_WIDTH)


def best_laws(pred: Prediction, wide: bool = True) -> dict[str, dict[int, Law]]:
    """Every quantity at every size: ``{"grad_sq_norm" | "1" | "2" | "inf": {size: Law}}``."""
    sq = {s: sq_norm_law(pred, s, wide) for s in pred.sizes}
    out = {SQ: sq}
    for q in NORM_KEYS:
        out[q] = {s: norm_law(pred, q, s, sq[s]) for s in pred.sizes}
    return out
