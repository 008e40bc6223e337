"""SIMULATE checks of ``advdim verify``: Monte Carlo slopes against the theory's finite-d law.

- Theorem 4 (``dense``) and Theorem 5 / Corollary 6 (``strided``): slope of
  ``log E||d_x f_k||_q`` against ``log d`` (q = 1, 2, inf) and the prefactor ``E||d_x f_k||_2^2``;
- Appendix B (``avgpool``): the same against its own (dampened) prediction, and its slopes lower
  than the strided family's;
- ``maxpool``: measured slopes and intervals, no prediction (the theory gives no law).

Every slope verdict has false-rejection rate ``ALPHA`` (``advdim.stats``); with
``Budget.plant_exponent != 0`` the measured norms are multiplied by ``d**plant_exponent`` and
the slope verdicts must fail (the planted-false-claim test).  A slope verdict that does not fail
says "pass" only with power >= 0.8 against a slope off by 0.05 at its own standard error, else
"inconclusive" (``advdim.verdict``); the DEFAULT budget of :func:`plan` gives every judged row that
power (se <= 0.0102 against the 0.0145 that power 0.8 needs at n = 200: ``docs/simulate-power.md``); TINY does
not and may say inconclusive.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from advdim.simulate._study import FamilyResult, study
from scipy import stats

from advdim.checks import Budget, Part, Scale, register
from advdim.stats import ALPHA, critical
from advdim.verdict import Outcome, Verdict, power_note


@dataclass(frozen=True)
class _Plan:
    sizes: tuple[int, ...]
    nets: int
    draws: int
    inputs: int


def plan(scale: Scale, family: str) -> _Plan:
    """Budget per scale: TINY is seconds (the test suite), DEFAULT under a minute per family."""
    if scale is Scale.TINY:
        return _Plan((8, 16), 16 if family in ("dense", "avgpool") else 8, 2, 2)
    if scale is Scale.PAPER:
        return _Plan((8, 16, 32, 64, 128), 1000, 4, 4)
    return _Plan((8, 16, 32, 64), 200, 2, 2)  # the default of `advdim simulate` (power: docs/simulate-power.md)


@functools.lru_cache(maxsize=8)
def _run(budget: Budget, family: str) -> FamilyResult:
    p = plan(budget.scale, family)
    return study(family, p.sizes, 3, p.nets, p.inputs, budget.seed, budget.device, "logit", True,
                 budget.plant_exponent, draws=p.draws, workers=budget.workers, scheduler=budget.scheduler,
                 progress=False)


def _with_plots(budget: Budget, res: FamilyResult, verdicts: list[Verdict]) -> list[Verdict]:
    if budget.out_dir is None:
        return verdicts
    from advdim.simulate._plot import plot_family

    paths = [str(p) for p in plot_family(res, budget.out_dir)]
    return [dataclasses.replace(v, extra={**v.extra, "plots": paths}) for v in verdicts]


@register("simulate-dense", Part.SIMULATE)
def check_dense(budget: Budget) -> list[Verdict]:
    """Theorem 4: ``E||d_x f_k||_q ~ d^(1/q - 1/2)`` for random fully connected ReLU nets."""
    res = _run(budget, "dense")
    return _with_plots(budget, res, res.verdicts())


@register("simulate-strided", Part.SIMULATE)
def check_strided(budget: Budget) -> list[Verdict]:
    """Theorem 5 / Corollary 6: the same law for strided CNNs."""
    res = _run(budget, "strided")
    return _with_plots(budget, res, res.verdicts())


def lower_verdicts(low: FamilyResult, high: FamilyResult, alpha: float = ALPHA) -> list[Verdict]:
    """One-sided tests ``slope(low) < slope(high)`` per q (independent studies: se of the difference).

    A directional claim sets its outcome itself: with ``diff = slope(high) - slope(low)`` and the
    one-sided critical value ``c`` at level ``alpha``, **pass** when ``diff - c*se > 0`` (the interval
    excludes "no difference"), **fail** when ``diff + c*se < 0`` (it shows the opposite order, at the
    same level), **inconclusive** otherwise.  ``power`` is that of the pass side against the
    theory's predicted difference (when both slopes have one), for the record.
    """
    out = []
    n = min(low.nets, high.nets)
    z = critical(2 * alpha, n)  # one-sided level alpha, small-sample corrected
    for key in low.q:
        a, b = low.q[key], high.q[key]
        diff = b.measured_slope - a.measured_slope
        se = float(np.hypot(a.se, b.se))
        lo, hi = diff - z * se, diff + z * se
        status = Outcome.PASS if lo > 0 else Outcome.FAIL if hi < 0 else Outcome.INCONCLUSIVE
        predicted = (None if a.predicted_slope is None or b.predicted_slope is None
                     else b.predicted_slope - a.predicted_slope)
        pw = None if predicted is None or se <= 0 else float(stats.norm.cdf(predicted / se - z))
        resolution = "" if predicted is None else f"a difference of {predicted:.3f} (the predicted one)"
        out.append(Verdict(
            f"{low.family} slope below {high.family} slope (q={key})", "Appendix B", predicted,
            diff, (lo, hi), bool(lo > 0),
            f"one-sided: pass iff difference of slopes > {z:.3f} * se {se:.4f} (false pass rate {alpha:g}), "
            f"fail iff < -{z:.3f} * se (the opposite order), else inconclusive; {power_note(pw, resolution)}",
            {"se": se, "power": pw}, power=pw, resolution=resolution, status=status))
    return out


@register("simulate-avgpool", Part.SIMULATE)
def check_avgpool(budget: Budget) -> list[Verdict]:
    """Appendix B: average pooling dampens the gradients (own finite-d law, lower than strided)."""
    res = _run(budget, "avgpool")
    ref = _run(budget, "strided")
    return _with_plots(budget, res, res.verdicts()) + lower_verdicts(res, ref)


@register("simulate-maxpool", Part.SIMULATE)
def check_maxpool(budget: Budget) -> list[Verdict]:
    """Max pooling: measured slopes and intervals only (the theory gives no law)."""
    res = _run(budget, "maxpool")
    return _with_plots(budget, res, res.verdicts())


# --------------------------------------------------------------------------------------------
# Beyond the paper (issue 14): residual, normalised and attention networks
# --------------------------------------------------------------------------------------------

#: the targets of the "beyond the paper" section: a fixed residual member (its law is derived:
#: judged), and random or fixed members of the families the theory gives no law for (reported,
#: with whether the measured exponent is consistent with d^(1/q - 1/2))
BEYOND_TARGETS = ("resnet(blocks=1,scale=0.5)", "bn", "ln", "vit", "vit(scaling=tokens)")


def beyond_plan(scale: Scale) -> _Plan:
    """TINY: seconds; DEFAULT: about a minute on 2 cores for all five targets; PAPER: a GPU."""
    if scale is Scale.TINY:
        return _Plan((8, 16), 6, 2, 2)
    if scale is Scale.PAPER:
        return _Plan((8, 16, 32, 64), 400, 4, 4)
    return _Plan((8, 16, 32), 48, 2, 4)


@register("simulate-beyond", Part.SIMULATE)
def check_beyond(budget: Budget) -> list[Verdict]:
    """Residual nets (judged against the residual path-sum law), batch norm in batch mode, layer
    norm and vision transformers with a fixed patch or a fixed token count (measured exponents)."""
    p = beyond_plan(budget.scale)
    out: list[Verdict] = []
    for target in BEYOND_TARGETS:
        res = study(target, p.sizes, 3, p.nets, p.inputs, budget.seed, budget.device, "logit", True,
                    budget.plant_exponent, draws=p.draws, workers=budget.workers, scheduler=budget.scheduler,
                    progress=False)
        out += _with_plots(budget, res, res.verdicts())
    return out
