"""Plots of a family study: log-log ``E||d_x f||_q`` against ``d`` and per-topology slope histograms.

Reads only the :class:`~advdim.simulate._study.FamilyResult` record; writes PNG and SVG, named
``<stem>_loglog.png`` etc. with ``stem`` a file-name-safe slug of the target's text
(:func:`advdim.paths.slug`): whatever the text holds (``/``, ``.``, ``:``), the files lie in the folder given.

Every panel says in its title what was judged and how it came out (the judged verdict of that q,
:meth:`FamilyResult.verdicts`), draws the judged line (the infinite-width limit where that is what
is judged), says when the theory's level sits off the points (the finite-width offset, not
judged), and, for rows without a law, draws the paper's ``d^(1/q - 1/2)`` through the points as a
reference.  A long target text (a spec) is shortened in the titles and written in full in a
caption under the panels; the legends sit under their panels, so nothing overlaps the data or
each other (``tests/report/test_plot_layout.py`` checks the text extents).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from advdim.simulate._result import QResult
from advdim.simulate._study import FamilyResult

from advdim.paths import OutputFolder, slug
from advdim.plotting import (
    COLOURS,
    PAPER_LAW_LABEL,
    TOKEN_LAW_LABEL,
    readable_log_axis,
    short_name,
    through_points,
    wrap,
)
from advdim.stats import paper_law_slope
from advdim.verdict import Outcome, Verdict, status

#: the plots of one target, ``<stem>_<kind>.<ext>``
PLOT_KINDS = ("loglog", "hist")
PLOT_FORMATS = ("png", "svg")
#: width of one panel and height of its plotting area, inches
PANEL_W, PLOT_H = 4.8, 3.0
#: height of one line of 7-point legend text and of 8-point caption text, inches
LEGEND_LINE, CAPTION_LINE = 0.17, 0.17
#: the colour of words and lines that were not judged
GREY = "#57606a"


def plot_names(stem: str) -> list[str]:
    """The file names :func:`plot_family` writes for ``stem``.

    >>> plot_names("dense")
    ['dense_loglog.png', 'dense_loglog.svg', 'dense_hist.png', 'dense_hist.svg']
    """
    return [f"{stem}_{kind}.{ext}" for kind in PLOT_KINDS for ext in PLOT_FORMATS]


@dataclass(frozen=True)
class _Panel:
    """What the panel of one q says was judged: ``word`` (its title), the outcome (its colour) and the
    judged verdict itself (None: no verdict names this q)."""

    word: str
    outcome: Outcome
    verdict: Verdict | None
    judged_limit: bool  # the infinite-width limit is what was judged
    fallback: bool  # the theory line is q = inf's extreme-value fallback, reported only


def _panels(result: FamilyResult) -> dict[str, _Panel]:
    """Per q, the judged verdict of :meth:`FamilyResult.verdicts` (not the "(sampled widths)" row) in words."""
    verdicts = result.verdicts()
    out = {}
    for key, r in result.q.items():
        rows = [v for v in verdicts if f"||_{key} vs d" in v.claim and not v.claim.endswith("(sampled widths)")]
        v = rows[0] if rows else None
        outcome = v.outcome if v is not None else r.outcome
        limit = v is not None and v.claim.endswith("(infinite-width limit)")
        fallback = False
        if r.predicted_slope is None and v is not None and v.extra.get("law"):
            word = f"exponent-only law d^(1/q-1), its 1/N term fitted: {v.extra.get('consistency')}"
        elif r.predicted_slope is None:
            word = (v.extra.get("consistency") if v is not None else None) or "not tested"
            word = f"no law, not judged; the paper's d^(1/q-1/2): {word}"
        elif not outcome.judged:
            fallback = key == "inf"
            word = ("not judged: the q = inf law is not validated on this net (the line is the extreme-value "
                    "fallback)" if fallback else "reported, not judged")
        else:
            what = "slope at infinite width vs theory" if limit else "slope vs theory"
            power = "" if v is None or v.power is None else f" (power {v.power:.2f} at +-0.05)"
            word = f"judged: {what}: {status(outcome)}{power}"
        out[key] = _Panel(word, outcome, v, limit, fallback)
    return out


def _budget(result: FamilyResult) -> str:
    units = "independent nets" if result.fixed else "topologies"
    draws, inputs = (f"{n} {w}{'s' if n != 1 else ''}" for n, w in ((result.draws, "draw"), (result.inputs, "input")))
    return f"{result.nets} {units} x {draws} x {inputs} (seed {result.seed})"


def _figure(n: int, caption: str | None) -> tuple[Any, Any, list[Any], list[Any]]:
    """A constrained figure: ``n`` plotting panels, a legend area under each, and a caption row
    (:func:`_fit_heights` sizes the rows once the legends are known)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(layout="constrained")
    grid = fig.add_gridspec(3 if caption is not None else 2, n)
    axes = [fig.add_subplot(grid[0, i]) for i in range(n)]
    legends = [fig.add_subplot(grid[1, i]) for i in range(n)]
    for ax in legends:
        ax.axis("off")
    if caption is not None:
        cap = fig.add_subplot(grid[2, :])
        cap.axis("off")
        cap.text(0.0, 1.0, caption, ha="left", va="top", fontsize=8, color=GREY, transform=cap.transAxes)
    return fig, grid, axes, legends


def _fit_heights(fig: Any, grid: Any, n: int, legend_lines: int, caption: str | None) -> None:
    """Size the figure: the plotting row, the legend row (``legend_lines`` lines) and the caption row."""
    heights = [PLOT_H, LEGEND_LINE * legend_lines + 0.15]
    if caption is not None:
        heights.append(CAPTION_LINE * (caption.count("\n") + 1) + 0.1)
    grid.set_height_ratios(heights)
    fig.set_size_inches(PANEL_W * n, sum(heights) + 1.1)


def _caption(result: FamilyResult, width: float) -> str | None:
    """The full target text, when the titles show a shortened one."""
    if short_name(result.family) == result.family:
        return None
    return wrap(f"target: {result.family}", width - 0.3, 8, max_lines=6)


def _legend(ax: Any, handles: list[Any], labels: list[str]) -> int:
    """The legend of one panel in its area under it; returns its number of text lines."""
    texts = [wrap(lab, PANEL_W - 0.4, 7, max_lines=2) for lab in labels]
    ax.legend(handles, texts, loc="upper center", fontsize=7, frameon=False, borderaxespad=0.0)
    return sum(t.count("\n") + 1 for t in texts)


def _loglog_panel(ax: Any, result: FamilyResult, key: str, r: QResult, panel: _Panel) -> tuple[list[Any], list[str]]:
    """Draw one q's log-log panel; return its legend entries."""
    from matplotlib.lines import Line2D

    d = np.array(result.d, dtype=np.float64)
    m, lo, hi = np.array(r.means), np.array(r.lo), np.array(r.hi)
    entries: list[tuple[Any, str]] = []
    bars = ax.errorbar(d, m, yerr=[m - lo, hi - m], fmt="o", color="C0", capsize=3, zorder=3)
    entries.append((bars, "measured mean, 95% interval"))
    fit_judged = panel.outcome.judged and not panel.judged_limit and r.predicted_slope is not None
    (fit,) = ax.plot(d, through_points(d, m, r.measured_slope), "-", color="C0", lw=1.3)
    entries.append((fit, f"fit at the sampled widths{' (judged)' if fit_judged else ''}: slope "
                         f"{r.measured_slope:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}]"))
    if r.predicted_means is not None and r.predicted_slope is not None:
        colour = GREY if panel.fallback else "C3"
        level = result.levels.get(key)
        what = ("extreme-value fallback, not judged" if panel.fallback
                else f"theory, finite-d law{f' ({level})' if level else ''}")
        (th,) = ax.plot(d, r.predicted_means, "--", color=colour, lw=1.3)
        entries.append((th, f"{what}: slope {r.predicted_slope:.3f}"))
        pred = np.array(r.predicted_means)
        if np.all((pred > hi) | (pred < lo)):  # the theory's level lies off every interval
            off = float(np.exp(np.mean(np.log(pred / m))) - 1)
            entries.append((Line2D([], [], linestyle="none"),
                            f"theory {abs(100 * off):.0f}% {'above' if off > 0 else 'below'} the points: "
                            + ("its error" if panel.fallback else "the finite-width offset")
                            + " (only the slope is judged)"))
    limit = r.limit_slope if panel.judged_limit else None
    if limit is not None and r.limit is not None and r.predicted_slope is not None:
        lo_l, hi_l = r.predicted_slope + r.limit.ci[0], r.predicted_slope + r.limit.ci[1]
        (lim,) = ax.plot(d, through_points(d, m, limit), "-.", color="C2", lw=1.6, zorder=4)
        entries.append((lim, f"infinite-width limit (judged): slope {limit:.3f} [{lo_l:.3f}, {hi_l:.3f}], "
                             "drawn through the points"))
    if r.predicted_slope is None:
        ref, label = _reference(result, key)
        (pl,) = ax.plot(d, through_points(d, m, ref), ":", color=GREY, lw=1.6)
        entries.append((pl, label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax, "x", result.d)
    readable_log_axis(ax, "y")
    ax.set_xlabel("input dimension d", fontsize=9)
    ax.set_ylabel(f"E ||d_x f||_{key}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.25)
    return _finish(ax, key, panel, entries)


def _reference(result: FamilyResult, key: str) -> tuple[float, str]:
    """The reference slope of a row without a prediction, and its label: the paper's exponent, or a
    token-readout network's own (its asymptotic ``1/q - 1``, with the log factor of q = inf)."""
    law = result.token_law
    if law is None:
        return paper_law_slope(result.d, key), PAPER_LAW_LABEL
    from advdim.theory._tokens import exponent

    return (paper_law_slope(result.d, key) - 0.5 if key == "inf" else exponent(key)), TOKEN_LAW_LABEL


def _finish(ax: Any, key: str, panel: _Panel, entries: list[tuple[Any, str]]) -> tuple[list[Any], list[str]]:
    """Title the panel with what was judged; label each drawn artist with its legend text (the legend
    itself lies under the panel); return the legend entries."""
    ax.set_title(wrap(f"q = {key}: {panel.word}", PANEL_W - 0.5, 9), fontsize=9, color=_colour(panel))
    for handle, label in entries:
        handle.set_label(label)
    return [h for h, _ in entries], [lab for _, lab in entries]


def _colour(panel: _Panel) -> str:
    return COLOURS[panel.outcome] if panel.outcome.judged else GREY


def _hist_panel(ax: Any, result: FamilyResult, key: str, r: QResult, panel: _Panel) -> tuple[list[Any], list[str]]:
    from matplotlib.ticker import MaxNLocator

    finite = [v for v in r.per_topology if np.isfinite(v)]
    entries: list[tuple[Any, str]] = []
    units = "independent net" if result.fixed else "topology"
    *_, bars = ax.hist(finite, bins=30, color="C0", alpha=0.7)
    entries.append((bars, f"slope per {units}"))
    entries.append((ax.axvline(r.measured_slope, color="C0"), f"slope of the mean: {r.measured_slope:.3f}"))
    if r.predicted_slope is not None:
        colour, what = (GREY, "extreme-value fallback, not judged") if panel.fallback else ("C3", "theory")
        entries.append((ax.axvline(r.predicted_slope, color=colour, linestyle="--"),
                        f"{what}: {r.predicted_slope:.3f}"))
    if panel.judged_limit and r.limit_slope is not None:
        entries.append((ax.axvline(r.limit_slope, color="C2", linestyle="-."),
                        f"infinite-width limit (judged): {r.limit_slope:.3f}"))
    if r.predicted_slope is None:
        ref, label = _reference(result, key)
        entries.append((ax.axvline(ref, color=GREY, linestyle=":", lw=1.6), label))
    ax.set_xlabel(f"slope of log ||d_x f||_{key} vs log d", fontsize=9)
    ax.set_ylabel("independent nets" if result.fixed else "topologies", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.tick_params(labelsize=8)
    return _finish(ax, key, panel, entries)


def plot_family(result: FamilyResult, out_dir: str | Path | OutputFolder, stem: str | None = None) -> list[Path]:
    """Write ``<stem>_loglog.{png,svg}`` and ``<stem>_hist.{png,svg}`` into ``out_dir``
    (:func:`plot_names`; ``stem`` defaults to :func:`advdim.paths.slug` of the target's text).

    ``out_dir`` is an :class:`~advdim.paths.OutputFolder` (a user's ``--out``: an existing file is
    replaced only when advdim wrote it), or a folder the caller owns (a report's plots folder).

    Log-log panel per q (1, 2, inf): measured means with their 95% bootstrap interval, the
    fitted line, the predicted finite-d line (when the theory gives one), the judged
    infinite-width limit (where one is fitted) and, without a law, the paper's law as a reference.
    Histogram panel per q: per-topology slopes against the same slopes.

    Returns:
        The written paths.
    """
    stem = slug(result.family) if stem is None else stem
    folder = out_dir if isinstance(out_dir, OutputFolder) else Path(out_dir)
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for kind, fig in draw_family(result).items():
        written += _save(fig, folder, f"{stem}_{kind}")
    return written


def draw_family(result: FamilyResult) -> dict[str, Any]:
    """The figures of :func:`plot_family`, not yet saved: ``{"loglog": Figure, "hist": Figure}``."""
    import matplotlib

    matplotlib.use("Agg")
    keys = list(result.q)
    panels = _panels(result)
    caption = _caption(result, PANEL_W * len(keys))
    title = wrap(f"{short_name(result.family)}: {_budget(result)}", PANEL_W * len(keys) - 0.4, 10, max_lines=2)
    figs = {}
    for kind, draw in (("loglog", _loglog_panel), ("hist", _hist_panel)):
        fig, grid, axes, legends = _figure(len(keys), caption)
        lines = 0
        for ax, leg, key in zip(axes, legends, keys):
            lines = max(lines, _legend(leg, *draw(ax, result, key, result.q[key], panels[key])))
        _fit_heights(fig, grid, len(keys), lines, caption)
        fig.suptitle(title, fontsize=10)
        figs[kind] = fig
    return figs


def _save(fig: Any, folder: Path | OutputFolder, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` in ``folder``, close it, return the paths."""
    names = [f"{stem}.{ext}" for ext in PLOT_FORMATS]
    paths = [folder.file(n) if isinstance(folder, OutputFolder) else folder / n for n in names]
    for path in paths:
        fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
