"""The report of ``advdim verify`` and ``advdim measure``: a folder people can read at a glance.

:func:`write_report` stores every verdict as a record in the folder's run store
(``runs.sqlite``), then reads the records back and derives everything else from them alone
(STYLE point 10: plots and reports read only from records):

- ``report.html``: self-contained (CSS inline, every plot embedded as a base64 ``data:`` image):
  the overall outcome, the verdict table, the plots with how to read them, the exact command,
  versions, seeds, device and the time each check took;
- ``plots/*.png`` and ``plots/*.svg``: each plot in both formats;
- ``verdicts.csv`` / ``verdicts.parquet`` (one row per verdict) and ``series.csv`` /
  ``series.parquet`` (the data points of every plot, long form).

Every row says pass, FAIL, inconclusive or n/a (:class:`advdim.verdict.Outcome`: a passed test
without the power to see the smallest error its claim is about is inconclusive); the outcome badge,
the counts and the colours tell the four apart, and :func:`exit_status` maps them to the exit
status of ``verify`` / ``measure`` / ``simulate`` (0 every judged claim passed, 1 one failed, 3 none
failed but one is inconclusive).

Plots come from the verdicts' ``extra`` (see :class:`advdim.verdict.Verdict`): ``"series"`` are
drawn here from the record's numbers; ``"plots"`` are files a check drew itself, embedded as they
are.  Every report also has the *verdict overview* (each verdict's measured and predicted value
placed in its interval) and the *timings* plot.

    >>> import tempfile
    >>> from advdim.verdict import Verdict
    >>> v = Verdict("slope of E||d_x f||_1 in d", "Theorem 4", 0.5, 0.49, (0.45, 0.53), True, power=0.93,
    ...             resolution="slope +-0.05")
    >>> rows = verdict_rows("demo", "core", 0.1, [v])
    >>> info = RunInfo(title="demo", command="advdim verify", seed=0, device="cpu")
    >>> files = write_report(tempfile.mkdtemp(), rows, info)
    >>> sorted(p.name for p in files.tables)
    ['series.csv', 'series.parquet', 'verdicts.csv', 'verdicts.parquet']
    >>> "Theorem 4" in files.html.read_text()
    True
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from advdim.errors import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from advdim.paths import slug
from advdim.plotting import (  # noqa: F401 - the plot helpers, re-exported
    COLOURS,
    PAPER_LAW_LABEL,
    TOKEN_LAW_LABEL,
    chars_per_line,
    readable_log_axis,
    short_name,
    through_points,
    wrap,
)
from advdim.store import RunStore, versions
from advdim.verdict import MIN_POWER, WORDS, Outcome, Verdict, status

#: the word of each outcome in tables (FAIL in capitals, to stand out)
#: CSS class of each outcome's table row
_CLASSES = {Outcome.PASS: "pass", Outcome.FAIL: "fail", Outcome.INCONCLUSIVE: "inconclusive", Outcome.REPORTED: "na"}
_PART_TITLES = {"core": "Core", "theory": "Theory (symbolic derivations)",
                "simulate": "Simulation (Monte Carlo at initialisation)", "empirical": "Training on real images",
                "measure": "Your model"}
_PART_COLOURS = {"core": "#6e7781", "theory": "#8250df", "simulate": "#0969da", "empirical": "#bf8700",
                 "measure": "#0969da"}


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run itself (stored as the ``run`` record).

    Attributes:
        title: heading of the report.
        command: the exact command line.
        seed: seed of every random draw.
        device: the device the numbers were computed on (resolved, e.g. ``"cpu"``).
        scale: the budget scale (``None`` when not applicable).
        seconds: wall-clock time of the whole run.
        notes: lines shown under the heading (e.g. parts not yet available, a model measured at
            one size only).
        settings: other settings worth printing (name -> text).
    """

    title: str
    command: str
    seed: int
    device: str
    scale: str | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote."""

    folder: Path
    html: Path
    store: Path
    plots: tuple[Path, ...]
    tables: tuple[Path, ...]
    run_id: str


def verdict_rows(check: str, part: str, seconds: float, verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Flatten the verdicts of one check into report rows (``Verdict.to_json`` plus the check's
    name, part and run time)."""
    return [{"check": check, "part": part, "seconds": float(seconds), **v.to_json()} for v in verdicts]


def row_outcome(row: dict[str, Any]) -> Outcome:
    """What a verdict row (``Verdict.to_json``, possibly read back from a store) says.

    Its ``"outcome"``; a row stored before verdicts had one gets :attr:`Verdict.outcome`'s rule
    from its ``passed``, ``power`` and ``status`` (so an old "passed" without power is inconclusive).
    """
    if row.get("outcome") is not None:
        return Outcome(row["outcome"])
    if row.get("status") is not None:
        return Outcome(row["status"])
    passed, power = row.get("passed"), row.get("power")
    if passed is None:
        return Outcome.REPORTED
    if not passed:
        return Outcome.FAIL
    return Outcome.PASS if power is not None and power >= MIN_POWER else Outcome.INCONCLUSIVE


def counts(rows: Sequence[dict[str, Any]]) -> dict[Outcome, int]:
    """How many rows say each outcome (every outcome present, zeros included)."""
    out = dict.fromkeys(Outcome, 0)
    for r in rows:
        out[row_outcome(r)] += 1
    return out


def summary_line(n: dict[Outcome, int]) -> str:
    """``"3 passed, 0 failed, 1 inconclusive, 2 n/a (reported, not judged)"``."""
    return (f"{n[Outcome.PASS]} passed, {n[Outcome.FAIL]} failed, {n[Outcome.INCONCLUSIVE]} inconclusive, "
            f"{n[Outcome.REPORTED]} n/a (reported, not judged)")


def exit_status(n: dict[Outcome, int]) -> int:
    """The exit status of a command that judges claims: 1 (``EXIT_FAILED``) when one failed, else 3
    (``EXIT_INCONCLUSIVE``) when one is inconclusive, else 0 (every judged claim passed, or none was
    judged)."""
    if n[Outcome.FAIL]:
        return EXIT_FAILED
    return EXIT_INCONCLUSIVE if n[Outcome.INCONCLUSIVE] else EXIT_OK


def overall(n: dict[Outcome, int]) -> Outcome:
    """The outcome of a whole run: fail if one row fails, else inconclusive if one is, else pass."""
    return Outcome.FAIL if n[Outcome.FAIL] else Outcome.INCONCLUSIVE if n[Outcome.INCONCLUSIVE] else Outcome.PASS


def fmt(v: Any) -> str:
    """A number in 4 significant digits, ``-`` for none."""
    if v is None:
        return "-"
    if isinstance(v, str):  # the store writes infinities as strings
        return v
    return f"{v:.4g}"


def fmt_interval(iv: Any) -> str:
    return "-" if not iv else f"[{fmt(iv[0])}, {fmt(iv[1])}]"


def git_commit() -> str | None:
    """The commit of the advdim checkout, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
def _store_run(store: RunStore, rows: list[dict[str, Any]], info: RunInfo) -> str:
    run_id = uuid.uuid4().hex
    meta = {**asdict(info), "notes": list(info.notes), "versions": versions(), "git": git_commit(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(time.time() - info.seconds))}
    store.put("run", {"run": run_id}, meta)
    for i, row in enumerate(rows):
        store.put("verdict", {"run": run_id, "index": i}, row)
    return run_id


def _load_run(store: RunStore, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta = store.get("run", {"run": run_id})
    assert meta is not None
    recs = [r for r in store.records("verdict") if r["config"]["run"] == run_id]
    recs.sort(key=lambda r: r["config"]["index"])
    return meta, [r["result"] for r in recs]


def _nums(vals: Sequence[Any]) -> list[float]:
    """Numbers for plotting: none becomes NaN (a gap)."""
    return [math.nan if (x := _num(v)) is None else x for v in vals]


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(v)
    return float(v)


def _series_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    s = (row.get("extra") or {}).get("series")
    if not s:
        return []
    return [x for x in (s if isinstance(s, list) else [s]) if isinstance(x, dict) and x.get("x") and x.get("y")]


# ---------------------------------------------------------------------------------------------
# Plot helpers shared with advdim.simulate's plots: titles that fit, ticks that read, reference lines
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Figure:
    name: str  # file stem
    title: str
    caption: str
    png: Path
    svg: Path | None
    part: str = ""


def _save(fig: Any, folder: Path, name: str) -> tuple[Path, Path]:
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png, svg


def _overview_plot(rows: list[dict[str, Any]], folder: Path) -> _Figure | None:
    """Each verdict with an interval: measured and predicted placed in the interval mapped to [-1, 1]."""
    import matplotlib.pyplot as plt

    items = []
    for i, r in enumerate(rows):
        iv = r.get("interval")
        if not iv:
            continue
        lo, hi = _num(iv[0]), _num(iv[1])
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        c, h = (lo + hi) / 2, (hi - lo) / 2
        if h <= 0:
            h = max(abs(c) * 1e-9, 1e-12)

        def pos(v: Any, c: float = c, h: float = h) -> float | None:
            x = _num(v)
            return None if x is None or not math.isfinite(x) else max(-3.0, min(3.0, (x - c) / h))

        items.append((i + 1, r, pos(r.get("measured")), pos(r.get("predicted"))))
    if not items:
        return None
    n = len(items)
    fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.3 * n), layout="constrained")
    for k, (_, r, m, p) in enumerate(items):
        y = n - 1 - k
        col = COLOURS[row_outcome(r)]
        ax.plot([-1, 1], [y, y], color="#d0d7de", lw=6, solid_capstyle="butt", zorder=1)
        if p is not None:
            ax.plot(p, y, marker="D", ms=6, mfc="white", mec="black", zorder=3)
        if m is not None:
            ax.plot(m, y, marker="o", ms=7, color=col, zorder=4)
    labels = [f"#{idx} {short_name(str(r['claim']), 60)}" for idx, r, _, _ in items]
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels[::-1], fontsize=8)
    for tick, (_, r, _, _) in zip(ax.get_yticklabels(), items[::-1]):
        tick.set_color(COLOURS[row_outcome(r)])
    ax.axvline(0, color="#8c959f", lw=0.8, ls=":")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("position in the verdict's interval (-1 = low end, +1 = high end; clipped at +-3)")
    shown = {row_outcome(r) for _, r, _, _ in items}
    for o in Outcome:
        if o in shown:
            ax.plot([], [], "o", color=COLOURS[o], label=f"measured ({WORDS[o]})")
    ax.plot([], [], "D", mfc="white", mec="black", label="predicted")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("Verdict overview")
    png, svg = _save(fig, folder, "verdicts")
    return _Figure("verdicts", "Verdict overview",
                   "One row per verdict that has an interval. The grey bar is the interval, rescaled so that its "
                   "ends sit at -1 and +1; the dot is the measured value (green: pass, red: FAIL, amber: "
                   "inconclusive, grey: n/a), the white diamond the predicted value. A claim holds when the "
                   "prediction and the measurement agree within the interval and the test had the power to see "
                   "the smallest error the claim is about; inside the bar without that power it is inconclusive.",
                   png, svg)


#: the suffixes simulate gives the two rows of a q judged at infinite width (advdim.simulate)
_SAMPLED, _LIMIT = " (sampled widths)", " (infinite-width limit)"
#: width of a series plot, and height of its plotting area, inches
_SERIES_W, _SERIES_H = 6.4, 3.6


@dataclass(frozen=True)
class _Drawn:
    """One series as drawn: its row, the data, and the verdict that judges it (the row itself, or the
    infinite-width row simulate pairs with a "(sampled widths)" row)."""

    row: dict[str, Any]
    series: dict[str, Any]
    judge: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.series.get("label") or self.row["claim"])

    @property
    def limit(self) -> bool:
        return self.judge is not self.row

    @property
    def reference_slope(self) -> float | None:
        """The paper's ``d^(1/q - 1/2)`` slope of a row without a law that states its consistency with it
        (a token-readout network's row: its own exponent-only law's)."""
        extra = self.row.get("extra") or {}
        if self.series.get("predicted") or not extra.get("consistency"):
            return None
        return _num(extra.get("law_slope", extra.get("paper_law_slope")))

    @property
    def reference_label(self) -> str:
        return TOKEN_LAW_LABEL if (self.row.get("extra") or {}).get("law_slope") is not None else PAPER_LAW_LABEL

    def phrase(self) -> str:
        """What was judged on this series, and the outcome: "slope at infinite width: pass (power 0.93)"."""
        outcome = row_outcome(self.judge)
        if not outcome.judged:
            consistency = (self.row.get("extra") or {}).get("consistency")
            if consistency and (self.row.get("extra") or {}).get("law"):
                return f"{self.row['extra']['law']}: {consistency}"
            if consistency:
                return f"no law; paper's law: {consistency} (not judged)"
            return "reported, not judged" + (" (its dashed line is not validated here)" if self.series.get("predicted")
                                             else "")
        power = _num(self.judge.get("power"))
        what = "slope at infinite width: " if self.limit else ""
        return f"{what}{status(outcome)}" + ("" if power is None else f" (power {power:.2f})")


def _pair_limits(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """For each "(sampled widths)" row (by index), the judged "(infinite-width limit)" row of the same check."""
    by_claim = {(r["check"], r["claim"]): r for r in rows}
    out = {}
    for i, r in enumerate(rows):
        claim = str(r["claim"])
        if claim.endswith(_SAMPLED):
            twin = by_claim.get((r["check"], claim[: -len(_SAMPLED)] + _LIMIT))
            if twin is not None:
                out[i] = twin
    return out


def _draw_series(ax: Any, item: _Drawn, colour: str, loglog: bool) -> list[str]:
    """Draw one series on ``ax``; return its notes for the legend (the theory's level off the points)."""
    x, y = _nums(item.series["x"]), _nums(item.series["y"])
    s = item.series
    notes = []
    if s.get("lo") and s.get("hi"):
        ax.fill_between(x, _nums(s["lo"]), _nums(s["hi"]), color=colour, alpha=0.18, lw=0)
    ax.plot(x, y, "o", color=colour, zorder=3)
    if s.get("fit"):
        ax.plot(x, _nums(s["fit"]), "-", color=colour, lw=1.2)
    if s.get("predicted"):
        pred = _nums(s["predicted"])
        ax.plot(x, pred, "--", color=colour, lw=1.2, alpha=0.9)
        lo, hi = _nums(s.get("lo") or y), _nums(s.get("hi") or y)
        pairs = [(p, m, a, b) for p, m, a, b in zip(pred, y, lo, hi) if p > 0 and m > 0]
        if pairs and all(p > b or p < a for p, _, a, b in pairs):  # the theory's level lies off every interval
            off = math.exp(sum(math.log(p / m) for p, m, _, _ in pairs) / len(pairs)) - 1
            judged = "the slope is judged, not the level" if row_outcome(item.judge).judged else "not judged"
            notes.append(f"{item.label}: theory level {abs(100 * off):.0f}% {'above' if off > 0 else 'below'} the "
                         f"points (finite width; {judged})")
    if item.limit and loglog and _num(item.judge.get("measured")) is not None:
        ax.plot(x, through_points(x, y, float(item.judge["measured"])), "-.", color=colour, lw=1.6, zorder=4,
                label=f"{item.label}: infinite-width limit (judged)")
    ref = item.reference_slope
    if ref is not None and loglog:
        ax.plot(x, through_points(x, y, ref), ":", color=colour, lw=1.8, label=f"{item.label}: {item.reference_label}")
    return notes


def _series_plots(rows: list[dict[str, Any]], folder: Path) -> list[_Figure]:
    """One figure per ``series["figure"]``: the points with their band, the fitted, predicted and judged
    lines, the paper's law through the points of rows without a law, and a line saying what was judged."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    limits = _pair_limits(rows)
    groups: dict[str, list[_Drawn]] = {}
    for i, r in enumerate(rows):
        for s in _series_of(r):
            groups.setdefault(str(s.get("figure") or r["claim"]), []).append(_Drawn(r, s, limits.get(i, r)))
    figs = []
    used: set[str] = set()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for title, members in groups.items():
        fig = plt.figure(layout="constrained")
        grid = fig.add_gridspec(2, 1)
        ax, key_ax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
        key_ax.axis("off")
        loglog = all(bool(m.series.get("loglog", False)) for m in members)
        handles: list[Any] = []
        labels: list[str] = []
        notes: list[str] = []
        for k, m in enumerate(members):
            colour = cycle[k % len(cycle)]
            notes += _draw_series(ax, m, colour, loglog)
            handles.append(Line2D([], [], marker="o", linestyle="none", color=colour))
            labels.append(f"{m.label}: {m.phrase()}")
        xs = [v for m in members for v in _nums(m.series["x"]) if math.isfinite(v)]
        wide_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 1e3  # decades of x (e.g. eps): log axis
        if loglog or wide_x or any(m.series.get("logx") for m in members):
            ax.set_xscale("log")
            readable_log_axis(ax, "x", xs)
        if loglog or any(m.series.get("logy") for m in members):
            ax.set_yscale("log")
            readable_log_axis(ax, "y")
        ax.set_xlabel(str(members[0].series.get("xlabel", "x")), fontsize=9)
        ax.set_ylabel(str(members[0].series.get("ylabel", "y")), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.25)
        styles: list[tuple[Any, str, bool]] = [("-", "fitted", any(m.series.get("fit") for m in members)),
                  ("--", "theory (finite-d law)", any(m.series.get("predicted") for m in members)),
                  ("-.", "infinite-width limit (judged), drawn through the points",
                   loglog and any(m.limit for m in members)),
                  (":", next((m.reference_label for m in members if m.reference_slope is not None), PAPER_LAW_LABEL),
                   loglog and any(m.reference_slope is not None for m in members))]
        for style, text, shown in styles:
            if shown:
                handles.append(Line2D([], [], color="black", linestyle=style, lw=1.3))
                labels.append(text)
        for note in notes:
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(note)
        texts = [wrap(lab, _SERIES_W - 0.6, 7, max_lines=3) for lab in labels]
        key_ax.legend(handles, texts, loc="upper center", fontsize=7, frameon=False, borderaxespad=0.0)
        lines = sum(t.count("\n") + 1 for t in texts)
        word = _panel_word(members)
        ax.set_title(wrap(word, _SERIES_W - 0.5, 8, max_lines=3), fontsize=8, color="#57606a")
        heading = wrap(title, _SERIES_W - 0.3, 10, max_lines=4)
        fig.suptitle(heading, fontsize=10)
        grid.set_height_ratios([_SERIES_H, 0.15 * lines + 0.1])
        n_title = heading.count("\n") + 1
        fig.set_size_inches(_SERIES_W, _SERIES_H + 0.15 * lines + 0.25 * n_title + 0.9)
        name = "series-" + slug(title)
        while name in used:
            name += "-"
        used.add(name)
        png, svg = _save(fig, folder, name)
        figs.append(_Figure(name, title,
                            "Points: measured values (band: their confidence interval); solid line: the fitted law; "
                            "dashed line: the law the paper predicts (its level at finite width may sit off the "
                            "points: the slope is what is judged); dash-dot: the judged infinite-width slope, "
                            "drawn through the points; dotted: the paper's d^(1/q-1/2) through the points, a "
                            "reference for rows without a law. The line under the title says what was judged"
                            + (" (log-log axes: a power law d^a is a straight line of slope a)." if loglog else "."),
                            png, svg, str(members[0].row["part"])))
    return figs


def _panel_word(members: list[_Drawn]) -> str:
    """The line under a series plot's title: what was judged on it (each series' outcome is in the legend)."""
    judged = [m for m in members if row_outcome(m.judge).judged]
    others = [m.label for m in members if not row_outcome(m.judge).judged]
    slopes = all(m.series.get("loglog") for m in members) and any(m.series.get("predicted") for m in judged)
    if not judged:
        if any(m.reference_label == TOKEN_LAW_LABEL for m in members if m.reference_slope is not None):
            return ("no path-sum law here; the token-readout law d^(1/q-1) (exponent only) is drawn through the "
                    "points, its consistency in the legend")
        if any(m.reference_slope is not None for m in members):
            return "nothing judged: no law here; the paper's d^(1/q-1/2) is drawn through the points for reference"
        return "nothing judged: values reported"
    if slopes:
        where = "at infinite width " if any(m.limit for m in judged) else ""
        head = f"judged: each slope {where}against the theory's (its level is not judged)"
    else:
        claims = list(dict.fromkeys(str(m.judge["claim"]) for m in judged))
        head = (f"judged: {claims[0]}" if len(claims) == 1 else
                "judged: the claim of each series (outcomes in the legend)")
    return head + (f"; not judged: {', '.join(others)}" if others else "")


def _timing_plot(rows: list[dict[str, Any]], folder: Path) -> _Figure | None:
    import matplotlib.pyplot as plt

    seen: dict[str, tuple[str, float]] = {}
    for r in rows:
        seen.setdefault(r["check"], (r["part"], float(r["seconds"])))
    if not seen:
        return None
    names = list(seen)
    fig, ax = plt.subplots(figsize=(7.5, 1.1 + 0.32 * len(names)), layout="constrained")
    ax.barh(range(len(names))[::-1], [seen[n][1] for n in names],
            color=[_PART_COLOURS.get(seen[n][0], "#6e7781") for n in names])
    ax.set_yticks(range(len(names))[::-1])
    ax.set_yticklabels([f"{n} ({seen[n][0]})" for n in names], fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title("Time per check")
    png, svg = _save(fig, folder, "timings")
    return _Figure("timings", "Time per check", "Wall-clock seconds each check took, coloured by part.", png, svg)


def _external_plots(rows: list[dict[str, Any]], folder: Path) -> list[_Figure]:
    figs, seen = [], set()
    for r in rows:
        for p in (r.get("extra") or {}).get("plots") or []:
            src = Path(p)
            if src.suffix.lower() not in (".png", ".svg") or not src.is_file() or src in seen:
                continue
            seen.add(src)
            dst = folder / src.name
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            twin = src.with_suffix(".svg" if src.suffix.lower() == ".png" else ".png")
            if src.suffix.lower() == ".svg" and twin.is_file():
                continue  # the PNG twin is embedded; the SVG is linked
            svg = None
            if twin.is_file() and twin.suffix == ".svg":
                svg = folder / twin.name
                if twin.resolve() != svg.resolve():
                    shutil.copyfile(twin, svg)
            figs.append(_Figure(dst.stem, f"{r['check']}: {dst.stem}",
                                f"Drawn by the check '{r['check']}' ({r['reference']}) from its own data.", dst, svg,
                                str(r["part"])))
    return figs


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _write_tables(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    import pandas as pd

    flat = []
    for i, r in enumerate(rows):
        iv = r.get("interval") or [None, None]
        flat.append({"index": i + 1, "check": r["check"], "part": r["part"], "seconds": r["seconds"],
                     "claim": r["claim"], "reference": r["reference"], "predicted": _num(r.get("predicted")),
                     "measured": _num(r.get("measured")), "lo": _num(iv[0]), "hi": _num(iv[1]),
                     "verdict": status(row_outcome(r)), "power": _num(r.get("power")),
                     "resolution": r.get("resolution") or "", "detail": r.get("detail", ""),
                     "extra": json.dumps(r.get("extra") or {}, sort_keys=True)})
    series = []
    for i, r in enumerate(rows):
        for s in _series_of(r):
            for j in range(len(s["x"])):
                def at(key: str, s: dict[str, Any] = s, j: int = j) -> float | None:
                    vals = s.get(key)
                    return _num(vals[j]) if vals and j < len(vals) else None

                series.append({"index": i + 1, "check": r["check"], "claim": r["claim"],
                               "figure": str(s.get("figure") or r["claim"]), "label": str(s.get("label") or ""),
                               "x": at("x"), "y": at("y"), "lo": at("lo"), "hi": at("hi"),
                               "predicted": at("predicted"), "fit": at("fit")})
    cols = ["index", "check", "claim", "figure", "label", "x", "y", "lo", "hi", "predicted", "fit"]
    out = []
    for name, data, columns in (("verdicts", flat, None), ("series", series, cols)):
        df = pd.DataFrame(data, columns=columns) if columns else pd.DataFrame(data)
        for c in ("predicted", "measured", "lo", "hi", "power", "x", "y", "fit"):
            if c in df:
                df[c] = df[c].astype("float64")
        df.to_csv(folder / f"{name}.csv", index=False)
        df.to_parquet(folder / f"{name}.parquet", index=False)
        out += [folder / f"{name}.csv", folder / f"{name}.parquet"]
    return out


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 6px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.badge{display:inline-block;padding:6px 14px;border-radius:6px;color:#fff;font-weight:600;font-size:16px}
.pass-bg{background:#1a7f37}.fail-bg{background:#cf222e}.na-bg{background:#6e7781}.inc-bg{background:#9a6700}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #d0d7de;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eaeef2}td.num{font-family:ui-monospace,Menlo,monospace;white-space:nowrap}
tr.fail td{background:#ffebe9}tr.fail td.v{color:#cf222e;font-weight:700}tr.pass td.v{color:#1a7f37;font-weight:600}
tr.na td.v{color:#6e7781}tr.inconclusive td{background:#fff8c5}tr.inconclusive td.v{color:#9a6700;font-weight:600}
.detail{color:#57606a;font-size:11px;margin-top:2px}
pre{background:#fff;border:1px solid #d0d7de;padding:8px;overflow-x:auto;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{background:#fff;border:1px solid #d0d7de;margin:0;padding:10px;flex:1 1 520px;max-width:575px}
figure.wide{flex:1 1 100%;max-width:100%}h3{font-size:15px;margin:18px 0 8px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#57606a;max-width:640px;margin-top:6px}
.wide img{max-width:1140px}.note{color:#9a6700}
"""


def _level_html(row: dict[str, Any]) -> str:
    """The level of the law behind a row's prediction (exact, wide-limit, approximate, fallback), under it."""
    level = (row.get("extra") or {}).get("level")
    if not level or row.get("predicted") is None:
        return ""
    return f'<div class="detail level">{html.escape(str(level))}</div>'


def _power_html(row: dict[str, Any]) -> str:
    """The power of a judged row under its word, e.g. "power 0.12 against slope +-0.05"."""
    power = _num(row.get("power"))
    if power is None or row_outcome(row) is Outcome.REPORTED:
        return ""
    against = f" against {html.escape(str(row['resolution']))}" if row.get("resolution") else ""
    return f'<div class="detail">power {power:.2f}{against}</div>'


def _img(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _figure_html(f: _Figure, wide: bool = False) -> str:
    links = f'<a href="plots/{html.escape(f.png.name)}">PNG</a>'
    if f.svg is not None:
        links += f' · <a href="plots/{html.escape(f.svg.name)}">SVG</a>'
    return (f'<figure class="{"wide" if wide else ""}" id="fig-{html.escape(f.name)}">'
            f'<img alt="{html.escape(f.title)}" src="{_img(f.png)}">'
            f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)} {links}</figcaption></figure>")


def _html(meta: dict[str, Any], rows: list[dict[str, Any]], overview: _Figure | None, figs: list[_Figure],
          timing: _Figure | None, files: list[str]) -> str:
    e = html.escape
    n = counts(rows)
    n_pass, n_fail, n_inc, n_na = (n[o] for o in (Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE,
                                                  Outcome.REPORTED))
    judged = n_pass + n_fail + n_inc
    if n_fail:
        badge = f'<span class="badge fail-bg" id="outcome">FAIL: {n_fail} of {judged} judged claims failed</span>'
    elif n_inc:
        badge = (f'<span class="badge inc-bg" id="outcome">INCONCLUSIVE: {n_inc} of {judged} judged claims could '
                 "not be told apart from the smallest error they must catch at this budget</span>")
    elif judged:
        badge = f'<span class="badge pass-bg" id="outcome">PASS: all {n_pass} judged claims hold</span>'
    elif rows:
        badge = '<span class="badge na-bg" id="outcome">nothing judged: every row is reported</span>'
    else:
        badge = '<span class="badge na-bg" id="outcome">no verdicts</span>'
    body = [f"<h1>{e(meta['title'])}</h1>", badge,
            f"<p>{n_pass} passed, {n_fail} failed, {n_inc} inconclusive, {n_na} n/a (reported, not judged). "
            f"Scale <b>{e(str(meta.get('scale') or '-'))}</b>, seed <b>{meta['seed']}</b>, device "
            f"<b>{e(meta['device'])}</b>, {meta['seconds']:.2f} s.</p>"]
    for note in meta.get("notes") or []:
        body.append(f'<p class="note">{e(note)}</p>')
    order = (Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE, Outcome.REPORTED)
    parts: dict[str, list[Any]] = {}
    seen_checks: set[str] = set()
    for r in rows:
        acc = parts.setdefault(r["part"], [0, 0, 0, 0, 0.0])
        acc[order.index(row_outcome(r))] += 1
        if r["check"] not in seen_checks:
            seen_checks.add(r["check"])
            acc[4] += float(r["seconds"])
    for outcome, ident, word in ((Outcome.FAIL, "failed", "Failed"), (Outcome.INCONCLUSIVE, "inconclusive",
                                                                      "Inconclusive")):
        listed = [(i + 1, r) for i, r in enumerate(rows) if row_outcome(r) is outcome]
        if listed:
            body.append(f'<p id="{ident}">{word}: ' + "; ".join(
                f'<a href="#v{i}">#{i} {e(r["claim"])} ({e(r["reference"])})</a>' for i, r in listed) + "</p>")
    if len(parts) > 1:
        def part_class(a: list[Any]) -> str:
            return "fail" if a[1] else "inconclusive" if a[2] else "pass"

        body.append('<table id="parts" style="width:auto"><thead><tr><th>part</th><th>pass</th><th>FAIL</th>'
                    "<th>inconclusive</th><th>n/a</th><th>seconds</th></tr></thead><tbody>" + "".join(
                        f'<tr class="{part_class(a)}"><td>{e(_PART_TITLES.get(p, p))}</td>'
                        f'<td class="num">{a[0]}</td><td class="num v">{a[1]}</td><td class="num">{a[2]}</td>'
                        f'<td class="num">{a[3]}</td><td class="num">{a[4]:.1f}</td></tr>'
                        for p, a in parts.items()) + "</tbody></table>")
    body.append('<h2>Verdicts</h2><table id="verdicts"><thead><tr><th>#</th><th>claim</th><th>paper</th>'
                "<th>predicted</th><th>measured</th><th>interval</th><th>verdict</th><th>check</th></tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = _CLASSES[row_outcome(r)]
        detail = f'<div class="detail">{e(r.get("detail") or "")}</div>' if r.get("detail") else ""
        body.append(
            f'<tr class="verdict {cls}" id="v{i + 1}"><td>{i + 1}</td><td>{e(r["claim"])}{detail}</td>'
            f'<td>{e(r["reference"])}</td>'
            f'<td class="num">{e(fmt(r.get("predicted")))}{_level_html(r)}</td>'
            f'<td class="num">{e(fmt(r.get("measured")))}</td>'
            f'<td class="num">{e(fmt_interval(r.get("interval")))}</td>'
            f'<td class="v">{status(row_outcome(r))}{_power_html(r)}</td>'
            f'<td>{e(r["check"])} <span class="detail">({e(r["part"])})</span></td></tr>')
    body.append("</tbody></table>")
    if overview is not None:
        body.append("<h2>At a glance</h2>" + _figure_html(overview, wide=True))
    def wide(f: _Figure) -> bool:  # multi-panel pictures (width > 2 x height) take a full row
        head = f.png.read_bytes()[:24]
        w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return head[:8] == b"\x89PNG\r\n\x1a\n" and w > 2 * h

    if figs:
        body.append("<h2>Plots</h2>")
        for part in dict.fromkeys(f.part for f in figs):
            body.append(f"<h3>{e(_PART_TITLES.get(part, part))}</h3><div class=\"figs\">"
                        + "".join(_figure_html(f, wide(f)) for f in figs if f.part == part) + "</div>")
    body.append("<h2>Run</h2><p>Command:</p><pre>" + e(meta["command"]) + "</pre>")
    settings = {"scale": meta.get("scale") or "-", "seed": str(meta["seed"]), "device": meta["device"],
                "started": meta.get("started", "-"), "wall time": f"{meta['seconds']:.1f} s",
                "git commit": meta.get("git") or "-", **(meta.get("settings") or {}),
                **{f"version of {k}": v for k, v in (meta.get("versions") or {}).items()}}
    body.append('<table id="run"><tbody>' + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>"
                                                   for k, v in settings.items()) + "</tbody></table>")
    checks: dict[str, tuple[str, float, int]] = {}
    for r in rows:
        part, sec, n = checks.get(r["check"], (r["part"], float(r["seconds"]), 0))
        checks[r["check"]] = (part, sec, n + 1)
    body.append('<h2>Timings</h2><table id="timings"><thead><tr><th>check</th><th>part</th><th>verdicts</th>'
                "<th>seconds</th></tr></thead><tbody>" +
                "".join(f'<tr><td>{e(k)}</td><td>{e(p)}</td><td>{n}</td><td class="num">{s:.2f}</td></tr>'
                        for k, (p, s, n) in checks.items()) + "</tbody></table>")
    if timing is not None:
        body.append(_figure_html(timing))
    body.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{e(f)}">{e(f)}</a></li>' for f in files) + "</ul>")
    body.append('<p class="detail">How to read every plot and verdict: docs/user-guide.md of advdim.</p>')
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(meta['title'])}</title><style>{_CSS}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>\n")


def write_report(folder: str | Path, rows: list[dict[str, Any]], info: RunInfo) -> ReportFiles:
    """Store ``rows`` (from :func:`verdict_rows`) and write the report folder from the stored records.

    Args:
        folder: the report folder (created; an existing run store in it is appended to, other
            files are overwritten).
        rows: the verdict rows of this run.
        info: the run's description.
    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    store_path = out / "runs.sqlite"
    with RunStore(store_path) as store:
        run_id = _store_run(store, rows, info)
        meta, recs = _load_run(store, run_id)
    overview = _overview_plot(recs, plots_dir)
    figs = _series_plots(recs, plots_dir) + _external_plots(recs, plots_dir)
    timing = _timing_plot(recs, plots_dir)
    tables = _write_tables(recs, out)
    all_figs = [f for f in [overview, *figs, timing] if f is not None]
    plot_files = [p for f in all_figs for p in (f.png, f.svg) if p is not None]
    files = ["runs.sqlite", *(t.name for t in tables), *(f"plots/{p.name}" for p in plot_files)]
    page = out / "report.html"
    page.write_text(_html(meta, recs, overview, figs, timing, files), encoding="utf-8")
    return ReportFiles(out, page, store_path, tuple(plot_files), tuple(tables), run_id)
