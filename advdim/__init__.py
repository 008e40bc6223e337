"""advdim: check, by derivation, simulation and training, how the input gradients of neural
networks scale with the input dimension (Simon-Gabriel et al., ICML 2019).

The public surface of the core is small; the three layers live in ``advdim.theory``,
``advdim.simulate`` and ``advdim.empirical``.  Names are imported on first use, so that
``import advdim`` (and ``advdim --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from advdim._lazy import lazy_getattr

__version__ = "0.1.0"

if TYPE_CHECKING:
    from advdim.arch import (
        Family,
        Padding,
        Spec,
        Target,
        family,
        format_spec,
        parse,
        parse_family,
        register_family,
        resolve_target,
        sample_family,
    )
    from advdim.errors import AdvdimError, DataError, HypothesisError, SpecError, StoreError

_EXPORTS = {
    **dict.fromkeys(["Family", "Padding", "Spec", "Target", "family", "format_spec", "parse", "parse_family",
                     "register_family", "resolve_target", "sample_family"], "advdim.arch"),
    **dict.fromkeys(["AdvdimError", "DataError", "HypothesisError", "SpecError", "StoreError"], "advdim.errors"),
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = [
    "AdvdimError",
    "DataError",
    "Family",
    "HypothesisError",
    "Padding",
    "Spec",
    "SpecError",
    "StoreError",
    "Target",
    "__version__",
    "family",
    "format_spec",
    "parse",
    "parse_family",
    "register_family",
    "resolve_target",
    "sample_family",
]
