"""The dimension experiment (Section 4.2) for any architecture: does ``E||d_x L||_1`` still grow like
``sqrt(d)`` once the nets are trained, and how does that compare with the same nets at initialisation?

Each cell trains one net (one size, one PGD eps, one seed) and keeps, for the evaluated test points,
``||d_x L||_1`` at initialisation (before the first step) and after the last epoch.  Per eps, the
slope of ``log E||d_x L||_1`` against ``log sqrt(d)`` is fitted at init and after training with the
hierarchical bootstrap over seeds and test points (:func:`advdim.stats.fit_hierarchical_slope`, 99%),
and classified in words:

- **grows** (the interval lies above 0), **grows faster than sqrt(d)** (above 1 + 0.25);
- **does not grow** (inside +-0.25: flat, the band of the batch-norm experiment), **shrinks** (below 0);
- **inconclusive** (the interval straddles 0 without lying inside the band).

The training seed is the independent unit of a trained net; with one seed per size the interval is
over test points of that one net, and the record says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from advdim.empirical._batchnorm import BAND, Outcome, classify
from advdim.empirical._figures import collapsed, save_figure

from advdim.paths import OutputFolder
from advdim.stats import HierarchicalFit, fit_hierarchical_slope

RUN_KIND = "empirical.run-dimension"
FIGURE = "figure_dimension_slopes"
WORDS = {Outcome.PERSISTS: "grows", Outcome.FASTER: "grows faster than sqrt(d)", Outcome.VANISHES: "does not grow",
         Outcome.REVERSES: "shrinks", Outcome.INCONCLUSIVE: "inconclusive"}


def word(fit: HierarchicalFit | None) -> str:
    """The classification of a fitted slope in words (``inconclusive`` without a fit)."""
    return WORDS[Outcome.INCONCLUSIVE] if fit is None else WORDS[classify(fit.lo, fit.hi, BAND)]


def _groups(rows: Sequence[dict[str, Any]], eps: float, key: str) -> list[tuple[float, list[np.ndarray]]]:
    """Per size (increasing d): ``(sqrt(d), per-seed arrays of rows' samples[key])`` at this eps."""
    by_d: dict[int, list[np.ndarray]] = {}
    for r in rows:
        if r["eps"] == eps and r.get(key, {}).get("grad_l1"):
            by_d.setdefault(int(r["d"]), []).append(np.asarray(r[key]["grad_l1"], dtype=np.float64))
    return [(math.sqrt(d), runs) for d, runs in sorted(by_d.items())]


def fits(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[float, dict[str, HierarchicalFit | None]]:
    """Per eps: the init and trained fits (collapsed runs left out of both)."""
    kept = [r for r in rows if not collapsed(r)]
    out: dict[float, dict[str, HierarchicalFit | None]] = {}
    for eps in sorted({float(r["eps"]) for r in kept}):
        out[eps] = {}
        for stage, key in (("init", "init_samples"), ("trained", "samples")):
            rng = np.random.default_rng([seed, int(round(eps * 1e9)), stage == "trained"])
            out[eps][stage] = fit_hierarchical_slope(_groups(kept, eps, key), rng)
    return out


def display_name(arch: str) -> str:
    """A target's name for a title: a user file's canonical text (an absolute ``/path/to/file.py:NAME``, the
    store key) is shown as ``file.py:NAME``, so that a figure holds no machine path.

    >>> display_name("/home/me/lab/archs.py:mycnn"), display_name("strided(channels=16)")
    ('archs.py:mycnn', 'strided(channels=16)')
    """
    path, sep, name = arch.rpartition(":")
    if sep and path.endswith(".py") and "/" in path:
        return f"{path.rsplit('/', 1)[1]}:{name}"
    return arch


def _fmt(fit: HierarchicalFit | None) -> str:
    return "n/a" if fit is None else f"{fit.slope:+.2f} [{fit.lo:+.2f}, {fit.hi:+.2f}]"


def summary(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One trend record per eps: init and trained slopes against sqrt(d), their intervals and words."""
    arch = rows[0]["arch"] if rows else "?"
    out: list[dict[str, Any]] = []
    for r in rows:
        if collapsed(r):
            out.append({"eps": r["eps"], "size": r["size"], "seed": r["seed"], "collapsed": True,
                        "text": f"eps {r['eps']:g} size {r['size']} seed {r['seed']}: collapsed (accuracy at "
                                "chance); left out of the slopes"})
    for eps, f in fits(rows, seed).items():
        init, trained = f["init"], f["trained"]
        label = "plain" if eps == 0 else f"PGD eps {eps:g}"
        seeds = sorted({int(r["seed"]) for r in rows if r["eps"] == eps})
        unit = (f"{len(seeds)} training seeds x test points" if len(seeds) > 1
                else "test points of one trained net per size (one seed: no spread over training)")
        out.append({
            "arch": arch, "eps": eps, "seeds": seeds,
            "init": None if init is None else {"slope": init.slope, "interval": [init.lo, init.hi], "says": word(init)},
            "trained": None if trained is None else {"slope": trained.slope, "interval": [trained.lo, trained.hi],
                                                     "says": word(trained)},
            "text": f"{arch}, {label}: slope of E||d_x L||_1 vs sqrt(d) at init {_fmt(init)} ({word(init)}), "
                    f"trained {_fmt(trained)} ({word(trained)}); 99% hierarchical bootstrap over {unit}"})
    return out


def plot(rows: Sequence[dict[str, Any]], out: Path | OutputFolder, seed: int = 0) -> list[Path]:
    """Init and trained slopes of ``E||d_x L||_1`` against ``sqrt(d)`` per eps, with their intervals,
    next to the means per size (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = fits(rows, seed)
    fig, (ax_means, ax_slopes) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for i, (eps, f) in enumerate(found.items()):
        label = "plain" if eps == 0 else f"PGD eps={eps:g}"
        for stage, style in (("init", "--"), ("trained", "-")):
            fit = f[stage]
            if fit is None:
                continue
            ax_means.errorbar(fit.sqrt_d, fit.mean, yerr=[np.clip(np.subtract(fit.mean, fit.mean_lo), 0, None),
                                                          np.clip(np.subtract(fit.mean_hi, fit.mean), 0, None)],
                              fmt="o" + style, color=f"C{i}", label=f"{label}, {stage}", capsize=3)
            x = i + (-0.12 if stage == "init" else 0.12)
            ax_slopes.errorbar([x], [fit.slope], yerr=[[max(fit.slope - fit.lo, 0.0)], [max(fit.hi - fit.slope, 0.0)]],
                               fmt="o",
                               color=f"C{i}", mfc="white" if stage == "init" else f"C{i}", capsize=4)
    ax_means.set(xscale="log", yscale="log", xlabel="sqrt(d)", ylabel="E||d_x L||_1 (test points)")
    ax_means.legend(fontsize=7)
    ax_slopes.axhline(1.0, color="grey", ls=":", label="sqrt(d) growth (slope 1)")
    ax_slopes.axhspan(-BAND, BAND, color="grey", alpha=0.15, label=f"does not grow (+-{BAND:g})")
    ax_slopes.set_xticks(range(len(found)), ["plain" if e == 0 else f"PGD {e:g}" for e in found])
    ax_slopes.set(ylabel="slope vs sqrt(d) (open: init, filled: trained)", title="99% hierarchical bootstrap")
    ax_slopes.legend(fontsize=7)
    arch = rows[0]["arch"] if rows else "?"
    fig.suptitle(f"Dimension experiment: {display_name(str(arch))}", fontsize=9)
    return save_figure(fig, out, FIGURE)
