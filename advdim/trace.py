"""Read a user's ``nn.Module`` as an advdim :class:`~advdim.arch.Spec`, or name every obstacle.

:func:`trace` traces the module with ``torch.fx`` in eval mode (where gradients are measured) and
reads its graph as a chain of spec layers and residual blocks:

- ``Conv2d`` (square kernel, stride and dilation, ``groups=1``, padding 0 or ``dilation*(k-1)//2`` in
  ``zeros`` / ``circular`` / ``reflect`` mode), ``Linear`` on flat inputs;
- ``ReLU`` (module, ``inplace=True``, ``F.relu``, ``torch.relu``, ``x.relu()``), ``GELU`` (exact form;
  module or ``F.gelu``);
- ``MaxPool2d`` / ``F.max_pool2d`` of any stride and padding (``maxpool(k,s=S,pad=P)``, floor mode),
  ``AvgPool2d`` of kernel = stride (``ceil_mode=True`` where the windows tile the map: floor mode);
  ``AdaptiveAvgPool2d`` / ``AdaptiveMaxPool2d``, ``x.mean((2, 3))`` / ``x.amax((2, 3))`` as global pools
  (output 1), identities (output = the map) or pools of kernel ``n / o`` (output ``o`` dividing the
  map's side ``n``);
- ``Flatten``, ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(B, -1)`` / ``x.reshape(B, -1)``;
- ``BatchNorm2d`` / ``BatchNorm1d`` anywhere at initialisation (bias 0, one weight ``gamma`` for all
  channels): ``batchnorm`` with running mean 0, variance 1 -- with another ``eps`` than the theory's
  followed by ``scale(sqrt((1 + 1e-5) / (1 + eps)))``, which is what it does in eval mode -- or
  ``batchnorm(mode=batch)`` for ``track_running_stats=False`` and advdim's ``BatchStatNorm``; then the
  factor ``gamma`` when it is not 1 (timm's zero-initialised last batch norm: ``res(..., scale=0)``);
- ``nn.LayerNorm(D)`` on a flat ``(B, D)``, advdim's ``TokenLayerNorm`` and torchvision's / timm's
  ``LayerNorm2d`` on a map (``layernorm``); a channels-last region ``permute(0, 2, 3, 1) > LayerNorm /
  Linear / element-wise layers > permute(0, 3, 1, 2)`` (ConvNeXt's MLP) as the same layers on the
  channels of the map, each ``Linear`` a 1x1 conv;
- advdim's ``SelfAttention`` (``attn``) and ``ScaleBy``; a multiplication by a positive constant
  (``scale(a)``), or by a parameter whose entries are all equal (a layer scale at initialisation:
  ConvNeXt's ``gamma = 1e-6``, which last in a residual branch is the block's scale);
- identities in eval mode: ``Identity``, ``Dropout`` / ``Dropout2d`` (and ``F.dropout`` with
  ``training=False``), torchvision's ``StochasticDepth`` and timm's ``DropPath`` (read whole, by class
  name), ``x.contiguous()``, ``torch.cat([x], 1)`` of one tensor.

A fork whose two paths meet at an addition is a residual block ``skip(x) + a * branch(x)`` (``x +
branch(x)``, ``out += identity``, ``branch(x) / 2 + proj(x)``): the skip the identity, the block's
projection (a bias-free 1x1 conv with the branch's stride, or a bias-free ``Linear`` on flat inputs),
or that projection followed by a batch norm at initialisation (torchvision's ``downsample =
Sequential(conv1x1, BatchNorm2d)``: ``projbn=true``); the branch any chain of layers and blocks,
``a`` a constant factor applied last in the branch.  The ReLU after the addition of torchvision's
blocks is the next layer: ``res(...) > relu``.

Anything else is an :class:`Obstacle`, and one run lists them all (:class:`Untraceable`): past an
obstacle the reading goes on with the shape the module itself gave that node (one run of the graph on
a Gaussian batch), past a fork that is no residual block from where its paths meet.  When torch.fx
fails inside a submodule, that submodule is made a leaf and the module traced again (at most
``MAX_RETRIES`` times); each such leaf is an obstacle.  Named as such: SiLU, Hardswish, Hardsigmoid and
other activations; grouped and depthwise convs; ``nn.MultiheadAttention``, timm's and torchvision's
attention modules, ``nn.TransformerEncoderLayer``; LayerNorm on tokens or on the last axis of a map;
``flatten(2)`` / ``transpose`` / ``permute`` into tokens, token select ``x[:, 0]`` and token mean;
parameters used directly (class token, positional embedding, a trained layer scale); products of paths
(squeeze-excite) and concatenations (DenseNet); norms not at initialisation; modules applied twice.
A trace is kept only when it reproduces the module: the spec's network, with the module's own weights
copied in, must give the module's logits on a Gaussian input (eval mode, rounding of the module's dtype).

Initialisation recognition (:func:`recognise_init`, :class:`InitStats`) lives in
:mod:`advdim.initlaw` and is re-exported here.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    >>> trace(net, (1, 4, 4)).to_text()
    '1x4x4 > conv(4,pad=zeros) > relu > flatten > dense(3)'
    >>> got = trace(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, groups=1), nn.Tanh(), nn.Conv2d(4, 4, 1, groups=4),
    ...                           nn.Flatten(), nn.Linear(64, 3)), (1, 4, 4))
    >>> [(o.path, o.cls, o.kind.value) for o in got.obstacles]
    [('1', 'Tanh', 'module'), ('2', 'Conv2d', 'setting')]
    >>> got.reason
    "module '1' (Tanh) is not a layer of advdim's specs (advdim's activations are relu and gelu (exact); use \
nn.ReLU or nn.GELU()); and 1 more: module '2' (Conv2d) is a depthwise convolution (groups=4)"
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from advdim._trace_fx import MAX_RETRIES, dynamic_nodes, first_line, graph_of, node_shapes
from advdim._trace_layers import (
    Factor,
    NotLayer,
    Obstacle,
    ObstacleKind,
    Opaque,
    describe,
    is_add,
    is_mul,
    is_permute,
    join_obstacle,
    last_axis_layers,
    layer_of,
    parameter_use,
    scale_of,
    where,
)
from advdim.arch import Attention, BatchNorm, BNMode, Conv, Dense, Layer, Residual, Scale, Spec, format_layer
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

__all__ = ["MAX_RETRIES", "Obstacle", "ObstacleKind", "Traced", "Untraceable", "trace", "trace_module"]

#: how many obstacles :attr:`Untraceable.reason` names after the first
_NAMED = 4


@dataclass(frozen=True)
class Untraceable:
    """Why a module cannot be read as a spec: every obstacle met, in the order of the module's graph."""

    obstacles: tuple[Obstacle, ...]

    def __post_init__(self) -> None:
        if not self.obstacles:
            raise ValueError("an Untraceable names at least one obstacle")

    @property
    def reason(self) -> str:
        """One line: the first obstacle, then how many more and where."""
        first, rest = self.obstacles[0], self.obstacles[1:]
        if not rest:
            return str(first)
        named = "; ".join(o.what for o in rest[:_NAMED])
        return f"{first}; and {len(rest)} more: {named}{'; ...' if len(rest) > _NAMED else ''}"

    def summary(self) -> str:
        """One line grouping the obstacles by class and kind, most frequent first, each with its first
        instance and fix (for tables: a ConvNeXt's 41 obstacles are two kinds)."""
        groups: dict[tuple[str, ObstacleKind], list[Obstacle]] = {}
        for o in self.obstacles:
            groups.setdefault((o.cls, o.kind), []).append(o)
        parts = [f"{len(g)} x {cls} ({kind.value}), e.g. {g[0]}"
                 for (cls, kind), g in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
        return f"{len(self.obstacles)} obstacle(s): " + "; ".join(parts)


@dataclass(frozen=True)
class Traced:
    """A module read as a spec: ``spec`` and, for each of its conv / dense layers in order, the
    qualified name of the module holding the weights."""

    spec: Spec
    weight_modules: tuple[str, ...]
    #: the ``nn.Linear`` modules read as 1x1 convs (in a channels-last region)
    as_conv: frozenset[str] = frozenset()

    def weights(self, module: nn.Module) -> list[torch.Tensor]:
        """The weight tensors of ``module`` (a draw of the same architecture) in spec order, shaped as
        the spec's layers (a Linear read as a 1x1 conv: ``(out, in, 1, 1)``)."""
        return [self.weight(module, name).detach() for name in self.weight_modules]

    def weight(self, module: nn.Module, name: str) -> torch.Tensor:
        w: torch.Tensor = _get(module, name).weight
        return w[:, :, None, None] if name in self.as_conv else w


def trace(module: nn.Module, input_shape: Sequence[int]) -> Spec | Untraceable:
    """The :class:`Spec` of ``module`` at input ``(C, H, W)``, or every obstacle (module docstring)."""
    got = trace_module(module, input_shape)
    return got.spec if isinstance(got, Traced) else got


def trace_module(module: nn.Module, input_shape: Sequence[int]) -> Traced | Untraceable:
    """:func:`trace`, keeping which modules hold the weights of each conv / dense layer."""
    shape = tuple(int(n) for n in input_shape)
    root = type(module).__name__
    try:
        gm, leaves = graph_of(module)
        shapes, uniform = node_shapes(gm, module, shape)
    except NotLayer as e:
        return Untraceable((Obstacle("", root, e.kind, e.what, e.fix),))
    reader = _Reader(gm, shapes, leaves, uniform)
    layers, names = reader.read(shape)
    obstacles = reader.found()
    if obstacles:
        return Untraceable(tuple(obstacles))
    try:
        traced = Traced(Spec(shape, tuple(layers)), tuple(names), frozenset(reader.as_conv))
    except SpecError as e:
        return Untraceable((Obstacle("", root, ObstacleKind.SETTING, f"the traced layers do not form a valid spec: "
                                     f"{e}", "see the spec language's limits"),))
    mismatch = _reproduces(module, traced)
    return traced if mismatch is None else Untraceable((Obstacle(
        "", root, ObstacleKind.MISMATCH, mismatch, "a hook or an operation torch.fx does not see changes the output"),))


def _get(module: nn.Module, name: str) -> Any:
    return module.get_submodule(name) if name else module


@dataclass
class _Path:
    """Layers read along one path: each layer's node, the weight modules, the shape and last node."""

    layers: list[Layer]
    nodes: list[torch.fx.Node]
    names: list[str]
    shape: tuple[int, ...]
    end: torch.fx.Node


#: where a path of a residual fork starts: a use of the fork's value, or an inner block read already
_Start = torch.fx.Node | tuple[Residual, _Path]


def _node_of(start: _Start) -> torch.fx.Node:
    return start[1].end if isinstance(start, tuple) else start


class _Reader:
    """Reads a traced graph as a chain of layers and residual blocks (``skip(x) + a * branch(x)``, the
    skip the identity or a projection), noting every obstacle and reading on past it: a node that is
    no layer becomes an opaque layer of the shape the module gave it, a fork that is no residual
    block an opaque region up to where its paths meet."""

    def __init__(self, gm: torch.fx.GraphModule, shapes: dict[torch.fx.Node, tuple[int, ...]],
                 leaves: dict[str, Obstacle], uniform: dict[torch.fx.Node, float]) -> None:
        self.gm, self.shapes, self.leaves, self.uniform = gm, shapes, leaves, uniform
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.network, self.sizes = dynamic_nodes(gm)
        self.seen: set[torch.fx.Node] = set()
        self.used: set[int] = set()  # ids of the modules holding weights, read so far
        self.obstacles: dict[torch.fx.Node | None, Obstacle] = {}
        self.reached: dict[torch.fx.Node, set[torch.fx.Node]] = {}
        self.as_conv: set[str] = set()  # the Linear modules of channels-last regions, read as 1x1 convs
        self.last = self.channels_last()
        self.local = self.read_nodes()

    # -- obstacles ---------------------------------------------------------------------------
    def note(self, e: NotLayer, node: torch.fx.Node | None) -> None:
        """Keep the obstacle ``e`` met at ``node`` (the first one for each node)."""
        if e.secondary:
            return
        at = e.node or node
        path, cls = where(at, self.gm) if at is not None else ("", type(self.gm).__name__)
        self.obstacles.setdefault(at, Obstacle(path, cls, e.kind, e.what, e.fix))

    def found(self) -> list[Obstacle]:
        """The obstacles in graph order (those of no node, the interface's, first; then the modules
        torch.fx could not trace that the graph does not call)."""
        got = [o for n, o in sorted(self.obstacles.items(), key=lambda kv: -1 if kv[0] is None
                                    else self.order[kv[0]])]
        return got + [o for o in self.leaves.values() if o not in got]

    def real(self, node: torch.fx.Node, default: tuple[int, ...]) -> tuple[int, ...]:
        """The node's output shape without the batch axis (``default`` when it is no tensor)."""
        got = self.shapes.get(node)
        return got[1:] if got else default

    def channels_last(self) -> dict[torch.fx.Node, tuple[Layer, ...] | NotLayer]:
        """The nodes of the channels-last regions (ConvNeXt's ``permute(0, 2, 3, 1) > LayerNorm > Linear >
        GELU > Linear > permute(0, 3, 1, 2)``): one chain of layers acting on the last axis at every
        position, read as the same layers on the channels of the map (the permutes identities)."""
        found: dict[torch.fx.Node, tuple[Layer, ...] | NotLayer] = {}
        for start in self.nodes:
            shape = self.real(start.all_input_nodes[0], ()) if start.all_input_nodes else ()
            if start not in self.network or len(shape) != 3 or not is_permute(start, (0, 2, 3, 1)):
                continue
            region: dict[torch.fx.Node, tuple[Layer, ...] | NotLayer] = {start: ()}
            node, channels = start, shape[0]
            while True:
                users = self.users(node)
                if len(users) != 1 or [a for a in users[0].all_input_nodes if a in self.network] != [node]:
                    break
                node = users[0]
                if is_permute(node, (0, 3, 1, 2)):
                    region[node] = ()
                    found.update(region)
                    break
                try:
                    layers = last_axis_layers(node, self.gm, channels, self.sizes)
                except NotLayer as e:
                    region[node] = e
                    continue
                if layers is None:
                    break
                region[node] = layers
                channels = next((x.out_channels for x in layers if isinstance(x, Conv)), channels)
        return found

    def read_nodes(self) -> dict[torch.fx.Node, NotLayer]:
        """Every node of the network read alone, with the shape the module gave its input: the
        obstacles that do not depend on how the nodes connect."""
        local: dict[torch.fx.Node, NotLayer] = {}
        for node in self.nodes:
            if node not in self.network or node.op in ("placeholder", "output"):
                continue
            ins = [a for a in node.all_input_nodes if a in self.network]
            consts = [a for a in node.all_input_nodes if a not in self.network and a not in self.sizes]
            if node in self.last:
                got = self.last[node]
                if isinstance(got, NotLayer):
                    local[node] = got
                    self.note(got, node)
                continue
            try:
                if node.op == "call_module" and str(node.target) in self.leaves:
                    self.obstacles[node] = self.leaves[str(node.target)]
                    raise NotLayer(ObstacleKind.FX, self.leaves[str(node.target)].what)
                if consts and self.factor(node) is None:
                    raise parameter_use(node, self.gm, self.parameters(consts))
                if consts:
                    continue
                if len(ins) > 1:
                    e = join_obstacle(node, self.gm)
                    if e is not None:
                        raise e
                    continue
                if scale_of(node) is None and not self.unpacks(node):
                    layer_of(node, self.gm, self.real(ins[0], ()), self.sizes, self.real(node, ()) or None)
            except NotLayer as e:
                local[node] = e
                self.note(e, node)
        return local

    def factor(self, node: torch.fx.Node) -> Factor | None:
        """``h * gamma`` (``gamma * h``, ``h.mul(gamma)``) for a parameter of equal entries: its value now,
        a constant factor (a layer scale at initialisation, ``gamma = 1e-6``)."""
        if not (is_mul(node) and len(node.args) == 2 and not node.kwargs):
            return None
        ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
        net = [a for a in ins if a in self.network]
        const = [a for a in ins if a not in self.network]
        if len(net) != 1 or len(const) != 1 or const[0] not in self.uniform:
            return None
        if self.shapes.get(node) != self.shapes.get(net[0]):
            return None  # the factor broadcasts the path to another shape
        return Factor(self.uniform[const[0]])

    def unpacks(self, node: torch.fx.Node) -> bool:
        """``out[0]`` of a module returning several values (``nn.MultiheadAttention``): part of that module."""
        return node.op == "call_function" and node.target is operator.getitem and isinstance(
            node.args[0], torch.fx.Node) and node.args[0] not in self.shapes

    def parameters(self, consts: list[torch.fx.Node]) -> list[str]:
        """The parameters (``get_attr`` targets) that the constant nodes ``consts`` are computed from."""
        out, todo, seen = [], list(consts), set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                out.append(str(n.target))
            todo += n.all_input_nodes
        return sorted(out) or [c.name for c in consts]

    # -- the chain ---------------------------------------------------------------------------
    def read(self, input_shape: tuple[int, ...]) -> tuple[list[Layer], list[str]]:
        inputs = [n for n in self.nodes if n.op == "placeholder" and n in self.network]
        if len(inputs) != 1:
            self.note(NotLayer(ObstacleKind.INTERFACE, f"forward takes {len(inputs)} inputs ("
                               f"{', '.join(repr(n.target) for n in inputs)}), not one", "take one tensor"), None)
            return [], []
        try:
            path = self.chain(inputs[0], input_shape, stop=None)
        except NotLayer as e:
            self.note(e, None)
            return [], []
        layers = self.scales(path.layers, path.nodes)
        output = self.nodes[-1]
        if output.op != "output" or output.args[0] is not path.end:
            self.note(NotLayer(ObstacleKind.INTERFACE, "forward does not return the last layer's output alone",
                               "return the logits alone"), None)
        for node in self.nodes:
            if node in self.network and node not in self.seen and node.op not in ("placeholder", "output"):
                self.note(NotLayer(ObstacleKind.TOPOLOGY, f"{describe(node, self.gm)} is not on the network's chain "
                                   "of layers", "advdim's specs are one chain of layers and residual blocks"), node)
        return layers, path.names

    def scales(self, layers: list[Layer], nodes: list[torch.fx.Node]) -> list[Layer]:
        """The layers with each constant factor read as the layer ``scale(a)``."""
        out = []
        for layer, node in zip(layers, nodes):
            if isinstance(layer, Factor):
                try:
                    layer = Scale(layer.value)
                    layer.out_shape(())
                except SpecError as e:
                    self.note(NotLayer(ObstacleKind.SETTING, f"{describe(node, self.gm)}: {e}",
                                       "advdim's scale(a) multiplies by a positive constant"), node)
            out.append(layer)
        return out

    def users(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return sorted((u for u in node.users if u in self.network or u.op == "output"), key=self.order.__getitem__)

    def chain(self, value: torch.fx.Node, shape: tuple[int, ...], stop: torch.fx.Node | None,
              first: torch.fx.Node | None = None) -> _Path:
        """Layers from ``value`` on (through ``first`` when given) until the node feeding ``stop``
        (None: the output)."""
        path = _Path([], [], [], shape, value)
        node = first
        while True:
            if node is None:
                users = self.users(value)
                if stop is not None and stop in users:
                    if len(users) > 1:
                        raise NotLayer(ObstacleKind.TOPOLOGY, f"the output of {value.name!r} feeds the addition "
                                       f"{stop.name!r} and {len(users) - 1} other operation(s): not a residual block "
                                       "of advdim's specs", "a residual block adds a skip and a branch", node=value)
                    break
                if len(users) == 1 and users[0].op == "output":
                    if stop is not None:
                        raise NotLayer(ObstacleKind.TOPOLOGY, f"the output of {value.name!r} leaves a residual "
                                       "branch before its addition", "return the last layer's output", node=value)
                    break
                if len(users) > 1:
                    value, shape = self.fork(path, value, users, shape, stop)
                    continue
                if not users:
                    raise NotLayer(ObstacleKind.TOPOLOGY, f"the output of {value.name!r} is not used",
                                   "return the last layer's output", node=value)
                node = users[0]
            inputs = [a for a in node.all_input_nodes if a in self.network]
            if inputs != [value]:
                others = [a for a in inputs if a is not value]
                what = ("combines several tensors (a skip connection or a branch) in a way other than a residual "
                        "block's addition" if value in inputs
                        else f"reads {others[0].name!r} again instead of the last layer's output (a branch)")
                raise NotLayer(ObstacleKind.TOPOLOGY, f"{describe(node, self.gm)} {what}: the theory's specs are one "
                               "chain of layers and residual blocks", "", node=node)
            self.seen.add(node)
            for layer in self.layer(node, shape):
                shape = layer.out_shape(shape)
                path.layers.append(layer)
                path.nodes.append(node)
                path.names += self.weights(node, layer)
            value, node = node, None
        path.shape, path.end = shape, value
        return path

    def layer(self, node: torch.fx.Node, shape: tuple[int, ...]) -> tuple[Layer, ...]:
        """The layers of ``node`` on the spec's ``shape`` (none: an identity); past an obstacle, an
        opaque layer."""
        if node not in self.local and not self.unpacks(node):
            try:
                got = self.last[node] if node in self.last else scale_of(node) or self.factor(node) or layer_of(
                    node, self.gm, shape, self.sizes)
                assert not isinstance(got, NotLayer)  # those are in self.local
                layers = () if got is None else got if isinstance(got, tuple) else (got,)
                out = shape
                for layer in layers:
                    out = layer.out_shape(out)
                return layers
            except NotLayer as e:
                self.note(e, node)
            except SpecError as e:
                self.note(NotLayer(ObstacleKind.SETTING, f"{describe(node, self.gm)}: {e}",
                                   "see the spec language's limits"), node)
        real = self.real(node, shape)
        if node in self.last and len(real) == 3:  # a channels-last region is read on the channels of the map
            real = (real[2], real[0], real[1])
        return (Opaque(real),)

    def fork(self, path: _Path, value: torch.fx.Node, users: list[torch.fx.Node], shape: tuple[int, ...],
             stop: torch.fx.Node | None) -> tuple[torch.fx.Node, tuple[int, ...]]:
        """Read the fork at ``value`` into ``path``: a residual block, or (noted as an obstacle) an opaque
        region up to where all its paths meet.  Returns the node and shape after it."""
        try:
            block, inner = self.residual(value, users, shape)
        except NotLayer as e:
            join = self.join_of(users)
            if join is None or join.op == "output" or (stop is not None and self.order[join] >= self.order[stop]):
                raise
            self.note(e, value)
            inside = self.reach([value], before=join)
            self.seen |= inside | {join}
            shape = self.real(join, shape)
            path.layers.append(Opaque(shape))
            path.nodes.append(join)
            return join, shape
        path.layers.append(block)
        path.nodes.append(inner.end)
        path.names += inner.names
        return inner.end, inner.shape

    def weights(self, node: torch.fx.Node, layer: Layer) -> list[str]:
        """Names of the modules holding the weights of ``layer`` (read at ``node``)."""
        if not isinstance(layer, (Conv, Dense, Attention)):
            return []
        target = str(node.target)
        mod = self.gm.get_submodule(target)
        if id(mod) in self.used:
            self.note(NotLayer(ObstacleKind.SHARED, f"module {target!r} is applied twice (shared weights)",
                               "the theory needs independent layers (H4): use one module per application"), node)
        self.used.add(id(mod))
        if isinstance(mod, nn.Linear) and isinstance(layer, Conv):
            self.as_conv.add(target)
        return [f"{target}.{p}" for p in "qkvo"] if isinstance(layer, Attention) else [target]

    def reach(self, starts: Sequence[torch.fx.Node], before: torch.fx.Node | None = None) -> set[torch.fx.Node]:
        """The network's nodes reachable from ``starts`` (themselves included), before ``before`` in graph order."""
        seen, todo = set(starts), list(starts)
        while todo:
            for v in todo.pop().users:
                if v not in seen and (v in self.network or v.op == "output") and (
                        before is None or self.order[v] < self.order[before]):
                    seen.add(v)
                    todo.append(v)
        return seen

    def reach_all(self, node: torch.fx.Node) -> set[torch.fx.Node]:
        """:meth:`reach` from one node, kept (a fork of many uses asks it of each pair)."""
        if node not in self.reached:
            self.reached[node] = self.reach([node])
        return self.reached[node]

    def join_of(self, starts: Sequence[torch.fx.Node]) -> torch.fx.Node | None:
        """The first node (in graph order) that all ``starts`` lead to (themselves included)."""
        common = set.intersection(*(self.reach_all(u) for u in starts))
        return min(common, key=self.order.__getitem__) if common else None

    def residual(self, value: torch.fx.Node, users: list[torch.fx.Node],
                 shape: tuple[int, ...]) -> tuple[Residual, _Path]:
        """The residual block forking at ``value``, and the path through it (its addition the end).

        With more than two uses, blocks are nested at the fork (``res(res(...) > ...)``): the two
        paths that meet first form the inner block, which then starts a path of the next one.
        """
        starts: list[_Start] = list(users)
        while len(starts) > 2:
            pairs = [(a, b) for i, a in enumerate(starts) for b in starts[i + 1:]]
            joins = [self.join_of([_node_of(a), _node_of(b)]) for a, b in pairs]
            met = [(self.order[j], k) for k, j in enumerate(joins) if j is not None]
            if not met:
                raise NotLayer(ObstacleKind.TOPOLOGY, f"the {len(users)} uses of {value.name!r} never meet: not a "
                               "residual block", "a residual block adds a skip and a branch", node=value)
            a, b = pairs[min(met)[1]]
            starts = [s for s in starts if s is not a and s is not b] + [self.block(value, a, b, shape)]
        if len(starts) != 2:
            raise NotLayer(ObstacleKind.TOPOLOGY, f"the output of {value.name!r} is used by {len(users)} later "
                           "operations: only a residual block's fork (a skip connection and a branch) is traced",
                           "a residual block adds a skip and a branch", node=value)
        return self.block(value, starts[0], starts[1], shape)

    def block(self, value: torch.fx.Node, a: _Start, b: _Start, shape: tuple[int, ...]) -> tuple[Residual, _Path]:
        """The block whose two paths start at ``a`` and ``b`` (a use of ``value``, or an inner block)."""
        join = self.join_of([_node_of(a), _node_of(b)])
        if join is not None and join.op == "output":
            raise NotLayer(ObstacleKind.INTERFACE, "forward does not return the last layer's output alone",
                           "return the logits alone", node=value)
        if join is None or not is_add(join):
            at = "never meet" if join is None else f"meet at {describe(join, self.gm)}"
            raise NotLayer(ObstacleKind.TOPOLOGY, f"the two uses of {value.name!r} {at}, not at an addition: only "
                           "residual blocks skip(x) + a * branch(x) are traced",
                           "advdim's specs join paths only at a residual block's addition", node=join or value)
        self.seen.add(join)
        paths = []
        for start in (a, b):
            if isinstance(start, tuple):  # an inner block, then the path on from its addition
                on = self.chain(start[1].end, start[1].shape, join)
                paths.append(_Path([start[0], *on.layers], [start[1].end, *on.nodes], start[1].names + on.names,
                                   on.shape, on.end))
            elif start is join:
                paths.append(_Path([], [], [], shape, value))
            else:
                paths.append(self.chain(value, shape, join, first=start))
        if {p.end for p in paths} != {x for x in join.all_input_nodes if x in self.network}:
            raise NotLayer(ObstacleKind.TOPOLOGY, f"the addition {join.name!r} does not add the two paths from "
                           f"{value.name!r}", "a residual block adds a skip and a branch", node=join)
        whys: list[tuple[tuple[bool, int], NotLayer]] = []  # by preference: a skip starting with the projection
        for br, sk in ((0, 1), (1, 0)):
            branch, skip = _split_scale(paths[br].layers), _split_scale(paths[sk].layers)
            rank = (True, len(paths[sk].layers))
            if any(isinstance(x, Opaque) for x in paths[sk].layers):  # its obstacle is noted: read past
                whys.append(((False, 0), NotLayer(ObstacleKind.TOPOLOGY, "a skip through an obstacle", node=join,
                                                  secondary=True)))
                continue
            if skip[1] != 1.0:
                whys.append((rank, NotLayer(ObstacleKind.TOPOLOGY, f"the skip connection from {value.name!r} is "
                                            f"scaled (by {skip[1]:g})", "advdim's residual blocks scale only their "
                                            "branch", node=join)))
                continue
            if not branch[0]:
                whys.append((rank, NotLayer(ObstacleKind.TOPOLOGY, f"the block from {value.name!r} has an empty "
                                            "branch", "a residual block adds a skip and a branch", node=join)))
                continue
            inner = self.scales(branch[0], paths[br].nodes[:len(branch[0])])
            block = Residual(tuple(inner), branch[1])
            try:
                proj = block.projection(shape)
            except SpecError as e:
                whys.append((rank, NotLayer(ObstacleKind.TOPOLOGY, f"the block from {value.name!r}: {e}",
                                            "a residual block's skip is the identity or a 1x1 projection",
                                            node=join)))
                continue
            if proj is not None and skip[0] == [proj, BatchNorm(BNMode.RUNNING)]:  # torchvision's downsample
                block = Residual(block.branch, block.scale, projbn=True)
            if skip[0] == list(block.skip_layers(shape)):
                names = paths[br].names + paths[sk].names
                return block, _Path([block], [join], names, paths[br].shape, join)
            rank = (not (proj is not None and paths[sk].layers[:1] == [proj]), len(paths[sk].layers))
            whys.append((rank, self.skip_obstacle(value, paths[sk], proj, join)))
        raise min(whys, key=lambda w: w[0])[1]

    def skip_obstacle(self, value: torch.fx.Node, skip: _Path, proj: Layer | None,
                      join: torch.fx.Node) -> NotLayer:
        """Why the skip path ``skip`` is not the identity or ``proj`` (a batch norm after the projection
        named at the batch norm)."""
        shown = " > ".join(format_layer(x) for x in skip.layers) or "the identity"
        want = "the identity" if proj is None else f"the projection {format_layer(proj)}"
        what = f"the skip connection from {value.name!r} is {shown}, not {want} of advdim's residual blocks"
        if proj is not None and len(skip.layers) == 2 and skip.layers[0] == proj \
                and isinstance(skip.layers[1], BatchNorm):
            return NotLayer(ObstacleKind.TOPOLOGY, f"{what} (a batch norm with batch statistics after the "
                            "projection)", "res(..., projbn=true) puts a batch norm with running statistics there",
                            node=skip.nodes[1])
        return NotLayer(ObstacleKind.TOPOLOGY, what, "a residual block's skip is the identity or a bias-free 1x1 "
                        "projection with the branch's stride", node=skip.nodes[0] if skip.nodes else join)


def _split_scale(layers: list[Layer]) -> tuple[list[Layer], float]:
    """A path's layers without its trailing constant factors, and their product."""
    scale, out = 1.0, list(layers)
    while out and isinstance(out[-1], Factor):
        scale *= out[-1].value
        out.pop()
    return out, scale


def _unfilled(spec: Spec, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The spec's network with its conv / dense tensors left unfilled (they are copied from the module,
    drawing them costs seconds on a ResNet-50) and every other tensor at its initial value (the
    norms' ``reset_parameters``); drawn as usual when a layer has tensors of another kind."""
    from advdim.build import build

    with torch.device("meta"):
        net = build(spec, seed=0, dtype=dtype, device="meta")
    others = [m for m in net.modules() if not isinstance(m, (nn.Conv2d, nn.Linear)) and (
        any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))]
    if not all(callable(getattr(m, "reset_parameters", None)) for m in others):
        return build(spec, seed=0, dtype=dtype, device=device)
    net.to_empty(device=device)
    with torch.no_grad():
        for m in others:
            cast(Any, m).reset_parameters()
    return net


def _reproduces(module: nn.Module, traced: Traced) -> str | None:
    """None when the spec's network with the module's weights gives the module's logits, else why not."""
    from advdim.gradients import mode

    p0 = next(iter(module.parameters()), None)
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    device = p0.device if p0 is not None else torch.device("cpu")
    net = _unfilled(traced.spec, dtype, device)
    weight_layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]  # weight_labels' order
    if len(weight_layers) != len(traced.weight_modules):
        return f"the trace names {len(traced.weight_modules)} weight layers, its network has {len(weight_layers)}"
    with torch.no_grad():
        for dst, name in zip(weight_layers, traced.weight_modules):
            src = _get(module, name)
            dst.weight.copy_(traced.weight(module, name))
            if dst.bias is not None:
                dst.bias.copy_(src.bias)
    x = torch.randn(2, *traced.spec.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(device, dtype)
    try:
        with torch.no_grad(), mode(module, False), mode(net, False):
            want, got = module(x), net(x)
    except Exception as e:  # noqa: BLE001 - the module fails on its own input shape: not reproducible
        return f"the module failed on the trace's test input: {first_line(e)}"
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return "the trace does not reproduce the module's output (its shape differs)"
    scale = max(1.0, float(want.abs().max()))
    err = float((want - got).abs().max())
    if not err <= 1000 * torch.finfo(dtype).eps * scale:
        return f"the trace does not reproduce the module's output (largest difference {err:.3g})"
    return None
