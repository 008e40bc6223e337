"""Norm orders without torch: validation of ``q >= 1`` (or ``inf``) and the dual exponent.

Shared by the symbolic side (``advdim.theory``, which must not import torch) and the numeric one.

    >>> dual(1), dual(2.0), check_q("inf")
    (inf, 2.0, inf)
"""

from __future__ import annotations

import math

from advdim.errors import AdvdimError


def check_q(q: float | str) -> float:
    """Validate a norm order: a number >= 1 or ``inf`` (also the strings ``"inf"``)."""
    if isinstance(q, str):
        text = q.strip().lower()
        if text in ("inf", "infinity", "oo"):
            return math.inf
        try:
            q = float(text)
        except ValueError:
            raise AdvdimError(f"norm order q must be a number >= 1 or inf, got {text!r}") from None
    if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or q < 1:
        raise AdvdimError(f"norm order q must be >= 1 or inf, got {q!r}")
    return float(q)


def dual(p: float) -> float:
    """The dual exponent ``q`` with ``1/p + 1/q = 1`` (``1 <-> inf``)."""
    p = check_q(p)
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)
