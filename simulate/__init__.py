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
    from advdim.simulate._analysis import TopologyLaw, Units, analyse, inf_prediction_exact, predict_topology
    from advdim.simulate._engine import Scheme, sample_norms
    from advdim.simulate._factory import (
        FACTORY_KIND,
        FactoryPlan,
        draw_model,
        fingerprint,
        q_key,
        register_factory,
        run_factory_cell,
        source_hash,
    )
    from advdim.simulate._plot import plot_family
    from advdim.simulate._result import FamilyResult, QResult
    from advdim.simulate._study import study, width_index

_EXPORTS = {
    "Scheme": "advdim.simulate._engine", "sample_norms": "advdim.simulate._engine",
    "plot_family": "advdim.simulate._plot",
    "FamilyResult": "advdim.simulate._result", "QResult": "advdim.simulate._result", "study": "advdim.simulate._study",
    "TopologyLaw": "advdim.simulate._analysis", "Units": "advdim.simulate._analysis",
    "analyse": "advdim.simulate._analysis", "inf_prediction_exact": "advdim.simulate._analysis",
    "predict_topology": "advdim.simulate._analysis", "width_index": "advdim.simulate._study",
    "FactoryPlan": "advdim.simulate._factory", "q_key": "advdim.simulate._factory",
    "run_factory_cell": "advdim.simulate._factory", "source_hash": "advdim.simulate._factory",
    "draw_model": "advdim.simulate._factory", "fingerprint": "advdim.simulate._factory",
    "FACTORY_KIND": "advdim.simulate._factory", "register_factory": "advdim.simulate._factory",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = ["FACTORY_KIND", "FactoryPlan", "FamilyResult", "QResult", "Scheme", "TopologyLaw", "Units", "analyse",
           "draw_model", "fingerprint", "inf_prediction_exact", "plot_family", "predict_topology", "q_key",
           "register_factory", "run_factory_cell", "sample_norms", "source_hash", "study", "width_index"]
