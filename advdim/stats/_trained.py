"""Trained models: slopes over training seeds and their test points (a hierarchical bootstrap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from advdim.stats._units import BOOTSTRAP

#: central level of the trained-model intervals
LEVEL = 0.99


@dataclass(frozen=True)
class HierarchicalFit:
    """A log-log slope of trained nets' test-point values against ``sqrt(d)`` with its hierarchical
    bootstrap interval (seeds, then test points: :func:`fit_hierarchical_slope`).

    Attributes:
        slope, lo, hi: least-squares slope of ``log mean`` on ``log sqrt(d)`` and its interval.
        sqrt_d, mean, mean_lo, mean_hi: per size, ``sqrt(d)``, the pooled mean and its interval.
        n_seeds, n_points: per size, the seeds and the test points (all seeds) behind the mean.
        boots: the bootstrap slopes, shape ``(n_boot,)``.
    """

    slope: float
    lo: float
    hi: float
    sqrt_d: tuple[float, ...]
    mean: tuple[float, ...]
    mean_lo: tuple[float, ...]
    mean_hi: tuple[float, ...]
    n_seeds: tuple[int, ...]
    n_points: tuple[int, ...]
    boots: np.ndarray = field(repr=False, compare=False)


def quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def fit_hierarchical_slope(groups: Sequence[tuple[float, Sequence[np.ndarray]]], rng: np.random.Generator,
                           n_boot: int = BOOTSTRAP, level: float = LEVEL) -> HierarchicalFit | None:
    """Slope of ``log E[v]`` against ``log sqrt(d)`` with a hierarchical bootstrap interval.

    Args:
        groups: per size, ``(sqrt(d), [values of seed 1, values of seed 2, ...])``, each array the
            per-test-point values ``(n,)`` of one trained net.
        rng: the bootstrap's generator.
    Returns:
        The fit; ``None`` with fewer than 2 sizes or a size whose mean is not positive.  A bootstrap
        replicate draws, at each size independently, the seeds with replacement and then the test
        points of each drawn seed with replacement; a replicate mean of 0 (a vulnerability without a
        flipped label) is floored at half a point, ``0.5 / n``.
    """
    if len(groups) < 2:
        return None
    means, boot_means, spans, seeds, points = [], [], [], [], []
    for _, runs in groups:
        runs = [np.asarray(v, dtype=np.float64) for v in runs if len(v)]
        if not runs:
            return None
        n_total = sum(v.size for v in runs)
        mean = float(np.concatenate(runs).mean())
        if not mean > 0:
            return None
        k = len(runs)
        totals = np.zeros(n_boot)
        counts = np.zeros(n_boot)
        for _slot in range(k):
            chosen = rng.integers(0, k, n_boot)
            for s, v in enumerate(runs):
                pick = chosen == s
                m = int(pick.sum())
                if m:
                    totals[pick] += v[rng.integers(0, v.size, (m, v.size))].sum(axis=1)
                    counts[pick] += v.size
        rep = totals / counts
        rep = np.where(rep > 0, rep, 0.5 / n_total)  # only a mean of exactly 0 (no flipped label) is floored
        means.append(mean)
        boot_means.append(rep)
        spans.append(quantiles(rep, level))
        seeds.append(k)
        points.append(n_total)
    x = np.log([sq for sq, _ in groups])
    xc = x - x.mean()

    def slope(logy: np.ndarray) -> np.ndarray:
        return (logy - logy.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)

    boots = slope(np.log(np.stack(boot_means, axis=1)))
    lo, hi = quantiles(boots, level)
    return HierarchicalFit(float(slope(np.log(means))), lo, hi, tuple(float(sq) for sq, _ in groups), tuple(means),
                    tuple(s[0] for s in spans), tuple(s[1] for s in spans), tuple(seeds), tuple(points), boots)
