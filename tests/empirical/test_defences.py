"""Defences: gradients of each penalty against finite differences; Proposition 3 on a trained net."""

import math

import numpy as np
import pytest
import torch
from advdim.empirical import Method, TrainConfig, objective, synthetic, train
from advdim.empirical._checks import CHECK_SCHEDULE
from advdim.empirical._firstorder import fit_order, lemma2_ratios, prop3_gaps

from advdim.arch import family
from advdim.build import build
from advdim.errors import AdvdimError

METHODS = [Method.GP1, Method.GP2, Method.CROSS_LIPSCHITZ, Method.FGSM_AUG]


@pytest.mark.parametrize("method", METHODS)
def test_objective_gradient_equals_finite_difference(method):
    torch.manual_seed(0)
    net = build(family("dense", widths=(12,)).spec(4, channels=1), seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    params = list(net.parameters())
    loss = objective(method, net, x, y, 0.3)
    grads = torch.autograd.grad(loss, params)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    directional = sum((gr * vi).sum() for gr, vi in zip(grads, v)).item()
    h = 1e-6

    def at(t):
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(t * vi)
        val = objective(method, net, x, y, 0.3).item()
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.sub_(t * vi)
        return val

    fd = (at(h) - at(-h)) / (2 * h)
    # central difference error O(h^2) ~ 1e-12 relative; float64 rounding ~ 1e-16/h = 1e-10
    assert fd == pytest.approx(directional, rel=1e-6, abs=1e-8)


def test_l2_augmentation_treats_the_perturbation_as_constant():
    # the adversarial point is computed without a graph (Danskin / Goodfellow et al.): the gradient is
    # that of (L(x) + L(x_adv)) / 2 with x_adv frozen, which a finite difference at fixed x_adv checks
    from advdim.empirical import attacks

    net = build(family("dense", widths=(12,)).spec(4, channels=1), seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    adv = attacks.l2_step(net, x, y, 0.3 * 4)
    f = torch.nn.functional

    def frozen():
        return (f.cross_entropy(net(x), y) + f.cross_entropy(net(adv), y)) / 2

    assert objective(Method.L2_AUG, net, x, y, 0.3).item() == pytest.approx(frozen().item(), rel=1e-12)
    w = next(net.parameters())
    (auto,) = torch.autograd.grad(objective(Method.L2_AUG, net, x, y, 0.3), w)
    (want,) = torch.autograd.grad(frozen(), w)
    assert torch.allclose(auto, want, rtol=1e-10, atol=1e-12)


def test_penalty_matches_its_formula():
    net = build(family("dense", widths=(8,)).spec(4, channels=1), seed=0, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5)
    xg = x.clone().requires_grad_(True)
    losses = torch.nn.functional.cross_entropy(net(xg), y, reduction="none")
    (gr,) = torch.autograd.grad(losses.sum(), xg)
    d = 16
    want = losses.mean() + 0.1 * math.sqrt(d) * gr.reshape(5, -1).norm(dim=1).mean() / 2
    assert objective(Method.GP2, net, x, y, 0.1).item() == pytest.approx(want.item(), rel=1e-12)
    with pytest.raises(AdvdimError):
        objective(Method.GP1, net, x, y, -1.0)


@pytest.fixture(scope="module")
def trained():
    data = synthetic(n_train=256, n_test=64, seed=0)
    # the checks' net and schedule: the default net saturates the synthetic set's losses, whose float64
    # differences at eps ~ 1e-6 then round to 0
    schedule = {**CHECK_SCHEDULE, "batch_size": 32}
    result = train(TrainConfig(dataset="synthetic", n_train=256, n_test=64, n_eval=16, epochs=2, **schedule),
                   data=data)
    x = data.batch(data.x_test[:64])
    return result.model, x, data.y_test[:64]


def test_proposition3_fgsm_augmentation_equals_l1_penalty_to_first_order(trained):
    model, x, y = trained
    net = __import__("copy").deepcopy(model).double()
    eps = np.array([5e-7, 1e-6, 2e-6, 4e-6])  # below the ReLU-kink scale (~1e-5 here)
    gaps = np.array([(objective(Method.FGSM_AUG, net, x.double(), y, e)
                      - objective(Method.GP1, net, x.double(), y, e)).item() for e in eps])
    slope = np.polyfit(np.log(eps), np.log(np.abs(gaps)), 1)[0]
    # gap = O(eps^2); a first-order disagreement would give slope 1
    assert 1.7 <= slope <= 2.3
    per_sample = prop3_gaps(model, x, y, eps)
    assert np.allclose(per_sample.mean(axis=1), gaps, rtol=1e-6, atol=1e-15)


def test_first_order_fits_fail_on_planted_error(trained):
    model, x, y = trained
    eps = np.array([5e-7, 1e-6, 2e-6, 4e-6])  # below the ReLU-kink scale (~1e-5 here)
    d = x[0].numel()
    good, (lo, hi) = fit_order(eps, prop3_gaps(model, x, y, eps))
    assert lo - 0.3 <= 2 <= hi + 0.3
    planted, _ = fit_order(eps, prop3_gaps(model, x, y, eps, norm_factor=d ** 0.1))
    assert abs(planted - 2) > 0.5
    ratios = lemma2_ratios(model, x, y, math.inf, eps)
    assert abs(ratios[0].mean() - 1) < 1e-2
    assert abs(lemma2_ratios(model, x, y, math.inf, eps, norm_factor=d ** 0.1)[0].mean() - 1) > 0.1


@pytest.mark.parametrize("method", [Method.FGSM_AUG, Method.L2_AUG])
def test_training_points_are_clipped_to_the_box(method):
    # projection on the eps-ball first, then clipping to the box: for one step from x the ball
    # projection is the identity, so the point is clamp(x + step, lo, hi)
    net = build(family("dense", widths=(12,)).spec(4, channels=1), seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    lo, hi = -0.5, 0.5
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5
    x[:, :, 0] = lo  # a face of the box, as black background pixels
    y = torch.randint(0, 10, (6,), generator=g)
    xg = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xg), y, reduction="sum"), xg)
    eps = 0.2
    if method is Method.FGSM_AUG:
        step = eps * gr.sign()
    else:
        step = eps * 4 * gr / gr.reshape(6, -1).norm(dim=1).view(-1, 1, 1, 1)
    adv = (x + step).clamp(lo, hi)
    f = torch.nn.functional
    want = (f.cross_entropy(net(x), y) + f.cross_entropy(net(adv), y)) / 2
    got = objective(method, net, x, y, eps, bounds=(lo, hi))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert got.item() != pytest.approx(objective(method, net, x, y, eps).item(), rel=1e-6)
