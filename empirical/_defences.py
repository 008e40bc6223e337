"""Training objectives: the defences of the paper's Section 4 (eqs. 3-5) and PGD training.

``eps`` is the regularisation strength (the paper's epsilon) in units of the normalised input.
With ``g_b = d_x L(x_b, y_b)`` the per-sample input gradient of the cross-entropy and ``p`` the
dual of ``q`` (``1/p + 1/q = 1``), ``d = C*H*W``:

- ``GP1`` / ``GP2`` (eq. 4 with the ``d^(1-1/q)`` scaling of eq. 3):
  ``mean_b L_b + eps * d^(1-1/q) * mean_b ||g_b||_q / 2`` (double back-propagation);
- ``FGSM_AUG`` (eq. 5, l_inf): ``mean_b (L(x_b) + L(x_b + eps sign g_b)) / 2``;
- ``L2_AUG`` (eq. 5, l_2): the same with the step ``eps sqrt(d) g_b / ||g_b||_2``;
- ``PGD``: ``mean_b L(x_adv_b)``, l_inf PGD with uniform random start, 7 steps of size
  ``eps / (0.75 * 7)``;
- ``CROSS_LIPSCHITZ``: ``mean_b L_b + eps * 2/(n K^2) sum_b sum_{l<m} ||d_x f_l - d_x f_m||_2^2``.

By Proposition 3, augmentation with an l_p step of size ``eps d^(1-1/q)`` equals the q-norm
penalty up to ``O(eps^2)``; the tests check it (without a box).  Adversarial examples are
computed in eval mode by :mod:`advdim.empirical.attacks`; with ``bounds`` (training passes the
box of the normalised pixel range, ``Dataset.bounds()``) each point is first projected on the
eps-ball and then clipped to the box, the attacks' order.  Clipping breaks the exact first-order
duality with the penalty at pixels on the box's faces (Fashion-MNIST's black background): there
the step that would leave the box is dropped, the penalty still counts ``|g_i|``.

    >>> Method.parse("fgsm-aug")
    <Method.FGSM_AUG: 'fgsm-aug'>
"""

from __future__ import annotations

import math

import torch
from advdim.empirical import attacks
from torch import nn
from torch.nn import functional as F

from advdim.choice import Choice
from advdim.errors import AdvdimError
from advdim.gradients import lp_norm

PGD_TRAIN_STEPS = 7


class Method(Choice):
    """A training method (defence)."""

    PLAIN = "plain"
    GP1 = "gp1"
    GP2 = "gp2"
    FGSM_AUG = "fgsm-aug"
    L2_AUG = "l2-aug"
    PGD = "pgd"
    CROSS_LIPSCHITZ = "cross-lipschitz"

    @classmethod
    def noun(cls) -> str:
        return "method"


def penalty_scale(d: int, q: float) -> float:
    """``d^(1 - 1/q)``: the factor of eq. 3 that makes an l_p attack of per-pixel size eps."""
    return float(d) ** (1.0 - 1.0 / q)


def gradient_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, q: float) -> torch.Tensor:
    """``mean_b L_b + eps d^(1-1/q) mean_b ||d_x L_b||_q / 2`` with a graph through the gradient."""
    xg = x.detach().clone().requires_grad_(True)
    losses = F.cross_entropy(model(xg), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), xg, create_graph=True)
    d = x[0].numel()
    return losses.mean() + eps * penalty_scale(d, q) * lp_norm(g, q).mean() / 2


def cross_lipschitz(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean_b L_b + eps * 2/(n K^2) * sum_b sum_{l<m} ||d_x f_l(x_b) - d_x f_m(x_b)||_2^2``.

    Uses ``sum_{l<m} ||a_l - a_m||^2 = K sum_l ||a_l||^2 - ||sum_l a_l||^2`` (K backward passes).
    """
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    n, k = out.shape
    grads = [torch.autograd.grad(out[:, j].sum(), xg, create_graph=True)[0].reshape(n, -1) for j in range(k)]
    sq = sum((g * g).sum() for g in grads)
    total = torch.stack(grads).sum(dim=0)
    pairs = k * sq - (total * total).sum()
    return F.cross_entropy(out, y) + eps * 2.0 / (n * k * k) * pairs


def objective(method: Method, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
              generator: torch.Generator | None = None,
              bounds: tuple[attacks.Bound, attacks.Bound] | None = None) -> torch.Tensor:
    """The scalar training loss of ``method`` on the batch ``(x, y)`` (model in its current mode).

    Args:
        method: the defence.
        x: normalised inputs ``(B, C, H, W)``; y: labels ``(B,)``.
        eps: strength (the paper's epsilon), >= 0, in normalised input units.
        generator: CPU generator of PGD's random start.
        bounds: box ``(lo, hi)`` the adversarial training points are clipped to (``None``: no box).
    """
    if not math.isfinite(eps) or eps < 0:
        raise AdvdimError(f"eps must be finite and >= 0, got {eps}")
    if method is Method.PLAIN or eps == 0:
        return F.cross_entropy(model(x), y)
    d = x[0].numel()
    if method is Method.GP1:
        return gradient_penalty(model, x, y, eps, 1.0)
    if method is Method.GP2:
        return gradient_penalty(model, x, y, eps, 2.0)
    if method is Method.CROSS_LIPSCHITZ:
        return cross_lipschitz(model, x, y, eps)
    if method is Method.PGD:
        adv = attacks.pgd(model, x, y, eps, math.inf, PGD_TRAIN_STEPS, random_start=True, generator=generator,
                          bounds=bounds)
        return F.cross_entropy(model(adv), y)
    if method is Method.FGSM_AUG:
        adv = attacks.fgsm(model, x, y, eps, bounds=bounds)
    else:
        adv = attacks.l2_step(model, x, y, eps * math.sqrt(d), bounds=bounds)
    return (F.cross_entropy(model(x), y) + F.cross_entropy(model(adv), y)) / 2
