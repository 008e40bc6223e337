"""First-order identities on trained nets: Lemma 2 and Proposition 3, measured in float64.

Lemma 2: for the optimal eps-sized l_p step ``delta`` (``eps sign g`` for p = inf,
``eps g / ||g||_2`` for p = 2) the loss increase is ``eps ||g||_q + O(eps^2)``, so the ratio
``(L(x + delta) - L(x)) / (eps ||g||_q)`` tends to 1 and ``|mean ratio - 1|`` shrinks like eps.

Proposition 3: augmentation with FGSM minus the l_1 gradient penalty,
``(L(x) + L(x + eps sign g)) / 2 - (L(x) + eps ||g||_1 / 2)``, shrinks like ``eps^2``.

Orders are measured as the slope of ``log |mean over samples|`` against ``log eps``, with a
bootstrap interval over samples.

    >>> import numpy as np
    >>> eps = np.array([1e-3, 1e-2]); vals = np.array([[1e-6, 2e-6], [1e-4, 2e-4]])
    >>> round(fit_order(eps, vals, n_boot=10)[0], 6)
    2.0
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from advdim.errors import AdvdimError
from advdim.gradients import Target, dual, input_gradient, lp_norm


def _double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def _step(g: torch.Tensor, p: float) -> torch.Tensor:
    if math.isinf(p):
        return g.sign()
    if p != 2:
        raise AdvdimError(f"Lemma 2 is measured for p = 2 or inf, got {p}")
    return g / lp_norm(g, 2).clamp_min(1e-300).view(-1, *([1] * (g.dim() - 1)))


def _on_device_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (as float64) and ``y`` on the device of ``net``'s parameters (a net trained on a GPU)."""
    dev = next(net.parameters()).device
    return x.to(device=dev, dtype=torch.float64), y.to(dev)


def lemma2_ratios(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float, eps_grid: np.ndarray,
                  norm_factor: float = 1.0) -> np.ndarray:
    """Per-sample ``(L(x + delta) - L(x)) / (eps ||d_x L||_q)``; shape ``(len(eps_grid), B)``.

    ``norm_factor`` multiplies the gradient norm (1 for the measurement; the planted-error test
    sets it to ``d ** plant_exponent``).
    """
    net = _double(model)
    xd, y = _on_device_of(net, x, y)
    q = dual(p)
    g = input_gradient(net, xd, Target.LOSS, labels=y)
    gq = lp_norm(g, q) * norm_factor
    u = _step(g, p)
    with torch.no_grad():
        base = F.cross_entropy(net(xd), y, reduction="none")
        rows = [((F.cross_entropy(net(xd + eps * u), y, reduction="none") - base) / (eps * gq)).cpu().numpy()
                for eps in eps_grid]
    return np.stack(rows)


def prop3_gaps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: np.ndarray,
               norm_factor: float = 1.0) -> np.ndarray:
    """Per-sample FGSM-augmented minus l_1-penalised loss; shape ``(len(eps_grid), B)``."""
    net = _double(model)
    xd, y = _on_device_of(net, x, y)
    g = input_gradient(net, xd, Target.LOSS, labels=y)
    g1 = lp_norm(g, 1) * norm_factor
    with torch.no_grad():
        base = F.cross_entropy(net(xd), y, reduction="none")
        rows = [((base + F.cross_entropy(net(xd + eps * g.sign()), y, reduction="none")) / 2
                 - (base + eps * g1 / 2)).cpu().numpy() for eps in eps_grid]
    return np.stack(rows)


def fit_order(eps_grid: np.ndarray, values: np.ndarray, n_boot: int = 400, seed: int = 0,
              level: float = 0.999) -> tuple[float, tuple[float, float]]:
    """Slope of ``log |mean_b values[e, b]|`` against ``log eps`` and its bootstrap interval."""
    eps_grid = np.asarray(eps_grid, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] != eps_grid.size or eps_grid.size < 2:
        raise AdvdimError("fit_order needs one row of values per eps and at least two eps")
    lx = np.log(eps_grid)

    def slope(v: np.ndarray) -> float:
        m = np.abs(v.mean(axis=1))
        return float(np.polyfit(lx, np.log(np.maximum(m, 1e-300)), 1)[0])

    rng = np.random.default_rng(seed)
    n = values.shape[1]
    boots = [slope(values[:, rng.integers(0, n, n)]) for _ in range(n_boot)]
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return slope(values), (float(lo), float(hi))
