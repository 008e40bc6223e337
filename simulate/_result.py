"""The record of a study (:class:`FamilyResult`, one :class:`QResult` per norm order) and its verdicts.

Read by ``simulate``, ``measure``, ``verify`` and the plots; produced by :func:`advdim.simulate._analysis.analyse`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

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
    paper_law_consistency,
    power,
    ratio_test,
    slope_test,
)
from advdim.verdict import MIN_POWER, Outcome, Verdict, count, power_note

#: the slope error an approximate prediction (the path sum where H1 fails) may carry, added to a judged row's
#: tolerance: the judged avgpool limit sat +0.014 to +0.019 above the path-sum slope on Gaussian inputs (30
#: replicates and the 2000-topology run) and up to +0.031 on Fashion-MNIST (docs/simulate.md)
APPROX_SLOPE_BOUND = 0.035



def margin_slope_test(measured: float, predicted: float, se: float, alpha: float, n: float | None,
                      margin: float) -> tuple[bool, float]:
    """:func:`advdim.stats.slope_test` with ``margin`` (the prediction's own documented error) added to
    its tolerance: ``(passed, tol + margin)``.

    >>> [margin_slope_test(0.52, 0.5, 0.004, 0.01, 200.0, m)[0] for m in (0.035, 0.0)]
    [True, False]
    """
    passed, tol = slope_test(measured, predicted, se, alpha, n)
    if margin == 0.0 or not math.isfinite(tol):
        return passed, tol
    return bool(abs(measured - predicted) <= tol + margin), tol + margin


REFERENCES = {"dense": "Theorem 4", "strided": "Theorem 5 / Corollary 6", "gap": "Theorem 5 / Corollary 6",
              "avgpool": "Appendix B", "maxpool": "Section 3.2 (no law: max pooling breaks H1-H3)"}


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

    def test(self) -> TwoSided | None:
        """The row's two-sided test (the infinite-width limit's where one is fitted); None when not judged."""
        if self.passed is None or self.predicted_slope is None:
            return None
        if self.limit is not None and self.limit_slope is not None:
            return TwoSided(self.limit_slope, self.predicted_slope, self.limit.se, self.test_units)
        return TwoSided(self.measured_slope, self.predicted_slope, self.se, self.test_units)

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
    #: the level of the law behind each prediction (q key, "sq" for the prefactor): exact / wide-limit /
    #: approximate / extreme-value fallback, the worst over the units' laws (``simulate._analysis.worst_level``)
    levels: dict[str, str] = field(default_factory=dict)
    #: a token-readout network's exponent-only law (:class:`advdim.theory._tokens.TokenLaw`): the rows
    #: without a prediction are judged against it, not against the paper's exponent
    token_law: Any = None

    @property
    def reference(self) -> str:
        return REFERENCES.get(self.family, "Theorem 5")

    def to_json(self) -> dict[str, Any]:
        """Per q the slope rows (``QResult.to_json``), the prefactor row (``None`` without a prediction)
        and ``outcomes``: how many of :meth:`verdicts` say pass, fail, inconclusive and n/a."""
        pre = self.prefactor_verdict()
        return {"family": self.family, "sizes": list(self.sizes), "nets": self.nets,
                "q": {k: {**v.to_json(), "level": self.levels.get(k) if v.predicted_slope is not None else None}
                      for k, v in self.q.items()},
                "prefactor": None if pre is None else {"ratio": pre.measured, "se": self.prefactor_se,
                                                       "level": self.levels.get("sq"),
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
            if r.predicted_slope is None and self.token_law is not None:
                out.append(self._token_verdict(claim, key, alpha, consistency))
                continue
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
            passed, tol = self._slope_test(r.measured_slope, r.predicted_slope, r.se, alpha, n)
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
                 "series": self._series(key), "units": n}, power=pw, resolution=self._resolution(),
                test=self._two_sided(r.measured_slope, r.predicted_slope, r.se, n)))
        prefactor = self.prefactor_verdict(alpha)
        if prefactor is not None:
            out.append(prefactor)
        return [self._with_level(v) for v in out]

    def _token_verdict(self, claim: str, key: str, alpha: float, consistency: bool) -> Verdict:
        """A token-readout network's slope row: the exponent fitted with its 1/N term over the sizes with
        enough patch tokens, against the exponent-only law ``d^(1/q - 1)`` (advdim.theory._tokens).

        Its word (consistent / inconsistent / cannot tell) is never a FAIL, even where the paper-law
        rows of ``measure`` fail: the law is asymptotic and the theory bounds none of its finite-size
        corrections (docs/theory.md: torchvision's ViT is still 6-7 se off at 1024 tokens)."""
        from advdim.theory import _tokens

        law = self.token_law
        r = self.q[key]
        series = self._series(key)
        base = {"series": series, "level": _tokens.LEVEL, "law": law.name(), "tokens": list(law.tokens)}
        why = _tokens.too_few(law)
        ref_doc = "theory.md: token readouts"
        if why is not None:
            return Verdict(claim, ref_doc, None, r.measured_slope, r.ci, None,
                           f"{law.name()}: not judged: {why}; plain slope over all sizes {r.measured_slope:.3f} +- "
                           f"{r.se:.3f} (se)",
                           {**base, "se": r.se, **({"consistency": _tokens.CANNOT_TELL_SIZES} if consistency else {})})
        idx = law.usable()
        j = _tokens.judge(law, self.d, np.asarray(self.values[key], dtype=np.float64), key, alpha)
        d = ", ".join(str(self.d[i]) for i in idx)
        tokens = ", ".join(str(law.tokens[i]) for i in idx)
        return Verdict(claim, ref_doc, None, j.slope, (j.slope - j.tol, j.slope + j.tol), None,
                       f"{law.name()}: exponent fitted with its 1/N term over d = {d} (patch tokens {tokens}): "
                       f"{j.slope:.3f} +- {j.tol:.3f} (c*se, alpha {alpha:g}, n_eff {j.units:.1f}) against the law's "
                       f"{j.reference:.3f}" + (f": {j.word}" if consistency else "") + "; not judged (an exponent-only "
                       "law: its finite-size corrections have no bound"
                       + ("; for q = inf the maximum over the tokens carries a sub-polynomial factor the law does not "
                          "give, and the reference is that of Gaussian coordinates" if key == "inf" else "")
                       + f"); plain slope over all sizes {r.measured_slope:.3f}",
                       {**base, "se": j.se, "units": j.units, "law_slope": j.reference,
                        **({"consistency": j.word} if consistency else {})})

    def _with_level(self, v: Verdict) -> Verdict:
        """``v`` with the level of the law behind its prediction in ``extra["level"]`` (rows with a prediction)."""
        if v.predicted is None:
            return v
        key = "sq" if "measured / theory" in v.claim else next(
            (k for k in self.q if f"||_{k} vs d" in v.claim), None)
        level = self.levels.get(key) if key is not None else None
        if level is None:
            return v
        if key != "sq" and "(infinite-width limit)" in v.claim and level == "wide-limit":
            level = "wide-limit (extrapolated in width)"
        return replace(v, extra={**v.extra, "level": level})

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
        return (f"the prediction is approximate ({self.prefactor_approximate}): it is judged with its documented "
                f"slope error +-{APPROX_SLOPE_BOUND:g} added to the tolerance (avgpool: +0.014 to +0.019 on Gaussian "
                "inputs, up to +0.031 on Fashion-MNIST, docs/simulate.md), so a FAIL is a deviation beyond what the "
                "approximation explains; ")

    def _margin(self) -> float:
        """The slope error the prediction itself may carry: 0 for an exact law, :data:`APPROX_SLOPE_BOUND` where
        the path sum is only approximate (H1 fails)."""
        return 0.0 if self.prefactor_approximate is None else APPROX_SLOPE_BOUND

    def _slope_test(self, measured: float, predicted: float, se: float, alpha: float, n: float
                    ) -> tuple[bool, float]:
        """:func:`advdim.stats.slope_test`, with the approximation's margin added to its tolerance."""
        return margin_slope_test(measured, predicted, se, alpha, n, self._margin())

    def _resolution(self) -> str:
        """The error the row's power is stated against (beyond the approximation's margin)."""
        margin = self._margin()
        return SLOPE_RESOLUTION if margin == 0.0 else f"slope +-{margin + DELTA:g} (+-{DELTA:g} beyond the margin)"

    def _two_sided(self, measured: float, predicted: float, se: float, n: float) -> TwoSided | None:
        """The row's test for Holm's family-wise procedure; None for an approximate prediction, whose margin
        a point-null p-value cannot carry (the row keeps its own verdict at level alpha)."""
        return TwoSided(measured, predicted, se, n) if self._margin() == 0.0 else None

    def _limit_verdicts(self, claim: str, r: QResult, alpha: float, budget: str) -> list[Verdict]:
        """The judged infinite-width row and the reported sampled-width row of one q."""
        lim, pred, slope = r.limit, r.predicted_slope, r.limit_slope
        assert lim is not None and pred is not None and slope is not None
        n = r.test_units
        passed, tol = self._slope_test(slope, pred, lim.se, alpha, n)  # the one test, as for the plain fit
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
             "coefficient": lim.coefficient}, power=pw, resolution=self._resolution(),
            test=self._two_sided(slope, pred, lim.se, n))
        sampled = Verdict(
            f"{claim} (sampled widths)", self.reference, pred, r.measured_slope, r.ci, None,
            f"reported, not judged: at finite width the law bends by the finite-width term (judged in the "
            f"infinite-width row); 95% CI over topologies, se {r.se:.4f}",
            {"se": r.se, "ci95": list(r.ci), "series": self._series(r.q)})
        return [judged, sampled]
