"""One node of a traced graph read as a spec layer, or the obstacle that it is (for :mod:`advdim.trace`).

Every reading here looks at one node alone, with the shape of its input; how the nodes connect
(chains and residual blocks) is read by :mod:`advdim.trace`.  An obstacle says what is wrong and
what would make the node traceable, in the words of the PyTorch idiom it meets (a depthwise conv,
a squeeze-excite product, a class token).
"""

from __future__ import annotations

import enum
import math
import operator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from advdim.arch import (
    GELU,
    Attention,
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    LayerNorm,
    MaxPool,
    Padding,
    ReLU,
    Scale,
)
from advdim.build import LN_EPS, BatchStatNorm, ScaleBy, SelfAttention, TokenLayerNorm
from advdim.errors import SpecError
from advdim.theory._graph import BN_EPS  # batchnorm in eval mode at initialisation: y = x / sqrt(1 + eps)

Shape = tuple[int, ...]


class ObstacleKind(enum.Enum):
    """What kind of obstacle keeps a module from being read as a spec."""

    FX = "fx"  # torch.fx cannot trace inside the module: it was read as one opaque leaf
    MODULE = "module"  # a module that is no layer of advdim's specs (SiLU, MultiheadAttention, ...)
    SETTING = "setting"  # a layer of the specs with a setting they lack (groups, padding, eps, ...)
    OPERATION = "operation"  # a function or method that is no layer (transpose into tokens, token select, ...)
    PARAMETER = "parameter"  # forward uses a parameter directly (class token, positional embedding, layer scale)
    TOPOLOGY = "topology"  # paths that meet other than at a residual block's addition (product, concatenation)
    STATE = "state"  # a norm layer whose statistics or affine map are not those of initialisation
    SHARED = "shared"  # a module applied twice (shared weights)
    INTERFACE = "interface"  # forward's inputs or output are not one tensor each
    MISMATCH = "mismatch"  # the spec read does not reproduce the module's logits


@dataclass(frozen=True)
class Obstacle:
    """One reason why a module is no spec: where (``path``, the module's qualified name, ``""`` for
    the root, and its class), what is wrong and what would make it traceable."""

    path: str
    cls: str
    kind: ObstacleKind
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})" if self.fix else self.what

    def to_json(self) -> dict[str, str]:
        """The record's fields as strings (the kind by its value), for tables and stored results."""
        return {"path": self.path, "cls": self.cls, "kind": self.kind.value, "what": self.what, "fix": self.fix}


class NotLayer(Exception):  # noqa: N818 - internal: becomes an Obstacle
    """A node (``node``, or the one being read) that is an obstacle; ``secondary``: one that follows
    from obstacles noted already (a skip connection through an opaque node), read past but not noted."""

    def __init__(self, kind: ObstacleKind, what: str, fix: str = "", node: torch.fx.Node | None = None,
                 secondary: bool = False) -> None:
        super().__init__(what)
        self.kind, self.what, self.fix, self.node, self.secondary = kind, what, fix, node, secondary


@dataclass(frozen=True)
class Opaque(Layer):
    """Internal: a node read past after an obstacle, of the output shape the module gave it."""

    shape: Shape = ()

    kind: ClassVar[str] = "opaque"

    def out_shape(self, shape: Shape) -> Shape:
        return self.shape


@dataclass(frozen=True)
class Factor(Layer):
    """Internal: ``h * a`` (or ``h / b``) for a constant: the scale of a residual branch when last in
    it, else the layer ``scale(a)``."""

    value: float = 1.0

    kind: ClassVar[str] = "factor"

    def out_shape(self, shape: Shape) -> Shape:
        return shape


def where(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[str, str]:
    """The module path and class of a node: its module, or the innermost module whose forward made it."""
    if node.op == "call_module":
        return str(node.target), type(gm.get_submodule(str(node.target))).__name__
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        return str(path), getattr(cls, "__name__", str(cls))
    return "", type(gm).__name__  # the graph module is named after the root's class


def describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(gm.get_submodule(str(node.target))).__name__})"
    path, _ = where(node, gm)
    inside = f" in {path!r}" if path else ""
    if node.op == "call_method":
        return f"the method .{node.target}(){inside}"
    return f"the function {getattr(node.target, '__name__', node.target)}(){inside}"


def _pair(v: Any, what: str, at: str) -> int:
    """A square hyper-parameter (an int or an equal pair)."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise NotLayer(ObstacleKind.SETTING, f"{at} has a non-square {what} {tuple(v)}",
                           f"advdim's layers have square {what}s")
        v = v[0]
    return int(v)


def conv(m: nn.Conv2d, at: str) -> Conv:
    if m.groups != 1:
        kind = "depthwise" if m.groups == m.in_channels else "grouped"
        raise NotLayer(ObstacleKind.SETTING, f"{at} is a {kind} convolution (groups={m.groups})",
                       "advdim's conv has groups=1")
    k = _pair(m.kernel_size, "kernel", at)
    stride = _pair(m.stride, "stride", at)
    dil = _pair(m.dilation, "dilation", at)
    modes = {"zeros": Padding.ZEROS, "circular": Padding.CIRCULAR, "reflect": Padding.REFLECT}
    if m.padding_mode not in modes:
        raise NotLayer(ObstacleKind.SETTING, f"{at} pads in mode {m.padding_mode!r}",
                       "advdim's conv pads in mode zeros, circular or reflect")
    same = dil * (k - 1) // 2
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pad = 0
        elif dil * (k - 1) % 2:
            raise NotLayer(ObstacleKind.SETTING, f"{at}: padding='same' with an even kernel pads asymmetrically",
                           "use an odd kernel")
        else:
            pad = same
    else:
        pad = _pair(m.padding, "padding", at)
    if pad == 0 and same > 0:
        padding = Padding.VALID
    elif pad == same:
        padding = modes[m.padding_mode] if pad > 0 else Padding.ZEROS
    else:
        raise NotLayer(ObstacleKind.SETTING, f"{at} pads by {pad}, neither 0 nor dilation*(kernel-1)//2 = {same}",
                       "advdim's conv pads by 0 or dilation*(kernel-1)//2")
    return Conv(m.out_channels, k, stride, dil, padding, m.bias is not None)


def pool(m: nn.MaxPool2d | nn.AvgPool2d, at: str, shape: Shape) -> Layer:
    """A max pool of any stride and padding (``maxpool(k,s=S,pad=P)``, floor mode); an average pool
    of kernel = stride without padding.  ``ceil_mode=True`` is floor mode on a map ``shape`` whose
    windows leave no input behind (timm's ``AvgPool2d(2, 2, ceil_mode=True)`` on an even map)."""
    k = _pair(m.kernel_size, "kernel", at)
    stride = k if m.stride is None else _pair(m.stride, "stride", at)
    pad = _pair(m.padding, "padding", at)
    if m.ceil_mode and (len(shape) != 3 or any((n + 2 * pad - k) % stride for n in shape[1:])):
        raise NotLayer(ObstacleKind.SETTING, f"{at} rounds its output side up (ceil_mode=True) on the map {shape}: "
                       "a partial last window", "use ceil_mode=False (floor mode), or a map its windows tile")
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation, "dilation", at) != 1 or m.return_indices:
            raise NotLayer(ObstacleKind.SETTING, f"{at} is a dilated max pool or returns indices",
                           "use an undilated max pool returning values")
        return MaxPool(k, stride=stride, pad=pad)
    if stride != k or pad != 0:
        raise NotLayer(ObstacleKind.SETTING, f"{at} is not a non-overlapping average pool (kernel {k}, stride "
                       f"{stride}, padding {pad})", "use kernel = stride average pooling without padding")
    if m.divisor_override is not None:
        raise NotLayer(ObstacleKind.SETTING, f"{at} overrides the divisor of its average", "average plainly")
    return AvgPool(k)


def _functional_pool(node: torch.fx.Node, at: str, shape: Shape) -> Layer:
    """``F.max_pool2d(x, k)`` / ``F.avg_pool2d(x, k)``: read as the module of the same arguments."""
    names = ["kernel_size", "stride", "padding"]
    names += ["dilation", "ceil_mode", "return_indices"] if node.target is F.max_pool2d \
        else ["ceil_mode", "count_include_pad", "divisor_override"]
    kwargs: dict[str, Any] = {**dict(zip(names, node.args[1:])), **node.kwargs}
    try:
        return pool(nn.MaxPool2d(**kwargs) if node.target is F.max_pool2d else nn.AvgPool2d(**kwargs), at, shape)
    except (TypeError, ValueError) as e:
        raise NotLayer(ObstacleKind.SETTING, f"{at}: {e}", "use kernel = stride pooling") from None


def batchnorm(m: nn.modules.batchnorm._BatchNorm, at: str) -> tuple[Layer, ...]:
    """The mode is what the module does in eval mode, where every gradient is measured: batch
    statistics for :class:`~advdim.build.BatchStatNorm` and ``track_running_stats=False``, else the
    running statistics (which must be those of initialisation, mean 0 and variance 1).  The module is
    then ``gamma * x / sqrt(1 + eps)`` (bias 0, one weight ``gamma`` for every channel):
    ``batchnorm``, then ``scale(sqrt((1 + BN_EPS) / (1 + eps)))`` for another ``eps`` than the
    theory's (MobileNet's 1e-3), then the factor ``gamma`` when it is not 1 -- last in a residual
    branch, its scale (timm's zero-initialised last batch norm: ``res(..., scale=0)``)."""
    mean, var = m.running_mean, m.running_var
    batch = isinstance(m, BatchStatNorm) or not m.track_running_stats or mean is None or var is None
    if batch and abs(m.eps - BN_EPS) > 1e-12:
        raise NotLayer(ObstacleKind.SETTING, f"{at} has eps {m.eps:g}; the theory's batchnorm has eps {BN_EPS:g}",
                       f"use eps={BN_EPS:g}")
    weight = m.weight.detach() if m.affine and m.weight is not None else torch.ones(1)
    gamma = float(weight.flatten()[0])
    off = [f"{name} {_values(t)}" for name, t, ok in (
        ("running mean", None if batch else mean, lambda t: bool((t == 0).all())),
        ("running variance", None if batch else var, lambda t: bool((t == 1).all())),
        ("weight", weight, lambda t: bool((t == gamma).all())),
        ("bias", m.bias if m.affine else None, lambda t: bool((t == 0).all()))) if t is not None and not ok(t)]
    if off:
        raise NotLayer(ObstacleKind.STATE, f"{at} holds running statistics or an affine map other than at "
                       f"initialisation (mean 0, variance 1, one weight for all channels, bias 0): {', '.join(off)}",
                       "the theory covers batchnorm at initialisation only")
    layers: tuple[Layer, ...] = (BatchNorm(BNMode.BATCH if batch else BNMode.RUNNING),)
    if not batch and abs(m.eps - BN_EPS) > 1e-12:
        layers += (Scale(math.sqrt((1 + BN_EPS) / (1 + m.eps))),)
    return layers + ((Factor(gamma),) if gamma != 1.0 else ())


def _values(t: torch.Tensor) -> str:
    """The values of a tensor, in short: ``0`` when all are 0, else their range."""
    lo, hi = float(t.detach().min()), float(t.detach().max())
    return f"{lo:g}" if lo == hi else f"{lo:.3g}..{hi:.3g}"


def _channel_norm(m: nn.LayerNorm) -> bool:
    """A layer norm over the channels at each position of a map: advdim's own, or a ``LayerNorm2d``
    (torchvision's and timm's name for it; the numeric check confirms the reading)."""
    return isinstance(m, TokenLayerNorm) or type(m).__name__ == "LayerNorm2d"


def layernorm(m: nn.LayerNorm, at: str, shape: Shape) -> LayerNorm:
    """A channel norm on a map (:func:`_channel_norm`), or ``nn.LayerNorm(D)`` on a flat ``(B, D)``."""
    fix = "advdim's layernorm normalises flat (D,) features or the channels at each position of a (D, H, W) map " \
          "(advdim.build.TokenLayerNorm)"
    if len(shape) == 2:
        raise NotLayer(ObstacleKind.SETTING, f"{at} normalises tokens (B, N, D) = (B, {shape[0]}, {shape[1]})", fix)
    if len(shape) == 3 and not _channel_norm(m):
        last = f" {shape} (the channels of a channels-last (B, H, W, C) map)" \
            if tuple(m.normalized_shape) == shape[-1:] else ""
        raise NotLayer(ObstacleKind.SETTING, f"{at} normalises the last axis of the (C, H, W) map{last}, not the "
                       "channels at each position", fix + _LAST_FIX)
    if tuple(m.normalized_shape) != (shape[0],):
        raise NotLayer(ObstacleKind.SETTING, f"{at} normalises a shape {tuple(m.normalized_shape)}, not the "
                       f"{shape[0]} features", fix)
    if abs(m.eps - LN_EPS) > 1e-12:
        raise NotLayer(ObstacleKind.SETTING, f"{at} has eps {m.eps:g}; advdim's layernorm has eps {LN_EPS:g}",
                       f"use eps={LN_EPS:g}")
    if (m.weight is not None and not bool((m.weight == 1).all())) or (m.bias is not None and not bool(
            (m.bias == 0).all())):
        raise NotLayer(ObstacleKind.STATE, f"{at} has an affine map other than at initialisation (weight 1, bias 0)",
                       "the theory covers layernorm at initialisation only")
    return LayerNorm()


#: activations that are no layer of the specs, as modules and as functions / methods
_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Mish, nn.Softplus, nn.PReLU, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.GLU, nn.Softmax, nn.LogSoftmax)
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.silu: "SiLU", F.hardswish: "Hardswish", F.hardsigmoid: "Hardsigmoid", torch.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid", torch.tanh: "Tanh", F.tanh: "Tanh", F.relu6: "ReLU6", F.leaky_relu: "LeakyReLU",
    F.elu: "ELU", F.mish: "Mish", F.softplus: "Softplus", F.softmax: "Softmax", torch.softmax: "Softmax"}
_ACTIVATION_METHODS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax", "sigmoid_": "Sigmoid"}
_ACTIVATION_FIX = "advdim's activations are relu and gelu (exact); use nn.ReLU or nn.GELU()"

_RELU_FUNCTIONS = (torch.relu, F.relu, torch.relu_)
_DROPOUT = (nn.modules.dropout._DropoutNd,)
#: modules that are identities in eval mode (where gradients are measured), by class name: the
#: stochastic depth of torchvision and timm (no import of either library; the numeric check confirms)
_EVAL_IDENTITIES = frozenset({"StochasticDepth", "DropPath", "DropBlock2d"})
_LAYOUT_METHODS = frozenset({"transpose", "permute", "flatten", "view", "reshape", "unflatten", "squeeze",
                             "unsqueeze", "expand", "movedim", "swapaxes", "unbind", "chunk", "split", "roll"})
_TOKEN_FIX = "advdim's token layers (advdim.build.SelfAttention, TokenLayerNorm; a 1x1 conv for a Linear) work " \
             "on the positions of the (D, H, W) map: keep the map"


#: what makes a channels-last layer traceable
_LAST_FIX = "; between permute(0, 2, 3, 1) and permute(0, 3, 1, 2) with only LayerNorm, Linear and element-wise " \
            "layers between them, advdim reads them on the channels of the map"


def is_eval_identity(m: nn.Module) -> bool:
    return isinstance(m, (nn.Identity, *_DROPOUT)) or type(m).__name__ in _EVAL_IDENTITIES


def read_whole(m: nn.Module) -> bool:
    """Modules read as one node (a leaf of the trace) though torch.fx would trace into them: the
    subclasses of torch's norms and attention (``LayerNorm2d``), stochastic depth and attention
    modules of other libraries (one obstacle each, not one per operation inside)."""
    name = type(m).__name__
    return isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.MultiheadAttention, SelfAttention,
                          ScaleBy, *_DROPOUT)) or name in _EVAL_IDENTITIES or name.endswith("Attention")


def _module_layer(m: nn.Module, at: str, shape: Shape) -> Layer | tuple[Layer, ...] | None:
    flat = shape[0] if len(shape) == 1 else None
    if isinstance(m, nn.Conv2d):
        layer = conv(m, at)
        if layer.pad == 0 and layer.padding is Padding.ZEROS:  # no padding: ZEROS and VALID are the same
            try:  # module, but a stride must divide n (ZEROS) or n - span (VALID): take the one that fits
                layer.out_shape(shape)
            except SpecError:
                return replace(layer, padding=Padding.VALID)
        return layer
    if isinstance(m, nn.Linear):
        if len(shape) == 2:
            raise NotLayer(ObstacleKind.SETTING, f"{at} maps tokens (B, N, D) = (B, {shape[0]}, {shape[1]})",
                           f"advdim's dense takes flat (B, D) inputs; {_TOKEN_FIX}")
        if len(shape) == 3 and shape[-1] == m.in_features:
            raise NotLayer(ObstacleKind.SETTING, f"{at} maps the last axis of a channels-last map (B, H, W, C) = "
                           f"(B, {', '.join(map(str, shape))})", "advdim's dense takes flat (B, D) inputs" + _LAST_FIX)
        if flat != m.in_features:
            raise NotLayer(ObstacleKind.SETTING, f"{at} takes {m.in_features} features but receives shape {shape}",
                           "advdim's dense takes flat (B, D) inputs")
        return Dense(m.out_features, m.bias is not None)
    if isinstance(m, nn.ReLU):
        return ReLU()
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return pool(m, at, shape)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return adaptive_pool(m.output_size, isinstance(m, nn.AdaptiveAvgPool2d), at, shape)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise NotLayer(ObstacleKind.OPERATION, f"{at} flattens dims {m.start_dim}..{m.end_dim}, not 1..-1",
                           _TOKEN_FIX if m.start_dim == 2 else "flatten from dim 1")
        return flatten(shape)
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, BatchStatNorm)):
        return batchnorm(m, at)
    if isinstance(m, nn.LayerNorm):
        return layernorm(m, at, shape)
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise NotLayer(ObstacleKind.SETTING, f"{at} is the {m.approximate!r} approximation, not the exact GELU",
                           "use nn.GELU() (approximate='none')")
        return GELU()
    if isinstance(m, SelfAttention):
        return Attention(m.heads)
    if isinstance(m, ScaleBy):
        return Scale(m.factor)
    if is_eval_identity(m):
        return None
    if isinstance(m, _ACTIVATIONS):
        raise NotLayer(ObstacleKind.MODULE, f"{at} is not a layer of advdim's specs", _ACTIVATION_FIX)
    if isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention"):
        raise NotLayer(ObstacleKind.MODULE, f"{at} is not traced: advdim's attention is advdim.build.SelfAttention "
                       "over the positions of a (B, D, H, W) map",
                       f"replace {type(m).__name__} by advdim.build.SelfAttention")
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer)):
        raise NotLayer(ObstacleKind.MODULE, f"{at} is a whole transformer block, not a layer of advdim's specs",
                       "write it as residual blocks of advdim.build.TokenLayerNorm, SelfAttention and 1x1 convs")
    if isinstance(m, nn.Upsample) or isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d)):
        raise NotLayer(ObstacleKind.MODULE, f"{at} is not a layer of advdim's specs",
                       "pad inside the conv (padding=dilation*(kernel-1)//2)")
    raise NotLayer(ObstacleKind.MODULE, f"{at} is not a layer of advdim's specs",
                   "advdim reads conv, dense, relu, gelu, pools, flatten, batchnorm, layernorm, attention, dropout")


def adaptive_pool(size: Any, average: bool, at: str, shape: Shape) -> Layer | None:
    """``AdaptiveAvgPool2d(o)`` / ``AdaptiveMaxPool2d(o)`` on an ``n x n`` map: a global pool for
    ``o = 1``, an identity for ``o = n``, the pool of kernel = stride ``n / o`` when ``o`` divides ``n``
    (VGG's ``(7, 7)`` on a 14 x 14 map); on a smaller map it repeats values (an upsampling)."""
    o = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if o == (1, 1):
        return GlobalAvgPool() if average else GlobalMaxPool()
    if None in o or len(shape) != 3 or o[0] != o[1] or shape[1] != shape[2]:
        raise NotLayer(ObstacleKind.SETTING, f"{at} pools to {size} on a map of shape {shape}",
                       "pool to (1, 1) (a global pool), or with kernel = stride on a square map")
    n, k = shape[1], o[0]
    if n == k:
        return None
    if n % k == 0:
        return AvgPool(n // k) if average else MaxPool(n // k)
    what = f"repeats the values of the {n}x{n} map to {k}x{k} (an upsampling)" if n < k \
        else f"pools the {n}x{n} map to {k}x{k} with windows of unequal size"
    raise NotLayer(ObstacleKind.SETTING, f"{at} {what}",
                   f"give an input whose map here is a multiple of {k}x{k} (VGG: 224 x 224), or pool to (1, 1)")


def _global_dims(node: torch.fx.Node) -> bool:
    """``mean`` / ``amax`` over the two map axes ``(2, 3)`` (or ``(-2, -1)``), without keepdim."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return isinstance(dims, (tuple, list)) and {d % 4 for d in dims if isinstance(d, int)} == {2, 3} \
        and len(dims) == 2 and not keep


def _flatten_args(node: torch.fx.Node, start_index: int) -> tuple[Any, Any]:
    """``(start, end)`` of ``flatten(x, start, end)`` / ``x.flatten(start, end)``."""
    start = node.kwargs.get("start_dim", node.args[start_index] if len(node.args) > start_index else 0)
    end = node.kwargs.get("end_dim", node.args[start_index + 1] if len(node.args) > start_index + 1 else -1)
    return start, end


def flatten(shape: Shape) -> Layer | None:
    """A flatten of a map; of an already flat vector (after a global pool) it is an identity."""
    return Flatten() if len(shape) > 1 else None


def _flat_view(node: torch.fx.Node, sizes: set[torch.fx.Node], flat: int) -> bool:
    """``x.view(B, -1)`` with ``B`` from ``x.size(0)`` / ``x.shape[0]``, or ``x.view(-1, C*H*W)``."""
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if len(args) != 2:
        return False
    first, second = args
    return bool((first in sizes and second == -1) or (first == -1 and second == flat))


def _into_tokens(node: torch.fx.Node) -> bool:
    """``x.flatten(2)`` / ``torch.flatten(x, 2)`` or a view / reshape of a map (the tokens' first step)."""
    method = node.op == "call_method"
    if (method and node.target == "flatten") or (node.op == "call_function" and node.target is torch.flatten):
        return _flatten_args(node, 1)[0] == 2
    return (method and node.target in ("view", "reshape")) or (node.op == "call_function"
                                                                and node.target is torch.reshape)


def _layout(node: torch.fx.Node, at: str, shape: Shape, out: Shape | None) -> NotLayer:
    """The obstacle of an operation that moves axes or selects entries (the idioms of tokens)."""
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    args = node.args[1:]
    if target == "getitem":
        index = args[0] if args else None
        if len(shape) == 2 and isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None):
            return NotLayer(ObstacleKind.OPERATION, f"{at} selects token {index[1]} of (B, N, D) tokens (x[:, "
                            f"{index[1]}], a class-token head)", "pool the map instead (globalavgpool)")
        return NotLayer(ObstacleKind.OPERATION, f"{at} selects entries {index!r}", "advdim's specs have no indexing")
    if target == "flatten":
        start, end = _flatten_args(node, 1)
        if start == 2 and len(shape) == 3:
            return NotLayer(ObstacleKind.OPERATION, f"{at} flattens the map into tokens (x.flatten(2))", _TOKEN_FIX)
        return NotLayer(ObstacleKind.OPERATION, f"{at} flattens dims {start}..{end}, not 1..-1", "flatten from dim 1")
    if target in ("transpose", "permute", "movedim", "swapaxes"):
        what = "tokens (B, N, D)" if len(shape) == 2 or (target == "transpose" and args[:2] == (1, 2)) \
            else "the axes back from channels last" if is_permute(node, (0, 3, 1, 2)) else "the axes (channels last)"
        source = node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
        # (B, D, N) -> (B, N, D) right after flattening the map: one idiom, named at the flatten
        return NotLayer(ObstacleKind.OPERATION, f"{at} reorders {what}", _TOKEN_FIX,
                        secondary=len(shape) == 2 and source is not None and _into_tokens(source))
    if target in ("view", "reshape") and len(shape) == 3 and out == (shape[0], shape[1] * shape[2]):
        return NotLayer(ObstacleKind.OPERATION, f"{at} flattens the map into tokens (B, D, H*W)", _TOKEN_FIX)
    if target == "mean" and len(shape) == 3 and (node.kwargs.get("keepdim") or (len(args) > 1 and args[1] is True)):
        return NotLayer(ObstacleKind.OPERATION, f"{at} averages over the map keeping a 1x1 map (keepdim=True, "
                        "squeeze-excite's pool)", "advdim's global pools give flat (B, C): x.mean((2, 3))")
    if target == "mean" and len(shape) == 2:
        return NotLayer(ObstacleKind.OPERATION, f"{at} averages tokens (B, N, D) (token mean)",
                        "keep the (D, H, W) map and pool it (globalavgpool)")
    return NotLayer(ObstacleKind.OPERATION, f"{at} is not a layer of advdim's specs",
                    "advdim's specs have no reshaping other than flatten(x, 1)")


def layer_of(node: torch.fx.Node, gm: torch.fx.GraphModule, shape: Shape, sizes: set[torch.fx.Node],
             out: Shape | None = None) -> Layer | tuple[Layer, ...] | None:
    """The spec layer (or layers) of one node of one tensor input of ``shape`` (without the batch;
    ``out``, the output's when known, names the idiom of an obstacle), None for an identity, or
    :class:`NotLayer`."""
    at = describe(node, gm)
    flat = int(np.prod(shape))
    if node.op == "call_module":
        return _module_layer(gm.get_submodule(str(node.target)), at, shape)
    target = node.target
    if node.op == "call_function":
        if target in _RELU_FUNCTIONS:
            return ReLU()
        if target is F.gelu:
            if len(node.args) == 1 and node.kwargs.get("approximate", "none") == "none":
                return GELU()
            raise NotLayer(ObstacleKind.SETTING, f"{at} is the {node.kwargs.get('approximate')!r} approximation, "
                           "not the exact GELU", "use F.gelu(x) (approximate='none')")
        if target is torch.flatten and _flatten_args(node, 1) == (1, -1):
            return flatten(shape)
        if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            return adaptive_pool(size, target is F.adaptive_avg_pool2d, at, shape)
        if target in (torch.mean, torch.amax) and _global_dims(node):
            return GlobalAvgPool() if target is torch.mean else GlobalMaxPool()
        if target in (F.max_pool2d, F.avg_pool2d):
            return _functional_pool(node, at, shape)
        if target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d) and node.kwargs.get(
                "training", node.args[2] if len(node.args) > 2 else True) is False:
            return None
        at_training = {"stochastic_depth": 3, "drop_path": 2}.get(getattr(target, "__name__", ""))
        if at_training is not None:  # stochastic_depth(x, p, mode, training), drop_path(x, p, training)
            training = node.kwargs.get("training", node.args[at_training] if len(node.args) > at_training else None)
            if training is False:
                return None
        if target is torch.cat and isinstance(node.args[0], (list, tuple)) and len(node.args[0]) == 1:
            return None  # DenseNet's first layer concatenates its one input: an identity
        if target in _ACTIVATION_FUNCTIONS:
            raise NotLayer(ObstacleKind.MODULE, f"{at} ({_ACTIVATION_FUNCTIONS[target]}) is not a layer of advdim's "
                           "specs", _ACTIVATION_FIX)
        if target in (operator.getitem, torch.transpose, torch.permute, torch.flatten, torch.reshape):
            raise _layout(node, at, shape, out)
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return ReLU()
        if target == "flatten" and _flatten_args(node, 1) == (1, -1):
            return flatten(shape)
        if target in ("mean", "amax") and _global_dims(node):
            return GlobalAvgPool() if target == "mean" else GlobalMaxPool()
        if target in ("view", "reshape") and _flat_view(node, sizes, flat):
            return flatten(shape)
        if target == "contiguous":
            return None
        if target in _ACTIVATION_METHODS:
            raise NotLayer(ObstacleKind.MODULE, f"{at} ({_ACTIVATION_METHODS[str(target)]}) is not a layer of "
                           "advdim's specs", _ACTIVATION_FIX)
        if target in _LAYOUT_METHODS or target == "mean":
            raise _layout(node, at, shape, out)
    raise NotLayer(ObstacleKind.OPERATION, f"{at} is not a layer of advdim's specs",
                   "advdim reads conv, dense, relu, gelu, pools, flatten, batchnorm, layernorm, attention, dropout")


def is_permute(node: torch.fx.Node, dims: tuple[int, ...]) -> bool:
    """``x.permute(*dims)``, ``x.permute(dims)``, ``torch.permute(x, dims)`` (torchvision's ``Permute``)."""
    if node.op == "call_method" and node.target == "permute":
        args = node.args[1:]
    elif node.op == "call_function" and node.target is torch.permute:
        args = node.args[1:]
    else:
        return False
    got: Any = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    if not got and "dims" in node.kwargs:
        got = node.kwargs["dims"]
    return isinstance(got, (tuple, list)) and tuple(d % 4 if isinstance(d, int) else d for d in got) == dims


#: the layers a channels-last region may hold, each acting on the last axis at every position
_PER_POSITION = (ReLU, GELU, LayerNorm, Scale, Factor)


def last_axis_layers(node: torch.fx.Node, gm: torch.fx.GraphModule, channels: int,
                     sizes: set[torch.fx.Node]) -> tuple[Layer, ...] | None:
    """The layers of ``node`` acting on the last axis (``channels``) of a channels-last map, as the
    same layers on the channels of a ``(C, H, W)`` map: ``nn.LayerNorm(C)`` a channel layernorm,
    ``nn.Linear`` a 1x1 conv, element-wise layers themselves; None when ``node`` is no such layer
    (the region is not read so); :class:`NotLayer` for a layer of the kind with another setting."""
    m = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    if type(m) is nn.Linear:
        return (Conv(m.out_features, 1, padding=Padding.ZEROS, bias=m.bias is not None),) \
            if m.in_features == channels else None
    if type(m) is nn.LayerNorm:
        return (layernorm(m, describe(node, gm), (channels,)),)
    try:
        got = scale_of(node) or layer_of(node, gm, (channels,), sizes)
    except NotLayer:
        return None
    layers = () if got is None else got if isinstance(got, tuple) else (got,)
    return layers if all(isinstance(x, _PER_POSITION) for x in layers) else None


_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_DIV = (operator.truediv, operator.itruediv, torch.div)


def is_add(node: torch.fx.Node) -> bool:
    """``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a += b`` (without an ``alpha``)."""
    return ((node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target in
            ("add", "add_"))) and len(node.args) == 2 and not node.kwargs


def is_mul(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _MUL) or (node.op == "call_method" and node.target in
                                                                    ("mul", "mul_"))


def scale_of(node: torch.fx.Node) -> Factor | None:
    """``h * a``, ``a * h``, ``h / b`` (also ``torch.mul`` / ``.mul`` / ``torch.div`` / ``.div``) for a number."""
    if node.kwargs or len(node.args) != 2:
        return None
    fn, method = node.op == "call_function", node.op == "call_method"
    a, b = node.args
    numbers = [x for x in (a, b) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if is_mul(node):
        return Factor(float(numbers[0])) if len(numbers) == 1 else None
    if (fn and node.target in _DIV) or (method and node.target in ("div", "div_")):
        return Factor(1.0 / float(b)) if isinstance(b, (int, float)) and not isinstance(b, bool) and b != 0 \
            and not isinstance(a, (int, float)) else None
    return None


def parameter_use(node: torch.fx.Node, gm: torch.fx.GraphModule, params: list[str]) -> NotLayer:
    """The obstacle of a node combining the network's path with parameters (``params``, as read)."""
    at, names = describe(node, gm), ", ".join(repr(p) for p in params)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if is_add(node):
        return NotLayer(ObstacleKind.PARAMETER, f"{at} adds the parameter {names} (a positional embedding)",
                        "advdim's specs have no added parameters")
    if name == "cat":
        return NotLayer(ObstacleKind.PARAMETER, f"{at} concatenates the parameter {names} (a class token)",
                        "advdim's specs have no class token: pool the map instead (globalavgpool)")
    if is_mul(node):
        return NotLayer(ObstacleKind.PARAMETER, f"{at} multiplies by the parameter {names} (layer scale)",
                        "advdim's specs have no learned scale; a constant factor last in a residual branch is "
                        "res(..., scale=a)")
    return NotLayer(ObstacleKind.PARAMETER, f"{at} uses the parameter {names} directly (e.g. F.conv2d with its own "
                    "weights)", "only modules are traced: use nn.Conv2d / nn.Linear")


def join_obstacle(node: torch.fx.Node, gm: torch.fx.GraphModule) -> NotLayer | None:
    """The obstacle of a node combining several of the network's paths (None: an addition, which may
    be a residual block's)."""
    if is_add(node):
        return None
    at = describe(node, gm)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    fix = "advdim's specs join paths only at a residual block's addition"
    if name == "cat":
        return NotLayer(ObstacleKind.TOPOLOGY, f"{at} concatenates paths (DenseNet)", fix)
    if is_mul(node):
        return NotLayer(ObstacleKind.TOPOLOGY, f"{at} multiplies two paths (squeeze-excite or gating)", fix)
    if name in ("matmul", "bmm", "scaled_dot_product_attention", "einsum", "baddbmm"):
        return NotLayer(ObstacleKind.TOPOLOGY, f"{at} multiplies paths (attention written out)",
                        "replace the attention by advdim.build.SelfAttention")
    return NotLayer(ObstacleKind.TOPOLOGY, f"{at} combines several tensors", fix)
