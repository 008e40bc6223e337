"""Read a user's ``nn.Module`` as an advdim :class:`~advdim.arch.Spec`.

:func:`trace` runs ``torch.fx.symbolic_trace`` on the module and reads its graph as a chain of
spec layers: ``Conv2d`` (square kernel, stride and dilation, ``groups=1``, padding 0 or
``dilation*(k-1)//2`` in ``zeros`` / ``circular`` / ``reflect`` mode), ``Linear``, ``ReLU`` (module,
``F.relu``, ``torch.relu``, ``x.relu()``), ``MaxPool2d`` / ``AvgPool2d`` (kernel = stride, no padding),
``AdaptiveAvgPool2d(1)`` / ``AdaptiveMaxPool2d(1)`` and ``x.mean((2, 3))`` / ``x.amax((2, 3))`` (global
pools), ``Flatten``, ``torch.flatten(x, 1)``, ``x.view(B, -1)`` / ``x.reshape(B, -1)``, ``BatchNorm2d``
/ ``BatchNorm1d`` at initialisation (weight 1, bias 0; ``batchnorm`` with running mean 0, variance
1, or ``batchnorm(mode=batch)`` for ``track_running_stats=False`` and advdim's ``BatchStatNorm``,
which use batch statistics in eval mode, where gradients are measured), ``nn.LayerNorm(D)`` on a
flat ``(B, D)`` and advdim's ``TokenLayerNorm`` on a map, ``GELU`` (exact form; module or
``F.gelu``), advdim's ``SelfAttention``, and ``Identity`` / ``Dropout`` (identities in eval mode).
A fork whose two paths meet at an addition is a residual block ``skip(x) + a * branch(x)``
(``x + branch(x)``, ``x + 0.5 * branch(x)``, ``branch(x) / 2 + proj(x)``, ``out += x``): the skip is
the identity or the block's projection (a bias-free 1x1 conv with the branch's stride, or a
bias-free ``Linear`` on flat inputs), the branch any chain of layers and blocks, ``a`` a constant
factor applied last in the branch.  Anything else -- a scaled skip, a shortcut with a batch norm,
paths meeting at a product, another layer, a module applied twice, ``nn.MultiheadAttention`` -- is
an :class:`Untraceable` naming it.  A trace is
kept only when it reproduces the module: the spec's network, with the module's own weights copied
in, must give the module's logits on a Gaussian input (eval mode, rounding of the module's dtype).

Initialisation recognition (:func:`recognise_init`, :class:`InitStats`) lives in
:mod:`advdim.initlaw` and is re-exported here.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    >>> trace(net, (1, 4, 4)).to_text()
    '1x4x4 > conv(4,pad=zeros) > relu > flatten > dense(3)'
    >>> trace(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh()), (1, 4, 4)).reason
    "module '1' (Tanh) is not a layer of advdim's specs"
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
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
    Residual,
    Spec,
    format_layer,
)
from advdim.build import LN_EPS, BatchStatNorm, SelfAttention, TokenLayerNorm
from advdim.errors import SpecError
from advdim.initlaw import (  # noqa: F401 - re-exported: the init recognition of traced modules
    ALPHA,
    SCHEMES,
    InitGuess,
    InitStats,
    LayerInit,
    kurtosis_z,
    recognise_init,
    weight_labels,
)
from advdim.theory._graph import BN_EPS  # batchnorm in eval mode at initialisation: y = x / sqrt(1 + eps)


@dataclass(frozen=True)
class Untraceable:
    """Why a module cannot be read as a spec (one line)."""

    reason: str


@dataclass(frozen=True)
class Traced:
    """A module read as a spec: ``spec`` and, for each of its conv / dense layers in order, the
    qualified name of the module holding the weights."""

    spec: Spec
    weight_modules: tuple[str, ...]

    def weights(self, module: nn.Module) -> list[torch.Tensor]:
        """The weight tensors of ``module`` (a draw of the same architecture) in spec order."""
        return [_get(module, name).weight.detach() for name in self.weight_modules]


def trace(module: nn.Module, input_shape: Sequence[int]) -> Spec | Untraceable:
    """The :class:`Spec` of ``module`` at input ``(C, H, W)``, or why there is none (module docstring)."""
    got = trace_module(module, input_shape)
    return got.spec if isinstance(got, Traced) else got


def trace_module(module: nn.Module, input_shape: Sequence[int]) -> Traced | Untraceable:
    """:func:`trace`, keeping which modules hold the weights of each conv / dense layer."""
    shape = tuple(int(n) for n in input_shape)
    try:
        gm = torch.fx.GraphModule(module, _Tracer().trace(module))
    except Exception as e:  # noqa: BLE001 - any failure of the tracer is a reason
        return Untraceable(f"torch.fx cannot trace the module: {_first_line(e)}")
    gm.graph.eliminate_dead_code()
    try:
        layers, names = _read_graph(gm, shape)
        spec = Spec(shape, tuple(layers))
    except _NotAChain as e:
        return Untraceable(str(e))
    except SpecError as e:
        return Untraceable(f"the traced layers do not form a valid spec: {e}")
    traced = Traced(spec, tuple(names))
    mismatch = _reproduces(module, traced)
    return traced if mismatch is None else Untraceable(mismatch)


class _Tracer(torch.fx.Tracer):
    """``torch.fx``'s tracer, with advdim's own layer modules read whole (as torch's layers are)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (SelfAttention, TokenLayerNorm, BatchStatNorm)) or super().is_leaf_module(
            m, module_qualified_name)


class _NotAChain(Exception):  # noqa: N818 - internal: becomes an Untraceable
    pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _get(module: nn.Module, name: str) -> Any:
    return module.get_submodule(name) if name else module


def _pair(v: Any, what: str, where: str) -> int:
    """A square hyper-parameter (an int or an equal pair)."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise _NotAChain(f"{where} has a non-square {what} {tuple(v)}")
        v = v[0]
    return int(v)


def _conv(m: nn.Conv2d, where: str) -> Conv:
    if m.groups != 1:
        raise _NotAChain(f"{where} is a grouped convolution (groups={m.groups})")
    k = _pair(m.kernel_size, "kernel", where)
    stride = _pair(m.stride, "stride", where)
    dil = _pair(m.dilation, "dilation", where)
    modes = {"zeros": Padding.ZEROS, "circular": Padding.CIRCULAR, "reflect": Padding.REFLECT}
    if m.padding_mode not in modes:
        raise _NotAChain(f"{where} pads in mode {m.padding_mode!r} (zeros, circular or reflect)")
    same = dil * (k - 1) // 2
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pad = 0
        elif dil * (k - 1) % 2:
            raise _NotAChain(f"{where}: padding='same' with an even kernel pads asymmetrically")
        else:
            pad = same
    else:
        pad = _pair(m.padding, "padding", where)
    if pad == 0 and same > 0:
        padding = Padding.VALID
    elif pad == same:
        padding = modes[m.padding_mode] if pad > 0 else Padding.ZEROS
    else:
        raise _NotAChain(f"{where} pads by {pad}, neither 0 nor dilation*(kernel-1)//2 = {same}")
    return Conv(m.out_channels, k, stride, dil, padding, m.bias is not None)


def _pool(m: nn.MaxPool2d | nn.AvgPool2d, where: str) -> Layer:
    k = _pair(m.kernel_size, "kernel", where)
    stride = k if m.stride is None else _pair(m.stride, "stride", where)
    if stride != k or _pair(m.padding, "padding", where) != 0 or m.ceil_mode:
        raise _NotAChain(f"{where} is not a non-overlapping pool (kernel {k}, stride {stride}, "
                         f"padding {m.padding}, ceil_mode {m.ceil_mode})")
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation, "dilation", where) != 1 or m.return_indices:
            raise _NotAChain(f"{where} is a dilated max pool or returns indices")
        return MaxPool(k)
    if m.divisor_override is not None:
        raise _NotAChain(f"{where} overrides the divisor of its average")
    return AvgPool(k)


def _functional_pool(node: torch.fx.Node, where: str) -> Layer:
    """``F.max_pool2d(x, k)`` / ``F.avg_pool2d(x, k)``: read as the module of the same arguments."""
    names = ["kernel_size", "stride", "padding"]
    names += ["dilation", "ceil_mode", "return_indices"] if node.target is torch.nn.functional.max_pool2d \
        else ["ceil_mode", "count_include_pad", "divisor_override"]
    kwargs: dict[str, Any] = {**dict(zip(names, node.args[1:])), **node.kwargs}
    try:
        if node.target is torch.nn.functional.max_pool2d:
            return _pool(nn.MaxPool2d(**kwargs), where)
        return _pool(nn.AvgPool2d(**kwargs), where)
    except (TypeError, ValueError) as e:
        raise _NotAChain(f"{where}: {e}") from None


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, where: str) -> BatchNorm:
    """The mode is what the module does in eval mode, where every gradient is measured: batch
    statistics for :class:`~advdim.build.BatchStatNorm` and ``track_running_stats=False``, else the
    running statistics (which must be those of initialisation)."""
    if abs(m.eps - BN_EPS) > 1e-12:
        raise _NotAChain(f"{where} has eps {m.eps:g}; the theory's batchnorm has eps {BN_EPS:g}")
    mean, var = m.running_mean, m.running_var
    batch = isinstance(m, BatchStatNorm) or not m.track_running_stats or mean is None or var is None
    at_init = batch or (mean is not None and var is not None and bool((mean == 0).all()) and bool((var == 1).all()))
    if m.affine:
        at_init = at_init and bool((m.weight == 1).all()) and bool((m.bias == 0).all())
    if not at_init:
        raise _NotAChain(f"{where} holds running statistics or an affine map other than at initialisation "
                         "(mean 0, variance 1, weight 1, bias 0): the theory covers batchnorm at initialisation only")
    return BatchNorm(BNMode.BATCH if batch else BNMode.RUNNING)


def _layernorm(m: nn.LayerNorm, where: str, shape: tuple[int, ...]) -> LayerNorm:
    """``TokenLayerNorm`` (channels at each position of a map), or ``nn.LayerNorm(D)`` on a flat ``(B, D)``."""
    if len(shape) == 3 and not isinstance(m, TokenLayerNorm):
        raise _NotAChain(f"{where} normalises the last axis of the (C, H, W) map, not the channels at each position "
                         "(advdim.build.TokenLayerNorm does)")
    if tuple(m.normalized_shape) != (shape[0],):
        raise _NotAChain(f"{where} normalises a shape {tuple(m.normalized_shape)}, not the {shape[0]} features")
    if abs(m.eps - LN_EPS) > 1e-12:
        raise _NotAChain(f"{where} has eps {m.eps:g}; advdim's layernorm has eps {LN_EPS:g}")
    if (m.weight is not None and not bool((m.weight == 1).all())) or (m.bias is not None and not bool(
            (m.bias == 0).all())):
        raise _NotAChain(f"{where} has an affine map other than at initialisation (weight 1, bias 0)")
    return LayerNorm()


_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.relu_)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)


def _global_dims(node: torch.fx.Node) -> bool:
    """``mean`` / ``amax`` over the two map axes ``(2, 3)`` (or ``(-2, -1)``), without keepdim."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return isinstance(dims, (tuple, list)) and {d % 4 for d in dims if isinstance(d, int)} == {2, 3} \
        and len(dims) == 2 and not keep


def _flatten_args(node: torch.fx.Node, start_index: int) -> bool:
    """``flatten(x, 1)`` / ``flatten(x, start_dim=1)``, end at the last axis."""
    start = node.kwargs.get("start_dim", node.args[start_index] if len(node.args) > start_index else 0)
    end = node.kwargs.get("end_dim", node.args[start_index + 1] if len(node.args) > start_index + 1 else -1)
    return bool(start == 1 and end == -1)


def _read_graph(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> tuple[list[Layer], list[str]]:
    """The layers of a traced module, and the names of the modules holding the weights (in the
    order of :func:`weight_labels`)."""
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise _NotAChain(f"forward takes {len(inputs)} inputs ({', '.join(repr(n.target) for n in inputs)}), "
                         "not one")
    for node in nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.MultiheadAttention):
            raise _NotAChain(f"{_describe(node, gm)} is not traced: advdim's attention is "
                             "advdim.build.SelfAttention over the positions of a (B, D, H, W) map")
        if node.op == "get_attr":
            raise _NotAChain(f"forward reads the attribute {node.target!r} directly (e.g. F.conv2d with "
                             "its own weights): only modules are traced")
    batch: set[torch.fx.Node] = set()  # nodes holding x.size(0) / x.shape[0] or x.shape / x.size()
    for node in nodes:
        if _is_size(node, batch):
            batch.add(node)
    reader = _Reader(gm, batch, {n: i for i, n in enumerate(nodes)})
    layers, names, _, end = reader.chain(inputs[0], input_shape, stop=None)
    output = nodes[-1]
    if output.op != "output" or output.args[0] is not end:
        raise _NotAChain("forward does not return the last layer's output alone")
    for node in nodes:
        if node not in reader.seen and node not in batch and node.op not in ("placeholder", "output"):
            raise _NotAChain(f"{_describe(node, gm)} is not on the network's chain of layers")
    if any(isinstance(x, _Scale) for x in layers):
        raise _NotAChain("a multiplication by a constant outside a residual branch is not a layer of advdim's specs")
    return layers, names


@dataclass(frozen=True)
class _Scale(Layer):
    """Internal: ``h * a`` (or ``h / b``) for a constant, the scale of a residual branch when last in it."""

    value: float = 1.0

    kind: ClassVar[str] = "scale"

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape


_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_DIV = (operator.truediv, operator.itruediv, torch.div)


class _Reader:
    """Reads a traced graph as a chain of layers; a fork whose two paths meet at an addition is a
    residual block (``skip(x) + a * branch(x)``, the skip the identity or a projection)."""

    def __init__(self, gm: torch.fx.GraphModule, batch: set[torch.fx.Node], order: dict[torch.fx.Node, int]) -> None:
        self.gm, self.batch, self.order = gm, batch, order
        self.seen: set[torch.fx.Node] = set()
        self.used: set[int] = set()  # ids of the modules holding weights, read so far

    def users(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return sorted((u for u in node.users if u not in self.batch), key=self.order.__getitem__)

    def chain(self, value: torch.fx.Node, shape: tuple[int, ...], stop: torch.fx.Node | None,
              first: torch.fx.Node | None = None) -> tuple[list[Layer], list[str], tuple[int, ...], torch.fx.Node]:
        """Layers from ``value`` on (through ``first`` when given) until the node feeding ``stop``
        (None: the output).  Returns the layers, weight module names, the shape and the last node."""
        layers: list[Layer] = []
        names: list[str] = []
        node = first
        while True:
            if node is None:
                users = self.users(value)
                if stop is not None and stop in users:
                    if len(users) > 1:
                        raise _NotAChain(f"the output of {value.name!r} feeds the addition {stop.name!r} and "
                                         f"{len(users) - 1} other operation(s): not a residual block of advdim's specs")
                    return layers, names, shape, value
                if len(users) == 1 and users[0].op == "output":
                    if stop is not None:
                        raise _NotAChain(f"the output of {value.name!r} leaves a residual branch before its addition")
                    return layers, names, shape, value
                if len(users) > 1:
                    block, block_names, shape, value = self.residual(value, users, shape)
                    layers.append(block)
                    names += block_names
                    continue
                if not users:
                    raise _NotAChain(f"the output of {value.name!r} is not used")
                node = users[0]
            inputs = [a for a in node.all_input_nodes if a not in self.batch]
            if inputs != [value]:
                others = [a for a in inputs if a is not value]
                what = ("combines several tensors (a skip connection or a branch) in a way other than a residual "
                        "block's addition" if value in inputs
                        else f"reads {others[0].name!r} again instead of the last layer's output (a branch)")
                raise _NotAChain(f"{_describe(node, self.gm)} {what}: the theory's specs are one chain of layers "
                                 "and residual blocks")
            self.seen.add(node)
            layer = _scale_of(node) or _layer_of(node, self.gm, shape, self.batch)
            if layer is not None:
                try:
                    shape = layer.out_shape(shape)
                except SpecError as e:
                    raise _NotAChain(f"{_describe(node, self.gm)}: {e}") from None
                layers.append(layer)
                names += self.weights(node, layer)
            value, node = node, None

    def weights(self, node: torch.fx.Node, layer: Layer) -> list[str]:
        """Names of the modules holding the weights of ``layer`` (read at ``node``)."""
        if not isinstance(layer, (Conv, Dense, Attention)):
            return []
        target = str(node.target)
        mod = self.gm.get_submodule(target)
        if id(mod) in self.used:
            raise _NotAChain(f"module {target!r} is applied twice (shared weights): the theory needs "
                             "independent layers (H4)")
        self.used.add(id(mod))
        return [f"{target}.{p}" for p in "qkvo"] if isinstance(layer, Attention) else [target]

    def join_of(self, starts: Sequence[torch.fx.Node]) -> torch.fx.Node | None:
        """The first node (in graph order) that both ``starts`` lead to (themselves included)."""
        reach = []
        for u in starts:
            seen, todo = {u}, [u]
            while todo:
                for v in todo.pop().users:
                    if v not in seen and v not in self.batch:
                        seen.add(v)
                        todo.append(v)
            reach.append(seen)
        common = reach[0] & reach[1]
        return min(common, key=self.order.__getitem__) if common else None

    def residual(self, value: torch.fx.Node, users: list[torch.fx.Node],
                 shape: tuple[int, ...]) -> tuple[Residual, list[str], tuple[int, ...], torch.fx.Node]:
        """The residual block forking at ``value``: ``(block, weight names, output shape, addition node)``.

        With more than two uses, blocks are nested at the fork (``res(res(...) > ...)``): the two
        paths that meet first form the inner block, which then starts a path of the next one.
        """
        starts: list[_Start] = list(users)
        while len(starts) > 2:
            pairs = [(a, b) for i, a in enumerate(starts) for b in starts[i + 1:]]
            joins = [self.join_of([_node_of(a), _node_of(b)]) for a, b in pairs]
            met = [(self.order[j], k) for k, j in enumerate(joins) if j is not None]
            if not met:
                raise _NotAChain(f"the {len(users)} uses of {value.name!r} never meet: not a residual block")
            a, b = pairs[min(met)[1]]
            starts = [s for s in starts if s is not a and s is not b] + [self.block(value, a, b, shape)]
        if len(starts) != 2:
            raise _NotAChain(f"the output of {value.name!r} is used by {len(users)} later operations: only a "
                             "residual block's fork (a skip connection and a branch) is traced")
        return self.block(value, starts[0], starts[1], shape)

    def block(self, value: torch.fx.Node, a: _Start, b: _Start,
              shape: tuple[int, ...]) -> tuple[Residual, list[str], tuple[int, ...], torch.fx.Node]:
        """The block whose two paths start at ``a`` and ``b`` (a use of ``value``, or an inner block)."""
        join = self.join_of([_node_of(a), _node_of(b)])
        if join is not None and join.op == "output":
            raise _NotAChain("forward does not return the last layer's output alone")
        if join is None or not _is_add(join):
            where = "never meet" if join is None else f"meet at {_describe(join, self.gm)}"
            raise _NotAChain(f"the two uses of {value.name!r} {where}, not at an addition: only residual blocks "
                             "skip(x) + a * branch(x) are traced")
        self.seen.add(join)
        paths = []
        for start in (a, b):
            if isinstance(start, tuple):  # an inner block, then the path on from its addition
                layers, names, out, end = self.chain(start[3], start[2], join)
                paths.append(([start[0], *layers], start[1] + names, out, end))
            elif start is join:
                paths.append(([], [], shape, value))
            else:
                paths.append(self.chain(value, shape, join, first=start))
        if {p[3] for p in paths} != {x for x in join.all_input_nodes if x not in self.batch}:
            raise _NotAChain(f"the addition {join.name!r} does not add the two paths from {value.name!r}")
        why = ""
        for br, sk in ((0, 1), (1, 0)):
            branch, skip = _split_scale(paths[br][0]), _split_scale(paths[sk][0])
            if skip[1] != 1.0:
                why = f"the skip connection from {value.name!r} is scaled (by {skip[1]:g})"
                continue
            if not branch[0]:
                why = f"the block from {value.name!r} has an empty branch"
                continue
            block = Residual(tuple(branch[0]), branch[1])
            try:
                proj = block.projection(shape)
            except SpecError as e:
                why = f"the block from {value.name!r}: {e}"
                continue
            if skip[0] == ([] if proj is None else [proj]):
                if any(isinstance(x, _Scale) for x in block.branch):
                    raise _NotAChain(f"the branch from {value.name!r} multiplies by a constant before its last "
                                     "operation: only the branch's last operation may scale it")
                return block, paths[br][1] + paths[sk][1], paths[br][2], join
            shown = " > ".join(format_layer(x) for x in skip[0]) or "the identity"
            want = "the identity" if proj is None else f"the projection {format_layer(proj)}"
            why = f"the skip connection from {value.name!r} is {shown}, not {want} of advdim's residual blocks"
        raise _NotAChain(why)


#: where a path of a residual fork starts: a use of the fork's value, or an inner block read already
#: (its record, weight names, output shape and addition node)
_Start = torch.fx.Node | tuple[Residual, list[str], tuple[int, ...], torch.fx.Node]


def _node_of(start: _Start) -> torch.fx.Node:
    return start[3] if isinstance(start, tuple) else start


def _split_scale(layers: list[Layer]) -> tuple[list[Layer], float]:
    """A path's layers without its trailing constant factors, and their product."""
    scale, out = 1.0, list(layers)
    while out and isinstance(out[-1], _Scale):
        scale *= out[-1].value
        out.pop()
    return out, scale


def _is_add(node: torch.fx.Node) -> bool:
    """``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a += b`` (without an ``alpha``)."""
    return ((node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target in
            ("add", "add_"))) and len(node.args) == 2 and not node.kwargs


def _scale_of(node: torch.fx.Node) -> _Scale | None:
    """``h * a``, ``a * h``, ``h / b`` (also ``torch.mul`` / ``.mul`` / ``torch.div`` / ``.div``) for a number."""
    if node.kwargs or len(node.args) != 2:
        return None
    fn, method = node.op == "call_function", node.op == "call_method"
    a, b = node.args
    numbers = [x for x in (a, b) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if (fn and node.target in _MUL) or (method and node.target in ("mul", "mul_")):
        return _Scale(float(numbers[0])) if len(numbers) == 1 else None
    if (fn and node.target in _DIV) or (method and node.target in ("div", "div_")):
        return _Scale(1.0 / float(b)) if isinstance(b, (int, float)) and not isinstance(b, bool) and b != 0 \
            and not isinstance(a, (int, float)) else None
    return None


def _is_size(node: torch.fx.Node, batch: set[torch.fx.Node]) -> bool:
    """``x.size(0)``, ``x.size()``, ``x.shape``, ``x.shape[0]`` (arguments of a later view / reshape)."""
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape":
        return True
    return node.op == "call_function" and node.target is operator.getitem and node.args[0] in batch


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(gm.get_submodule(str(node.target))).__name__})"
    if node.op == "call_method":
        return f"the method .{node.target}()"
    return f"the function {getattr(node.target, '__name__', node.target)}()"


def _layer_of(node: torch.fx.Node, gm: torch.fx.GraphModule, shape: tuple[int, ...],
              batch: set[torch.fx.Node]) -> Layer | None:
    """The spec layer of one node (None: an identity), or :class:`_NotAChain`."""
    where = _describe(node, gm)
    flat = int(np.prod(shape))
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.Conv2d):
            conv = _conv(m, where)
            if conv.pad == 0 and conv.padding is Padding.ZEROS:  # no padding: ZEROS and VALID are the same
                try:  # module, but a stride must divide n (ZEROS) or n - span (VALID): take the one that fits
                    conv.out_shape(shape)
                except SpecError:
                    return replace(conv, padding=Padding.VALID)
            return conv
        if isinstance(m, nn.Linear):
            if len(shape) != 1 or m.in_features != shape[0]:
                raise _NotAChain(f"{where} takes {m.in_features} features but receives shape {shape}")
            return Dense(m.out_features, m.bias is not None)
        if isinstance(m, nn.ReLU):
            return ReLU()
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return _pool(m, where)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if m.output_size not in (1, (1, 1)):
                raise _NotAChain(f"{where} pools to {m.output_size}, not to one value per channel")
            return GlobalAvgPool() if isinstance(m, nn.AdaptiveAvgPool2d) else GlobalMaxPool()
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _NotAChain(f"{where} flattens dims {m.start_dim}..{m.end_dim}, not 1..-1")
            return _flatten(shape)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, BatchStatNorm)):
            return _batchnorm(m, where)
        if isinstance(m, nn.LayerNorm):
            return _layernorm(m, where, shape)
        if isinstance(m, nn.GELU):
            if m.approximate != "none":
                raise _NotAChain(f"{where} is the {m.approximate!r} approximation, not the exact GELU")
            return GELU()
        if isinstance(m, SelfAttention):
            return Attention(m.heads)
        if isinstance(m, _IDENTITY_MODULES):
            return None
        raise _NotAChain(f"{where} is not a layer of advdim's specs")
    target = node.target
    if node.op == "call_function":
        if target in _RELU_FUNCTIONS:
            return ReLU()
        if target is torch.nn.functional.gelu and len(node.args) == 1 \
                and node.kwargs.get("approximate", "none") == "none":
            return GELU()
        if target is torch.flatten and _flatten_args(node, 1):
            return _flatten(shape)
        if target in (torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_max_pool2d):
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            if size in (1, (1, 1)):
                return GlobalAvgPool() if target is torch.nn.functional.adaptive_avg_pool2d else GlobalMaxPool()
        if target in (torch.mean, torch.amax) and _global_dims(node):
            return GlobalAvgPool() if target is torch.mean else GlobalMaxPool()
        if target in (torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d):
            return _functional_pool(node, where)
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return ReLU()
        if target == "flatten" and _flatten_args(node, 1):
            return _flatten(shape)
        if target in ("mean", "amax") and _global_dims(node):
            return GlobalAvgPool() if target == "mean" else GlobalMaxPool()
        if target in ("view", "reshape") and _flat_view(node, batch, flat):
            return _flatten(shape)
        if target == "contiguous":
            return None
    raise _NotAChain(f"{where} is not a layer of advdim's specs")


def _flatten(shape: tuple[int, ...]) -> Layer | None:
    """A flatten of a map; of an already flat vector (after a global pool) it is an identity."""
    return Flatten() if len(shape) > 1 else None


def _flat_view(node: torch.fx.Node, batch: set[torch.fx.Node], flat: int) -> bool:
    """``x.view(B, -1)`` with ``B`` from ``x.size(0)`` / ``x.shape[0]``, or ``x.view(-1, C*H*W)``."""
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if len(args) != 2:
        return False
    first, second = args
    return bool((first in batch and second == -1) or (first == -1 and second == flat))


def _reproduces(module: nn.Module, traced: Traced) -> str | None:
    """None when the spec's network with the module's weights gives the module's logits, else why not."""
    from advdim.build import build
    from advdim.gradients import mode

    p0 = next(iter(module.parameters()), None)
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    device = p0.device if p0 is not None else torch.device("cpu")
    net = build(traced.spec, seed=0, dtype=dtype, device=device)
    weight_layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]  # weight_labels' order
    if len(weight_layers) != len(traced.weight_modules):
        return f"the trace names {len(traced.weight_modules)} weight layers, its network has {len(weight_layers)}"
    with torch.no_grad():
        for dst, name in zip(weight_layers, traced.weight_modules):
            src = _get(module, name)
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                dst.bias.copy_(src.bias)
    x = torch.randn(2, *traced.spec.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(device, dtype)
    try:
        with torch.no_grad(), mode(module, False), mode(net, False):
            want, got = module(x), net(x)
    except Exception as e:  # noqa: BLE001 - the module fails on its own input shape: not reproducible
        return f"the module failed on the trace's test input: {_first_line(e)}"
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return "the trace does not reproduce the module's output (its shape differs)"
    scale = max(1.0, float(want.abs().max()))
    err = float((want - got).abs().max())
    if not err <= 1000 * torch.finfo(dtype).eps * scale:
        return f"the trace does not reproduce the module's output (largest difference {err:.3g})"
    return None
