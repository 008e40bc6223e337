"""The graph of a module by ``torch.fx``, read past the submodules it cannot trace (for :mod:`advdim.trace`).

:func:`graph_of` traces the module in eval mode (where gradients are measured: ``self.training``
branches take their eval side).  When ``torch.fx`` fails inside a submodule (data-dependent
control flow, a call it cannot make symbolic), the innermost module whose forward failed is made a
leaf and the whole module is traced again, at most :data:`MAX_RETRIES` times; every leaf so made
is an :class:`~advdim._trace_layers.Obstacle`.  :func:`node_shapes` then runs the graph once on a
Gaussian input to learn every node's output shape, so that a reading can go on past an obstacle.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from advdim._trace_layers import NotLayer, Obstacle, ObstacleKind, read_whole
from advdim.gradients import mode

#: how many times a module is traced again with one more submodule made a leaf
MAX_RETRIES = 32


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _Tracer(torch.fx.Tracer):
    """``torch.fx``'s tracer, reading whole the modules of :func:`read_whole` and those in ``leaves``
    (qualified names); ``failed`` is the innermost module whose forward raised."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: tuple[str, nn.Module] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or read_whole(m) or super().is_leaf_module(
            m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module sees the exception first
                try:
                    self.failed = (self.path_of_module(m), m)
                except NameError:  # a module not registered in the root: the caller's failure
                    pass
            raise


def _concrete_args(module: nn.Module) -> dict[str, Any]:
    """The defaults of forward's arguments after the first (timm's ``attn_mask=None``): fixed, not inputs."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params[1:]
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}


def graph_of(module: nn.Module) -> tuple[torch.fx.GraphModule, dict[str, Obstacle]]:
    """The module's graph module (named after its class) and the obstacles of the submodules
    made leaves; :class:`NotLayer` when ``torch.fx`` fails in the module's own forward."""
    leaves: dict[str, Obstacle] = {}
    concrete = _concrete_args(module)
    for _ in range(MAX_RETRIES + 1):
        tracer = _Tracer(set(leaves))
        try:
            with mode(module, False):
                graph = tracer.trace(module, concrete_args=concrete or None)
        except Exception as e:  # noqa: BLE001 - any failure of the tracer is an obstacle
            if tracer.failed is None or tracer.failed[0] in leaves or not tracer.failed[0]:
                raise NotLayer(ObstacleKind.FX, f"torch.fx cannot trace the module: {first_line(e)}",
                               "write forward without data-dependent control flow") from None
            path, m = tracer.failed
            leaves[path] = Obstacle(path, type(m).__name__, ObstacleKind.FX,
                                    f"torch.fx cannot trace inside {path!r} ({type(m).__name__}): {first_line(e)}",
                                    "write its forward without data-dependent control flow, or with advdim's layers")
            continue
        gm = torch.fx.GraphModule(module, graph, class_name=type(module).__name__)
        gm.graph.eliminate_dead_code()
        return gm, leaves
    raise NotLayer(ObstacleKind.FX, f"torch.fx cannot trace inside more than {MAX_RETRIES} submodules (the first: "
                   f"{', '.join(list(leaves)[:3])})", "write their forwards without data-dependent control flow")


def dynamic_nodes(gm: torch.fx.GraphModule) -> tuple[set[torch.fx.Node], set[torch.fx.Node]]:
    """``(network, sizes)``: the nodes that depend on the input's values, and those that depend only
    on its shape or on fixed arguments (``x.size(0)``, ``x.shape[2] == 32``, timm's ``_assert``, the
    check of a concrete argument); the other nodes are constants (parameters read directly, and what
    is computed from them)."""
    network: set[torch.fx.Node] = set()
    sizes: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        ins = node.all_input_nodes
        if node.op == "placeholder":  # one with a default is a concrete argument (timm's is_causal=False)
            (sizes if node.args else network).add(node)
        elif (node.op == "call_method" and node.target in ("size", "dim")) or (
                node.op == "call_function" and node.target is getattr and len(node.args) > 1
                and node.args[1] in ("shape", "ndim")):
            sizes.add(node)
        elif any(a in network for a in ins):
            network.add(node)
        elif ins and all(a in sizes for a in ins):  # an expanded class token is a constant, not a size
            sizes.add(node)
    return network, sizes


class _Shapes(torch.fx.Interpreter):
    """Runs the graph, keeping each node's output shape (a tensor's), and the value of each tensor
    computed from parameters alone whose entries are all equal (a layer scale at initialisation)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[torch.fx.Node, tuple[int, ...]] = {}
        self.uniform: dict[torch.fx.Node, float] = {}
        self.constant: set[torch.fx.Node] = set()

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.op == "get_attr" or (n.op != "placeholder" and n.all_input_nodes and all(
                a in self.constant for a in n.all_input_nodes)):
            self.constant.add(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(int(s) for s in out.shape)
            if n in self.constant and out.numel() and out.is_floating_point():
                first = out.flatten()[0]
                if bool((out == first).all()):
                    self.uniform[n] = float(first)
        return out


def node_shapes(gm: torch.fx.GraphModule, module: nn.Module, input_shape: tuple[int, ...],
                ) -> tuple[dict[torch.fx.Node, tuple[int, ...]], dict[torch.fx.Node, float]]:
    """Each node's output shape on a Gaussian batch of two (eval mode), batch axis included, and the
    value of each constant tensor of equal entries; :class:`NotLayer` when the module fails on that input."""
    p0 = next(iter(module.parameters()), None)
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    device = p0.device if p0 is not None else torch.device("cpu")
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = _Shapes(gm)
    try:
        with torch.no_grad(), mode(module, False):
            run.run(x.to(device, dtype))
    except Exception as e:  # noqa: BLE001 - the module fails on its own input shape
        raise NotLayer(ObstacleKind.INTERFACE, f"the module fails on an input of shape {(2, *input_shape)}: "
                       f"{first_line(e)}", "give the input shape the module takes") from None
    return run.shapes, run.uniform
