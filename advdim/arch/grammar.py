"""The parser of the one-line text form of specs: ``CxHxW > layer > layer ...`` (its formatting is
:mod:`advdim.arch.text`).

A residual block nests a chain of layers: ``res(LAYER > LAYER > ..., scale=A)``; a ``>`` inside
the parentheses belongs to the branch, and blocks nest::

    >>> text = ("3x8x8 > conv(16) > relu > res(conv(16) > relu > conv(16),scale=0.5) > "
    ...         "res(layernorm > attn(4)) > batchnorm(mode=batch) > gelu > globalavgpool > dense(10)")
    >>> from advdim.arch.text import format_spec
    >>> format_spec(parse(text)) == text
    True
    >>> parse("3x8x8 > res(conv(4) > relu, scale=2) > flatten > dense(2)").layers[0].scale
    2.0
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from advdim.arch import layers as _layers
from advdim.arch.text import _LAYER_RE, _LONG, _shown, check_ascii, read_int
from advdim.errors import SpecError

if TYPE_CHECKING:
    from advdim.arch.layers import Layer, Spec


def _split_top(text: str, sep: str, where: str) -> list[str]:
    """``text`` split at each ``sep`` outside parentheses; unbalanced parentheses, and parentheses
    nested deeper than the residual blocks may nest, are an error (checked before any recursion)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > _layers.MAX_NESTING + 1:  # a res per level, and the innermost layer's arguments
                raise SpecError(f"{where}: {_layers.too_deep()}")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SpecError(f"{where}: unbalanced parentheses (a ')' without its '(') in {_shown(text.strip())}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SpecError(f"{where}: unbalanced parentheses ({depth} '(' not closed) in {_shown(text.strip())}")
    parts.append(text[start:])
    return parts


def _parse_branch(where: str, raw: str) -> tuple[Layer, ...]:
    """A residual branch from its text: layers separated by ``>``."""
    return tuple(_parse_layer(f"{where}: branch layer {j}", part) for j, part in enumerate(_split_top(raw, ">", where)))


def _parse_layer(where: str, text: str) -> Layer:
    """One layer ``kind(arg, ..., key=value, ...)`` from its text (parentheses already balanced)."""
    lm = _LAYER_RE.match(text)
    if lm is None:
        raise SpecError(f"{where}: cannot read {_shown(text.strip())}")
    kind, argtext = lm.group(1), lm.group(2)
    positional: list[str] = []
    named: dict[str, Any] = {}
    if argtext is not None and not argtext.strip():
        cls = _layers.LAYER_TYPES.get(kind.lower())
        # a kind with a required argument (conv, dense) says which is missing, and res that its branch is empty
        if cls not in (None, _layers.Residual) and all(f.default is not MISSING for f in fields(cls)):
            raise SpecError(f"{where} {kind}: empty argument list '()': write {kind!r} alone for the defaults")
    if argtext is not None and argtext.strip():
        for item in _split_top(argtext, ",", f"{where} {kind}"):
            key_value = _split_top(item, "=", f"{where} {kind}")
            if len(key_value) > 1:
                key = key_value[0].strip().lower()
                if key in named:
                    raise SpecError(f"{where} {kind}: argument {_LONG.get(key, key)!r} given twice")
                named[key] = "=".join(key_value[1:]).strip()
            elif named:
                raise SpecError(f"{where} {kind}: positional argument after a named one")
            else:
                positional.append(item.strip())
    return _layers.make_layer(where, kind, positional, named, _parse_branch)


def parse(text: str) -> Spec:
    """Parse the one-line text form (see :func:`format_spec`).

    Text that is not ASCII, that nests residual blocks deeper than ``MAX_NESTING`` or that holds
    more than ``MAX_LAYERS`` layers is refused before any layer is read."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty spec text")
    check_ascii("spec text", text)
    if text.count(">") > _layers.MAX_LAYERS:  # each '>' is followed by a layer
        raise _layers.too_many_layers()
    parts = _split_top(text, ">", "spec text")
    head, body = parts[0].strip(), parts[1:]
    m = re.fullmatch(r"([0-9]+)x([0-9]+)x([0-9]+)", head.replace(" ", ""))
    if m is None:
        raise SpecError(f"spec text must start with the input shape CxHxW, got {_shown(head)}")
    shape = tuple(read_int("spec text", "the input shape", m.group(i)) for i in (1, 2, 3))
    layers = [_parse_layer(f"layer {i}", part) for i, part in enumerate(body)]
    return _layers.Spec(shape, tuple(layers))
