"""Monte Carlo checks of the path-sum law on real torch networks (torch imported when called).

Not imported by ``advdim.theory`` itself, so the symbolic side stays torch-free.
"""

from __future__ import annotations

import math

import numpy as np

from advdim.arch import Spec
from advdim.verdict import Verdict

#: tolerance of the Monte Carlo agreement, in standard errors of the sample mean
SIGMAS = 5.0


def mc_grad_sq(spec: Spec, init: str = "he", logit: int = 0, n_nets: int = 200, seed: int = 0,
               inputs_per_net: int = 8) -> np.ndarray:
    """Per net, the mean of ``||d_x f_k||_2^2`` over ``inputs_per_net`` N(0, I) inputs (float64).

    Shape ``(n_nets,)``: independent, identically distributed values whose expectation is
    ``E||d_x f_k||_2^2``.  Net ``j`` is built from seed ``seed * 100003 + j``.
    """
    import torch

    from advdim.build import build
    from advdim.gradients import input_gradient

    gen = torch.Generator().manual_seed(seed)
    out = np.empty(n_nets, dtype=np.float64)
    for j in range(n_nets):
        net = build(spec, init, seed=seed * 100003 + j, dtype=torch.float64)
        x = torch.randn((inputs_per_net, *spec.input_shape), generator=gen, dtype=torch.float64)
        g = input_gradient(net, x, "logit", logit)
        out[j] = float((g**2).sum()) / inputs_per_net
    return out


def mc_verdict(spec: Spec, predicted: float, samples: np.ndarray, claim: str,
               reference: str = "Theorem 5 (path sum)", sigmas: float = SIGMAS) -> Verdict:
    """Does the sample mean of ``||d_x f_k||_2^2`` agree with ``predicted`` within ``sigmas`` standard errors?

    The standard error is the sample standard deviation over sqrt(n).  For a normal sample mean
    the two-sided false-failure rate of 5 sigma is 5.7e-7; the per-net values are skewed (products
    of chi-squares), so with n >= 200 the rate is of the order of 1e-5 at worst.
    """
    n = samples.size
    mean = float(samples.mean())
    se = float(samples.std(ddof=1)) / math.sqrt(n)
    lo, hi = mean - sigmas * se, mean + sigmas * se
    passed = bool(lo <= predicted <= hi)
    return Verdict(claim, reference, float(predicted), mean, (lo, hi), passed,
                   f"mean over {n} independently initialised nets, +-{sigmas:g} standard errors",
                   {"spec": spec.to_text(), "n": n, "se": se})
