"""``advdim measure``: how the input gradients and the vulnerability of *your* model scale with
the input dimension.

The model comes from a factory (``MODULE:FACTORY``, where ``MODULE`` is an importable module or a
``.py`` file): a callable returning an ``nn.Module`` that maps ``(B, C, H, W)`` images to
``(B, K)`` logits; when the factory accepts an ``input_shape`` keyword it is given the base shape.
Inputs are Gaussian images of the base shape, up-sampled by pixel copy (each pixel becomes a
``k x k`` block, as the paper's Section 4.2 up-samples CIFAR-10), so ``d = C (k H) (k W)``.
For each factor ``k`` the command measures, per input, ``||d_x f_0||_q`` and ``||d_x L||_q``
(cross-entropy against random labels) and fits the slope of ``log E||.||_q`` against ``log d``,
with a bootstrap interval over inputs (paired across sizes); Theorems 4-5 / Corollary 6 predict
``1/q - 1/2`` at He initialisation.  It also estimates the adversarial vulnerability
(Definition 1): the share of inputs whose predicted label changes under an ``l_inf`` PGD attack of
size ``eps``.  A model that only accepts one input size is measured at that size only (no slope).

    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> upsample(x, 2)[0, 0]
    tensor([[0., 0., 1., 1.],
            [0., 0., 1., 1.],
            [2., 2., 3., 3.],
            [2., 2., 3., 3.]])
    >>> round(fit_slope([10.0, 40.0], [[1.0, 2.0], [2.0, 4.0]]), 12)  # norms double when d quadruples
    0.5
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advdim.cli_args import check_fits, check_out_folder, parse_sizes
from advdim.errors import AdvdimError
from advdim.gradients import Target, check_finite_params, check_q, input_gradient, lp_norm, mode
from advdim.verdict import Verdict

#: two-sided level of the bootstrap and binomial intervals
ALPHA = 0.01
#: bootstrap resamples of the inputs
N_BOOT = 2000


# ---------------------------------------------------------------------------------------------
# Parsing the user's input (every failure is an AdvdimError: one line, exit 2)
# ---------------------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> ``(3, 32, 32)`` (channels, height, width; positive integers)."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise AdvdimError(f"--input-shape must be C,H,W (three positive integers), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise AdvdimError(f"--input-shape must be C,H,W (three positive integers), got {text!r}")
    return shape[0], shape[1], shape[2]


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: distinct positive integers, sorted (:func:`advdim.cli_args.parse_sizes`)."""
    return parse_sizes(text, name)


def parse_qs(text: str) -> tuple[float, ...]:
    """``"1,2,inf"`` -> ``(1.0, 2.0, inf)``; each q >= 1 or inf."""
    qs = [check_q(p) for p in str(text).split(",") if p.strip()]
    if not qs:
        raise AdvdimError(f"--q must list norm orders >= 1 or inf, got {text!r}")
    return tuple(dict.fromkeys(qs))


def q_text(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


def load_factory(target: str) -> Callable[..., Any]:
    """Import ``MODULE:FACTORY`` (``MODULE`` a dotted module name or a path to a ``.py`` file)."""
    mod_name, sep, attr = str(target).rpartition(":")
    if not sep or not mod_name or not attr:
        raise AdvdimError(f"the model must be given as MODULE:FACTORY, got {target!r}")
    path = Path(mod_name)
    try:
        if mod_name.endswith(".py") or path.is_file():
            if not path.is_file():
                raise AdvdimError(f"no such file: {mod_name!r}")
            spec = importlib.util.spec_from_file_location(f"_advdim_user_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the current folder is importable
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise AdvdimError(f"cannot import module {mod_name!r}: {e}") from None
    except AdvdimError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import
        raise AdvdimError(f"importing {mod_name!r} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise AdvdimError(f"module {mod_name!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise AdvdimError(f"{target!r} is not callable (a factory returning an nn.Module is expected)")
    return factory  # type: ignore[no-any-return,unused-ignore]


def make_model(factory: Callable[..., Any], input_shape: tuple[int, int, int]) -> nn.Module:
    """Call the factory (with ``input_shape=`` when it accepts that keyword) and check the model."""
    try:
        params = inspect.signature(factory).parameters
        takes = "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    try:
        model = factory(input_shape=input_shape) if takes else factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise AdvdimError(f"the factory failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise AdvdimError(f"the factory returned {type(model).__name__}, not a torch.nn.Module")
    check_finite_params(model)
    return model


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pixel-copy up-sampling: ``(B, C, H, W)`` -> ``(B, C, kH, kW)``, each pixel a ``k x k`` block."""
    return x if k == 1 else x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def fit_slope(d: Sequence[float], norms: Any) -> float:
    """Least-squares slope of ``log mean_i norms[i, j]`` against ``log d[j]`` (norms: ``(n_inputs, n_sizes)``)."""
    y = np.log(np.asarray(norms, dtype=np.float64).mean(axis=0))
    x = np.log(np.asarray(d, dtype=np.float64))
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc**2).sum())


def bootstrap_slopes(d: Sequence[float], norms: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT
                     ) -> np.ndarray:
    """Slopes of ``n_boot`` resamples of the inputs (rows), paired across sizes (columns)."""
    n = norms.shape[0]
    idx = rng.integers(0, n, size=(n_boot, n))
    means = norms[idx].mean(axis=1)  # (n_boot, n_sizes)
    x = np.log(np.asarray(d, dtype=np.float64))
    xc = x - x.mean()
    y = np.log(means)
    return ((y - y.mean(axis=1, keepdims=True)) * xc).sum(axis=1) / (xc**2).sum()  # type: ignore[no-any-return,unused-ignore]


@dataclass(frozen=True)
class Probe:
    """The model run once, with autograd, on one zero input up-sampled by ``factor``."""

    factor: int
    logits: int  # K of the (1, K) output
    saved_bytes: int  # what autograd keeps of that input for the backward pass, parameters excluded


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


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
        return _first_line(e)
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


def _check_size_fits(inputs: int, d: int, k: int, itemsize: int, saved_bytes: int | None,
                     device: torch.device) -> None:
    host, dev = measure_bytes(inputs, d, k, itemsize, saved_bytes)
    what = f"up-sampling factor {k} (d = {d}, {inputs} inputs)"
    advice = "use smaller --sizes or fewer --inputs"
    if device.type == "cpu":
        check_fits(host + dev, what, "cpu", advice)
    else:
        check_fits(host, what, "cpu", advice)
        check_fits(dev, what, str(device), advice)


def probe_factors(model: nn.Module, cfg: MeasureConfig, device: torch.device, dtype: torch.dtype
                  ) -> tuple[list[Probe], dict[int, str]]:
    """:func:`probe` the model at each factor (ascending) that is estimated to fit in memory, the
    activations of a factor extrapolated from the last accepted one (in proportion to the pixels)
    before it runs, and checked with its own probe after; a factor that does not fit is an
    :class:`AdvdimError`.  Returns the probes of the accepted factors and the error of each other."""
    C, H, W = cfg.input_shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    for k in cfg.factors:  # the inputs alone, before the model runs at any size
        _check_size_fits(cfg.inputs, C * H * W * k * k, k, itemsize, None, device)
    probes: list[Probe] = []
    errors: dict[int, str] = {}
    for k in sorted(cfg.factors):
        d = C * H * W * k * k
        if probes:
            last = probes[-1]
            _check_size_fits(cfg.inputs, d, k, itemsize, last.saved_bytes * k * k // last.factor**2, device)
        got = probe(model, cfg.input_shape, k, device, dtype)
        if isinstance(got, str):
            errors[k] = got
            continue
        _check_size_fits(cfg.inputs, d, k, itemsize, got.saved_bytes, device)
        if probes and got.logits != probes[0].logits:
            raise AdvdimError(f"the model returns {probes[0].logits} logits at d = {C * H * W * probes[0].factor**2} "
                              f"but {got.logits} at d = {d}: the number of classes must not depend on the input size")
        probes.append(got)
    return probes, errors


def _pgd_builtin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
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


def _attack() -> tuple[Callable[..., torch.Tensor] | None, str]:
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
    pgd, name = _attack()
    adv = None
    if pgd is not None:
        try:
            adv = pgd(model, x, y, eps, math.inf, steps, step, random_start=False)
        except (TypeError, AdvdimError):
            adv, name = None, "built-in l_inf PGD of advdim.measure (the empirical pgd did not accept these inputs)"
    if adv is None:
        adv = _pgd_builtin(model, x, y, eps, steps, step)
    with torch.no_grad(), mode(model, False):
        y_adv = model(adv).argmax(dim=1)
    return int((y_adv != y).sum()), name


def binomial_interval(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Clopper-Pearson interval of a share ``k / n`` at level ``1 - alpha``."""
    from scipy import stats

    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class MeasureConfig:
    """Settings of one measurement (see the module docstring)."""

    input_shape: tuple[int, int, int]
    factors: tuple[int, ...] = (1, 2, 4)
    qs: tuple[float, ...] = (1.0, 2.0, math.inf)
    inputs: int = 64
    seed: int = 0
    eps: float = 0.004
    steps: int = 10


def measure(model: nn.Module, cfg: MeasureConfig, device: torch.device) -> tuple[list[Verdict], list[str]]:
    """Measure gradient-norm slopes and vulnerability of ``model``; returns verdicts and notes."""
    if cfg.inputs < 2:
        raise AdvdimError(f"--inputs must be at least 2, got {cfg.inputs}")
    if not (cfg.eps > 0 and math.isfinite(cfg.eps)):
        raise AdvdimError(f"--eps must be a positive number, got {cfg.eps}")
    if cfg.steps < 1:
        raise AdvdimError(f"--steps must be positive, got {cfg.steps}")
    model = model.to(device)
    p0 = next(iter(model.parameters()), None)
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    C, H, W = cfg.input_shape
    probes, errors = probe_factors(model, cfg, device, dtype)
    factors = [p.factor for p in probes]
    notes = []
    if not factors:
        k0 = cfg.factors[0]
        which = f"inputs of shape {C}x{H}x{W}" if k0 == 1 else f"any of the up-sampled sizes of {C}x{H}x{W} asked for"
        raise AdvdimError(f"the model does not accept {which}: at factor {k0} it raised {errors[k0]}")
    if len(factors) < len(cfg.factors):
        rejected = [k for k in cfg.factors if k not in factors]
        notes.append(f"the model does not accept the up-sampling factors {rejected} (a fixed input size?): "
                     f"measured at factors {factors} only" + ("; no slope can be fitted" if len(factors) < 2 else ""))
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.randn(cfg.inputs, C, H, W, generator=gen, dtype=torch.float64)
    k_out = probes[0].logits
    labels = torch.randint(0, k_out, (cfg.inputs,), generator=gen).to(device)
    ds = [C * H * W * k * k for k in factors]
    norms: dict[tuple[str, float], list[np.ndarray]] = {}
    vuln = []
    attack_name = ""
    for k, d in zip(factors, ds):
        x = upsample(x0, k).to(device, dtype)
        where = f"d = {d} (factor {k})"
        try:
            with torch.no_grad(), mode(model, False):
                logits = model(x)
            _check_logits(logits, cfg.inputs, k_out, where)
            for target in (Target.LOGIT, Target.LOSS):
                g = input_gradient(model, x, target, 0, labels if target is Target.LOSS else None)
                _check_gradient(g, target, where)
                for q in cfg.qs:
                    norms.setdefault((target.value, q), []).append(lp_norm(g.double(), q).cpu().numpy())
            n_vul, attack_name = vulnerability(model, x, cfg.eps, cfg.steps, logits.argmax(dim=1))
        except AdvdimError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's model failed on the measurement's inputs
            raise AdvdimError(f"the model failed at {where}: {_first_line(e)}") from None
        vuln.append(n_vul)
    notes.append(f"vulnerability attack: {attack_name}, eps = {cfg.eps:g} (input units), {cfg.steps} steps")
    rng = np.random.default_rng(cfg.seed)
    verdicts = []
    names = {"logit": "f_0", "loss": "L"}
    for (tgt, q), cols in norms.items():
        mat = np.stack(cols, axis=1)  # (inputs, sizes)
        pred = 1 / q - 0.5
        per_size = [_mean_ci(mat[:, j], rng) for j in range(mat.shape[1])]
        series: dict[str, Any] = {
            "figure": f"E||d_x {names[tgt]}||_q against d ({'logit 0' if tgt == 'logit' else 'loss, random labels'})",
            "label": f"q = {q_text(q)}", "x": ds, "y": [m for m, _, _ in per_size],
            "lo": [lo for _, lo, _ in per_size], "hi": [hi for _, _, hi in per_size],
            "xlabel": "input dimension d", "ylabel": f"E||d_x {names[tgt]}||_q", "loglog": True}
        extra = {"target": tgt, "q": q_text(q), "d": ds, "factors": factors, "inputs": cfg.inputs,
                 "norms_mean": series["y"], "series": series}
        if len(ds) >= 2:
            slope = fit_slope(ds, mat)
            boots = bootstrap_slopes(ds, mat, rng)
            lo, hi = (float(v) for v in np.quantile(boots, [ALPHA / 2, 1 - ALPHA / 2]))
            tol = 100 * torch.finfo(dtype).eps  # rounding of the model's dtype only: the interval is the statistic
            lx = np.log(ds)
            ly = np.log(series["y"])
            series["fit"] = np.exp(ly.mean() + slope * (lx - lx.mean())).tolist()
            series["predicted"] = np.exp(ly.mean() + pred * (lx - lx.mean())).tolist()
            verdicts.append(Verdict(
                f"slope of E||d_x {names[tgt]}||_{q_text(q)} in d", "Thm 4-5, Cor 6 (d^(1/q-1/2))", pred, slope,
                (lo, hi), bool(lo - tol <= pred <= hi + tol),
                f"{cfg.inputs} Gaussian inputs up-sampled x{factors}; {1 - ALPHA:.0%} bootstrap interval over inputs "
                f"({N_BOOT} resamples) for these weights; prediction: He initialisation", extra))
        else:
            m, lo, hi = per_size[0]
            verdicts.append(Verdict(f"E||d_x {names[tgt]}||_{q_text(q)} at d = {ds[0]}", "Thm 4-5, Cor 6", None, m,
                                    (lo, hi), None, f"one input size only: no slope; {1 - ALPHA:.0%} bootstrap "
                                    f"interval of the mean over {cfg.inputs} inputs", extra))
    shares = [n / cfg.inputs for n in vuln]
    cis = [binomial_interval(n, cfg.inputs) for n in vuln]
    vseries = {"figure": f"adversarial vulnerability against d (l_inf PGD, eps = {cfg.eps:g})", "label": "share",
               "x": ds, "y": shares, "lo": [c[0] for c in cis], "hi": [c[1] for c in cis],
               "xlabel": "input dimension d", "ylabel": "share of inputs whose label changes", "loglog": False}
    for j, d in enumerate(ds):
        verdicts.append(Verdict(
            f"adversarial vulnerability at d = {d} (eps = {cfg.eps:g}, l_inf)", "Definition 1", None, shares[j], cis[j],
            None, f"{vuln[j]} of {cfg.inputs} labels changed; {1 - ALPHA:.0%} Clopper-Pearson interval; "
            "the paper predicts growth with sqrt(d) at fixed eps",
            {"d": d, "factor": factors[j], "changed": vuln[j], "inputs": cfg.inputs, "eps": cfg.eps,
             "attack": attack_name, **({"series": vseries} if j == len(ds) - 1 else {})}))
    return verdicts, notes


def _check_logits(out: Any, n: int, k_out: int, where: str) -> None:
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


def _check_gradient(g: torch.Tensor, target: Target, where: str) -> None:
    """An input gradient the slopes can be fitted on: finite, and not zero for every input."""
    name = "input gradient of logit 0" if target is Target.LOGIT else "input gradient of the loss"
    if not torch.isfinite(g).all():
        what = "NaN" if torch.isnan(g).any() else "infinite"
        raise AdvdimError(f"the model's {name} is {what} at {where}: check its weights and forward pass")
    if not g.any():
        raise AdvdimError(f"the model's {name} is zero for every input at {where}: a model constant in its input "
                          "has no slope to measure")


def _mean_ci(v: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    means = v[rng.integers(0, len(v), size=(N_BOOT, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(v.mean()), float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(target: str, input_shape: str, sizes: str = "1,2,4", q: str = "1,2,inf", inputs: int = 64,
         eps: float = 0.004, steps: int = 10, seed: int = 0, device: str = "auto", out_dir: str = "report-measure",
         as_json: bool = False) -> int:
    """The ``advdim measure`` command (arguments as on the command line); returns the exit status."""
    from advdim._verify_cli import _device_text, _report_dir, command_line, print_verdicts
    from advdim.build import resolve_device
    from advdim.cli import emit_json, err, out
    from advdim.report import RunInfo, verdict_rows, write_report

    cfg = MeasureConfig(parse_shape(input_shape), parse_ints(sizes, "--sizes"), parse_qs(q), inputs, seed, eps, steps)
    dev = resolve_device(device)
    check_out_folder(out_dir)  # nothing is written before the measurement succeeded
    model = make_model(load_factory(target), cfg.input_shape)
    t0 = time.perf_counter()
    verdicts, notes = measure(model, cfg, dev)
    seconds = time.perf_counter() - t0
    report_dir = _report_dir(out_dir)
    rows = verdict_rows(target, "measure", seconds, verdicts)
    info = RunInfo(title=f"advdim measure {target}", command=command_line(
        "measure", target, input_shape=input_shape, sizes=sizes, q=q, inputs=inputs, eps=eps, steps=steps, seed=seed,
        device=device, out=out_dir), seed=seed, device=_device_text(dev),
                   seconds=seconds, notes=tuple(notes),
                   settings={"model": target, "input shape": input_shape, "up-sampling factors": sizes, "q": q,
                             "inputs per size": str(inputs), "eps (l_inf)": f"{eps:g}", "PGD steps": str(steps)})
    files = write_report(report_dir, rows, info)
    if as_json:
        emit_json(_json(target, cfg, rows, notes, str(files.html)))
    else:
        print_verdicts(f"advdim measure {target}", rows)
        for note in notes:
            err.print(note, soft_wrap=True)
        out.print(f"report: {files.html}", soft_wrap=True)
    return 0


def _json(target: str, cfg: MeasureConfig, rows: list[dict[str, Any]], notes: list[str], report: str) -> dict[str, Any]:
    res: dict[str, Any] = {"model": target, "input_shape": list(cfg.input_shape), "seed": cfg.seed,
                           "inputs": cfg.inputs, "notes": notes, "report": report, "q": {}, "vulnerability": []}
    for r in rows:
        ex = r["extra"]
        if "target" in ex:
            res["d"] = ex["d"]
            res["factors"] = ex["factors"]
            slope = r["predicted"] is not None
            res["q"].setdefault(ex["q"], {})[ex["target"]] = {
                "predicted_slope": r["predicted"], "measured_slope": r["measured"] if slope else None,
                "ci": r["interval"] if slope else None, "pass": r["passed"], "norms": ex["norms_mean"]}
        else:
            res["vulnerability"].append({"d": ex["d"], "eps": ex["eps"], "share": r["measured"], "ci": r["interval"],
                                         "attack": ex["attack"]})
    res["fixed_size"] = len(res.get("factors", [])) < 2
    return res
