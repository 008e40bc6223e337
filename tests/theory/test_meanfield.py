"""The wide-limit recursion of E||d_x f||_2^2 (theory/_meanfield.py) against the path sum, brute force and Monte Carlo.

Statistical checks use fixed seeds and 5 standard errors (two-sided false-failure rate 5.7e-7 for
a normal mean; the sums here are over >= 10^4 terms or are means of >= 1000 nets, close to normal).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from advdim.theory import predict
from advdim.theory._graph import input_variances
from advdim.theory._meanfield import (
    _GateStats,
    _tangent_cross,
    _tangent_relu,
    first_layer_moment,
    pooling_correction_applies,
    relu_kernel,
    wide_grad_sq_norm_at,
    wide_law,
)
from hypothesis import assume, given, settings

from advdim.arch import GlobalMaxPool, MaxPool, Spec, family, parse
from advdim.build import build
from advdim.errors import AdvdimError, HypothesisError
from advdim.testing import specs

SIGMAS = 5.0


# ---------------------------------------------------------------------------------------------
# (a) without pooling the recursion is the path sum
# ---------------------------------------------------------------------------------------------

NO_POOL = (
    "3x8x8 > conv(4,k=3,s=2,pad=zeros) > relu > conv(5) > relu > flatten > dense(8) > relu > dense(4)",
    "2x8x8 > conv(3,pad=reflect) > relu > conv(3,s=2) > relu > flatten > dense(3)",
    "1x6x6 > conv(2,k=3,dil=2,pad=valid) > relu > flatten > dense(6) > relu > dense(2)",
    "2x6x6 > conv(3) > conv(4,pad=zeros) > relu > batchnorm > relu > flatten > dense(3)",
    "2x4x4 > conv(3,k=1) > relu > globalavgpool > dense(3)",  # k = 1: one route per input, no cross term
)


@pytest.mark.parametrize("text", NO_POOL)
def test_no_pooling_equals_the_path_sum(text: str) -> None:
    spec = parse(text)
    law = wide_law(spec, inputs=2, probes=0)
    assert law.value == pytest.approx(law.path_sum, rel=1e-12, abs=1e-15)
    assert law.tangent == 0.0


def test_members_without_pooling() -> None:
    for spec in (family("strided", channels=4).spec(8), family("dense", widths=(16,)).spec(4)):
        assert not pooling_correction_applies(spec)
        assert wide_law(spec, inputs=2).value == pytest.approx(float(input_variances(spec).sum()), rel=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(specs(max_side=6, max_channels=3, allow_pools=False, allow_batchnorm=True))
def test_no_pooling_property(spec: Spec) -> None:
    # random pool-free specs (a global average pool only over a 1 x 1 map) starting with a conv or flatten
    assume(not any(isinstance(layer, (MaxPool, GlobalMaxPool)) for layer in spec.layers))
    assume(spec.layers[0].kind in ("conv", "flatten") and not pooling_correction_applies(spec))
    x = np.random.default_rng(1).standard_normal(spec.input_shape)
    assert wide_grad_sq_norm_at(spec, x) == pytest.approx(float(input_variances(spec).sum()), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# The Gaussian integrals, against sampling
# ---------------------------------------------------------------------------------------------


def test_first_layer_moment_matches_sampling() -> None:
    rng = np.random.default_rng(3)
    n, var, m = 5, 0.4, 400_000
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    w = rng.normal(0.0, math.sqrt(var), (m, n))
    gate = ((w @ a) > 0) & ((w @ b) > 0)
    for t, u in [(0, 0), (0, 1), (2, 4), (3, 1)]:
        sample = w[:, t] * w[:, u] * gate
        se = sample.std(ddof=1) / math.sqrt(m)
        assert abs(sample.mean() - first_layer_moment(a, b, np.array(t), np.array(u), var)) < SIGMAS * se
    # the path sum's value var/4 (t = t') and 0 (t != t') are visibly off
    sample = w[:, 0] * w[:, 1] * gate
    assert abs(sample.mean()) > SIGMAS * sample.std(ddof=1) / math.sqrt(m)


def _four_gaussian(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """A random covariance of (z_a, z_b, dz_a, dz_b) and m samples of it."""
    g = rng.standard_normal((4, 4))
    cov = g @ g.T + 0.3 * np.eye(4)
    return cov, rng.multivariate_normal(np.zeros(4), cov, size=m)


def _stats(cov: np.ndarray) -> tuple[_GateStats, np.ndarray]:
    """Gate statistics of (z_a, z_b) as a 1 x 2 map, and the covariance c(a, b) = Cov(z_a, dz_b)."""
    s = cov[:2, :2].reshape(1, 2, 1, 2)
    _, prob = relu_kernel(s)
    sd = np.sqrt(np.diag(cov[:2, :2])).reshape(1, 2)
    rho = np.cos(2 * math.pi * (0.5 - prob))
    return _GateStats(sd, rho, np.sqrt(1 - rho**2), prob), cov[:2, 2:].reshape(1, 2, 1, 2)


def test_relu_maps_match_sampling() -> None:
    rng = np.random.default_rng(4)
    m = 400_000
    cov, z = _four_gaussian(rng, m)
    za, zb, da, db = z.T
    stats, c = _stats(cov)
    kern, prob = relu_kernel(cov[:2, :2].reshape(1, 2, 1, 2))
    both = (za > 0) & (zb > 0)
    checks = [
        (np.maximum(za, 0) * np.maximum(zb, 0), kern[0, 0, 0, 1]),
        (both.astype(float), prob[0, 0, 0, 1]),
        (np.maximum(za, 0) * (zb > 0) * db, _tangent_relu(c, stats)[0, 0, 0, 1]),
        (np.maximum(zb, 0) * (za > 0) * da, _tangent_relu(c, stats)[0, 1, 0, 0]),
        (np.maximum(za, 0) * da, _tangent_relu(c, stats)[0, 0, 0, 0]),
    ]
    # the gate-tangent cross term of E[1 1 dz_a dz_b]: with B = 1 on the pair (a, b) only
    b = np.zeros((1, 2, 1, 2))
    b[0, 0, 0, 1] = 1.0
    checks.append((both * da * db - prob[0, 0, 0, 1] * cov[2, 3], _tangent_cross(c, stats, b)))
    for sample, value in checks:
        assert abs(sample.mean() - value) < SIGMAS * sample.std(ddof=1) / math.sqrt(m)


# ---------------------------------------------------------------------------------------------
# (b) one-conv-layer nets: brute force over the first layer's weights
# ---------------------------------------------------------------------------------------------

ONE_LAYER = (
    "1x4x4 > conv(N,k=3) > relu > avgpool(2) > flatten > dense(1)",
    "1x4x4 > conv(N,k=3,pad=zeros) > relu > avgpool(2) > flatten > dense(1)",
    "1x4x4 > conv(N,k=3) > relu > globalavgpool > dense(1)",
    "2x4x4 > conv(N,k=3) > avgpool(2) > relu > globalavgpool > dense(1)",
)


@pytest.mark.parametrize("text", ONE_LAYER)
def test_one_conv_layer_against_brute_force(text: str) -> None:
    """With a single hidden conv layer, E_w||d_x f||^2 at a fixed x is an average over i.i.d. channels.

    The readout ``v ~ N(0, 2 / fan_in)`` is integrated exactly: ``E_v||g||^2 = Var(v) sum_u ||d_x h_u||^2``.
    The Jacobian of the trunk comes from torch (its own padding), over N = 20000 He channels: the
    per-channel sums are i.i.d., so their mean has a standard error from the sample.
    """
    n = 20_000
    spec = parse(text.replace("N", str(n)))
    x = np.random.default_rng(5).standard_normal(spec.input_shape)
    net = build(spec, "he", seed=6, dtype=torch.float64)
    trunk = torch.nn.Sequential(*list(net)[: -1 if spec.layers[-2].kind == "globalavgpool" else -2])
    import torch.autograd.forward_ad as fwad

    tangents = torch.eye(x.size, dtype=torch.float64).reshape(x.size, *x.shape)  # one per input coordinate
    with torch.no_grad(), fwad.dual_level():
        out = trunk(fwad.make_dual(torch.from_numpy(x).expand_as(tangents).clone(), tangents))
        jac = fwad.unpack_dual(out).tangent  # (coordinates, n, ...): d h_u / d x_i
    per_channel = (jac.reshape(x.size, n, -1) ** 2).sum(dim=(0, 2)).numpy()  # sum over a channel's units
    fan_in = spec.shapes()[-2][0]
    sample = (2.0 / fan_in) * n * per_channel
    mean, se = sample.mean(), sample.std(ddof=1) / math.sqrt(n)
    wide = wide_grad_sq_norm_at(spec, x)
    assert abs(mean - wide) < SIGMAS * se
    if "avgpool(2) > relu" not in text:  # pooling after the ReLU: the path sum misses the cross terms
        assert abs(mean - float(input_variances(spec).sum())) > SIGMAS * se


# ---------------------------------------------------------------------------------------------
# The gate-tangent terms: every coordinate against random directions
# ---------------------------------------------------------------------------------------------


def test_probe_estimate_agrees_with_every_coordinate() -> None:
    spec = parse("1x4x4 > conv(8) > relu > conv(8) > relu > globalavgpool > dense(1)")
    x = np.random.default_rng(8).standard_normal(spec.input_shape)
    exact = wide_grad_sq_norm_at(spec, x)
    estimates = np.array([wide_grad_sq_norm_at(spec, x, probes=1, seed=s) for s in range(200)])
    se = estimates.std(ddof=1) / math.sqrt(estimates.size)
    assert abs(estimates.mean() - exact) < SIGMAS * se
    law = wide_law(spec, inputs=4, probes=0)
    assert law.tangent > 0.05 * law.value  # the wide ReLU's gate-tangent terms are a sizeable part here


# ---------------------------------------------------------------------------------------------
# (c) Monte Carlo over real nets
# ---------------------------------------------------------------------------------------------


def test_monte_carlo_agrees_with_wide_limit() -> None:
    # two conv layers, pooling after the wide ReLU: MC mean over 3000 nets of 32 channels, 5 standard errors
    from advdim.simulate._engine import sample_norms

    spec = parse("1x4x4 > conv(32) > relu > conv(32) > relu > avgpool(2) > flatten > dense(1)")
    per_net = sample_norms(spec, nets=3000, inputs=2, seed=9, dtype=torch.float64)["sq2"].mean(axis=1)
    mean, se = per_net.mean(), per_net.std(ddof=1) / math.sqrt(per_net.size)
    law = wide_law(spec, inputs=64, probes=0)
    assert abs(mean - law.value) < SIGMAS * math.hypot(se, law.stderr)
    assert abs(mean - law.path_sum) > SIGMAS * se  # the path sum is rejected by the same sample


# ---------------------------------------------------------------------------------------------
# Hooks and errors
# ---------------------------------------------------------------------------------------------


def test_prediction_hook() -> None:
    strided = predict(family("strided", channels=4), sizes=(8,), symmetry=False)
    assert not strided.pooling_correction_applies(8)
    assert strided.wide_grad_sq_norm(8) == strided.grad_sq_norm(8)
    pooled = predict(parse("1x4x4 > conv(4) > relu > globalavgpool > dense(2)"), symmetry=False)
    assert pooled.pooling_correction_applies(4)
    assert pooled.wide_grad_sq_norm(4) > pooled.grad_sq_norm(4)


def test_errors() -> None:
    with pytest.raises(HypothesisError, match="maxpool"):
        wide_law(parse("1x4x4 > conv(2) > relu > maxpool(2) > flatten > dense(2)"), inputs=2)
    with pytest.raises(HypothesisError, match="Gaussian"):
        wide_law(parse("1x4x4 > conv(2) > relu > avgpool(2) > flatten > dense(2)"), init="torch", inputs=2)
    with pytest.raises(AdvdimError, match="inputs"):
        wide_law(parse("1x4x4 > conv(2) > relu > avgpool(2) > flatten > dense(2)"), inputs=1)
    with pytest.raises(AdvdimError, match="shape"):
        wide_grad_sq_norm_at(parse("1x4x4 > conv(2) > relu > flatten > dense(2)"), np.zeros((1, 3, 3)))
