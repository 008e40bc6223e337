"""The layers of library code in the spec language (issue 20): ``scale(a)``, overlapping max pooling
``maxpool(k,s=S,pad=P)`` (``nn.MaxPool2d(k, S, P)``) and ``res(..., projbn=true)`` (torchvision's
``downsample = Sequential(conv1x1, BatchNorm2d)``): text and JSON round trips, the old texts unchanged,
shapes against torch, the built modules, one-line refusals, and ``res(...) > relu`` (post-activation)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advdim.arch import Dense, Flatten, MaxPool, Residual, Scale, Spec, parse
from advdim.build import ResidualBlock, ScaleBy, build
from advdim.errors import SpecError

TEXTS = [
    "3x8x8 > conv(4) > scale(0.5) > relu > flatten > dense(2)",
    "3x8x8 > conv(4) > relu > maxpool(3,s=2,pad=1) > flatten > dense(2)",
    "3x7x7 > maxpool(3,s=2) > flatten > dense(2)",
    "3x9x9 > conv(4) > relu > maxpool(2,s=1) > globalavgpool > dense(2)",
    "3x8x8 > conv(4) > relu > res(conv(8,s=2) > relu > conv(8),projbn=true) > flatten > dense(2)",
    "3x8x8 > conv(4) > relu > res(conv(8,s=2) > relu > conv(8),scale=0.5,projbn=true) > relu > globalavgpool > "
    "dense(2)",
    "3x8x8 > flatten > res(dense(5) > relu > dense(6),projbn=true) > dense(2)",
    "3x8x8 > conv(4) > relu > res(conv(4) > relu > conv(4) > scale(0.25)) > relu > flatten > dense(2)",
]


@pytest.mark.parametrize("text", TEXTS)
def test_text_and_json_round_trip(text: str) -> None:
    spec = parse(text)
    assert spec.to_text() == text
    assert parse(spec.to_text()) == spec
    assert Spec.from_json(json.dumps(spec.to_json())) == spec
    assert Spec.from_json(spec.to_json()).to_text() == text


def test_old_texts_keep_their_meaning() -> None:
    """``maxpool(k)`` is still the non-overlapping pool of stride k that must divide the map; ``res`` without
    ``projbn`` formats and builds as before."""
    pool = parse("3x8x8 > maxpool(2) > flatten > dense(2)").layers[0]
    assert pool == MaxPool(2) and pool.stride is None and pool.pad == 0 and pool.step == 2
    assert parse("3x8x8 > maxpool(2,s=2) > flatten > dense(2)").to_text() == "3x8x8 > maxpool(2) > flatten > dense(2)"
    with pytest.raises(SpecError, match="does not divide"):
        parse("3x7x7 > maxpool(2) > flatten > dense(2)")
    block = parse("3x8x8 > res(conv(4,s=2) > relu > conv(4)) > flatten > dense(2)").layers[0]
    assert isinstance(block, Residual) and not block.projbn
    assert parse("3x8x8 > res(conv(4,s=2) > relu > conv(4),projbn=false) > flatten > dense(2)").layers[0] == block
    assert [x.kind for x in block.skip_layers((3, 8, 8))] == ["conv"]
    assert isinstance(build(parse("3x8x8 > res(conv(4,s=2) > relu > conv(4)) > flatten > dense(2)"))[0].skip,
                      nn.Conv2d)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4), p=st.integers(0, 3))
def test_maxpool_shapes_and_outputs_match_torch(n: int, k: int, s: int, p: int) -> None:
    """``maxpool(k,s=S,pad=P)`` has ``nn.MaxPool2d(k, S, P)``'s output shape and values, and is refused
    (one-line SpecError) exactly where torch refuses the configuration."""
    x = torch.randn(2, 3, n, n)
    try:
        want = nn.MaxPool2d(k, s, p)(x)
    except RuntimeError:
        want = None
    layer = MaxPool(k, stride=s, pad=p)
    if want is None or (layer.stride is None and n % k):  # maxpool(k) (s = k, no pad) keeps its divisibility rule
        with pytest.raises(SpecError) as err:
            layer.out_shape((3, n, n))
        assert "\n" not in str(err.value)
        return
    assert layer.out_shape((3, n, n)) == tuple(want.shape[1:])
    module = build(Spec((3, n, n), (layer, Flatten(), Dense(2))))[0]
    assert torch.equal(module(x), want)


@pytest.mark.parametrize(("text", "words"), [
    ("3x8x8 > maxpool(3,s=2,pad=2) > flatten > dense(2)", "pad must be an integer from 0 to size // 2"),
    ("3x8x8 > maxpool(3,s=0) > flatten > dense(2)", "stride must be a positive integer"),
    ("3x8x8 > maxpool(3,pad=zeros) > flatten > dense(2)", "pad must be an integer"),
    ("3x2x2 > maxpool(5,s=1,pad=1) > flatten > dense(2)", "larger than the padded map"),
    ("3x8x8 > scale(0) > flatten > dense(2)", "must lie in"),
    ("3x8x8 > scale(-1) > flatten > dense(2)", "must lie in"),
    ("3x8x8 > scale(1e4) > flatten > dense(2)", "must lie in"),
    ("3x8x8 > scale(nan) > flatten > dense(2)", "finite number"),
    ("3x8x8 > scale > flatten > dense(2)", "missing argument"),
    ("3x8x8 > scale(1,2) > flatten > dense(2)", "too many positional"),
    ("3x8x8 > res(conv(3) > relu > conv(3),projbn=true) > flatten > dense(2)", "the skip is the identity"),
    ("3x8x8 > res(conv(4,s=2),projbn=maybe) > flatten > dense(2)", "projbn must be true or false"),
])
def test_refusals_are_one_line(text: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(text)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("layer", "words"), [
    ({"kind": "scale", "factor": "abc"}, "factor must be a finite number"),
    ({"kind": "scale", "factor": True}, "bad value"),
    ({"kind": "scale"}, "missing argument"),
    ({"kind": "maxpool", "size": 3, "stride": 2, "pad": 1.5}, "bad value"),
    ({"kind": "res", "branch": [{"kind": "conv", "out_channels": 4, "stride": 2}], "projbn": 3}, "bad value"),
])
def test_json_refusals_are_one_line(layer: dict, words: str) -> None:
    with pytest.raises(SpecError) as err:
        Spec.from_json({"input_shape": [3, 8, 8], "layers": [layer, {"kind": "flatten"}, {"kind": "dense",
                                                                                         "out_features": 2}]})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_scale_builds_a_multiplication_and_keeps_one_form() -> None:
    assert Scale(2) == Scale(2.0) and parse("3x4x4 > scale(2) > flatten > dense(2)").to_text().count("scale(2.0)") == 1
    net = build(parse("3x4x4 > scale(0.25) > flatten > dense(2)"), seed=1).eval()
    plain = build(parse("3x4x4 > flatten > dense(2)"), seed=1).eval()
    assert isinstance(net[0], ScaleBy)
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(net(x), plain(0.25 * x))
    assert parse("3x4x4 > scale(0.25) > flatten > dense(2)").n_params() == \
        parse("3x4x4 > flatten > dense(2)").n_params()


def test_projbn_builds_torchvisions_downsample() -> None:
    """The skip is ``Sequential(Conv2d(C, C', 1, stride, bias=False), BatchNorm2d(C'))``; in eval mode at init it
    is the projection over ``sqrt(1 + eps)``; its parameters count the norm's weight and bias."""
    text = "3x8x8 > conv(4) > relu > res(conv(8,s=2) > relu > conv(8),projbn=true) > flatten > dense(2)"
    spec = parse(text)
    net = build(spec, seed=0).eval()
    block = net[2]
    assert isinstance(block, ResidualBlock) and isinstance(block.skip, nn.Sequential)
    conv, bn = block.skip
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 8
    x = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(block.skip(x), conv(x) / math.sqrt(1 + bn.eps))
    plain = parse(text.replace(",projbn=true", ""))
    assert spec.n_params() == plain.n_params() + 2 * 8
    flat = build(parse("3x2x2 > flatten > res(dense(5) > relu > dense(6),projbn=true) > dense(2)"))
    assert isinstance(flat[1].skip[1], nn.BatchNorm1d)


def test_post_activation_block_parses_and_builds() -> None:
    """torchvision's BasicBlock: ``relu(x + branch(x))`` is ``res(BRANCH) > relu`` (its law is the
    post-activation theory's; here only the language and the module)."""
    spec = parse("3x8x8 > conv(4,bias=false) > batchnorm > relu > res(conv(4,bias=false) > batchnorm > relu > "
                 "conv(4,bias=false) > batchnorm) > relu > globalavgpool > dense(2)")
    net = build(spec, seed=0).eval()
    x = torch.randn(2, 3, 8, 8)
    h = net[2](net[1](net[0](x)))
    torch.testing.assert_close(net[4](net[3](h)), torch.relu(h + net[3].branch(h)))
    assert net(x).shape == (2, 2)


@settings(max_examples=80, deadline=None)
@given(a=st.floats(1e-3, 1e3), k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2),
       projbn=st.booleans(), scale=st.floats(-2.0, 2.0))
def test_random_specs_round_trip(a: float, k: int, s: int, p: int, projbn: bool, scale: float) -> None:
    """Any factor, any valid pool and either projbn: text and JSON read back the same spec (floats by their
    shortest repr)."""
    p = min(p, k // 2)
    text = (f"3x9x9 > conv(4) > scale({a!r}) > relu > maxpool({k},s={s},pad={p}) > "
            f"res(conv(6,s=1) > relu > conv(6),scale={scale!r},projbn={'true' if projbn else 'false'}) > flatten > "
            "dense(2)")
    spec = parse(text)
    assert parse(spec.to_text()) == spec
    assert Spec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.layers[1] == Scale(a) and spec.layers[3] == MaxPool(k, stride=s, pad=p)
