"""Monte Carlo checks of the path-sum law on real torch networks (torch imported when called).

Not imported by ``advdim.theory`` itself, so the symbolic side stays torch-free.

A Monte Carlo verdict compares the mean of ``||d_x f_k||_2^2`` over independently initialised
nets with a prediction: pass iff ``|mean - predicted| <= z se``.  Its power against a relative
error ``rel`` of the prediction (normal approximation, ``s = se / predicted``) is
``Phi((rel - z s) / s) + Phi((-rel - z s) / s)``; power ``>= 0.8`` at ``rel = 0.1`` and
``alpha = 0.01`` (``z = 2.576``) needs ``s <= 0.1 / (2.576 + 0.842) = 0.0293``, i.e.
``n >= (3.418 cv / 0.1)^2`` nets for a per-net coefficient of variation ``cv``.
:func:`mc_grad_sq_powered` draws that many (from a pilot's ``cv``, then the whole sample's).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from advdim import stats
from advdim.arch import Spec
from advdim.errors import AdvdimError
from advdim.verdict import MIN_POWER, Verdict, power_note

#: tolerance of :func:`mc_verdict` used alone (the tests'), in standard errors of the sample mean
SIGMAS = 5.0
#: two-sided false-failure rate of each Monte Carlo row of ``advdim verify``
ALPHA = 0.01
#: the relative error of the prediction a Monte Carlo row must catch with power >= MIN_POWER
REL_ERROR = 0.10
#: the level the nets of a Monte Carlo row are sized for: ``advdim verify`` tests its rows by Holm at a
#: family-wise 0.05 over about 30 rows, so the most demanding level a row meets is 0.05 / 30
SIZING_ALPHA = 0.05 / 30
#: extra nets over the number the coefficient of variation says is needed (its estimate is noisy)
MARGIN = 1.2

_NORMAL = NormalDist()


def critical(alpha: float = ALPHA) -> float:
    """Two-sided normal critical value ``z`` with ``P(|Z| > z) = alpha`` (:func:`advdim.stats.critical`,
    large samples).

    >>> round(critical(0.01), 3)
    2.576
    """
    if not 0 < alpha < 1:
        raise AdvdimError(f"alpha must lie in (0, 1), got {alpha}")
    return stats.critical(alpha, None)


def ratio_power(rel_se: float, rel_error: float = REL_ERROR, sigmas: float | None = None) -> float:
    """Probability that ``|mean / predicted - 1| > sigmas * rel_se`` when the truth is ``1 +- rel_error``
    (:func:`advdim.stats.power` at the level ``sigmas`` stands for; default ``critical(ALPHA)``).

    ``rel_se`` is the standard error of the mean over the predicted value (normal approximation).

    >>> round(ratio_power(0.0293), 2)
    0.8
    """
    if not rel_se > 0:
        return 1.0
    z = critical(ALPHA) if sigmas is None else sigmas
    return stats.power(rel_se, rel_error, 2 * (1 - _NORMAL.cdf(z)), None)


def nets_needed(cv: float, rel_error: float = REL_ERROR, alpha: float = ALPHA, power: float = MIN_POWER) -> int:
    """``ceil(((z_{1-alpha/2} + z_power) cv / rel_error)^2)``: sample size of the stated power.

    >>> nets_needed(0.5)
    292
    """
    if not math.isfinite(cv) or cv < 0 or rel_error <= 0:
        raise AdvdimError(f"need a finite cv >= 0 and rel_error > 0, got cv={cv}, rel_error={rel_error}")
    return max(2, math.ceil(((critical(alpha) + _NORMAL.inv_cdf(power)) * cv / rel_error) ** 2))


def _last_weight_layer(net: Any) -> Any:
    import torch

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not layers:
        raise AdvdimError("the net has no weight layer to plant an init error in")
    return layers[-1]


def mc_grad_sq(spec: Spec, init: str = "he", logit: int = 0, n_nets: int = 200, seed: int = 0,
               inputs_per_net: int = 8, start: int = 0, variance_factor: float = 1.0) -> np.ndarray:
    """Per net, the mean of ``||d_x f_k||_2^2`` over ``inputs_per_net`` N(0, I) inputs (float64).

    Shape ``(n_nets,)``: independent, identically distributed values whose expectation is
    ``E||d_x f_k||_2^2``.  Net ``j`` (``start <= j < start + n_nets``) is built from seed
    ``seed * 100003 + j`` and its inputs are drawn from the same number (offset), so a sample can
    be extended by calling again with ``start`` = the nets drawn so far.

    ``variance_factor`` plants an init error: the last weight layer's variance is multiplied by it
    (``E||d_x f_k||_2^2`` is linear in that layer's variance, so the mean moves by exactly this
    factor, biases or not).  Runs torch on one thread (tiny nets: threads only add overhead).
    """
    import torch

    from advdim.build import build
    from advdim.gradients import input_gradient

    if n_nets < 0 or start < 0 or inputs_per_net < 1:
        raise AdvdimError(f"need n_nets >= 0, start >= 0, inputs_per_net >= 1, got {n_nets}, {start}, "
                          f"{inputs_per_net}")
    if not math.isfinite(variance_factor) or variance_factor <= 0:
        raise AdvdimError(f"variance_factor must be finite and > 0, got {variance_factor}")
    out = np.empty(n_nets, dtype=np.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, j in enumerate(range(start, start + n_nets)):
            net_seed = seed * 100003 + j
            net = build(spec, init, seed=net_seed, dtype=torch.float64)
            if variance_factor != 1.0:
                with torch.no_grad():
                    _last_weight_layer(net).weight.mul_(math.sqrt(variance_factor))
            gen = torch.Generator().manual_seed(net_seed + (1 << 40))
            x = torch.randn((inputs_per_net, *spec.input_shape), generator=gen, dtype=torch.float64)
            g = input_gradient(net, x, "logit", logit)
            out[i] = float((g**2).sum()) / inputs_per_net
    finally:
        torch.set_num_threads(threads)
    return out


def mc_grad_sq_powered(spec: Spec, init: str = "he", logit: int = 0, seed: int = 0, pilot: int = 60,
                       max_nets: int = 2000, rel_error: float = REL_ERROR, alpha: float = SIZING_ALPHA,
                       variance_factor: float = 1.0) -> np.ndarray:
    """:func:`mc_grad_sq` with as many nets as a power of MIN_POWER against ``rel_error`` needs.

    Draws ``pilot`` nets, then, while the sample is smaller than ``MARGIN`` times
    :func:`nets_needed` at its own coefficient of variation, extends it (at most ``max_nets``).
    The stopping rule reads the spread only, never the mean, so the verdict's false-failure rate
    stays ``alpha`` (to the accuracy of the normal approximation).
    """
    if pilot < 2 or max_nets < pilot:
        raise AdvdimError(f"need pilot >= 2 and max_nets >= pilot, got {pilot}, {max_nets}")
    samples = mc_grad_sq(spec, init, logit, pilot, seed, variance_factor=variance_factor)
    for _ in range(4):
        mean = float(samples.mean())
        cv = float(samples.std(ddof=1)) / mean if mean > 0 else math.inf
        want = max_nets if not math.isfinite(cv) else min(max_nets, math.ceil(MARGIN * nets_needed(cv, rel_error,
                                                                                                     alpha)))
        if want <= samples.size:
            break
        more = mc_grad_sq(spec, init, logit, want - samples.size, seed, start=samples.size,
                          variance_factor=variance_factor)
        samples = np.concatenate([samples, more])
    return samples


def mc_verdict(spec: Spec, predicted: float, samples: np.ndarray, claim: str,
               reference: str = "Theorem 5 (path sum)", sigmas: float = SIGMAS,
               rel_error: float = REL_ERROR, what: str = "") -> Verdict:
    """Does the sample mean of ``||d_x f_k||_2^2`` agree with ``predicted`` within ``sigmas`` standard errors?

    The standard error is the sample standard deviation over sqrt(n).  For a normal sample mean
    the two-sided false-failure rate of 5 sigma is 5.7e-7 (2.576 sigma: 0.01); the per-net values
    are skewed (products of chi-squares), so with n >= 100 the rate is somewhat larger.  The
    verdict states its power against a prediction off by ``rel_error`` (relative) and, in the
    detail, the number of nets that power 0.8 needs at the sample's own spread.
    """
    n = samples.size
    if n < 2:
        raise AdvdimError(f"a Monte Carlo verdict needs at least 2 nets, got {n}")
    mean = float(samples.mean())
    se = float(samples.std(ddof=1)) / math.sqrt(n)
    lo, hi = mean - sigmas * se, mean + sigmas * se
    passed = bool(lo <= predicted <= hi)
    rel_se = se / abs(predicted) if predicted else math.inf
    pw = ratio_power(rel_se, rel_error, sigmas) if math.isfinite(rel_se) else 0.0
    cv = float(samples.std(ddof=1)) / abs(mean) if mean else math.inf
    alpha = 2 * (1 - _NORMAL.cdf(sigmas))
    need = nets_needed(cv, rel_error, alpha) if math.isfinite(cv) else None
    resolution = f"{what or 'the prediction'} off by +-{rel_error:.0%}"
    test = stats.TwoSided(mean / predicted, 1.0, rel_se, None, rel_error, scale=float(predicted)) \
        if predicted and math.isfinite(rel_se) else None  # what advdim.stats.holm re-judges in verify
    return Verdict(claim, reference, float(predicted), mean, (lo, hi), passed,
                   f"mean over {n} independently initialised nets (8 N(0,I) inputs each), +-{sigmas:.3g} standard "
                   f"errors (two-sided false failure {alpha:.2g} for a normal mean); measured/predicted "
                   f"{mean / predicted:.4f}; {power_note(pw, resolution)}; power 0.8 needs {need} nets at the "
                   f"sample's cv {cv:.3f}",
                   {"spec": spec.to_text(), "n": n, "se": se, "cv": cv, "nets_needed": need, "power": pw},
                   power=pw, resolution=resolution, test=test)
