"""Plots of a family study: log-log ``E||d_x f||_q`` against ``d`` and per-topology slope histograms.

Reads only the :class:`~advdim.simulate._study.FamilyResult` record; writes PNG and SVG, named
``<stem>_loglog.png`` etc. with ``stem`` a file-name-safe slug of the target's text
(:func:`advdim.paths.slug`): whatever the text holds (``/``, ``.``, ``:``), the files lie in the folder given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from advdim.simulate._study import FamilyResult

from advdim.paths import OutputFolder, slug
from advdim.verdict import status

#: the plots of one target, ``<stem>_<kind>.<ext>``
PLOT_KINDS = ("loglog", "hist")
PLOT_FORMATS = ("png", "svg")


def plot_names(stem: str) -> list[str]:
    """The file names :func:`plot_family` writes for ``stem``.

    >>> plot_names("dense")
    ['dense_loglog.png', 'dense_loglog.svg', 'dense_hist.png', 'dense_hist.svg']
    """
    return [f"{stem}_{kind}.{ext}" for kind in PLOT_KINDS for ext in PLOT_FORMATS]


def plot_family(result: FamilyResult, out_dir: str | Path | OutputFolder, stem: str | None = None) -> list[Path]:
    """Write ``<stem>_loglog.{png,svg}`` and ``<stem>_hist.{png,svg}`` into ``out_dir``
    (:func:`plot_names`; ``stem`` defaults to :func:`advdim.paths.slug` of the target's text).

    ``out_dir`` is an :class:`~advdim.paths.OutputFolder` (a user's ``--out``: an existing file is
    replaced only when advdim wrote it), or a folder the caller owns (a report's plots folder).

    Log-log panel per q (1, 2, inf): measured means with their 95% bootstrap interval, the
    fitted line, and the predicted finite-d line (when the theory gives one).  Histogram panel
    per q: per-topology slopes against the predicted slope.

    Returns:
        The written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = slug(result.family) if stem is None else stem
    folder = out_dir if isinstance(out_dir, OutputFolder) else Path(out_dir)
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
    d = np.array(result.d, dtype=np.float64)
    keys = list(result.q)
    written: list[Path] = []

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = result.q[key]
        m, lo, hi = np.array(r.means), np.array(r.lo), np.array(r.hi)
        ax.errorbar(d, m, yerr=[m - lo, hi - m], fmt="o", color="C0", capsize=3, label="measured (95% CI)")
        intercept = np.log(m).mean() - r.measured_slope * np.log(d).mean()
        ax.plot(d, np.exp(intercept + r.measured_slope * np.log(d)), "-", color="C0",
                label=f"fit: slope {r.measured_slope:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}]")
        if r.predicted_means is not None and r.predicted_slope is not None:
            ax.plot(d, r.predicted_means, "--", color="C3", label=f"theory: slope {r.predicted_slope:.3f}")
        if r.limit is not None and r.limit_slope is not None:
            lo_l, hi_l = (r.predicted_slope or 0.0) + r.limit.ci[0], (r.predicted_slope or 0.0) + r.limit.ci[1]
            ax.plot([], [], " ", label=f"infinite-width limit: slope {r.limit_slope:.3f} [{lo_l:.3f}, {hi_l:.3f}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input dimension d")
        ax.set_ylabel(f"E ||d_x f||_{key}")
        verdict = "no prediction" if r.predicted_slope is None else status(r.outcome)
        if r.outcome.judged:
            verdict += f" (power {r.power:.2f} at +-0.05)"
        ax.set_title(f"{result.family}, q={key}: {verdict}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result.family}: {result.nets} topologies x {result.draws} draws x {result.inputs} inputs "
                 f"(seed {result.seed})", fontsize=9)
    written += _save(fig, folder, f"{stem}_loglog")

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = result.q[key]
        finite = [v for v in r.per_topology if np.isfinite(v)]
        ax.hist(finite, bins=30, color="C0", alpha=0.7, label="per-topology slope")
        ax.axvline(r.measured_slope, color="C0", label="slope of the mean")
        if r.predicted_slope is not None:
            ax.axvline(r.predicted_slope, color="C3", linestyle="--", label="theory")
        ax.set_xlabel(f"slope of log ||d_x f||_{key} vs log d")
        ax.set_title(f"{result.family}, q={key}")
        ax.legend(fontsize=7)
    written += _save(fig, folder, f"{stem}_hist")
    return written


def _save(fig: Any, folder: Path | OutputFolder, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` in ``folder``, close it, return the paths."""
    fig.tight_layout()
    names = [f"{stem}.{ext}" for ext in PLOT_FORMATS]
    paths = [folder.file(n) if isinstance(folder, OutputFolder) else folder / n for n in names]
    for path in paths:
        fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
