"""advdim.simulate: Monte Carlo over random He-initialised topologies, slope fits and verdicts.

Public surface:

- :func:`study` -> :class:`FamilyResult` (``.verdicts()``, ``.to_json()``): one family's slopes
  of ``log E||d_x f_k||_q`` against ``log d`` with bootstrap intervals over topologies, the
  theory's finite-d prediction and the prefactor ``E||d_x f_k||_2^2``;
- :func:`sample_norms`: the batched engine (many nets per call, exact dense shortcut);
- :func:`plot_family`: log-log plot and per-topology histogram (PNG + SVG).
"""

from advdim.simulate._engine import Scheme, sample_norms
from advdim.simulate._plot import plot_family
from advdim.simulate._study import FamilyResult, QResult, study

__all__ = ["FamilyResult", "QResult", "Scheme", "plot_family", "sample_norms", "study"]
