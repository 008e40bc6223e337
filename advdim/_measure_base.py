"""What both settings of ``advdim measure`` share: options, records, the rows of a measurement
(see :mod:`advdim.measure`)."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from advdim.arch import Target as ArchTarget
from advdim.cli_args import parse_sizes
from advdim.errors import AdvdimError
from advdim.gradients import check_q
from advdim.models import (
    binomial_interval,
)
from advdim.stats import ALPHA
from advdim.trace import InitGuess, Traced, Untraceable
from advdim.verdict import Verdict

if TYPE_CHECKING:
    from advdim.simulate import FamilyResult
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
        init_law: the init law recognised on the draws at the base size (:meth:`InitGuess.law_text`),
            stated in each slope row; None: not examined.
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
    init_law: str | None = None


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
    #: a token-readout network's exponent-only law (:class:`advdim.theory._tokens.TokenLaw`), judged on
    #: the rows without a prediction instead of the paper's exponent
    token_law: Any = None

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
                           "predicted_slope": None if pred is None else dict(pred.predicted_slope),
                           "law_specs": None if self.law_target is None else {  # with the init's scale layers
                               str(k): self.law_target.spec(t.spec.input_shape[1], t.spec.input_shape[0]).to_text()
                               for k, t in self.traces.items() if isinstance(t, Traced)}},
            "token_law": None if self.token_law is None else {
                "readout": self.token_law.kind, "law": self.token_law.name(), "tokens": list(self.token_law.tokens)},
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
                series, ours = _series(tgt, key, sample.ds, sample.values[(tgt, key)], sample)
                extra = {**ours, **v.extra}
                extra["series"] = {**extra["series"], "label": f"q = {key}", "figure": series["figure"]}
                v = replace(v, extra={**extra, "target": tgt, "q": key})
            if sample.init_law is not None:
                v = replace(v, detail=f"{v.detail}; init of the draws: {sample.init_law}",
                            extra={**v.extra, "init_law": sample.init_law})
            token_row = v.extra.get("level") == "exponent only"  # judged against the token-readout law
            out.append(replace(v, claim=claim, reference=v.reference if token_row else REFERENCE))
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
