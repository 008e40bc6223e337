"""THEORY checks run by ``advdim verify``: the path-sum law against Monte Carlo on real nets, the
fast propagation against symbolic laws, and the first-order statements."""

from __future__ import annotations

import math

import numpy as np
from advdim.theory import (
    check_lemma2,
    check_one_neuron,
    check_proposition3_on_net,
    check_snr,
    predict,
)
from advdim.theory._law import d
from advdim.theory._numeric import mc_grad_sq, mc_verdict

from advdim.arch import Padding, family, parse
from advdim.checks import Budget, Part, Scale, register
from advdim.verdict import Verdict


@register("theory-path-sum-mc", Part.THEORY)
def path_sum_mc(budget: Budget) -> list[Verdict]:
    """E||d_x f_k||_2^2: exact path sum vs the mean over independently initialised He nets (5 s.e.)."""
    n = {Scale.TINY: 40, Scale.DEFAULT: 200, Scale.PAPER: 2000}[budget.scale]
    size = 8
    cases = [("strided", {"channels": 2, "padding": Padding.ZEROS, "final": 2})]
    if budget.scale is not Scale.TINY:
        cases += [("dense", {"widths": (32, 32)}), ("avgpool", {"channels": 4, "final": 2})]
    out = []
    for name, params in cases:
        spec = family(name, **params).spec(size, channels=1)
        predicted = predict(spec).grad_sq_norm(size)
        samples = mc_grad_sq(spec, "he", 0, n_nets=n, seed=budget.seed)
        out.append(mc_verdict(spec, predicted, samples, f"E||d_x f||_2^2 path sum ({name}, s={size})"))
    return out


@register("theory-symbolic-law", Part.THEORY)
def symbolic_law(budget: Budget) -> list[Verdict]:
    """The SymPy law in d equals the exact path sum at every size (circular padding, several inits)."""
    sizes = (8, 16) if budget.scale is Scale.TINY else (8, 16, 32, 64)
    out = []
    for name in ("dense", "strided", "avgpool", "gap"):
        for init in ("he", "glorot", "torch"):
            pred = predict(family(name), sizes=sizes, init=init)
            assert pred.grad_sq_norm_expr is not None
            worst = max(abs(float(pred.grad_sq_norm_expr.subs(d, pred.dim(s))) / pred.grad_sq_norm(s) - 1)
                        for s in sizes)
            out.append(Verdict(f"E||d_x f||^2 = {pred.grad_sq_norm_expr} ({name}, {init})", "Theorem 5 / Appendix B",
                               0.0, worst, (0.0, 1e-9), worst <= 1e-9, "relative error, float64 path sums",
                               {"sizes": list(sizes)}))
    return out


@register("theory-first-order", Part.THEORY)
def first_order(budget: Budget) -> list[Verdict]:
    """Lemma 2 on random gradients, eq. 3 SNR, Proposition 3 on a He net, one-neuron toy."""
    rng = np.random.default_rng(budget.seed)
    g = rng.standard_normal(300)
    out = [check_lemma2(g, p, seed=budget.seed) for p in (1, 1.5, 2, 4, math.inf)]
    out.append(check_snr(seed=budget.seed))
    import torch

    from advdim.build import build

    net = build(parse("3x8x8 > conv(8,k=3,s=2) > relu > flatten > dense(32) > relu > dense(10)"), seed=budget.seed)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(budget.seed))
    out += [check_proposition3_on_net(net, x, label=1, p=p) for p in (1, 2, math.inf)]
    n = 200 if budget.scale is Scale.TINY else 1000
    out += [check_one_neuron(q=q, n=n, seed=budget.seed) for q in (1, 2, math.inf)]
    return out
