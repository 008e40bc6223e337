"""The verdict tables on an 80-column terminal (issue 22): the verdict word is never cut
(``inconclu…``), no line is wider than the terminal, and a long claim folds instead."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import advdim.cli as cli
from advdim._report_cli import print_verdicts
from advdim.cli import table

SPEC = "3x8x8 > conv(8) > relu > avgpool(2) > conv(8) > relu > flatten > dense(10)"
ROWS = [
    {"claim": f"{SPEC}: slope of E||d_x f_k||_inf vs d (infinite-width limit)", "reference": "Thm 4-5, Cor 6",
     "predicted": -0.4161, "measured": -0.3892, "interval": [-0.4107, -0.3677], "outcome": "inconclusive",
     "extra": {}},
    {"claim": "maxpool: slope of E||d_x f_k||_1 vs d", "reference": "Theorem 5", "predicted": None,
     "measured": 0.5603, "interval": [0.5201, 0.5994], "outcome": "n/a",
     "extra": {"consistency": "cannot tell at this budget"}},
    {"claim": "dense: E||d_x f_k||_2^2 measured / theory", "reference": "Theorem 5", "predicted": 1.0,
     "measured": 1.31, "interval": [1.2, 1.4], "outcome": "fail", "extra": {}},
    {"claim": "dense: slope of E||d_x f_k||_1 vs d", "reference": "Theorem 4", "predicted": 0.5,
     "measured": 0.49, "interval": [0.47, 0.53], "outcome": "pass", "extra": {}},
]


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None, legacy_windows=False), buf


@pytest.mark.parametrize("width", [80, 100])
def test_the_verdict_column_is_never_cut(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    console, buf = _terminal(width)
    monkeypatch.setattr(cli, "out", console)
    print_verdicts("verdicts", ROWS)
    text = buf.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    for word in ("inconclusive", "FAIL", "pass", "n/a"):
        assert any(word in line for line in lines), word
    # the numbers stay whole too
    for number in ("-0.4161", "-0.3892", "0.5603", "1.31"):
        assert number in text


def test_any_table_with_a_verdict_column_keeps_it_whole() -> None:
    """``simulate`` prints its own table through ``advdim.cli.table``: the same column defaults apply."""
    console, buf = _terminal(80)
    rows = [[r["claim"], "0.5", "0.49", "[0.47, 0.53]", "0.93", "inconclusive (cannot tell at this budget)"]
            for r in ROWS]
    console.print(table("simulate", ["claim", "predicted", "measured", "interval", "power", "verdict"], rows))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "inconclusive" in text and "inconclu…" not in text and "…" not in text
