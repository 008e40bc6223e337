"""The user's module: loading a factory, building and checking its models, measuring a batch.

Core helpers shared by ``advdim measure`` (:mod:`advdim.measure`) and the factory units of the
simulation (``advdim.simulate._factory``).  Every failure of the user's code or model is an
:class:`~advdim.errors.AdvdimError` (one line, exit 2).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advdim.cli_args import check_fits
from advdim.errors import AdvdimError
from advdim.gradients import Target, check_finite_params, input_gradient, mode

#: two-sided level of the vulnerability intervals
ALPHA = 0.01


def load_factory(target: str) -> Callable[..., Any]:
    """Import ``MODULE:FACTORY`` (``MODULE`` a dotted module name or a path to a ``.py`` file)."""
    from advdim.arch import load_object

    mod_name, sep, attr = str(target).rpartition(":")
    if not sep or not mod_name or not attr:
        raise AdvdimError(f"the model must be given as MODULE:FACTORY, got {target!r}")
    factory = load_object(str(target))
    if not callable(factory):
        raise AdvdimError(f"{target!r} is not callable (a factory returning an nn.Module is expected)")
    return factory  # type: ignore[no-any-return,unused-ignore]


def takes_input_shape(factory: Callable[..., Any]) -> bool:
    """Whether the factory accepts an ``input_shape`` keyword (then it is called at every size)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class FactoryFailed(AdvdimError):
    """The user's factory raised (the message names the shape it was called with, if any)."""


def make_model(factory: Callable[..., Any], input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """Call the factory (``factory(input_shape=...)`` when a shape is given, else ``factory()``) and check the model."""
    from advdim.errors import SpecError
    from advdim.usercode import user_code

    at = "" if input_shape is None else f" at input_shape={input_shape}"
    try:  # an exception, sys.exit or KeyboardInterrupt of the user's code: one line naming its file and line
        with user_code(f"the factory{at}", factory):
            model = factory() if input_shape is None else factory(input_shape=input_shape)
    except SpecError as e:
        raise FactoryFailed(str(e)) from None
    if not isinstance(model, nn.Module):
        raise AdvdimError(f"the factory returned {type(model).__name__}, not a torch.nn.Module")
    check_finite_params(model)
    return model


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def pgd_builtin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                 step_size: float) -> torch.Tensor:
    """Untargeted l_inf PGD without random start: ascend the cross-entropy by signed gradient steps,
    projecting onto the eps-ball after each step (the inputs are unbounded Gaussians: no box)."""
    adv = x.detach().clone()
    for _ in range(steps):
        g = input_gradient(model, adv, Target.LOSS, labels=y)
        adv = torch.minimum(torch.maximum(adv + step_size * g.sign(), x - eps), x + eps).detach()
    rounding = 4 * torch.finfo(x.dtype).eps * float(x.abs().max())  # x +- eps is rounded in x's dtype
    assert float((adv - x).abs().max()) <= eps + rounding
    return adv


def attack() -> tuple[Callable[..., torch.Tensor] | None, str]:
    """The l_inf PGD attack the vulnerability uses, and its name."""
    try:
        from advdim.empirical.attacks import pgd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "built-in l_inf PGD of advdim.measure (advdim.empirical.attacks is not available)"
    return pgd, "advdim.empirical.attacks.pgd (l_inf)"


def vulnerability(model: nn.Module, x: torch.Tensor, eps: float, steps: int, y: torch.Tensor | None = None
                  ) -> tuple[int, str]:
    """Number of inputs whose predicted label changes under an eps-sized l_inf PGD attack
    (Definition 1), and the attack's name; ``y``: the predicted labels of ``x`` when known."""
    if y is None:
        with torch.no_grad(), mode(model, False):
            y = model(x).argmax(dim=1)
    step = eps / 7.5  # the reference implementation's test-time step size
    pgd, name = attack()
    adv = None
    if pgd is not None:
        try:
            adv = pgd(model, x, y, eps, math.inf, steps, step, random_start=False)
        except (TypeError, AdvdimError):
            adv, name = None, "built-in l_inf PGD of advdim.measure (the empirical pgd did not accept these inputs)"
    if adv is None:
        adv = pgd_builtin(model, x, y, eps, steps, step)
    with torch.no_grad(), mode(model, False):
        y_adv = model(adv).argmax(dim=1)
    return int((y_adv != y).sum()), name


def binomial_interval(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Clopper-Pearson interval of a share ``k / n`` at level ``1 - alpha``."""
    from scipy import stats

    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def check_logits(out: Any, n: int, k_out: int, where: str) -> None:
    """The logits of a batch: a finite ``(n, k_out)`` tensor, else an :class:`AdvdimError`."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, k_out):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise AdvdimError(f"the model returned {got} for {n} inputs at {where}: it must return ({n}, {k_out}) logits")
    finite = torch.isfinite(out)
    if not finite.all():
        what = "NaN" if torch.isnan(out).any() else "infinite"
        rows = int((~finite).any(dim=1).sum())
        raise AdvdimError(f"the model's logits are {what} for {rows} of {n} inputs at {where}: check its weights "
                          "and forward pass")


def check_gradient(g: torch.Tensor, target: Target, where: str) -> None:
    """An input gradient the slopes can be fitted on: finite, and not zero for every input."""
    name = "input gradient of logit 0" if target is Target.LOGIT else "input gradient of the loss"
    if not torch.isfinite(g).all():
        what = "NaN" if torch.isnan(g).any() else "infinite"
        raise AdvdimError(f"the model's {name} is {what} at {where}: check its weights and forward pass")
    if not g.any():
        raise AdvdimError(f"the model's {name} is zero for every input at {where}: a model constant in its input "
                          "has no slope to measure")


def check_batch(model: nn.Module, x: torch.Tensor, where: str, k_out: int | None = None) -> torch.Tensor:
    """The model's logits on ``x`` (eval mode, no grad), checked by :func:`check_logits`; the user's
    model failing is one line naming ``where``."""
    try:
        with torch.no_grad(), mode(model, False):
            logits = model(x)
    except Exception as e:  # noqa: BLE001 - the user's model failed on the measurement's inputs
        raise AdvdimError(f"the model failed at {where}: {first_line(e)}") from None
    if k_out is None and isinstance(logits, torch.Tensor) and logits.dim() == 2:
        k_out = int(logits.shape[1])
    check_logits(logits, x.shape[0], k_out or 0, where)
    return logits


# ---------------------------------------------------------------------------------------------
# Probing a model: does it take this size? does the size fit in memory?
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """The model run once, with autograd, on one zero input up-sampled by ``factor``."""

    factor: int
    logits: int  # K of the (1, K) output
    saved_bytes: int  # what autograd keeps of that input for the backward pass, parameters excluded


def probe(model: nn.Module, shape: tuple[int, int, int], k: int, device: torch.device, dtype: torch.dtype
          ) -> Probe | str:
    """Run ``model`` on one zero input of ``shape`` up-sampled by ``k`` and differentiate logit 0.

    Returns the first line of the error when the model raises (a size it does not accept), a
    :class:`Probe` when it returns ``(1, K)`` floating-point logits that depend on the input; anything else is an
    :class:`AdvdimError` naming what the model returned.  ``saved_bytes`` counts the storages
    autograd saves for the backward pass (parameters and buffers excluded): the activation memory
    of one input, which the memory estimate of :func:`measure` scales by the number of inputs.
    """
    d = shape[0] * shape[1] * shape[2] * k * k
    kept = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, nested)
            return t
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.zeros(1, shape[0], shape[1] * k, shape[2] * k, device=device, dtype=dtype, requires_grad=True)
    try:
        with mode(model, False), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    except Exception as e:  # noqa: BLE001 - a size the model does not accept
        return first_line(e)
    if not isinstance(out, torch.Tensor):
        raise AdvdimError(f"the model returned a {type(out).__name__} at d = {d}, not a tensor of (B, K) logits: "
                          "make forward return the logits only")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        raise AdvdimError(f"the model returned shape {tuple(out.shape)} for 1 input at d = {d}: it must return "
                          "(B, K) logits")
    if not out.is_floating_point():
        raise AdvdimError(f"the model returned {out.dtype} values at d = {d}: logits must be floating-point")
    grad = None
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out[:, 0].sum(), x, allow_unused=True)
    if grad is None:
        raise AdvdimError(f"the model's logit 0 does not depend on its input at d = {d}: a model constant in its "
                          "input has no slope to measure")
    return Probe(k, int(out.shape[1]), sum(saved.values()))


#: peak memory of the model's batched forward + backward passes over what autograd saves for them:
#: the backward holds gradients of about the same size, and CPU convolutions their own work buffers.
#: Measured on CPU (``advdim measure``, 64-256 inputs, He nets and a BatchNorm CNN up-sampled x1-x4):
#: peaks of 1.4-3.7 times the saved bytes, 0.3-0.8 of :func:`measure_bytes`
ACTIVATION_FACTOR = 5
#: copies of the inputs of one size held at once (input, its clone and gradient, PGD's iterate, its
#: bounds and step), in the model's dtype, plus a float64 copy of the gradient for the norms
INPUT_COPIES = 8


def measure_bytes(inputs: int, d: int, k: int, itemsize: int, saved_bytes: int | None) -> tuple[int, int]:
    """``(host, device)``: upper estimates of the memory :func:`measure` needs at one size, in bytes.

    Host: the float64 Gaussian inputs up-sampled by ``k`` (``8 d (1 + 1/k)`` per input).  Device:
    per input ``INPUT_COPIES * itemsize * d + 8 d`` for the inputs and gradients, plus
    ``ACTIVATION_FACTOR * saved_bytes`` for the model's activations (``saved_bytes`` from
    :func:`probe`; ``None``: not yet known, inputs only).

    >>> measure_bytes(64, 3 * 128 * 128, 4, 4, 10**6)
    (31457280, 445829120)
    """
    host = inputs * 8 * (d + d // k)
    device = inputs * (INPUT_COPIES * itemsize * d + 8 * d + ACTIVATION_FACTOR * (saved_bytes or 0))
    return host, device


def check_size_fits(inputs: int, d: int, k: int, itemsize: int, saved_bytes: int | None,
                     device: torch.device, what: str | None = None) -> None:
    host, dev = measure_bytes(inputs, d, k, itemsize, saved_bytes)
    what = what or f"up-sampling factor {k} (d = {d}, {inputs} inputs)"
    advice = "use smaller --sizes or fewer --inputs"
    if device.type == "cpu":
        check_fits(host + dev, what, "cpu", advice)
    else:
        check_fits(host, what, "cpu", advice)
        check_fits(dev, what, str(device), advice)
