"""Checks of the core: He initialisation (hypothesis H3) on every family's default member, each with
its power against a weight variance off by 10%."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats

from advdim.arch import FAMILIES, family
from advdim.build import Init, build
from advdim.checks import Budget, Part, Scale, register
from advdim.errors import AdvdimError
from advdim.verdict import MIN_POWER, Verdict, power_note

#: false-failure rate of each statistical check of this module
ALPHA = 1e-6
#: the relative error of the weight variance each check must catch with power >= MIN_POWER
REL_ERROR = 0.10


def weight_variance_verdict(net: torch.nn.Module | Sequence[torch.nn.Module], init: Init, claim: str, reference: str,
                            alpha: float = ALPHA, rel_error: float = REL_ERROR) -> Verdict:
    """Pooled test that every layer's weights have the variance the scheme prescribes.

    For Gaussian weights with variance ``v``, ``sum w^2 / v`` is chi-square with ``n`` degrees
    of freedom; the statistic ``sum_layers sum w^2 / v_layer`` is chi-square with the total count.
    The acceptance interval is the central ``1 - alpha`` interval of that distribution, reported
    as a ratio measured / predicted (1 when exact).  The verdict states its power against every
    variance off by ``rel_error`` (:func:`variance_power`).  ``net`` may be several independently
    initialised nets: their weights are pooled.
    """
    nets = [net] if isinstance(net, torch.nn.Module) else list(net)
    total, n = 0.0, 0
    for m in (m for one in nets for m in one.modules()):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            w = m.weight.detach().double()
            fan_in = int(w[0].numel())
            fan_out = w.shape[0] * (int(w[0, 0].numel()) if w.dim() == 4 else 1)
            total += float((w**2).sum()) / init.weight_variance(fan_in, fan_out)
            n += w.numel()
    lo, hi = stats.chi2.ppf(alpha / 2, n) / n, stats.chi2.ppf(1 - alpha / 2, n) / n
    ratio = total / n
    if n == 0:
        raise AdvdimError("no Conv2d or Linear weights to test")
    pw = variance_power(n, float(lo), float(hi), rel_error)
    resolution = f"every weight variance off by +-{rel_error:.0%}"
    return Verdict(claim, reference, 1.0, ratio, (float(lo), float(hi)), bool(lo <= ratio <= hi),
                   f"chi-square over {n} weights of {len(nets)} net(s), two-sided alpha={alpha:g}; "
                   f"{power_note(pw, resolution)}", {"weights": n, "nets": len(nets), "power": pw},
                   power=pw, resolution=resolution)


def weight_count(net: torch.nn.Module) -> int:
    """Number of Conv2d / Linear weights of ``net``."""
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def nets_for_power(per_net: int, alpha: float = ALPHA, rel_error: float = REL_ERROR, most: int = 64) -> int:
    """The fewest nets of ``per_net`` weights whose pooled test has power >= MIN_POWER (at most ``most``)."""
    for k in range(1, most + 1):
        n = k * per_net
        lo, hi = stats.chi2.ppf(alpha / 2, n) / n, stats.chi2.ppf(1 - alpha / 2, n) / n
        if variance_power(n, float(lo), float(hi), rel_error) >= MIN_POWER:
            return k
    return most


def variance_power(n: int, lo: float, hi: float, rel_error: float = REL_ERROR) -> float:
    """Probability that the pooled statistic leaves ``[lo, hi]`` when every variance is off by a factor
    ``1 + rel_error`` or ``1 - rel_error`` (exact chi-square; the smaller of the two)."""

    def reject(factor: float) -> float:
        # the statistic is factor * chi2_n / n
        return float(stats.chi2.cdf(lo * n / factor, n) + stats.chi2.sf(hi * n / factor, n))

    return min(reject(1 + rel_error), reject(1 - rel_error))


@register("he-init", Part.CORE)
def he_init(budget: Budget) -> list[Verdict]:
    size = 8 if budget.scale is Scale.TINY else 32
    out = []
    for name in FAMILIES:
        spec = family(name).spec(size)
        first = build(spec, Init.HE, seed=budget.seed)
        k = nets_for_power(weight_count(first))
        nets = [first] + [build(spec, Init.HE, seed=budget.seed + 1000 * j) for j in range(1, k)]
        out.append(weight_variance_verdict(nets, Init.HE, f"He init: Var w = 2/fan_in ({name}, s={size})", "H3"))
    assert all(math.isfinite(v.measured or math.nan) for v in out)
    return out
