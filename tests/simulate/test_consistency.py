"""Rows without a law say whether the measured exponent is consistent with the paper's d^(1/q-1/2)."""

import math

import numpy as np
import pytest

from advdim.stats import (
    CANNOT_TELL,
    CONSISTENT,
    INCONSISTENT,
    paper_law_consistency,
    paper_law_slope,
)

D = [3 * s * s for s in (8, 16, 32, 64)]


def test_reference_slopes_are_the_paper_law():
    assert paper_law_slope(D, "1") == pytest.approx(0.5, abs=1e-12)
    assert paper_law_slope(D, "2") == pytest.approx(0.0, abs=1e-12)
    # q = inf: -1/2 plus the slope of sqrt(2 log d), which is 1/(2 log d) locally: between 5.3 and 9.4
    slope = paper_law_slope(D, "inf")
    assert -0.5 + 1 / (2 * math.log(D[-1])) <= slope <= -0.5 + 1 / (2 * math.log(D[0]))


@pytest.mark.parametrize(("slope", "se", "word"), [
    (0.50, 0.005, CONSISTENT),  # on the law, se small enough for power 0.8 at +-0.05
    (0.56, 0.005, INCONSISTENT),  # a 0.06 error is 12 se away
    (0.44, 0.005, INCONSISTENT),
    (0.53, 0.05, CANNOT_TELL),  # inside the band, but the band could not exclude +-0.05
])
def test_three_answers(slope, se, word):
    got, ref, tol = paper_law_consistency(D, "1", slope, se, n=200)
    assert got == word
    assert ref == pytest.approx(0.5)
    assert tol == pytest.approx(2.601 * se, rel=1e-3)  # t_(0.995, 199): the critical value at n = 200


def test_the_boundary_is_the_judged_rows_test():
    # just inside / just outside c*se: the same rule as slope_test
    se = 0.004
    c = paper_law_consistency(D, "2", 0.0, se, n=200)[2] / se
    assert paper_law_consistency(D, "2", 0.999 * c * se, se, n=200)[0] == CONSISTENT
    assert paper_law_consistency(D, "2", 1.001 * c * se, se, n=200)[0] == INCONSISTENT
    assert np.isfinite(c)
