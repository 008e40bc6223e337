"""The EMPIRICAL verify checks at Scale.TINY: they pass, and they fail on a planted error."""

import pytest
from advdim.empirical._checks import check_batchnorm, check_dimension, check_lemma2, check_prop3

from advdim.checks import Budget, Scale


@pytest.mark.parametrize("check", [check_lemma2, check_prop3, check_dimension, check_batchnorm])
def test_check_passes_and_fails_on_planted_error(check, tmp_path):
    good = check(Budget(scale=Scale.TINY, seed=0, out_dir=str(tmp_path)))
    assert any(v.passed is True for v in good) and all(v.passed is not False for v in good)
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
