"""The exponent-only law of token-readout networks: a class token or a token mean read out of patch tokens.

A vision transformer cuts the input into ``N = d / (C p^2)`` patches of side ``p`` and reads its logits
from one vector: a class token (a constant token put in front of the patch tokens) or the mean of the
patch tokens.  Between the two, every layer acts on each token alone (layer norm, MLP, residual
additions, layer scale) except softmax attention.  Then (docs/theory.md, "Class-token and token-mean
readouts")

    E||d_x f||_q  ~  C_q d^(1/q - 1) (1 + c_q / N + O(N^-2))        (q = inf: times sqrt(2 log d))

**Argument.** The class token depends on the input only through attention weights
``A_0j = exp(s_0j) / sum_k exp(s_0k)``, whose scores ``s`` have a law that does not depend on N (the
tokens' own laws do not: patches, positional embeddings and the token-wise layers are the same at
every N), so each weight is Theta(1/N); a token mean weighs each patch by 1/N outright.  Each patch's
gradient is therefore ``g_j / N`` with ``g_j`` of an N-independent law up to the means over tokens
that the readout, the softmax normalisers and the later layers see; these means converge at rate
``N^-1/2``, and an expectation of a smooth function of them moves by O(1/N) (the delta method), which
is the correction term.  Summing ``|g_j / N|^q`` over ``N`` patches of ``C p^2`` coordinates gives
``N^(1/q) / N``.  The exponent is ``1/q - 1``, half an order below the paper's ``1/q - 1/2``: at
initialisation a transformer's first-order vulnerability does not grow with d in the l2 norm.

Only the exponent is claimed (``C_q`` and ``c_q`` depend on the weights' laws, the depth and the
width): a measured slope is compared with it after fitting the ``1/N`` term over sizes with at least
:data:`MIN_TOKENS` patch tokens, where the Monte Carlo of real timm and torchvision transformers
(docs/theory.md) shows the next order negligible; with fewer tokens the correction is not yet of order
1/N (at 4 tokens a 12-block ViT's local slope is still 0.4 above the exponent).  The verdict is of the
consistency kind (consistent / inconsistent / cannot tell), as for any asymptotic exponent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from advdim.stats import ALPHA
from advdim.stats._units import CANNOT_TELL, CONSISTENT, DELTA, INCONSISTENT, power, slope_test, slope_weights

#: fewest patch tokens a size needs to enter the fit of the exponent (docs/theory.md's Monte Carlo table)
MIN_TOKENS = 16
#: fewest such sizes: the fit has three coefficients (scale, exponent, 1/N term)
MIN_SIZES = 3
LEVEL = "exponent only"
#: the word of a row whose sizes have too few patch tokens to judge the exponent
CANNOT_TELL_SIZES = "cannot tell at these sizes"


def exponent(key: str) -> float:
    """The law's exponent of d for ``E||d_x f||_q`` (q = ``key``; inf: -1, before its log factor)."""
    return -1.0 if key == "inf" else 1.0 / float(key) - 1.0


def law_log(log_d: np.ndarray, key: str) -> np.ndarray:
    """``log`` of the law's d-dependence: ``(1/q - 1) log d``; q = inf: ``-log d + log sqrt(2 log d)``
    (the maximum of the coordinates, as in the paper's law)."""
    if key == "inf":
        return -log_d + 0.5 * np.log(2 * log_d)
    return exponent(key) * log_d


@dataclass(frozen=True)
class TokenLaw:
    """The law of one token-readout network: its readout (``kind``), and the patch tokens at each size."""

    kind: str
    tokens: tuple[int, ...]  # patch tokens N at each measured size, in the order of the sizes

    def usable(self) -> list[int]:
        """Indices of the sizes with at least :data:`MIN_TOKENS` patch tokens."""
        return [i for i, n in enumerate(self.tokens) if n >= MIN_TOKENS]

    def name(self) -> str:
        return f"d^(1/q - 1) ({self.kind} readout, {LEVEL}, with its 1/N term)"

    def reference(self, d: Sequence[float], key: str) -> float:
        """The slope the law gives over the usable sizes of ``d`` (every measured size, in order), by the
        same fit as the measured one (for q = inf its log factor over these sizes; else ``1/q - 1``)."""
        idx = self.usable()
        log_d = np.log(np.asarray(d, dtype=np.float64)[idx])
        w = slope_weights(log_d, 1.0 / np.asarray(self.tokens, dtype=np.float64)[idx])
        return float(w @ law_log(log_d, key))


def consistency(law: TokenLaw, d: Sequence[float], key: str, slope: float, se: float, alpha: float = ALPHA,
                n: float | None = None) -> tuple[str, float, float]:
    """``(word, reference slope, c*se)``: is a corrected slope (fitted over ``law.usable()`` of the sizes
    ``d``, all of them given) consistent with the law's exponent?  The
    same test as the paper-law consistency rows (inconsistent beyond ``c*se``; consistent only with
    power >= 0.99 against +-``DELTA``)."""
    from advdim.verdict import MIN_POWER

    ref = law.reference(d, key)
    ok, tol = slope_test(slope, ref, se, alpha, n)
    if not ok:
        return INCONSISTENT, ref, tol
    return (CONSISTENT if power(se, DELTA, alpha, n) >= MIN_POWER else CANNOT_TELL), ref, tol


def finite_size_term(law: TokenLaw, d: Sequence[float], means: Sequence[float]) -> float:
    """The fitted ``c / N`` at the smallest usable size: how far that size is from the asymptote, in log
    units, by the fit ``log M = a + s log d + c / N`` over the usable sizes (``means``: every size's)."""
    idx = law.usable()
    n = np.asarray(law.tokens, dtype=np.float64)[idx]
    design = np.stack([np.ones(len(idx)), np.log(np.asarray(d, dtype=np.float64)[idx]), 1.0 / n], axis=1)
    coef = np.linalg.pinv(design) @ np.log(np.asarray(means, dtype=np.float64)[idx])
    return float(coef[2] / n.min())


@dataclass(frozen=True)
class Judged:
    """A token-readout row: the exponent fitted with its 1/N term over the usable sizes (``slope``, ``se``
    over ``units`` effective units), the law's ``reference`` over the same sizes, the tolerance ``tol``
    (``c * se``) and the consistency ``word``."""

    slope: float
    se: float
    units: float
    reference: float
    tol: float
    word: str


def judge(law: TokenLaw, d: Sequence[float], values: np.ndarray, key: str, alpha: float = ALPHA) -> Judged:
    """The consistency of one q's per-unit values ``(U, S)`` at every size ``d`` with the law's exponent."""
    from advdim.stats import fit_slope

    idx = law.usable()
    fit = fit_slope(np.asarray(d, dtype=np.float64)[idx], np.asarray(values, dtype=np.float64)[:, idx],
                    correction=1.0 / np.asarray(law.tokens, dtype=np.float64)[idx])
    word, ref, tol = consistency(law, d, key, fit.slope, fit.se, alpha, fit.units)
    return Judged(fit.slope, fit.se, fit.units, ref, tol, word)


def too_few(law: TokenLaw) -> str | None:
    """Why the sizes cannot judge the law (None: they can)."""
    got = len(law.usable())
    if got >= MIN_SIZES:
        return None
    return (f"the exponent is asymptotic: its fit with the 1/N term needs {MIN_SIZES} sizes with >= {MIN_TOKENS} patch "
            f"tokens, these sizes have {got} (tokens {', '.join(map(str, law.tokens))}; double the side to go on)")


__all__ = ["CANNOT_TELL_SIZES", "LEVEL", "MIN_SIZES", "MIN_TOKENS", "Judged", "TokenLaw", "consistency", "exponent",
           "finite_size_term", "judge", "law_log", "too_few"]
