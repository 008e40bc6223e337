"""advdim.simulate: Monte Carlo over random He-initialised topologies, slope fits and verdicts.

Public surface:

- :func:`study` -> :class:`FamilyResult` (``.verdicts()``, ``.to_json()``): one family's slopes
  of ``log E||d_x f_k||_q`` against ``log d`` with bootstrap intervals over topologies, the
  theory's finite-d prediction and the prefactor ``E||d_x f_k||_2^2``;
- :func:`sample_norms`: the batched engine (many nets per call, exact dense shortcut);
- :func:`plot_family`: log-log plot and per-topology histogram (PNG + SVG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from advdim._lazy import lazy_getattr

if TYPE_CHECKING:
    from advdim.simulate._engine import Scheme, sample_norms
    from advdim.simulate._plot import plot_family
    from advdim.simulate._study import FamilyResult, QResult, study

_EXPORTS = {
    "Scheme": "advdim.simulate._engine", "sample_norms": "advdim.simulate._engine",
    "plot_family": "advdim.simulate._plot",
    "FamilyResult": "advdim.simulate._study", "QResult": "advdim.simulate._study", "study": "advdim.simulate._study",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = ["FamilyResult", "QResult", "Scheme", "plot_family", "sample_norms", "study"]
