"""The one statistics module: slope fits over independent units, intervals, power, prefactor
ratios, the consistency test against ``d^(1/q - 1/2)``, and family-wise control of verdicts.

Every front end (``simulate``, ``measure``, ``verify``, the experiments, ``advdim.testing``) hands
per-unit records to these functions.  A **unit** is what is drawn independently: a random
topology of a family, a seeded weight draw of a fixed spec or of a user's module factory, or a
trained model of one seed.  Inputs inside a unit share its weights and are never resampled as if
independent: each unit enters as one row (its mean over its inputs and inner draws).

**The slope.**  The measured law is ``M(d) = mean over units u of m_u(d)``; its slope is the
least-squares slope of ``log M`` against ``log d``.  Its standard error is the linearised
(delta-method) one: each unit's influence ``psi_u = sum_j w_j (m_u(d_j) - M_j) / M_j`` with
``w_j`` the least-squares weights of ``log d``, and ``se = sd(psi) / sqrt(n)`` (``ddof = 1``).

**Small samples and heavy tails.**  The critical value is Student's ``t_{1-alpha/2, nu}`` with
``nu = n_eff - 1`` degrees of freedom, where ``n_eff = (sum s_u^2)^2 / sum s_u^4`` is the effective
number of units (``s_u``: unit ``u``'s mean of ``m_u(d) / M(d)`` over sizes).  With units of
similar size ``n_eff = n`` and the test is the one-sample t test on the influences; when a few
units dominate the means (heavy-tailed topologies) ``n_eff`` shrinks and the interval widens.
Below :data:`MIN_UNITS` effective units a row has no interval it could be judged on: it is
**inconclusive**, never pass or fail.  Calibrated by simulation (``scripts/calibrate_stats.py``,
``docs/simulate-power.md``): nulls that follow their law exactly at 2, 3, 4, 8, 16 and 64 units.

**Trained models.**  A trained net is one unit per training seed; its test points are draws
from the data distribution given that net.  :func:`fit_hierarchical_slope` bootstraps both levels
(seeds, then test points within each drawn seed), the standard two-level design.

**Verdicts.**  A two-sided test (:class:`TwoSided`) fails iff ``|measured - predicted| > c * se``
(false rejection ``alpha``, :data:`ALPHA` = 0.01 per row), and passes only when its power against
the claim's error (:data:`DELTA` for slopes, :data:`PREFACTOR_REL` for prefactors) is at least
``advdim.verdict.MIN_POWER``; else inconclusive.  :func:`holm` re-judges a set of verdicts at a
family-wise rate (``verify``: :data:`FWER` = 0.05).

    >>> import numpy as np
    >>> d = np.array([192.0, 768.0, 3072.0])
    >>> values = np.outer(np.ones(50), d**0.5) * np.exp(np.random.default_rng(0).normal(0, 0.1, (50, 3)))
    >>> fit = fit_slope(d, values, seed=0)
    >>> abs(fit.slope - 0.5) < 0.05, round(fit.units)
    (True, 49)
"""

from __future__ import annotations

from advdim.stats._trained import HierarchicalFit, fit_hierarchical_slope, quantiles
from advdim.stats._units import (
    ALPHA,
    BOOTSTRAP,
    CANNOT_TELL,
    CONSISTENT,
    CRITICAL_NOTE,
    DELTA,
    FWER,
    INCONSISTENT,
    MIN_GROUP,
    MIN_RATIO_UNITS,
    MIN_UNITS,
    POWER,
    PREFACTOR_REL,
    PREFACTOR_RESOLUTION,
    SE_FOR_POWER,
    SLOPE_RESOLUTION,
    SlopeFit,
    TwoSided,
    WidthLimit,
    critical,
    effective_units,
    fit_slope,
    fit_width_limit,
    holm,
    is_finite,
    ols_slope,
    paper_law_consistency,
    paper_law_slope,
    power,
    ratio_fit,
    ratio_power,
    ratio_test,
    ratio_units,
    slope_test,
    slope_weights,
    tolerance,
    z_value,
)

__all__ = [
    "ALPHA",
    "BOOTSTRAP",
    "CANNOT_TELL",
    "CONSISTENT",
    "CRITICAL_NOTE",
    "DELTA",
    "FWER",
    "INCONSISTENT",
    "HierarchicalFit",
    "MIN_GROUP",
    "MIN_RATIO_UNITS",
    "MIN_UNITS",
    "POWER",
    "PREFACTOR_REL",
    "PREFACTOR_RESOLUTION",
    "SE_FOR_POWER",
    "SLOPE_RESOLUTION",
    "SlopeFit",
    "TwoSided",
    "WidthLimit",
    "critical",
    "effective_units",
    "fit_hierarchical_slope",
    "fit_slope",
    "slope_weights",
    "fit_width_limit",
    "holm",
    "is_finite",
    "ols_slope",
    "paper_law_consistency",
    "paper_law_slope",
    "power",
    "quantiles",
    "ratio_fit",
    "ratio_power",
    "ratio_test",
    "ratio_units",
    "slope_test",
    "tolerance",
    "z_value",
]
