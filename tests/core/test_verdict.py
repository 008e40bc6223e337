"""Three-valued verdicts (issue 12): pass, fail, inconclusive (and n/a), their power, the exit status.

A test at level alpha may always say FAIL; it says pass only with power >= MIN_POWER against the
smallest error its claim must catch; otherwise inconclusive.  Checked here on the records, the
report's counts, the one-sided simulate rows, the ratio power, and end to end on ``advdim simulate``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from advdim.cli import main
from advdim.errors import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from advdim.report import RunInfo, counts, exit_status, row_outcome, summary_line, verdict_rows, write_report
from advdim.verdict import MIN_POWER, Outcome, Verdict


def _v(passed: bool | None, power: float | None = None, status: Outcome | None = None) -> Verdict:
    return Verdict("claim", "Theorem 4", 0.5, 0.5, (0.4, 0.6), passed, "", power=power, status=status)


@pytest.mark.parametrize(("passed", "power", "status", "want"), [
    (False, None, None, Outcome.FAIL),  # a test may always fail, whatever its power
    (False, 0.001, None, Outcome.FAIL),
    (True, None, None, Outcome.INCONCLUSIVE),  # no stated power: never "pass"
    (True, 0.001, None, Outcome.INCONCLUSIVE),
    (True, MIN_POWER - 1e-9, None, Outcome.INCONCLUSIVE),
    (True, MIN_POWER, None, Outcome.PASS),
    (True, float("nan"), None, Outcome.INCONCLUSIVE),
    (None, 0.99, None, Outcome.REPORTED),
    (True, 0.001, Outcome.PASS, Outcome.PASS),  # a directional claim sets its outcome itself
    (None, None, Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE),
])
def test_outcome_rule_and_its_json(passed: bool | None, power: float | None, status: Outcome | None,
                                   want: Outcome) -> None:
    v = _v(passed, power, status)
    assert v.outcome is want
    js = json.loads(json.dumps(v.to_json()))
    assert js["outcome"] == want.value and row_outcome(js) is want


def test_rows_stored_before_outcomes_existed_follow_the_same_rule() -> None:
    """A record without ``outcome`` (an older run store): its passed / power / status decide."""
    assert row_outcome({"passed": True}) is Outcome.INCONCLUSIVE
    assert row_outcome({"passed": True, "power": 0.9}) is Outcome.PASS
    assert row_outcome({"passed": False, "power": 0.0}) is Outcome.FAIL
    assert row_outcome({"passed": None}) is Outcome.REPORTED
    assert row_outcome({"passed": True, "power": 0.1, "status": "pass"}) is Outcome.PASS


@pytest.mark.parametrize(("outcomes", "rc", "line"), [
    ([Outcome.PASS, Outcome.REPORTED], EXIT_OK, "1 passed, 0 failed, 0 inconclusive, 1 n/a"),
    ([Outcome.REPORTED], EXIT_OK, "0 passed, 0 failed, 0 inconclusive, 1 n/a"),
    ([Outcome.PASS, Outcome.INCONCLUSIVE], EXIT_INCONCLUSIVE, "1 passed, 0 failed, 1 inconclusive, 0 n/a"),
    ([Outcome.INCONCLUSIVE, Outcome.FAIL, Outcome.PASS], EXIT_FAILED, "1 passed, 1 failed, 1 inconclusive, 0 n/a"),
])
def test_exit_status_and_summary_count_the_outcomes_apart(outcomes: list[Outcome], rc: int, line: str) -> None:
    rows = [{"outcome": o.value} for o in outcomes]
    n = counts(rows)
    assert exit_status(n) == rc and summary_line(n).startswith(line)
    assert EXIT_INCONCLUSIVE == 3 and EXIT_INCONCLUSIVE not in (EXIT_OK, EXIT_FAILED, 2, 130)


def test_the_report_counts_and_marks_every_outcome(tmp_path: Path) -> None:
    """One row of each outcome: the badge says FAIL, the counts are apart, each row has its class and
    word, the verdict table (CSV) has the words and the power; without the failure the badge says
    INCONCLUSIVE."""
    verdicts = [Verdict("passing claim", "Theorem 4", 0.5, 0.5, (0.49, 0.51), True, power=0.97,
                        resolution="slope +-0.05"),
                Verdict("failing claim", "Theorem 4", 0.5, 0.7, (0.69, 0.71), False, power=0.97),
                Verdict("weak claim", "Theorem 4", 0.5, 0.6, (-4.0, 5.0), True, power=0.001,
                        resolution="slope +-0.05"),
                Verdict("reported row", "Section 3.2", None, 0.3, (0.2, 0.4), None)]
    info = RunInfo(title="t", command="advdim verify", seed=0, device="cpu")
    files = write_report(tmp_path / "a", verdict_rows("c", "core", 0.1, verdicts), info)
    page = files.html.read_text()
    assert "1 passed, 1 failed, 1 inconclusive, 1 n/a" in page and "FAIL: 1 of 3 judged claims failed" in page
    for cls in ("pass", "fail", "inconclusive", "na"):
        assert page.count(f'<tr class="verdict {cls}" ') == 1, cls
    row = page[page.index('<tr class="verdict inconclusive" '):]
    row = row[:row.index("</tr>")]
    assert "weak claim" in row and ">inconclusive<div" in row and "power 0.00 against slope +-0.05" in row
    assert 'id="inconclusive"' in page and 'id="failed"' in page
    import pandas as pd

    table = pd.read_csv(tmp_path / "a" / "verdicts.csv", keep_default_na=False, na_values=[""])
    assert list(table["verdict"]) == ["pass", "FAIL", "inconclusive", "n/a"]
    assert table["power"].iloc[0] == pytest.approx(0.97) and np.isnan(table["power"].iloc[3])
    page = write_report(tmp_path / "b", verdict_rows("c", "core", 0.1, [verdicts[0], verdicts[2]]),
                        info).html.read_text()
    assert "INCONCLUSIVE: 1 of 2 judged claims" in page and "badge inc-bg" in page


def test_ratio_power_agrees_with_the_ratio_test_by_simulation() -> None:
    """``ratio_power`` against the rejection rate of the ratio verdict on 4000 simulated ratios 1.1 with
    the given se (normal, as the approximation assumes).  Binomial sd of a rate p over 4000 draws is
    <= 0.0079; a 5 sd bound (false failure ~6e-7)."""
    from advdim.stats import PREFACTOR_REL, critical, ratio_power

    rng = np.random.default_rng(0)
    for se in (0.02, 0.03, 0.05):
        ratio = 1 + PREFACTOR_REL + se * rng.standard_normal(4000)
        rate = np.mean(np.abs(ratio - 1) > critical(0.01, 200) * se)
        p = ratio_power(se, PREFACTOR_REL, 0.01, 200)
        assert abs(rate - p) <= 5 * np.sqrt(p * (1 - p) / 4000) + 1e-9, (se, rate, p)
    # power 0.8 at n = 200 sits at se = 0.1 / (c + z_0.8)
    se80 = PREFACTOR_REL / (critical(0.01, 200) + stats.norm.ppf(MIN_POWER))
    assert ratio_power(se80 * 0.99, n=200) > MIN_POWER > ratio_power(se80 * 1.01, n=200)


def _family(name: str, slope: float, se: float, pred: float | None, nets: int = 8) -> SimpleNamespace:
    q = SimpleNamespace(measured_slope=slope, se=se, predicted_slope=pred)
    return SimpleNamespace(family=name, nets=nets, q={"1": q})


@pytest.mark.parametrize(("low", "high", "want"), [
    (0.0, 0.5, Outcome.PASS),  # clearly lower
    (0.5, 0.0, Outcome.FAIL),  # clearly the opposite order
    (0.0, 0.05, Outcome.INCONCLUSIVE),  # the interval of the difference holds 0
    (0.05, 0.0, Outcome.INCONCLUSIVE),
])
def test_one_sided_rows_set_their_own_outcome(low: float, high: float, want: Outcome) -> None:
    """``lower_verdicts``: pass iff diff - c se > 0, fail iff diff + c se < 0, else inconclusive, at the
    one-sided critical value of 8 topologies; their power is stated against the predicted difference."""
    from advdim.simulate._checks import lower_verdicts

    from advdim.stats import critical

    se = 0.03
    (v,) = lower_verdicts(_family("avgpool", low, se, 0.0), _family("strided", high, se, 0.5))  # type: ignore[arg-type]
    z = critical(0.02, 8)
    diff, s = high - low, float(np.hypot(se, se))
    assert v.interval == pytest.approx((diff - z * s, diff + z * s))
    assert v.outcome is want and v.to_json()["outcome"] == want.value
    assert v.predicted == 0.5 and v.power == pytest.approx(stats.norm.cdf(0.5 / s - z))


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["simulate", "--family", "dense", "--device", "cpu", "--draws", "2", "--inputs", "2", *args])
    return rc, capsys.readouterr().out


def test_two_nets_are_inconclusive_never_pass_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    """The symptom of issue 12: ``--sizes 8,16 --nets 2`` gives slope intervals several units wide; every
    judged row is inconclusive (its power against +-0.05 is ~0), none says pass, exit status 3."""
    rc, text = _simulate(capsys, "--sizes", "8,16", "--nets", "2", "--json")
    res = json.loads(text)
    assert rc == EXIT_INCONCLUSIVE
    for q in ("1", "2", "inf"):
        row = res["q"][q]
        assert row["outcome"] == "inconclusive" and row["power"] < 0.05, row
    assert res["prefactor"]["outcome"] == "inconclusive"
    assert res["outcomes"] == {"pass": 0, "fail": 0, "inconclusive": 4, "n/a": 0}
    rc, text = _simulate(capsys, "--sizes", "8,16", "--nets", "2")
    words = " ".join(text.split())
    assert rc == EXIT_INCONCLUSIVE and not re.search(r"│\s*pass\s*│", text) and text.count("inconclusive") >= 4
    assert "0 passed, 0 failed, 4 inconclusive, 0 n/a" in words and "more --nets" in words


def test_a_planted_exponent_fails_where_the_interval_excludes_it_and_is_inconclusive_elsewhere() -> None:
    """Dense studies with slopes planted 0.5 off the law (fixed seeds).  At 16 topologies the acceptance
    interval (half-width c se ~ 0.1) excludes the planted slope: FAIL.  At 2 topologies (c = 90) it
    does not: inconclusive, never pass (power ~0).  Each row follows the rule exactly."""
    from advdim.simulate import study

    seen = set()
    for nets in (2, 16):
        res = study("dense", (8, 16), 3, nets, 2, 0, "cpu", plant_exponent=0.5, draws=2, progress=False)
        for v in res.verdicts():
            if "slope of" not in v.claim:
                continue
            assert v.interval is not None and v.predicted is not None and v.power is not None
            excluded = not v.interval[0] <= v.predicted <= v.interval[1]
            assert v.outcome is (Outcome.FAIL if excluded else Outcome.INCONCLUSIVE), (nets, v.claim, v.interval)
            assert excluded or v.power < MIN_POWER
            seen.add((nets, v.outcome))
    assert seen == {(2, Outcome.INCONCLUSIVE), (16, Outcome.FAIL)}
