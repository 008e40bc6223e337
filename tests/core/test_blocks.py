"""Residual blocks, batch norm modes, layer norm, GELU and attention (issue 14, part 1): the text and
JSON forms, shapes and parameters, the torch modules and their initialisation, and the trace."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from advdim.arch import (
    GELU,
    Attention,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    Layer,
    LayerNorm,
    Padding,
    ReLU,
    Residual,
    Spec,
    format_spec,
    parse,
)
from advdim.build import LN_EPS, BatchStatNorm, ResidualBlock, SelfAttention, TokenLayerNorm, build
from advdim.cli import main
from advdim.errors import SpecError
from advdim.inits import Init
from advdim.testing import block_specs, blocks, specs
from advdim.trace import InitStats, Traced, Untraceable, trace, trace_module, weight_labels

EXAMPLE = ("3x8x8 > conv(16,pad=circular) > relu > res(conv(16,pad=circular) > relu > conv(16,pad=circular), "
           "scale=0.5) > flatten > dense(10)")
VIT = ("3x8x8 > conv(16,k=2,s=2,pad=valid) > res(layernorm > attn(4)) > res(layernorm > conv(64,k=1) > gelu > "
       "conv(16,k=1)) > globalavgpool > dense(10)")


# ---------------------------------------------------------------------------------------------
# Text and JSON forms
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60)
@given(st.one_of(block_specs(), specs(allow_blocks=True)))
def test_text_and_json_round_trip(spec: Spec) -> None:
    text = format_spec(spec)
    assert parse(text) == spec
    assert format_spec(parse(text)) == text
    assert Spec.from_json(json.dumps(spec.to_json())) == spec


def test_the_example_spec_its_shapes_and_parameters() -> None:
    spec = parse(EXAMPLE)
    block = spec.layers[2]
    assert block == Residual((Conv(16), ReLU(), Conv(16)), 0.5)
    assert spec.shapes() == [(3, 8, 8), (16, 8, 8), (16, 8, 8), (16, 8, 8), (1024,), (10,)]
    # conv 3->16: 16*27 + 16; the block: two convs 16->16 of 16*144 + 16; dense: 1024*10 + 10
    assert [row["params"] for row in spec.table()] == [448, 0, 2 * 2320, 0, 10250]
    assert spec.n_params() == 448 + 4640 + 10250
    assert spec.table()[2]["in_degree"] == 1 + 16 * 9  # the skip and the branch's first conv
    assert spec.to_text() == ("3x8x8 > conv(16) > relu > res(conv(16) > relu > conv(16),scale=0.5) > flatten > "
                              "dense(10)")
    assert spec.to_json()["layers"][2] == {"kind": "res", "scale": 0.5, "branch": [
        {"kind": "conv", "out_channels": 16}, {"kind": "relu"}, {"kind": "conv", "out_channels": 16}]}


def test_new_layers_text_forms() -> None:
    spec = parse("4x4x4 > batchnorm(mode=batch) > batchnorm(mode=running) > batchnorm > layernorm > gelu > "
                 "attn(heads=2) > attn(4) > attn > res(res(relu) > gelu, scale=-1.5e-07) > flatten > dense(2)")
    assert spec.layers[:8] == (BatchNorm(BNMode.BATCH), BatchNorm(), BatchNorm(), LayerNorm(), GELU(), Attention(2),
                               Attention(4), Attention(1))
    assert spec.layers[8] == Residual((Residual((ReLU(),)), GELU()), -1.5e-07)
    assert spec.to_text() == ("4x4x4 > batchnorm(mode=batch) > batchnorm > batchnorm > layernorm > gelu > attn(2) > "
                              "attn(4) > attn(1) > res(res(relu) > gelu,scale=-1.5e-07) > flatten > dense(2)")
    assert parse(VIT).shapes()[1:4] == [(16, 4, 4)] * 3
    # a spec made of records: an integer scale is the float of the same value
    assert Residual((ReLU(),), 2) == Residual((ReLU(),), 2.0) and format_spec(
        Spec((1, 2, 2), (Residual((ReLU(),), 2), Flatten(), Dense(1)))).endswith("res(relu,scale=2.0) > flatten > "
                                                                                 "dense(1)")


@pytest.mark.parametrize(("text", "message"), [
    ("3x8x8 > conv(4) > relu > res(conv(4) > relu > conv(4,s=3)) > flatten > dense(2)",
     "layer 2 res: branch layer 2 conv(4,s=3): stride 3 does not divide the map"),
    ("3x8x8 > res(conv(4) > relu > blur) > flatten > dense(2)", "layer 0 res: branch layer 2: unknown layer 'blur'"),
    ("3x8x8 > res(res(conv(4,pad=mirror))) > flatten > dense(2)",
     "layer 0 res: branch layer 0 res: branch layer 0 conv: unknown padding mode 'mirror'"),
    ("3x8x8 > res(conv(4) > relu > flatten > dense(2)", "unbalanced parentheses (1 '(' not closed)"),
    ("3x8x8 > res(conv(4))) > flatten > dense(2)", "unbalanced parentheses (a ')' without its '(')"),
    ("3x8x8 > batchnorm(mode=train) > flatten > dense(2)",
     "layer 0 batchnorm: unknown batch norm mode 'train' (expected one of: batch, running)"),
    ("3x8x8 > conv(6) > attn(4) > flatten > dense(2)", "layer 1 attn(4): 4 heads do not divide 6 features"),
    ("3x8x8 > attn(0) > flatten > dense(2)", "layer 0 attn(0): heads must be a positive integer"),
    ("3x8x8 > flatten > attn(1) > dense(2)", "layer 1 attn(1): needs a (C, H, W) map"),
    ("3x8x8 > res(conv(4,pad=valid)) > flatten > dense(2)",
     "layer 0 res: no projection maps the input (3, 8, 8) onto the branch output (4, 6, 6)"),
    ("3x8x8 > res(conv(4),scale=nan) > flatten > dense(2)", "layer 0 res: scale must be a finite number, got 'nan'"),
    ("3x8x8 > res(conv(4),scale=1_0) > flatten > dense(2)", "scale must be a finite number, got '1_0'"),
    ("3x8x8 > res() > flatten > dense(2)", "layer 0 res: the branch needs at least one layer"),
    ("3x8x8 > res(conv(4),relu) > flatten > dense(2)", "layer 0 res: too many positional arguments"),
    ("3x8x8 > gelu(tanh) > flatten > dense(2)", "layer 0 gelu: too many positional arguments"),
    ("3x8x8 > layernorm(eps=1) > flatten > dense(2)", "layer 0 layernorm: unknown argument 'eps'"),
])
def test_malformed_blocks_name_the_layer_in_one_line(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("layers", "message"), [
    ([{"kind": "res", "branch": [{"kind": "conv", "out_channels": 4}, {"out_channels": 2}]}],
     "layer 0 res: branch layer 1: JSON layer needs a 'kind'"),
    ([{"kind": "res", "branch": [{"kind": "relu"}], "scale": "big"}], "layer 0 res: scale must be a finite number"),
    ([{"kind": "res", "branch": [{"kind": "relu"}], "scale": True}], "layer 0 res: bad value True for scale"),
    ([{"kind": "res", "branch": {"kind": "relu"}}], "layer 0 res: bad value {'kind': 'relu'} for branch"),
    ([{"kind": "batchnorm", "mode": 1}], "layer 0 batchnorm: bad value 1 for mode"),
])
def test_malformed_json_blocks(layers: list[dict[str, object]], message: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec.from_json({"input_shape": [3, 4, 4], "layers": [*layers, {"kind": "flatten"}, {"kind": "dense",
                                                                                           "out_features": 2}]})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_arch_show_prints_one_row_per_top_level_layer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "show", EXAMPLE, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["params"] for row in data["layers"]] == [448, 0, 4640, 0, 10250]
    assert data["layers"][2]["layer"] == "res(conv(16) > relu > conv(16),scale=0.5)"
    assert Spec.from_json(data["json"]) == parse(EXAMPLE)


# ---------------------------------------------------------------------------------------------
# Built modules
# ---------------------------------------------------------------------------------------------
@settings(max_examples=40)
@given(block_specs(), st.integers(1, 3))
def test_built_blocks_have_the_spec_s_shapes_and_parameters(spec: Spec, batch: int) -> None:
    net = build(spec, seed=1).eval()  # running-mode batch norm: running statistics (a batch of 1 is fine)
    shapes = spec.shapes()
    h = torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    assert len(net) == len(spec.layers)
    for i, module in enumerate(net):
        h = module(h)
        assert tuple(h.shape[1:]) == shapes[i + 1], (spec.to_text(), i)
    assert sum(p.numel() for p in net.parameters()) == spec.n_params()
    assert len([m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]) == len(weight_labels(spec))


def test_a_residual_block_adds_the_scaled_branch_to_the_skip() -> None:
    spec = parse("3x8x8 > res(conv(6,s=2) > relu, scale=0.25) > res(gelu, scale=2) > flatten > dense(2)")
    net = build(spec, seed=0, dtype=torch.float64)
    down, same = net[0], net[1]
    assert isinstance(down, ResidualBlock) and isinstance(same, ResidualBlock)
    proj = down.skip  # the branch halves the map and changes the channels: a 1x1, stride-2, bias-free conv
    assert isinstance(proj, nn.Conv2d) and proj.bias is None
    assert (proj.in_channels, proj.out_channels, proj.kernel_size, proj.stride) == (3, 6, (1, 1), (2, 2))
    assert same.skip is None
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = proj(x) + 0.25 * torch.relu(down.branch[0](x))
        torch.testing.assert_close(down(x), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(same(want), want + 2 * F.gelu(want), rtol=0, atol=1e-12)
    flat = build(parse("1x2x2 > flatten > res(dense(3) > relu) > dense(2)"), seed=0)[1]
    assert isinstance(flat.skip, nn.Linear) and flat.skip.bias is None and flat.skip.weight.shape == (3, 4)


@pytest.mark.parametrize("flat", [False, True])
def test_batch_norm_modes(flat: bool) -> None:
    """Batch mode: a sample's output and gradient depend on the rest of its batch, in eval mode
    too; running mode (eval): they do not, and at initialisation BN is ``x / sqrt(1 + eps)``."""
    shape = "2x3x3 > flatten > {} > dense(3)" if flat else "2x3x3 > {} > flatten > dense(3)"
    batch_net = build(parse(shape.format("batchnorm(mode=batch)")), seed=0, dtype=torch.float64).eval()
    running_net = build(parse(shape.format("batchnorm")), seed=0, dtype=torch.float64).eval()
    bn = batch_net[1] if flat else batch_net[0]
    assert isinstance(bn, BatchStatNorm)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    other = x.clone()
    other[1] += 3.0
    for net, interacts in ((batch_net, True), (running_net, False)):
        for train in (False, True) if interacts else (False,):
            net.train(train)
            with torch.no_grad():
                changed = float((net(x)[0] - net(other)[0]).abs().max())
            assert (changed > 1e-3) if interacts else (changed == 0.0), (net, train)
            xg = x.clone().requires_grad_(True)
            net(xg)[0].sum().backward()
            assert xg.grad is not None
            cross = float(xg.grad[1:].abs().max())  # sample 0's logits w.r.t. the other samples
            assert (cross > 1e-6) if interacts else (cross == 0.0)
    h = x.flatten(1) if flat else x
    dims = (0,) if flat else (0, 2, 3)
    mean, var = h.mean(dims, keepdim=True), h.var(dims, unbiased=False, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(bn.eval()(h), (h - mean) / torch.sqrt(var + bn.eps), rtol=0, atol=1e-12)
        running = running_net.eval()[1 if flat else 0]
        assert isinstance(running, nn.modules.batchnorm._BatchNorm)
        torch.testing.assert_close(running(h), h / math.sqrt(1 + running.eps), rtol=0, atol=1e-12)
    one = torch.randn(1, 2, 1, 1, dtype=torch.float64)  # one value per channel: the bias, a zero gradient
    with torch.no_grad():
        assert float(BatchStatNorm(2).double()(one).abs().max()) < 1e-5


def test_layer_norm_normalises_the_channels_at_each_position() -> None:
    ln = TokenLayerNorm(5).double().requires_grad_(False)
    x = 3 * torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1
    y = ln(x)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + LN_EPS), rtol=0, atol=1e-12)
    assert float(y.mean(1).abs().max()) < 1e-12  # mean 0 over the channels at every position
    other = x.clone()
    other[0, :, 1, 2] += torch.arange(5.0, dtype=torch.float64)  # change one position (one token)
    moved = (ln(other) - y).abs().amax(1)  # (B, H, W): which positions' outputs changed
    assert float(moved[0, 1, 2]) > 1e-3 and float(moved.sum() - moved[0, 1, 2]) == 0.0
    flat = ln(x[:, :, 0, 0])
    torch.testing.assert_close(flat, F.layer_norm(x[:, :, 0, 0], (5,), eps=LN_EPS), rtol=0, atol=1e-12)


def _permute_positions(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.flatten(2)[:, :, perm].reshape(x.shape)


def test_attention_is_equivariant_under_permutations_of_the_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, generator=gen)
    perm = torch.randperm(12, generator=gen)
    att = build(parse("8x3x4 > attn(2) > flatten > dense(1)"), seed=0, dtype=torch.float64)[0]
    assert isinstance(att, SelfAttention)
    with torch.no_grad():
        torch.testing.assert_close(att(_permute_positions(x, perm)), _permute_positions(att(x), perm),
                                   rtol=0, atol=1e-12)
        # the control: a 3x3 convolution sees the neighbours, so permuting the positions changes its output
        conv = nn.Conv2d(8, 8, 3, padding=1).double()
        assert float((conv(_permute_positions(x, perm)) - _permute_positions(conv(x), perm)).abs().max()) > 1e-2


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_agrees_with_torch_multi_head_attention(heads: int) -> None:
    """Two implementations: ours on the map, ``nn.MultiheadAttention`` on the tokens, same weights."""
    att = SelfAttention(8, heads).double()
    build_net = build(parse("8x2x3 > attn(1) > flatten > dense(1)"), seed=3, dtype=torch.float64)
    att.load_state_dict(build_net[0].state_dict())  # He-initialised q, k, v, o (biases 0)
    with torch.no_grad():
        for lin in (att.q, att.k, att.v, att.o):
            lin.bias.normal_()  # non-zero biases, so that they are checked too
    mha = nn.MultiheadAttention(8, heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([att.q.weight, att.k.weight, att.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([att.q.bias, att.k.bias, att.v.bias]))
        mha.out_proj.weight.copy_(att.o.weight)
        mha.out_proj.bias.copy_(att.o.bias)
        x = torch.randn(3, 8, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        tokens = x.flatten(2).transpose(1, 2)
        want = mha(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(att(x), want, rtol=0, atol=1e-12)


# Each chi-square test below falsely fails with probability ALPHA (two-sided); 15 tests in all.
ALPHA = 1e-6


@pytest.mark.parametrize("init", [Init.HE, Init.LECUN, Init.GLOROT])
def test_new_weights_have_the_scheme_s_variance(init: Init) -> None:
    spec = parse("1x4x4 > conv(32,k=1) > res(layernorm > attn(4)) > res(conv(64,s=2) > relu) > globalavgpool > "
                 "dense(2)")
    net = build(spec, init=init, seed=7)
    att, down, ln = net.get_submodule("1.branch.1"), net.get_submodule("2"), net.get_submodule("1.branch.0")
    assert isinstance(att, SelfAttention) and isinstance(down, ResidualBlock) and isinstance(down.skip, nn.Conv2d)
    for w, fan_in, fan_out in [*((lin.weight, 32, 32) for lin in (att.q, att.k, att.v, att.o)),
                               (down.skip.weight, 32, 64)]:
        n, v = w.numel(), init.weight_variance(fan_in, fan_out)
        stat = float((w.detach().double() ** 2).sum()) / v  # ~ chi2(n) under the scheme
        assert stats.chi2.ppf(ALPHA / 2, n) <= stat <= stats.chi2.ppf(1 - ALPHA / 2, n), (init, tuple(w.shape))
    assert all(float(lin.bias.detach().abs().max()) == 0.0 for lin in (att.q, att.k, att.v, att.o))
    assert isinstance(ln, TokenLayerNorm)
    assert bool((ln.weight == 1).all()) and bool((ln.bias == 0).all())


def test_orthogonal_scheme_covers_the_attention_projections() -> None:
    net = build(parse("1x2x2 > conv(8,k=1) > attn(2) > flatten > dense(2)"), init="orthogonal", seed=0)
    q = net.get_submodule("1.q")
    assert isinstance(q, nn.Linear)
    w = q.weight.detach().double()
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def _unpadded_as_zeros(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """A conv that pads nothing is the same network in every padding mode; the trace names it ``zeros``."""
    out: list[Layer] = []
    for x in layers:
        if isinstance(x, Conv) and x.pad == 0 and x.padding is not Padding.VALID:
            x = replace(x, padding=Padding.ZEROS)
        elif isinstance(x, Conv) and x.padding is Padding.VALID and x.dilation * (x.kernel - 1) // 2 == 0:
            x = replace(x, padding=Padding.ZEROS)
        elif isinstance(x, Residual):
            x = replace(x, branch=_unpadded_as_zeros(x.branch))
        out.append(x)
    return tuple(out)


class ResNetBlock(nn.Module):
    """A downsampling block written by hand: ``relu(short(x) + 0.5 * conv2(relu(bn(conv1(x)))))``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.short = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        h = self.conv2(F.relu(self.bn1(self.conv1(x))))
        x = self.short(x) + 0.5 * h
        return self.head(F.relu(x).mean((2, 3)))


class PreNorm(nn.Module):
    """Identity skips in the other spellings: ``out += x`` and ``branch / 4 + x``; GELU as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.attn = SelfAttention(4, heads=2)
        self.norm = TokenLayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.norm(x))
        h += x
        h = F.gelu(self.conv(h)) / 4 + h
        z = h.mean((2, 3))
        return self.out(z + self.fc(z))


def test_hand_written_residual_modules_trace_to_their_specs() -> None:
    assert trace(ResNetBlock(), (3, 8, 8)) == parse(
        "3x8x8 > conv(8,pad=circular) > relu > res(conv(16,s=2,pad=zeros,bias=false) > batchnorm > relu > "
        "conv(16,pad=zeros),scale=0.5) > relu > globalavgpool > dense(10)")
    got = trace_module(PreNorm(), (4, 2, 2))
    assert isinstance(got, Traced)
    assert got.spec == parse("4x2x2 > res(layernorm > attn(2)) > res(conv(4,1,pad=zeros) > gelu,scale=0.25) > "
                             "globalavgpool > res(dense(4)) > dense(3)")
    assert got.weight_modules == ("attn.q", "attn.k", "attn.v", "attn.o", "conv", "fc", "out")
    stats_ = InitStats(got.spec)
    stats_.add(got.weights(PreNorm()))
    assert [x.layer for x in stats_.result().layers] == weight_labels(got.spec)


@settings(max_examples=25)
@given(block_specs(max_side=5, max_channels=3))
def test_a_built_block_spec_traces_back_to_itself(spec: Spec) -> None:
    got = trace_module(build(spec, seed=0), spec.input_shape)
    assert isinstance(got, Traced), got
    assert _unpadded_as_zeros(got.spec.layers) == _unpadded_as_zeros(spec.layers)


@given(blocks((4, 4, 4)))
def test_single_blocks_are_valid_on_their_shape(layer: Layer) -> None:
    assert layer.out_shape((4, 4, 4))[0] >= 1


class _Shortcut(nn.Module):
    """torchvision's downsample: a 1x1 conv and a batch norm on the skip path."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.short = nn.Sequential(nn.Conv2d(2, 4, 1, stride=2, bias=False), *([nn.BatchNorm2d(4)] if bn else []))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.short(x) + self.conv(x)).mean((2, 3)))


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(2, 1, batch_first=True)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        return self.head(self.mha(t, t, t)[0].mean(1))


class _MapNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).flatten(1))


class _ScaledInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + torch.relu(2 * self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize(("make", "words"), [
    (_Tokens, "module 'mha' (MultiheadAttention) is not traced"),
    (_MapNorm, "normalises the last axis of the (C, H, W) map"),
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 1), nn.GELU(approximate="tanh"), nn.Flatten(), nn.Linear(64, 3)),
     "'tanh' approximation"),
])
def test_untraceable_blocks_say_why(make: object, words: str) -> None:
    got = trace(make(), (2, 4, 4))  # type: ignore[operator]
    assert isinstance(got, Untraceable), got
    assert words in got.reason and "\n" not in got.reason


@pytest.mark.parametrize(("make", "text"), [
    # torchvision's downsample (conv1x1, BatchNorm2d): the projection with its batch norm (issue 20)
    (lambda: _Shortcut(bn=True), "2x4x4 > res(conv(4,s=2,pad=zeros),projbn=true) > globalavgpool > dense(3)"),
    # a constant inside the branch: scale(a) (issue 20)
    (_ScaledInside, "2x4x4 > res(conv(2,pad=zeros) > scale(2.0) > relu) > globalavgpool > dense(3)"),
])
def test_blocks_of_library_idioms_trace_to_the_new_layers(make: object, text: str) -> None:
    assert trace(make(), (2, 4, 4)) == parse(text)  # type: ignore[operator]


def test_the_shortcut_without_batch_norm_is_the_projection() -> None:
    """The control of the shortcut case: without its batch norm the same module is a residual block."""
    assert trace(_Shortcut(bn=False), (2, 4, 4)) == parse(
        "2x4x4 > res(conv(4,s=2,pad=zeros)) > globalavgpool > dense(3)")


def test_batch_norm_modes_are_traced_from_what_eval_mode_does() -> None:
    running = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    batch = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                          nn.Linear(64, 3))
    assert trace(running, (2, 4, 4)).layers[1] == BatchNorm(BNMode.RUNNING)  # type: ignore[union-attr]
    assert trace(batch, (2, 4, 4)).layers[1] == BatchNorm(BNMode.BATCH)  # type: ignore[union-attr]
