"""The one-line text form of specs: ``CxHxW > layer > layer ...``, formatted and parsed."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from advdim.arch import layers as _layers  # layers use the formatter for their messages: bound late
from advdim.errors import SpecError

if TYPE_CHECKING:
    from advdim.arch.layers import Layer, Spec


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
            return _layers.Padding.parse(raw)
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
    cls = _layers.LAYER_TYPES.get(kind)
    if cls is None:
        raise SpecError(f"layer {index}: unknown layer {kind!r} (known: {', '.join(_layers.LAYER_TYPES)})")
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
    return _layers.Spec((int(m.group(1)), int(m.group(2)), int(m.group(3))), tuple(layers))
