"""``advdim measure``'s per-size setting: the factory as a target of the study, its units seeded
weight draws (see :mod:`advdim.measure`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from advdim._trace_tokens import TokenReadout, read_tokens
from advdim.arch import Target as ArchTarget
from advdim.arch import TargetKind
from advdim.errors import AdvdimError, SpecError
from advdim.initlaw import differs, spec_at_size
from advdim.models import (
    FactoryFailed,
    Probe,
    attack,
    check_size_fits,
    first_line,
    probe,
)
from advdim.theory._tokens import TokenLaw
from advdim.trace import InitGuess, InitStats, Traced, Untraceable, trace_module

if TYPE_CHECKING:
    from advdim.simulate import FamilyResult
    from advdim.store import RunStore
    from advdim.theory import Prediction

from advdim._measure_base import (
    _NAMES,
    INIT_DRAWS,
    MeasureConfig,
    Sample,
    Setting,
    Theory,
    _dtype,
    q_text,
)


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
    #: per traced size factor: the init recognised from those moments (:mod:`advdim.initlaw`)
    inits: dict[int, InitGuess] = field(default_factory=dict)
    same_weights: list[int] = field(default_factory=list)  # factors at which every draw had the same weights
    #: per untraced size factor: the token-readout network read in its graph, or why it is none
    tokens: dict[int, TokenReadout | list[str]] = field(default_factory=dict)


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
        if isinstance(traced, Untraceable):
            info.tokens[k] = read_tokens(model, shape)
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
        if stats is not None:
            info.inits[k] = stats.result() if isinstance(stats, InitStats) else InitGuess(None, f"unknown: {stats}")
        if len(prints) > 1 and all(p == prints[0] for p in prints):
            info.same_weights.append(k)
        info.factors.append(k)
    return info


def theory_per_size(name: str, cfg: MeasureConfig, factors: Sequence[int], info: _PerSize) -> Theory:
    """The prediction for the traced specs at each size with the recognised init, or why there is none."""
    C, H, W = cfg.input_shape
    inits = info.inits
    init = inits.get(factors[0]) if factors else None
    notes = []
    if init is not None and init.base is not None:
        for k in factors[1:]:
            if k in inits and differs(init, inits[k]):
                notes.append(f"at d = {cfg.d_at(k)} the weights look different from the base size's {init.summary}: "
                             f"{inits[k].reason}; the prediction assumes {init.summary} at every size")

    def without(reason: str, pred: Prediction | None = None) -> Theory:
        return Theory(dict(info.traces), init, pred, reason, None, tuple(notes))

    bad = next(((k, t) for k, t in info.traces.items() if isinstance(t, Untraceable)), None)
    if len(factors) < 2:
        return without("one input size only: no slope")
    if bad is not None:
        reason = f"the module is outside the theory's specs (at d = {cfg.d_at(bad[0])}: {bad[1].reason})"
        readouts = [info.tokens.get(k) for k in factors]
        if all(isinstance(r, TokenReadout) for r in readouts) and not info.same_weights:
            first = cast(TokenReadout, readouts[0])
            if len({cast(TokenReadout, r).kind for r in readouts}) == 1:
                law = TokenLaw(first.kind, tuple(cast(TokenReadout, r).tokens for r in readouts))
                return Theory(dict(info.traces), init, None, reason, None,
                              (*notes, f"token readout: {first.summary()} at d = {cfg.d_at(factors[0])}"), law)
        return without(reason)
    if info.same_weights:
        return without(f"the factory returned the same weights for every draw at d = {cfg.d_at(info.same_weights[0])}"
                       " (does it seed its own generator?): the law is an average over initialisations; let it draw "
                       "from torch's global generator, which measure seeds with --seed + draw")
    if init is None or init.base is None:
        return without("the initialisation gives no law ("
                       + (init.no_law or init.reason if init is not None else "not examined") + ")")
    if H != W:
        return without(f"the theory's input sizes are square (C x s x s), this input is {H}x{W}")
    try:  # the recognised per-layer variances as scale layers of each size's spec (none for one scheme)
        specs = {H * k: spec_at_size(t.spec, init, inits.get(k)) for k, t in info.traces.items()
                 if isinstance(t, Traced)}
    except AdvdimError as e:
        return without(f"no law for the initialisation {init.summary}: {e}")

    def at(size: int, channels: int) -> Any:
        if size not in specs:
            raise SpecError(f"the module was traced at sides {sorted(specs)} only, not at {size}")
        return specs[size]

    target = ArchTarget(TargetKind.USER, f"{name} (traced)", builder=at)
    from advdim.theory import predict

    try:
        pred = predict(target, sizes=sorted(specs), channels=C, init=init.base, symmetry=False)
    except AdvdimError as e:
        return without(f"no prediction: {e}")
    if not pred.has_law:
        return without(pred.reasons.get("law", "the theory gives no law for this network"), pred)
    return Theory(dict(info.traces), init, pred, None, target, (*notes, *init.notes()))


def _law_init(theory: Theory) -> Any:
    from advdim.build import Init

    assert theory.init is not None and theory.init.base is not None
    return Init.parse(theory.init.base)


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
    # a model that fails on the measurement's inputs: one line before the sweep starts (the base size's
    # first cell; the prepass has already run draw 0 at every size)
    run_factory_cell(plan.config(0, info.factors[0]))
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
    base = info.inits.get(info.factors[0])
    return Sample(Setting.PER_SIZE, list(info.factors), [cfg.d_at(k) for k in info.factors], values, sq, changed,
                  cfg.inputs, attack()[1], notes, None if base is None else base.law_text())


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
                           fixed=True, init=init, law_init=init, no_law_reason=theory.reason,
                           token_law=theory.token_law)
    return out
