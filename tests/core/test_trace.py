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

from advdim import _trace_fx
from advdim.arch import Conv, Padding, Spec, parse
from advdim.build import build
from advdim.inits import Init
from advdim.testing import specs
from advdim.trace import InitStats, ObstacleKind, Traced, Untraceable, kurtosis_z, trace, trace_module


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


@pytest.mark.parametrize("text", [
    "3x8x8 > conv(4) > scale(0.5) > relu > maxpool(3,s=2,pad=1) > res(conv(8,s=2) > relu > conv(8) > batchnorm,"
    "projbn=true) > res(conv(8) > scale(2.0),scale=0.5) > globalavgpool > dense(3)",
    "3x8x8 > conv(4) > res(conv(4) > batchnorm,scale=0) > flatten > dense(3)",
    "3x8x8 > conv(4) > layernorm > attn(2) > globalmaxpool > dense(3)"])
def test_scale_overlapping_maxpool_projbn_and_scale_0_trace_back_to_themselves(text: str) -> None:
    spec = parse(text)
    assert trace(build(spec, seed=0), spec.input_shape) == spec


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
    (lambda: _seq(nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Flatten(), nn.Linear(8, 3)),
     "ceil_mode=True) on the map (2, 4, 4): a partial last window"),
    (lambda: _seq(nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten(), nn.Linear(4, 3)), "pools to (2, 1)"),
    (_bn_trained, "running statistics or an affine map other than at initialisation"),
    (_with_hook, "the trace does not reproduce the module's output"),
])
def test_an_untraceable_module_says_why(make: object, words: str) -> None:
    got = trace(make(), (2, 4, 4))  # type: ignore[operator]
    assert isinstance(got, Untraceable)
    assert words in got.reason and "\n" not in got.reason


class ZeroLast(nn.Module):
    """A block whose last batch norm has weight ``gamma`` (timm's zero_init_last: 0), then one of weight 0.5."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.bn_half = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 3)
        nn.init.constant_(self.bn.weight, gamma)
        nn.init.constant_(self.bn_half.weight, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn_half(x + self.bn(self.conv(x))).mean((2, 3)))


def test_a_batch_norm_of_one_weight_for_all_channels_is_batchnorm_then_that_factor() -> None:
    assert trace(ZeroLast(0.0), (2, 4, 4)) == parse(
        "2x4x4 > res(conv(2,pad=zeros) > batchnorm,scale=0) > batchnorm > scale(0.5) > globalavgpool > dense(3)")
    net = ZeroLast(0.0)
    with torch.no_grad():
        net.bn.weight[0] = 1.0  # two weights: no factor of the specs
    got = trace(net, (2, 4, 4))
    assert isinstance(got, Untraceable) and got.obstacles[0].kind is ObstacleKind.STATE
    assert "weight 0..1" in got.reason


def test_the_numeric_check_passes_without_the_planted_hook() -> None:
    """The control of the hook case: the same net without the hook is traced."""
    net = _seq(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    assert isinstance(trace(net, (2, 4, 4)), Spec)
    assert isinstance(trace(_with_hook(), (2, 4, 4)), Untraceable)


# ---------------------------------------------------------------------------------------------
# Every obstacle in one run
# ---------------------------------------------------------------------------------------------
class _DataDependent(nn.Module):
    """Control flow on the input's values: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class ThreeObstacles(nn.Module):
    """A Tanh, a depthwise conv and a submodule torch.fx cannot trace, each planted at a named path;
    ``clean=True`` puts a layer of the specs at each place (the control)."""

    def __init__(self, clean: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU() if clean else nn.Tanh()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=1 if clean else 4)
        self.gate = nn.Identity() if clean else _DataDependent()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.dw(self.act(self.conv(x)))).mean((2, 3)))


def test_one_run_lists_all_of_three_planted_obstacles() -> None:
    got = trace(ThreeObstacles(), (2, 4, 4))
    assert isinstance(got, Untraceable)
    assert [(o.path, o.cls, o.kind) for o in got.obstacles] == [
        ("act", "Tanh", ObstacleKind.MODULE), ("dw", "Conv2d", ObstacleKind.SETTING),
        ("gate", "_DataDependent", ObstacleKind.FX)]
    assert "depthwise convolution (groups=4)" in got.obstacles[1].what
    assert got.obstacles[1].fix == "advdim's conv has groups=1"
    assert got.obstacles[1].to_json() == {"path": "dw", "cls": "Conv2d", "kind": "setting",
                                          "what": "module 'dw' (Conv2d) is a depthwise convolution (groups=4)",
                                          "fix": "advdim's conv has groups=1"}
    assert "torch.fx cannot trace inside 'gate'" in got.obstacles[2].what
    assert "\n" not in got.reason and got.reason.startswith("module 'act' (Tanh) is not a layer")
    assert "and 2 more: module 'dw' (Conv2d) is a depthwise convolution" in got.reason
    assert got.summary().startswith("3 obstacle(s): 1 x Tanh (module), e.g. module 'act' (Tanh) is not a layer")
    assert trace(ThreeObstacles(clean=True), (2, 4, 4)) == parse(
        "2x4x4 > conv(4,pad=zeros) > relu > conv(4,pad=zeros) > globalavgpool > dense(3)")


class _ManyUntraceable(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(_DataDependent() for _ in range(n))
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for g in self.gates:
            x = g(x)
        return self.head(x.mean((2, 3)))


def test_the_retries_of_torch_fx_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each submodule torch.fx fails in costs one more trace: at most MAX_RETRIES, then one obstacle says so."""
    monkeypatch.setattr(_trace_fx, "MAX_RETRIES", 2)
    got = trace(_ManyUntraceable(2), (2, 4, 4))
    assert isinstance(got, Untraceable) and [o.path for o in got.obstacles] == ["gates.0", "gates.1"]
    got = trace(_ManyUntraceable(3), (2, 4, 4))
    assert isinstance(got, Untraceable) and len(got.obstacles) == 1
    assert "more than 2 submodules" in got.reason and got.obstacles[0].kind is ObstacleKind.FX


# ---------------------------------------------------------------------------------------------
# The idioms of torchvision and timm, written by hand (tests/zoo runs the libraries' own)
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-BN-ReLU-conv-BN, ``relu(out + identity)``, ``downsample =
    Sequential(conv1x1(stride), BatchNorm2d)`` when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


class StochasticDepth(nn.Module):
    """Named as torchvision's: read whole, an identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.2) / 0.8 if self.training else x


class DropPath(nn.Module):
    """timm's form: ``if not self.training: return x`` (traced in eval mode)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.2) / 0.8


class Stem(nn.Module):
    """Functional forms: ``F.max_pool2d(x, 3, 2, 1)``, ``F.gelu``, constant factors, ``x.flatten(1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.gelu(self.conv(x)), 3, 2, 1) * 0.5
        return self.fc(h.flatten(1) / 4)


@pytest.mark.parametrize(("make", "text"), [
    (lambda: _seq(nn.Conv2d(3, 4, 3, padding=1), BasicBlock(4, 4, 1), BasicBlock(4, 8, 2),
                  nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(8, 3)),
     "3x8x8 > conv(4,pad=zeros) > res(conv(4,pad=zeros,bias=false) > batchnorm > relu > conv(4,pad=zeros,bias=false)"
     " > batchnorm) > relu > res(conv(8,s=2,pad=zeros,bias=false) > batchnorm > relu > conv(8,pad=zeros,bias=false)"
     " > batchnorm,projbn=true) > relu > globalavgpool > dense(3)"),
    (lambda: _seq(nn.Conv2d(3, 4, 3, padding=1), StochasticDepth(), DropPath(), nn.Dropout2d(), nn.GELU(),
                  nn.MaxPool2d(3, 2, 1), nn.BatchNorm2d(4, eps=1e-3), nn.Identity(), torch.nn.Flatten(),
                  nn.BatchNorm1d(64), nn.Dropout(), nn.Linear(64, 3)),
     f"3x8x8 > conv(4,pad=zeros) > gelu > maxpool(3,s=2,pad=1) > batchnorm > scale({((1 + 1e-5) / 1.001) ** 0.5!r})"
     " > flatten > batchnorm > dense(3)"),
    (Stem, "3x8x8 > conv(4,pad=zeros) > gelu > maxpool(3,s=2,pad=1) > scale(0.5) > flatten > scale(0.25) > dense(5)"),
    (lambda: _seq(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2, ceil_mode=True), nn.MaxPool2d(3, 1, ceil_mode=True),
                  nn.Flatten(), nn.Linear(16, 3)),  # ceil mode where the windows tile the map: floor mode
     "3x8x8 > conv(4,1,pad=zeros) > avgpool(2) > maxpool(3,s=1) > flatten > dense(3)"),
])
def test_an_idiom_of_the_libraries_is_traced_to_its_spec(make: object, text: str) -> None:
    """Each trace is kept only when the spec's network reproduces the module's logits."""
    traced = trace_module(make(), (3, 8, 8))  # type: ignore[operator]
    assert isinstance(traced, Traced), traced
    assert traced.spec == parse(text)


class ChannelsLast(nn.Module):
    """ConvNeXt's MLP: ``permute(0, 2, 3, 1) > LayerNorm > Linear > GELU > Linear > permute(0, 3, 1, 2)``
    in a residual block with a layer scale (1e-6 for every channel at init: the block's scale), then
    ``AdaptiveAvgPool2d(2)`` on the 4 x 4 map (``avgpool(2)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 4)
        self.gamma = nn.Parameter(torch.full((4, 1, 1), 1e-6))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.fc2(F.gelu(self.fc1(self.norm(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head(torch.flatten(self.pool(x + self.gamma * h), 1))


def test_a_channels_last_region_is_read_on_the_channels_of_the_map() -> None:
    torch.manual_seed(0)  # the init recognition below is a test at level 0.01: a fixed draw
    net = ChannelsLast()
    traced = trace_module(net, (3, 4, 4))
    assert isinstance(traced, Traced), traced
    assert traced.spec == parse("3x4x4 > conv(4,pad=zeros) > res(layernorm > conv(16,1,pad=zeros) > gelu > "
                                f"conv(4,1,pad=zeros),scale={float(torch.tensor(1e-6))!r}) > avgpool(2) > flatten > "
                                "dense(3)")  # the float32 parameter's value
    assert traced.as_conv == {"fc1", "fc2"}
    s = InitStats(traced.spec)
    s.add(traced.weights(net))  # the Linear weights shaped as the 1x1 convs they are read as
    assert s.result().scheme == "torch"


@pytest.mark.parametrize(("size", "side", "words"), [
    (7, 1, "repeats the values of the 1x1 map to 7x7 (an upsampling)"),
    (3, 4, "pools the 4x4 map to 3x3 with windows of unequal size")])
def test_an_adaptive_pool_that_is_no_pool_of_the_specs_says_why(size: int, side: int, words: str) -> None:
    net = _seq(nn.Conv2d(2, 4, 1), nn.AdaptiveAvgPool2d((size, size)), nn.Flatten(), nn.Linear(4 * size * size, 3))
    got = trace(net, (2, side, side))
    assert isinstance(got, Untraceable) and words in got.reason


class TinyViT(nn.Module):
    """timm's ViT idioms: patch conv, ``flatten(2).transpose(1, 2)``, a class token, a positional
    embedding, a LayerNorm on tokens, ``nn.MultiheadAttention``, layer scale, SiLU, token select."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gamma = nn.Parameter(torch.linspace(1e-5, 2e-5, 8))  # trained: no constant factor
        self.act = nn.SiLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embed
        h = self.norm(t)
        t = t + self.gamma * self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.act(t)[:, 0])


class SqueezeExcite(nn.Module):
    """A product of two paths, with a Hardsigmoid and a Hardswish; then DenseNet's concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)
        self.gate = nn.Hardsigmoid()
        self.act = nn.Hardswish()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.dw(self.conv(x)))
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        h = h * s
        return self.head(torch.cat([h, F.gelu(h, approximate="tanh")], 1).mean((2, 3)))


K = ObstacleKind


@pytest.mark.parametrize(("make", "shape", "expected"), [
    (TinyViT, (3, 4, 4), [
        ("", K.OPERATION, "flattens the map into tokens (x.flatten(2))"),  # the transpose after it: the same idiom
        ("", K.PARAMETER, "concatenates the parameter 'cls_token' (a class token)"),
        ("", K.PARAMETER, "adds the parameter 'pos_embed' (a positional embedding)"),
        ("norm", K.SETTING, "normalises tokens (B, N, D) = (B, 5, 8)"),
        ("attn", K.MODULE, "replace MultiheadAttention by advdim.build.SelfAttention"),
        ("", K.PARAMETER, "multiplies by the parameter 'gamma' (layer scale)"),
        ("act", K.MODULE, "relu and gelu"), ("", K.OPERATION, "selects token 0 of (B, N, D) tokens")]),
    (SqueezeExcite, (3, 4, 4), [
        ("dw", K.SETTING, "depthwise convolution (groups=4)"), ("act", K.MODULE, "(Hardswish) is not a layer"),
        ("gate", K.MODULE, "(Hardsigmoid) is not a layer"),
        ("", K.TOPOLOGY, "multiplies two paths (squeeze-excite or gating)"),
        ("", K.SETTING, "'tanh' approximation"), ("", K.TOPOLOGY, "concatenates paths (DenseNet)")]),
])
def test_every_idiom_outside_the_spec_language_is_named_in_one_run(
        make: object, shape: tuple[int, ...], expected: list[tuple[str, ObstacleKind, str]]) -> None:
    got = trace(make(), shape)  # type: ignore[operator]
    assert isinstance(got, Untraceable)
    assert [(o.path, o.kind) for o in got.obstacles] == [(p, k) for p, k, _ in expected]
    for o, (_, _, words) in zip(got.obstacles, expected):
        assert words in str(o), (o, words)


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
