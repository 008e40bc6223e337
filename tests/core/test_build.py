"""Initialisation schemes: variances with tolerances from the chi-square law; seeding; devices."""

import math

import pytest
import torch
from scipy import stats

from advdim._core_checks import weight_variance_verdict
from advdim.arch import family, parse
from advdim.build import Init, build
from advdim.errors import AdvdimError

# Each chi-square test below falsely fails with probability ALPHA (two-sided).
ALPHA = 1e-6


def _layers(net: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().double() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


@pytest.mark.parametrize("init", [Init.HE, Init.LECUN, Init.GLOROT])
def test_gaussian_schemes_have_their_variance_per_layer(init: Init) -> None:
    spec = family("strided", channels=32, final=2).spec(16)
    net = build(spec, init=init, seed=3)
    for w in _layers(net):
        fan_in = w[0].numel()
        fan_out = w.shape[0] * (w[0, 0].numel() if w.dim() == 4 else 1)
        n = w.numel()
        # sum w^2 / v ~ chi2(n): accept the central 1 - ALPHA interval
        stat = float((w**2).sum()) / init.weight_variance(fan_in, fan_out)
        assert stats.chi2.ppf(ALPHA / 2, n) <= stat <= stats.chi2.ppf(1 - ALPHA / 2, n), (init, w.shape)
        assert abs(float(w.mean())) <= 5 * math.sqrt(init.weight_variance(fan_in, fan_out) / n)


def test_he_includes_the_last_layer_and_zero_biases() -> None:
    net = build(family("dense", widths=(64,)).spec(8), seed=0)
    last = net[-1]
    assert isinstance(last, torch.nn.Linear)
    n = last.weight.numel()
    stat = float((last.weight.detach().double() ** 2).sum()) / (2.0 / 64)
    assert stats.chi2.ppf(ALPHA / 2, n) <= stat <= stats.chi2.ppf(1 - ALPHA / 2, n)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in net.modules() if isinstance(m, torch.nn.Linear))


def test_variance_verdict_says_no_on_a_planted_error() -> None:
    net = build(family("strided").spec(16), seed=1)
    assert weight_variance_verdict(net, Init.HE, "c", "H3").passed
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.1)  # variance off by 21%
    assert weight_variance_verdict(net, Init.HE, "c", "H3").passed is False


def test_torch_default_and_orthogonal() -> None:
    net = build(family("dense", widths=(32,)).spec(4), init="torch", seed=0)
    w = net[1].weight
    assert float(w.detach().abs().max()) <= 1 / math.sqrt(48) + 1e-7
    net = build(family("dense", widths=(32,)).spec(4), init="orthogonal", seed=0)
    w = net[1].weight.double()  # 32 x 48: orthogonal rows scaled by sqrt(2)
    assert torch.allclose(w @ w.T, 2 * torch.eye(32, dtype=torch.float64), atol=1e-5)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    spec = parse("1x6x6 > conv(3,pad=zeros) > relu > flatten > dense(4)")
    a, b, c = build(spec, seed=5), build(spec, seed=5), build(spec, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)
    d64 = build(spec, seed=5, dtype=torch.float64)
    assert torch.allclose(d64[0].weight.float(), a[0].weight)


def test_bad_init_and_device() -> None:
    spec = parse("1x4x4 > flatten > dense(2)")
    with pytest.raises(AdvdimError, match="unknown init scheme 'xavier'"):
        build(spec, init="xavier")
    with pytest.raises(AdvdimError, match="unknown device"):
        build(spec, device="tpu:zero")
