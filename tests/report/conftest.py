"""Fixtures of the report tests: a check that draws series and its own plot file, registered only
for the test that asks for it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from advdim import checks
from advdim.checks import Budget, Check, Part
from advdim.verdict import Verdict


def series_check(budget: Budget) -> list[Verdict]:
    """A check with a plot drawn by the report (``series``) and one drawn by itself (``plots``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [192.0, 768.0, 3072.0, 12288.0]
    y = [0.8 * x**0.5 for x in d]
    series = {"figure": "E||d_x f||_1 against d (test)", "label": "q = 1", "x": d, "y": y,
              "lo": [v * 0.95 for v in y], "hi": [v * 1.05 for v in y], "fit": y, "predicted": y,
              "xlabel": "d", "ylabel": "E||d_x f||_1", "loglog": True}
    plots = []
    if budget.out_dir is not None:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(d, y, "o-")
        ax.set_title("drawn by the check")
        path = Path(budget.out_dir) / "own-plot.png"
        fig.savefig(path)
        fig.savefig(path.with_suffix(".svg"))
        plt.close(fig)
        plots = [str(path), str(path.with_suffix(".svg"))]
    slope = math.log(y[-1] / y[0]) / math.log(d[-1] / d[0])
    return [Verdict("slope of E||d_x f||_1 in d (test)", "Theorem 4", 0.5, slope, (slope - 0.02, slope + 0.02),
                    True, "synthetic", {"series": series, "plots": plots}, power=0.99, resolution="slope +-0.05")]


def failing_check(budget: Budget) -> list[Verdict]:
    """A deliberately false claim: the measurement's interval excludes the prediction."""
    measured, half = 0.6, 0.02
    return [Verdict("planted false claim (test)", "nowhere", 0.5, measured, (measured - half, measured + half),
                    bool(measured - half <= 0.5 <= measured + half), "planted")]


def wide_check(budget: Budget) -> list[Verdict]:
    """A row as wide as real ones get: a long spec-text claim, a long detail line, long numbers."""
    spec = " > ".join(["3x32x32"] + ["res(conv(64,3,s=1,pad=zeros) > batchnorm > relu > conv(64) > batchnorm)"] * 6
                      + ["globalavgpool", "dense(10)"])
    detail = "slopes over 16 draws (t critical values on 15.2 effective draws), " * 6
    return [Verdict(f"slope of E||d_x L||_inf in d for {spec}", "Theorems 4-5, Corollary 6 and Appendix B", 0.123456789,
                    0.1234567891234, (-0.123456789123, 0.987654321987), True, detail, power=0.987654321,
                    resolution="slope +-0.05 at level 0.0016666666666666668 (Holm)")]


def inconclusive_check(budget: Budget) -> list[Verdict]:
    """A claim inside an interval far too wide to tell it from the error it must catch (power 0.01)."""
    return [Verdict("underpowered claim (test)", "nowhere", 0.5, 0.6, (-4.0, 5.2), True, "planted", power=0.01,
                    resolution="slope +-0.05")]


def crashing_check(budget: Budget) -> list[Verdict]:
    raise RuntimeError("boom")


@pytest.fixture
def extra_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, Callable[[Budget], list[Verdict]]], None]]:
    """``extra_checks(name, fn)`` registers ``fn`` as a core check for the duration of one test."""

    def add(name: str, fn: Callable[[Budget], list[Verdict]]) -> None:
        checks.all_checks()  # import the layers first, so that the test's entry is not overwritten
        monkeypatch.setitem(checks._REGISTRY, name, Check(name, Part.CORE, fn))

    yield add
