"""THEORY checks run by ``advdim verify``: the path-sum law against Monte Carlo on real nets, the
symbolic laws against the path sum and against Monte Carlo, and the first-order statements.

Every row states its power against the error it must catch: the Monte Carlo rows a 10% error of
the predicted ``E||d_x f||_2^2`` (power >= 0.8 at a two-sided false-failure rate of 0.01, the
number of nets drawn from the per-net spread, :func:`advdim.theory._numeric.mc_grad_sq_powered`);
the exact comparisons (closed form vs path sum, Lemma 2, Proposition 3) power 1 against any error
above their floating-point tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from advdim.theory import (
    Prediction,
    check_lemma2,
    check_one_neuron,
    check_proposition3_on_net,
    check_snr,
    predict,
)
from advdim.theory._first_order import check_one_neuron_slope
from advdim.theory._law import d
from advdim.theory._numeric import ALPHA, critical, mc_grad_sq_powered, mc_verdict

from advdim.arch import Padding, Spec, family, parse
from advdim.checks import Budget, Part, Scale, register
from advdim.errors import HypothesisError
from advdim.verdict import Verdict

#: relative tolerance of the closed form against the float64 path sum (rounding only)
EXACT_TOL = 1e-9
#: Monte Carlo budget per scale: (input side of the closed-form rows, pilot nets, most nets per row)
MC_PLAN = {Scale.TINY: (8, 20, 40), Scale.DEFAULT: (16, 60, 1500), Scale.PAPER: (32, 200, 20000)}
#: families and inits of the symbolic-law rows
LAW_FAMILIES = ("dense", "strided", "avgpool", "gap")
LAW_INITS = ("he", "glorot", "torch")


def _mc_row(spec: Spec, predicted: float, claim: str, reference: str, budget: Budget, seed: int, init: str = "he",
            variance_factor: float = 1.0) -> Verdict:
    """A Monte Carlo row at ``budget``'s power plan; gradient norms planted by ``d ** plant_exponent``."""
    _, pilot, most = MC_PLAN[budget.scale]
    samples = mc_grad_sq_powered(spec, init, 0, seed=seed, pilot=pilot, max_nets=most,
                                 variance_factor=variance_factor)
    samples = samples * float(spec.d) ** (2 * budget.plant_exponent)
    return mc_verdict(spec, predicted, samples, claim, reference, sigmas=critical(ALPHA), what="E||d_x f||_2^2")


def backed_value(pred: Prediction, size: int, value: float) -> tuple[float | None, str]:
    """The value the theory backs for ``E||d_x f||_2^2`` at ``size``: ``value`` (the path sum or
    closed form) where it is exact, the wide-limit law where average pooling makes it approximate
    (``Prediction.wide_grad_sq_norm``), ``None`` where neither is backed; and a note for the claim."""
    if pred.approximate is None or not pred.pooling_correction_applies(size):
        return value, ""
    try:
        wide = pred.wide_grad_sq_norm(size)
    except HypothesisError as err:
        return None, f"; the path sum {value:.4g} is approximate here and the wide-limit law does not apply: {err}"
    return wide, f"; judged against the wide-limit law (the path sum {value:.4g} misses merged-pool terms)"


def _backed_row(pred: Prediction, size: int, value: float, claim: str, reference: str, budget: Budget, seed: int,
                variance_factor: float = 1.0) -> Verdict:
    spec = pred.spec_at(size)
    backed, note = backed_value(pred, size, value)
    if backed is None:
        return Verdict(claim + note, reference, None, None, None, None, "no prediction the theory backs")
    return _mc_row(spec, backed, claim + note, reference, budget, seed, init=pred.init, variance_factor=variance_factor)


#: members of the path-sum rows: zero padding (outside S, so outside the closed form), a narrow dense net
PATH_SUM_MEMBERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("strided", {"channels": 8, "padding": Padding.ZEROS, "final": 2}),
    ("dense", {"widths": (32, 32)}),
    ("avgpool", {"channels": 8, "padding": Padding.ZEROS}),
)


@register("theory-path-sum-mc", Part.THEORY)
def path_sum_mc(budget: Budget) -> list[Verdict]:
    """E||d_x f_k||_2^2: exact path sum vs the mean over independently initialised He nets.

    Members outside the closed form's reach (zero padding breaks S; a narrow dense net), one input
    channel at s = 8; false failure 0.01 per row, power >= 0.8 against a 10% error when the
    row's budget allows (else inconclusive).
    """
    size = 8
    out = []
    for k, (name, params) in enumerate(PATH_SUM_MEMBERS):
        spec = family(name, **params).spec(size, channels=1)
        pred = predict(spec)
        label = ",".join(f"{key}={getattr(v, 'value', v)}" for key, v in params.items())
        claim = f"E||d_x f||_2^2 path sum vs Monte Carlo ({name}({label}), 1x{size}x{size})"
        out.append(_backed_row(pred, size, pred.grad_sq_norm(size), claim, "Theorem 5 (path sum)", budget,
                               seed=budget.seed * 101 + k))
    return out


def closed_form_value(pred: Prediction, size: int) -> float:
    """The SymPy law ``pred.grad_sq_norm_expr`` at the member's ``d``."""
    if pred.grad_sq_norm_expr is None:
        raise ValueError("the prediction has no closed form")
    return float(pred.grad_sq_norm_expr.subs(d, pred.dim(size)))


def closed_form_verdict(pred: Prediction, label: str, sizes: Sequence[int]) -> Verdict:
    """The closed form in ``d`` equals the exact path sum at every size (deterministic, float64).

    Shows the closed form's value (predicted) and the path sum (measured) at the size where they
    differ most; fails when any size differs by more than :data:`EXACT_TOL` relative (power 1
    against any larger error; the Monte Carlo row of :func:`closed_form_mc_verdict` catches an
    error that both sides share).
    """
    rows = [(s, closed_form_value(pred, s), pred.grad_sq_norm(s)) for s in sizes]
    s, law, paths = max(rows, key=lambda r: abs(r[1] / r[2] - 1))
    worst = abs(law / paths - 1)
    return Verdict(f"E||d_x f||^2 = {pred.grad_sq_norm_expr} equals the path sum ({label})", "Theorem 5 / Appendix B",
                   law, paths, (law * (1 - EXACT_TOL), law * (1 + EXACT_TOL)), worst <= EXACT_TOL,
                   f"closed form vs float64 path sum at s = {', '.join(map(str, sizes))}; shown at s={s} (d="
                   f"{pred.dim(s)}), the largest relative difference {worst:.2g} (tolerance {EXACT_TOL:g}); "
                   f"deterministic: power 1 against any error above the tolerance",
                   {"sizes": list(sizes), "closed_form": [r[1] for r in rows], "path_sum": [r[2] for r in rows]},
                   power=1.0, resolution=f"a relative error above {EXACT_TOL:g} (deterministic)")


def closed_form_mc_verdict(pred: Prediction, label: str, size: int, budget: Budget, seed: int,
                           variance_factor: float = 1.0) -> Verdict:
    """The closed form against the mean ``||d_x f_k||_2^2`` of real nets of the member at ``size``."""
    return _backed_row(pred, size, closed_form_value(pred, size),
                       f"E||d_x f||^2 = {pred.grad_sq_norm_expr} vs Monte Carlo ({label}, s={size})",
                       "Theorem 5 / Appendix B", budget, seed, variance_factor=variance_factor)


@register("theory-symbolic-law", Part.THEORY)
def symbolic_law(budget: Budget) -> list[Verdict]:
    """Per family and init: the SymPy law in d equals the exact path sum at every size, and agrees
    with the mean over real nets of the member at one size (the Monte Carlo size)."""
    sizes = (8, 16) if budget.scale is Scale.TINY else (8, 16, 32, 64)
    mc_size = MC_PLAN[budget.scale][0]
    out = []
    for i, name in enumerate(LAW_FAMILIES):
        for j, init in enumerate(LAW_INITS):
            pred = predict(family(name), sizes=tuple(sorted({*sizes, mc_size})), init=init)
            label = f"{name}, {init}"
            out.append(closed_form_verdict(pred, label, sizes))
            out.append(closed_form_mc_verdict(pred, label, mc_size, budget,
                                              seed=budget.seed * 101 + 10 + len(LAW_INITS) * i + j))
    return out


@register("theory-first-order", Part.THEORY)
def first_order(budget: Budget) -> list[Verdict]:
    """Lemma 2 on random gradients, eq. 3 SNR, Proposition 3 on a He net, one-neuron toy."""
    rng = np.random.default_rng(budget.seed)
    g = rng.standard_normal(300)
    out = [check_lemma2(g, p, seed=budget.seed) for p in (1, 1.5, 2, 4, math.inf)]
    out.append(check_snr(n=50 if budget.scale is Scale.TINY else 200, seed=budget.seed))
    import torch

    from advdim.build import build

    net = build(parse("3x8x8 > conv(8,k=3,s=2) > relu > flatten > dense(32) > relu > dense(10)"), seed=budget.seed)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(budget.seed))
    out += [check_proposition3_on_net(net, x, label=1, p=p) for p in (1, 2, math.inf)]
    n = 200 if budget.scale is Scale.TINY else 1000
    for q in (1, 2, math.inf):
        out += [check_one_neuron(q=q, n=n, seed=budget.seed), check_one_neuron_slope(q=q, n=n, seed=budget.seed + 1)]
    return out
