"""``advdim measure``: how the input gradients and the vulnerability of *your* model scale with
the input dimension, judged against the theory's prediction for that model where there is one.

The model comes from a factory (``MODULE:FACTORY``, where ``MODULE`` is an importable module or a
``.py`` file): a callable returning an ``nn.Module`` that maps ``(B, C, H, W)`` images to
``(B, K)`` logits.  There are two settings, chosen by the factory's signature:

- **per-size draws** (the factory takes ``input_shape``; the paper's setting): for every size
  factor ``k`` the factory builds a new model for ``(C, kH, kW)``, ``--draws`` times, each after
  ``torch.manual_seed(seed + draw)`` (so the factory's own initialisation is reproducible), and
  each model meets its own i.i.d. ``N(0, 1)`` inputs.  ``E||d_x f_0||_q`` is the mean over draws
  and inputs; the slope of its log against ``log d`` has a bootstrap interval over draws (paired
  across sizes by draw index) with the small-sample critical value of
  :func:`advdim.simulate._fit.critical`.  When the model is traced into a spec at every size
  (:mod:`advdim.trace`) and its initialisation is recognised, the rows are **judged** against
  ``advdim.theory.predict`` on those specs: the false-failure rate of a correct model is
  ``ALPHA = 0.01`` per row (when the bootstrap standard error is right); a row that does not fail
  says pass only with power >= 0.8 against a slope off by 0.05, else inconclusive (more
  ``--draws``; exit status 3 when no row fails but one is inconclusive).  Otherwise the rows are
  **reported** (no prediction) and say which part is outside the theory.
- **up-sampled inputs** (the factory takes no argument, e.g. a trained model): one model, fed
  Gaussian images of the base shape up-sampled by pixel copy (each pixel a ``k x k`` block, as the
  paper's Section 4.2 up-samples CIFAR-10), with a bootstrap interval over inputs.  Pixel copies
  are perfectly correlated inputs, not the i.i.d. inputs of the per-size law: no prediction is
  shown, every row is reported.

Both settings also estimate the adversarial vulnerability (Definition 1): the share of inputs
whose predicted label changes under an ``l_inf`` PGD attack of size ``eps`` (reported).  A model
that accepts only one input size is measured at that size only (no slope).

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

import enum
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from advdim.arch import Target as ArchTarget
from advdim.arch import TargetKind
from advdim.cli_args import check_fits, check_out_folder, parse_sizes
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target, check_finite_params, check_q, input_gradient, lp_norm, mode
from advdim.trace import InitGuess, InitStats, Traced, Untraceable, trace_module
from advdim.verdict import MIN_POWER, Outcome, Verdict, power_note

if TYPE_CHECKING:
    from advdim.theory import Prediction

#: two-sided level of every interval, and the false-failure rate of a judged slope row
ALPHA = 0.01
#: bootstrap resamples (of the inputs, or of the draws)
N_BOOT = 2000
#: why the up-sampled setting carries no prediction
UPSAMPLED_REASON = ("no prediction for up-sampled inputs to a fixed model (pixel copies are perfectly correlated "
                    "inputs, not the i.i.d. inputs of the per-size law); give the factory an input_shape parameter "
                    "for the paper's setting")


class Setting(enum.Enum):
    """How the sizes are produced (see the module docstring)."""

    PER_SIZE = "per-size draws"
    UPSAMPLED = "up-sampled inputs"


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
    try:
        model = factory() if input_shape is None else factory(input_shape=input_shape)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        at = "" if input_shape is None else f" at input_shape={input_shape}"
        raise FactoryFailed(f"the factory failed{at}: {type(e).__name__}: {e}") from None
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
                     device: torch.device, what: str | None = None) -> None:
    host, dev = measure_bytes(inputs, d, k, itemsize, saved_bytes)
    what = what or f"up-sampling factor {k} (d = {d}, {inputs} inputs)"
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
    draws: int = 16

    def shape_at(self, k: int) -> tuple[int, int, int]:
        c, h, w = self.input_shape
        return c, h * k, w * k

    def d_at(self, k: int) -> int:
        c, h, w = self.shape_at(k)
        return c * h * w

    def check(self, setting: Setting) -> None:
        """The numeric options, before the factory runs (one-line errors)."""
        least = 2 if setting is Setting.UPSAMPLED else 1  # up-sampled: the inputs are the bootstrap units
        if self.inputs < least:
            raise AdvdimError(f"--inputs must be at least {least}, got {self.inputs}")
        if setting is Setting.PER_SIZE and self.draws < 2:
            raise AdvdimError(f"--draws must be at least 2 (the slope's interval is a bootstrap over draws), "
                              f"got {self.draws}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise AdvdimError(f"--eps must be a positive number, got {self.eps}")
        if self.steps < 1:
            raise AdvdimError(f"--steps must be positive, got {self.steps}")


@dataclass
class Sample:
    """What was measured, per unit and size.

    Attributes:
        values: ``(target, q) -> (units, sizes)``: per draw the mean of ``||.||_q`` over its inputs
            (per-size draws), or per input its ``||.||_q`` (up-sampled inputs).
        changed: ``(draws, sizes)``: labels the attack changed per draw (one row when up-sampled).
        per_draw: inputs behind each entry of ``changed``.
    """

    setting: Setting
    factors: list[int]
    ds: list[int]
    values: dict[tuple[str, float], np.ndarray]
    changed: np.ndarray
    per_draw: int
    attack: str
    notes: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


@dataclass(frozen=True)
class Theory:
    """The theory's side of a measurement.

    Attributes:
        traces: the spec of the model (draw 0) at each size factor, or why there is none.
        init: the initialisation recognised at the base size (None: not examined).
        prediction: ``advdim.theory.predict`` on the traced specs (None: no prediction).
        reason: why the slope rows are reported, not judged (None: judged against ``prediction``).
        iid_inf: the q = inf prediction is exact in distribution (the first weighted layer is dense).
        notes: what else the reader should know (e.g. the weights look different at other sizes).
    """

    traces: dict[int, Traced | Untraceable]
    init: InitGuess | None
    prediction: Prediction | None
    reason: str | None
    iid_inf: bool = False
    notes: tuple[str, ...] = ()

    def slope(self, q: float) -> float | None:
        """The predicted slope of ``log E||d_x f_0||_q`` against ``log d``, when the rows are judged."""
        if self.reason is not None or self.prediction is None:
            return None
        return self.prediction.slope_q(q)

    def to_json(self) -> dict[str, Any]:
        bad = next((t.reason for t in self.traces.values() if isinstance(t, Untraceable)), None)
        pred = self.prediction
        return {
            "trace": {"traced": bool(self.traces) and bad is None, "reason": bad,
                      "specs": {str(k): t.spec.to_text() for k, t in self.traces.items() if isinstance(t, Traced)}},
            "init": None if self.init is None else self.init.to_json(),
            "prediction": {"judged": self.reason is None and pred is not None, "reason": self.reason,
                           "has_law": None if pred is None else pred.has_law,
                           "hypotheses": None if pred is None else dict(pred.hypotheses),
                           "hypothesis_reasons": None if pred is None else dict(pred.reasons),
                           "predicted_slope": None if pred is None else dict(pred.predicted_slope)},
        }


@dataclass(frozen=True)
class Measured:
    """The outcome of :func:`measure`: verdict rows, notes, and what they rest on."""

    setting: Setting
    verdicts: list[Verdict]
    notes: list[str]
    sample: Sample
    theory: Theory


# ---------------------------------------------------------------------------------------------
# One batch of inputs through one model
# ---------------------------------------------------------------------------------------------
def _measure_batch(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: MeasureConfig, k_out: int,
                   where: str) -> tuple[dict[tuple[str, float], np.ndarray], int, str]:
    """Per input ``||d_x f_0||_q`` and ``||d_x L||_q`` for every q, and the labels the attack changed."""
    try:
        with torch.no_grad(), mode(model, False):
            logits = model(x)
        _check_logits(logits, x.shape[0], k_out, where)
        norms = {}
        for target in (Target.LOGIT, Target.LOSS):
            g = input_gradient(model, x, target, 0, labels if target is Target.LOSS else None)
            _check_gradient(g, target, where)
            for q in cfg.qs:
                norms[(target.value, q)] = lp_norm(g.double(), q).cpu().numpy()
        n_vul, attack = vulnerability(model, x, cfg.eps, cfg.steps, logits.argmax(dim=1))
    except AdvdimError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model failed on the measurement's inputs
        raise AdvdimError(f"the model failed at {where}: {_first_line(e)}") from None
    return norms, n_vul, attack


def _dtype(model: nn.Module) -> torch.dtype:
    p0 = next(iter(model.parameters()), None)
    return p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32


# ---------------------------------------------------------------------------------------------
# Up-sampled inputs to one fixed model
# ---------------------------------------------------------------------------------------------
def sample_upsampled(model: nn.Module, cfg: MeasureConfig, device: torch.device) -> Sample:
    """One model, Gaussian inputs of the base shape up-sampled by each factor (per-input norms)."""
    model = model.to(device)
    dtype = _dtype(model)
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
    cols: dict[tuple[str, float], list[np.ndarray]] = {}
    changed = []
    attack = ""
    for k in factors:
        norms, n_vul, attack = _measure_batch(model, upsample(x0, k).to(device, dtype), labels, cfg, k_out,
                                              f"d = {cfg.d_at(k)} (factor {k})")
        for key, v in norms.items():
            cols.setdefault(key, []).append(v)
        changed.append(n_vul)
    values = {key: np.stack(v, axis=1) for key, v in cols.items()}
    return Sample(Setting.UPSAMPLED, factors, [cfg.d_at(k) for k in factors], values,
                  np.array([changed], dtype=np.int64), cfg.inputs, attack, notes)


def theory_upsampled(model: nn.Module, cfg: MeasureConfig) -> Theory:
    """The trace and init of the fixed model (reported); no prediction for up-sampled inputs."""
    traced = trace_module(model, cfg.input_shape)
    init = None
    if isinstance(traced, Traced):
        stats = InitStats(traced.spec)
        stats.add(traced.weights(model))
        init = stats.result()
    return Theory({1: traced}, init, None, UPSAMPLED_REASON)


# ---------------------------------------------------------------------------------------------
# A new model per size and draw (the paper's setting)
# ---------------------------------------------------------------------------------------------
def _draw(factory: Callable[..., Any], cfg: MeasureConfig, k: int, draw: int, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed + draw)  # the factory's own init draws from the global generator
    return make_model(factory, cfg.shape_at(k)).to(device)


def _fingerprint(model: nn.Module) -> tuple[tuple[float, float], ...]:
    return tuple((float(p.detach().double().sum()), float(p.detach().double().square().sum()))
                 for p in model.parameters())


@dataclass
class _PerSize:
    """What :func:`sample_per_size` learns about the models besides the norms."""

    traces: dict[int, Traced | Untraceable] = field(default_factory=dict)
    #: per size factor: the weights' moments; a string: why they could not be pooled; None: not traced
    stats: dict[int, InitStats | str | None] = field(default_factory=dict)
    same_weights: list[int] = field(default_factory=list)  # factors at which every draw had the same weights


def sample_per_size(factory: Callable[..., Any], cfg: MeasureConfig, device: torch.device
                    ) -> tuple[Sample, _PerSize]:
    """``--draws`` models per size, each on its own i.i.d. Gaussian inputs (per-draw mean norms).

    Draw 0 of each size is probed first (does it accept its input? does the size fit in memory,
    activations extrapolated from the size before?) and traced; a size the factory or its model
    refuses is dropped with a note, unless it is the base size (an :class:`AdvdimError`).
    """
    info = _PerSize()
    cols: dict[tuple[str, float], list[np.ndarray]] = {}
    changed: list[np.ndarray] = []
    factors: list[int] = []
    rejected: dict[int, str] = {}
    gen = torch.Generator().manual_seed(cfg.seed)
    last: Probe | None = None
    k_out = 0
    attack = ""
    for k in sorted(cfg.factors):
        shape, d = cfg.shape_at(k), cfg.d_at(k)
        what = f"size factor {k} (d = {d}, {cfg.inputs} inputs)"
        try:
            model = _draw(factory, cfg, k, 0, device)
        except FactoryFailed as e:
            if not factors:
                raise
            rejected[k] = str(e)
            continue
        dtype = _dtype(model)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if last is None:  # the inputs alone, before the model runs at any size
            for kk in cfg.factors:
                _check_size_fits(cfg.inputs, cfg.d_at(kk), 1, itemsize, None, device,
                                 f"size factor {kk} (d = {cfg.d_at(kk)}, {cfg.inputs} inputs)")
        else:
            _check_size_fits(cfg.inputs, d, 1, itemsize, last.saved_bytes * k * k // last.factor**2, device, what)
        got = probe(model, shape, 1, device, dtype)
        if isinstance(got, str):
            if not factors:
                raise AdvdimError(f"the model built for input_shape={shape} does not accept inputs of that shape: "
                                  f"it raised {got}")
            rejected[k] = got
            continue
        _check_size_fits(cfg.inputs, d, 1, itemsize, got.saved_bytes, device, what)
        if last is not None and got.logits != k_out:
            raise AdvdimError(f"the model returns {k_out} logits at d = {cfg.d_at(last.factor)} but {got.logits} at "
                              f"d = {d}: the number of classes must not depend on the input size")
        k_out, last = got.logits, Probe(k, got.logits, got.saved_bytes)
        traced = info.traces[k] = trace_module(model, shape)
        stats: InitStats | str | None = InitStats(traced.spec) if isinstance(traced, Traced) else None
        prints = []
        norms_k = {(t.value, q): np.empty(cfg.draws) for t in (Target.LOGIT, Target.LOSS) for q in cfg.qs}
        changed_k = np.empty(cfg.draws, dtype=np.int64)
        for draw in range(cfg.draws):
            if draw:
                model = _draw(factory, cfg, k, draw, device)
            fingerprint = _fingerprint(model)
            if isinstance(stats, InitStats) and isinstance(traced, Traced) and fingerprint not in prints:
                # a repeated draw is not an independent sample of the init: pooled once
                try:
                    stats.add(traced.weights(model))
                except (AttributeError, ValueError, TypeError) as e:
                    stats = f"draw {draw}'s model differs from draw 0's ({_first_line(e)})"
            prints.append(fingerprint)
            x = torch.randn(cfg.inputs, *shape, generator=gen, dtype=torch.float64).to(device, dtype)
            labels = torch.randint(0, k_out, (cfg.inputs,), generator=gen).to(device)
            norms, changed_k[draw], attack = _measure_batch(model, x, labels, cfg, k_out,
                                                            f"d = {d} (factor {k}, draw {draw})")
            for key, v in norms.items():
                norms_k[key][draw] = v.mean()
            del model
        info.stats[k] = stats
        if all(p == prints[0] for p in prints):
            info.same_weights.append(k)
        factors.append(k)
        for key, v in norms_k.items():
            cols.setdefault(key, []).append(v)
        changed.append(changed_k)
    notes = []
    if rejected:
        first = next(iter(rejected.values()))
        notes.append(f"the factory's models do not accept the size factors {sorted(rejected)} ({first}): measured at "
                     f"factors {factors} only" + ("; no slope can be fitted" if len(factors) < 2 else ""))
    values = {key: np.stack(v, axis=1) for key, v in cols.items()}
    return Sample(Setting.PER_SIZE, factors, [cfg.d_at(k) for k in factors], values, np.stack(changed, axis=1),
                  cfg.inputs, attack, notes), info


def theory_per_size(name: str, cfg: MeasureConfig, factors: Sequence[int], info: _PerSize) -> Theory:
    """The prediction for the traced specs at each size with the recognised init, or why there is none."""
    C, H, W = cfg.input_shape
    inits = {k: s.result() if isinstance(s, InitStats) else InitGuess(None, f"unknown: {s}")
             for k, s in info.stats.items() if s is not None}
    init = inits.get(factors[0]) if factors else None
    notes = []
    if init is not None and init.scheme is not None:
        for k in factors[1:]:
            if k in inits and inits[k].scheme != init.scheme:
                notes.append(f"at d = {cfg.d_at(k)} the weights look different from the base size's {init.scheme}: "
                             f"{inits[k].reason}; the prediction assumes {init.scheme} at every size")

    def without(reason: str, pred: Prediction | None = None) -> Theory:
        return Theory(dict(info.traces), init, pred, reason, False, tuple(notes))

    bad = next(((k, t) for k, t in info.traces.items() if isinstance(t, Untraceable)), None)
    if len(factors) < 2:
        return without("one input size only: no slope")
    if bad is not None:
        return without(f"the module is outside the theory's specs (at d = {cfg.d_at(bad[0])}: {bad[1].reason})")
    if info.same_weights:
        return without(f"the factory returned the same weights for every draw at d = {cfg.d_at(info.same_weights[0])}"
                       " (does it seed its own generator?): the law is an average over initialisations; let it draw "
                       "from torch's global generator, which measure seeds with --seed + draw")
    if init is None or init.scheme is None:
        return without(f"the initialisation is not one the theory knows ({init.reason if init else 'not examined'})")
    if H != W:
        return without(f"the theory's input sizes are square (C x s x s), this input is {H}x{W}")
    specs = {H * k: t.spec for k, t in info.traces.items() if isinstance(t, Traced)}

    def at(size: int, channels: int) -> Any:
        if size not in specs:
            raise SpecError(f"the module was traced at sides {sorted(specs)} only, not at {size}")
        return specs[size]

    target = ArchTarget(TargetKind.USER, f"{name} (traced)", builder=at)
    from advdim.theory import predict

    try:
        pred = predict(target, sizes=sorted(specs), channels=C, init=init.scheme, symmetry=False)
    except AdvdimError as e:
        return without(f"no prediction: {e}")
    if not pred.has_law:
        return without(pred.reasons.get("law", "the theory gives no law for this network"), pred)
    from advdim.simulate._study import iid_gaussian_coordinates

    return Theory(dict(info.traces), init, pred, None, iid_gaussian_coordinates(target, min(specs), C), tuple(notes))


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------
_NAMES = {"logit": "f_0", "loss": "L"}


def slope_verdicts(sample: Sample, theory: Theory, cfg: MeasureConfig) -> list[Verdict]:
    """One row per (target, q): the slope of ``log E||.||_q`` against ``log d`` (or the mean at one size)."""
    from advdim.simulate._fit import DELTA, SLOPE_RESOLUTION, critical, power, slope_test
    from advdim.simulate._fit import fit_slope as fit_over_draws

    rng = np.random.default_rng(cfg.seed)
    ds, n = sample.ds, sample.units
    per_size = sample.setting is Setting.PER_SIZE
    unit = "draws" if per_size else "inputs"
    out = []
    for (tgt, q), mat in sample.values.items():
        name = _NAMES[tgt]
        per = [_mean_ci(mat[:, j], rng) for j in range(mat.shape[1])]
        series: dict[str, Any] = {
            "figure": f"E||d_x {name}||_q against d ({'logit 0' if tgt == 'logit' else 'loss, random labels'})",
            "label": f"q = {q_text(q)}", "x": ds, "y": [m for m, _, _ in per], "lo": [lo for _, lo, _ in per],
            "hi": [hi for _, _, hi in per], "xlabel": "input dimension d", "ylabel": f"E||d_x {name}||_q",
            "loglog": True}
        extra: dict[str, Any] = {"target": tgt, "q": q_text(q), "d": ds, "factors": sample.factors, "units": n,
                                 "unit": unit, "setting": sample.setting.value, "norms_mean": series["y"],
                                 "series": series}
        if len(ds) < 2:
            m, lo, hi = per[0]
            out.append(Verdict(f"E||d_x {name}||_{q_text(q)} at d = {ds[0]}", "Thm 4-5, Cor 6", None, m, (lo, hi), None,
                               f"one input size only: no slope; {1 - ALPHA:.0%} bootstrap interval of the mean over "
                               f"{n} {unit}", extra))
            continue
        if per_size:
            fit = fit_over_draws(np.asarray(ds, dtype=np.float64), mat, seed=cfg.seed, n_boot=N_BOOT)
            slope, se, c = fit.slope, fit.se, critical(ALPHA, n)
            interval = (slope - c * se, slope + c * se)
            extra["se"] = se
            how = (f"{n} draws x {cfg.inputs} i.i.d. N(0,1) inputs per size, a new model per size and draw; interval "
                   f"slope +- c*se with c = {c:.3f} (t_(1-alpha/2, n-1) sqrt(n/(n-1)), n = {n} draws) and se {se:.4f} "
                   f"(bootstrap over draws paired across sizes, {N_BOOT} resamples)")
        else:
            slope, se = fit_slope(ds, mat), None
            boots = bootstrap_slopes(ds, mat, rng)
            lo, hi = (float(v) for v in np.quantile(boots, [ALPHA / 2, 1 - ALPHA / 2]))
            interval = (lo, hi)
            C, H, W = cfg.input_shape
            how = (f"{n} Gaussian inputs of {C}x{H}x{W} up-sampled x{sample.factors}; {1 - ALPHA:.0%} bootstrap "
                   f"interval over inputs ({N_BOOT} resamples) for these weights")
        lx, ly = np.log(ds), np.log(series["y"])
        series["fit"] = np.exp(ly.mean() + slope * (lx - lx.mean())).tolist()
        claim = f"slope of E||d_x {name}||_{q_text(q)} in d"
        pred, why = theory.slope(q), theory.reason
        if pred is not None and math.isinf(q) and not theory.iid_inf:
            why = (f"the finite-d q = inf prediction ({pred:.4g}) is the maximum of independent Gaussians, which the "
                   "coordinates of a conv net's input gradient are not at finite width (shared weights)")
            pred = None
        if pred is None or se is None:
            out.append(Verdict(claim, "Thm 4-5, Cor 6", None, slope, interval, None,
                               f"reported, not judged: {why}; {how}", extra))
            continue
        passed, _ = slope_test(slope, pred, se, ALPHA, n)
        pw = power(se, DELTA, ALPHA, n)
        extra["power"] = pw
        series["predicted"] = np.exp(ly.mean() + pred * (lx - lx.mean())).tolist()
        assert theory.init is not None and theory.prediction is not None
        failing = [k for k, held in theory.prediction.hypotheses.items() if not held]
        approx = (f"; on the trace {', '.join(failing)} do not hold ({theory.prediction.reasons[failing[0]]}): the "
                  "law is the path sum's, approximate there" if failing else "")
        loss = ("; the loss has the logit's slope (E||d_x L||_q = E||softmax - y||_2 E||d_x f_k||_q)"
                if tgt == "loss" else "")
        out.append(Verdict(
            claim, f"Thm 4-5, Cor 6: predict on the trace, {theory.init.scheme} init", pred, slope, interval, passed,
            f"FAIL iff |measured - predicted| > c*se (false failure rate {ALPHA:g} for a model that follows the "
            f"law); pass needs power >= {MIN_POWER:g} against a slope off by {DELTA} (else inconclusive: more "
            f"--draws): {power_note(pw, SLOPE_RESOLUTION)}; {how}{loss}{approx}", extra, power=pw,
            resolution=SLOPE_RESOLUTION))
    return out


def vulnerability_verdicts(sample: Sample, cfg: MeasureConfig) -> list[Verdict]:
    """One reported row per size: the share of labels an ``l_inf`` PGD attack of size eps changes."""
    draws = sample.changed.shape[0]
    total = draws * sample.per_draw
    counts = sample.changed.sum(axis=0)
    shares = [float(c) / total for c in counts]
    if draws >= 2:  # draws are the independent units: a bootstrap over them
        rng = np.random.default_rng(cfg.seed + 1)
        per_draw = sample.changed / sample.per_draw
        idx = rng.integers(0, draws, size=(N_BOOT, draws))
        boot = per_draw[idx].mean(axis=1)  # (N_BOOT, sizes)
        # the wider of a bootstrap over draws (inputs of one model are not independent) and Clopper-Pearson
        # on all inputs (the bootstrap is a point when no draw changed a label)
        cps = [binomial_interval(int(c), total) for c in counts]
        cis = [(min(float(np.quantile(boot[:, j], ALPHA / 2)), cps[j][0]),
                max(float(np.quantile(boot[:, j], 1 - ALPHA / 2)), cps[j][1])) for j in range(len(shares))]
        how = (f"{1 - ALPHA:.0%} interval: the wider of a bootstrap over {draws} draws of {sample.per_draw} inputs "
               "and Clopper-Pearson on all of them")
    else:
        cis = [binomial_interval(int(c), total) for c in counts]
        how = f"{1 - ALPHA:.0%} Clopper-Pearson interval"
    vseries = {"figure": f"adversarial vulnerability against d (l_inf PGD, eps = {cfg.eps:g})", "label": "share",
               "x": sample.ds, "y": shares, "lo": [c[0] for c in cis], "hi": [c[1] for c in cis],
               "xlabel": "input dimension d", "ylabel": "share of inputs whose label changes", "loglog": False}
    out = []
    for j, d in enumerate(sample.ds):
        out.append(Verdict(
            f"adversarial vulnerability at d = {d} (eps = {cfg.eps:g}, l_inf)", "Definition 1", None, shares[j], cis[j],
            None, f"reported: {int(counts[j])} of {total} labels changed; {how}; the paper predicts growth with "
            "sqrt(d) at fixed eps",
            {"d": d, "factor": sample.factors[j], "changed": int(counts[j]), "inputs": total, "eps": cfg.eps,
             "attack": sample.attack, **({"series": vseries} if j == len(sample.ds) - 1 else {})}))
    return out


def measure(factory: Callable[..., Any], cfg: MeasureConfig, device: torch.device, name: str = "model") -> Measured:
    """Measure the model(s) of ``factory`` in the setting its signature calls for (module docstring).

    Args:
        factory: ``() -> nn.Module`` (up-sampled inputs) or ``(input_shape=(C, H, W)) -> nn.Module``
            (a new model per size and draw).
        cfg: sizes, norms, inputs, draws, attack, seed.
        device: where the models run.
        name: the model's name in the trace's target text.
    Returns:
        The verdict rows (slopes, then vulnerability), notes, the sample and the theory's side.
    """
    setting = Setting.PER_SIZE if takes_input_shape(factory) else Setting.UPSAMPLED
    cfg.check(setting)
    if setting is Setting.PER_SIZE:
        sample, info = sample_per_size(factory, cfg, device)
        theory = theory_per_size(name, cfg, sample.factors, info)
        head = (f"setting: per-size draws: a new model for every size and draw (factory(input_shape=(C, kH, kW)) "
                f"after torch.manual_seed({cfg.seed} + draw)), each on its own i.i.d. N(0, 1) inputs")
    else:
        model = make_model(factory)
        sample = sample_upsampled(model, cfg, device)
        theory = theory_upsampled(model, cfg)
        head = ("setting: up-sampled inputs: one model (the factory takes no input_shape), Gaussian inputs up-sampled "
                "by pixel copy (--draws applies only to factories that take input_shape)")
    base = next(iter(theory.traces.values()), None)  # the smallest size's trace
    notes = [head,
             f"trace: {base.spec.to_text()}" if isinstance(base, Traced) else
             f"trace: none ({base.reason if base is not None else 'not attempted'})",
             f"initialisation: {theory.init.reason if theory.init is not None else 'not examined (no trace)'}",
             "slope rows judged against the theory's prediction for this model" if theory.reason is None
             else f"slope rows reported, not judged: {theory.reason}",
             *theory.notes, *sample.notes,
             f"vulnerability attack: {sample.attack}, eps = {cfg.eps:g} (input units), {cfg.steps} steps"]
    verdicts = slope_verdicts(sample, theory, cfg) + vulnerability_verdicts(sample, cfg)
    return Measured(setting, verdicts, notes, sample, theory)


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
def main(target: str, input_shape: str, sizes: str = "1,2,4", q: str = "1,2,inf", inputs: int = 64, draws: int = 16,
         eps: float = 0.004, steps: int = 10, seed: int = 0, device: str = "auto", out_dir: str = "report-measure",
         as_json: bool = False) -> int:
    """The ``advdim measure`` command (arguments as on the command line); returns the exit status:
    0 when every judged row passed (or none is judged), 1 when one failed, 3 when none failed but some
    are inconclusive (too few --draws for power 0.8 against a slope off by 0.05)."""
    from advdim._report_cli import command_line, device_text, print_verdicts, report_dir
    from advdim.build import resolve_device
    from advdim.cli import emit_json, err, out
    from advdim.report import RunInfo, counts, exit_status, summary_line, verdict_rows, write_report

    cfg = MeasureConfig(parse_shape(input_shape), parse_ints(sizes, "--sizes"), parse_qs(q), inputs, seed, eps, steps,
                        draws)
    dev = resolve_device(device)
    check_out_folder(out_dir)  # nothing is written before the measurement succeeded
    factory = load_factory(target)
    t0 = time.perf_counter()
    result = measure(factory, cfg, dev, target)
    seconds = time.perf_counter() - t0
    folder = report_dir(out_dir)
    rows = verdict_rows(target, "measure", seconds, result.verdicts)
    per_size = result.setting is Setting.PER_SIZE
    theory = result.theory.to_json()
    init, trace = theory["init"], theory["trace"]
    info = RunInfo(title=f"advdim measure {target}", command=command_line(
        "measure", target, input_shape=input_shape, sizes=sizes, q=q, inputs=inputs, draws=draws, eps=eps, steps=steps,
        seed=seed, device=device, out=out_dir), seed=seed, device=device_text(dev),
                   seconds=seconds, notes=tuple(result.notes),
                   settings={"model": target, "setting": result.setting.value, "input shape": input_shape,
                             "size factors": sizes, "q": q,
                             "inputs per size": f"{inputs} per draw" if per_size else str(inputs),
                             "draws per size": str(draws) if per_size else "1 (one fixed model)",
                             "eps (l_inf)": f"{eps:g}", "PGD steps": str(steps),
                             "trace": "traced" if trace["traced"] else f"not traced: {trace['reason']}",
                             "initialisation": init["reason"] if init else "not examined",
                             "judged": "yes" if theory["prediction"]["judged"] else
                             f"no: {theory['prediction']['reason']}"})
    files = write_report(folder, rows, info)
    if as_json:
        emit_json(_json(target, cfg, result, rows, str(files.html)))
    else:
        print_verdicts(f"advdim measure {target} ({result.setting.value})", rows)
        for note in result.notes:
            err.print(note, soft_wrap=True)
        out.print(f"{summary_line(counts(rows))}; report: {files.html}", soft_wrap=True)
    return exit_status(counts(rows))


#: the verdict of a row in words (JSON): n/a rows are "reported"
VERDICT_WORDS = {Outcome.PASS: "pass", Outcome.FAIL: "fail", Outcome.INCONCLUSIVE: "inconclusive",
                 Outcome.REPORTED: "reported"}


def _json(target: str, cfg: MeasureConfig, result: Measured, rows: list[dict[str, Any]], report: str
          ) -> dict[str, Any]:
    from advdim.report import counts, exit_status, overall, row_outcome

    n = counts(rows)
    sample = result.sample
    res: dict[str, Any] = {
        "model": target, "setting": result.setting.value, "input_shape": list(cfg.input_shape), "seed": cfg.seed,
        "inputs": cfg.inputs, "draws": cfg.draws if result.setting is Setting.PER_SIZE else 1,
        "d": sample.ds, "factors": sample.factors, "fixed_size": len(sample.ds) < 2,
        **result.theory.to_json(),
        "rows": [{"claim": r["claim"], "reference": r["reference"], "predicted": r["predicted"],
                  "measured": r["measured"], "interval": r["interval"], "verdict": VERDICT_WORDS[row_outcome(r)],
                  "outcome": r["outcome"], "power": r["power"], "detail": r["detail"]} for r in rows],
        "passed": exit_status(n) == 0, "outcome": overall(n).value, "counts": {o.value: k for o, k in n.items()},
        "notes": result.notes, "report": report, "q": {}, "vulnerability": []}
    for r in rows:
        ex = r["extra"]
        if "target" in ex:
            slope = len(ex["d"]) >= 2
            res["q"].setdefault(ex["q"], {})[ex["target"]] = {
                "predicted_slope": r["predicted"], "measured_slope": r["measured"] if slope else None,
                "interval": r["interval"] if slope else None, "verdict": VERDICT_WORDS[row_outcome(r)],
                "pass": r["passed"], "outcome": r["outcome"], "power": r["power"], "norms": ex["norms_mean"]}
        else:
            res["vulnerability"].append({"d": ex["d"], "eps": ex["eps"], "share": r["measured"],
                                         "interval": r["interval"], "attack": ex["attack"]})
    return res
