"""Per-unit records -> one :class:`~advdim.simulate._result.FamilyResult`: the theory's law of each
unit (:func:`predict_topology`), whether its q = inf law is judged, and the one analysis of every
study (:func:`analyse`), whatever drew the units (random topologies, weight draws of a spec, weight
draws of a user's module factory).  The statistics are :mod:`advdim.stats`'.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from advdim.simulate._engine import Q_KEYS
from advdim.simulate._result import APPROX_SLOPE_BOUND, FamilyResult, QResult, margin_slope_test
from advdim.theory._best import Level

from advdim.arch import Dense, Family, Target, resolve_target
from advdim.build import Init
from advdim.errors import SpecError
from advdim.gradients import Target as GradTarget
from advdim.stats import (
    ALPHA,
    WidthLimit,
    fit_slope,
    fit_width_limit,
    ols_slope,
    power,
    ratio_fit,
    ratio_units,
)

# Theory adapter (advdim.theory.predict, see the contract in docs/simulate.md)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyLaw:
    """The theory's finite-d prediction for one topology (``None`` entries: no prediction)."""

    norms: dict[str, tuple[float, ...] | None]  # q -> E||d_x f_k||_q per size
    sq: tuple[float, ...] | None  # E||d_x f_k||_2^2 per size
    slopes: dict[str, float | None]
    sq_exact: str | None = None  # why the path sum is only approximate (H1 fails), None when it is exact
    #: the level of each predicted quantity (q key, and "sq" for E||d_x f_k||_2^2): the words of
    #: ``advdim.theory._best.Level`` (exact / wide-limit / approximate / extreme-value fallback)
    levels: dict[str, str] = field(default_factory=dict)


#: the levels of the laws, best first: the words of ``advdim.theory._best.Level``
LEVELS = tuple(level.value for level in Level)


def worst_level(words: Sequence[str | None]) -> str | None:
    """The least trusted of several levels (a study over many topologies is as trusted as its worst law).

    >>> worst_level(["exact", "approximate", "wide-limit"])
    'approximate'
    """
    known = [w for w in words if w is not None]
    return max(known, key=LEVELS.index) if known else None


def _levels(pred: Any, sizes: tuple[int, ...], keys: tuple[str, ...], target: GradTarget, approx: str | None,
            wide_used: bool) -> dict[str, str]:
    """The level of each quantity of a :class:`TopologyLaw` (the rules of ``advdim theory``'s table,
    ``advdim.theory._best.norm_law``), from the structure alone: no law is computed twice."""
    from advdim.theory import _maxnorm, _postact

    # an average pool after the first conv: the path sum drops cross terms the wide limit keeps (theory's H1 note)
    pooled = any(pred.pooling_correction_applies(s) for s in sizes)
    # ReLUs after residual adds: the post-activation chain law, exact as the widths grow
    chains = approx is not None and all(_postact.applies(pred.spec_at(s)) for s in sizes)
    approx_any = (approx is not None and not chains) or pooled
    sq = "wide-limit" if wide_used or (chains and not pooled) else ("approximate" if approx_any else "exact")
    out = {"sq": sq}
    for key in keys:
        if target is GradTarget.LOSS:  # the softmax factor under the predicted logit law: about 1% (docs/theory.md)
            out[key] = "approximate"
        elif key == "inf" and not all(_maxnorm.first_weighted_is_dense(pred.spec_at(s)) for s in sizes):
            applies = all(_maxnorm.model_applies(pred.spec_at(s), pred.init) for s in sizes)
            out[key] = "approximate" if applies else "extreme-value fallback"
        else:  # Gaussian coordinates with the path-sum variances: exact as the widths grow
            out[key] = "approximate" if approx_any else "wide-limit"
    return out


def predict_topology(fam: Family | Target, sizes: Sequence[int], channels: int,
                     init: Init = Init.HE, target: GradTarget = GradTarget.LOGIT,
                     inf_rel_se: float | None = None, wide: bool = False, keys: Sequence[str] = Q_KEYS,
                     prediction: Any = None, inf_draws: int | None = None) -> TopologyLaw | None:
    """Ask ``advdim.theory.predict``; ``None`` when the theory layer is not available.

    ``target`` LOSS predicts ``E||d_x L||_q`` (the softmax term under the predicted logit law,
    ``Prediction.expected_loss_norm``); LOGIT predicts ``E||d_x f_k||_q``.  ``wide``: where average
    pooling makes the path sum of ``E||d_x f_k||_2^2`` approximate, predict it by the exact wide-limit
    law instead (``Prediction.wide_grad_sq_norm``, docs/theory.md "Average pooling beyond the path
    sum"; seconds per size, so a fixed network gets it, not each of hundreds of random topologies).
    ``inf_rel_se`` / ``inf_draws``: the precision of the q = inf Monte Carlo on conv nets (a fixed
    network: None and None, 0.5%; a random topology: :data:`RANDOM_INF_DRAWS` draws).

    The laws are cached per topology and arguments (a ``prediction`` given is used as is): a study's
    repeated topologies (122 distinct among 200 random ``strided`` ones) are predicted once.
    """
    if prediction is not None:
        return _topology_law(fam, tuple(sizes), channels, init, target, inf_rel_se, wide, tuple(keys), prediction,
                             inf_draws)
    return _cached_topology_law(fam, tuple(int(s) for s in sizes), channels, init, target, inf_rel_se, wide,
                                tuple(keys), None, inf_draws)


def _topology_law(fam: Family | Target, sizes: tuple[int, ...], channels: int, init: Init, target: GradTarget,
                  inf_rel_se: float | None, wide: bool, keys: tuple[str, ...], prediction: Any,
                  inf_draws: int | None) -> TopologyLaw | None:
    try:
        from advdim.theory import predict
    except ImportError:
        return None
    pred = prediction if prediction is not None else predict(
        fam, sizes=tuple(sizes), channels=channels, init=init.value, symmetry=False, inf_rel_se=inf_rel_se,
        inf_draws=inf_draws)
    if not pred.has_law:
        return TopologyLaw({q: None for q in keys}, None, {q: None for q in keys})
    norms: dict[str, tuple[float, ...] | None] = {}
    for key in keys:
        q = math.inf if key == "inf" else float(key)
        vals = [pred.expected_loss_norm(q, s) if target is GradTarget.LOSS else pred.expected_norm(q, s)
                for s in sizes]
        norms[key] = None if any(v is None for v in vals) else tuple(float(v) for v in vals if v is not None)
    try:
        sq: tuple[float, ...] | None = tuple(float(pred.grad_sq_norm(s)) for s in sizes)
    except Exception:  # the theory refuses (a hypothesis fails): no prefactor prediction
        sq = None
    approx = pred.approximate  # why the path sum is only approximate (None: exact given its hypotheses)
    path_approx, wide_used = approx, False
    if wide and sq is not None and approx is not None and target is GradTarget.LOGIT:
        try:
            if all(pred.pooling_correction_applies(s) for s in sizes):
                sq, approx = tuple(float(pred.wide_grad_sq_norm(s)) for s in sizes), None
                wide_used = True
        except Exception:  # noqa: BLE001 - the wide law refuses (memory, a layer it has no law for): keep the path sum
            pass
    log_d = np.log([float(channels * s * s) for s in sizes])
    if target is GradTarget.LOSS or prediction is None:  # the slopes of the norms above (LOSS: the softmax factor
        # may vary with d; LOGIT: Prediction.slope_q of the same norms, without computing them twice)
        slopes = {k: None if v is None or len(sizes) < 2 else float(ols_slope(log_d, np.log(np.array(v))))
                  for k, v in norms.items()}
    else:
        slopes = {k: pred.predicted_slope[k] if k in pred.predicted_slope else pred.slope_q(k) for k in keys}
    return TopologyLaw(norms, sq, slopes, approx, _levels(pred, sizes, keys, target, path_approx, wide_used))


_cached_topology_law = functools.lru_cache(maxsize=4096)(_topology_law)

#: draws of the q = inf Monte Carlo per random topology and size (``advdim.theory._maxnorm.UNIT_DRAWS``):
#: no pilot, the se stated after; the study averages the predictions of its topologies, so the error of
#: the mean prediction is about the per-topology error over sqrt(nets).  A member of a built-in family at
#: the default sizes is read from the theory's table instead (``_maxnorm.tabulated``, 2% per member)
RANDOM_INF_DRAWS = 32


def iid_gaussian_coordinates(target: str | Family | Target, size: int | None = None, channels: int = 3) -> bool:
    """Whether the input-gradient coordinates are i.i.d. Gaussian given the rest of the net.

    True when the first weighted layer is dense: ``g = W1^T v`` with i.i.d. Gaussian ``W1`` is,
    given ``v``, a vector of i.i.d. ``N(0, s^2 ||v||^2)`` coordinates, so the theory's extreme-value
    prediction of ``E||g||_inf`` is exact in distribution.  For a first conv layer, the ``d``
    coordinates share ``C k^2`` weights and each has its own random local variance: their maximum
    is not that of independent Gaussians, and the finite-d q = inf slope is only approximate.
    """
    t = resolve_target(target) if not isinstance(target, Target) else target
    rule: Family | Target = t.member if t.random and t.member is not None else t
    spec = rule.spec(size if size is not None else rule.valid_sizes(range(1, 257))[0], t.channels or channels)
    first = next(layer for layer in spec.layers if layer.has_weights)
    return isinstance(first, Dense)


def inf_prediction_exact(target: str | Family | Target, sizes: Sequence[int], channels: int = 3,
                         init: str = "he") -> bool:
    """Whether the theory's q = inf prediction is exact enough to judge (``_maxnorm.inf_norm_exact``
    at every size: a dense first layer, or a conv net inside the envelope where the path-sum model's
    own law was checked to 3%; docs/theory.md, "The q = inf prediction for conv nets")."""
    try:
        from advdim.theory._maxnorm import inf_norm_exact
    except ImportError:
        return iid_gaussian_coordinates(target, sizes[0], channels)
    t = resolve_target(target) if not isinstance(target, Target) else target
    rule: Family | Target = t.member if t.random and t.member is not None else t
    try:
        return all(inf_norm_exact(rule.spec(s, t.channels or channels), init) for s in sizes)
    except SpecError:
        return False


def any_law(laws: Sequence[TopologyLaw | None]) -> bool | None:
    """None when the theory layer is not available; else whether any unit has a law."""
    if not all(law is not None for law in laws):
        return None
    return any(law is not None and any(v is not None for v in law.norms.values()) for law in laws)


@dataclass(frozen=True)
class Units:
    """How the independent units of a study were drawn (the budget line of its verdicts)."""

    nets: int
    draws: int
    inputs: int
    channels: int
    seed: int


def analyse(name: str, sizes: Sequence[int], d: np.ndarray, values: dict[str, np.ndarray], sq: np.ndarray,
            laws: Sequence[TopologyLaw | None], units: Units, target: GradTarget, *, index: np.ndarray | None = None,
            iid_inf: bool = True, plant_exponent: float = 0.0, exact_shortcuts: bool = True,
            topologies: tuple[str, ...] = (), data: str | None = None, fixed: bool = True, init: str = "he",
            law_init: str = "he", no_law_reason: str | None = None, token_law: Any = None) -> FamilyResult:
    """Per-unit records -> slope fits, width limits, prefactor ratio: one :class:`FamilyResult`.

    The one analysis of ``simulate`` and ``measure`` (``advdim.stats`` does the statistics).

    Args:
        d: input dimensions ``(S,)``; ``values``: q key -> ``(U, S)`` per-unit means of ``||g||_q``;
            ``sq``: ``(U, S)`` per-unit means of ``||g||_2^2``.
        laws: one :class:`TopologyLaw` per unit (``None`` entries: the theory layer is not available).
        index: the finite-width index of each unit (:func:`width_index`; ``None``: all 0).
        plant_exponent: multiply every measured norm by ``d**plant_exponent`` (a planted error).
        token_law: a :class:`advdim.theory._tokens.TokenLaw` (a token-readout network): the rows without
            a prediction are judged against its exponent instead of the paper's.
    """
    nets = units.nets
    seed = units.seed
    sizes_t = tuple(int(s) for s in sizes)
    plant = d**plant_exponent
    values = {k: np.asarray(v, dtype=np.float64) * plant for k, v in values.items()}
    sq = np.asarray(sq, dtype=np.float64) * plant**2
    tgt = target
    theory_available = all(law is not None for law in laws)
    has_law = any_law(laws)
    index = np.zeros(nets) if index is None else index
    sq_pred: tuple[float, ...] | None = None
    ratio = ratio_se = None
    ratio_n: float | None = None
    approx: str | None = None
    if theory_available and tgt is GradTarget.LOGIT:
        smask = np.array([law is not None and law.sq is not None for law in laws])
        if smask.sum() >= 2:
            p = np.array([law.sq for law, m in zip(laws, smask) if m and law is not None], dtype=np.float64)
            sq_pred = tuple(map(float, p.mean(axis=0)))
            ratio, ratio_se = ratio_fit(sq[smask], p, seed=seed)
            ratio_n = ratio_units(sq[smask])
            approx = next((law.sq_exact for law, m in zip(laws, smask) if m and law is not None and law.sq_exact),
                          None)
    # an approximate path sum (H1 fails) is judged with its documented slope error: the rule of
    # FamilyResult._margin, read from the same ``approx``
    margin = APPROX_SLOPE_BOUND if approx is not None else 0.0
    qres: dict[str, QResult] = {}
    for i, key in enumerate(values):
        limit: WidthLimit | None = None
        fit = fit_slope(d, values[key], seed=seed + i)
        pred_slope: float | None = None
        pred_means: tuple[float, ...] | None = None
        tol: float | None = None
        passed: bool | None = None
        used = nets
        if theory_available:
            mask = np.array([law is not None and law.norms.get(key) is not None for law in laws])
            used = int(mask.sum())
            if used >= 2:
                per_topo = np.array([law.norms[key] for law, m in zip(laws, mask) if m and law is not None],
                                    dtype=np.float64)
                pm = per_topo.mean(axis=0)
                pred_slope = float(ols_slope(np.log(d), np.log(pm)))
                pred_means = tuple(map(float, pm))
                if used < nets:
                    fit = fit_slope(d, values[key][mask], seed=seed + i)
                passed, tol = margin_slope_test(fit.slope, pred_slope, fit.se, ALPHA, fit.units, margin)
                if key == "inf" and not iid_inf:
                    passed = None  # reported, not judged: see iid_gaussian_coordinates
                else:
                    limit = fit_width_limit(d, values[key][mask], per_topo, index[mask], seed=seed + i)
                    if limit is not None:
                        passed, tol = margin_slope_test(pred_slope + limit.deviation, pred_slope, limit.se, ALPHA,
                                                        used, margin)
            else:
                used = nets
        se, n_test = (fit.se, fit.units) if limit is None else (limit.se, float(used))
        qres[key] = QResult(key, fit.slope, fit.se, fit.ci, pred_slope, tol, passed, power(se, n=n_test), fit.means,
                            fit.lo, fit.hi, pred_means, fit.per_topology, used, limit, fit.units)

    levels = {k: w for k in ("sq", *values) if (w := worst_level([law.levels.get(k) for law in laws
                                                                   if law is not None])) is not None}
    return FamilyResult(
        name, sizes_t, tuple(int(x) for x in d), units.channels, nets, units.draws, units.inputs, seed, tgt.value,
        exact_shortcuts, plant_exponent, has_law, qres, tuple(map(float, sq.mean(axis=0))), sq_pred, ratio, ratio_se,
        approx, {k: values[k].tolist() for k in values}, topologies, data, iid_inf, fixed, init, law_init, ratio_n,
        no_law_reason, levels, token_law)
