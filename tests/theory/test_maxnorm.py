"""The finite-width law of ``||d_x f||_inf`` on conv nets (advdim.theory._maxnorm).

Exact checks (the model's backward pass against autograd, the mean-field recursion), known answers
of the Monte Carlo (independent coordinates, a one-unit conv net whose law is a 2-D integral), the
calibration of its standard error, and one statistical comparison with the engine's real nets.
Every statistical test has a fixed seed and states its false-failure rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from advdim.theory import _gauss, predict
from advdim.theory._graph import Sign, steps
from advdim.theory._maxnorm import (
    GateLaw,
    backward,
    energy_means,
    estimate_max_norm,
    exact_energies,
    expected_max_norm,
    gate_correlations,
    inf_norm_exact,
    kappa,
    sample_gradients,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from advdim.arch import AvgPool, Conv, Dense, GlobalMaxPool, MaxPool, ReLU, family, parse
from advdim.errors import AdvdimError, HypothesisError
from advdim.testing import specs

#: five standard errors: a false failure of a correct two-sided normal test has probability 5.7e-7
Z = 5.0


# --------------------------------------------------------------------------------------------
# Exact: the backward pass of the gated linear net equals autograd
# --------------------------------------------------------------------------------------------


def _autograd(spec, weights, gates, logit):  # type: ignore[no-untyped-def]
    """The input gradient of the gated linear net by torch autograd (one net at a time)."""
    import torch
    from torch.nn import functional as F

    from advdim.arch import BatchNorm, Flatten, GlobalAvgPool

    out = []
    for r in range(next(iter(weights.values())).shape[0]):
        x = torch.zeros(1, *spec.input_shape, dtype=torch.float64, requires_grad=True)
        h = x
        for s in steps(spec):
            layer = s.layer
            if isinstance(layer, Conv):
                if layer.pad:
                    mode = {"circular": "circular", "zeros": "constant", "reflect": "reflect"}[layer.padding.value]
                    h = F.pad(h, (layer.pad,) * 4, mode=mode)
                h = F.conv2d(h, torch.from_numpy(weights[s.index][r]), stride=layer.stride, dilation=layer.dilation)
            elif isinstance(layer, Dense):
                h = h @ torch.from_numpy(weights[s.index][r]).T
            elif isinstance(layer, ReLU):
                h = h * torch.from_numpy(gates[s.index][r]) if s.index in gates else h
            elif isinstance(layer, Flatten):
                h = h.flatten(1)
            elif isinstance(layer, GlobalAvgPool):
                h = h.mean((2, 3))
            elif isinstance(layer, AvgPool):
                h = F.avg_pool2d(h, layer.size)
            elif isinstance(layer, BatchNorm):
                h = h / math.sqrt(1 + 1e-5)
        (grad,) = torch.autograd.grad(h[0, logit], x)
        out.append(grad[0].numpy())
    return np.stack(out)


@settings(max_examples=40, deadline=None)
@given(specs(max_side=7, max_channels=3, allow_batchnorm=True), st.integers(0, 2**31 - 1))
def test_backward_equals_autograd(spec, seed) -> None:  # type: ignore[no-untyped-def]
    """Every padding, stride, dilation, pool and head: ``W_1^T D_1 ... e_k`` equals autograd to 1e-10."""
    if any(isinstance(layer, (MaxPool, GlobalMaxPool)) for layer in spec.layers):
        return  # routed: no path-sum model
    rng = np.random.default_rng(seed)
    weights, gates = {}, {}
    for s in steps(spec):
        layer = s.layer
        if isinstance(layer, Conv):
            weights[s.index] = rng.standard_normal((2, layer.out_channels, s.in_shape[0], layer.kernel, layer.kernel))
        elif isinstance(layer, Dense):
            weights[s.index] = rng.standard_normal((2, layer.out_features, s.in_shape[0]))
        elif isinstance(layer, ReLU) and s.sign is not Sign.NONNEG:
            gates[s.index] = (rng.random((2, *s.in_shape)) < 0.5).astype(np.float64)
    logit = int(rng.integers(spec.n_classes))
    got = backward(spec, weights, gates, logit)
    assert got.shape == (2, *spec.input_shape)
    assert np.abs(got - _autograd(spec, weights, gates, logit)).max() <= 1e-10 * max(1.0, np.abs(got).max())


# --------------------------------------------------------------------------------------------
# Exact: the mean-field correlation of distinct positions of one channel
# --------------------------------------------------------------------------------------------


def test_gate_correlations_follow_the_arc_cosine_map() -> None:
    rho = gate_correlations(family("strided", final=2).spec(16))
    assert list(rho) == [1, 3, 5, 7]
    assert rho[1] == 0.0  # i.i.d. zero-mean inputs: no channel offset at the first layer
    assert rho[3] == pytest.approx(1 / math.pi, rel=1e-12)
    assert rho[5] == pytest.approx(kappa(1 / math.pi), rel=1e-12)
    assert rho[7] == pytest.approx(kappa(kappa(1 / math.pi)), rel=1e-12)
    # a 2x2 average pool of positions with correlation r: variance (1 + 3r)/4, covariance r
    pooled = gate_correlations(family("avgpool", final=4).spec(8))
    assert pooled[4] == pytest.approx(4 * (1 / math.pi) / (1 + 3 / math.pi), rel=1e-12)
    # LeCun scales every layer by a constant: the correlations are He's
    assert gate_correlations(family("strided").spec(16), "lecun") == pytest.approx(
        gate_correlations(family("strided").spec(16)), rel=1e-12)
    # PyTorch's default init: the biases (variance 1/(3 fan_in), weights' 1/(3 fan_in) each) are a common
    # offset already at the first layer, fan_in = 3 * 9: rho = (1/81) / (27/81 + 1/81)
    assert gate_correlations(family("strided").spec(16), "torch")[1] == pytest.approx(1 / 28, rel=1e-12)
    assert kappa(1.0) == 1.0 and kappa(0.0) == pytest.approx(1 / math.pi)


# --------------------------------------------------------------------------------------------
# Known answers of the Monte Carlo
# --------------------------------------------------------------------------------------------


def test_dense_net_reduces_to_independent_gaussians() -> None:
    """``3x4x4 > flatten > dense(10)``: ``g`` is a row of i.i.d. ``N(0, 2/48)`` weights, whose expected
    maximum :func:`_gauss.expected_q_norm` computes by quadrature.  4000 draws, Z se."""
    spec = parse("3x4x4 > flatten > dense(10)")
    est = estimate_max_norm(spec, 4000, seed=1)
    exact = _gauss.expected_q_norm(np.array([2 / 48]), np.array([48.0]), math.inf)
    assert abs(est.mean - exact) <= Z * est.se
    assert est.se < 0.01 * exact


def _one_unit_law(n: int, rho: float) -> float:
    """``E max_i |w1 w2 b1_i b2_i v_i|`` for the net ``1 x s x s > conv(1, k=1) > relu > conv(1, k=1) > relu >
    flatten > dense``: ``w1, w2 ~ N(0, 2)``, ``v_i ~ N(0, 2/n)``, ``b1_i`` Bernoulli(1/2) and ``b2_i``
    Bernoulli(pi) with ``pi = Phi(sqrt(rho/(1 - rho)) xi)``: ``E|w1| E|w2| sqrt(2/n) E_xi int_0^T
    1 - (1 - pi/2 + pi/2 erf(t/sqrt 2))^n dt`` by Gauss-Hermite (60 nodes) in ``xi`` and Gauss-Legendre
    (300 nodes) in t; ``T = sqrt(2 log(2n + 1)) + 10`` leaves a tail below 1e-20.  Both rules are
    converged to 1e-12 (doubling the nodes changes nothing at that level)."""
    from scipy.special import erf, ndtr

    e_abs_w = math.sqrt(2.0) * math.sqrt(2 / math.pi)
    xi, w_xi = np.polynomial.hermite_e.hermegauss(60)
    pi = ndtr(math.sqrt(rho / (1 - rho)) * xi) if rho > 0 else np.full_like(xi, 0.5)
    top = math.sqrt(2 * math.log(2 * n + 1)) + 10.0
    t, w_t = np.polynomial.legendre.leggauss(300)
    t, w_t = (t + 1) * top / 2, w_t * top / 2
    cdf = 1 - pi[:, None] / 2 + pi[:, None] / 2 * erf(t[None, :] / math.sqrt(2))
    inner = -np.expm1(n * np.log(cdf)) @ w_t
    return e_abs_w**2 * math.sqrt(2 / n) * float(w_xi @ inner) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("law", [GateLaw.CHANNEL, GateLaw.INDEPENDENT])
def test_one_unit_conv_net_matches_its_integral(law: GateLaw) -> None:
    """A conv net whose law is a 2-D integral: the second ReLU's channel has rho = 1/pi (CHANNEL) or
    independent gates; 20000 draws, Z se.  The two laws differ by 5%, about 9 se (the test has power)."""
    spec = parse("1x6x6 > conv(1,k=1) > relu > conv(1,k=1) > relu > flatten > dense(3)")
    assert gate_correlations(spec)[3] == pytest.approx(1 / math.pi)
    est = estimate_max_norm(spec, 20000, law=law, seed=2)
    rho = 1 / math.pi if law is GateLaw.CHANNEL else 0.0
    assert abs(est.mean - _one_unit_law(36, rho)) <= Z * est.se
    other = _one_unit_law(36, 0.0 if law is GateLaw.CHANNEL else 1 / math.pi)
    assert abs(est.mean - other) > Z * est.se


def test_energies_are_the_path_sums_under_both_gate_laws() -> None:
    """The control variates' means: the squared norms below every weight layer average to the exact
    path sums (gates Bernoulli(1/2), independent of the weights).  3000 draws, Z se per layer."""
    spec = family("strided", channels=4, final=2).spec(8)
    means = energy_means(spec)
    assert means[-1] == pytest.approx(2.0)  # He: E||g||_2^2 = 2 (Theorem 5)
    for law in GateLaw:
        en: list[np.ndarray] = []
        sample_gradients(spec, 3000, seed=3, law=law, energies=en)
        x = np.stack(en, axis=1)
        se = x.std(axis=0, ddof=1) / math.sqrt(x.shape[0])
        assert np.all(np.abs(x.mean(axis=0) - means) <= Z * se), (law, x.mean(axis=0), means)


def test_reflect_padding_drops_the_control_variates() -> None:
    """Reflect padding under a global average: the bulk path sums are not the model's energies (H5 fails:
    3000 draws put E||delta||^2 below the last conv 10 se or more above 0.5), so the plain mean is used."""
    spec = family("gap", channels=4, final=2, padding="reflect").spec(8)
    assert not exact_energies(spec) and exact_energies(family("gap", channels=4, final=2).spec(8))
    en: list[np.ndarray] = []
    sample_gradients(spec, 3000, seed=6, energies=en)
    assert en[1].mean() - energy_means(spec)[1] > 10 * en[1].std(ddof=1) / math.sqrt(3000)
    est = estimate_max_norm(spec, 300, seed=7)
    assert (est.mean, est.se) == (est.plain_mean, est.plain_se)


def test_standard_error_is_calibrated() -> None:
    """40 independent estimates of 200 draws: sum((m_i - mean)^2 / se_i^2) ~ chi2(39).  Accepted between
    the 0.0005 and 0.9995 quantiles (false failure 1e-3); an se off by a factor 1.6 fails with near certainty."""
    from scipy.stats import chi2

    spec = family("gap", channels=4, final=2).spec(8)
    ests = [estimate_max_norm(spec, 200, seed=100 + i) for i in range(40)]
    m = np.array([e.mean for e in ests])
    se = np.array([e.se for e in ests])
    stat = float(np.sum((m - m.mean()) ** 2 / se**2))
    assert chi2.ppf(0.0005, 39) <= stat <= chi2.ppf(0.9995, 39), stat
    assert not chi2.ppf(0.0005, 39) <= stat * 1.6**2 <= chi2.ppf(0.9995, 39)  # power against a wrong se


# --------------------------------------------------------------------------------------------
# The prediction against real nets (the repository's engine)
# --------------------------------------------------------------------------------------------


def test_prediction_matches_the_engine_on_a_small_conv_member() -> None:
    """``strided(channels=8, final=2)`` at s = 16: 3000 real He nets (one input each) against the
    channel-gate prediction, |difference| <= Z * combined se (false failure 5.7e-7 if the model is
    exact; its measured bias on the validated members is <= 1.7%, about 2 se here).  The independent-
    Gaussian law misses by more than Z se (power)."""
    import torch
    from advdim.simulate._engine import sample_norms

    torch.set_num_threads(1)
    spec = family("strided", channels=8, final=2).spec(16)
    out = sample_norms(spec, nets=3000, inputs=1, seed=4)["inf"][:, 0]
    meas, meas_se = float(out.mean()), float(out.std(ddof=1) / math.sqrt(out.size))
    est = expected_max_norm(spec, rel_se=0.005, seed=5)
    assert est is not None
    tol = Z * math.hypot(meas_se, est.se)
    assert abs(est.mean - meas) <= tol, (est.mean, meas, tol)
    values, counts = _gauss.profile(predict(spec).input_variances(16))  # type: ignore[arg-type]
    assert abs(_gauss.expected_q_norm(values, counts, math.inf) - meas) > tol


# --------------------------------------------------------------------------------------------
# The hook in Prediction.expected_norm and the coverage
# --------------------------------------------------------------------------------------------


def test_expected_norm_uses_the_model_on_covered_conv_members_only() -> None:
    pred = predict(family("strided", channels=4, final=2), sizes=(4, 8))
    est = expected_max_norm(pred.spec_at(8))
    assert est is not None and pred.expected_norm(math.inf, 8) == est.mean
    values, counts = _gauss.profile(pred.input_variances(8))  # type: ignore[arg-type]
    assert pred.expected_norm(2, 8) == _gauss.expected_q_norm(values, counts, 2.0)  # q < inf: unchanged
    dense = predict(family("dense", widths=(16,)), sizes=(4, 8))
    values, counts = _gauss.profile(dense.input_variances(8))  # type: ignore[arg-type]
    assert dense.expected_norm(math.inf, 8) == _gauss.expected_q_norm(values, counts, math.inf)
    avg = predict(family("avgpool", channels=4, final=2), sizes=(4, 8))
    values, counts = _gauss.profile(avg.input_variances(8))  # type: ignore[arg-type]
    assert avg.expected_norm(math.inf, 8) == _gauss.expected_q_norm(values, counts, math.inf)  # not covered
    assert pred.to_json()["expected_norm_inf"]["8"]["gates"] == "channel"


def test_coverage() -> None:
    assert inf_norm_exact(family("strided").spec(16)) and inf_norm_exact(family("gap").spec(64))
    assert inf_norm_exact(family("strided", padding="zeros", kernel=5).spec(32))
    assert inf_norm_exact(family("dense").spec(8))  # the independent law is exact for a dense first layer
    assert inf_norm_exact(family("strided").spec(16), "glorot")
    assert not inf_norm_exact(family("avgpool").spec(16))  # H1 fails locally: 3-6% off at s >= 16
    assert inf_norm_exact(family("gap").spec(16), "torch") and inf_norm_exact(family("gap").spec(16), "orthogonal")
    assert not inf_norm_exact(family("maxpool").spec(16))
    assert not inf_norm_exact(family("strided").spec(1024))  # beyond the Monte Carlo budget


def test_bad_requests_raise_one_line_errors() -> None:
    spec = family("strided", channels=4, final=2).spec(8)
    with pytest.raises(AdvdimError, match="relative standard error"):
        expected_max_norm(spec, rel_se=0.0)
    with pytest.raises(AdvdimError, match="positive"):
        sample_gradients(spec, 0)
    with pytest.raises(HypothesisError, match="maxpool"):
        sample_gradients(family("maxpool", channels=4, final=2).spec(8), 4)
    with pytest.raises(AdvdimError, match="logit"):
        sample_gradients(spec, 4, logit=10)


@pytest.mark.parametrize(("head", "size"), [("globalavgpool", 8), ("globalavgpool", 16), ("flatten", 8),
                                            ("flatten", 16)])
def test_the_stated_bound_holds_outside_the_validated_members(head: str, size: int) -> None:
    """Issue 22: the level states the channel-gate model's error bound (``channel_gate_bound``): 2%, or 7%
    with a global-average-pool head (real nets 3-6% above the model: issue 22's zero-padded kernel-4 net,
    no validated member).  20000 real He nets, one input each: |relative gap| <= bound + Z * combined
    relative se (false failure about 5.7e-7 when the gap is at most the bound); without the pool, a
    model 1.1x off is outside it (the check can fail)."""
    import torch
    from advdim.simulate._engine import sample_norms
    from advdim.theory._best import channel_gate_bound
    from advdim.theory._maxnorm import covers

    torch.set_num_threads(1)
    spec = parse(f"3x{size}x{size} > conv(8,4,s=2,pad=zeros) > relu > conv(8,pad=zeros) > relu > {head} > dense(10)")
    assert covers(spec) is None
    out = sample_norms(spec, nets=20000, inputs=1, seed=11)["inf"][:, 0]
    meas, meas_se = float(out.mean()), float(out.std(ddof=1) / math.sqrt(out.size))
    est = expected_max_norm(spec, rel_se=0.003, seed=12)
    assert est is not None
    bound, _ = channel_gate_bound(spec)
    assert bound == (0.07 if head == "globalavgpool" else 0.02)
    rel_tol = bound + Z * math.hypot(meas_se / meas, est.se / est.mean)
    assert abs(est.mean / meas - 1) <= rel_tol, (est.mean, meas, rel_tol)
    if head == "flatten":
        assert abs(1.1 * est.mean / meas - 1) > rel_tol
