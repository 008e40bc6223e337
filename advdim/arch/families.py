"""Families: rules that map an input side ``s`` (and channels) to a :class:`Spec`; random members."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from advdim.arch.grammar import parse
from advdim.arch.layers import (
    GELU,
    MAX_LAYERS,
    MAX_SCALE,
    Attention,
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    MaxPool,
    Padding,
    ReLU,
    Residual,
    Shape,
    Spec,
    too_many_layers,
)
from advdim.arch.text import _fmt_value, check_ascii, read_float, read_int
from advdim.choice import Choice
from advdim.errors import SpecError


@dataclass(frozen=True)
class Family:
    """A rule mapping an input side ``size`` and ``channels`` to a :class:`Spec`.

    Attributes:
        name: family name (``dense``, ``strided``, ``avgpool``, ``maxpool``, ...).
        params: the family's parameters, a sorted tuple of ``(name, value)`` pairs.
    """

    name: str
    params: tuple[tuple[str, Any], ...]

    def spec(self, size: int, channels: int = 3) -> Spec:
        """The member at input shape ``(channels, size, size)``."""
        if not isinstance(size, int) or size < 1:
            raise SpecError(f"family {self.name}: input size must be a positive integer, got {size!r}")
        if not isinstance(channels, int) or channels < 1:
            raise SpecError(f"family {self.name}: channels must be a positive integer, got {channels!r}")
        builder = FAMILIES[self.name].builder
        return Spec((channels, size, size), tuple(builder(size, **dict(self.params))))

    def valid_sizes(self, candidates: Iterable[int]) -> list[int]:
        out = []
        for s in candidates:
            try:
                self.spec(s)
            except SpecError:
                continue
            out.append(s)
        return out

    def get(self, key: str) -> Any:
        return dict(self.params)[key]

    def to_json(self) -> dict[str, Any]:
        return {"family": self.name, **{k: _jsonable(v) for k, v in self.params}}

    def to_text(self) -> str:
        args = ",".join(f"{k}={_fmt_param(v)}" for k, v in self.params)
        return f"{self.name}({args})" if args else self.name


def _jsonable(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, tuple):
        return list(v)
    return v


def _fmt_param(v: Any) -> str:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, tuple):
        return "/".join(str(x) for x in v)
    return _fmt_value(v)


@dataclass(frozen=True)
class FamilyType:
    """A registered family: its layer builder, its defaults and a random-member sampler."""

    name: str
    builder: Callable[..., list[Layer]]
    defaults: dict[str, Any]
    sampler: Callable[[np.random.Generator], dict[str, Any]]
    doc: str

    def make(self, **params: Any) -> Family:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise SpecError(f"family {self.name}: unknown parameter(s) {sorted(unknown)}")
        merged = {**self.defaults, **params}
        return Family(self.name, tuple(sorted((k, _normalise_param(self.name, k, v, self.defaults[k]))
                                              for k, v in merged.items())))

    def sample(self, rng: np.random.Generator | int) -> Family:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        return self.make(**self.sampler(rng))


def _normalise_param(family: str, key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of the parameter's default: an enum member (from its word), a float, a
    tuple of ints or an int (so that equal families compare, print and key equal)."""
    if isinstance(default, Choice):
        return value if isinstance(value, type(default)) else type(default).parse(str(value))
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise SpecError(f"family {family}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _check_positive(family: str, **values: Any) -> None:
    for k, v in values.items():
        vs = v if isinstance(v, tuple) else (v,)
        if not vs or any((not isinstance(x, int)) or x < 1 for x in vs):
            raise SpecError(f"family {family}: {k} must be positive integer(s), got {v!r}")


def _check_count(family: str, layers: int) -> None:
    """Refuse, before a layer is made, a member of more than ``MAX_LAYERS`` layers (branch layers
    included): ``resnet(blocks=100000000)`` would fill the memory with its blocks."""
    if layers > MAX_LAYERS:
        raise SpecError(f"family {family}: {too_many_layers()}")


def _halvings(family: str, size: int, final: int) -> int:
    _check_positive(family, final=final)
    if size < final or size % final:
        raise SpecError(f"family {family}: input size {size} is not final size {final} times a power of 2")
    ratio = size // final
    m = int(round(math.log2(ratio)))
    if 2**m != ratio:
        raise SpecError(f"family {family}: input size {size} is not final size {final} times a power of 2")
    return m


def _dense_layers(size: int, widths: tuple[int, ...], classes: int) -> list[Layer]:
    _check_positive("dense", classes=classes)
    if widths:
        _check_positive("dense", widths=widths)
    _check_count("dense", 2 + 2 * len(widths))
    layers: list[Layer] = [Flatten()]
    for w in widths:
        layers += [Dense(w), ReLU()]
    return [*layers, Dense(classes)]


def _conv_trunk(family: str, size: int, channels: int, kernel: int, final: int, padding: Padding,
                dilation: int, reduce: Callable[[], list[Layer]]) -> list[Layer]:
    _check_positive(family, channels=channels, kernel=kernel, dilation=dilation)
    m = _halvings(family, size, final)
    layers: list[Layer] = [Conv(channels, kernel, 1, dilation, padding), ReLU()]
    for _ in range(m):
        layers += reduce()
    return layers


def _head(head: tuple[int, ...], classes: int, family: str) -> list[Layer]:
    _check_positive(family, classes=classes)
    _check_count(family, 2 + 2 * len(head))
    layers: list[Layer] = [Flatten()]
    for w in head:
        layers += [Dense(w), ReLU()]
    return [*layers, Dense(classes)]


def _strided_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
                    head: tuple[int, ...], classes: int) -> list[Layer]:
    trunk = _conv_trunk("strided", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 2, dilation, padding), ReLU()])
    return trunk + _head(head, classes, "strided")


def _avgpool_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
                    head: tuple[int, ...], classes: int) -> list[Layer]:
    trunk = _conv_trunk("avgpool", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 1, dilation, padding), AvgPool(2), ReLU()])
    return trunk + _head(head, classes, "avgpool")


def _maxpool_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
                    head: tuple[int, ...], classes: int) -> list[Layer]:
    trunk = _conv_trunk("maxpool", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 1, dilation, padding), ReLU(), MaxPool(2)])
    return trunk + _head(head, classes, "maxpool")


def _gap_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
                classes: int) -> list[Layer]:
    trunk = _conv_trunk("gap", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 2, dilation, padding), ReLU()])
    return [*trunk, GlobalAvgPool(), Dense(classes)]


def _bn_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
               head: tuple[int, ...], classes: int, mode: BNMode) -> list[Layer]:
    trunk = _conv_trunk("bn", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 2, dilation, padding), BatchNorm(mode), ReLU()])
    trunk.insert(1, BatchNorm(mode))  # after the stride-1 conv too: conv > batchnorm > relu everywhere
    return trunk + _head(head, classes, "bn")


def _ln_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, dilation: int,
               head: tuple[int, ...], classes: int) -> list[Layer]:
    trunk = _conv_trunk("ln", size, channels, kernel, final, padding, dilation,
                        lambda: [Conv(channels, kernel, 2, dilation, padding), LayerNorm(), ReLU()])
    trunk.insert(1, LayerNorm())
    return trunk + _head(head, classes, "ln")


class Pool(Choice):
    """How the ``resnet`` family reduces its last map before the logit layer."""

    FLATTEN = "flatten"
    GAP = "gap"  # global average pool

    @classmethod
    def noun(cls) -> str:
        return "head pooling"

    @classmethod
    def error(cls) -> type[SpecError]:
        return SpecError


def _check_scale(family: str, scale: float) -> None:
    if not isinstance(scale, float) or not math.isfinite(scale) or scale <= 0:
        raise SpecError(f"family {family}: scale must be a positive finite number, got {scale!r}")
    if scale > MAX_SCALE:
        raise SpecError(f"family {family}: scale {scale!r} is out of range: it must be at most {MAX_SCALE:g} (its "
                        "square multiplies the gradient's variance at every block, and the predictions would overflow)")


def _resnet_layers(size: int, channels: int, kernel: int, final: int, padding: Padding, blocks: int,
                   scale: float, pool: Pool, classes: int) -> list[Layer]:
    """Stem ``conv > relu``; per halving of the map one downsampling block (stride-2 branch, 1x1
    stride-2 projection on the skip) and ``blocks`` identity blocks; ``flatten`` or ``gap`` > dense.

    Every branch is ``conv > relu > conv`` and starts with a conv, and nothing follows an addition
    but the next block's branch conv, its skip, or the head: no ReLU directly after an add (the
    pre-activation layout, where each ReLU follows a conv and is a Bernoulli(1/2) gate at init).
    """
    _check_positive("resnet", channels=channels, kernel=kernel, classes=classes)
    if not isinstance(blocks, int) or blocks < 0:
        raise SpecError(f"family resnet: blocks must be a non-negative integer, got {blocks!r}")
    _check_scale("resnet", scale)
    m = _halvings("resnet", size, final)
    _check_count("resnet", 4 + 4 * m * (blocks + 1))  # stem and head 2 + 2, each block 1 + 3

    def branch(stride: int) -> tuple[Layer, ...]:
        return (Conv(channels, kernel, stride, 1, padding), ReLU(), Conv(channels, kernel, 1, 1, padding))

    layers: list[Layer] = [Conv(channels, kernel, 1, 1, padding), ReLU()]
    for _ in range(m):
        layers.append(Residual(branch(2), scale))
        layers += [Residual(branch(1), scale) for _ in range(blocks)]
    return [*layers, Flatten() if pool is Pool.FLATTEN else GlobalAvgPool(), Dense(classes)]


class Scaling(Choice):
    """How a ``vit`` member grows with the input side ``s``."""

    PATCH = "patch"  # fixed patch side p: (s/p)^2 tokens, more tokens as d grows
    TOKENS = "tokens"  # fixed t x t token grid: patches of side s/t, wider patches as d grows

    @classmethod
    def noun(cls) -> str:
        return "vit scaling"

    @classmethod
    def error(cls) -> type[SpecError]:
        return SpecError


class Activation(Choice):
    """The activation of a ``vit`` member's MLP blocks."""

    GELU = "gelu"
    RELU = "relu"

    @classmethod
    def noun(cls) -> str:
        return "activation"

    @classmethod
    def error(cls) -> type[SpecError]:
        return SpecError


def _vit_layers(size: int, scaling: Scaling, side: int, dim: int, depth: int, heads: int, mlp: int,
                activation: Activation, classes: int) -> list[Layer]:
    """Patch embedding ``conv(dim, k=p, s=p, pad=valid)`` (``p = side``, or ``p = size/side`` with
    ``scaling=tokens``); ``depth`` blocks ``res(layernorm > attn(heads))`` then
    ``res(layernorm > conv(mlp*dim, k=1) > act > conv(dim, k=1))``; ``layernorm > globalavgpool >
    dense(classes)`` (the token mean-pool head).  Each map position is a token."""
    _check_positive("vit", side=side, dim=dim, depth=depth, heads=heads, mlp=mlp, classes=classes)
    if dim % heads:
        raise SpecError(f"family vit: {heads} heads do not divide dim {dim}")
    if size % side:
        what = "patch side" if scaling is Scaling.PATCH else "token grid side"
        raise SpecError(f"family vit: input size {size} is not a multiple of the {what} {side}")
    patch = side if scaling is Scaling.PATCH else size // side
    _check_count("vit", 4 + 8 * depth)  # embedding, head 3, per depth blocks of 1 + 2 and 1 + 4
    act: Layer = GELU() if activation is Activation.GELU else ReLU()
    layers: list[Layer] = [Conv(dim, patch, patch, 1, Padding.VALID)]
    for _ in range(depth):
        layers.append(Residual((LayerNorm(), Attention(heads))))
        layers.append(Residual((LayerNorm(), Conv(mlp * dim, 1), act, Conv(dim, 1))))
    return [*layers, LayerNorm(), GlobalAvgPool(), Dense(classes)]


_PADDINGS = (Padding.CIRCULAR, Padding.ZEROS, Padding.REFLECT)


def _sample_dense(rng: np.random.Generator) -> dict[str, Any]:
    depth = int(rng.integers(1, 5))
    return {"widths": tuple(int(w) for w in rng.choice([32, 64, 128, 256], size=depth))}


def _sample_conv(rng: np.random.Generator, with_head: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "channels": int(rng.choice([4, 8, 16, 32])),
        "kernel": int(rng.choice([3, 5])),
        "final": int(rng.choice([1, 2, 4])),
        "padding": _PADDINGS[int(rng.integers(0, 3))],
    }
    if with_head:
        out["head"] = tuple(int(w) for w in rng.choice([32, 64], size=int(rng.integers(0, 2))))
    return out


def _sample_resnet(rng: np.random.Generator) -> dict[str, Any]:
    conv = _sample_conv(rng, with_head=False)
    del conv["kernel"]  # 3x3 kernels, as in ResNets: kernel 5 would double the cost of the deep members
    # small branch scales (as in Hayou et al. 2021): each identity block multiplies E||d_x f||^2 by
    # 1 + 2 a^2 per doubling of s, so a = 1 spread the topologies' norms over orders of magnitude and a
    # pooled study had no power; a in {0.25, 0.5} keeps the per-doubling ratio between 2.1 and 5.6
    return {**conv, "blocks": int(rng.integers(0, 3)), "scale": float(rng.choice([0.25, 0.5])),
            "pool": Pool.FLATTEN if rng.random() < 0.5 else Pool.GAP}


def _sample_vit(rng: np.random.Generator) -> dict[str, Any]:
    """Random members keep ``scaling=patch`` (the family default): a study's topologies then share one
    law; ``vit(scaling=tokens)`` names the other scaling."""
    dim = int(rng.choice([16, 32]))
    return {"side": int(rng.choice([2, 4])), "dim": dim, "depth": int(rng.integers(1, 3)),
            "heads": int(rng.choice([h for h in (1, 2, 4) if dim % h == 0])), "mlp": int(rng.choice([2, 4])),
            "activation": Activation.GELU if rng.random() < 0.5 else Activation.RELU}


_CONV_DEFAULTS: dict[str, Any] = {
    "channels": 16, "kernel": 3, "final": 4, "padding": Padding.CIRCULAR, "dilation": 1, "head": (),
    "classes": 10,
}

FAMILIES: dict[str, FamilyType] = {
    "dense": FamilyType(
        "dense", _dense_layers, {"widths": (256, 256), "classes": 10}, _sample_dense,
        "flatten, then hidden dense+ReLU layers of the given widths, then K logits (Theorem 4)",
    ),
    "strided": FamilyType(
        "strided", _strided_layers, dict(_CONV_DEFAULTS), _sample_conv,
        "stride-1 conv, then stride-2 convs until the map is `final`, then a dense head (Corollary 6)",
    ),
    "avgpool": FamilyType(
        "avgpool", _avgpool_layers, dict(_CONV_DEFAULTS), _sample_conv,
        "as strided, each stride-2 conv replaced by a stride-1 conv + 2x2 average pool (Appendix B)",
    ),
    "maxpool": FamilyType(
        "maxpool", _maxpool_layers, dict(_CONV_DEFAULTS), _sample_conv,
        "as avgpool with ReLU then 2x2 max pooling (the paper's Section 4.2 net pools this way)",
    ),
    "gap": FamilyType(
        "gap", _gap_layers, {k: v for k, v in _CONV_DEFAULTS.items() if k != "head"},
        lambda rng: _sample_conv(rng, with_head=False),
        "as strided, with a global-average-pool head instead of flatten",
    ),
    "resnet": FamilyType(
        "resnet", _resnet_layers,
        {"channels": 16, "kernel": 3, "final": 4, "padding": Padding.CIRCULAR, "blocks": 1, "scale": 1.0,
         "pool": Pool.FLATTEN, "classes": 10},
        _sample_resnet,
        "stem conv > relu; per halving a stride-2 res(conv > relu > conv, scale) with a 1x1 projection, then "
        "`blocks` identity blocks; flatten or gap > dense (no ReLU after an add)",
    ),
    "bn": FamilyType(
        "bn", _bn_layers, {**_CONV_DEFAULTS, "mode": BNMode.BATCH},
        _sample_conv,
        "as strided, batchnorm after every conv (mode=batch: each net's batch of inputs; mode=running: eval)",
    ),
    "ln": FamilyType(
        "ln", _ln_layers, dict(_CONV_DEFAULTS), _sample_conv,
        "as strided, layernorm over the channels of each position after every conv",
    ),
    "vit": FamilyType(
        "vit", _vit_layers,
        {"scaling": Scaling.PATCH, "side": 4, "dim": 32, "depth": 2, "heads": 2, "mlp": 2,
         "activation": Activation.GELU, "classes": 10},
        _sample_vit,
        "patch embedding conv(dim,k=p,s=p); depth x (res(layernorm > attn) > res(layernorm > 1x1 MLP)); "
        "layernorm > token mean-pool > dense; scaling=patch: p = side, scaling=tokens: p = size/side",
    ),
}

#: the families of the paper's theorems (the default of ``advdim simulate``), and those beyond it
PAPER_FAMILIES: tuple[str, ...] = ("dense", "strided", "avgpool", "maxpool", "gap")
BEYOND_FAMILIES: tuple[str, ...] = tuple(name for name in FAMILIES if name not in PAPER_FAMILIES)


def family(name: str, **params: Any) -> Family:
    """A family by name with parameters overriding its defaults.

    >>> family("dense", widths=(64,)).spec(8, channels=1).d
    64
    """
    ftype = FAMILIES.get(name)
    if ftype is None:
        raise SpecError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    return ftype.make(**params)


def sample_family(name: str, rng: np.random.Generator | int) -> Family:
    """A random member topology of family ``name`` (seeded)."""
    ftype = FAMILIES.get(name)
    if ftype is None:
        raise SpecError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    return ftype.sample(rng)


def parse_family(text: str) -> Family:
    """Parse ``name`` or ``name(key=value,...)`` (tuples as ``a/b/c``), e.g. ``dense(widths=64/64)``.

    As spec texts: ASCII only, each key once, numbers as :func:`advdim.arch.text.read_int` and
    :func:`~advdim.arch.text.read_float` read them, no empty ``()``."""
    check_ascii("family", text)
    m = re.fullmatch(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*", text, re.IGNORECASE | re.ASCII | re.DOTALL)
    if m is None:
        raise SpecError(f"{text!r} is neither a family (name or name(key=value,...); known: {', '.join(FAMILIES)}) "
                        "nor a spec text 'CxHxW > layer > ...'")
    name, argtext = m.group(1).lower(), m.group(2)
    if name not in FAMILIES:
        raise SpecError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    params: dict[str, Any] = {}
    defaults = FAMILIES[name].defaults
    if argtext is not None and not argtext.strip():
        raise SpecError(f"family {name}: empty argument list '()': write {name!r} alone for the defaults")
    for item in (argtext.split(",") if argtext else ()):
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or key not in defaults:
            raise SpecError(f"family {name}: cannot read parameter {item.strip()!r}")
        if key in params:
            raise SpecError(f"family {name}: parameter {key!r} given twice")
        default = defaults[key]
        if isinstance(default, Choice):
            params[key] = type(default).parse(raw)
        elif isinstance(default, float):
            params[key] = read_float(f"family {name}", key, raw)
        elif isinstance(default, tuple):
            if not re.fullmatch(r"[0-9/ +-]*", raw, re.ASCII):
                raise SpecError(f"family {name}: {key} must be integers separated by '/', got {raw!r}")
            params[key] = tuple(read_int(f"family {name}", key, x) for x in raw.split("/") if x.strip())
        else:
            params[key] = read_int(f"family {name}", key, raw)
    return family(name, **params)


def resolve(text: str, size: int | None = None, channels: int = 3) -> Spec:
    """A spec from either a family (``strided``, ``dense(widths=64)``) at ``size`` or a spec text."""
    if ">" in text:
        spec = parse(text)
        if size is not None and spec.input_shape[1:] != (size, size):
            raise SpecError(f"the spec's input {spec.input_shape} disagrees with --size {size}")
        return spec
    fam = parse_family(text)
    if size is None:
        raise SpecError(f"the family {fam.name!r} needs an input size (--size)")
    return fam.spec(size, channels)


def shapes_of(layers: Sequence[Layer], input_shape: Shape) -> list[Shape]:
    """Shapes through a layer list without building a spec (no logits check)."""
    out = [tuple(input_shape)]
    for layer in layers:
        out.append(layer.out_shape(out[-1]))
    return out
