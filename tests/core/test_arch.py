"""Specs and families: shapes, round trips, validation errors."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from advdim.arch import (
    FAMILIES,
    Conv,
    Dense,
    Flatten,
    Padding,
    Spec,
    family,
    format_spec,
    parse,
    parse_family,
    resolve,
    sample_family,
)
from advdim.build import build
from advdim.errors import SpecError
from advdim.testing import family_members, specs


@given(specs(allow_batchnorm=True))
def test_text_and_json_round_trip(spec: Spec) -> None:
    assert parse(format_spec(spec)) == spec
    assert Spec.from_json(json.dumps(spec.to_json())) == spec


@given(specs(allow_batchnorm=True), st.integers(1, 3))
def test_built_module_shapes_equal_the_spec(spec: Spec, batch: int) -> None:
    net = build(spec, seed=1)
    x = torch.randn(batch, *spec.input_shape)
    shapes = spec.shapes()
    h = x
    net.eval()
    assert len(net) == len(spec.layers)  # one module per spec layer
    for i, module in enumerate(net):
        h = module(h)
        assert tuple(h.shape[1:]) == shapes[i + 1], (spec.to_text(), i)
    assert tuple(h.shape) == (batch, spec.n_classes)
    assert sum(p.numel() for p in net.parameters()) == spec.n_params()


@given(family_members(max_side=16))
def test_family_members_build(member) -> None:
    fam, spec = member
    assert parse_family(fam.to_text()) == fam
    out = build(spec, seed=0)(torch.zeros(1, *spec.input_shape))
    assert out.shape == (1, fam.get("classes"))


def test_family_sampler_is_seeded_and_varies() -> None:
    for name in FAMILIES:
        assert sample_family(name, 7) == sample_family(name, 7)
        assert len({sample_family(name, s) for s in range(20)}) > 3


def test_strided_family_halves_until_final() -> None:
    spec = family("strided", channels=8, final=2).spec(16, channels=1)
    strides = [layer.stride for layer in spec.layers if isinstance(layer, Conv)]
    assert strides == [1, 2, 2, 2]
    assert spec.shapes()[-2] == (8 * 2 * 2,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3x8x8 > conv(4,k=3,s=3) > flatten > dense(2)", "layer 0 conv(4,s=3): stride 3 does not divide the map"),
        ("3x8x8 > conv(4,k=9,pad=valid) > flatten > dense(2)", "layer 0 conv(4,9,pad=valid): kernel span 9 is larger"),
        ("3x8x8 > flatten > dense(0)", "layer 1 dense(0): out_features must be a positive integer"),
        ("3x8x8 > blur(2) > flatten > dense(2)", "layer 0: unknown layer 'blur'"),
        ("3x8x8 > dense(2)", "layer 0 dense(2): needs a flat input"),
        ("3x8x8 > maxpool(3) > flatten > dense(2)", "layer 0 maxpool(3): pool size 3 does not divide the map 8x8"),
        ("3x8x8 > conv(4,pad=mirror) > flatten > dense(2)", "unknown padding mode 'mirror'"),
        ("3x8x8 > conv(4,stride=x) > flatten > dense(2)", "stride must be an integer"),
        ("3x-8x8 > flatten > dense(2)", "must start with the input shape"),
        ("3x8x8 > conv(4)", "must output a flat vector of logits"),
        ("", "empty spec text"),
    ],
)
def test_malformed_specs_name_the_layer(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_errors_from_records_and_families() -> None:
    with pytest.raises(SpecError, match="input shape must hold positive integers"):
        Spec((3, 0, 8), (Flatten(), Dense(2)))
    with pytest.raises(SpecError, match="not final size 4 times a power of 2"):
        family("strided").spec(12)
    with pytest.raises(SpecError, match="unknown family"):
        family("alexnet")  # not a registered family
    with pytest.raises(SpecError, match="unknown parameter"):
        family("dense", depth=3)
    with pytest.raises(SpecError, match="widths must be positive"):
        family("dense", widths=(0,)).spec(4)
    with pytest.raises(SpecError, match="disagrees with --size"):
        resolve("3x8x8 > flatten > dense(2)", size=16)
    with pytest.raises(SpecError, match="circular padding 2 exceeds the map 1x1"):
        Spec((1, 1, 1), (Conv(1, 5, padding=Padding.CIRCULAR), Flatten(), Dense(1)))
