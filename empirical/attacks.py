"""Gradient attacks in plain torch: FGSM, one l_2 step, PGD in l_inf and l_2 (Section 2 and 4).

Every attack runs through one private routine that holds the invariants (STYLE 5):

- the model is put in **eval mode** and every submodule's mode is restored afterwards;
- the input ``x`` is **never modified** (the attack works on a copy);
- ``eps`` is a scalar or a per-sample tensor of shape ``(B,)``; eps = 0 returns a copy of ``x``;
- each step is ``x <- x + step * u`` with ``u = sign(g)`` (l_inf) or ``g / ||g||_2`` (l_2),
  ``g`` the gradient of the **summed** cross-entropy; then the iterate is **projected** on the
  eps-ball around ``x`` and **then clipped** to the box ``bounds`` (the order of foolbox 3);
  a random start is drawn uniformly in the ball and clipped to the box;
- at the end ``||x_adv - x||_p <= eps`` is asserted (up to float rounding of ``x + delta``).

Projection comes before clipping: clipping a point of the ball to the box keeps it in the ball
(the box is a product of intervals containing ``x``, so clipping only shrinks each coordinate of
``delta``), hence the result is in both sets.  For l_2 this is not the Euclidean projection on
the intersection, but it is what foolbox does and it keeps both constraints.

    >>> import torch
    >>> from advdim.arch import family
    >>> from advdim.build import build
    >>> net = build(family("dense", widths=(16,)).spec(4, channels=1), seed=0)
    >>> x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([0, 1, 2])
    >>> delta = fgsm(net, x, y, 0.1) - x
    >>> bool(delta.abs().max() <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from advdim.errors import AdvdimError
from advdim.gradients import check_finite_params, lp_norm, mode

Eps = float | torch.Tensor
Bound = float | torch.Tensor

__all__ = ["fgsm", "l2_step", "pgd", "default_step_size"]


def default_step_size(eps: Eps, steps: int) -> Eps:
    """The reference's PGD step size ``eps / (0.75 * steps)`` (eps / 7.5 for 10 steps)."""
    return eps / (0.75 * steps)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps,
         bounds: tuple[Bound, Bound] | None = None) -> torch.Tensor:
    """FGSM: ``x + eps * sign(d_x L(x, y))``, clipped to ``bounds`` (l_inf, one step).

    Args:
        model: maps ``(B, *input)`` to ``(B, K)`` logits.
        x: inputs ``(B, *input)``; not modified.
        y: int64 labels ``(B,)``.
        eps: l_inf radius, scalar or ``(B,)``, in the units of the network input.
        bounds: ``(lo, hi)`` box of valid inputs (scalars or tensors broadcasting against one
            sample, e.g. ``(C, 1, 1)``), or ``None`` for no box.
    Returns:
        The adversarial batch, shape of ``x``.
    """
    return _attack(model, x, y, eps, math.inf, 1, None, False, None, bounds)


def l2_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps,
            bounds: tuple[Bound, Bound] | None = None) -> torch.Tensor:
    """One normalised-gradient step of l_2 length eps: ``x + eps * g / ||g||_2`` (fast gradient method)."""
    return _attack(model, x, y, eps, 2.0, 1, None, False, None, bounds)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps, p: float = math.inf, steps: int = 10,
        step_size: Eps | None = None, random_start: bool = False, generator: torch.Generator | None = None,
        bounds: tuple[Bound, Bound] | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in the l_p ball of radius eps (p = 2 or inf).

    Args:
        p: ``math.inf`` or ``2``.
        steps: number of gradient steps (>= 1).
        step_size: absolute step (scalar or ``(B,)``); default ``eps / (0.75 * steps)``.
        random_start: start from a uniform draw in the ball (clipped to the box).
        generator: CPU ``torch.Generator`` for the random start (seeded runs repeat exactly).
    Returns:
        The adversarial batch, shape of ``x``.
    """
    if steps < 1:
        raise AdvdimError(f"PGD needs at least one step, got {steps}")
    return _attack(model, x, y, eps, p, steps, step_size, random_start, generator, bounds)


def _per_sample(value: Eps, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype).to(like.device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise AdvdimError(f"{name} must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise AdvdimError(f"{name} must be finite and >= 0")
    return t.clone()


def _expand(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def _project(delta: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
    e = _expand(eps, delta.dim())
    if math.isinf(p):
        return torch.maximum(torch.minimum(delta, e), -e)
    norms = lp_norm(delta, 2).clamp_min(1e-12)
    return delta * _expand(torch.clamp(eps / norms, max=1.0), delta.dim())


def _direction(g: torch.Tensor, p: float) -> torch.Tensor:
    if math.isinf(p):
        return g.sign()
    return g / _expand(lp_norm(g, 2).clamp_min(1e-12), g.dim())


def _random_start(x: torch.Tensor, eps: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    shape = x.shape
    if math.isinf(p):
        u = torch.rand(shape, generator=generator, dtype=x.dtype).to(x.device)
        return (2 * u - 1) * _expand(eps, x.dim())
    n = x[0].numel()
    z = torch.randn(shape, generator=generator, dtype=x.dtype).to(x.device)
    r = torch.rand(shape[0], generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / n)
    return z / _expand(lp_norm(z, 2).clamp_min(1e-12), x.dim()) * _expand(r * eps, x.dim())


def _clip(x: torch.Tensor, bounds: tuple[Bound, Bound] | None) -> torch.Tensor:
    if bounds is None:
        return x
    lo, hi = (torch.as_tensor(b, dtype=x.dtype).to(x.device) for b in bounds)
    return torch.maximum(torch.minimum(x, hi), lo)


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Eps, p: float, steps: int,
            step_size: Eps | None, random_start: bool, generator: torch.Generator | None,
            bounds: tuple[Bound, Bound] | None) -> torch.Tensor:
    if not (math.isinf(p) or p == 2):
        raise AdvdimError(f"attacks support p = 2 or inf, got p = {p}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise AdvdimError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise AdvdimError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise AdvdimError("the input holds NaN or infinite values")
    check_finite_params(model)
    batch = x.shape[0]
    eps_t = _per_sample(eps, batch, x, "eps")
    step_t = _per_sample(default_step_size(eps_t, steps) if step_size is None else step_size, batch, x,
                         "step size")
    x0 = x.detach().clone()
    if bounds is not None:
        lo, hi = (torch.as_tensor(b, dtype=x.dtype).to(x.device) for b in bounds)
        if ((x0 < lo) | (x0 > hi)).any():
            raise AdvdimError("the input lies outside the box given by bounds")
    y = y.to(x.device)
    with mode(model, False), torch.enable_grad():
        adv = x0
        if random_start:
            adv = _clip(x0 + _random_start(x0, eps_t, p, generator), bounds)
        for _ in range(steps):
            xg = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            adv = adv.detach() + _expand(step_t, x.dim()) * _direction(g, p)
            adv = _clip(x0 + _project(adv - x0, eps_t, p), bounds)
    adv = adv.detach()
    # ||x_adv - x||_p <= eps up to the rounding of x0 + delta (a few ulps of |x|, summed over d for l_2)
    slack = 4 * torch.finfo(x.dtype).eps * (x0.abs().amax() + eps_t.amax())
    if not math.isinf(p):
        slack = slack * math.sqrt(x0[0].numel())
    excess = lp_norm(adv - x0, p) - eps_t
    if (excess > slack).any():  # pragma: no cover - an invariant of the projection above
        raise AssertionError(f"attack left the eps-ball by {excess.max().item():.3g}")
    return adv
