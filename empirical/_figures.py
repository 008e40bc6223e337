"""What the experiments' figures and verdicts share: a run that did not learn, and writing a figure.

Imported by :mod:`advdim.empirical._experiments` and :mod:`advdim.empirical._batchnorm` (neither imports the other).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from advdim.paths import OutputFolder


def collapsed(row: dict[str, Any], classes: int = 10) -> bool:
    """Whether a finished run did not learn: zero input gradient, or, on at least 100 evaluated test
    images, test accuracy within 3 binomial standard errors of chance ``1/classes`` (the presets'
    nets reach 0.8 and more; below 100 images accuracy cannot tell a dead net from a weak one)."""
    test = row["final"]["test"]
    chance = 1.0 / classes
    n = min(int(row.get("n_eval") or 0), int(row.get("n_test") or row.get("n_eval") or 0))
    at_chance = n >= 100 and float(test["acc"]) <= chance + 3.0 * math.sqrt(chance * (1 - chance) / n)
    return float(test["grad_l1"]) == 0.0 or at_chance


def save_figure(fig: Any, out: Path | OutputFolder, name: str) -> list[Path]:
    """Write ``fig`` as ``<name>.png`` and ``<name>.svg`` in ``out`` (an :class:`OutputFolder`: only
    over files advdim wrote there), close it, return the paths."""
    names = [f"{name}.png", f"{name}.svg"]
    paths = [out.file(n) if isinstance(out, OutputFolder) else out / n for n in names]
    for p in paths:
        fig.savefig(p, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
