"""``advdim.trace``: a torch module read as a spec (or why not), and its initialisation recognised.

Every recognition below is a statistical test at a stated level; the planted errors next to each
(a scaled variance, a heavy tail, an orthogonal matrix of the wrong gain) must be called unknown.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from scipy import stats
from torch import nn

from advdim.arch import Conv, Padding, Spec, parse
from advdim.build import build
from advdim.inits import Init
from advdim.testing import specs
from advdim.trace import InitStats, Traced, Untraceable, kurtosis_z, trace, trace_module


def _unpadded_as_zeros(spec: Spec) -> Spec:
    """A conv without padding (``dilation * (kernel - 1) // 2 == 0``) is the same network in every
    padding mode; the trace names it ``zeros``."""
    return replace(spec, layers=tuple(
        replace(x, padding=Padding.ZEROS) if isinstance(x, Conv) and x.dilation * (x.kernel - 1) // 2 == 0 else x
        for x in spec.layers))


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def test_a_sequential_is_traced_to_its_spec() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, padding_mode="reflect", bias=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(8, 4, 3), nn.ReLU(), nn.AvgPool2d(2, stride=2), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Identity(), nn.Linear(16, 10))
    spec = trace(net, (3, 24, 24))
    assert isinstance(spec, Spec)
    assert spec == parse("3x24x24 > conv(8,pad=circular) > batchnorm > relu > conv(8,s=2,dil=2,pad=reflect,bias=false)"
                         " > relu > maxpool(2) > conv(4,pad=valid) > relu > avgpool(2) > globalavgpool > dense(16)"
                         " > relu > dense(10)")


class HandWritten(nn.Module):
    """A forward written by hand, with the functional forms."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding="same", padding_mode="circular")
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)
        self.gap = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = torch.relu(self.conv2(h))
        h = h.view(h.size(0), -1)
        return self.fc2(self.fc1(h).relu())


class HandWrittenMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean(dim=(-2, -1)))


def test_a_hand_written_forward_is_traced_to_its_spec() -> None:
    assert trace(HandWritten(), (1, 8, 8)) == parse(
        "1x8x8 > conv(6,pad=zeros) > relu > maxpool(2) > conv(6) > relu > flatten > dense(12) > relu > dense(3)")
    assert trace(HandWrittenMean(), (2, 8, 8)) == parse(
        "2x8x8 > conv(5,s=2,pad=zeros) > relu > globalavgpool > dense(4)")


@settings(max_examples=30)
@given(specs(max_side=8, allow_batchnorm=True))
def test_a_built_spec_traces_back_to_itself(spec: Spec) -> None:
    """Round trip: ``trace(build(spec)) == spec`` (up to the padding mode of an unpadded conv)."""
    got = trace_module(build(spec, seed=0), spec.input_shape)
    assert isinstance(got, Traced), got
    assert _unpadded_as_zeros(got.spec) == _unpadded_as_zeros(spec)


class ScaledSkip(nn.Module):
    """A skip connection scaled by 0.5 (residual blocks scale only their branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((0.5 * x + F.relu(self.conv(x))).mean((2, 3)))


class Gated(nn.Module):
    """Two paths that meet at a product, not a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x * F.relu(self.conv(x))).mean((2, 3)))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(F.relu(self.conv(x))).mean((2, 3)))


class OwnWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 2, 3, 3))
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.conv2d(x, self.w, padding=1).mean((2, 3)))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.head(x.flatten(1))


def _seq(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers)


def _with_hook() -> nn.Module:
    """A forward hook doubles the logits: torch.fx does not see hooks, the numeric check does."""
    net = _seq(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    net[3].register_forward_hook(lambda m, i, o: 2 * o)
    return net


def _bn_trained() -> nn.Module:
    bn = nn.BatchNorm2d(4)
    bn.running_var.fill_(4.0)
    return _seq(nn.Conv2d(2, 4, 3, padding=1), bn, nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


@pytest.mark.parametrize(("make", "words"), [
    (ScaledSkip, "the skip connection from 'x' is scaled (by 0.5)"),
    (Gated, "mul() multiplies two paths (squeeze-excite or gating)"),
    (Shared, "applied twice (shared weights)"),
    (OwnWeights, "uses the parameter 'w' directly"),
    (Branchy, "torch.fx cannot trace the module"),
    (lambda: _seq(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)), "(Tanh) is not a layer"),
    (lambda: _seq(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(64, 3)), "convolution (groups=2)"),
    (lambda: _seq(nn.Conv2d(2, 4, 3, padding=2), nn.Flatten(), nn.Linear(144, 3)), "pads by 2"),
    (lambda: _seq(nn.Conv2d(2, 4, 3, padding=1, padding_mode="replicate"), nn.Flatten(), nn.Linear(64, 3)),
     "mode 'replicate'"),
    (lambda: _seq(nn.Conv2d(2, 4, 3, stride=2), nn.Flatten(), nn.Linear(4, 3)), "does not divide the map"),
    (lambda: _seq(nn.AvgPool2d(3, stride=1), nn.Flatten(), nn.Linear(8, 3)), "not a non-overlapping average pool"),
    (lambda: _seq(nn.MaxPool2d(3, stride=1, ceil_mode=True), nn.Flatten(), nn.Linear(8, 3)), "ceil_mode=True"),
    (lambda: _seq(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)), "pools to 2"),
    (_bn_trained, "running statistics or an affine map other than at initialisation"),
    (_with_hook, "the trace does not reproduce the module's output"),
])
def test_an_untraceable_module_says_why(make: object, words: str) -> None:
    got = trace(make(), (2, 4, 4))  # type: ignore[operator]
    assert isinstance(got, Untraceable)
    assert words in got.reason and "\n" not in got.reason


def test_the_numeric_check_passes_without_the_planted_hook() -> None:
    """The control of the hook case: the same net without the hook is traced."""
    net = _seq(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    assert isinstance(trace(net, (2, 4, 4)), Spec)
    assert isinstance(trace(_with_hook(), (2, 4, 4)), Untraceable)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------
#: a conv net with moderately sized layers (432, 2304 and 10240 weights)
SPEC = parse("3x8x8 > conv(16,pad=zeros) > relu > conv(16,pad=zeros) > relu > flatten > dense(10)")


def _recognise(net: nn.Module, spec: Spec = SPEC) -> str | None:
    traced = trace_module(net, spec.input_shape)
    assert isinstance(traced, Traced)
    s = InitStats(traced.spec)
    s.add(traced.weights(net))
    return s.result().scheme


def _torch_net(init: str | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 64, 10))
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif init == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
            elif init == "orthogonal-gain-1":
                nn.init.orthogonal_(m.weight)
    return net


@pytest.mark.parametrize("scheme", ["he", "torch", "lecun", "glorot", "orthogonal"])
def test_advdim_s_own_schemes_are_recognised(scheme: str) -> None:
    assert _recognise(build(SPEC, scheme, seed=1)) == scheme


@pytest.mark.parametrize(("init", "scheme"), [(None, "torch"), ("kaiming", "he"), ("orthogonal", "orthogonal")])
def test_torch_s_own_initialisers_are_recognised(init: str | None, scheme: str) -> None:
    """PyTorch's default (uniform, bound 1/sqrt(fan_in)), kaiming_normal_ and orthogonal_(gain sqrt 2)."""
    assert _recognise(_torch_net(init, seed=2)) == scheme


def _scaled(factor: float) -> nn.Module:
    net = build(SPEC, "he", seed=1)
    with torch.no_grad():
        net[0].weight.mul_(factor)
    return net


def _laplace() -> nn.Module:
    """He's variance, a Laplace's tails (kurtosis 6)."""
    net = build(SPEC, "he", seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                u = torch.rand(m.weight.shape, generator=g, dtype=torch.float64) - 0.5
                lap = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1): variance 2
                m.weight.copy_(lap * math.sqrt(1 / m.weight[0].numel()))
    return net


@pytest.mark.parametrize(("make", "layer"), [
    (lambda: _scaled(math.sqrt(1.6)), "0:conv(16,pad=zeros): variance 1."),  # 1.6 x He's: no scheme
    (_laplace, "kurtosis"),
    (lambda: _scaled(0.0), "0:conv(16,pad=zeros): variance 0"),
])
def test_a_weird_init_is_unknown_with_the_layer_named(make: object, layer: str) -> None:
    net = make()  # type: ignore[operator]
    traced = trace_module(net, SPEC.input_shape)
    assert isinstance(traced, Traced)
    s = InitStats(traced.spec)
    s.add(traced.weights(net))
    guess = s.result()
    assert guess.scheme is None and guess.reason.startswith("unknown:") and layer in guess.reason


def test_equal_laws_are_named_once() -> None:
    """LeCun and Glorot coincide on square conv layers (fan_in = fan_out): one law, both named."""
    spec = parse("4x6x6 > conv(4,pad=zeros) > relu > conv(4,pad=zeros) > globalavgpool > dense(4)")
    s = InitStats(spec)
    for seed in range(20):  # small layers: pool draws
        s.add([m.weight for m in build(spec, "lecun", seed=seed) if isinstance(m, (nn.Conv2d, nn.Linear))])
    guess = s.result()
    assert guess.scheme == "lecun" and "identical here to glorot" in guess.reason


def test_the_false_unknown_rate_is_the_stated_level() -> None:
    """200 He nets: called unknown at most at the 1% level (binomial bound at 1e-6); the same nets
    with the first layer's variance planted 50% high are called unknown nearly always."""
    n, false_unknown, caught = 200, 0, 0
    spec = parse("3x8x8 > conv(16,pad=zeros) > relu > flatten > dense(4)")
    g = torch.Generator().manual_seed(1000)
    for _ in range(n):  # He: N(0, 2 / fan_in), fan_in 27 and 1024
        weights = [torch.randn(16, 3, 3, 3, generator=g) * math.sqrt(2 / 27),
                   torch.randn(4, 1024, generator=g) * math.sqrt(2 / 1024)]
        for planted in (1.0, 1.5):
            s = InitStats(spec)
            s.add([weights[0] * math.sqrt(planted), weights[1]])
            unknown = s.result().scheme is None
            false_unknown += unknown and planted == 1.0
            caught += unknown and planted != 1.0
    assert false_unknown <= stats.binom.ppf(1 - 1e-6, n, 0.01)
    assert caught >= stats.binom.ppf(1e-6, n, 0.99)


def test_kurtosis_score_matches_scipy_on_large_samples() -> None:
    """Anscombe-Glynn's score from b2 and n alone agrees with scipy's kurtosistest (mean known vs estimated)."""
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    b2 = float((x**4).mean() / (x**2).mean() ** 2)
    assert kurtosis_z(b2, x.size) == pytest.approx(stats.kurtosistest(x).statistic, abs=0.1)


def test_a_repeated_layer_set_of_the_wrong_length_is_refused() -> None:
    s = InitStats(SPEC)
    with pytest.raises(ValueError, match="3 layers"):
        s.add([torch.zeros(16, 3, 3, 3)])
    assert InitStats(parse("1x2x2 > flatten > dense(2)")).result().reason == "unknown: no weights were examined"
    assert Init.HE.value == "he"
