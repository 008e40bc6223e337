"""Every THEORY and CORE row of ``advdim verify`` can fail: each test plants the error its row must
catch and shows that the row FAILs, and that the unplanted row passes (or is inconclusive where
its stated power is below MIN_POWER).

Monte Carlo rows: two-sided false failure 0.01 per row (normal approximation of the mean over
nets); fixed seeds, so each assertion below is deterministic.  A planted error of 25% is caught
with power > 0.999 at the sample sizes the rows draw (asserted alongside).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import sympy as sp
import torch
from advdim.theory import Prediction, predict
from advdim.theory._checks import (
    MC_PLAN,
    _mc_row,
    closed_form_mc_verdict,
    closed_form_verdict,
    first_order,
    path_sum_mc,
    symbolic_law,
)
from advdim.theory._law import d
from advdim.theory._numeric import critical, mc_grad_sq, nets_needed, ratio_power

from advdim._core_checks import he_init, nets_for_power, variance_power, weight_count, weight_variance_verdict
from advdim.arch import family
from advdim.build import Init, build
from advdim.checks import Budget, Scale
from advdim.verdict import MIN_POWER, Outcome, Verdict

DEFAULT = Budget(scale=Scale.DEFAULT, seed=0)
TINY = Budget(scale=Scale.TINY, seed=0)
PLANTED = 1.25  # a 25% error


def _caught_surely(v: Verdict, rel: float = PLANTED - 1) -> None:
    """The row's own power against the planted relative error is > 0.999 (so a FAIL is no luck)."""
    rel_se = v.extra["se"] / abs(v.predicted)
    assert ratio_power(rel_se, rel, critical(0.01)) > 0.999, v.detail


@pytest.fixture(scope="module")
def dense_he() -> Prediction:
    return predict(family("dense"), sizes=(8, 16, 32, 64), init="he")


# ---- closed form vs path sum (deterministic identity) ---------------------------------------


def test_closed_form_row_shows_real_numbers_and_passes(dense_he: Prediction) -> None:
    v = closed_form_verdict(dense_he, "dense, he", (8, 16, 32, 64))
    assert v.outcome is Outcome.PASS and v.power == 1.0
    assert v.predicted == pytest.approx(2.0) and v.measured == pytest.approx(2.0)  # not "0 vs 0"


@pytest.mark.parametrize("wrong", [lambda e: e * 1.1, lambda e: e * (d / 192) ** sp.Rational(1, 20)])
def test_a_wrong_closed_form_fails_the_identity_row(wrong, dense_he: Prediction) -> None:  # type: ignore[no-untyped-def]
    # a 10% prefactor error; an exponent off by 1/20 (exact at d0 = 192, off at s = 16, 32, 64)
    planted = dataclasses.replace(dense_he, grad_sq_norm_expr=wrong(dense_he.grad_sq_norm_expr))
    assert closed_form_verdict(planted, "dense, he", (8, 16, 32, 64)).outcome is Outcome.FAIL


# ---- closed form vs Monte Carlo ---------------------------------------------------------------


class _SharedError(Prediction):
    """A prediction whose path sum carries the same planted error as its closed form."""

    def grad_sq_norm(self, size: int) -> float:
        return PLANTED * super().grad_sq_norm(size)


def test_monte_carlo_row_catches_an_error_the_path_sum_shares(dense_he: Prediction) -> None:
    size = MC_PLAN[Scale.DEFAULT][0]
    good = closed_form_mc_verdict(dense_he, "dense, he", size, DEFAULT, seed=3)
    assert good.outcome is Outcome.PASS and good.power is not None and good.power >= MIN_POWER, good.detail
    fields = {f.name: getattr(dense_he, f.name) for f in dataclasses.fields(dense_he)}
    shared = _SharedError(**{**fields, "grad_sq_norm_expr": PLANTED * dense_he.grad_sq_norm_expr})
    # the identity row cannot see it: both sides are wrong the same way
    assert closed_form_verdict(shared, "dense, he", (8, 16, 32, 64)).outcome is Outcome.PASS
    bad = closed_form_mc_verdict(shared, "dense, he", size, DEFAULT, seed=3)
    assert bad.outcome is Outcome.FAIL, bad.detail
    _caught_surely(bad)


def test_monte_carlo_row_catches_a_wrong_init_variance(dense_he: Prediction) -> None:
    size = MC_PLAN[Scale.DEFAULT][0]
    # the last layer's variance 25% low in the nets (E||d_x f||^2 moves by exactly that factor)
    low = closed_form_mc_verdict(dense_he, "dense, he", size, DEFAULT, seed=3, variance_factor=1 / PLANTED)
    assert low.outcome is Outcome.FAIL, low.detail
    _caught_surely(low, 1 - 1 / PLANTED)
    # nets drawn with Glorot's variances against He's closed form
    glorot_nets = dataclasses.replace(dense_he, init="glorot")
    assert closed_form_mc_verdict(glorot_nets, "dense, he", size, DEFAULT, seed=3).outcome is Outcome.FAIL


def test_variance_factor_moves_the_mean_by_exactly_that_factor() -> None:
    spec = family("strided", channels=4).spec(8)
    for init in ("he", "torch"):  # torch: nonzero biases; the last layer's bias does not reach d_x f
        a = mc_grad_sq(spec, init, 0, n_nets=3, seed=5)
        b = mc_grad_sq(spec, init, 0, n_nets=3, seed=5, variance_factor=0.8)
        assert b == pytest.approx(0.8 * a, rel=1e-10)
    # a sample extends: nets [0, 5) = nets [0, 2) + nets [2, 5)
    whole = mc_grad_sq(spec, "he", 0, n_nets=5, seed=1)
    parts = [mc_grad_sq(spec, "he", 0, n_nets=2, seed=1), mc_grad_sq(spec, "he", 0, n_nets=3, seed=1, start=2)]
    assert whole == pytest.approx([*parts[0], *parts[1]], rel=1e-12)


def test_nets_needed_gives_the_stated_power() -> None:
    for cv in (0.1, 0.5, 1.5):
        n = nets_needed(cv)
        assert ratio_power(cv / math.sqrt(n)) >= MIN_POWER > ratio_power(cv / math.sqrt(n - 1))


# ---- path sum vs Monte Carlo (members the closed form does not reach) ------------------------


def test_path_sum_row_catches_a_ten_percent_error_with_its_stated_power() -> None:
    spec = family("dense", widths=(32, 32)).spec(8, channels=1)
    predicted = predict(spec).grad_sq_norm(8)
    good = _mc_row(spec, predicted, "path sum", "Theorem 5", DEFAULT, seed=4)
    assert good.outcome is Outcome.PASS and good.power >= MIN_POWER, good.detail  # type: ignore[operator]
    bad = _mc_row(spec, predicted, "path sum", "Theorem 5", DEFAULT, seed=4, variance_factor=PLANTED)
    assert bad.outcome is Outcome.FAIL, bad.detail
    _caught_surely(bad)


def test_tiny_rows_state_their_power_and_never_pass_without_it() -> None:
    rows = path_sum_mc(TINY) + symbolic_law(TINY) + first_order(TINY)
    judged = [v for v in rows if v.outcome.judged]  # n/a: no value the theory backs (avgpool, torch init)
    assert all(v.power is not None and v.resolution for v in judged), [v.claim for v in judged if v.power is None]
    assert not [v.claim for v in rows if v.outcome is Outcome.FAIL]
    for v in rows:
        assert (v.outcome is Outcome.PASS) == (v.passed is True and v.power >= MIN_POWER)  # type: ignore[operator]
    assert sum(v.outcome is Outcome.PASS for v in rows) >= len(rows) // 2


def test_planted_exponent_moves_the_monte_carlo_rows() -> None:
    rows = path_sum_mc(Budget(scale=Scale.TINY, seed=0, plant_exponent=0.5))
    assert all(v.outcome is Outcome.FAIL for v in rows)  # E||d_x f||^2 times d = 64


# ---- core: He initialisation ------------------------------------------------------------------


def test_he_init_rows_pass_with_power_and_a_wrong_variance_fails() -> None:
    rows = he_init(TINY)
    assert all(v.outcome is Outcome.PASS for v in rows), [(v.claim, v.power) for v in rows]
    spec = family("gap").spec(8)
    k = nets_for_power(weight_count(build(spec, seed=0)))
    nets = [build(spec, Init.HE, seed=j) for j in range(k)]
    assert weight_variance_verdict(nets, Init.HE, "c", "H3").outcome is Outcome.PASS
    with torch.no_grad():
        for net in nets:
            for m in net.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    m.weight.mul_(math.sqrt(1 / PLANTED))  # every variance 20% low
    bad = weight_variance_verdict(nets, Init.HE, "c", "H3")
    assert bad.outcome is Outcome.FAIL
    n = bad.extra["weights"]
    assert variance_power(n, *bad.interval, rel_error=1 - 1 / PLANTED) > 0.999  # caught with certainty


def test_the_wide_limit_row_of_average_pooling_catches_a_planted_error_and_the_path_sum() -> None:
    """avgpool's Monte Carlo row is judged against the wide-limit law: the real nets pass it and a 25%
    variance error in the nets fails it."""
    size = 16
    pred = predict(family("avgpool"), sizes=(size,))
    row = closed_form_mc_verdict(pred, "avgpool, he", size, DEFAULT, seed=3)
    assert "wide-limit law" in row.claim and row.predicted == pytest.approx(pred.wide_grad_sq_norm(size))
    assert row.outcome is not Outcome.FAIL, row.detail
    bad = closed_form_mc_verdict(pred, "avgpool, he", size, DEFAULT, seed=3, variance_factor=PLANTED)
    assert bad.outcome is Outcome.FAIL, bad.detail
    # it judges the wide law, not the path sum (5% apart at s = 16: less than this row's 10% resolution)
    assert row.predicted > 1.04 * pred.grad_sq_norm(size)
