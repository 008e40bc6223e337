"""advdim.simulate: Monte Carlo over random He-initialised topologies, slope fits and verdicts.

Public surface:

- :func:`study` -> :class:`FamilyResult` (``.verdicts()``, ``.to_json()``): one family's slopes
  of ``log E||d_x f_k||_q`` against ``log d`` with bootstrap intervals over topologies, the
  theory's finite-d prediction and the prefactor ``E||d_x f_k||_2^2``;
- :func:`sample_norms`: the batched engine (many nets per call, exact dense shortcut);
- :func:`plot_family`: log-log plot and per-topology histogram (PNG + SVG);
- :func:`analyse`: per-unit records (any units: topologies, weight draws of a spec or of a user's
  module factory) -> :class:`FamilyResult`, with :func:`predict_topology` (the theory's law of one
  unit), :func:`inf_prediction_exact` and :func:`width_index`; :class:`FactoryPlan` and
  :func:`run_factory_cell` draw a factory's units (``advdim measure``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from advdim._lazy import lazy_getattr

if TYPE_CHECKING:
    from advdim.simulate._engine import Scheme, sample_norms
    from advdim.simulate._factory import FactoryPlan, q_key, run_factory_cell, source_hash
    from advdim.simulate._plot import plot_family
    from advdim.simulate._study import (
        FamilyResult,
        QResult,
        TopologyLaw,
        Units,
        analyse,
        inf_prediction_exact,
        predict_topology,
        study,
        width_index,
    )

_EXPORTS = {
    "Scheme": "advdim.simulate._engine", "sample_norms": "advdim.simulate._engine",
    "plot_family": "advdim.simulate._plot",
    "FamilyResult": "advdim.simulate._study", "QResult": "advdim.simulate._study", "study": "advdim.simulate._study",
    "TopologyLaw": "advdim.simulate._study", "Units": "advdim.simulate._study", "analyse": "advdim.simulate._study",
    "inf_prediction_exact": "advdim.simulate._study", "predict_topology": "advdim.simulate._study",
    "width_index": "advdim.simulate._study",
    "FactoryPlan": "advdim.simulate._factory", "q_key": "advdim.simulate._factory",
    "run_factory_cell": "advdim.simulate._factory", "source_hash": "advdim.simulate._factory",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = ["FactoryPlan", "FamilyResult", "QResult", "Scheme", "TopologyLaw", "Units", "analyse",
           "inf_prediction_exact", "plot_family", "predict_topology", "q_key", "run_factory_cell", "sample_norms",
           "source_hash", "study", "width_index"]
