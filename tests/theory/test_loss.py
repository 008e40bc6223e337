"""The loss gradient: E||softmax(z) - e_y||_2 (randomised QMC), the logit law (forward recursion), the JSON key.

Statistical checks use fixed seeds and a tolerance of 5 combined standard errors: for normal
estimates the two-sided false-failure rate is 5.7e-7 per check (per-net means of products of
chi-squares are skewed; with n >= 1000 units the rate stays of the order of 1e-5 at worst).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from advdim.theory import loss_weight, predict
from advdim.theory._loss import logit_law, normal_quantile, residual_moment

from advdim.arch import family, parse
from advdim.errors import AdvdimError, HypothesisError

SIGMAS = 5.0


def _softmax_residual(z: np.ndarray, labels: np.ndarray, order: int = 1) -> np.ndarray:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(z)), labels] -= 1.0
    return np.sqrt((p * p).sum(axis=1)) ** order


def _mc(variances: list[float], n: int, seed: int, order: int = 1) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(variances))) * np.sqrt(variances)
    vals = _softmax_residual(z, rng.integers(0, len(variances), n), order)
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(n))


# --------------------------------------------------------------------------------------------
# E||softmax(z) - e_y||_2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 10, 100])
def test_zero_variance_is_the_uniform_softmax_and_the_limit_is_continuous(k: int) -> None:
    assert residual_moment([0.0] * k) == (math.sqrt(1 - 1 / k), 0.0)
    assert residual_moment([0.0] * k, order=2).value == pytest.approx(1 - 1 / k, rel=1e-15)
    assert loss_weight(k) == math.sqrt(1 - 1 / k)
    small = residual_moment([1e-6] * k, points=1024)  # E||a|| - sqrt(1 - 1/K) = O(v): below 1e-6 here
    assert abs(small.value - math.sqrt(1 - 1 / k)) < 1e-6 + SIGMAS * small.se


@pytest.mark.parametrize("v", [0.5, 2.0, 8.0])
def test_two_classes_are_exact_for_every_variance(v: float) -> None:
    # K = 2: a = (-p_1, p_1), ||a|| = sqrt(2) p_1 and E p_1 = 1/2 by symmetry, whatever v
    est = residual_moment([v, v])
    assert est.se > 0
    assert abs(est.value - math.sqrt(0.5)) <= SIGMAS * est.se + 1e-8


def test_three_classes_against_gauss_hermite() -> None:
    """A deterministic reference: the tensor Gauss-Hermite rule in 3 dimensions (40^3 nodes; the
    30-node rule agrees with it to the stated error, so the reference error is below it)."""
    v = 2.0

    def gh(n: int) -> float:
        x, w = np.polynomial.hermite_e.hermegauss(n)
        w = w / w.sum()
        grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1).reshape(-1, 3) * math.sqrt(v)
        weight = np.einsum("i,j,k->ijk", w, w, w).ravel()
        return float(weight @ _softmax_residual(grid, np.zeros(len(grid), dtype=np.int64)))

    ref, coarse = gh(40), gh(30)
    ref_err = abs(ref - coarse)
    assert ref_err < 1e-6
    est = residual_moment([v] * 3)
    assert abs(est.value - ref) <= SIGMAS * est.se + ref_err + 1e-8


@pytest.mark.parametrize(("variances", "order"), [([2.0] * 10, 1), ([2.0] * 10, 2), ([0.5, 1.0, 2.0, 4.0], 1)])
def test_against_a_large_monte_carlo(variances: list[float], order: int) -> None:
    # 400k plain Monte Carlo draws, fixed seed; labels uniform (unequal variances: the labels matter)
    mean, se_mc = _mc(variances, 400_000, seed=1, order=order)
    est = residual_moment(variances, order=order)
    assert abs(est.value - mean) <= SIGMAS * math.hypot(se_mc, est.se)
    # the old prediction, a uniform softmax, is far outside the same tolerance at He's v = 2
    if variances == [2.0] * 10 and order == 1:
        assert abs(math.sqrt(0.9) - mean) > 20 * se_mc


def test_normal_quantile_against_scipy() -> None:
    from scipy.special import ndtri

    u = np.concatenate([np.linspace(1e-12, 1 - 1e-12, 100_001), [1e-300, 0.02425, 0.97575]])
    ref = ndtri(u)
    err = np.abs(normal_quantile(u) - ref) / np.maximum(np.abs(ref), 1e-3)
    assert float(err.max()) < 2e-9


def test_bad_arguments() -> None:
    with pytest.raises(AdvdimError):
        residual_moment([1.0, -1.0])
    with pytest.raises(AdvdimError):
        residual_moment([1.0, math.nan])
    with pytest.raises(AdvdimError):
        residual_moment([1.0, 1.0], order=3)
    with pytest.raises(AdvdimError):
        residual_moment([])
    with pytest.raises(AdvdimError):
        loss_weight(10, logit_variance=-1.0)
    with pytest.raises(AdvdimError):
        loss_weight(0)
    assert residual_moment([3.0]) == (0.0, 0.0)  # one class: the softmax is the label


# --------------------------------------------------------------------------------------------
# The logit law
# --------------------------------------------------------------------------------------------


def _mc_logit_sq(spec_text: str, init: str, nets: int, inputs: int, seed: int) -> tuple[float, float]:
    """Mean over real nets (the engine's weight draws = advdim.build's laws) of E f_k^2, and its se."""
    import torch
    from advdim.simulate._engine import draw_stack, forward

    from advdim.build import Init

    spec = parse(spec_text)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny grouped convolutions: measured 20x slower on 2 busy threads
    try:
        stack = draw_stack(spec, nets, gen, Init(init), torch.float64)
        x = torch.randn((inputs, nets, *spec.input_shape), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            per_net = (forward(stack, x) ** 2).mean(dim=(0, 2)).numpy()
    finally:
        torch.set_num_threads(threads)
    return float(per_net.mean()), float(per_net.std(ddof=1) / math.sqrt(nets))


@pytest.mark.parametrize(("spec_text", "init", "exact", "nets"), [
    # zero padding (borders below the bulk) and a stride: exact at any width
    ("3x8x8 > conv(8,pad=zeros) > relu > conv(8,s=2,pad=zeros) > relu > flatten > dense(10)", "he", True, 1000),
    # PyTorch's default: uniform weights and biases
    ("3x8x8 > conv(8,s=2,pad=zeros) > relu > flatten > dense(16) > relu > dense(10)", "torch", True, 1000),
    ("1x6x6 > flatten > dense(32) > relu > dense(32) > relu > dense(10)", "glorot", True, 1000),
    # pools need correlations between positions (flagged approximate); after a ReLU of the raw
    # Gaussian input the arc-cosine closure is exact, so the recursion must match here
    ("2x8x8 > relu > avgpool(2) > conv(4) > globalavgpool > dense(10)", "he", False, 4000),
])
def test_logit_variance_against_real_nets(spec_text: str, init: str, exact: bool, nets: int) -> None:
    law = logit_law(parse(spec_text), init)
    assert law.exact is exact
    mean, se = _mc_logit_sq(spec_text, init, nets=nets, inputs=4, seed=3)
    assert abs(mean - law.variance) <= SIGMAS * se, (mean, se, law.variance)
    assert abs(mean - 1.15 * law.variance) > SIGMAS * se  # the same test catches a 15% error


@pytest.mark.parametrize("name", ["avgpool", "gap"])
def test_bulk_covariance_against_the_full_covariance(name: str) -> None:
    # circular padding keeps the covariance stationary: the cheap representation equals the full one
    spec = family(name, channels=4).spec(16)
    full, bulk = logit_law(spec, "he", full=True), logit_law(spec, "he")
    assert bulk.variances == pytest.approx(full.variances, rel=1e-12)
    assert not bulk.exact and "approximate" in bulk.note
    # zero padding: border pairs take the bulk's correlations (measured 4-9% on v at s = 8..32), which
    # moves E||softmax - e_y||_2 by less than 0.5%
    spec = family(name, channels=4, padding="zeros").spec(16)
    full, bulk = logit_law(spec, "he", full=True), logit_law(spec, "he")
    assert "border" in bulk.note and 0 < bulk.variance / full.variance - 1 < 0.1
    assert residual_moment(bulk.variances).value / residual_moment(full.variances).value - 1 < 0.005


def test_he_preserves_the_second_moment_and_refusals() -> None:
    for name in ("dense", "strided"):
        law = logit_law(family(name).spec(16), "he")
        assert law.exact and law.variance == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(HypothesisError, match="max"):
        logit_law(family("maxpool").spec(16), "he")
    with pytest.raises(HypothesisError, match="batch"):
        logit_law(parse("1x4x4 > flatten > dense(8) > batchnorm(mode=batch) > relu > dense(3)"), "he")


# --------------------------------------------------------------------------------------------
# The loss-gradient prediction and its JSON
# --------------------------------------------------------------------------------------------


def test_expected_loss_norm_uses_the_logit_law() -> None:
    pred = predict(family("dense", widths=(64,)), sizes=(8, 16))
    weight = residual_moment([2.0] * 10).value  # He: logit variance 2
    assert pred.expected_loss_norm(1, 8) == pytest.approx(weight * pred.expected_norm(1, 8), rel=1e-6)
    assert pred.expected_loss_norm(1, 8, softmax_weight=0.5) == pytest.approx(0.5 * pred.expected_norm(1, 8))
    torch_init = predict(family("dense", widths=(64,)), sizes=(8,), init="torch")
    v = logit_law(family("dense", widths=(64,)).spec(8), "torch").variance
    assert v < 0.1 and torch_init.expected_loss_norm(2, 8) == pytest.approx(
        loss_weight(10, logit_variance=v) * torch_init.expected_norm(2, 8), rel=1e-9)


def test_theory_json_has_the_loss_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from advdim.cli import main

    assert main(["theory", "dense(widths=32)", "--sizes", "4,8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["expected_loss_norm"]) == {"1", "2", "inf"}
    weight = residual_moment([2.0] * 10).value
    for q in ("1", "2", "inf"):
        for s in ("4", "8"):
            assert out["expected_loss_norm"][q][s] == pytest.approx(weight * out["expected_norm"][q][s], rel=1e-9)
    assert out["logit_law"]["exact"] is True and out["logit_law"]["variance"]["8"] == pytest.approx(2.0)
    assert main(["theory", "maxpool", "--sizes", "8,16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["expected_loss_norm"]["1"]["8"] is None and out["logit_law"] is None
