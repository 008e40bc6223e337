"""Checks of the core: He initialisation (hypothesis H3) on every family's default member."""

from __future__ import annotations

import math

import torch
from scipy import stats

from advdim.arch import FAMILIES, family
from advdim.build import Init, build
from advdim.checks import Budget, Part, Scale, register
from advdim.verdict import Verdict

#: false-failure rate of each statistical check of this module
ALPHA = 1e-6


def weight_variance_verdict(net: torch.nn.Module, init: Init, claim: str, reference: str,
                            alpha: float = ALPHA) -> Verdict:
    """Pooled test that every layer's weights have the variance the scheme prescribes.

    For Gaussian weights with variance ``v``, ``sum w^2 / v`` is chi-square with ``n`` degrees
    of freedom; the statistic ``sum_layers sum w^2 / v_layer`` is chi-square with the total count.
    The acceptance interval is the central ``1 - alpha`` interval of that distribution, reported
    as a ratio measured / predicted (1 when exact).
    """
    total, n = 0.0, 0
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            w = m.weight.detach().double()
            fan_in = int(w[0].numel())
            fan_out = w.shape[0] * (int(w[0, 0].numel()) if w.dim() == 4 else 1)
            total += float((w**2).sum()) / init.weight_variance(fan_in, fan_out)
            n += w.numel()
    lo, hi = stats.chi2.ppf(alpha / 2, n) / n, stats.chi2.ppf(1 - alpha / 2, n) / n
    ratio = total / n
    return Verdict(claim, reference, 1.0, ratio, (float(lo), float(hi)), bool(lo <= ratio <= hi),
                   f"chi-square over {n} weights, two-sided alpha={alpha:g}", {"weights": n})


@register("he-init", Part.CORE)
def he_init(budget: Budget) -> list[Verdict]:
    size = 8 if budget.scale is Scale.TINY else 32
    out = []
    for name in FAMILIES:
        spec = family(name).spec(size)
        net = build(spec, Init.HE, seed=budget.seed)
        out.append(weight_variance_verdict(net, Init.HE, f"He init: Var w = 2/fan_in ({name}, s={size})", "H3"))
    assert all(math.isfinite(v.measured or math.nan) for v in out)
    return out
