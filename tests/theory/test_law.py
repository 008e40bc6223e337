"""Finite-d Gaussian norms, slopes, inits and the loss law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from advdim.theory import loss_weight, predict
from advdim.theory._gauss import expected_q_norm
from hypothesis import given, settings

from advdim.arch import Spec, family, resolve_target
from advdim.testing import specs


@pytest.mark.parametrize("q", [1.0, 2.0, 3.0, math.inf])
def test_expected_q_norm_matches_sampling(q: float) -> None:
    # two variance classes (as with zero padding); 4000 samples, 5 standard errors (false failure ~6e-7)
    values, counts = np.array([0.5, 2.0]), np.array([30.0, 10.0])
    rng = np.random.default_rng(0)
    sig = np.sqrt(np.repeat(values, counts.astype(int)))
    g = rng.standard_normal((4000, sig.size)) * sig
    norms = np.abs(g).max(axis=1) if math.isinf(q) else (np.abs(g) ** q).sum(axis=1) ** (1 / q)
    se = norms.std(ddof=1) / math.sqrt(norms.size)
    # the delta-method Jensen term is O(1/d^2) off at d = 40: far below the standard error here
    assert abs(norms.mean() - expected_q_norm(values, counts, q)) < 5 * se


def test_planted_wrong_max_law_fails_sampling() -> None:
    # sigma sqrt(2 log 2d), the asymptotic extreme value, is visibly off at d = 40
    rng = np.random.default_rng(0)
    norms = np.abs(rng.standard_normal((4000, 40))).max(axis=1)
    se = norms.std(ddof=1) / math.sqrt(norms.size)
    assert abs(norms.mean() - math.sqrt(2 * math.log(80))) > 5 * se
    assert abs(norms.mean() - expected_q_norm(np.array([1.0]), np.array([40.0]), math.inf)) < 5 * se


def test_exponents_and_finite_slopes_he() -> None:
    pred = predict(family("dense", widths=(64,)), sizes=(8, 16, 32, 64))
    assert pred.exponent == {"1": 0.5, "2": 0.0, "inf": -0.5}
    assert pred.predicted_slope["1"] == pytest.approx(0.5, abs=1e-9)
    assert pred.predicted_slope["2"] == pytest.approx(0.0, abs=1e-3)
    # the extreme-value term: the finite-d slope of E max is shallower than -1/2
    assert -0.5 < pred.predicted_slope["inf"] < -0.35
    assert pred.exponent_q(4) == pytest.approx(-0.25)


def test_other_inits_change_the_constant_and_the_exponent_with_depth() -> None:
    lecun = predict(family("strided"), sizes=(8, 16, 32), init="lecun")
    # LeCun halves E||g||^2 per ReLU layer; the strided family adds one layer per doubling of s
    assert lecun.beta == pytest.approx(-0.5)
    assert lecun.exponent["2"] == pytest.approx(-0.25)
    dense = predict(family("dense", widths=(64,)), sizes=(8, 16), init="lecun")
    assert dense.grad_sq_norm_expr == pytest.approx(0.5) and dense.beta == 0.0  # depth fixed: constant only


def test_loss_law() -> None:
    pred = predict(family("dense", widths=(64,)), sizes=(8, 16))
    k = 10
    assert loss_weight(k) == pytest.approx(math.sqrt(0.9))
    assert pred.expected_loss_norm(2, 8) == pytest.approx(loss_weight(k, logit_variance=2.0) * pred.expected_norm(2, 8))
    assert pred.expected_loss_norm(1, 8, softmax_weight=0.5) == pytest.approx(0.5 * pred.expected_norm(1, 8))
    with pytest.raises(ValueError):
        loss_weight(k, 3.0)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # QUADPACK's own roundoff note at 1e6
@pytest.mark.parametrize("counts", [[1.0, 3.0], [40.0, 3.0], [1e6, 3.0], [7.0, 1e4]])
def test_expected_max_agrees_with_scipy_quadrature(counts: list[float]) -> None:
    """The numpy-only adaptive Gauss-Legendre integral equals SciPy's QUADPACK on the same
    integrand to 1e-9 relative (QUADPACK's own requested accuracy is 1e-10)."""
    from advdim.theory._gauss import _expected_max
    from scipy import integrate, special

    values, c = np.array([1.0, 0.3]), np.array(counts)
    sig = np.sqrt(values)

    def tail(t: float) -> float:
        return float(-np.expm1(np.sum(c * np.log(np.maximum(special.erf(t / (sig * math.sqrt(2))), 1e-300)))))

    peak = math.sqrt(2 * math.log(2 * c.sum() + 1))
    ref = sum(integrate.quad(tail, lo, hi, limit=200, epsabs=0, epsrel=1e-10)[0]
              for lo, hi in ((0.0, peak), (peak, peak + 12.0)))
    assert _expected_max(values, c) == pytest.approx(ref, rel=1e-9)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(specs(max_side=8, allow_batchnorm=True))
def test_predict_never_raises_on_generated_specs(spec: Spec) -> None:
    """Every spec the grammar's strategies generate gets a law or a stated "no law" (issue 11), at its
    own size and over the sizes where the same layers are valid."""
    pred = predict(spec)
    assert pred.has_law or pred.reasons["law"].startswith("no law:")
    target = resolve_target(spec)
    sizes = target.valid_sizes(range(spec.input_shape[1], 4 * spec.input_shape[1] + 1))[:3]
    if len(sizes) >= 2:
        over = predict(target, sizes)
        assert over.sizes == tuple(sizes) and over.has_law == pred.has_law
        if over.has_law:
            assert all(over.predicted_slope[k] is not None for k in ("1", "2"))


def test_spec_text_over_sizes_matches_the_family_it_equals() -> None:
    """Spec text with a dense head after flatten is the `dense` family's member at every size:
    the same per-size prediction and slopes."""
    fam = family("dense", widths=(16,))
    text = "3x8x8 > flatten > dense(16) > relu > dense(10)"
    a, b = predict(text, (8, 16, 32)), predict(fam, (8, 16, 32))
    for s in (8, 16, 32):
        assert a.expected_norm(1.0, s) == pytest.approx(b.expected_norm(1.0, s), rel=1e-12)
    assert a.predicted_slope == pytest.approx(b.predicted_slope)
