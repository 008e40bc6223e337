"""A family study: random topologies x sizes -> sweep cells -> slope fits -> verdicts.

A topology (a random member of a family, e.g. ``strided(channels=8,kernel=5,final=2,...)``) is
drawn once and instantiated at every input side ``s`` (``d = C s^2``), so slopes are measured
within topologies.  One *cell* is one topology at one size: ``draws`` independent weight draws
of it, each on ``inputs`` Gaussian inputs, evaluated in one batched engine call.  Cells are run
by :func:`advdim.sweep.run_sweep` (in-process, local processes or Dask) and stored one by one.

    >>> res = study("dense", sizes=(4, 8), channels=1, nets=3, draws=2, inputs=2, seed=0,
    ...             progress=False, with_theory=False)
    >>> res.q["2"].measured_slope == res.q["2"].measured_slope
    True
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from advdim.simulate._engine import Q_KEYS, batch_statistics, memory_entries, sample_norms, shortcut_applies

from advdim.arch import Conv, Dense, Family, Spec, Target, family, resolve_target, sample_family
from advdim.build import Init
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target as GradTarget
from advdim.stats import (
    ALPHA,
    CRITICAL_NOTE,
    DELTA,
    INCONSISTENT,
    MIN_RATIO_UNITS,
    PREFACTOR_RESOLUTION,
    SE_FOR_POWER,
    SLOPE_RESOLUTION,
    TwoSided,
    WidthLimit,
    critical,
    fit_slope,
    fit_width_limit,
    ols_slope,
    paper_law_consistency,
    power,
    ratio_fit,
    ratio_test,
    ratio_units,
    slope_test,
)
from advdim.store import RunStore
from advdim.verdict import MIN_POWER, Outcome, Verdict, count, power_note

KIND = "simulate.cell"
REFERENCES = {"dense": "Theorem 4", "strided": "Theorem 5 / Corollary 6", "gap": "Theorem 5 / Corollary 6",
              "avgpool": "Appendix B", "maxpool": "Section 3.2 (no law: max pooling breaks H1-H3)"}


# --------------------------------------------------------------------------------------------
# Topologies and cells
# --------------------------------------------------------------------------------------------


def _fam_code(name: str) -> int:
    return zlib.crc32(name.encode())


def topologies(target: str | Target | Family | Spec, n: int, seed: int, sizes: Sequence[int],
               channels: int = 3) -> list[Family | Target]:
    """``n`` units of a study: random members of a built-in family valid at every size (seeded,
    reproducible), or ``n`` times a fixed target (a member, spec text, a user family), whose units
    then differ only by their weight draws.

    Topology ``t`` depends only on ``(seed, name, t)``, so a larger ``n`` extends a smaller one.
    """
    resolved = resolve_target(target)
    if not resolved.random:
        resolved.check_sizes(sizes, channels)
        return [resolved] * n
    name = resolved.text
    out: list[Family | Target] = []
    for t in range(n):
        rng = np.random.default_rng([seed, _fam_code(name), t])
        for _ in range(200):
            fam = sample_family(name, rng)
            try:
                for s in sizes:
                    fam.spec(int(s), channels)
            except SpecError:
                continue
            out.append(fam)
            break
        else:
            raise AdvdimError(f"family {name}: no random member is valid at every size {list(sizes)}")
    return out


def width_index(fam: Family | Target, sizes: Sequence[int], channels: int) -> float:
    """How fast the sum of ``1/width`` over the weighted layers grows with ``log d`` (0: it does not).

    ``(sum_l 1/n_l at the largest size - at the smallest) / log(d_max / d_min)``, with ``n_l`` the
    output channels of a conv layer or the units of a dense one.  At finite width the spread of
    the path sum grows with each layer by a factor of order ``1/n_l``; in families whose depth grows
    with ``d`` (one stride-2 conv per doubling of the side) this bends ``log E||d_x f||_q`` away from
    the Gaussian law by an amount proportional to this index (``docs/simulate.md``).  Dense nets
    and any net of fixed depth have index 0.

    >>> round(width_index(family("strided", channels=8), (8, 64), 3), 4)
    0.0902
    """
    def inverse_widths(size: int) -> float:
        spec = fam.spec(int(size), channels)
        return sum(1.0 / layer.out_channels if isinstance(layer, Conv) else 1.0 / layer.out_features
                   for layer in spec.layers if isinstance(layer, (Conv, Dense)))

    lo, hi = min(sizes), max(sizes)
    return (inverse_widths(hi) - inverse_widths(lo)) / math.log(hi**2 / lo**2)


def cell_config(fam: Family | Target, t: int, size: int, channels: int, draws: int, inputs: int, seed: int,
                target: GradTarget, exact_shortcuts: bool, dtype: str = "float32", device: str = "cpu",
                data: str | None = None, data_dir: str | None = None, init: Init = Init.HE) -> dict[str, Any]:
    """One cell's configuration (its store key).  A random topology is named by its family and
    parameters; a fixed target by its canonical text and its concrete spec at this size, so that a
    worker needs neither the user's code nor the family registry."""
    if isinstance(fam, Target):
        cfg: dict[str, Any] = {"arch": fam.text, "spec": fam.spec(size, channels).to_json(), "topology": t,
                               "size": size, "channels": channels, "draws": draws, "inputs": inputs, "seed": seed,
                               "target": target.value, "shortcuts": exact_shortcuts, "dtype": dtype, "device": device}
    else:
        cfg = {"family": fam.name, "params": fam.to_json(), "topology": t, "size": size, "channels": channels,
               "draws": draws, "inputs": inputs, "seed": seed, "target": target.value,
               "shortcuts": exact_shortcuts, "dtype": dtype, "device": device}
    if init is not Init.HE:  # He cells keep their old keys (and stored results)
        cfg["init"] = init.value
    if data is not None:  # Gaussian cells keep their old keys (and stored results)
        cfg.update({"data": data, "data_dir": data_dir})
    return cfg


#: real-image inputs: each cell draws its inputs (with replacement) from the first IMAGE_POOL test images
IMAGE_POOL = 1000


@functools.lru_cache(maxsize=16)
def image_pool(data: str, data_dir: str | None, size: int) -> Any:
    """The first :data:`IMAGE_POOL` test images of ``data``, zero-padded to a multiple of 32, resampled
    to ``size`` (bilinear down, pixel copy up) and normalised: a float32 ``(M, C, size, size)`` tensor.

    Cached per process (sweep workers load a dataset once, not once per cell).
    """
    ds = _dataset(data, data_dir)
    return ds.batch(ds.x_test[:IMAGE_POOL], size=size, pad=True)


@functools.lru_cache(maxsize=4)
def _dataset(data: str, data_dir: str | None) -> Any:
    from advdim.empirical._data import load

    return load(data, data_dir)


def run_cell(config: dict[str, Any]) -> dict[str, Any]:
    """Sweep cell function: evaluate one topology at one size (module level: picklable)."""
    import torch

    from advdim.alloc import keep_freed_memory

    keep_freed_memory()  # also on Dask workers, which do not run the advdim command

    if "spec" in config:  # a fixed target: its concrete spec at this size
        spec = Spec.from_json(config["spec"])
        code = _fam_code(str(config["arch"]))
    else:
        params = {k: v for k, v in config["params"].items() if k != "family"}
        fam = family(config["family"], **params)
        spec = fam.spec(int(config["size"]), int(config["channels"]))
        code = _fam_code(fam.name)
    ss = np.random.SeedSequence([int(config["seed"]), code, int(config["topology"]), int(config["size"])])
    images = None
    if config.get("data") is not None:
        images = image_pool(str(config["data"]), config.get("data_dir"), int(config["size"]))
    norms = sample_norms(spec, int(config["draws"]), int(config["inputs"]), ss, GradTarget(config["target"]),
                         exact_shortcuts=bool(config["shortcuts"]), device=config["device"],
                         dtype=getattr(torch, config["dtype"]), images=images,
                         init=Init(config.get("init", "he")))
    out: dict[str, Any] = {"d": spec.d, "n": int(norms["2"].size)}  # no timings: results are reproducible
    for key, v in norms.items():
        out[key] = float(v.mean())
        out[f"{key}_per_draw"] = [float(x) for x in v.mean(axis=1)]
    return out


# --------------------------------------------------------------------------------------------
# Memory, estimated before any cell runs
# --------------------------------------------------------------------------------------------

#: peak of one batched forward + backward pass over the counted activations (every layer's output
#: and each padded copy, ``draws x inputs`` samples): autograd keeps them for the backward pass,
#: which adds gradients of the same sizes.  Measured peaks of cells of every family at sides
#: 128-256 on CPU: 1.2-3.3 times the counted activations, 0.24-0.59 of this estimate
ACTIVATION_FACTOR = 4


def cell_bytes(spec: Spec, draws: int, inputs: int, exact_shortcuts: bool = True, dtype: str = "float32",
               images: bool = False) -> int:
    """Upper estimate, in bytes, of the peak memory of one cell (:func:`run_cell`) of ``spec``.

    With ``n = draws * inputs`` samples of ``d`` coordinates and ``b`` bytes per value:

    - exact dense shortcut on Gaussian inputs: ``4 n d b`` (one Gaussian direction per sample and
      the temporaries of its norms; measured: 2 n d b);
    - exact dense shortcut on images: ``n d (8 + 8 b)`` (the float64 draw from the pool, the input,
      the projected noise and the gradient);
    - otherwise ``ACTIVATION_FACTOR n b A + 2 draws b P + 4 n d b`` with ``A`` the activation
      entries of one sample (input, every layer's output, every circularly or reflect padded copy;
      see :func:`advdim.simulate._engine.memory_entries`) and ``P`` the weights of one net, drawn
      and then scaled (``+ 8 n d`` for the image draw).

    >>> from advdim.arch import family
    >>> cell_bytes(family("dense", widths=(16,)).spec(1000, channels=3), draws=2, inputs=2) / 1e9
    0.192
    """
    b = 8 if dtype == "float64" else 2 if dtype in ("float16", "bfloat16") else 4
    n, d = draws * inputs, spec.d
    if exact_shortcuts and shortcut_applies(spec):
        return n * d * (8 + 8 * b) if images else 4 * n * d * b
    acts, weights = memory_entries(spec)  # residual branches and attention scores included
    return ACTIVATION_FACTOR * n * b * acts + 2 * draws * b * weights + 4 * n * d * b + (8 * n * d if images else 0)


def check_memory(topos: Sequence[Family | Target], sizes: Sequence[int], channels: int, draws: int, inputs: int,
                 exact_shortcuts: bool = True, dtype: str = "float32", device: str = "cpu",
                 data: str | None = None, workers: int = 0, scheduler: str | None = None,
                 with_theory: bool = False) -> None:
    """Refuse, before any cell runs, a study whose largest cells would not fit in memory.

    The need is the largest :func:`cell_bytes` over the topologies at the largest size, times the
    cells that run at once (``min(workers, topologies)`` with local workers), plus on CPU the
    resampled image pools every process caches (:func:`pool_bytes`).  Cells sent to a Dask
    ``scheduler`` run on its workers, whose memory is not known here: not checked.  ``with_theory``
    also checks the theory's exact path sums of every topology (computed in this process, whatever
    the executor).
    """
    top = max(sizes)
    if scheduler is None and topos:
        _check_cells(topos, sizes, channels, draws, inputs, exact_shortcuts, dtype, device, data, workers)
    if with_theory:
        try:
            from advdim.theory._law import check_cost
        except ImportError:  # no theory layer: no prediction to compute
            return
        for fam in topos:
            check_cost([fam.spec(int(top), channels)], [top], symmetry=False)


def _check_cells(topos: Sequence[Family | Target], sizes: Sequence[int], channels: int, draws: int, inputs: int,
                 exact_shortcuts: bool, dtype: str, device: str, data: str | None, workers: int) -> None:
    from advdim.cli_args import check_fits

    top = max(sizes)
    per_cell = max(cell_bytes(fam.spec(int(top), channels), draws, inputs, exact_shortcuts, dtype, data is not None)
                   for fam in topos)
    at_once = min(workers, len(topos)) if workers > 0 else 1
    need = per_cell * at_once
    if data is not None and device == "cpu":
        need += (1 + workers) * pool_bytes(sizes, channels)
    what = f"simulate {topos[0].name} at size {top} ({draws} draws x {inputs} inputs per cell"
    what += f", {at_once} cells at once)" if at_once > 1 else ")"
    check_fits(need, what, device)


def pool_bytes(sizes: Sequence[int], channels: int) -> int:
    """Bytes of the resampled image pools of :func:`image_pool` at every size (float32, cached per process)."""
    return 4 * IMAGE_POOL * channels * sum(int(s) ** 2 for s in sizes)


# --------------------------------------------------------------------------------------------
# Theory adapter (advdim.theory.predict, see the contract in docs/simulate.md)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyLaw:
    """The theory's finite-d prediction for one topology (``None`` entries: no prediction)."""

    norms: dict[str, tuple[float, ...] | None]  # q -> E||d_x f_k||_q per size
    sq: tuple[float, ...] | None  # E||d_x f_k||_2^2 per size
    slopes: dict[str, float | None]
    sq_exact: str | None = None  # why the path sum is only approximate (H1 fails), None when it is exact


def predict_topology(fam: Family | Target, sizes: Sequence[int], channels: int,
                     init: Init = Init.HE, target: GradTarget = GradTarget.LOGIT,
                     inf_rel_se: float | None = None, wide: bool = False, keys: Sequence[str] = Q_KEYS,
                     prediction: Any = None) -> TopologyLaw | None:
    """Ask ``advdim.theory.predict``; ``None`` when the theory layer is not available.

    ``target`` LOSS predicts ``E||d_x L||_q`` (the softmax term under the predicted logit law,
    ``Prediction.expected_loss_norm``); LOGIT predicts ``E||d_x f_k||_q``.  ``wide``: where average
    pooling makes the path sum of ``E||d_x f_k||_2^2`` approximate, predict it by the exact wide-limit
    law instead (``Prediction.wide_grad_sq_norm``, docs/theory.md "Average pooling beyond the path
    sum"; seconds per size, so a fixed network gets it, not each of hundreds of random topologies).
    """
    try:
        from advdim.theory import predict
    except ImportError:
        return None
    pred = prediction if prediction is not None else predict(
        fam, sizes=tuple(sizes), channels=channels, init=init.value, symmetry=False, inf_rel_se=inf_rel_se)
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
    if wide and sq is not None and approx is not None and target is GradTarget.LOGIT:
        try:
            if all(pred.pooling_correction_applies(s) for s in sizes):
                sq, approx = tuple(float(pred.wide_grad_sq_norm(s)) for s in sizes), None
        except Exception:  # noqa: BLE001 - the wide law refuses (memory, a layer it has no law for): keep the path sum
            pass
    slopes = {k: pred.predicted_slope[k] if k in pred.predicted_slope else pred.slope_q(k) for k in keys}
    if target is GradTarget.LOSS:  # the softmax factor may vary with d: the slope of the loss norms themselves
        log_d = np.log([float(channels * s * s) for s in sizes])
        slopes = {k: None if v is None or len(sizes) < 2 else float(ols_slope(log_d, np.log(np.array(v))))
                  for k, v in norms.items()}
    return TopologyLaw(norms, sq, slopes, approx)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QResult:
    """Measured vs predicted slope of ``log E||d_x f||_q`` against ``log d`` for one q."""

    q: str
    measured_slope: float
    se: float
    ci: tuple[float, float]
    predicted_slope: float | None
    tol: float | None
    passed: bool | None
    power: float
    means: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    predicted_means: tuple[float, ...] | None
    per_topology: tuple[float, ...]
    topologies_used: int
    limit: WidthLimit | None = None
    units: float = 0.0  # effective independent units of the fit (advdim.stats.effective_units)

    @property
    def test_units(self) -> float:
        """The units of this row's test: the effective units of the fit (topologies for a width limit)."""
        return float(self.topologies_used) if self.limit is not None else self.units

    @property
    def outcome(self) -> Outcome:
        """What the judged row of this q says: fail, pass (power >= ``MIN_POWER`` at +-``DELTA``),
        inconclusive, or n/a (not judged); the same rule as :attr:`advdim.verdict.Verdict.outcome`."""
        if self.passed is None:
            return Outcome.REPORTED
        if not self.passed:
            return Outcome.FAIL
        return Outcome.PASS if self.power >= MIN_POWER else Outcome.INCONCLUSIVE

    @property
    def limit_slope(self) -> float | None:
        """The measured slope extrapolated to infinite width (``None`` without an extrapolation)."""
        if self.limit is None or self.predicted_slope is None:
            return None
        return self.predicted_slope + self.limit.deviation

    def to_json(self) -> dict[str, Any]:
        """The issue's keys; ``pass`` judges the infinite-width limit when one is fitted (``judged``);
        ``outcome`` is what the row says (``pass`` / ``fail`` / ``inconclusive`` / ``n/a``) and ``power``
        the test's power against a slope off by ``DELTA``."""
        limit = None
        if self.limit is not None and self.predicted_slope is not None:
            p, lim = self.predicted_slope, self.limit
            limit = {"slope": p + lim.deviation, "ci": [p + lim.ci[0], p + lim.ci[1]], "se": lim.se,
                     "finite_width_coefficient": lim.coefficient, "coefficient_se": lim.coefficient_se}
        return {"predicted_slope": self.predicted_slope, "measured_slope": self.measured_slope,
                "ci": list(self.ci), "pass": self.passed, "outcome": self.outcome.value,
                "power": None if self.passed is None else self.power, "width_limit": limit,
                "judged": "width_limit" if limit is not None else "sampled_widths"}


@dataclass(frozen=True)
class FamilyResult:
    """The outcome of :func:`study` for one family (frozen record; ``to_json`` for the CLI)."""

    family: str
    sizes: tuple[int, ...]
    d: tuple[int, ...]
    channels: int
    nets: int
    draws: int
    inputs: int
    seed: int
    target: str
    exact_shortcuts: bool
    plant_exponent: float
    has_law: bool | None  # None: the theory layer is not available
    q: dict[str, QResult]
    sq_measured: tuple[float, ...]
    sq_predicted: tuple[float, ...] | None
    prefactor_ratio: float | None
    prefactor_se: float | None
    prefactor_approximate: str | None  # the reason when the path sum is only approximate (not judged)
    values: dict[str, list[list[float]]] = field(repr=False)  # q -> per topology, per size
    topologies: tuple[str, ...] = field(repr=False, default=())
    data: str | None = None  # the dataset of real-image inputs; None: Gaussian inputs
    iid_inf: bool = True  # the q = inf prediction is judged (see inf_prediction_exact)
    fixed: bool = False  # a fixed target: the units are weight draws of one network, not topologies
    init: str = "he"  # the init of the networks drawn
    law_init: str = "he"  # the init the predicted law assumes
    prefactor_units: float | None = None  # effective units of the prefactor ratio
    no_law_reason: str | None = None  # why there is no prediction (None: the theory's own words)

    @property
    def reference(self) -> str:
        return REFERENCES.get(self.family, "Theorem 5")

    def to_json(self) -> dict[str, Any]:
        """Per q the slope rows (``QResult.to_json``), the prefactor row (``None`` without a prediction)
        and ``outcomes``: how many of :meth:`verdicts` say pass, fail, inconclusive and n/a."""
        pre = self.prefactor_verdict()
        return {"family": self.family, "sizes": list(self.sizes), "nets": self.nets,
                "q": {k: v.to_json() for k, v in self.q.items()},
                "prefactor": None if pre is None else {"ratio": pre.measured, "se": self.prefactor_se,
                                                       "pass": pre.passed, "outcome": pre.outcome.value,
                                                       "power": pre.power},
                "outcomes": {o.value: n for o, n in count(self.verdicts()).items()}}

    def to_record(self) -> dict[str, Any]:
        """Everything (for the run store and ``--out``): the JSON keys plus fits, prefactor, per-net values."""
        rec = self.to_json()
        rec.update({"d": list(self.d), "channels": self.channels, "draws": self.draws, "inputs": self.inputs,
                    "seed": self.seed, "target": self.target, "exact_shortcuts": self.exact_shortcuts,
                    "plant_exponent": self.plant_exponent, "has_law": self.has_law,
                    "inputs_from": self.data or "gaussian",
                    "prefactor": {**(rec["prefactor"] or {}), "measured": list(self.sq_measured),
                                  "predicted": None if self.sq_predicted is None else list(self.sq_predicted),
                                  "ratio": self.prefactor_ratio, "se": self.prefactor_se,
                                  "approximate": self.prefactor_approximate},
                    "values": self.values, "topologies": list(self.topologies)})
        for k, v in self.q.items():
            rec["q"][k].update({"se": v.se, "tol": v.tol, "power_at_0.05": v.power, "means": list(v.means),
                                "predicted_means": None if v.predicted_means is None else list(v.predicted_means),
                                "per_topology_slopes": [x if math.isfinite(x) else None for x in v.per_topology],
                                "topologies_used": v.topologies_used,
                                "width_groups": None if v.limit is None else [list(g) for g in v.limit.groups]})
        return rec

    def _series(self, key: str) -> dict[str, Any]:
        r = self.q[key]
        log_d = np.log(np.array(self.d, dtype=np.float64))
        intercept = float(np.log(np.array(r.means)).mean() - r.measured_slope * log_d.mean())
        series: dict[str, Any] = {
            "figure": f"{self.family}: E||d_x f||_q vs d", "label": f"q={key}", "x": list(self.d),
            "y": list(r.means), "lo": list(r.lo), "hi": list(r.hi),
            "fit": [float(v) for v in np.exp(intercept + r.measured_slope * log_d)],
            "xlabel": "input dimension d", "ylabel": "E||d_x f||_q", "loglog": True}
        if r.predicted_means is not None:
            series["predicted"] = list(r.predicted_means)
        return series

    def verdicts(self, alpha: float = ALPHA, consistency_fails: bool = False, consistency: bool = True
                 ) -> list[Verdict]:
        """One verdict per q (slope) plus one for the prefactor E||d_x f||_2^2.

        Three-valued (:class:`advdim.verdict.Outcome`): a slope row fails when its acceptance
        interval excludes the prediction, passes only when it also has power >= ``MIN_POWER``
        against a slope off by ``DELTA`` (``resolution`` "slope +-0.05") at its own standard error,
        and is inconclusive otherwise; the prefactor row likewise against a relative error of
        ``PREFACTOR_REL``.  Rows the theory backs no prediction for are n/a.
        """
        out = []
        what = "d_x L" if self.target == "loss" else "d_x f_k"
        for key, r in self.q.items():
            claim = f"{self.family}: slope of E||{what}||_{key} vs d"
            if r.predicted_slope is None:
                reason = self.no_law_reason or ("theory layer not available" if self.has_law is None
                                                else "the theory gives no law for this family")
                word, ref, tol_ref = paper_law_consistency(self.d, key, r.measured_slope, r.se, alpha, r.units)
                against = (f"against the paper's d^(1/q-1/2) (finite-d slope {ref:.3f} over these sizes): {word}; "
                           if consistency else "")
                out.append(Verdict(claim, self.reference, None, r.measured_slope, r.ci, None,
                                   f"no prediction ({reason}): measured exponent {r.measured_slope:.3f} +- "
                                   f"{tol_ref:.3f} (c*se, alpha {alpha:g}); {against}95% CI over "
                                   f"{r.topologies_used} units ({r.units:.1f} effective)",
                                   {"se": r.se, "series": self._series(key), "units": r.units,
                                    **({"consistency": word, "paper_law_slope": ref} if consistency else {})},
                                   status=Outcome.FAIL if consistency and consistency_fails and word == INCONSISTENT
                                   else None,
                                   test=TwoSided(r.measured_slope, ref, r.se, r.units)
                                   if consistency and consistency_fails else None))
                continue
            n = r.units
            passed, tol = slope_test(r.measured_slope, r.predicted_slope, r.se, alpha, n)
            if key == "inf" and not self.iid_inf:
                out.append(Verdict(
                    claim, self.reference, r.predicted_slope, r.measured_slope,
                    (r.measured_slope - tol, r.measured_slope + tol), None,
                    "reported, not judged: the q=inf prediction is not checked to 3% on this net (average pooling "
                    "before a ReLU, or layers outside the path-sum model's validated envelope: docs/theory.md, "
                    f"'The q = inf prediction for conv nets'); asymptotic exponent -1/2; se {r.se:.4f}",
                    {"se": r.se, "ci95": list(r.ci), "plant_exponent": self.plant_exponent,
                     "series": self._series(key)}))
                continue
            budget = f"{r.topologies_used} topologies x {self.draws} draws x {self.inputs} inputs, seed {self.seed}"
            if r.limit is not None and r.limit_slope is not None:
                out += self._limit_verdicts(claim, r, alpha, budget)
                continue
            pw = power(r.se, DELTA, alpha, n)
            out.append(Verdict(
                claim, self.reference, r.predicted_slope, r.measured_slope,
                (r.measured_slope - tol, r.measured_slope + tol), passed,
                f"{self._approximate_note()}"
                f"|measured - predicted| <= c*se = {tol / r.se if r.se > 0 else 0.0:.3f}*{r.se:.4f} ({CRITICAL_NOTE}, "
                f"n_eff = {n:.1f}): false "
                f"rejection {alpha:g}, {power_note(pw, SLOPE_RESOLUTION)} (pass needs {MIN_POWER:g}; alpha 0.01 "
                f"needs se <= {SE_FOR_POWER:.4f} for 0.99 at large n); {budget}",
                {"se": r.se, "ci95": list(r.ci), "power": pw, "plant_exponent": self.plant_exponent,
                 "series": self._series(key), "units": n}, power=pw, resolution=SLOPE_RESOLUTION,
                test=TwoSided(r.measured_slope, r.predicted_slope, r.se, n)))
        prefactor = self.prefactor_verdict(alpha)
        if prefactor is not None:
            out.append(prefactor)
        return out

    def prefactor_verdict(self, alpha: float = ALPHA) -> Verdict | None:
        """The row ``E||d_x f||_2^2 measured / theory`` (``None`` without a prediction of the prefactor).

        Judged (pass iff ``|ratio - 1| <= c*se``) where the path sum is exact, with its power against
        a prefactor off by ``PREFACTOR_REL`` (:func:`advdim.simulate._fit.ratio_power`); n/a where it
        is only approximate (H1 fails).
        """
        if self.prefactor_ratio is None or self.prefactor_se is None:
            return None
        what = "d_x L" if self.target == "loss" else "d_x f_k"
        ratio, se = self.prefactor_ratio, self.prefactor_se
        units = float(self.nets) if self.prefactor_units is None else self.prefactor_units
        test = ratio_test(ratio, se, units)
        few = units < MIN_RATIO_UNITS  # skewed per-unit squares: too few units to judge (advdim.stats)
        tol = test.tolerance(alpha) if test.ready and not few else math.inf
        judged = self.prefactor_approximate is None
        pw = (0.0 if few else test.power(alpha)) if judged else None
        how = (f"ratio of sums over units and sizes; se {se:.4f} over {self.nets} units "
               f"({units:.1f} effective), two-sided alpha {alpha:g} on the log scale: |log ratio| <= c*se/ratio = "
               f"{tol:.4f}")
        if few:
            how += f"; inconclusive below {MIN_RATIO_UNITS:g} effective units (right-skewed squares)"
        detail = (f"{how}; {power_note(pw, PREFACTOR_RESOLUTION)} (pass needs {MIN_POWER:g})" if judged else
                  "reported, not judged: the path sum is exact only under H1, which fails here: "
                  f"{self.prefactor_approximate}; {how}")
        return Verdict(
            f"{self.family}: E||{what}||_2^2 measured / theory", self.reference, 1.0, ratio,
            (ratio * math.exp(-tol), ratio * math.exp(tol)), not test.rejects(alpha) or few if judged else None, detail,
            {"measured": list(self.sq_measured), "predicted": list(self.sq_predicted or []), "se": se,
             "power": pw}, power=pw, resolution=PREFACTOR_RESOLUTION if judged else "",
            test=test if judged and not few else None)

    def _approximate_note(self) -> str:
        """A warning for slope verdicts whose prediction rests on a failing hypothesis (empty when exact)."""
        if self.prefactor_approximate is None:
            return ""
        return (f"the prediction is approximate ({self.prefactor_approximate}): a rejection may be the "
                "approximation's own bias (avgpool: about +0.015 at sizes 8-64, docs/simulate.md); ")

    def _limit_verdicts(self, claim: str, r: QResult, alpha: float, budget: str) -> list[Verdict]:
        """The judged infinite-width row and the reported sampled-width row of one q."""
        lim, pred, slope = r.limit, r.predicted_slope, r.limit_slope
        assert lim is not None and pred is not None and slope is not None
        n = r.test_units
        passed, tol = slope_test(slope, pred, lim.se, alpha, n)  # the one test, as for the plain fit
        pw = power(lim.se, DELTA, alpha, n)
        groups = "; ".join(f"x={x:.4f}: {m} nets, {dev:+.4f}+-{se:.4f}" for x, m, dev, se in lim.groups)
        judged = Verdict(
            f"{claim} (infinite-width limit)", self.reference, pred, slope, (slope - tol, slope + tol), passed,
            f"{self._approximate_note()}"
            f"deviation from the law extrapolated to infinite width: |{lim.deviation:+.4f}| <= c*se = "
            f"{critical(alpha, n):.3f}*{lim.se:.4f} (c = t_(1-alpha/2, n-1), n = {n:.0f} topologies): false "
            f"rejection {alpha:g}, "
            f"{power_note(pw, SLOPE_RESOLUTION)} (pass needs {MIN_POWER:g}); finite-width term "
            f"{lim.coefficient:+.3f}+-{lim.coefficient_se:.3f} per unit of the "
            f"width index x (weighted fit over groups: {groups}); {budget}",
            {"se": lim.se, "ci95": [pred + lim.ci[0], pred + lim.ci[1]], "power": pw,
             "plant_exponent": self.plant_exponent, "groups": [list(g) for g in lim.groups],
             "coefficient": lim.coefficient}, power=pw, resolution=SLOPE_RESOLUTION,
            test=TwoSided(slope, pred, lim.se, n))
        sampled = Verdict(
            f"{claim} (sampled widths)", self.reference, pred, r.measured_slope, r.ci, None,
            f"reported, not judged: at finite width the law bends by the finite-width term (judged in the "
            f"infinite-width row); 95% CI over topologies, se {r.se:.4f}",
            {"se": r.se, "ci95": list(r.ci), "series": self._series(r.q)})
        return [judged, sampled]


#: the q = inf Monte Carlo's relative standard error per random topology: the study averages the
#: predictions of its topologies, so the error of the mean prediction is about this / sqrt(nets)
#: (0.0014 at 200 topologies), at 1/16 of the cost of the 0.005 a single network gets
RANDOM_INF_REL_SE = 0.02


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


def _parse_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in sizes)
    if len(out) < 2 or len(set(out)) != len(out) or any(s < 1 for s in out):
        raise AdvdimError(f"sizes must be at least 2 distinct positive sides, got {list(sizes)}")
    return tuple(sorted(out))


def study(
    family: str | Target | Family | Spec,
    sizes: Sequence[int] = (8, 16, 32, 64),
    channels: int | None = None,
    nets: int = 200,
    inputs: int = 4,
    seed: int = 0,
    device: str = "cpu",
    target: GradTarget | str = GradTarget.LOGIT,
    exact_shortcuts: bool = True,
    plant_exponent: float = 0.0,
    store: RunStore | None = None,
    *,
    draws: int = 4,
    workers: int = 0,
    scheduler: str | None = None,
    resume: bool = True,
    progress: bool = True,
    dtype: str = "float32",
    with_theory: bool = True,
    data: str | None = None,
    data_dir: str | None = None,
    init: Init | str = Init.HE,
    law_init: Init | str | None = None,
) -> FamilyResult:
    """Monte Carlo study of ``E||d_x f_k||_q`` against ``d`` for a target (Theorems 4-5, Appendix B).

    Args:
        family: what :func:`advdim.arch.resolve_target` takes.  A built-in family name (``dense``,
            ``strided``, ``avgpool``, ``maxpool``, ``gap``) draws ``nets`` random topologies; a fixed
            target (a member ``strided(kernel=5)``, spec text, a user family) is measured exactly
            as given: its ``nets`` units are independent weight draws of the same network
            (``draws`` each per size), and the intervals are over them.
        sizes: input sides ``s`` (``d = channels * s**2``).
        channels: input channels (default 3; a spec text keeps its own).
        nets: number of random topologies (the bootstrap resamples them).
        inputs: Gaussian inputs per weight draw; ``draws``: weight draws per topology and size.
        target: ``logit`` (``f_0``) or ``loss`` (cross-entropy with uniform labels).
        exact_shortcuts: use the exact dense-chain sampler where it applies.
        plant_exponent: multiply every measured norm by ``d**plant_exponent`` (a planted error,
            to show that the verdicts reject a wrong law).
        store: run store; every finished cell is written at once (``resume`` reuses them).
        workers, scheduler: executors of :func:`advdim.sweep.run_sweep`.
        with_theory: ask ``advdim.theory.predict`` for the finite-d prediction.
        data, data_dir: real images instead of Gaussian inputs: a dataset of ``advdim.empirical``
            (``fashion-mnist``, ``cifar10`` from ``data_dir``, ``synthetic``), its first
            :data:`IMAGE_POOL` test images resampled to each size; ``channels`` must be the dataset's.
        init: the weight law of the networks (``he``, ``torch``, ``glorot``, ``lecun``, ``orthogonal``).
        law_init: the init the predicted law assumes (default: ``init``); ``law_init="he"`` with
            ``init="torch"`` asks whether PyTorch's default init obeys the He law (it does not in
            families whose depth grows with d).
    Returns:
        A :class:`FamilyResult`; ``.verdicts()`` compares it with the theory.
    """
    from advdim.build import resolve_device
    from advdim.sweep import run_sweep

    sizes_t = _parse_sizes(sizes)
    tgt = GradTarget.parse(target)
    arch = resolve_target(family)
    init_e = Init.parse(init)
    law_e = init_e if law_init is None else Init.parse(law_init)
    if arch.channels is not None and channels is not None and channels != arch.channels:
        raise AdvdimError(f"{arch.text} has {arch.channels} input channel(s), not {channels}")
    channels = arch.channels or channels or 3
    if nets < 2 or inputs < 1 or draws < 1:
        raise AdvdimError(f"need nets >= 2, inputs >= 1, draws >= 1 (got {nets}, {inputs}, {draws})")
    dev = resolve_device(device).type
    if data is not None:  # load and resample here, so that a missing dataset or a bad size fails before any cell
        from advdim.empirical._data import DatasetName

        from advdim.cli_args import check_fits

        data = DatasetName.parse(data).value
        check_fits(pool_bytes(sizes_t, channels), f"the {data} images resampled to sizes {list(sizes_t)}")
        pools = [image_pool(data, data_dir, s) for s in sizes_t]
        if pools[0].shape[1] != channels:
            raise AdvdimError(f"{data} images have {pools[0].shape[1]} channel(s), but channels is {channels}")
    topos = topologies(arch, nets, seed, sizes_t, channels)
    if inputs < 2 and any(batch_statistics(f.spec(sizes_t[0], channels).layers) for f in topos):
        raise AdvdimError("batch norm in batch mode normalises over each net's batch of inputs: --inputs must be "
                          f"at least 2, got {inputs}")
    check_memory(topos, sizes_t, channels, draws, inputs, exact_shortcuts, dtype, dev, data, workers, scheduler,
                 with_theory)
    # the theory's predictions come first too: a refusal of the theory must not discard finished cells
    if with_theory and not arch.random:  # one network: one prediction
        law = predict_topology(arch, sizes_t, channels, law_e, tgt, wide=True)
        laws: list[TopologyLaw | None] = [law] * nets
    else:
        laws = [predict_topology(f, sizes_t, channels, law_e, tgt, RANDOM_INF_REL_SE) for f in topos] \
            if with_theory else [None] * nets
    configs = [cell_config(fam, t, s, channels, draws, inputs, seed, tgt, exact_shortcuts, dtype, dev, data,
                           data_dir, init_e) for t, fam in enumerate(topos) for s in sizes_t]
    results = run_sweep(KIND, configs, run_cell, store, workers=workers, scheduler=scheduler, resume=resume,
                        progress=progress, description=f"simulate {arch.text}")
    iid_inf = inf_prediction_exact(arch, sizes_t, channels, law_e.value)
    n_s = len(sizes_t)
    d = np.array([channels * s * s for s in sizes_t], dtype=np.float64)
    values = {k: np.array([r[k] for r in results], dtype=np.float64).reshape(nets, n_s) for k in Q_KEYS}
    sq = np.array([r["sq2"] for r in results], dtype=np.float64).reshape(nets, n_s)
    has_law = _has_law(laws)
    index = np.array([width_index(f, sizes_t, channels) for f in topos]) if has_law else np.zeros(nets)
    return analyse(arch.text, sizes_t, d, values, sq, laws, Units(nets, draws, inputs, channels, seed), tgt,
                   index=index, iid_inf=iid_inf, plant_exponent=plant_exponent, exact_shortcuts=exact_shortcuts,
                   topologies=tuple(f.to_text() for f in topos), data=data, fixed=not arch.random,
                   init=init_e.value, law_init=law_e.value)


def _has_law(laws: Sequence[TopologyLaw | None]) -> bool | None:
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
            law_init: str = "he", no_law_reason: str | None = None) -> FamilyResult:
    """Per-unit records -> slope fits, width limits, prefactor ratio: one :class:`FamilyResult`.

    The one analysis of ``simulate`` and ``measure`` (``advdim.stats`` does the statistics).

    Args:
        d: input dimensions ``(S,)``; ``values``: q key -> ``(U, S)`` per-unit means of ``||g||_q``;
            ``sq``: ``(U, S)`` per-unit means of ``||g||_2^2``.
        laws: one :class:`TopologyLaw` per unit (``None`` entries: the theory layer is not available).
        index: the finite-width index of each unit (:func:`width_index`; ``None``: all 0).
        plant_exponent: multiply every measured norm by ``d**plant_exponent`` (a planted error).
    """
    nets = units.nets
    seed = units.seed
    sizes_t = tuple(int(s) for s in sizes)
    plant = d**plant_exponent
    values = {k: np.asarray(v, dtype=np.float64) * plant for k, v in values.items()}
    sq = np.asarray(sq, dtype=np.float64) * plant**2
    tgt = target
    theory_available = all(law is not None for law in laws)
    has_law = _has_law(laws)
    index = np.zeros(nets) if index is None else index
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
                passed, tol = slope_test(fit.slope, pred_slope, fit.se, n=fit.units)
                if key == "inf" and not iid_inf:
                    passed = None  # reported, not judged: see iid_gaussian_coordinates
                else:
                    limit = fit_width_limit(d, values[key][mask], per_topo, index[mask], seed=seed + i)
                    if limit is not None:
                        passed, tol = slope_test(pred_slope + limit.deviation, pred_slope, limit.se, n=used)
            else:
                used = nets
        se, n_test = (fit.se, fit.units) if limit is None else (limit.se, float(used))
        qres[key] = QResult(key, fit.slope, fit.se, fit.ci, pred_slope, tol, passed, power(se, n=n_test), fit.means,
                            fit.lo, fit.hi, pred_means, fit.per_topology, used, limit, fit.units)

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
    return FamilyResult(
        name, sizes_t, tuple(int(x) for x in d), units.channels, nets, units.draws, units.inputs, seed, tgt.value,
        exact_shortcuts, plant_exponent, has_law, qres, tuple(map(float, sq.mean(axis=0))), sq_pred, ratio, ratio_se,
        approx, {k: values[k].tolist() for k in values}, topologies, data, iid_inf, fixed, init, law_init, ratio_n,
        no_law_reason)
