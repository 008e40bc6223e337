"""Calibration of the verdict statistics (``advdim.stats``) by simulation.

Nulls that follow their law exactly: per-unit records whose expectation is exactly the law
(``E m_u(d) = d^b`` for slopes, ``E s_u(d) = p(d)`` for prefactor ratios), drawn at 2, 3, 4, 8, 16
and 64 units, with a light-tailed and a heavy-tailed unit distribution (log-normal unit scale of
sd 0.3 and 1.0, shared across sizes, and a per-size log-normal noise of sd 0.2).  For every row
kind (slope against a prediction, consistency with ``d^(1/q - 1/2)`` -- the same test --, prefactor
ratio) it counts false FAILs, and the power against a planted error (``d^0.05`` in the slope, 10%
in the prefactor) at the default budget of 200 units.  Rates carry 99% Clopper-Pearson intervals.

    python scripts/calibrate_stats.py --reps 2000 > table.md

The test suite runs :func:`false_fail_rate` at a small number of replicates
(``tests/core/test_stats_calibration.py``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import stats

from advdim.stats import (
    ALPHA,
    DELTA,
    MIN_RATIO_UNITS,
    PREFACTOR_REL,
    TwoSided,
    fit_slope,
    ratio_fit,
    ratio_test,
    ratio_units,
)

D = np.array([192.0, 768.0, 3072.0, 12288.0])
UNITS = (2, 3, 4, 8, 16, 64)
TAILS = {"light": 0.3, "heavy": 1.0}
NOISE = 0.2
KINDS = ("slope", "prefactor")


def records(rng: np.random.Generator, n: int, unit_sd: float, exponent: float = 0.5, factor: float = 1.0
            ) -> np.ndarray:
    """``(n, S)`` per-unit records with expectation exactly ``factor * d^exponent``."""
    a = rng.normal(0.0, unit_sd, (n, 1)) - unit_sd**2 / 2
    e = rng.normal(0.0, NOISE, (n, D.size)) - NOISE**2 / 2
    return factor * np.exp(a + e) * D**exponent


def rejects(kind: str, rng: np.random.Generator, n: int, unit_sd: float, error: float = 0.0) -> bool:
    """One study of ``n`` units; whether its verdict is FAIL (``error``: the planted error)."""
    if kind == "slope":
        fit = fit_slope(D, records(rng, n, unit_sd, 0.5 + error))
        return TwoSided(fit.slope, 0.5, fit.se, fit.units).rejects(ALPHA)
    measured = records(rng, n, unit_sd, 1.0, 1.0 + error)
    ratio, se = ratio_fit(measured, np.outer(np.ones(n), D))
    units = ratio_units(measured)
    return units >= MIN_RATIO_UNITS and ratio_test(ratio, se, units).rejects(ALPHA)


def false_fail_rate(kind: str, n: int, tail: str, reps: int, seed: int = 0) -> tuple[int, int]:
    """``(false FAILs, reps)`` of the null."""
    rng = np.random.default_rng([seed, n, UNITS.index(n) if n in UNITS else 99, len(tail), KINDS.index(kind)])
    return sum(rejects(kind, rng, n, TAILS[tail]) for _ in range(reps)), reps


def power_at(kind: str, n: int, tail: str, reps: int, seed: int = 1) -> tuple[int, int]:
    """``(FAILs, reps)`` against the planted error (``+DELTA`` in the slope, ``+PREFACTOR_REL`` in the prefactor)."""
    rng = np.random.default_rng([seed, n, len(tail), KINDS.index(kind), 7])
    error = DELTA if kind == "slope" else PREFACTOR_REL
    return sum(rejects(kind, rng, n, TAILS[tail], error) for _ in range(reps)), reps


def interval(k: int, n: int, alpha: float = 0.01) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--default-units", type=int, default=200)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"False-FAIL rate of a null that follows its law exactly (level {ALPHA:g} per row; {args.reps} "
          "replicate studies per cell; 99% Clopper-Pearson interval)\n")
    print("| row kind | unit tails | " + " | ".join(f"{n} units" for n in UNITS) + " |")
    print("|---|---|" + "---|" * len(UNITS))
    for kind in KINDS:
        for tail in TAILS:
            cells = []
            for n in UNITS:
                k, m = false_fail_rate(kind, n, tail, args.reps)
                lo, hi = interval(k, m)
                cells.append(f"{k / m:.4f} [{lo:.4f}, {hi:.4f}]")
            print(f"| {kind} | {tail} | " + " | ".join(cells) + " |")
    n = args.default_units
    print(f"\nPower against the planted error at {n} units ({args.reps} replicates): slope +{DELTA}, "
          f"prefactor +{PREFACTOR_REL:.0%}\n")
    print("| row kind | unit tails | FAIL rate |")
    print("|---|---|---|")
    for kind in KINDS:
        for tail in TAILS:
            k, m = power_at(kind, n, tail, args.reps)
            lo, hi = interval(k, m)
            print(f"| {kind} | {tail} | {k / m:.4f} [{lo:.4f}, {hi:.4f}] |")
    print(f"\n({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
