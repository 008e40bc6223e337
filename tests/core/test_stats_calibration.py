"""The one statistics module (``advdim.stats``): calibrated at 2-64 units, family-wise control,
and ``measure`` and ``simulate`` agreeing on the same network.

Stated false-failure rates: each rate check allows the 0.999 binomial quantile of its replicates at
the per-row level (a correct implementation fails it with probability <= 0.001); the seeds are fixed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from advdim.stats import ALPHA, FWER, MIN_UNITS, TwoSided, fit_slope, holm
from advdim.verdict import Outcome, Verdict

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("calibrate_stats", ROOT / "scripts" / "calibrate_stats.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CAL = _script()
REPS = 300


@pytest.mark.parametrize(("kind", "n"), [("slope", 2), ("slope", 3), ("slope", 4), ("slope", 16),
                                         ("prefactor", 64)])
@pytest.mark.parametrize("tail", ["light", "heavy"])
def test_a_null_that_follows_its_law_fails_at_most_at_the_stated_rate(kind: str, n: int, tail: str) -> None:
    k, m = CAL.false_fail_rate(kind, n, tail, REPS)
    assert k <= stats.binom.ppf(0.999, m, ALPHA), (k, m)


@pytest.mark.parametrize("kind", ["slope", "prefactor"])
def test_a_planted_error_fails_at_the_default_budget(kind: str) -> None:
    """d^0.05 in the slope, 10% in the prefactor, 200 units, light tails: FAIL in >= 80% (the 0.001
    binomial quantile of 100 replicates at power 0.9 is 79)."""
    k, m = CAL.power_at(kind, 200, "light", 100)
    assert k >= 80, (k, m)


def test_below_two_effective_units_a_row_never_fails() -> None:
    t = TwoSided(10.0, 0.0, 0.001, 1.5)
    assert not t.ready and not t.rejects() and t.power() == 0.0 and t.p_value() == 1.0
    assert MIN_UNITS == 2.0


def test_inputs_inside_one_unit_are_not_units() -> None:
    """A unit is one row: the se of a slope over 4 draws does not shrink when each draw has more inputs
    (the issue's false FAIL came from narrower intervals at fewer units)."""
    rng = np.random.default_rng(0)
    d = np.array([192.0, 768.0, 3072.0])
    scale = rng.lognormal(0.0, 0.5, (4, 1))
    few = scale * d**0.5 * np.exp(rng.normal(0, 0.05, (4, 3)))
    fit = fit_slope(d, few)
    assert fit.n == 4 and fit.units <= 4
    assert fit.ci[1] - fit.ci[0] > 0


def test_holm_keeps_the_family_wise_rate_of_fifteen_null_rows() -> None:
    """15 independent null rows (z ~ N(0, 1), large samples), 2000 replicate runs: the share of runs with
    any FAIL stays at or below FWER (0.999 binomial quantile), where per-row alpha 0.01 gives ~14%."""
    rng = np.random.default_rng(1)
    runs, any_fail, any_fail_raw = 2000, 0, 0
    for _ in range(runs):
        rows = [Verdict("r", "", 0.0, float(z), None, True, power=1.0, test=TwoSided(float(z), 0.0, 1.0, None, 0.05))
                for z in rng.normal(size=15)]
        any_fail += any(v.outcome is Outcome.FAIL for v in holm(rows))
        any_fail_raw += any(v.test is not None and v.test.rejects(ALPHA) for v in rows)
    assert any_fail <= stats.binom.ppf(0.999, runs, FWER)
    assert any_fail_raw > stats.binom.ppf(0.999, runs, FWER)  # without the correction the rate is ~14%


def test_holm_still_fails_a_planted_error_and_leaves_other_rows_alone() -> None:
    bad = Verdict("planted", "", 0.5, 0.6, None, True, power=1.0, test=TwoSided(0.6, 0.5, 0.005, 200.0))
    good = Verdict("null", "", 0.5, 0.501, None, True, power=1.0, test=TwoSided(0.501, 0.5, 0.005, 200.0))
    one_sided = Verdict("one-sided", "", None, 1.0, None, None, status=Outcome.PASS)
    out = holm([bad, good, one_sided])
    assert [v.outcome for v in out] == [Outcome.FAIL, Outcome.PASS, Outcome.PASS]
    assert "Holm across 2 judged rows" in out[0].detail and out[2] is one_sided


SPEC = "1x{s}x{s} > flatten > dense(32) > relu > dense(32) > relu > dense(10)"


def spec_factory(input_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The same network as SPEC, built by advdim from torch's global generator (measure seeds it)."""
    from advdim.arch import parse
    from advdim.build import build

    return build(parse(SPEC.format(s=input_shape[1])), generator=torch.default_generator)


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny models: one torch thread, restored after (other tests compare numbers across executors)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_measure_and_simulate_agree_on_the_same_network(tmp_path: Path) -> None:
    """One traced network, its draws measured by ``measure`` (a factory) and by ``simulate`` (spec
    text): the slopes agree within c * sqrt(se1^2 + se2^2) (c: the normal 0.999 quantile, two
    independent studies), and both are judged against the same law."""
    from advdim.simulate import study

    from advdim.measure import MeasureConfig, measure

    cfg = MeasureConfig((1, 4, 4), (1, 2, 4), (1.0, 2.0, math.inf), inputs=8, seed=0, eps=0.004, steps=1, draws=24)
    got = measure(spec_factory, cfg, torch.device("cpu"), name="spec_factory")
    sim = study(SPEC.format(s=4), (4, 8, 16), None, nets=24, inputs=8, seed=5, draws=1, progress=False)
    res = got.results["logit"]
    c = stats.norm.ppf(1 - 0.001 / 2)
    for key in ("1", "2", "inf"):
        a, b = res.q[key], sim.q[key]
        assert a.predicted_slope == pytest.approx(b.predicted_slope, abs=1e-9)
        assert abs(a.measured_slope - b.measured_slope) <= c * math.hypot(a.se, b.se), key
    assert got.theory.reason is None and res.iid_inf == sim.iid_inf
