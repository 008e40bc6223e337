"""Layer records and whole-network specs (:class:`Spec`): shapes, in-degrees, parameters, JSON."""

from __future__ import annotations

import enum
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, ClassVar

from advdim.arch.text import (
    _LONG,
    _POSITIONAL,
    _shown,
    check_ascii,
    format_layer,
    format_spec,
    json_int,
    read_float,
    read_int,
)
from advdim.choice import Choice
from advdim.errors import SpecError

Shape = tuple[int, ...]

#: Bounds that refuse absurd specs before any work: residual blocks nested deeper than
#: ``MAX_NESTING`` (recursion would blow up), more than ``MAX_LAYERS`` layers (branch layers
#: included; ``resnet(blocks=100000000)``), more than ``MAX_PARAMS`` parameters, a layer output of
#: more than ``MAX_UNITS`` numbers per input, or a residual scale beyond ``MAX_SCALE`` in size.
MAX_NESTING = 100
MAX_LAYERS = 1000
MAX_PARAMS = 10**10
MAX_UNITS = 10**10
MAX_SCALE = 1e3


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

    def out_shape_and_params(self, shape: Shape) -> tuple[Shape, int]:
        """``(out_shape(shape), n_params(shape))``; a residual block works both out in one walk."""
        return self.out_shape(shape), self.n_params(shape)

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


def check_scale(scale: object) -> None:
    """Refuse a residual scale that is not a finite number, or beyond ``MAX_SCALE`` in size (its
    square multiplies the gradient's variance at each block: the predictions would overflow)."""
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise SpecError(f"res: scale must be a finite number, got {scale!r}")
    if abs(float(scale)) > MAX_SCALE:
        raise SpecError(f"res: scale {scale!r} is out of range: |scale| must be at most {MAX_SCALE:g} (its square "
                        "multiplies the gradient's variance at every block, and the predictions would overflow)")


def check_units(layer: Layer, shape: Shape) -> None:
    """Refuse a layer output of more than ``MAX_UNITS`` numbers per input."""
    units = math.prod(shape)
    if units > MAX_UNITS:
        raise SpecError(f"{format_layer(layer)}: its output {shape} holds {units:.3g} numbers per input, "
                        f"more than the maximum of {MAX_UNITS:.0e}")


def check_size(layers: Sequence[Layer]) -> None:
    """Refuse, without recursion and before any shape is worked out, residual blocks nested deeper
    than ``MAX_NESTING`` or more than ``MAX_LAYERS`` layers in all (branch layers included)."""
    _check_census(layers, lambda layer: layer.branch if isinstance(layer, Residual) else None)


def _check_census(chain: Sequence[Any], branch_of: Callable[[Any], Any]) -> None:
    """:func:`check_size` for layer records or their JSON objects: ``branch_of(item)`` is the
    item's branch (``None``: not a residual block); a branch that is not a sequence is left to
    the validation of its block."""
    count = 0
    todo: list[tuple[Sequence[Any], int]] = [(chain, 0)]
    while todo:
        chain, depth = todo.pop()
        count += len(chain)
        if count > MAX_LAYERS:
            raise too_many_layers()
        for item in chain:
            branch = branch_of(item)
            if isinstance(branch, (tuple, list)):
                if depth + 1 > MAX_NESTING:
                    raise too_deep()
                todo.append((branch, depth + 1))


def too_many_layers() -> SpecError:
    """The refusal of a spec of more than ``MAX_LAYERS`` layers."""
    return SpecError(f"the spec has more than {MAX_LAYERS} layers (branch layers included), more than any network "
                     "this toolkit studies: use fewer layers or blocks")


def too_deep() -> SpecError:
    """The refusal of residual blocks nested deeper than ``MAX_NESTING``."""
    return SpecError(f"residual blocks nesting deeper than {MAX_NESTING} (a res inside a res inside ...): chain the "
                     "blocks instead of nesting them")


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
            raise SpecError(f"{format_layer(self)}: reflect padding {self.pad} needs a map larger "
                            f"than {h}x{w}")
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
    """Max pooling over ``size x size`` windows with ``stride`` and ``pad``: the gradient is routed
    to the arg-max of each window.

    ``maxpool(k)`` (``stride`` None, ``pad`` 0) is the non-overlapping pool of stride ``k``, which
    must divide the map.  ``maxpool(k,s=S,pad=P)`` is ``nn.MaxPool2d(k, S, P)``: padding by ``-inf``
    (a padded entry is never the maximum), floor mode (trailing inputs no window reaches are dropped),
    ``P <= k // 2`` as PyTorch requires; its output side is ``(n + 2P - k) // S + 1``.  A stride equal
    to the size with no padding is stored as None, so that ``maxpool(2,s=2)`` and ``maxpool(2)`` are one
    spec::

        >>> MaxPool(3, stride=2, pad=1).out_shape((4, 8, 8)), MaxPool(2, stride=2) == MaxPool(2)
        ((4, 4, 4), True)
    """

    stride: int | None = None
    pad: int = 0

    kind: ClassVar[str] = "maxpool"

    def __post_init__(self) -> None:
        if self.stride is not None and self.stride == self.size and self.pad == 0 \
                and isinstance(self.stride, int) and not isinstance(self.stride, bool):
            object.__setattr__(self, "stride", None)

    @property
    def step(self) -> int:
        """The stride (``size`` for the non-overlapping pool)."""
        return self.size if self.stride is None else self.stride

    def out_shape(self, shape: Shape) -> Shape:
        if self.stride is None and self.pad == 0:
            return super().out_shape(shape)
        _positive(self, size=self.size, stride=self.step)
        if not isinstance(self.pad, int) or isinstance(self.pad, bool) or not 0 <= self.pad <= self.size // 2:
            raise SpecError(f"{format_layer(self)}: pad must be an integer from 0 to size // 2 = {self.size // 2} "
                            f"(PyTorch's rule), got {self.pad!r}")
        c, h, w = _need_map(self, shape)
        if min(h, w) + 2 * self.pad < self.size:
            raise SpecError(f"{format_layer(self)}: the window {self.size} is larger than the padded map "
                            f"{h + 2 * self.pad}x{w + 2 * self.pad}")
        return (c, (h + 2 * self.pad - self.size) // self.step + 1, (w + 2 * self.pad - self.size) // self.step + 1)


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
        return (math.prod(shape),)


@dataclass(frozen=True)
class ReLU(Layer):
    """Rectified linear unit, element-wise."""

    kind: ClassVar[str] = "relu"

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class Scale(Layer):
    """Multiplication by a positive constant ``factor`` (``scale(a)``), element-wise.

    It multiplies every path of the path sum by ``a``, so ``E||d_x f||_2^2`` by ``a^2``, and commutes
    with ReLU (``relu(a z) = a relu(z)``) and is absorbed by a norm layer.  A layer of ``r`` times He's
    variance is the He layer followed by ``scale(sqrt(r))``.  ``factor`` lies in
    ``[1/MAX_SCALE, MAX_SCALE]``::

        >>> Scale(0.5).out_shape((3, 4, 4)), Scale(2) == Scale(2.0)
        ((3, 4, 4), True)
    """

    factor: float

    kind: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        if isinstance(self.factor, int) and not isinstance(self.factor, bool):
            object.__setattr__(self, "factor", float(self.factor))  # one value, one text form

    def out_shape(self, shape: Shape) -> Shape:
        a = self.factor
        if not isinstance(a, numbers.Real) or isinstance(a, bool) or not math.isfinite(a):
            raise SpecError(f"scale: the factor must be a finite number, got {a!r}")
        if not 1.0 / MAX_SCALE <= a <= MAX_SCALE:
            raise SpecError(f"scale({a!r}): the factor must lie in [{1 / MAX_SCALE:g}, {MAX_SCALE:g}] (a positive "
                            "constant; its square multiplies the gradient's variance)")
        return shape


class BNMode(Choice):
    """Which statistics a batch norm layer normalises with when gradients are taken."""

    BATCH = "batch"  # training mode: the batch's own mean and variance (the samples of a batch interact)
    RUNNING = "running"  # evaluation mode: the running statistics (mean 0, variance 1 at initialisation)

    @classmethod
    def noun(cls) -> str:
        return "batch norm mode"

    @classmethod
    def error(cls) -> type[SpecError]:
        return SpecError


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over channels (maps) or features (flat); weight 1, bias 0 at init.

    ``mode`` says which statistics are used when the gradient is taken: ``running`` (evaluation
    mode; at initialisation an identity up to ``1/sqrt(1 + eps)``) or ``batch`` (training mode:
    each sample's output depends on the whole batch).
    """

    mode: BNMode = BNMode.RUNNING

    kind: ClassVar[str] = "batchnorm"

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def n_params(self, shape: Shape) -> int:
        return 2 * shape[0]


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Layer normalisation: over the features of a flat input, or over the channels at each
    position of a map (each position is a token, as in a vision transformer); weight 1, bias 0."""

    kind: ClassVar[str] = "layernorm"

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def in_degree(self, shape: Shape) -> int:
        return shape[0]

    def n_params(self, shape: Shape) -> int:
        return 2 * shape[0]


@dataclass(frozen=True)
class GELU(Layer):
    """Gaussian error linear unit (exact erf form), element-wise."""

    kind: ClassVar[str] = "gelu"

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class Attention(Layer):
    """Multi-head self-attention over the positions of a (D, H, W) map: each of the ``H*W``
    positions is a token with ``D`` features; ``heads`` must divide ``D``.  Query, key, value and
    output projections are ``D x D`` weight matrices with biases; softmax of ``q.k / sqrt(D/heads)``."""

    heads: int = 1

    kind: ClassVar[str] = "attn"
    has_weights: ClassVar[bool] = True

    def out_shape(self, shape: Shape) -> Shape:
        _positive(self, heads=self.heads)
        c, _, _ = _need_map(self, shape)
        if c % self.heads:
            raise SpecError(f"{format_layer(self)}: {self.heads} heads do not divide {c} features")
        return shape

    def in_degree(self, shape: Shape) -> int:
        return shape[0]

    def n_params(self, shape: Shape) -> int:
        return 4 * (shape[0] * shape[0] + shape[0])


@dataclass(frozen=True)
class Residual(Layer):
    """A residual block: ``output = skip(input) + scale * branch(input)``.

    ``skip`` is the identity when the branch keeps the shape; otherwise a projection (see
    :meth:`projection`): a bias-free ``1x1`` convolution with the stride that maps the input map
    onto the branch's output map, or a bias-free dense layer on flat inputs.  ``projbn=true`` puts a
    batch norm (running statistics, weight 1, bias 0 at init) after the projection, as torchvision's
    ``downsample = Sequential(conv1x1(stride), BatchNorm2d)``; it needs a projection::

        >>> from advdim.arch import parse
        >>> block = parse("3x8x8 > res(conv(4,s=2) > relu > conv(4),projbn=true) > flatten > dense(2)").layers[0]
        >>> [layer.kind for layer in block.skip_layers((3, 8, 8))]
        ['conv', 'batchnorm']
    """

    branch: tuple[Layer, ...] = ()
    scale: float = 1.0
    projbn: bool = False

    kind: ClassVar[str] = "res"

    def __post_init__(self) -> None:
        if isinstance(self.branch, list):
            object.__setattr__(self, "branch", tuple(self.branch))
        if isinstance(self.scale, int) and not isinstance(self.scale, bool):
            object.__setattr__(self, "scale", float(self.scale))  # one value, one text form: 2 and 2.0 are "2.0"

    def branch_shapes(self, shape: Shape) -> list[Shape]:
        """Shapes before the branch's first layer and after each of its layers."""
        return self._walk(shape, count_params=False)[0]

    def _walk(self, shape: Shape, count_params: bool) -> tuple[list[Shape], int]:
        """The branch's shapes (as :meth:`branch_shapes`) and, when ``count_params``, the parameters
        of the branch's layers; each layer's shape is worked out once, so nested blocks cost time
        linear in their depth."""
        if not self.branch:
            raise SpecError("res: the branch needs at least one layer")
        check_scale(self.scale)
        out = [shape]
        params = 0
        for i, layer in enumerate(self.branch):
            if not isinstance(layer, Layer):
                raise SpecError(f"res: branch layer {i} is not a layer record: {layer!r}")
            try:
                if count_params:
                    after, n = layer.out_shape_and_params(out[-1])
                    params += n
                else:
                    after = layer.out_shape(out[-1])
                check_units(layer, after)
            except SpecError as err:
                raise SpecError(f"res: branch layer {i} {err}") from None
            out.append(after)
        return out, params

    def projection(self, shape: Shape) -> Layer | None:
        """The skip connection's projection for input ``shape`` (``None``: the identity)."""
        return self._projection(shape, self.branch_shapes(shape)[-1])

    def skip_layers(self, shape: Shape) -> tuple[Layer, ...]:
        """The skip connection's layers for input ``shape``: ``()`` (the identity), the projection, or
        the projection and its batch norm (``projbn``)."""
        proj = self.projection(shape)
        if proj is None:
            return ()
        return (proj, BatchNorm()) if self.projbn else (proj,)

    def _projection(self, shape: Shape, out: Shape) -> Layer | None:
        """The projection from ``shape`` onto the branch's output shape ``out``."""
        if not isinstance(self.projbn, bool):
            raise SpecError(f"res: projbn must be true or false, got {self.projbn!r}")
        if out == shape:
            if self.projbn:
                raise SpecError(f"res: projbn=true puts a batch norm after the projection, but the branch keeps the "
                                f"input shape {shape}: the skip is the identity (drop projbn)")
            return None
        if len(shape) == 1 and len(out) == 1:
            return Dense(out[0], bias=False)
        if len(shape) == 3 and len(out) == 3 and shape[1] % out[1] == 0 and shape[2] % out[2] == 0 \
                and shape[1] // out[1] == shape[2] // out[2]:
            # a 1x1 kernel pads nothing in any mode; VALID would refuse an even map with stride 2 (8 - 1 is odd)
            return Conv(out[0], kernel=1, stride=shape[1] // out[1], padding=Padding.ZEROS, bias=False)
        raise SpecError(f"res: no projection maps the input {shape} onto the branch output {out}")

    def out_shape(self, shape: Shape) -> Shape:
        out = self.branch_shapes(shape)[-1]
        self._projection(shape, out)
        return out

    def in_degree(self, shape: Shape) -> int:
        return 1 + self.branch[0].in_degree(shape)

    def n_params(self, shape: Shape) -> int:
        return self.out_shape_and_params(shape)[1]

    def out_shape_and_params(self, shape: Shape) -> tuple[Shape, int]:
        shapes, params = self._walk(shape, count_params=True)
        proj = self._projection(shape, shapes[-1])
        skip = 0 if proj is None else proj.n_params(shape) + (2 * shapes[-1][0] if self.projbn else 0)
        return shapes[-1], params + skip

    def args(self) -> dict[str, Any]:
        return {"branch": self.branch, **({} if self.scale == 1.0 else {"scale": self.scale}),
                **({"projbn": True} if self.projbn else {})}


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls
    for cls in (Conv, Dense, AvgPool, MaxPool, GlobalAvgPool, GlobalMaxPool, Flatten, ReLU, Scale, BatchNorm,
                LayerNorm, GELU, Attention, Residual)
}

AnyLayer = (Conv | Dense | AvgPool | MaxPool | GlobalAvgPool | GlobalMaxPool | Flatten | ReLU | Scale | BatchNorm
            | LayerNorm | GELU | Attention | Residual)


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
        if math.prod(self.input_shape) > MAX_UNITS:
            raise SpecError(f"input shape {self.input_shape} holds {math.prod(self.input_shape):.3g} numbers, more "
                            f"than the maximum of {MAX_UNITS:.0e}")
        if not self.layers:
            raise SpecError("a spec needs at least one layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise SpecError(f"layer {i}: not a layer record: {layer!r}")
        check_size(self.layers)
        shapes, params = self._walk(count_params=True)
        if params > MAX_PARAMS:
            raise SpecError(f"the spec has {params:.3g} parameters, more than the maximum of {MAX_PARAMS:.0e}")
        if len(shapes[-1]) != 1:
            raise SpecError(
                f"the last layer {format_layer(self.layers[-1])} must output a flat vector of logits, "
                f"got shape {shapes[-1]}"
            )

    # ---- shape bookkeeping -----------------------------------------------------------------
    def shapes(self) -> list[Shape]:
        """Shapes before the first layer and after each layer (``len(layers) + 1`` entries)."""
        return self._walk(count_params=False)[0]

    def _walk(self, count_params: bool) -> tuple[list[Shape], int]:
        """The shapes (as :meth:`shapes`) and, when ``count_params``, the parameter count, each
        layer's shape worked out once."""
        shape: Shape = self.input_shape
        out = [shape]
        params = 0
        for i, layer in enumerate(self.layers):
            try:
                if count_params:
                    shape, n = layer.out_shape_and_params(shape)
                    params += n
                else:
                    shape = layer.out_shape(shape)
                check_units(layer, shape)
            except SpecError as err:
                raise SpecError(f"layer {i} {err}") from None
            out.append(shape)
        return out, params

    @property
    def d(self) -> int:
        """Input dimension ``C * H * W``."""
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int:
        return self.shapes()[-1][0]

    def n_params(self) -> int:
        return self._walk(count_params=True)[1]

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
        return {"input_shape": list(self.input_shape), "layers": [layer_json(layer) for layer in self.layers]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Spec:
        if isinstance(data, str):
            try:
                data = json.loads(data, object_pairs_hook=_no_repeated_keys)
            except SpecError:
                raise
            except ValueError as err:  # a JSONDecodeError, or an integer of over 4300 digits
                raise SpecError(f"spec JSON does not parse: {str(err).splitlines()[0]}") from None
            except RecursionError:
                raise too_deep() from None
        if not isinstance(data, dict) or "input_shape" not in data or "layers" not in data:
            raise SpecError("spec JSON needs the keys 'input_shape' and 'layers'")
        if not isinstance(data["layers"], list):
            raise SpecError("spec JSON: 'layers' must be a list of layer objects")
        if not isinstance(data["input_shape"], (list, tuple)) or len(data["input_shape"]) != 3:
            raise SpecError(f"input shape must be (C, H, W), got {_shown(data['input_shape'])}")
        _check_json_size(data["layers"])
        layers = [layer_from_json(item, f"layer {i}") for i, item in enumerate(data["layers"])]
        shape = tuple(json_int("input shape", "a side", n) for n in data["input_shape"])
        return cls(shape, tuple(layers))

    def with_input(self, input_shape: Shape) -> Spec:
        return replace(self, input_shape=tuple(input_shape))


def layer_json(layer: Layer) -> dict[str, Any]:
    """JSON form of one layer: ``{"kind": ..., **non-default arguments}``; a residual's branch is a
    nested list of layer objects."""
    args = layer.args()
    if "branch" in args:
        args["branch"] = [layer_json(x) for x in args["branch"]]
    return {"kind": layer.kind, **args}


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its pairs; a key given twice is refused (``json`` would keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"spec JSON: key {key!r} given twice in one object")
        out[key] = value
    return out


def _check_json_size(layers: list[Any]) -> None:
    """:func:`check_size` on the JSON form, before any layer record is made."""
    _check_census(layers, lambda item: item.get("branch") if isinstance(item, dict) else None)


def layer_from_json(item: Any, where: str) -> Layer:
    """Inverse of :func:`layer_json`; ``where`` names the layer in messages (``"layer 2"``)."""
    if not isinstance(item, dict) or "kind" not in item:
        raise SpecError(f"{where}: JSON layer needs a 'kind'")
    kwargs = dict(item)
    return make_layer(where, kwargs.pop("kind"), [], kwargs)


#: the arguments that are booleans (``true`` / ``false``) and real numbers; every other argument but a
#: padding mode, a batch norm mode and a branch is an integer
_BOOLS = ("bias", "projbn")
_FLOATS = ("scale", "factor")

#: reads a residual branch's text: ``(where, text) -> layers`` (the parser's, :mod:`advdim.arch.grammar`)
BranchReader = Callable[[str, str], tuple]


def parse_value(where: str, name: str, raw: str, branch: BranchReader | None = None) -> Any:
    """One argument from its text (``where``: ``"layer 2 conv"``, names the layer in messages);
    ``branch`` reads a residual branch's text (the parser's; without it a text branch is refused)."""
    raw = raw.strip()
    if name == "padding":
        try:
            return Padding.parse(raw)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
    if name == "mode":
        try:
            return BNMode.parse(raw)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
    if name in _BOOLS:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise SpecError(f"{where}: {name} must be true or false, got {_shown(raw)}")
    if name == "branch":
        if branch is None:
            raise SpecError(f"{where}: a residual branch in JSON is a list of layer objects, got text {_shown(raw)}")
        return branch(where, raw)
    if name in _FLOATS:
        return read_float(where, name, raw)
    return read_int(where, name, raw)


def _json_value(where: str, name: str, raw: Any, branch: BranchReader | None) -> Any:
    """One argument from its JSON value (strings are read as text)."""
    if isinstance(raw, str):
        check_ascii(where, raw)
        return parse_value(where, name, raw, branch)
    if name in _BOOLS and isinstance(raw, bool):
        return raw
    if name == "branch" and isinstance(raw, list):
        return tuple(layer_from_json(item, f"{where}: branch layer {j}") for j, item in enumerate(raw))
    if name in _FLOATS and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if isinstance(raw, int):
            raw = float(json_int(where, name, raw))
        if not math.isfinite(raw):
            raise SpecError(f"{where}: {name} must be a finite number, got {raw!r}")
        return raw
    if name not in (*_BOOLS, *_FLOATS, "padding", "mode", "branch") and isinstance(raw, int) \
            and not isinstance(raw, bool):
        return json_int(where, name, raw)
    raise SpecError(f"{where}: bad value {_shown(raw)} for {name}")


def make_layer(where: int | str, kind: str, positional: list[str], named: dict[str, Any],
               branch: BranchReader | None = None) -> Layer:
    """The record of ``kind`` from its arguments (text, or JSON values); ``where`` names it in
    messages: ``"layer 2"`` (an int ``i`` stands for ``"layer i"``); ``branch``: see :func:`parse_value`."""
    where = f"layer {where}" if isinstance(where, int) else where
    if not isinstance(kind, str):
        raise SpecError(f"{where}: the layer kind must be a word, got {_shown(kind)}")
    check_ascii(where, kind)
    kind = kind.lower()
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise SpecError(f"{where}: unknown layer {_shown(kind)} (known: {', '.join(LAYER_TYPES)})")
    at = f"{where} {kind}"
    names = [f.name for f in fields(cls)]
    pos_names = _POSITIONAL.get(kind, ())
    if len(positional) > len(pos_names):
        raise SpecError(f"{at}: too many positional arguments {_shown(positional)}")
    kwargs: dict[str, Any] = {}
    for name, raw in zip(pos_names, positional):
        kwargs[name] = parse_value(at, name, raw, branch)
    for key, raw in named.items():
        if not isinstance(key, str):
            raise SpecError(f"{at}: unknown argument {_shown(key)}")
        name = _LONG.get(key, key)
        if name not in names and key in names:  # maxpool's pad is its own integer, not a conv's padding mode
            name = key
        if name not in names:
            raise SpecError(f"{at}: unknown argument {_shown(key)}")
        if name in kwargs:
            raise SpecError(f"{at}: argument {name!r} given twice")
        kwargs[name] = _json_value(at, name, raw, branch)
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in kwargs]
        raise SpecError(f"{at}: missing argument(s) {missing}") from None
