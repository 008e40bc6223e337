"""advdim: check, by derivation, simulation and training, how the input gradients of neural
networks scale with the input dimension (Simon-Gabriel et al., ICML 2019).

The public surface of the core is small; the three layers live in ``advdim.theory``,
``advdim.simulate`` and ``advdim.empirical``.
"""

__version__ = "0.1.0"

from advdim.arch import Family, Padding, Spec, family, format_spec, parse, parse_family, sample_family
from advdim.errors import AdvdimError, DataError, HypothesisError, SpecError, StoreError

__all__ = [
    "AdvdimError",
    "DataError",
    "Family",
    "HypothesisError",
    "Padding",
    "Spec",
    "SpecError",
    "StoreError",
    "__version__",
    "family",
    "format_spec",
    "parse",
    "parse_family",
    "sample_family",
]
