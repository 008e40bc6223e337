"""The one-line text form of specs: ``CxHxW > layer > layer ...``, formatted and parsed.

A residual block nests a chain of layers: ``res(LAYER > LAYER > ..., scale=A)``; a ``>`` inside
the parentheses belongs to the branch, and blocks nest::

    >>> text = ("3x8x8 > conv(16) > relu > res(conv(16) > relu > conv(16),scale=0.5) > "
    ...         "res(layernorm > attn(4)) > batchnorm(mode=batch) > gelu > globalavgpool > dense(10)")
    >>> format_spec(parse(text)) == text
    True
    >>> parse("3x8x8 > res(conv(4) > relu, scale=2) > flatten > dense(2)").layers[0].scale
    2.0
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from advdim.arch import layers as _layers  # layers use the formatter for their messages: bound late
from advdim.errors import SpecError

if TYPE_CHECKING:
    from advdim.arch.layers import Layer, Spec


_SHORT = {"kernel": "k", "stride": "s", "dilation": "dil", "padding": "pad", "size": "size"}
_LONG = {v: k for k, v in _SHORT.items()}
_POSITIONAL = {"conv": ("out_channels", "kernel"), "dense": ("out_features",), "avgpool": ("size",),
               "maxpool": ("size",), "attn": ("heads",), "res": ("branch",)}


def format_layer(layer: Layer) -> str:
    """Text form of one layer, e.g. ``conv(16,k=3,s=2,pad=zeros)`` or ``res(conv(4) > relu,scale=0.5)``."""
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
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, tuple) and all(isinstance(x, _layers.Layer) for x in value):
        return " > ".join(format_layer(x) for x in value)
    return str(value)


def format_spec(spec: Spec) -> str:
    """One-line text form: ``CxHxW > layer > layer ...``; ``parse`` inverts it."""
    head = "x".join(str(n) for n in spec.input_shape)
    return " > ".join([head, *(format_layer(layer) for layer in spec.layers)])


_LAYER_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.IGNORECASE | re.DOTALL | re.ASCII)
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

#: the longest integer (in digits) and the longest other number (in characters) a spec may hold: a
#: size or a width of a trillion is absurd, and every float reads back from its shortest repr
#: (at most 24 characters); longer numbers are refused before Python reads them (its int() refuses
#: over 4300 digits with a traceback)
MAX_INT_DIGITS = 12
MAX_FLOAT_CHARS = 32


def check_ascii(where: str, text: str) -> None:
    """Refuse any non-ASCII character: Python's int(), float() and lower() would read full-width
    digits (``\uff16\uff14`` as 64) or the Kelvin sign (U+212A) as ``k``, so a spec could mean
    something other than what it shows."""
    for i, ch in enumerate(text):
        if not ch.isascii():
            raise SpecError(f"{where}: non-ASCII character {ch!r} (U+{ord(ch):04X}) at position {i}: "
                            "write specs in ASCII (digits 0-9, letters a-z)")


def read_int(where: str, name: str, raw: str) -> int:
    """An integer from its text: ASCII digits with an optional sign, at most ``MAX_INT_DIGITS``."""
    raw = raw.strip()
    if not _INT_RE.fullmatch(raw):
        raise SpecError(f"{where}: {name} must be an integer, got {_shown(raw)}")
    digits = len(raw.lstrip("+-"))
    if digits > MAX_INT_DIGITS:
        raise SpecError(f"{where}: {name} has {digits} digits, more than the {MAX_INT_DIGITS} an integer of a spec "
                        "may have")
    return int(raw)


def read_float(where: str, name: str, raw: str) -> float:
    """A finite number from its text (``0.5``, ``-1.5e-07``, ``2``), at most ``MAX_FLOAT_CHARS``
    characters; ``nan``, ``inf``, ``1_0`` and numbers that overflow are refused."""
    raw = raw.strip()
    if len(raw) > MAX_FLOAT_CHARS:
        raise SpecError(f"{where}: {name} is a number of {len(raw)} characters, more than the {MAX_FLOAT_CHARS} a "
                        "spec may hold")
    if not _FLOAT_RE.fullmatch(raw) or not math.isfinite(float(raw)):
        raise SpecError(f"{where}: {name} must be a finite number, got {raw!r}")
    return float(raw)


def json_int(where: str, name: str, raw: Any) -> int:
    """An integer from JSON: an int (not a bool) of at most ``MAX_INT_DIGITS`` digits, or its text."""
    if isinstance(raw, str):
        check_ascii(where, raw)
        return read_int(where, name, raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise SpecError(f"{where}: bad value {_shown(raw)} for {name}")
    if abs(raw) >= 10**MAX_INT_DIGITS:
        raise SpecError(f"{where}: {name} has more than the {MAX_INT_DIGITS} digits an integer of a spec may have")
    return raw


def _shown(raw: Any) -> str:
    """``repr(raw)``, cut to 60 characters (a message stays one short line)."""
    text = repr(raw)
    return text if len(text) <= 60 else f"{text[:57]}..."


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


def _parse_value(where: str, name: str, raw: str) -> Any:
    """One argument from its text (``where``: ``"layer 2 conv"``, names the layer in messages)."""
    raw = raw.strip()
    if name == "padding":
        try:
            return _layers.Padding.parse(raw)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
    if name == "mode":
        try:
            return _layers.BNMode.parse(raw)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
    if name == "bias":
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise SpecError(f"{where}: bias must be true or false, got {_shown(raw)}")
    if name == "branch":
        return tuple(_parse_layer(f"{where}: branch layer {j}", part)
                     for j, part in enumerate(_split_top(raw, ">", where)))
    if name == "scale":
        return read_float(where, "scale", raw)
    return read_int(where, name, raw)


def _json_value(where: str, name: str, raw: Any) -> Any:
    """One argument from its JSON value (strings are read as text)."""
    if isinstance(raw, str):
        check_ascii(where, raw)
        return _parse_value(where, name, raw)
    if name == "bias" and isinstance(raw, bool):
        return raw
    if name == "branch" and isinstance(raw, list):
        return tuple(_layers.layer_from_json(item, f"{where}: branch layer {j}") for j, item in enumerate(raw))
    if name == "scale" and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if isinstance(raw, int):
            raw = float(json_int(where, name, raw))
        if not math.isfinite(raw):
            raise SpecError(f"{where}: scale must be a finite number, got {raw!r}")
        return raw
    if name not in ("bias", "padding", "mode", "branch", "scale") and isinstance(raw, int) \
            and not isinstance(raw, bool):
        return json_int(where, name, raw)
    raise SpecError(f"{where}: bad value {_shown(raw)} for {name}")


def _make_layer(where: int | str, kind: str, positional: list[str], named: dict[str, Any]) -> Layer:
    """The record of ``kind`` from its arguments (text, or JSON values); ``where`` names it in
    messages: ``"layer 2"`` (an int ``i`` stands for ``"layer i"``)."""
    where = f"layer {where}" if isinstance(where, int) else where
    if not isinstance(kind, str):
        raise SpecError(f"{where}: the layer kind must be a word, got {_shown(kind)}")
    check_ascii(where, kind)
    kind = kind.lower()
    cls = _layers.LAYER_TYPES.get(kind)
    if cls is None:
        raise SpecError(f"{where}: unknown layer {_shown(kind)} (known: {', '.join(_layers.LAYER_TYPES)})")
    at = f"{where} {kind}"
    names = [f.name for f in fields(cls)]
    pos_names = _POSITIONAL.get(kind, ())
    if len(positional) > len(pos_names):
        raise SpecError(f"{at}: too many positional arguments {_shown(positional)}")
    kwargs: dict[str, Any] = {}
    for name, raw in zip(pos_names, positional):
        kwargs[name] = _parse_value(at, name, raw)
    for key, raw in named.items():
        if not isinstance(key, str):
            raise SpecError(f"{at}: unknown argument {_shown(key)}")
        name = _LONG.get(key, key)
        if name not in names:
            raise SpecError(f"{at}: unknown argument {_shown(key)}")
        if name in kwargs:
            raise SpecError(f"{at}: argument {name!r} given twice")
        kwargs[name] = _json_value(at, name, raw)
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in kwargs]
        raise SpecError(f"{at}: missing argument(s) {missing}") from None


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
    return _make_layer(where, kind, positional, named)


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
