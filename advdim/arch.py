"""Architecture specs: frozen layer records, whole-network specs and families.

A :class:`Spec` is an input shape ``(C, H, W)`` and a tuple of layers.  It is the single
description of a network that the theory (``advdim.theory``), the Monte Carlo engine
(``advdim.simulate``) and training (``advdim.empirical``) all read.  A :class:`Family` maps an
input side ``s`` (and a channel count) to a :class:`Spec`, so that ``d = C * s**2`` can vary
while the topology rule stays fixed.

Specs have a one-line text form that round-trips::

    >>> spec = parse("3x8x8 > conv(4,k=3,s=2,pad=circular) > relu > flatten > dense(10)")
    >>> spec.shapes()[-1]
    (10,)
    >>> parse(format_spec(spec)) == spec
    True

Every inconsistency is a :class:`SpecError` whose one-line message names the layer at fault.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

from advdim.choice import Choice
from advdim.errors import SpecError

Shape = tuple[int, ...]


class Padding(Choice):
    """How a convolution pads its input map (``same``-size padding of ``dilation*(k-1)//2``)."""

    CIRCULAR = "circular"
    ZEROS = "zeros"
    REFLECT = "reflect"
    VALID = "valid"  # no padding at all

    @classmethod
    def noun(cls) -> str:
        return "padding mode"

    @classmethod
    def error(cls) -> type[SpecError]:
        return SpecError


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """Base of all layer records.  Subclasses define ``out_shape`` and ``in_degree``."""

    kind: ClassVar[str] = "layer"
    #: True for layers with trainable, randomly initialised weights (H3 applies to them).
    has_weights: ClassVar[bool] = False

    def out_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def in_degree(self, shape: Shape) -> int:
        """Number of inputs of one output node (interior nodes, before padding effects)."""
        return 1

    def n_params(self, shape: Shape) -> int:
        return 0

    def args(self) -> dict[str, Any]:
        """Non-default arguments, in declaration order (for the text and JSON forms)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is not value and f.default != value:
                out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


def _need_map(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise SpecError(f"{format_layer(layer)}: needs a (C, H, W) map, got shape {shape}")
    c, h, w = shape
    return c, h, w


def _need_flat(layer: Layer, shape: Shape) -> int:
    if len(shape) != 1:
        raise SpecError(
            f"{format_layer(layer)}: needs a flat input, got shape {shape} (add 'flatten' first)"
        )
    return shape[0]


def _positive(layer: Layer, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{format_layer(layer)}: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Conv(Layer):
    """2-D convolution, ``out_channels`` filters of size ``kernel x kernel``.

    Padding is ``dilation*(kernel-1)//2`` on each side (``same`` for odd kernels) in the given
    mode, or none for ``Padding.VALID``.  A stride must divide the padded output exactly.
    """

    out_channels: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    padding: Padding = Padding.CIRCULAR
    bias: bool = True

    kind: ClassVar[str] = "conv"
    has_weights: ClassVar[bool] = True

    @property
    def pad(self) -> int:
        return 0 if self.padding is Padding.VALID else self.dilation * (self.kernel - 1) // 2

    def out_shape(self, shape: Shape) -> Shape:
        _positive(self, out_channels=self.out_channels, kernel=self.kernel, stride=self.stride,
                  dilation=self.dilation)
        _, h, w = _need_map(self, shape)
        span = self.dilation * (self.kernel - 1) + 1
        if self.padding is Padding.CIRCULAR and self.pad > min(h, w):
            raise SpecError(f"{format_layer(self)}: circular padding {self.pad} exceeds the map {h}x{w}")
        if self.padding is Padding.REFLECT and self.pad >= min(h, w):
            raise SpecError(f"{format_layer(self)}: reflect padding {self.pad} needs a map larger than {h}x{w}")
        out = []
        for n in (h, w):
            padded = n + 2 * self.pad
            if span > padded:
                raise SpecError(
                    f"{format_layer(self)}: kernel span {span} is larger than the padded map {padded}"
                )
            covered = padded - span if self.padding is Padding.VALID else n
            if covered % self.stride != 0:
                raise SpecError(
                    f"{format_layer(self)}: stride {self.stride} does not divide the map "
                    f"(size {n}, padded {padded}, kernel span {span})"
                )
            out.append((padded - span) // self.stride + 1)
        return (self.out_channels, out[0], out[1])

    def in_degree(self, shape: Shape) -> int:
        return shape[0] * self.kernel * self.kernel

    def n_params(self, shape: Shape) -> int:
        return self.out_channels * self.in_degree(shape) + (self.out_channels if self.bias else 0)


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer on a flat input: ``y = W x + b`` with ``W`` of shape (out, in)."""

    out_features: int
    bias: bool = True

    kind: ClassVar[str] = "dense"
    has_weights: ClassVar[bool] = True

    def out_shape(self, shape: Shape) -> Shape:
        _positive(self, out_features=self.out_features)
        _need_flat(self, shape)
        return (self.out_features,)

    def in_degree(self, shape: Shape) -> int:
        return shape[0]

    def n_params(self, shape: Shape) -> int:
        return self.out_features * shape[0] + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class _Pool(Layer):
    """Non-overlapping ``size x size`` pooling with stride ``size``; it must divide the map."""

    size: int = 2

    def out_shape(self, shape: Shape) -> Shape:
        _positive(self, size=self.size)
        c, h, w = _need_map(self, shape)
        if h % self.size or w % self.size:
            raise SpecError(f"{format_layer(self)}: pool size {self.size} does not divide the map {h}x{w}")
        return (c, h // self.size, w // self.size)

    def in_degree(self, shape: Shape) -> int:
        return self.size * self.size


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling: deterministic weights ``1/size**2`` (so H3 fails, Appendix B)."""

    kind: ClassVar[str] = "avgpool"


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling: the gradient is routed to the arg-max of each window."""

    kind: ClassVar[str] = "maxpool"


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Average over the whole map: (C, H, W) -> (C,)."""

    kind: ClassVar[str] = "globalavgpool"

    def out_shape(self, shape: Shape) -> Shape:
        return (_need_map(self, shape)[0],)

    def in_degree(self, shape: Shape) -> int:
        return shape[1] * shape[2]


@dataclass(frozen=True)
class GlobalMaxPool(Layer):
    """Maximum over the whole map: (C, H, W) -> (C,) (the head of the paper's Section 4.2 net)."""

    kind: ClassVar[str] = "globalmaxpool"

    def out_shape(self, shape: Shape) -> Shape:
        return (_need_map(self, shape)[0],)

    def in_degree(self, shape: Shape) -> int:
        return shape[1] * shape[2]


@dataclass(frozen=True)
class Flatten(Layer):
    """(C, H, W) -> (C*H*W,), channel-major as ``torch.flatten``."""

    kind: ClassVar[str] = "flatten"

    def out_shape(self, shape: Shape) -> Shape:
        return (int(np.prod(shape)),)


@dataclass(frozen=True)
class ReLU(Layer):
    """Rectified linear unit, element-wise."""

    kind: ClassVar[str] = "relu"

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over channels (maps) or features (flat); weight 1, bias 0 at init."""

    kind: ClassVar[str] = "batchnorm"

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def n_params(self, shape: Shape) -> int:
        return 2 * shape[0]


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls
    for cls in (Conv, Dense, AvgPool, MaxPool, GlobalAvgPool, GlobalMaxPool, Flatten, ReLU, BatchNorm)
}

AnyLayer = Conv | Dense | AvgPool | MaxPool | GlobalAvgPool | GlobalMaxPool | Flatten | ReLU | BatchNorm


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A concrete network: input shape ``(C, H, W)`` and a tuple of layers ending in K logits.

    ``Spec`` validates itself on construction; an invalid spec cannot exist.
    """

    input_shape: Shape
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.input_shape, tuple) or len(self.input_shape) != 3:
            raise SpecError(f"input shape must be (C, H, W), got {self.input_shape!r}")
        for n in self.input_shape:
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise SpecError(f"input shape must hold positive integers, got {self.input_shape!r}")
        if not self.layers:
            raise SpecError("a spec needs at least one layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise SpecError(f"layer {i}: not a layer record: {layer!r}")
        shapes = self.shapes()
        if len(shapes[-1]) != 1:
            raise SpecError(
                f"the last layer {format_layer(self.layers[-1])} must output a flat vector of logits, "
                f"got shape {shapes[-1]}"
            )

    # ---- shape bookkeeping -----------------------------------------------------------------
    def shapes(self) -> list[Shape]:
        """Shapes before the first layer and after each layer (``len(layers) + 1`` entries)."""
        shape: Shape = self.input_shape
        out = [shape]
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except SpecError as err:
                raise SpecError(f"layer {i} {err}") from None
            out.append(shape)
        return out

    @property
    def d(self) -> int:
        """Input dimension ``C * H * W``."""
        return int(np.prod(self.input_shape))

    @property
    def n_classes(self) -> int:
        return self.shapes()[-1][0]

    def n_params(self) -> int:
        shapes = self.shapes()
        return sum(layer.n_params(s) for layer, s in zip(self.layers, shapes))

    def table(self) -> list[dict[str, Any]]:
        """One row per layer: index, text form, output shape, in-degree, parameter count."""
        shapes = self.shapes()
        return [
            {
                "index": i,
                "layer": format_layer(layer),
                "out_shape": list(shapes[i + 1]),
                "in_degree": layer.in_degree(shapes[i]),
                "params": layer.n_params(shapes[i]),
            }
            for i, layer in enumerate(self.layers)
        ]

    # ---- serialisation ---------------------------------------------------------------------
    def to_text(self) -> str:
        return format_spec(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "layers": [{"kind": layer.kind, **layer.args()} for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Spec:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise SpecError(f"spec JSON does not parse: {err}") from None
        if not isinstance(data, dict) or "input_shape" not in data or "layers" not in data:
            raise SpecError("spec JSON needs the keys 'input_shape' and 'layers'")
        layers = []
        for i, item in enumerate(data["layers"]):
            if not isinstance(item, dict) or "kind" not in item:
                raise SpecError(f"layer {i}: JSON layer needs a 'kind'")
            kwargs = dict(item)
            layers.append(_make_layer(i, kwargs.pop("kind"), [], kwargs))
        return cls(tuple(int(n) for n in data["input_shape"]), tuple(layers))

    def with_input(self, input_shape: Shape) -> Spec:
        return replace(self, input_shape=tuple(input_shape))


# --------------------------------------------------------------------------------------------
# Text form
# --------------------------------------------------------------------------------------------

_SHORT = {"kernel": "k", "stride": "s", "dilation": "dil", "padding": "pad", "size": "size"}
_LONG = {v: k for k, v in _SHORT.items()}
_POSITIONAL = {"conv": ("out_channels", "kernel"), "dense": ("out_features",), "avgpool": ("size",),
               "maxpool": ("size",)}


def format_layer(layer: Layer) -> str:
    """Text form of one layer, e.g. ``conv(16,k=3,s=2,pad=zeros)``."""
    args = layer.args()
    positional = _POSITIONAL.get(layer.kind, ())
    parts: list[str] = []
    for name in positional:
        if name in args:
            parts.append(_fmt_value(args.pop(name)))
        elif name == positional[0] and hasattr(layer, name):
            parts.append(_fmt_value(getattr(layer, name)))
        else:
            break
    parts += [f"{_SHORT.get(k, k)}={_fmt_value(v)}" for k, v in args.items()]
    return f"{layer.kind}({','.join(parts)})" if parts else layer.kind


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_spec(spec: Spec) -> str:
    """One-line text form: ``CxHxW > layer > layer ...``; ``parse`` inverts it."""
    head = "x".join(str(n) for n in spec.input_shape)
    return " > ".join([head, *(format_layer(layer) for layer in spec.layers)])


_LAYER_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.IGNORECASE)


def _parse_value(index: int, kind: str, name: str, raw: str) -> Any:
    raw = raw.strip()
    if name == "padding":
        try:
            return Padding.parse(raw)
        except SpecError as err:
            raise SpecError(f"layer {index} {kind}: {err}") from None
    if name == "bias":
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise SpecError(f"layer {index} {kind}: bias must be true or false, got {raw!r}")
    if not re.fullmatch(r"[+-]?\d+", raw):
        raise SpecError(f"layer {index} {kind}: {name} must be an integer, got {raw!r}")
    return int(raw)


def _make_layer(index: int, kind: str, positional: list[str], named: dict[str, Any]) -> Layer:
    kind = kind.lower()
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise SpecError(f"layer {index}: unknown layer {kind!r} (known: {', '.join(LAYER_TYPES)})")
    names = [f.name for f in fields(cls)]
    pos_names = _POSITIONAL.get(kind, ())
    if len(positional) > len(pos_names):
        raise SpecError(f"layer {index} {kind}: too many positional arguments {positional}")
    kwargs: dict[str, Any] = {}
    for name, raw in zip(pos_names, positional):
        kwargs[name] = _parse_value(index, kind, name, raw)
    for key, raw in named.items():
        name = _LONG.get(key, key)
        if name not in names:
            raise SpecError(f"layer {index} {kind}: unknown argument {key!r}")
        if name in kwargs:
            raise SpecError(f"layer {index} {kind}: argument {name!r} given twice")
        if isinstance(raw, str):
            kwargs[name] = _parse_value(index, kind, name, raw)
        elif name == "bias" and isinstance(raw, bool):
            kwargs[name] = raw
        elif name not in ("bias", "padding") and isinstance(raw, int) and not isinstance(raw, bool):
            kwargs[name] = raw
        else:
            raise SpecError(f"layer {index} {kind}: bad value {raw!r} for {name}")
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [n for n in names if n not in kwargs]
        raise SpecError(f"layer {index} {kind}: missing argument(s) {missing}") from None


def parse(text: str) -> Spec:
    """Parse the one-line text form (see :func:`format_spec`)."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty spec text")
    parts = [p.strip() for p in text.split(">")]
    head, body = parts[0], parts[1:]
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", head.replace(" ", ""))
    if m is None:
        raise SpecError(f"spec text must start with the input shape CxHxW, got {head!r}")
    layers: list[Layer] = []
    for i, part in enumerate(body):
        lm = _LAYER_RE.match(part)
        if lm is None:
            raise SpecError(f"layer {i}: cannot read {part!r}")
        kind, argtext = lm.group(1), lm.group(2)
        positional: list[str] = []
        named: dict[str, Any] = {}
        if argtext is not None and argtext.strip():
            for item in argtext.split(","):
                if "=" in item:
                    key, _, value = item.partition("=")
                    named[key.strip().lower()] = value.strip()
                elif named:
                    raise SpecError(f"layer {i} {kind}: positional argument after a named one")
                else:
                    positional.append(item.strip())
        layers.append(_make_layer(i, kind, positional, named))
    return Spec((int(m.group(1)), int(m.group(2)), int(m.group(3))), tuple(layers))


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


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
        return f"{self.name}({args})"


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
        return Family(self.name, tuple(sorted((k, _normalise_param(k, v)) for k, v in merged.items())))

    def sample(self, rng: np.random.Generator | int) -> Family:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        return self.make(**self.sampler(rng))


def _normalise_param(key: str, value: Any) -> Any:
    if key == "padding":
        return value if isinstance(value, Padding) else Padding.parse(str(value))
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
}


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
    """Parse ``name`` or ``name(key=value,...)`` (tuples as ``a/b/c``), e.g. ``dense(widths=64/64)``."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*", text, re.IGNORECASE)
    if m is None:
        raise SpecError(f"{text!r} is neither a family (name or name(key=value,...); known: {', '.join(FAMILIES)}) "
                        "nor a spec text 'CxHxW > layer > ...'")
    name, argtext = m.group(1).lower(), m.group(2)
    if name not in FAMILIES:
        raise SpecError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    params: dict[str, Any] = {}
    defaults = FAMILIES[name].defaults
    if argtext and argtext.strip():
        for item in argtext.split(","):
            key, eq, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not eq or key not in defaults:
                raise SpecError(f"family {name}: cannot read parameter {item.strip()!r}")
            default = defaults[key]
            if isinstance(default, Padding):
                params[key] = Padding.parse(raw)
            elif isinstance(default, tuple):
                try:
                    params[key] = tuple(int(x) for x in raw.split("/") if x.strip())
                except ValueError:
                    raise SpecError(f"family {name}: {key} must be integers separated by '/'") from None
            else:
                if not re.fullmatch(r"[+-]?\d+", raw):
                    raise SpecError(f"family {name}: {key} must be an integer, got {raw!r}")
                params[key] = int(raw)
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
