"""Slope fits with bootstrap intervals over topologies, and the power analysis of the verdict.

The measured law of a family is ``M(d) = mean over topologies t of m_t(d)``, with ``m_t(d)`` the
Monte Carlo mean of ``||d_x f_k||_q`` of topology ``t`` instantiated at input dimension ``d``.
Its slope is the least-squares slope of ``log M`` against ``log d``.  Its sampling error is
estimated by a paired bootstrap over topologies (a resampled topology keeps its values at every
size, since a topology is drawn once and instantiated at each size).

Verdict (two-sided test of ``slope = predicted``): pass iff ``|slope - predicted| <= tol`` with
``tol = z_{1 - alpha/2} * se`` and ``alpha = 0.01``, so the true law is rejected with probability
``<= 0.01`` when the bootstrap standard error ``se`` is right; a planted exponent error ``delta``
is then detected with probability ``Phi((|delta| - tol) / se)`` (+ the negligible other tail),
which is ``>= 0.99`` for ``|delta| = 0.05`` as soon as ``se <= 0.05 / (z_{0.995} + z_{0.99})``
``= 0.0102``.  The default budget of ``advdim simulate`` is sized for that (``docs/simulate.md``).

    >>> d = np.array([192.0, 768.0, 3072.0])
    >>> values = np.outer(np.ones(50), d**0.5) * np.exp(np.random.default_rng(0).normal(0, 0.1, (50, 3)))
    >>> fit = fit_slope(d, values, seed=0)
    >>> abs(fit.slope - 0.5) < 0.05
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from advdim.errors import AdvdimError

#: false-rejection rate of every slope verdict
ALPHA = 0.01
#: the planted exponent error the default budget must detect with probability >= POWER
DELTA = 0.05
POWER = 0.99
#: largest standard error at which the test has the required power at DELTA
SE_FOR_POWER = DELTA / (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER))
BOOTSTRAP = 2000


def ols_slope(log_d: np.ndarray, log_m: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``log_m`` (..., S) against ``log_d`` (S,), vectorised over leading axes."""
    xc = log_d - log_d.mean()
    return ((log_m - log_m.mean(axis=-1, keepdims=True)) * xc).sum(axis=-1) / (xc**2).sum()


@dataclass(frozen=True)
class SlopeFit:
    """A fitted slope with its bootstrap distribution summary.

    Attributes:
        slope: slope of log mean-over-topologies against log d.
        se: bootstrap standard error.
        ci: 95% percentile bootstrap interval.
        intercept: the fitted ``log M`` at ``log d = 0``.
        means: ``M(d)`` per size; ``lo`` / ``hi``: 95% bootstrap interval of each mean.
        per_topology: the least-squares slope of each topology's own values.
    """

    slope: float
    se: float
    ci: tuple[float, float]
    intercept: float
    means: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    per_topology: tuple[float, ...]


def fit_slope(d: np.ndarray, values: np.ndarray, seed: int = 0, n_boot: int = BOOTSTRAP) -> SlopeFit:
    """Fit ``log M(d)`` against ``log d``; paired bootstrap over topologies (rows of ``values``).

    Args:
        d: input dimensions, shape ``(S,)``, ``S >= 2``.
        values: positive per-topology means, shape ``(T, S)``, ``T >= 2``.
    """
    d = np.asarray(d, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise AdvdimError(f"a slope needs at least 2 sizes, got {d.size}")
    if values.ndim != 2 or values.shape[1] != d.size or values.shape[0] < 2:
        raise AdvdimError(f"values must have shape (topologies >= 2, {d.size}), got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise AdvdimError("gradient norms must be positive and finite to fit a log-log slope")
    log_d = np.log(d)
    means = values.mean(axis=0)
    slope = float(ols_slope(log_d, np.log(means)))
    intercept = float(np.log(means).mean() - slope * log_d.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    boot_means = values[idx].mean(axis=1)  # (n_boot, S)
    boot = ols_slope(log_d, np.log(boot_means))
    lo, hi = np.percentile(boot_means, [2.5, 97.5], axis=0)
    per_topo = ols_slope(log_d, np.log(values))
    return SlopeFit(slope, float(boot.std(ddof=1)), (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
                    intercept, tuple(map(float, means)), tuple(map(float, lo)), tuple(map(float, hi)),
                    tuple(map(float, per_topo)))


def tolerance(se: float, alpha: float = ALPHA) -> float:
    """Half-width of the acceptance interval: ``z_{1-alpha/2} * se``."""
    return float(stats.norm.ppf(1 - alpha / 2) * se)


def power(se: float, delta: float = DELTA, alpha: float = ALPHA) -> float:
    """Probability that the verdict rejects a slope off by ``delta`` (normal approximation)."""
    if se <= 0:
        return 1.0
    tol = tolerance(se, alpha)
    return float(stats.norm.cdf((abs(delta) - tol) / se) + stats.norm.cdf((-abs(delta) - tol) / se))


def slope_test(measured: float, predicted: float, se: float, alpha: float = ALPHA) -> tuple[bool, float]:
    """``(passed, tol)``: passed iff ``|measured - predicted| <= z_{1-alpha/2} * se``."""
    tol = tolerance(se, alpha)
    return bool(abs(measured - predicted) <= tol), tol


def ratio_fit(measured: np.ndarray, predicted: np.ndarray, seed: int = 0,
              n_boot: int = BOOTSTRAP) -> tuple[float, float]:
    """Ratio ``sum measured / sum predicted`` over (topology, size) cells and its bootstrap SE over topologies.

    Args:
        measured, predicted: ``(T, S)`` arrays (e.g. E||d_x f||_2^2 per topology and size).
    """
    m = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    ratio = float(m.sum() / p.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m.shape[0], size=(n_boot, m.shape[0]))
    boot = m[idx].sum(axis=(1, 2)) / p[idx].sum(axis=(1, 2))
    return ratio, float(boot.std(ddof=1))


def z_value(alpha: float = ALPHA) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
