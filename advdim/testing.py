"""Public Hypothesis strategies: random architecture specs, family members and inputs.

Used by the test suites of every layer; users can use them to property-test their own code,
and :func:`assert_law` checks the paper's law on any target with the verdicts of ``advdim
simulate`` (recipe: ``docs/property-testing.md``)::

    from hypothesis import given, settings
    from advdim.arch import format_spec, parse
    from advdim.testing import specs

    @settings(max_examples=20)
    @given(specs())
    def test_roundtrip(spec):
        assert parse(format_spec(spec)) == spec

    test_roundtrip()
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from advdim.arch import (
    FAMILIES,
    GELU,
    Attention,
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Family,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    LayerNorm,
    MaxPool,
    Padding,
    ReLU,
    Residual,
    Spec,
    shapes_of,
)
from advdim.errors import SpecError
from advdim.verdict import MIN_POWER

__all__ = ["Inconclusive", "assert_law", "block_specs", "blocks", "conv_layers", "families", "family_members",
           "has_law", "relu_specs", "specs"]


@st.composite
def conv_layers(draw: st.DrawFn, max_channels: int = 4, paddings: tuple[Padding, ...] = tuple(Padding),
                min_channels: int = 1) -> Conv:
    """A random Conv record (kernel 1-3, stride 1-2, dilation 1-2)."""
    return Conv(
        out_channels=draw(st.integers(min_channels, max(min_channels, max_channels))),
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
    min_channels: int = 1,
    allow_blocks: bool = False,
) -> Spec:
    """A random valid :class:`Spec`: a conv/pool trunk, a flatten or global pool, a dense head.

    Args:
        max_side: largest input side ``s`` (inputs are ``C x s x s``).
        relu_after_linear: put a ReLU after every hidden conv / dense layer (H1-style nets).
        paddings: padding modes to draw from.
        min_channels: fewest output channels of a conv and units of a hidden dense layer (width-1
            ReLU nets are dead half the time: their norms are too heavy-tailed for slope tests).
        allow_blocks: the trunk also draws :func:`blocks` (residual blocks, norms, GELU, attention).
    """
    c = draw(st.integers(1, 3))
    side = draw(st.integers(2, max_side))
    shape: tuple[int, ...] = (c, side, side)
    layers: list[Layer] = []
    for _ in range(draw(st.integers(0, max_layers))):
        options = ["conv"] + (["avgpool", "maxpool"] if allow_pools else []) + (
            ["relu"] if not relu_after_linear else []) + (["batchnorm"] if allow_batchnorm else []) + (
            ["block"] if allow_blocks else [])
        kind = draw(st.sampled_from(options))
        if kind == "block":
            block = _draw_block(draw, shape, max_channels, 1)
            if block is None:
                continue
            cand: list[Layer] = [block]
        elif kind == "conv":
            cand = [draw(conv_layers(max_channels, paddings, min_channels))]
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
        layers.append(Dense(draw(st.integers(min_channels, max(min_channels, 8))), bias=draw(st.booleans())))
        layers.append(ReLU())
        if not relu_after_linear and draw(st.booleans()):
            layers.pop()
    layers.append(Dense(draw(st.integers(1, 5)), bias=draw(st.booleans())))
    try:
        return Spec((c, side, side), tuple(layers))
    except SpecError:
        assume(False)
        raise


def _scales() -> st.SearchStrategy[float]:
    """Residual scales: often 1, else any finite float (its text form must read back exactly)."""
    return st.one_of(st.just(1.0), st.sampled_from([0.5, 0.1, 2.0]),
                     st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False))


def _heads(draw: st.DrawFn, features: int) -> int:
    return draw(st.sampled_from([h for h in range(1, features + 1) if features % h == 0]))


def _draw_block(draw: st.DrawFn, shape: tuple[int, ...], max_channels: int, depth: int) -> Layer | None:
    """One normalisation / activation / attention layer or residual block valid on ``shape``, or
    None when the drawn one does not fit it."""
    flat = len(shape) == 1
    kinds = ["res", "res", "res", "batchnorm", "layernorm", "gelu", "relu"] + (
        [] if flat else ["attn", "vit-attn", "vit-mlp"])
    kind = draw(st.sampled_from(kinds))
    layer: Layer
    if kind == "batchnorm":
        layer = BatchNorm(draw(st.sampled_from(tuple(BNMode))))
    elif kind == "layernorm":
        layer = LayerNorm()
    elif kind == "gelu":
        layer = GELU()
    elif kind == "relu":
        layer = ReLU()
    elif kind == "attn":
        layer = Attention(_heads(draw, shape[0]))
    elif kind == "vit-attn":  # a pre-norm attention block
        layer = Residual((LayerNorm(), Attention(_heads(draw, shape[0]))), draw(_scales()))
    elif kind == "vit-mlp":  # a pre-norm MLP block on the tokens (1x1 convs)
        hidden = draw(st.integers(1, 2 * max_channels))
        layer = Residual((LayerNorm(), Conv(hidden, kernel=1), GELU(), Conv(shape[0], kernel=1)), draw(_scales()))
    else:
        branch: list[Layer] = []
        inner = shape
        for _ in range(draw(st.integers(1, 3))):
            what = draw(st.sampled_from(["linear", "linear", "linear", "relu", "gelu", "batchnorm", "layernorm"]
                                        + (["res", "res"] if depth > 1 else [])))
            cand: Layer | None
            if what == "linear":
                cand = (Dense(draw(st.integers(1, 8)), bias=draw(st.booleans())) if flat
                        else draw(conv_layers(max_channels)))
            elif what == "res":
                cand = _draw_block(draw, inner, max_channels, depth - 1)
            else:
                cand = {"relu": ReLU(), "gelu": GELU(), "layernorm": LayerNorm(),
                        "batchnorm": BatchNorm(draw(st.sampled_from(tuple(BNMode))))}[what]
            if cand is None:
                continue
            try:
                inner = cand.out_shape(inner)
            except SpecError:
                continue
            branch.append(cand)
        if not branch:
            return None
        layer = Residual(tuple(branch), draw(_scales()))
    try:
        layer.out_shape(shape)
    except SpecError:
        return None
    return layer


@st.composite
def blocks(draw: st.DrawFn, shape: tuple[int, ...], max_channels: int = 4, depth: int = 2) -> Layer:
    """A layer of the transformer / ResNet vocabulary valid on ``shape`` (``(C, H, W)`` or ``(D,)``):
    a residual block (branch of 1-3 conv or dense / activation / norm layers, nested blocks up to
    ``depth`` levels, with an identity skip or a projection, any finite scale), a pre-norm attention
    or MLP block, batch norm in either mode, layer norm, GELU, ReLU, or attention (heads dividing C)."""
    layer = _draw_block(draw, tuple(shape), max_channels, depth)
    assume(layer is not None)
    assert layer is not None
    return layer


@st.composite
def block_specs(draw: st.DrawFn, max_side: int = 6, max_channels: int = 4, max_blocks: int = 3,
                depth: int = 2) -> Spec:
    """A random valid :class:`Spec` built from blocks: a stem (a patch embedding ``conv(D,k=p,s=p)``
    or a 3x3 conv), up to ``max_blocks`` of :func:`blocks` on the map, a flatten or global pool head,
    up to one block on the flat features, and a dense layer of logits."""
    c = draw(st.integers(1, 3))
    side = draw(st.integers(2, max_side))
    width = draw(st.integers(1, max_channels))
    patch = draw(st.sampled_from([p for p in (1, 2) if side % p == 0]))
    stem: Layer = (Conv(width, kernel=patch, stride=patch, padding=Padding.VALID) if draw(st.booleans())
                   else draw(conv_layers(max_channels)))
    layers: list[Layer] = [stem]
    try:
        shape = stem.out_shape((c, side, side))
    except SpecError:
        layers, shape = [], (c, side, side)
    for _ in range(draw(st.integers(0, max_blocks))):
        layer = _draw_block(draw, shape, max_channels, depth)
        if layer is not None:
            layers.append(layer)
            shape = layer.out_shape(shape)
    head: Layer = draw(st.sampled_from([Flatten(), GlobalAvgPool(), GlobalMaxPool()]))
    layers.append(head)
    shape = head.out_shape(shape)
    if draw(st.booleans()):
        layer = _draw_block(draw, shape, max_channels, depth)
        if layer is not None:
            layers.append(layer)
    layers.append(Dense(draw(st.integers(1, 5)), bias=draw(st.booleans())))
    return Spec((c, side, side), tuple(layers))


def relu_specs(max_side: int = 6, max_channels: int = 3, max_layers: int = 3,
               paddings: tuple[Padding, ...] = tuple(Padding), min_channels: int = 1) -> st.SearchStrategy[Spec]:
    """Specs in the paper's class: every hidden conv / dense layer followed by a ReLU, no pooling."""
    return specs(max_side=max_side, max_channels=max_channels, max_layers=max_layers, allow_pools=False,
                 relu_after_linear=True, paddings=paddings, min_channels=min_channels)


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


# --------------------------------------------------------------------------------------------
# Property-based testing of the law: the same study and verdicts as `advdim simulate`
# --------------------------------------------------------------------------------------------

# MIN_POWER (re-exported): the power a judged slope row needs against a slope error of 0.05 to count
# as evidence, the same rule as every verdict's (advdim.verdict)


class Inconclusive(AssertionError):  # noqa: N818 - reads as a verdict
    """The largest budget :func:`assert_law` may spend cannot tell the law from a slope off by 0.05.

    A subclass of ``AssertionError`` (a property test must not pass without evidence); catch it
    to treat such examples apart, e.g. ``hypothesis.assume(False)``.
    """


def has_law(target: Any, sizes: tuple[int, ...] = (8, 16, 32), init: str = "he") -> bool:
    """Whether the theory gives ``target`` a law over ``sizes`` (use with ``hypothesis.assume``)."""
    from advdim.theory import predict

    return bool(predict(target, sizes, init=init, symmetry=False).has_law)


def assert_law(target: Any, q: tuple[float, ...] = (1, 2), sizes: tuple[int, ...] = (8, 16, 32), *,
               nets: int = 16, max_nets: int = 128, draws: int = 2, inputs: int = 4, init: str = "he",
               law_init: str | None = None, seed: int = 0, device: str = "cpu",
               plant_exponent: float = 0.0) -> Any:
    """Assert ``E||d_x f||_q ~ d^(1/q - 1/2)`` (the theory's finite-d slope) for ``target``.

    Runs :func:`advdim.simulate.study` and the tests of its rows (``advdim.stats``), with ``nets``
    units (random topologies of a family; weight draws of a fixed target).  A row counts only when
    it passes: not rejected, and power >= :data:`MIN_POWER` against a slope error of 0.05 at its own
    standard error; while a row is inconclusive, the budget doubles (cells already computed are
    reused) up to ``max_nets``.  Each of these ``looks`` is tested at ``ALPHA / looks`` (Bonferroni
    over the planned looks), so that a target that follows its law fails with probability at most
    ``ALPHA`` = 0.01 however many looks it takes.

    Raises:
        AssertionError: a judged slope row fails; the message names the claim, the predicted and
            measured slopes and the interval.
        Inconclusive: no failure, but some row lacks the power at ``max_nets``.
        AdvdimError: the theory gives no law for the target (``has_law`` is False).
    Returns:
        The :class:`~advdim.simulate.FamilyResult` of the last study.
    """
    import tempfile

    from advdim.errors import AdvdimError
    from advdim.simulate import study
    from advdim.stats import ALPHA
    from advdim.store import RunStore

    keys = ["inf" if np.isinf(x) else str(int(x)) if float(x).is_integer() else str(x) for x in q]
    looks = 1
    while nets * 2**looks <= max_nets:
        looks += 1
    alpha = ALPHA / looks
    with tempfile.TemporaryDirectory() as tmp, RunStore(f"{tmp}/cells.sqlite") as store:
        n = nets
        while True:
            res = study(target, sizes, None, n, inputs, seed, device, "logit", True, plant_exponent, store,
                        draws=draws, progress=False, init=init, law_init=law_init)
            rows = [res.q[k] for k in keys if k in res.q]
            if len(rows) != len(keys):
                raise AdvdimError(f"assert_law: q must be among 1, 2 and inf, got {q}")
            if any(r.predicted_slope is None for r in rows):
                raise AdvdimError(f"assert_law: the theory gives {res.family} no law over sizes {list(sizes)} "
                                  "(check advdim.testing.has_law first)")
            tests = [r.test() for r in rows]
            failed = [(k, r) for k, r, t in zip(keys, rows, tests) if t is not None and t.rejects(alpha)]
            weak = [(k, r) for k, r, t in zip(keys, rows, tests)  # inconclusive, or not judged
                    if t is None or t.rejects(alpha) or t.power(alpha) < MIN_POWER]
            if failed:
                raise AssertionError("; ".join(_describe(res.family, k, r) for k, r in failed))
            if not weak:
                return res
            if 2 * n > max_nets:
                raise Inconclusive(f"inconclusive at {n} units (power below {MIN_POWER} against a slope error of "
                                   "0.05): " + "; ".join(_describe(res.family, k, r) for k, r in weak))
            n *= 2


def _describe(name: str, key: str, r: Any) -> str:
    lo, hi = (r.predicted_slope - r.tol, r.predicted_slope + r.tol) if r.tol is not None else r.ci
    return (f"{name}: slope of E||d_x f||_{key} predicted {r.predicted_slope:.4f}, measured {r.measured_slope:.4f}, "
            f"acceptance interval [{lo:.4f}, {hi:.4f}], power {r.power:.2f}")
