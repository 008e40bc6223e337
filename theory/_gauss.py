"""Expected q-norms of a vector of independent centred Gaussians with given variances (no torch,
no SciPy: ``advdim theory`` starts without them).

In the wide limit the coordinates of ``d_x f_k`` are centred Gaussians with the path-sum
variances ``sigma_i^2``; these functions turn a variance profile into the finite-d prediction
of ``E||g||_q``.  A profile is given as distinct variances and their multiplicities, so that a
map of 10^5 inputs with a handful of border classes costs a handful of terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from advdim.errors import AdvdimError


def abs_moment(r: float) -> float:
    """``E|Z|^r = 2^(r/2) Gamma((r+1)/2) / sqrt(pi)`` for ``Z ~ N(0, 1)``.

    >>> round(abs_moment(1), 6), round(abs_moment(2), 12)
    (0.797885, 1.0)
    """
    return math.exp(0.5 * r * math.log(2.0) + math.lgamma((r + 1) / 2) - 0.5 * math.log(math.pi))


def profile(variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct variances (rounded to 1e-12 of the largest) and their counts."""
    v = np.asarray(variances, dtype=np.float64).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise AdvdimError("a variance profile needs finite, non-negative variances")
    top = float(v.max())
    rounded = np.round(v / top, 12) * top if top > 0 else v
    values, counts = np.unique(rounded, return_counts=True)
    return values, counts.astype(np.float64)


def expected_q_norm(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``E||g||_q`` for independent ``g_i ~ N(0, values_j)`` (``counts_j`` coordinates each).

    * ``q = 1``: exact, ``sum_i sigma_i E|Z|``.
    * ``1 < q < inf``: ``X = ||g||_q^q`` has mean ``m = sum sigma_i^q E|Z|^q`` and variance
      ``s2 = sum sigma_i^(2q) (E|Z|^(2q) - (E|Z|^q)^2)``; ``E X^(1/q)`` by the second-order delta
      method, ``m^(1/q) (1 + (1/q)(1/q - 1) s2 / (2 m^2))`` (the Jensen gap, O(1/d)).
    * ``q = inf``: ``E max_i |g_i| = int_0^inf 1 - prod_i P(|g_i| <= t) dt`` (extreme-value term,
      exact for independent coordinates; it is not ``sigma sqrt(2 log 2d)`` at small d).

    >>> round(expected_q_norm(np.array([1.0]), np.array([1.0]), math.inf), 6)  # E|Z|
    0.797885
    """
    if math.isinf(q):
        return _expected_max(values, counts)
    if q < 1:
        raise AdvdimError(f"norm order q must be >= 1 or inf, got {q!r}")
    sig = np.sqrt(values)
    if q == 1:
        return float(abs_moment(1) * np.sum(counts * sig))
    mq = abs_moment(q)
    m = float(np.sum(counts * sig**q)) * mq
    if m == 0:
        return 0.0
    s2 = float(np.sum(counts * sig ** (2 * q))) * (abs_moment(2 * q) - mq**2)
    return m ** (1 / q) * (1 + (1 / q) * (1 / q - 1) * s2 / (2 * m * m))


def _expected_max(values: np.ndarray, counts: np.ndarray) -> float:
    keep = values > 0
    values, counts = values[keep], counts[keep]
    if values.size == 0:
        return 0.0
    sig = np.sqrt(values)
    n = float(counts.sum())
    peak = float(sig.max()) * math.sqrt(2 * math.log(2 * n + 1))
    top = float(sig.max()) * (math.sqrt(2 * math.log(2 * n + 1)) + 12.0)
    scale = 1.0 / (sig * math.sqrt(2))

    def tail(t: np.ndarray) -> np.ndarray:
        """``1 - prod_i P(|g_i| <= t)`` at the points ``t > 0`` (shape ``(m,)``)."""
        erf = _ERF(np.multiply.outer(t, scale)).astype(np.float64)  # (m, distinct variances)
        return -np.expm1(np.log(np.maximum(erf, 1e-300)) @ counts)

    return _quad(tail, 0.0, peak) + _quad(tail, peak, top)


_ERF = np.frompyfunc(math.erf, 1, 1)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(20)
_NODES2, _WEIGHTS2 = np.polynomial.legendre.leggauss(40)


def _quad(f: Callable[[np.ndarray], np.ndarray], a: float, b: float, rtol: float = 1e-11, depth: int = 30) -> float:
    """``int_a^b f`` by adaptive Gauss-Legendre: a panel is split until its 20- and 40-point rules
    agree to ``rtol`` of the whole integral's current estimate (``f`` vectorised, smooth).

    >>> round(_quad(np.exp, 0.0, 1.0), 14) == round(math.e - 1, 14)
    True
    """
    def rule(lo: float, hi: float, nodes: np.ndarray, weights: np.ndarray) -> float:
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        return half * float(weights @ f(mid + half * nodes))

    total = rule(a, b, _NODES2, _WEIGHTS2)
    stack = [(a, b, 0)]
    result = 0.0
    while stack:
        lo, hi, level = stack.pop()
        fine = rule(lo, hi, _NODES2, _WEIGHTS2)
        coarse = rule(lo, hi, _NODES, _WEIGHTS)
        if abs(fine - coarse) <= rtol * max(abs(total), 1e-300) or level >= depth:
            result += fine
        else:
            mid = 0.5 * (lo + hi)
            stack += [(lo, mid, level + 1), (mid, hi, level + 1)]
    return result
