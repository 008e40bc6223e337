"""advdim.theory: symbolic laws of ||d_x f||_q under the paper's hypotheses H1-H5 and S.

``predict(family_or_spec, sizes, channels, init)`` returns a :class:`Prediction`: which
hypotheses hold (with reasons), ``E||d_x f_k||_2^2`` exactly (path sum on the real graph) and as
a SymPy expression in ``d``, the asymptotic exponents of ``E||d_x f_k||_q`` and the finite-d
prediction over the given sizes.  The first-order statements of Section 2 (Lemma 2, eq. 3,
Proposition 3) and the one-neuron toy of Section 3.1 are exported here
too (``lemma2``, ``eq3``, ``proposition3``, ``one_neuron`` and their checkers).

Importing this package does not import torch (the numeric checkers import it when called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from advdim._lazy import lazy_getattr

if TYPE_CHECKING:
    from advdim.theory._first_order import (
        Statement,
        check_lemma2,
        check_one_neuron,
        check_proposition3_numeric,
        check_proposition3_on_net,
        check_snr,
        eq3,
        eq3_epsilon,
        lemma2,
        lemma2_maximiser,
        one_neuron,
        proposition3,
    )
    from advdim.theory._law import Prediction, d, hypotheses, loss_weight, predict

_EXPORTS = {
    **dict.fromkeys(["Statement", "check_lemma2", "check_one_neuron", "check_proposition3_numeric",
                     "check_proposition3_on_net", "check_snr", "eq3", "eq3_epsilon", "lemma2", "lemma2_maximiser",
                     "one_neuron", "proposition3"], "advdim.theory._first_order"),
    **dict.fromkeys(["Prediction", "d", "hypotheses", "loss_weight", "predict"], "advdim.theory._law"),
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = [
    "Prediction", "Statement", "check_lemma2", "check_one_neuron", "check_proposition3_numeric",
    "check_proposition3_on_net", "check_snr", "d", "eq3", "eq3_epsilon", "hypotheses", "lemma2",
    "lemma2_maximiser", "loss_weight", "one_neuron", "predict", "proposition3",
]
