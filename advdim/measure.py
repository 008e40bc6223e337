"""``advdim measure``: how the input gradients and the vulnerability of *your* model scale with
the input dimension, judged against the theory's prediction for that model where there is one.

The model comes from a factory (``MODULE:FACTORY``, where ``MODULE`` is an importable module or a
``.py`` file): a callable returning an ``nn.Module`` that maps ``(B, C, H, W)`` images to
``(B, K)`` logits.  There are two settings, chosen by the factory's signature:

- **per-size draws** (the factory takes ``input_shape``; the paper's setting): the factory is a
  target of the same study as ``advdim simulate``.  Its units are seeded weight draws
  (``factory(input_shape=(C, kH, kW))`` after ``torch.manual_seed(seed + draw)``), each on its own
  i.i.d. ``N(0, 1)`` inputs; the cells run through :func:`advdim.sweep.run_sweep` (progress bar,
  run store, ``--resume``, local workers), keyed by the factory's canonical text and the hash of
  its source file; the per-draw records go to the same analysis (:func:`advdim.simulate.analyse`)
  and statistics (:mod:`advdim.stats`): slopes over draws with ``t`` critical values on the
  effective number of draws, power, the prefactor ratio, q = inf judged where the theory's law is
  checked.  When the model is traced into a spec at every size (:mod:`advdim.trace`) and its
  initialisation recognised, the rows are **judged** against ``advdim.theory.predict`` on those
  specs; otherwise each row says whether the measured exponent is consistent with the paper's
  ``d^(1/q - 1/2)`` (a user's model is held to the paper's claim for almost any network: an
  inconsistent row fails, exit 1), or that the budget cannot tell.
- **up-sampled inputs** (the factory takes no argument, e.g. a trained model): one model, fed
  Gaussian images of the base shape up-sampled by pixel copy (each pixel a ``k x k`` block, as the
  paper's Section 4.2 up-samples CIFAR-10); the units are the inputs (the question is about this
  one model).  Pixel copies are perfectly correlated inputs, not the i.i.d. inputs of the per-size
  law: no prediction is shown, every row is reported.

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
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from advdim.arch import Target as ArchTarget
from advdim.arch import TargetKind
from advdim.cli_args import parse_sizes
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target, check_q, input_gradient, lp_norm
from advdim.models import (
    FactoryFailed,
    Probe,
    attack,
    binomial_interval,
    check_batch,
    check_gradient,
    check_size_fits,
    first_line,
    make_model,
    probe,
    takes_input_shape,
    vulnerability,
)
from advdim.stats import ALPHA, critical, fit_slope
from advdim.trace import InitGuess, InitStats, Traced, Untraceable, trace_module
from advdim.verdict import Verdict

if TYPE_CHECKING:
    from advdim.simulate import FamilyResult
    from advdim.store import RunStore
    from advdim.theory import Prediction

#: bootstrap resamples (the vulnerability intervals and the one-size means)
N_BOOT = 2000
#: weight draws per size from which the initialisation is recognised (and repeated weights detected)
INIT_DRAWS = 4
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


# ---------------------------------------------------------------------------------------------
# Probing a model (does it take this size? does the size fit in memory?)
# ---------------------------------------------------------------------------------------------
def probe_factors(model: nn.Module, cfg: MeasureConfig, device: torch.device, dtype: torch.dtype
                  ) -> tuple[list[Probe], dict[int, str]]:
    """:func:`probe` the model at each factor (ascending) that is estimated to fit in memory, the
    activations of a factor extrapolated from the last accepted one (in proportion to the pixels)
    before it runs, and checked with its own probe after; a factor that does not fit is an
    :class:`AdvdimError`.  Returns the probes of the accepted factors and the error of each other."""
    C, H, W = cfg.input_shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    for k in cfg.factors:  # the inputs alone, before the model runs at any size
        check_size_fits(cfg.inputs, C * H * W * k * k, k, itemsize, None, device)
    probes: list[Probe] = []
    errors: dict[int, str] = {}
    for k in sorted(cfg.factors):
        d = C * H * W * k * k
        if probes:
            last = probes[-1]
            check_size_fits(cfg.inputs, d, k, itemsize, last.saved_bytes * k * k // last.factor**2, device)
        got = probe(model, cfg.input_shape, k, device, dtype)
        if isinstance(got, str):
            errors[k] = got
            continue
        check_size_fits(cfg.inputs, d, k, itemsize, got.saved_bytes, device)
        if probes and got.logits != probes[0].logits:
            raise AdvdimError(f"the model returns {probes[0].logits} logits at d = {C * H * W * probes[0].factor**2} "
                              f"but {got.logits} at d = {d}: the number of classes must not depend on the input size")
        probes.append(got)
    return probes, errors


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
        values: ``(target, q key) -> (units, sizes)``: per unit the mean of ``||.||_q`` over its inputs.
        sq: ``target -> (units, sizes)``: per unit the mean of ``||.||_2^2``.
        changed: ``(units, sizes)``: labels the attack changed per unit (one row when up-sampled).
        per_draw: inputs behind each entry of ``changed``.
    """

    setting: Setting
    factors: list[int]
    ds: list[int]
    values: dict[tuple[str, str], np.ndarray]
    sq: dict[str, np.ndarray]
    changed: np.ndarray
    per_draw: int
    attack: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Theory:
    """The theory's side of a measurement.

    Attributes:
        traces: the spec of the model (draw 0) at each size factor, or why there is none.
        init: the initialisation recognised at the base size (None: not examined).
        prediction: ``advdim.theory.predict`` on the traced specs (None: no prediction).
        reason: why the slope rows are reported, not judged (None: judged against ``prediction``).
        law_target: the traced specs as one target (side -> spec), the one the law is predicted for.
        notes: what else the reader should know (e.g. the weights look different at other sizes).
    """

    traces: dict[int, Traced | Untraceable]
    init: InitGuess | None
    prediction: Prediction | None
    reason: str | None
    law_target: ArchTarget | None = None
    notes: tuple[str, ...] = ()

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
    results: dict[str, FamilyResult] = field(default_factory=dict)  # per target: the study's analysis


def _dtype(model: nn.Module) -> torch.dtype:
    p0 = next(iter(model.parameters()), None)
    return p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32


# ---------------------------------------------------------------------------------------------
# Up-sampled inputs to one fixed model
# ---------------------------------------------------------------------------------------------
def upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pixel-copy up-sampling: ``(B, C, H, W)`` -> ``(B, C, kH, kW)``, each pixel a ``k x k`` block."""
    return x if k == 1 else x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def _measure_batch(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: MeasureConfig, k_out: int,
                   where: str) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, np.ndarray], int, str]:
    """Per input ``||d_x f_0||_q``, ``||d_x L||_q`` and ``||.||_2^2``, and the labels the attack changed."""
    logits = check_batch(model, x, where, k_out)
    norms, sq = {}, {}
    try:
        for target in (Target.LOGIT, Target.LOSS):
            g = input_gradient(model, x, target, 0, labels if target is Target.LOSS else None)
            check_gradient(g, target, where)
            g = g.double()
            for q in cfg.qs:
                norms[(target.value, q_text(q))] = lp_norm(g, q).cpu().numpy()
            sq[target.value] = g.reshape(g.shape[0], -1).square().sum(dim=1).cpu().numpy()
        n_vul, attack = vulnerability(model, x, cfg.eps, cfg.steps, logits.argmax(dim=1))
    except AdvdimError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model failed on the measurement's inputs
        raise AdvdimError(f"the model failed at {where}: {first_line(e)}") from None
    return norms, sq, n_vul, attack


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
    cols: dict[tuple[str, str], list[np.ndarray]] = {}
    sqs: dict[str, list[np.ndarray]] = {}
    changed = []
    attack = ""
    for k in factors:
        norms, sq, n_vul, attack = _measure_batch(model, upsample(x0, k).to(device, dtype), labels, cfg, k_out,
                                                  f"d = {cfg.d_at(k)} (factor {k})")
        for key, v in norms.items():
            cols.setdefault(key, []).append(v)
        for t, v in sq.items():
            sqs.setdefault(t, []).append(v)
        changed.append(n_vul)
    values = {key: np.stack(v, axis=1) for key, v in cols.items()}
    return Sample(Setting.UPSAMPLED, factors, [cfg.d_at(k) for k in factors], values,
                  {t: np.stack(v, axis=1) for t, v in sqs.items()}, np.array([changed], dtype=np.int64), cfg.inputs,
                  attack, notes)


def theory_upsampled(model: nn.Module, cfg: MeasureConfig) -> Theory:
    """The trace and init of the fixed model (reported); no prediction for up-sampled inputs."""
    traced = trace_module(model, cfg.input_shape)
    init = None
    if isinstance(traced, Traced):
        stats = InitStats(traced.spec)
        stats.add(traced.weights(model))
        init = stats.result()
    return Theory({1: traced}, init, None, UPSAMPLED_REASON)


def upsampled_verdicts(sample: Sample, cfg: MeasureConfig) -> list[Verdict]:
    """Reported rows of the up-sampled setting: per (target, q) the slope over the inputs of one model."""
    ds, out = sample.ds, []
    C, H, W = cfg.input_shape
    for (tgt, key), mat in sample.values.items():
        name = _NAMES[tgt]
        claim = f"slope of E||d_x {name}||_{key} in d"
        series, extra = _series(tgt, key, ds, mat, sample)
        if len(ds) < 2:
            out.append(_one_size_row(tgt, key, ds[0], mat[:, 0], "inputs", extra))
            continue
        fit = fit_slope(np.asarray(ds, dtype=np.float64), mat, seed=cfg.seed)
        tol = critical(ALPHA, fit.units) * fit.se
        lx = np.log(ds)
        series["fit"] = np.exp(fit.intercept + fit.slope * lx).tolist()
        out.append(Verdict(claim, "Thm 4-5, Cor 6", None, fit.slope, (fit.slope - tol, fit.slope + tol), None,
                           f"reported, not judged: {UPSAMPLED_REASON}; {fit.n} Gaussian inputs of {C}x{H}x{W} "
                           f"up-sampled x{sample.factors}: {1 - ALPHA:.0%} interval over the inputs of this one model "
                           f"(c*se, {fit.units:.1f} effective inputs)", extra))
    return out


# ---------------------------------------------------------------------------------------------
# A new model per size and draw (the paper's setting): a factory target of the study
# ---------------------------------------------------------------------------------------------
@dataclass
class _PerSize:
    """What the pre-pass learns about the factory's models before the cells run."""

    factors: list[int] = field(default_factory=list)  # the size factors the factory and its models accept
    rejected: dict[int, str] = field(default_factory=dict)
    traces: dict[int, Traced | Untraceable] = field(default_factory=dict)
    #: per size factor: the weights' moments; a string: why they could not be pooled; None: not traced
    stats: dict[int, InitStats | str | None] = field(default_factory=dict)
    same_weights: list[int] = field(default_factory=list)  # factors at which every draw had the same weights


def _fingerprint(model: nn.Module) -> tuple[float, ...]:
    from advdim.simulate import fingerprint

    return tuple(fingerprint(model))


def prepass(factory: Callable[..., Any], cfg: MeasureConfig, device: torch.device) -> _PerSize:
    """Draw 0 at each size (ascending): built, probed (does it accept its input? does the size fit in
    memory, activations extrapolated from the size before?) and traced; the initialisation
    recognised from the first :data:`INIT_DRAWS` draws.  A size the factory or its model refuses is
    dropped with a note, unless it is the base size (an :class:`AdvdimError`)."""
    from advdim.simulate import draw_model

    info = _PerSize()
    last: Probe | None = None
    k_out = 0
    for k in sorted(cfg.factors):
        shape, d = cfg.shape_at(k), cfg.d_at(k)
        what = f"size factor {k} (d = {d}, {cfg.inputs} inputs)"
        try:
            model = draw_model(factory, shape, cfg.seed, 0, device)
        except FactoryFailed as e:
            if not info.factors:
                raise
            info.rejected[k] = str(e)
            continue
        itemsize = torch.empty((), dtype=_dtype(model)).element_size()
        if last is None:  # the inputs alone, before the model runs at any size
            for kk in cfg.factors:
                check_size_fits(cfg.inputs, cfg.d_at(kk), 1, itemsize, None, device,
                                 f"size factor {kk} (d = {cfg.d_at(kk)}, {cfg.inputs} inputs)")
        else:
            check_size_fits(cfg.inputs, d, 1, itemsize, last.saved_bytes * k * k // last.factor**2, device, what)
        got = probe(model, shape, 1, device, _dtype(model))
        if isinstance(got, str):
            if not info.factors:
                raise AdvdimError(f"the model built for input_shape={shape} does not accept inputs of that shape: "
                                  f"it raised {got}")
            info.rejected[k] = got
            continue
        check_size_fits(cfg.inputs, d, 1, itemsize, got.saved_bytes, device, what)
        if last is not None and got.logits != k_out:
            raise AdvdimError(f"the model returns {k_out} logits at d = {cfg.d_at(last.factor)} but {got.logits} at "
                              f"d = {d}: the number of classes must not depend on the input size")
        k_out, last = got.logits, Probe(k, got.logits, got.saved_bytes)
        traced = info.traces[k] = trace_module(model, shape)
        stats: InitStats | str | None = InitStats(traced.spec) if isinstance(traced, Traced) else None
        prints = []
        for draw in range(min(cfg.draws, INIT_DRAWS)):
            if draw:
                model = draw_model(factory, shape, cfg.seed, draw, device)
            fp = _fingerprint(model)
            if isinstance(stats, InitStats) and isinstance(traced, Traced) and fp not in prints:
                try:  # a repeated draw is not an independent sample of the init: pooled once
                    stats.add(traced.weights(model))
                except (AttributeError, ValueError, TypeError) as e:
                    stats = f"draw {draw}'s model differs from draw 0's ({first_line(e)})"
            prints.append(fp)
        info.stats[k] = stats
        if len(prints) > 1 and all(p == prints[0] for p in prints):
            info.same_weights.append(k)
        info.factors.append(k)
    return info


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
        return Theory(dict(info.traces), init, pred, reason, None, tuple(notes))

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
    return Theory(dict(info.traces), init, pred, None, target, tuple(notes))


def _law_init(theory: Theory) -> Any:
    from advdim.build import Init

    assert theory.init is not None and theory.init.scheme is not None
    return Init.parse(theory.init.scheme)


def sample_per_size(factory: Callable[..., Any], target: str, cfg: MeasureConfig, device: torch.device,
                    info: _PerSize, store: RunStore | None = None, workers: int = 0, resume: bool = True,
                    progress: bool = True) -> Sample:
    """The factory's units (``--draws`` weight draws) at every accepted size, through the sweep."""
    from advdim.simulate import FACTORY_KIND, FactoryPlan, register_factory, run_factory_cell, source_hash
    from advdim.sweep import run_sweep

    text = canonical_factory(target) if ":" in target else \
        f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', target)}"
    register_factory(text, factory)  # in-process cells call this object; worker processes import the text
    plan = FactoryPlan(text, source_hash(factory), cfg.input_shape, cfg.qs, cfg.inputs,
                       cfg.seed, cfg.eps, cfg.steps, device.type)
    configs = [plan.config(u, k) for u in range(cfg.draws) for k in info.factors]
    for k in info.factors:  # a model that fails on the measurement's inputs: one line, before the sweep starts
        run_factory_cell(plan.config(0, k))
    results = run_sweep(FACTORY_KIND, configs, run_factory_cell, store, workers=workers, resume=resume,
                        progress=progress, description=f"measure {target}")
    n_u, n_s = cfg.draws, len(info.factors)
    keys = [q_text(q) for q in cfg.qs]
    values = {(t, key): np.array([r[t][key] for r in results], dtype=np.float64).reshape(n_u, n_s)
              for t in _NAMES for key in keys}
    sq = {t: np.array([r[t]["sq2"] for r in results], dtype=np.float64).reshape(n_u, n_s) for t in _NAMES}
    changed = np.array([r["changed"] for r in results], dtype=np.int64).reshape(n_u, n_s)
    notes = []
    if info.rejected:
        first = next(iter(info.rejected.values()))
        notes.append(f"the factory's models do not accept the size factors {sorted(info.rejected)} ({first}): "
                     f"measured at factors {info.factors} only" + ("; no slope can be fitted" if n_s < 2 else ""))
    return Sample(Setting.PER_SIZE, list(info.factors), [cfg.d_at(k) for k in info.factors], values, sq, changed,
                  cfg.inputs, attack()[1], notes)


def canonical_factory(target: str) -> str:
    """``path.py:NAME`` with the path made absolute (the store key); ``module:NAME`` as given."""
    module, _, name = str(target).strip().rpartition(":")
    path = Path(module)
    if module.endswith(".py") or path.is_file():
        return f"{path.resolve()}:{name}"
    return f"{module}:{name}"


def analyse_per_size(name: str, sample: Sample, theory: Theory, cfg: MeasureConfig) -> dict[str, FamilyResult]:
    """Per target (``logit``, ``loss``) the study's analysis of the draws: judged against the traced
    law where there is one, else the consistency rows against ``d^(1/q - 1/2)``."""
    from advdim.gradients import Target as GradTarget
    from advdim.simulate import TopologyLaw, Units, analyse, inf_prediction_exact, predict_topology

    C, H, _ = cfg.input_shape
    sides = [H * k for k in sample.factors]
    keys = [q_text(q) for q in cfg.qs]
    d = np.asarray(sample.ds, dtype=np.float64)
    units = Units(cfg.draws, 1, cfg.inputs, C, cfg.seed)
    law_target = theory.law_target
    out = {}
    for tgt in _NAMES:
        gt = GradTarget(tgt)
        law: TopologyLaw | None = TopologyLaw(dict.fromkeys(keys), None, dict.fromkeys(keys))
        iid_inf, init = True, "he"
        if theory.reason is None and law_target is not None:
            law = predict_topology(law_target, sides, C, _law_init(theory), gt, wide=True, keys=keys,
                                   prediction=theory.prediction if gt is GradTarget.LOGIT else None)
            iid_inf = inf_prediction_exact(law_target, sides, C, _law_init(theory).value)
            init = _law_init(theory).value
        values = {key: sample.values[(tgt, key)] for key in keys}
        out[tgt] = analyse(name, sides, d, values, sample.sq[tgt], [law] * cfg.draws, units, gt, iid_inf=iid_inf,
                           fixed=True, init=init, law_init=init, no_law_reason=theory.reason)
    return out


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------
_NAMES = {"logit": "f_0", "loss": "L"}
#: the paper's claims behind the slope and prefactor rows of a user's model
REFERENCE = "Thm 4-5, Cor 6"


def _series(tgt: str, key: str, ds: Sequence[int], mat: np.ndarray, sample: Sample) -> tuple[dict[str, Any],
                                                                                                  dict[str, Any]]:
    name = _NAMES[tgt]
    rng = np.random.default_rng(0)
    boot = mat[rng.integers(0, mat.shape[0], size=(N_BOOT, mat.shape[0]))].mean(axis=1)
    lo, hi = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2], axis=0)
    series: dict[str, Any] = {
        "figure": f"E||d_x {name}||_q against d ({'logit 0' if tgt == 'logit' else 'loss, random labels'})",
        "label": f"q = {key}", "x": list(ds), "y": mat.mean(axis=0).tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
        "xlabel": "input dimension d", "ylabel": f"E||d_x {name}||_q", "loglog": True}
    extra: dict[str, Any] = {"target": tgt, "q": key, "d": list(ds), "factors": sample.factors,
                             "units": int(mat.shape[0]), "setting": sample.setting.value,
                             "norms_mean": series["y"], "series": series}
    return series, extra


def _one_size_row(tgt: str, key: str, d: int, v: np.ndarray, unit: str, extra: dict[str, Any]) -> Verdict:
    rng = np.random.default_rng(0)
    means = v[rng.integers(0, len(v), size=(N_BOOT, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return Verdict(f"E||d_x {_NAMES[tgt]}||_{key} at d = {d}", "Thm 4-5, Cor 6", None, float(v.mean()),
                   (float(lo), float(hi)), None,
                   f"one input size only: no slope; {1 - ALPHA:.0%} bootstrap interval of the mean over "
                   f"{len(v)} {unit}",
                   extra)


def per_size_verdicts(sample: Sample, results: dict[str, FamilyResult], independent: bool = True
                      ) -> list[Verdict]:
    """The study's rows of both targets (slopes, prefactor), or the means when there is one size;
    ``independent=False`` (every draw had the same weights): no consistency word on rows without a law."""
    if len(sample.ds) < 2:
        return [_one_size_row(tgt, key, sample.ds[0], mat[:, 0], "draws", _series(tgt, key, sample.ds, mat, sample)[1])
                for (tgt, key), mat in sample.values.items()]
    out = []
    for tgt, res in results.items():
        for v in res.verdicts(consistency_fails=True, consistency=independent):
            key = next((k for k in res.q if f"||_{k} vs d" in v.claim), None)
            claim = (f"slope of E||d_x {_NAMES[tgt]}||_{key} in d" if key is not None
                     else f"E||d_x {_NAMES[tgt]}||_2^2 measured / theory")
            if key is not None:  # the table and the JSON read the target and q from the row
                extra = {**_series(tgt, key, sample.ds, sample.values[(tgt, key)], sample)[1], **v.extra}
                extra["series"] = {**extra["series"], "label": f"q = {key}", "figure": _series(
                    tgt, key, sample.ds, sample.values[(tgt, key)], sample)[0]["figure"]}
                v = replace(v, extra={**extra, "target": tgt, "q": key})
            out.append(replace(v, claim=claim, reference=REFERENCE))
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


def measure(factory: Callable[..., Any], cfg: MeasureConfig, device: torch.device, name: str = "model",
            store: RunStore | None = None, workers: int = 0, resume: bool = True, progress: bool = False
            ) -> Measured:
    """Measure the model(s) of ``factory`` in the setting its signature calls for (module docstring).

    Args:
        factory: ``() -> nn.Module`` (up-sampled inputs) or ``(input_shape=(C, H, W)) -> nn.Module``
            (a new model per size and draw: the units of a study).
        cfg: sizes, norms, inputs, draws, attack, seed.
        device: where the models run.
        name: the model's name (``MODULE:FACTORY``): the rows' claims and the cells' store key.
        store, workers, resume, progress: the sweep of the per-size cells (:func:`advdim.sweep.run_sweep`).
    Returns:
        The verdict rows (slopes and prefactor, then vulnerability), notes, the sample and the theory's side.
    """
    setting = Setting.PER_SIZE if takes_input_shape(factory) else Setting.UPSAMPLED
    cfg.check(setting)
    results: dict[str, FamilyResult] = {}
    if setting is Setting.PER_SIZE:
        info = prepass(factory, cfg, device)
        theory = theory_per_size(name, cfg, info.factors, info)
        sample = sample_per_size(factory, name, cfg, device, info, store, workers, resume, progress)
        if len(sample.ds) >= 2:
            results = analyse_per_size(name, sample, theory, cfg)
        verdicts = per_size_verdicts(sample, results, independent=not info.same_weights)
        head = (f"setting: per-size draws: a new model for every size and draw (factory(input_shape=(C, kH, kW)) "
                f"after torch.manual_seed({cfg.seed} + draw)), each on its own i.i.d. N(0, 1) inputs; the draws are "
                "the independent units of the study")
    else:
        model = make_model(factory)
        sample = sample_upsampled(model, cfg, device)
        theory = theory_upsampled(model, cfg)
        verdicts = upsampled_verdicts(sample, cfg)
        head = ("setting: up-sampled inputs: one model (the factory takes no input_shape), Gaussian inputs up-sampled "
                "by pixel copy; the inputs are the units (--draws applies only to factories that take input_shape)")
    base = next(iter(theory.traces.values()), None)  # the smallest size's trace
    judged = theory.reason is None
    notes = [head,
             f"trace: {base.spec.to_text()}" if isinstance(base, Traced) else
             f"trace: none ({base.reason if base is not None else 'not attempted'})",
             f"initialisation: {theory.init.reason if theory.init is not None else 'not examined (no trace)'}",
             "slope rows judged against the theory's prediction for this model" if judged
             else f"no prediction: {theory.reason}" + ("; each slope row says whether it is consistent with the "
                                                       "paper's d^(1/q - 1/2) (inconsistent: FAIL)"
                                                       if setting is Setting.PER_SIZE else ""),
             *theory.notes, *sample.notes,
             f"vulnerability attack: {sample.attack}, eps = {cfg.eps:g} (input units), {cfg.steps} steps"]
    verdicts += vulnerability_verdicts(sample, cfg)
    return Measured(setting, verdicts, notes, sample, theory, results)
