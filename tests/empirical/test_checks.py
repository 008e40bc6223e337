"""The EMPIRICAL verify checks at Scale.TINY: they pass, and they fail on a planted error."""

import math

import numpy as np
import pytest
from advdim.empirical._checks import (
    check_batchnorm,
    check_dimension,
    check_lemma2,
    check_prop3,
    pgd_dampening_verdict,
)

from advdim.checks import Budget, Scale
from advdim.errors import AdvdimError
from advdim.verdict import Outcome


@pytest.mark.parametrize("check", [check_lemma2, check_prop3, check_dimension, check_batchnorm])
def test_check_passes_and_fails_on_planted_error(check, tmp_path):
    good = check(Budget(scale=Scale.TINY, seed=0, out_dir=str(tmp_path)))
    assert any(v.passed is True for v in good) and all(v.passed is not False for v in good)
    if check is not check_batchnorm:  # every judged row states its power against the error it must catch
        assert all(v.power is not None and v.resolution for v in good if v.outcome is not Outcome.REPORTED)
        assert any(v.outcome is Outcome.PASS for v in good)
    # gradient norms multiplied by d^0.5: the ratio, the eps-order and the sqrt(d) slope all move (the
    # batch-norm check: the BN nets' slope, about 1, goes above the initialisation's law)
    bad = check(Budget(scale=Scale.TINY, seed=0, plant_exponent=0.5))
    assert any(v.passed is False for v in bad)


def test_lemma2_writes_its_plot(tmp_path):
    verdicts = check_lemma2(Budget(scale=Scale.TINY, seed=0, out_dir=str(tmp_path)))
    assert (tmp_path / "lemma2.png").is_file() and (tmp_path / "lemma2.svg").is_file()
    assert verdicts[0].extra["plots"]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("check", [check_lemma2, check_prop3, check_dimension, check_batchnorm])
def test_check_runs_on_a_gpu(check):
    """A net trained on the GPU: the checks move their test points to it (a device mismatch once failed them)."""
    verdicts = check(Budget(scale=Scale.TINY, seed=0, device="cuda"))
    assert all(v.passed is not False for v in verdicts), [(v.claim, v.detail) for v in verdicts if not v.passed]


def test_batchnorm_check_writes_its_figure(tmp_path):
    verdicts = check_batchnorm(Budget(scale=Scale.TINY, seed=0, out_dir=str(tmp_path)))
    assert (tmp_path / "figure_batchnorm.png").is_file() and (tmp_path / "figure_batchnorm.svg").is_file()
    assert verdicts[0].extra["plots"] and len([v for v in verdicts if "condition" in v.extra]) == 4


# ---- the PGD-dampening claim (Section 4.2), judged one-sided -----------------------------------


def _runs(slope: float, rng, n: int = 200, spread: float = 0.4):
    """Per-point ||d_x L||_1 at three up-sampled sizes growing like sqrt(d)^slope (log-normal points)."""
    out = []
    for d in (784, 3136, 12544):
        out.append((d, math.sqrt(d) ** slope * rng.lognormal(0.0, spread, n)))
    return out


def test_pgd_dampening_passes_when_dampened_and_fails_when_reversed():
    # one-sided at PGD_ALPHA = 0.01 each way: a true difference of -0.4 at a bootstrap se of about 0.04
    # is found with power ~1; fixed seeds, so each assertion is deterministic
    rng = np.random.default_rng(0)
    plain, pgd = _runs(1.0, rng), _runs(0.6, rng)
    good = pgd_dampening_verdict(plain, pgd, seed=0)
    assert good.outcome is Outcome.PASS and good.interval[1] < 0 and good.power is not None, good.detail
    assert good.measured == pytest.approx(good.extra["pgd_slope"] - good.extra["plain_slope"])
    reversed_ = pgd_dampening_verdict(pgd, plain, seed=0)  # PGD steeper than plain: the opposite claim
    assert reversed_.outcome is Outcome.FAIL and reversed_.interval[0] > 0


def test_pgd_dampening_is_inconclusive_without_an_effect():
    # equal slopes: a pass or a fail each has probability PGD_ALPHA = 0.01 (fixed seed)
    rng = np.random.default_rng(1)
    v = pgd_dampening_verdict(_runs(1.0, rng), _runs(1.0, rng), seed=0)
    assert v.outcome is Outcome.INCONCLUSIVE and v.interval[0] < 0 < v.interval[1]


def test_pgd_dampening_needs_matching_sizes():
    rng = np.random.default_rng(2)
    with pytest.raises(AdvdimError):
        pgd_dampening_verdict(_runs(1.0, rng)[:2], _runs(1.0, rng), seed=0)


def test_dimension_rows_judge_the_pgd_claim_and_state_power():
    rows = check_dimension(Budget(scale=Scale.TINY, seed=0))
    (claim,) = [v for v in rows if "dampens" in v.claim]
    assert claim.status is not None and claim.power is not None and claim.resolution
    judged = [v for v in rows if v.outcome is not Outcome.REPORTED]
    assert all(v.power is not None and v.resolution for v in judged)
    # a planted d^0.5 on every gradient norm cancels in the difference of slopes
    planted = check_dimension(Budget(scale=Scale.TINY, seed=0, plant_exponent=0.5))
    (moved,) = [v for v in planted if "dampens" in v.claim]
    assert moved.measured == pytest.approx(claim.measured, abs=1e-9) and moved.outcome is claim.outcome
