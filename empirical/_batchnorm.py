"""Batch norm, weight decay and the sqrt(d) growth of vulnerability (issue 15).

Galloway, Golubeva, Tanay, Moussa and Taylor (2019, "Batch Normalization is a Cause of
Adversarial Vulnerability") argue that the paper's Section 4.2 nets (conv -> BN -> ReLU) owe
their d-dependence to batch norm, and that substituting weight decay for it "is sufficient to
nullify the relationship between adversarial vulnerability and the input dimension".  This
module trains the four kinds of condition {BN, no BN} x {no decay, decay lambda > 0} at several
up-sampled input sizes and several seeds, and judges, from the stored records only:

- per condition, the log-log slope of ``E||d_x L||_1`` against ``sqrt(d)`` (Theorem 4: 1 at
  initialisation) with a hierarchical bootstrap interval (seeds, then test points within each
  seed, independently at each size): **persists** (interval above 0 and not inside the band),
  **vanishes** (interval inside ``(-BAND, BAND)``), **reverses** (below 0, not inside the band),
  **faster than sqrt(d)** (interval above ``1 + BAND``: more than the initialisation's law, which
  no result backs; a planted ``d^0.5`` on the gradient norms lands here), or inconclusive;
- the counter-claim's comparison, one row per decay ``lambda > 0``: Galloway et al. predict that
  without BN the decay nullifies the d-dependence the BN nets show.  The row is **refuted**
  (passed) when ``no BN, lambda`` persists, **upheld** (failed) when it vanishes while ``BN, no
  decay`` persists and the interval of ``slope(no BN, lambda) - slope(BN, no decay)`` lies below 0,
  else inconclusive.  The difference is shown with its interval; no theory backs a value of it,
  so it is never judged against one.

The equivalence band ``BAND = 0.25`` is a quarter of the predicted slope 1: over the x4 range of
``sqrt(d)`` of the presets (28 -> 112 px), a slope inside it changes ``E||d_x L||_1`` by less than
``4^0.25 = 1.41`` where the initialisation's law gives a factor 4, i.e. at least three quarters of
the predicted log-growth is gone.  The slope of the l_inf vulnerability (a share of flipped
labels, with no proportional law) is reported beside it, not judged.

Every ``passed`` says whether the paper's claim (the growth persists after training, whatever the
normalisation) holds in that row: True for "persists" / "counter-claim refuted", False for the outcomes
that contradict it, None when the interval cannot decide.  These are directional / equivalence
claims, so each judged row sets its outcome (``Verdict.status``, :class:`advdim.verdict.Outcome`)
itself: pass for "persists" / "refuted", fail for "vanishes", "reverses", "faster than sqrt(d)" /
"upheld", and **inconclusive** when the interval cannot decide (or a condition has no slope); the
reported effects are n/a.

    >>> Condition(batchnorm=True, weight_decay=0.0).label
    'BN, wd 0'
    >>> classify(0.4, 0.9).value, classify(-0.1, 0.2).value, classify(-0.2, 0.6).value
    ('persists', 'vanishes', 'inconclusive')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from advdim.empirical._figures import collapsed, save_figure

from advdim.choice import Choice
from advdim.errors import AdvdimError
from advdim.paths import OutputFolder
from advdim.stats import HierarchicalFit as SlopeFit
from advdim.stats import fit_hierarchical_slope as fit_slope
from advdim.stats import quantiles as _quantiles
from advdim.verdict import Outcome as Says
from advdim.verdict import Verdict

#: record kind of one training run with its per-sample test values
RUN_KIND = "empirical.run-samples"
#: the equivalence band around slope 0 (a quarter of the predicted slope 1, see the module docstring)
BAND = 0.25
#: the slope of E||d_x L||_1 against sqrt(d) at initialisation (Theorem 4)
PREDICTED = 1.0
#: two-sided level of the bootstrap intervals
LEVEL = 0.99
N_BOOT = 2000
#: the weight decay of Galloway et al. (and of most CIFAR-10 schedules)
PUBLISHED_DECAY = 5e-4
REFERENCE = "Section 4.2 vs Galloway et al. 2019"


@dataclass(frozen=True, order=True)
class Condition:
    """One training condition: batch norm after every conv or not, SGD weight decay."""

    batchnorm: bool
    weight_decay: float

    @property
    def label(self) -> str:
        return f"{'BN' if self.batchnorm else 'no BN'}, wd {self.weight_decay:g}"

    @classmethod
    def of(cls, row: dict[str, Any]) -> Condition:
        """The condition of a stored run (configurations without the keys: no BN, no decay)."""
        return cls(bool(row.get("batchnorm", False)), float(row.get("weight_decay", 0.0)))


class Outcome(Choice):
    """What a slope interval says about the d-dependence."""

    PERSISTS = "persists"
    VANISHES = "vanishes"
    REVERSES = "reverses"
    FASTER = "faster than sqrt(d)"
    INCONCLUSIVE = "inconclusive"

    @property
    def passed(self) -> bool | None:
        """The paper's claim (the growth persists after training): held, contradicted, undecided."""
        return {Outcome.PERSISTS: True, Outcome.INCONCLUSIVE: None}.get(self, False)

    @property
    def says(self) -> Says:
        """The verdict's outcome: pass (persists), inconclusive, or fail (every other classification)."""
        return {True: Says.PASS, None: Says.INCONCLUSIVE, False: Says.FAIL}[self.passed]


def classify(lo: float, hi: float, band: float = BAND, predicted: float = PREDICTED) -> Outcome:
    """The outcome of a slope interval ``(lo, hi)`` (see the module docstring).

    >>> classify(1.4, 1.9).value, classify(-0.9, -0.4).value, classify(0.05, 0.2).value
    ('faster than sqrt(d)', 'reverses', 'vanishes')
    """
    if lo > predicted + band:
        return Outcome.FASTER
    if -band < lo and hi < band:
        return Outcome.VANISHES
    if lo > 0:
        return Outcome.PERSISTS
    if hi < 0:
        return Outcome.REVERSES
    return Outcome.INCONCLUSIVE


def groups(rows: Sequence[dict[str, Any]], key: str) -> dict[Condition, list[tuple[float, list[np.ndarray]]]]:
    """Per condition and size (increasing ``d``): ``(sqrt(d), per-seed arrays of samples[key])``;
    collapsed runs (see :func:`advdim.empirical._figures.collapsed`) left out."""
    out: dict[Condition, dict[int, list[np.ndarray]]] = {}
    for r in rows:
        if collapsed(r):
            continue
        if key not in r.get("samples", {}):
            raise AdvdimError(f"a stored run lacks the per-sample test values {key!r}; use a new --out folder")
        out.setdefault(Condition.of(r), {}).setdefault(int(r["d"]), []).append(np.asarray(r["samples"][key]))
    return {c: [(math.sqrt(d), runs) for d, runs in sorted(by_d.items())] for c, by_d in sorted(out.items())}


def fits(rows: Sequence[dict[str, Any]], key: str, seed: int = 0, n_boot: int = N_BOOT,
         level: float = LEVEL) -> dict[Condition, SlopeFit | None]:
    """:func:`fit_slope` of ``samples[key]`` for every condition (one seeded generator each, so that
    a condition's interval does not depend on which other conditions are present)."""
    out = {}
    for c, g in groups(rows, key).items():
        rng = np.random.default_rng([seed, int(c.batchnorm), int(round(c.weight_decay * 1e9))])
        out[c] = fit_slope(g, rng, n_boot, level)
    return out


def _has(rows: Sequence[dict[str, Any]], key: str) -> bool:
    """Whether every run holds the per-point values ``samples[key]``."""
    return all(key in r.get("samples", {}) for r in rows)


def _fmt_fit(fit: SlopeFit | None) -> str:
    return "n/a" if fit is None else f"{fit.slope:+.2f} [{fit.lo:+.2f}, {fit.hi:+.2f}]"


def _accuracy(rows: Sequence[dict[str, Any]], c: Condition) -> dict[int, list[float]]:
    acc: dict[int, list[float]] = {}
    for r in rows:
        if Condition.of(r) == c and not collapsed(r):
            acc.setdefault(int(r["size"]), []).append(float(r["final"]["test"]["acc"]))
    return dict(sorted(acc.items()))


def _scope(rows: Sequence[dict[str, Any]]) -> str:
    r0 = rows[0]
    sizes = sorted({int(r["size"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    n = "all" if r0.get("n_train") is None else r0["n_train"]
    points = len(r0["samples"]["grad_l1"])
    return (f"{r0['dataset']} sizes {sizes} (pixel copy), {n} train imgs, {r0['epochs']} epochs, lr {r0['lr']:g}, "
            f"seeds {seeds}, {points} test points per run; measured in eval mode")


def verdicts(rows: Sequence[dict[str, Any]], seed: int = 0, band: float = BAND, n_boot: int = N_BOOT,
             level: float = LEVEL) -> list[Verdict]:
    """The verdict rows of the experiment, a pure function of the stored runs ``rows``.

    Each row is a run's configuration merged with its result (``d``, ``size``, ``final``,
    ``samples`` with the per-test-point ``grad_l1`` and ``vuln_linf``).  One row per condition
    (the d-dependence of ``E||d_x L||_1``; vulnerability slope and accuracy reported in it), one
    judged comparison per decay without BN against BN without decay, and two reported effects
    (BN at no decay; each decay without BN).
    """
    if not rows:
        raise AdvdimError("no runs to judge")
    grad = fits(rows, "grad_l1", seed, n_boot, level)
    vuln = fits(rows, "vuln_linf", seed, n_boot, level) if _has(rows, "vuln_linf") else {}
    scope = _scope(rows)
    pct = f"{100 * level:g}%"
    out: list[Verdict] = []
    for c, fit in grad.items():
        accs = _accuracy(rows, c)
        vfit = vuln.get(c)
        acc_text = ", ".join(f"{s}px {np.mean(a):.3f}" for s, a in accs.items())
        extra: dict[str, Any] = {
            "condition": {"batchnorm": c.batchnorm, "weight_decay": c.weight_decay},
            "accuracy": {str(s): a for s, a in accs.items()},
            "slope_vuln_linf": None if vfit is None else {"slope": vfit.slope, "lo": vfit.lo, "hi": vfit.hi},
        }
        if fit is None:
            outcome = Outcome.INCONCLUSIVE
            extra["outcome"] = outcome.value
            out.append(Verdict(
                claim=f"E||d_x L||_1 grows with d after training ({c.label})", reference=REFERENCE,
                predicted=PREDICTED, measured=None, interval=None, passed=None,
                detail=f"fewer than 2 sizes with a positive mean; {scope}", extra=extra, status=outcome.says))
            continue
        outcome = classify(fit.lo, fit.hi, band)
        extra["outcome"] = outcome.value
        extra["series"] = {"figure": "E||d_x L||_1 vs sqrt(d) by condition", "label": c.label,
                           "x": list(fit.sqrt_d), "y": list(fit.mean), "lo": list(fit.mean_lo),
                           "hi": list(fit.mean_hi), "xlabel": "sqrt(d)", "ylabel": "E||d_x L||_1", "loglog": True}
        out.append(Verdict(
            claim=f"E||d_x L||_1 grows with d after training ({c.label}): {outcome.value}",
            reference=REFERENCE, predicted=PREDICTED, measured=fit.slope, interval=(fit.lo, fit.hi),
            passed=outcome.passed,
            detail=(f"slope vs sqrt(d), {pct} bootstrap over seeds and test points; persists iff lo > 0 and not "
                    f"inside the band |slope| < {band:g} (vanishes), faster iff lo > {PREDICTED + band:g}; "
                    f"vulnerability slope {_fmt_fit(vfit)} (reported); accuracy {acc_text}; {scope}"),
            extra=extra, status=outcome.says))

    def diff(a: Condition, b: Condition) -> tuple[float, float, float] | None:
        fa, fb = grad.get(a), grad.get(b)
        if fa is None or fb is None:
            return None
        lo, hi = _quantiles(fa.boots - fb.boots, level)
        return fa.slope - fb.slope, lo, hi

    paper = Condition(True, 0.0)
    plain = Condition(False, 0.0)
    outcomes = {c: classify(f.lo, f.hi, band) if f is not None else Outcome.INCONCLUSIVE for c, f in grad.items()}
    for c in sorted(grad):
        if c.batchnorm or c.weight_decay == 0:
            continue
        d = diff(c, paper)
        claim = (f"counter-claim refuted: weight decay {c.weight_decay:g} without BN does not nullify the "
                 "d-dependence the BN nets show")
        if d is None:
            out.append(Verdict(claim=claim, reference=REFERENCE, predicted=None, measured=None, interval=None,
                               passed=None, detail=f"a condition has no slope; {scope}",
                               extra={"comparison": [c.label, paper.label]}, status=Says.INCONCLUSIVE))
            continue
        delta, lo, hi = d
        # The counter-claim (Galloway et al. 2019) predicts: slope(no BN, decay) ~ 0 (inside the band) while
        # slope(BN) stays; the paper's side: the growth persists without BN too.  No theory backs a value
        # of the difference itself, so it is the evidence shown, not a prediction judged.
        own, bn_out = outcomes.get(c), outcomes.get(paper)
        if own is Outcome.PERSISTS:
            passed: bool | None = True  # the growth survives the substitution: the counter-claim is refuted
        elif own is Outcome.VANISHES and bn_out is Outcome.PERSISTS and hi < 0:
            passed = False  # nullified without BN, present with BN, significantly below: the counter-claim holds
        else:
            passed = None
        out.append(Verdict(
            claim=claim, reference=REFERENCE, predicted=None, measured=delta, interval=(lo, hi), passed=passed,
            detail=(f"slope({c.label}) - slope({paper.label}) = {delta:+.3f}, {pct} bootstrap of the difference "
                    f"(independent runs); {c.label}: {own.value if own else 'no slope'}, {paper.label}: "
                    f"{bn_out.value if bn_out else 'no slope'}; refuted iff {c.label} persists, upheld iff it "
                    f"vanishes (band +-{band:g}) while BN persists and the difference interval is below 0, else "
                    f"inconclusive; {scope}"),
            extra={"comparison": [c.label, paper.label], "outcome": own.value if own else None},
            status={True: Says.PASS, None: Says.INCONCLUSIVE, False: Says.FAIL}[passed]))
    effects = [(plain, paper, "effect of removing BN (no decay)")]
    effects += [(c, plain, f"effect of wd {c.weight_decay:g} without BN") for c in sorted(grad)
                if not c.batchnorm and c.weight_decay > 0]
    for a, b, what in effects:
        d = diff(a, b)
        if d is None:
            continue
        delta, lo, hi = d
        out.append(Verdict(
            claim=f"{what} on the slope of E||d_x L||_1 vs sqrt(d), reported", reference=REFERENCE, predicted=None,
            measured=delta, interval=(lo, hi), passed=None,
            detail=f"slope({a.label}) - slope({b.label}), {pct} bootstrap of the difference; {scope}",
            extra={"comparison": [a.label, b.label]}))
    return out


def summary(rows: Sequence[dict[str, Any]], found: Sequence[Verdict]) -> list[dict[str, Any]]:
    """``trends.json`` of the experiment: per condition the slopes and accuracies, then every verdict."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if collapsed(r):
            out.append({"condition": Condition.of(r).label, "size": r["size"], "seed": r["seed"], "collapsed": True,
                        "text": f"{Condition.of(r).label} size {r['size']} seed {r['seed']}: collapsed (accuracy "
                                f"{r['final']['test']['acc']:.3f}); left out"})
    for v in found:
        c = v.extra.get("condition")
        entry: dict[str, Any] = {**v.to_json()}
        text = f"{v.claim}: {_fmt_interval(v)}"
        if c is not None:
            cond = Condition(c["batchnorm"], c["weight_decay"])
            accs = v.extra["accuracy"]
            sv = v.extra["slope_vuln_linf"]
            vtext = "n/a" if sv is None else f"{sv['slope']:+.2f} [{sv['lo']:+.2f}, {sv['hi']:+.2f}]"
            text = (f"{cond.label}: slope of E||g||_1 vs sqrt(d) {_fmt_interval(v)} -> {v.extra['outcome']}; "
                    f"of vulnerability {vtext}; accuracy "
                    + ", ".join(f"{s}px {np.mean(a):.3f}" for s, a in accs.items()))
        entry["text"] = text
        out.append(entry)
    return out


def _fmt_interval(v: Verdict) -> str:
    if v.measured is None or v.interval is None:
        return "n/a"
    mark = {Says.PASS: "pass", Says.FAIL: "FAIL", Says.INCONCLUSIVE: "inconclusive",
            Says.REPORTED: "reported"}[v.outcome]
    return f"{v.measured:+.2f} [{v.interval[0]:+.2f}, {v.interval[1]:+.2f}] ({mark})"


def plot(rows: Sequence[dict[str, Any]], out: Path | OutputFolder, seed: int = 0) -> list[Path]:
    """Figure 2 analogue by condition: ``E||d_x L||_1`` and l_inf vulnerability against ``sqrt(d)``
    (log-log, per-size bootstrap intervals, fitted slopes in the legend), test accuracy per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = [r for r in rows if not collapsed(r)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for i, key in enumerate(("grad_l1", "vuln_linf")):
        ax = axes[i]
        if not _has(live, key):
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
            continue
        guided = i > 0  # the slope-1 guide on the gradient panel only, along the first curve
        for j, (c, fit) in enumerate(fits(live, key, seed).items()):
            if fit is None:
                continue
            x, y = np.array(fit.sqrt_d), np.array(fit.mean)
            err = np.array([y - np.array(fit.mean_lo), np.array(fit.mean_hi) - y])
            ax.errorbar(x * (1 + 0.015 * (j - 2)), y, yerr=err, fmt="o", color=f"C{j}", capsize=3,
                        label=f"{c.label}: slope {fit.slope:+.2f} [{fit.lo:+.2f}, {fit.hi:+.2f}]")
            # the fitted line: the least-squares slope through the centre of the log points
            centre = np.exp(np.log(y).mean() + fit.slope * (np.log(x) - np.log(x).mean()))
            ax.plot(x, centre, "-" if c.batchnorm else "--", color=f"C{j}", lw=1)
            if not guided:
                ax.plot(x, y[0] * (x / x[0]) ** PREDICTED, ":", color="grey",
                        label="slope 1 (initialisation, Theorem 4)")
                guided = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sqrt(d)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no positive mean to fit", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("E||d_x L||_1 (test, eval mode)")
    axes[1].set_ylabel("vulnerability (l_inf PGD, share of labels changed)")
    conditions = sorted({Condition.of(r) for r in live})
    for j, c in enumerate(conditions):
        accs = _accuracy(live, c)
        sizes = np.array(list(accs))
        mean = np.array([np.mean(a) for a in accs.values()])
        span = np.array([[m - min(a), max(a) - m] for m, a in zip(mean, accs.values())]).T
        axes[2].errorbar(sizes * (1 + 0.015 * (j - 2)), mean, yerr=span, fmt="o" + ("-" if c.batchnorm else "--"),
                         color=f"C{j}", capsize=3, label=c.label)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("input side (px)")
    axes[2].set_ylabel("test accuracy (mean, min-max over seeds)")
    axes[2].legend(fontsize=7)
    r0 = live[0] if live else rows[0]
    fig.suptitle(f"BN / weight decay and d ({LEVEL:.0%} bootstrap intervals over seeds and test points; l_inf "
                 f"radius {r0['attack_eps']:g} normalised units): " + _scope(rows), fontsize=8)
    return save_figure(fig, out, "figure_batchnorm")
