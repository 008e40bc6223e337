"""Per-sample input gradients and their q-norms, for any ``nn.Module``.

``||g||_q = (sum_i |g_i|^q)^(1/q)`` for ``q >= 1`` and ``max_i |g_i|`` for ``q = inf``, taken per
sample over all input coordinates (``d = C*H*W``).  Values are per sample: the loss is summed,
never averaged, over the batch before differentiating, so the gradient of sample ``b`` is exactly
``d L(x_b) / d x_b`` (for models whose samples do not interact, e.g. in eval mode).

    >>> import torch
    >>> from advdim.arch import family
    >>> from advdim.build import build
    >>> net = build(family("dense", widths=(32,)).spec(4, channels=1), seed=0)
    >>> x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    >>> grad_norms(net, x, q=2, logit=0).shape
    torch.Size([5])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from advdim.choice import Choice
from advdim.errors import AdvdimError
from advdim.norms import check_q, dual

__all__ = ["Target", "check_finite_params", "check_q", "dual", "grad_norms", "input_gradient", "lp_norm", "mode"]


class Target(Choice):
    """What is differentiated: a logit ``f_k`` or the cross-entropy loss ``L``."""

    LOGIT = "logit"
    LOSS = "loss"

    @classmethod
    def noun(cls) -> str:
        return "target"


def lp_norm(g: torch.Tensor, q: float | str) -> torch.Tensor:
    """Per-sample ``||g_b||_q`` over all non-batch dimensions: shape ``(B, ...)`` -> ``(B,)``."""
    q = check_q(q)
    flat = g.reshape(g.shape[0], -1)
    if math.isinf(q):
        return flat.abs().amax(dim=1)
    if q == 1:
        return flat.abs().sum(dim=1)
    if q == 2:
        return torch.linalg.vector_norm(flat, ord=2, dim=1)
    return torch.linalg.vector_norm(flat, ord=q, dim=1)


def check_finite_params(model: nn.Module) -> None:
    """Raise when a parameter of ``model`` holds NaN or infinity."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise AdvdimError(f"parameter {name!r} of the model holds NaN or infinite values")


@contextlib.contextmanager
def mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Put ``model`` (and its children) in train / eval mode and restore each one's mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, was in saved:
            m.training = was


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: Target | str = Target.LOGIT,
    logit: int = 0,
    labels: torch.Tensor | None = None,
    train_mode: bool = False,
    create_graph: bool = False,
) -> torch.Tensor:
    """Per-sample gradient ``d f_logit(x_b) / d x_b`` or ``d L(x_b, y_b) / d x_b``.

    Args:
        model: any module mapping ``(B, *input)`` to ``(B, K)`` logits.
        x: inputs, shape ``(B, *input)``; not modified.
        target: ``Target.LOGIT`` (uses ``logit``) or ``Target.LOSS`` (cross-entropy, uses ``labels``).
        logit: index ``k`` of the logit for ``Target.LOGIT``.
        labels: integer labels of shape ``(B,)`` for ``Target.LOSS``.
        train_mode: evaluate in train mode (default: eval mode; the mode is restored after).
        create_graph: keep the graph for double back-propagation (gradient penalties).
    Returns:
        Tensor of the shape of ``x``.
    """
    target = Target.parse(target)
    check_finite_params(model)
    if not torch.isfinite(x).all():
        raise AdvdimError("the input holds NaN or infinite values")
    xg = x.detach().clone().requires_grad_(True)
    with mode(model, train_mode), torch.enable_grad():
        out = model(xg)
        if out.dim() != 2:
            raise AdvdimError(f"the model must return (B, K) logits, got shape {tuple(out.shape)}")
        if target is Target.LOGIT:
            if not 0 <= logit < out.shape[1]:
                raise AdvdimError(f"logit index {logit} out of range for {out.shape[1]} logits")
            scalar = out[:, logit].sum()
        else:
            if labels is None:
                raise AdvdimError("the loss gradient needs labels")
            if labels.shape != (x.shape[0],):
                raise AdvdimError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
            scalar = F.cross_entropy(out, labels.to(out.device), reduction="sum")
        (grad,) = torch.autograd.grad(scalar, xg, create_graph=create_graph)
    return grad


def grad_norms(
    model: nn.Module,
    x: torch.Tensor,
    q: float | str = 2,
    target: Target | str = Target.LOGIT,
    logit: int | None = 0,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
    train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample ``||d_x f_k||_q`` (one logit, or all logits with ``logit=None``) or ``||d_x L||_q``.

    Args:
        q: norm order, ``>= 1`` or ``inf``.
        logit: index of the logit; ``None`` for every logit (``Target.LOGIT`` only).
        batch_size: samples per autograd call (memory bound; values do not depend on it).
    Returns:
        Shape ``(B,)``, or ``(B, K)`` for all logits; float64 on ``x``'s device.
    """
    q = check_q(q)
    target = Target.parse(target)
    if x.dim() < 2 or x.shape[0] == 0:
        raise AdvdimError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise AdvdimError(f"batch size must be positive, got {batch_size}")
    if logit is None and target is Target.LOSS:
        raise AdvdimError("logit=None (all logits) only applies to the logit target")
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        yb = None if labels is None else labels[start:start + batch_size]
        if logit is None:
            with torch.no_grad(), mode(model, train_mode):
                k = model(xb[:1]).shape[1]
            cols = [lp_norm(input_gradient(model, xb, Target.LOGIT, j, train_mode=train_mode), q)
                    for j in range(k)]
            chunks.append(torch.stack(cols, dim=1))
        else:
            g = input_gradient(model, xb, target, logit, yb, train_mode=train_mode)
            chunks.append(lp_norm(g, q))
    return torch.cat(chunks).to(torch.float64)
