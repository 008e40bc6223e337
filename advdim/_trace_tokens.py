"""Recognise a token-readout network (a vision transformer) in a module's graph, for the exponent-only law.

A module that :func:`advdim.trace.trace` cannot read as a spec may still be a network the theory has
an exponent for (docs/theory.md, "Class-token and token-mean readouts"):

1. **patches**: the input reaches the network only through one convolution with kernel = stride,
   no padding, ``groups=1`` (a patch embedding), whose map is flattened into tokens
   (``x.flatten(2).transpose(1, 2)``, ``x.reshape(B, D, h*w).permute(0, 2, 1)``);
2. **constant prefix**: tokens that do not depend on the input may be concatenated in front (a class
   token, register tokens), and a constant added (a positional embedding);
3. **token-wise or attention**: every module on the tokens either acts on each token alone by the same
   function (checked numerically: perturbing one token moves only that token's output, and permuting
   the patch tokens permutes the output), or is softmax attention (``nn.MultiheadAttention`` without
   masks, timm's ``Attention``, modules whose class name ends in ``Attention``, ``nn.TransformerEncoderLayer``
   and ``nn.TransformerEncoder`` with ``batch_first=True`` and no mask; checked numerically:
   permuting the patch tokens permutes the output, and doubling every token leaves each output as it
   is, which an average over the tokens does and a sum does not); element-wise functions, residual
   additions and layer scales;
4. **readout**: the class token ``x[:, 0]`` (a constant prefix token) or the mean of the patch tokens
   (``x.mean(1)``, ``x[:, k:].mean(dim=1)``) gives a vector; anything may follow on that vector (a
   norm, a head).

:func:`read_tokens` returns a :class:`TokenReadout` or the reasons why the module is none (each node
that breaks the pattern, named by its module path or operation).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from advdim._trace_fx import dynamic_nodes, first_line, graph_of, node_shapes
from advdim._trace_layers import NotLayer
from advdim.gradients import mode
from advdim.theory._tokens import CLASS_TOKEN, TOKEN_MEAN

#: element-wise functions and methods that act on each token alone
_ELEMENTWISE_FUNCTIONS = {F.gelu, F.relu, F.silu, F.dropout, torch.relu, torch.tanh, torch.sigmoid, F.tanh,
                          F.sigmoid, F.hardswish, F.mish, F.elu, F.leaky_relu}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone", "float", "to", "type_as"}
#: attention modules by class: softmax over the tokens of scores q.k (no positional bias); torch's encoder
#: layers are softmax attention and token-wise layers (norms, MLP, residual additions) in one module
_ATTENTION_CLASSES = ("MultiheadAttention", "Attention", "SelfAttention", "TransformerEncoderLayer",
                      "TransformerEncoder")


@dataclass(frozen=True)
class TokenReadout:
    """A token-readout network at one input shape: ``kind`` (class token / token mean), the patch side,
    the number of patch tokens ``tokens`` and of constant prefix tokens, the width ``features``, and
    the attention modules that mix the tokens."""

    kind: str
    patch: int
    tokens: int
    prefix: int
    features: int
    attention: tuple[str, ...]

    def summary(self) -> str:
        return (f"{self.kind} readout of {self.tokens} patch tokens ({self.patch}x{self.patch} patches, "
                f"{self.features} features, {self.prefix} constant prefix token(s)), mixed by "
                f"{len(self.attention)} softmax attention module(s)")


@dataclass(frozen=True)
class _Role:
    what: str  # image, patches, tokens_t (B, D, L), tokens (B, L, D), tuple (an attention's output), vector
    prefix: int = 0
    readout: str | None = None


class _NotTokens(Exception):  # noqa: N818 - internal: one reason
    pass


def read_tokens(module: nn.Module, input_shape: Sequence[int]) -> TokenReadout | list[str]:
    """The module's :class:`TokenReadout` at ``input_shape`` (C, H, W), or every reason it is none."""
    shape = tuple(int(s) for s in input_shape)
    try:
        gm, leaves = graph_of(module)
        shapes, _ = node_shapes(gm, module, shape)
    except NotLayer as e:
        return [e.what]
    if leaves:
        return [f"torch.fx cannot trace inside {p!r}" for p in leaves]
    try:
        return _Reader(gm, module, shapes).read()
    except Exception as e:  # noqa: BLE001 - a graph this reader does not foresee is no token readout, not a crash
        return [f"not read as a token readout: {first_line(e)}"]


class _Reader:
    def __init__(self, gm: torch.fx.GraphModule, module: nn.Module, shapes: dict[torch.fx.Node, tuple[int, ...]]):
        self.gm, self.module, self.shapes = gm, module, shapes
        self.network, _ = dynamic_nodes(gm)
        self.roles: dict[torch.fx.Node, _Role] = {}
        self.reasons: list[str] = []
        self.patch = 0
        self.attention: list[str] = []
        self.readout: _Role | None = None
        self.modules = dict(module.named_modules())

    def read(self) -> TokenReadout | list[str]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                out = node.args[0]
                role = self.roles.get(out) if isinstance(out, torch.fx.Node) else None
                if role is None or role.what != "vector":
                    self.reasons.append("the output is not computed from a class token or a token mean")
                continue
            if node not in self.network:
                continue
            try:
                self.roles[node] = self._role(node)
            except _NotTokens as e:
                self.reasons.append(str(e))
                self.roles[node] = _Role("opaque")
        if self.readout is None and not self.reasons:
            self.reasons.append("no class-token select x[:, 0] or token mean x.mean(1) was found")
        if self.reasons:
            return self.reasons
        assert self.readout is not None and self.readout.readout is not None
        tokens = next(s for n, s in self.shapes.items() if self.roles.get(n) == _Role("patches"))
        return TokenReadout(self.readout.readout, self.patch, tokens[2] * tokens[3], self.readout.prefix,
                            tokens[1], tuple(self.attention))

    # ------------------------------------------------------------------------------------------
    def _ins(self, node: torch.fx.Node) -> list[tuple[torch.fx.Node, _Role]]:
        return [(a, self.roles[a]) for a in node.all_input_nodes if a in self.network and a in self.roles]

    def _where(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target!r} ({type(self.modules[str(node.target)]).__name__})"
        name = getattr(node.target, "__name__", str(node.target))
        return f"the {'method .' if node.op == 'call_method' else 'function '}{name}() at node {node.name!r}"

    def _role(self, node: torch.fx.Node) -> _Role:
        if node.op == "placeholder":
            return _Role("image")
        ins = self._ins(node)
        if any(r.what == "opaque" for _, r in ins):
            return _Role("opaque")
        kinds = {r.what for _, r in ins}
        if kinds == {"vector"}:  # the head: anything on the read-out vector
            return ins[0][1]
        if node.op == "call_module":
            return self._module(node, ins)
        if node.op == "call_method":
            return self._method(node, ins)
        if node.op == "call_function":
            return self._function(node, ins)
        raise _NotTokens(f"{self._where(node)} is not part of a token-readout network")

    def _one(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]], *what: str) -> _Role:
        if len({a for a, _ in ins}) != 1 or ins[0][1].what not in what:
            raise _NotTokens(f"{self._where(node)} acts on {', '.join(sorted({r.what for _, r in ins}))} "
                             f"where a token-readout network has {' or '.join(what)}")
        return ins[0][1]

    def _module(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]]) -> _Role:
        m = self.modules[str(node.target)]
        role = self._one(node, ins, "image", "tokens")
        if role.what == "image":
            if not (isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.kernel_size[0] == m.kernel_size[1]
                    and m.padding in (0, (0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1):
                raise _NotTokens(f"{self._where(node)} reads the input but is no patch embedding (a Conv2d with "
                                 "square kernel = stride, no padding, groups=1)")
            _, _, h, w = self.shapes[node.args[0]]  # type: ignore[index]
            if h % m.stride[0] or w % m.stride[1]:
                raise _NotTokens(f"{self._where(node)}: patches of {m.stride[0]} do not tile the {h}x{w} input")
            self.patch = m.kernel_size[0]
            return _Role("patches")
        name = type(m).__name__
        if name.endswith(_ATTENTION_CLASSES):
            self._attention(node, m, role)
            self.attention.append(str(node.target))
            return _Role("tuple" if isinstance(m, nn.MultiheadAttention) else "tokens", role.prefix)
        self._tokenwise(node, m, role)
        return role

    def _call(self, node: torch.fx.Node, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        kwargs = {k: v for k, v in node.kwargs.items() if not isinstance(v, torch.fx.Node)}
        args = [x if isinstance(a, torch.fx.Node) else a for a in node.args]
        with torch.no_grad(), mode(m, False):
            out = m(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _probe(self, node: torch.fx.Node, m: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, m(x), perm)``: a Gaussian batch of the node's input shape, its output, and a permutation
        of the patch tokens (the prefix kept in place)."""
        shape = self.shapes[node.args[0]]  # type: ignore[index]
        p0 = next(iter(m.parameters()), None)
        dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, *shape[1:], generator=gen).to(dtype)
        return x, self._call(node, m, x), torch.randperm(shape[1], generator=gen)

    def _equivariant(self, node: torch.fx.Node, m: nn.Module, role: _Role, x: torch.Tensor, y: torch.Tensor,
                     perm: torch.Tensor) -> bool:
        idx = torch.cat([torch.arange(role.prefix), role.prefix + perm[perm < x.shape[1] - role.prefix]])
        y2 = self._call(node, m, x[:, idx])
        return y2.shape == y.shape and _close(y2, y[:, idx])

    def _tokenwise(self, node: torch.fx.Node, m: nn.Module, role: _Role) -> None:
        x, y, perm = self._probe(node, m)
        if y.dim() != 3 or y.shape[:2] != x.shape[:2]:
            raise _NotTokens(f"{self._where(node)} changes the number of tokens ({tuple(x.shape)} -> {tuple(y.shape)})")
        j = x.shape[1] - 1
        x2 = x.clone()
        x2[:, j] += torch.randn(x2[:, j].shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
        y2 = self._call(node, m, x2)
        if not _close(y2[:, :j], y[:, :j]):
            raise _NotTokens(f"{self._where(node)} mixes the tokens and is no softmax attention (one token's change "
                             "moves the others' outputs)")
        if not self._equivariant(node, m, role, x, y, perm):
            raise _NotTokens(f"{self._where(node)} treats the tokens differently by position")

    def _attention(self, node: torch.fx.Node, m: nn.Module, role: _Role) -> None:
        if isinstance(m, nn.MultiheadAttention):
            if len({a for a in node.args[:3]}) != 1 or not m.batch_first:
                raise _NotTokens(f"{self._where(node)} is no self-attention over (B, L, D) tokens (query = key = "
                                 "value, batch_first=True)")
            if any(node.kwargs.get(k) is not None for k in ("attn_mask", "key_padding_mask")):
                raise _NotTokens(f"{self._where(node)} has a mask")
        else:
            encoders = m.layers if isinstance(m, nn.TransformerEncoder) else [m] \
                if isinstance(m, nn.TransformerEncoderLayer) else []
            if not all(layer.self_attn.batch_first for layer in encoders):
                raise _NotTokens(f"{self._where(node)} is not batch_first: its tokens are not the (B, L, D) axis 1")
            if len(node.args) > 1 or any(isinstance(v, torch.fx.Node) or (v is not None and k != "is_causal")
                                         or (k == "is_causal" and v) for k, v in node.kwargs.items()):
                raise _NotTokens(f"{self._where(node)} is called with a mask or extra inputs")
        x, y, perm = self._probe(node, m)
        if y.shape != x.shape or not self._equivariant(node, m, role, x, y, perm):
            raise _NotTokens(f"{self._where(node)} is not permutation-equivariant over the tokens (a positional bias, "
                             "windows or a mask): not plain softmax attention")
        # softmax attention averages: with every token doubled, each query sees each key twice and its weights
        # halve, so every output is unchanged; a sum over the tokens (a weight that does not fall as 1/N) doubles
        if not _close(self._call(node, m, torch.cat([x, x], dim=1)), torch.cat([y, y], dim=1)):
            raise _NotTokens(f"{self._where(node)} does not average over the tokens (its outputs change when every "
                             "token is doubled): not softmax attention")

    def _method(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]]) -> _Role:
        name, args = str(node.target), node.args[1:]
        role = self._one(node, ins, "patches", "tokens_t", "tokens")
        out = self.shapes.get(node)
        if role.what == "patches" and name in ("flatten", "reshape", "view") and out is not None and len(out) == 3 \
                and out[1] == self.shapes[node.args[0]][1]:  # type: ignore[index]
            return _Role("tokens_t")
        if role.what == "tokens_t" and ((name == "transpose" and set(map(_axis3, args)) == {1, 2})
                                         or (name == "permute" and tuple(map(_axis3, args)) == (0, 2, 1))):
            return _Role("tokens")
        if role.what == "tokens" and name in _ELEMENTWISE_METHODS:
            return role
        if role.what == "tokens" and name == "mean":
            return self._mean(node, role, args[0] if args else node.kwargs.get("dim"))
        raise _NotTokens(f"{self._where(node)} on {role.what} is not part of a token-readout network")

    def _mean(self, node: torch.fx.Node, role: _Role, dim: Any) -> _Role:
        if _axis3(dim) != 1:
            raise _NotTokens(f"{self._where(node)} averages over another axis than the tokens")
        if role.prefix:
            raise _NotTokens(f"{self._where(node)} averages the constant prefix tokens with the patch tokens")
        return self._read(_Role("vector", 0, TOKEN_MEAN))

    def _read(self, role: _Role) -> _Role:
        if self.readout is not None:
            raise _NotTokens("the tokens are read out twice")
        self.readout = role
        return role

    def _function(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]]) -> _Role:
        fn = node.target
        if fn is torch.cat:
            return self._cat(node, ins)
        if fn in (operator.add, torch.add) and len(node.args) == 2:
            roles = {r for _, r in ins}
            if len(roles) == 1 and next(iter(roles)).what == "tokens":
                return next(iter(roles))  # a residual addition, or a constant (a positional embedding)
        if fn in (operator.mul, torch.mul, operator.truediv) and len(ins) == 1 and ins[0][1].what == "tokens":
            const = next(a for a in node.args if a is not ins[0][0])
            cshape = self.shapes.get(const) if isinstance(const, torch.fx.Node) else ()
            if cshape is not None and (len(cshape) < 2 or cshape[-2] == 1):
                return ins[0][1]  # a layer scale (one factor per feature), or a number
        if fn in _ELEMENTWISE_FUNCTIONS:
            return self._one(node, ins, "tokens")
        if fn is torch.mean:
            role = self._one(node, ins, "tokens")
            return self._mean(node, role, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        if fn is operator.getitem:
            return self._getitem(node, ins)
        raise _NotTokens(f"{self._where(node)} is not part of a token-readout network")

    def _cat(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]]) -> _Role:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if _axis3(dim) != 1 or not isinstance(parts, (list, tuple)):
            raise _NotTokens(f"{self._where(node)} concatenates other than along the tokens")
        network = [i for i, p in enumerate(parts) if p in self.network]
        if network != [len(parts) - 1] or self.roles[parts[-1]].what != "tokens":
            raise _NotTokens(f"{self._where(node)} concatenates paths of the input (only constant tokens may be put "
                             "in front of the patch tokens)")
        added = sum(self.shapes[p][1] for p in parts[:-1])
        return _Role("tokens", self.roles[parts[-1]].prefix + added)

    def _getitem(self, node: torch.fx.Node, ins: list[tuple[torch.fx.Node, _Role]]) -> _Role:
        role = self._one(node, ins, "tuple", "tokens")
        idx = node.args[1]
        if role.what == "tuple":
            if idx != 0:
                raise _NotTokens(f"{self._where(node)} reads the attention weights")
            return _Role("tokens", role.prefix)
        if not isinstance(idx, tuple) or len(idx) < 2 or idx[0] != slice(None) or any(
                i not in (Ellipsis, slice(None)) for i in idx[2:]):
            raise _NotTokens(f"{self._where(node)} indexes the tokens other than x[:, i] or x[:, k:]")
        if idx[1] == 0:
            if role.prefix < 1:
                raise _NotTokens(f"{self._where(node)} reads patch token 0 (no class token in front): one patch's own "
                                 "path, not a readout over the tokens")
            return self._read(_Role("vector", role.prefix, CLASS_TOKEN))
        if isinstance(idx[1], slice) and idx[1].stop is None and idx[1].step in (None, 1) and idx[1].start == \
                role.prefix:
            return _Role("tokens", 0)
        raise _NotTokens(f"{self._where(node)} selects tokens other than the class token or all patch tokens")


def _axis3(a: Any) -> int | None:
    """An axis of a (B, L, D) tensor as 0, 1 or 2 (negative axes counted from the end)."""
    if isinstance(a, (tuple, list)) and len(a) == 1:
        a = a[0]
    return a % 3 if isinstance(a, int) and not isinstance(a, bool) else None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    tol = 1e-4 if a.dtype in (torch.float16, torch.bfloat16) else 1e-5
    return bool(torch.isfinite(a).all()) and bool(((a - b).abs() <= tol * scale).all())


def describe(got: TokenReadout | list[str]) -> str:
    """One line: the readout found, or the first reason and how many more."""
    if isinstance(got, TokenReadout):
        return got.summary()
    more = f" (and {len(got) - 1} more)" if len(got) > 1 else ""
    return (got[0] + more) if got else "not a token-readout network"


__all__ = ["CLASS_TOKEN", "TOKEN_MEAN", "TokenReadout", "describe", "read_tokens"]
