"""The text form of layers and specs, and the reading of the numbers in it.

Formatting needs only what every layer record has (``kind`` and ``args()``), so this module imports no
layer class: :mod:`advdim.arch.layers` names layers in its messages with it, and the parser
(:mod:`advdim.arch.grammar`) reads numbers with it.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from advdim.errors import SpecError

if TYPE_CHECKING:
    from advdim.arch.layers import Layer, Spec

_SHORT = {"kernel": "k", "stride": "s", "dilation": "dil", "padding": "pad", "size": "size"}
_LONG = {v: k for k, v in _SHORT.items()}
_POSITIONAL = {"conv": ("out_channels", "kernel"), "dense": ("out_features",), "avgpool": ("size",),
               "maxpool": ("size",), "attn": ("heads",), "res": ("branch",), "scale": ("factor",)}


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
    if isinstance(value, tuple) and value and all(hasattr(x, "kind") and hasattr(x, "args") for x in value):
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
