"""Input-gradient norms: finite differences, Hölder chain, batch independence, errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from advdim.arch import Spec, family, parse
from advdim.build import build
from advdim.errors import AdvdimError
from advdim.gradients import Target, check_q, dual, grad_norms, input_gradient, lp_norm, mode
from advdim.testing import specs


def _finite_difference(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    g = torch.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        g.reshape(-1)[i] = (f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * h)
    return g


@given(specs(max_side=4, max_channels=2, max_layers=2), st.integers(0, 10**6))
def test_gradient_matches_central_difference(spec: Spec, seed: int) -> None:
    net = build(spec, seed=seed, dtype=torch.float64).eval()
    x = torch.randn(1, *spec.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([0])
    g = input_gradient(net, x, Target.LOGIT, logit=0)
    fd = _finite_difference(lambda z: net(z)[0, 0], x)
    # central differences are exact to O(h^2) on smooth pieces; ReLU kinks within h of x have
    # probability ~ h * density, negligible at h = 1e-6 in float64.
    assert torch.allclose(g, fd, atol=1e-6, rtol=1e-5)
    gl = input_gradient(net, x, Target.LOSS, labels=labels)
    fdl = _finite_difference(lambda z: torch.nn.functional.cross_entropy(net(z), labels), x)
    assert torch.allclose(gl, fdl, atol=1e-6, rtol=1e-5)
    for q in (1, 2, 3.5, math.inf):
        assert torch.allclose(grad_norms(net, x, q=q), lp_norm(fd, q).double(), atol=1e-5, rtol=1e-5)


@given(specs(max_side=6), st.integers(0, 10**6))
def test_hoelder_chain(spec: Spec, seed: int) -> None:
    net = build(spec, seed=seed, dtype=torch.float64)
    x = torch.randn(4, *spec.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    n1, n2, ninf = (grad_norms(net, x, q=q, logit=None) for q in (1, 2, "inf"))
    tol = 1e-12
    assert (ninf <= n2 + tol).all() and (n2 <= n1 + tol).all()
    assert (n1 <= math.sqrt(spec.d) * n2 + tol).all()


def test_per_sample_values_do_not_depend_on_the_batch() -> None:
    spec = family("strided", channels=4, final=2).spec(8)
    net = build(spec, seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, *spec.input_shape, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 10, (12,), generator=gen)
    full = grad_norms(net, x, q=1, target="loss", labels=y)
    alone = torch.cat([grad_norms(net, x[i:i + 1], q=1, target="loss", labels=y[i:i + 1]) for i in range(12)])
    mixed = grad_norms(net, torch.cat([x[5:], x[:5]]), q=1, target="loss", labels=torch.cat([y[5:], y[:5]]))
    chunked = grad_norms(net, x, q=1, target="loss", labels=y, batch_size=5)
    assert torch.allclose(full, alone, rtol=1e-12)
    assert torch.allclose(torch.cat([mixed[7:], mixed[:7]]), full, rtol=1e-12)
    assert torch.allclose(chunked, full, rtol=1e-12)


def test_eval_mode_by_default_and_mode_restored() -> None:
    spec = parse("1x4x4 > conv(2) > batchnorm > relu > flatten > dense(3)")
    net = build(spec, seed=0)
    net.train()
    x = torch.randn(3, 1, 4, 4)
    a = grad_norms(net, x, q=2)
    assert net.training and all(m.training for m in net.modules())
    b = torch.cat([grad_norms(net, x[i:i + 1], q=2) for i in range(3)])
    assert torch.allclose(a, b, rtol=1e-5)  # eval mode: BatchNorm uses running stats, samples independent
    with mode(net, False):
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())


def test_dual_and_q_checks() -> None:
    assert dual(1) == math.inf and dual(math.inf) == 1 and dual(2) == 2 and dual(4) == pytest.approx(4 / 3)
    assert check_q("inf") == math.inf
    for bad in (0.5, -1, float("nan"), "abc", True):
        with pytest.raises(AdvdimError):
            check_q(bad)


def test_bad_inputs_are_clear_errors() -> None:
    spec = parse("1x4x4 > flatten > dense(3)")
    net = build(spec, seed=0)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(AdvdimError, match="q must be >= 1"):
        grad_norms(net, x, q=0.5)
    with pytest.raises(AdvdimError, match="needs labels"):
        grad_norms(net, x, target="loss")
    with pytest.raises(AdvdimError, match="logit index 7 out of range"):
        grad_norms(net, x, logit=7)
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    with pytest.raises(AdvdimError, match="NaN"):
        grad_norms(net, x)
