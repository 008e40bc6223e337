"""Slope fits and the verdict's power analysis: known exponents, planted errors, rates by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from advdim.errors import AdvdimError
from advdim.stats import (
    ALPHA,
    MIN_GROUP,
    SE_FOR_POWER,
    fit_slope,
    fit_width_limit,
    power,
    ratio_fit,
    slope_test,
)

D = np.array([192.0, 768.0, 3072.0, 12288.0])


def _synthetic(exponent: float, topologies: int, noise: float, seed: int) -> np.ndarray:
    """Per-topology means c_t d^exponent with log-normal Monte Carlo noise."""
    rng = np.random.default_rng(seed)
    c = rng.lognormal(0.0, 0.5, size=(topologies, 1))
    return c * D**exponent * np.exp(rng.normal(0.0, noise, size=(topologies, D.size)))


@pytest.mark.parametrize("exponent", [0.5, 0.0, -0.37])
def test_fit_recovers_a_known_exponent(exponent: float) -> None:
    fit = fit_slope(D, _synthetic(exponent, 200, 0.2, seed=1), seed=0)
    # 5 bootstrap standard errors (false failure ~ 6e-7 under normality)
    assert abs(fit.slope - exponent) < 5 * fit.se
    assert fit.ci[0] < fit.slope < fit.ci[1]
    assert len(fit.per_topology) == 200 and all(lo <= m <= hi for lo, m, hi in zip(fit.lo, fit.means, fit.hi))


def test_verdict_rates_by_simulation_on_synthetic_studies() -> None:
    """300 synthetic studies: false rejection <= ALPHA and power at +-0.05 >= 0.99 when se <= SE_FOR_POWER.

    Counts are binomial; the bounds below are the 0.999 quantiles (false failure of this test < 2e-3).
    """
    reps, exponent = 300, 0.5
    fr = rp = rm = 0
    ses = []
    for i in range(reps):
        fit = fit_slope(D, _synthetic(exponent, 150, 0.15, seed=100 + i), seed=i, n_boot=400)
        ses.append(fit.se)
        fr += not slope_test(fit.slope, exponent, fit.se)[0]
        rp += not slope_test(fit.slope + 0.05, exponent, fit.se)[0]
        rm += not slope_test(fit.slope - 0.05, exponent, fit.se)[0]
    assert max(ses) <= SE_FOR_POWER
    assert fr <= stats.binom.ppf(0.999, reps, ALPHA)
    assert reps - rp <= stats.binom.ppf(0.999, reps, 0.01) and reps - rm <= stats.binom.ppf(0.999, reps, 0.01)


def test_power_formula() -> None:
    assert power(SE_FOR_POWER) == pytest.approx(0.99, abs=1e-4)
    assert power(0.05) < 0.5
    assert slope_test(0.5, 0.5, 0.01) == (True, pytest.approx(0.02576, abs=1e-4))
    assert not slope_test(0.55, 0.5, 0.01)[0]


def test_ratio_fit() -> None:
    m = np.full((10, 3), 2.0) * np.random.default_rng(0).lognormal(0, 0.1, (10, 3))
    ratio, se = ratio_fit(m, np.full((10, 3), 2.0))
    assert abs(ratio - 1) < 5 * se


def test_a_dead_topology_keeps_the_fit_and_loses_only_its_own_slope() -> None:
    """A topology whose sampled nets were all dead at one size (zero mean) still counts in M(d)."""
    values = _synthetic(0.5, 50, 0.1, seed=5)
    values[7, 2] = 0.0
    fit = fit_slope(D, values, seed=0)
    assert np.isnan(fit.per_topology[7]) and np.isfinite(np.delete(np.array(fit.per_topology), 7)).all()
    assert abs(fit.slope - 0.5) < 5 * fit.se


def test_fit_preconditions() -> None:
    with pytest.raises(AdvdimError):
        fit_slope(D[:1], np.ones((3, 1)))
    with pytest.raises(AdvdimError):
        fit_slope(D, -np.ones((3, 4)))
    with pytest.raises(AdvdimError):
        fit_slope(D, np.ones((3, 3)))


X_GROUPS = 0.72 / np.array([4.0, 8.0, 16.0, 32.0])  # the strided width index at channels 4..32, s = 8..64


def _width_study(intercept: float, coefficient: float, per_group: int, noise: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-topology means with slope deviation ``intercept + coefficient * x`` from a known prediction."""
    rng = np.random.default_rng(seed)
    x = np.repeat(X_GROUPS, per_group)
    c = rng.lognormal(0.0, 0.5, size=(x.size, 1))
    predicted = c * D**0.5
    values = predicted * D ** (intercept + coefficient * x)[:, None] * np.exp(rng.normal(0, noise, (x.size, D.size)))
    return values, predicted, x


def test_width_limit_recovers_the_intercept_and_the_finite_width_term() -> None:
    values, predicted, x = _width_study(0.0, -0.3, 50, 0.15, seed=3)
    lim = fit_width_limit(D, values, predicted, x, seed=0)
    assert lim is not None and len(lim.groups) == 4
    # 5 bootstrap standard errors: false failure ~ 6e-7 each under normality
    assert abs(lim.deviation) < 5 * lim.se and abs(lim.coefficient + 0.3) < 5 * lim.coefficient_se
    assert lim.ci[0] < lim.deviation < lim.ci[1]
    # the plain fit sees the finite-width term as a deviation of about -0.3 * mean(x) = -0.026
    plain = fit_slope(D, values, seed=0).slope - 0.5
    assert plain < -0.015


def test_width_limit_is_skipped_without_two_usable_groups() -> None:
    values, predicted, x = _width_study(0.0, -0.3, 50, 0.15, seed=4)
    assert fit_width_limit(D, values, predicted, np.zeros_like(x)) is None  # index 0: nothing to extrapolate
    few = np.r_[np.zeros(x.size - MIN_GROUP + 1), np.ones(MIN_GROUP - 1)]
    assert fit_width_limit(D, values, predicted, few) is None  # the second group is too small
    with pytest.raises(AdvdimError):
        fit_width_limit(D, values, predicted[:-1], x)


def test_width_limit_verdict_rates_by_simulation() -> None:
    """200 synthetic width studies (4 groups x 40 topologies, finite-width term -0.3 per unit of x).

    False rejections of the true law <= the binomial 0.999 quantile at ALPHA; each planted
    intercept of +-0.05 rejected at least as often as the 0.001 quantile at power 0.99 allows
    (false failure of this test < 3e-3), with every se under SE_FOR_POWER.
    """
    reps = 200
    fr = rp = rm = 0
    for i in range(reps):
        values, predicted, x = _width_study(0.0, -0.3, 40, 0.12, seed=1000 + i)
        lim = fit_width_limit(D, values, predicted, x, seed=i, n_boot=400)
        assert lim is not None and lim.se <= SE_FOR_POWER
        fr += not slope_test(lim.deviation, 0.0, lim.se)[0]
        rp += not slope_test(lim.deviation + 0.05, 0.0, lim.se)[0]
        rm += not slope_test(lim.deviation - 0.05, 0.0, lim.se)[0]
    assert fr <= stats.binom.ppf(0.999, reps, ALPHA)
    assert reps - rp <= stats.binom.ppf(0.999, reps, 0.01) and reps - rm <= stats.binom.ppf(0.999, reps, 0.01)
