"""``advdim.testing.assert_law``: the property-test helper runs the study and the tests of
``advdim.stats``, Bonferroni over its planned looks (false failure <= 0.01 for a target that
follows its law; fixed seeds)."""

from __future__ import annotations

import pytest

from advdim.testing import assert_law


def test_a_target_that_follows_its_law_passes() -> None:
    res = assert_law("dense(widths=32)", q=(1, 2), nets=16, max_nets=64, seed=0)
    assert all(res.q[k].predicted_slope is not None for k in ("1", "2"))


def test_a_planted_exponent_fails_with_the_claim_in_the_message() -> None:
    with pytest.raises(AssertionError, match=r"slope of E\|\|d_x f\|\|_1 predicted 0\.5"):
        assert_law("dense(widths=32)", q=(1,), nets=16, max_nets=64, seed=0, plant_exponent=0.2)
