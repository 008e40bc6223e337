"""Public Hypothesis strategies: random architecture specs, family members and inputs.

Used by the test suites of every layer; users can use them to property-test their own code::

    from hypothesis import given
    from advdim.testing import specs

    @given(specs())
    def test_roundtrip(spec):
        assert parse(format_spec(spec)) == spec
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from advdim.arch import (
    FAMILIES,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Family,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    MaxPool,
    Padding,
    ReLU,
    Spec,
    shapes_of,
)
from advdim.errors import SpecError

__all__ = ["conv_layers", "families", "family_members", "specs", "relu_specs"]


@st.composite
def conv_layers(draw: st.DrawFn, max_channels: int = 4, paddings: tuple[Padding, ...] = tuple(Padding)) -> Conv:
    """A random Conv record (kernel 1-3, stride 1-2, dilation 1-2)."""
    return Conv(
        out_channels=draw(st.integers(1, max_channels)),
        kernel=draw(st.integers(1, 3)),
        stride=draw(st.integers(1, 2)),
        dilation=draw(st.integers(1, 2)),
        padding=draw(st.sampled_from(paddings)),
        bias=draw(st.booleans()),
    )


@st.composite
def specs(
    draw: st.DrawFn,
    max_side: int = 8,
    max_channels: int = 4,
    max_layers: int = 4,
    allow_pools: bool = True,
    allow_batchnorm: bool = False,
    relu_after_linear: bool = False,
    paddings: tuple[Padding, ...] = tuple(Padding),
) -> Spec:
    """A random valid :class:`Spec`: a conv/pool trunk, a flatten or global pool, a dense head.

    Args:
        max_side: largest input side ``s`` (inputs are ``C x s x s``).
        relu_after_linear: put a ReLU after every hidden conv / dense layer (H1-style nets).
        paddings: padding modes to draw from.
    """
    c = draw(st.integers(1, 3))
    side = draw(st.integers(2, max_side))
    shape: tuple[int, ...] = (c, side, side)
    layers: list[Layer] = []
    for _ in range(draw(st.integers(0, max_layers))):
        options = ["conv"] + (["avgpool", "maxpool"] if allow_pools else []) + (
            ["relu"] if not relu_after_linear else []) + (["batchnorm"] if allow_batchnorm else [])
        kind = draw(st.sampled_from(options))
        if kind == "conv":
            cand: list[Layer] = [draw(conv_layers(max_channels, paddings))]
            if relu_after_linear:
                cand.append(ReLU())
        elif kind in ("avgpool", "maxpool"):
            cand = [(AvgPool if kind == "avgpool" else MaxPool)(draw(st.integers(2, 3)))]
        elif kind == "batchnorm":
            cand = [BatchNorm()]
        else:
            cand = [ReLU()]
        try:
            new_shape = shapes_of(cand, shape)[-1]
        except SpecError:
            continue
        layers += cand
        shape = new_shape
    head = draw(st.sampled_from(["flatten", "gap", "gmp"]))
    layers.append({"flatten": Flatten(), "gap": GlobalAvgPool(), "gmp": GlobalMaxPool()}[head])
    for _ in range(draw(st.integers(0, 2))):
        layers.append(Dense(draw(st.integers(1, 8)), bias=draw(st.booleans())))
        layers.append(ReLU())
        if not relu_after_linear and draw(st.booleans()):
            layers.pop()
    layers.append(Dense(draw(st.integers(1, 5)), bias=draw(st.booleans())))
    try:
        return Spec((c, side, side), tuple(layers))
    except SpecError:
        assume(False)
        raise


def relu_specs(max_side: int = 6, max_channels: int = 3, max_layers: int = 3,
               paddings: tuple[Padding, ...] = tuple(Padding)) -> st.SearchStrategy[Spec]:
    """Specs in the paper's class: every hidden conv / dense layer followed by a ReLU, no pooling."""
    return specs(max_side=max_side, max_channels=max_channels, max_layers=max_layers, allow_pools=False,
                 relu_after_linear=True, paddings=paddings)


@st.composite
def families(draw: st.DrawFn, names: tuple[str, ...] | None = None) -> Family:
    """A random member topology of one of the registered families (seeded by Hypothesis)."""
    name = draw(st.sampled_from(names or tuple(FAMILIES)))
    seed = draw(st.integers(0, 2**31 - 1))
    return FAMILIES[name].sample(np.random.default_rng(seed))


@st.composite
def family_members(draw: st.DrawFn, names: tuple[str, ...] | None = None, max_side: int = 16,
                   channels: int = 3) -> tuple[Family, Spec]:
    """A random family member instantiated at a valid input side ``<= max_side``."""
    fam = draw(families(names))
    sides = fam.valid_sizes(range(1, max_side + 1))
    assume(sides)
    side = draw(st.sampled_from(sides))
    return fam, fam.spec(side, channels)


def spec_kwargs(spec: Spec) -> dict[str, Any]:
    """The spec's JSON form (handy in test failure messages)."""
    return spec.to_json()
