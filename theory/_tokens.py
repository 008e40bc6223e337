"""The exponent-only law of token-readout networks: a class token or a token mean read out of patch tokens.

A vision transformer cuts the input into ``N = d / (C p^2)`` patches of side ``p`` and reads its logits
from one vector: a class token (a constant token put in front of the patch tokens) or the mean of the
patch tokens.  Between the two, every layer acts on each token alone (layer norm, MLP, residual
additions, layer scale) except softmax attention.  Then (docs/theory.md, "Class-token and token-mean
readouts")

    E||d_x f||_q  ~  C_q d^(1/q - 1) (1 + c_q / N + O(N^-2))        (q = 1, 2; q = inf: d^-1 up to a
                                                                    sub-polynomial factor)

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
:data:`MIN_TOKENS` patch tokens (with 4 tokens timm's ViTs are still up to 9.7 se off: docs/theory.md's
table).  The row's word is of the consistency kind (consistent / inconsistent / cannot tell) and never
a FAIL: the theory bounds none of the finite-size corrections, and torchvision's ViT is still 6-7 se
off at 1024 tokens.  For q = inf the maximum over the N tokens carries the largest of N per-token
scales, a sub-polynomial factor whose law depends on how sharp the attention is: those rows report
their exponent and cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from advdim.stats import ALPHA
from advdim.stats._units import CANNOT_TELL, CONSISTENT, DELTA, INCONSISTENT, power, slope_test, slope_weights

#: fewest patch tokens a size needs to enter the fit of the exponent (docs/theory.md's Monte Carlo table)
MIN_TOKENS = 16
#: fewest such sizes: the fit has three coefficients (scale, exponent, 1/N term)
MIN_SIZES = 3
LEVEL = "exponent only"
#: the readouts (the names advdim._trace_tokens gives them)
CLASS_TOKEN, TOKEN_MEAN = "class token", "token mean"
#: the word of a row whose sizes have too few patch tokens to judge the exponent
CANNOT_TELL_SIZES = "cannot tell at these sizes"
#: the word of every q = inf row: the maximum over the N tokens carries the largest of N per-token scales
#: (set by each token's key and layer-norm scale), a sub-polynomial factor whose law depends on how
#: sharp the attention is (timm's near-uniform attention: about sqrt(2 log d), as for Gaussian
#: coordinates; the He-initialised ``vit`` family's: -0.65 measured where -0.95 would be Gaussian)
CANNOT_TELL_INF = "cannot tell (q = inf)"


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
    return Judged(fit.slope, fit.se, fit.units, ref, tol, CANNOT_TELL_INF if key == "inf" else word)


def spec_readout(spec: Any) -> tuple[str, int] | None:
    """``(kind, patch tokens)`` when an advdim spec is a token-readout network (the ``vit`` family): a
    patch embedding ``conv(D, k=p, s=p, pad=valid)``, then only layers that act on each position (token)
    alone -- ``layernorm``, 1x1 convs, ``gelu`` / ``relu``, ``scale``, batch norm with running statistics,
    identity-skip residual blocks of those -- and ``attn``; then ``globalavgpool`` (a token mean) and any
    head.  None for anything else."""
    from advdim.arch import (
        GELU,
        Attention,
        BatchNorm,
        BNMode,
        Conv,
        GlobalAvgPool,
        LayerNorm,
        Padding,
        ReLU,
        Residual,
        Scale,
    )

    def tokenwise(layer: Any, shape: tuple[int, ...]) -> bool:
        if isinstance(layer, Residual):
            return layer.projection(shape) is None and all(tokenwise(b, shape) for b in layer.branch)
        if isinstance(layer, Conv):
            return layer.kernel == 1 and layer.stride == 1 and layer.dilation == 1
        if isinstance(layer, BatchNorm):
            return layer.mode is not BNMode.BATCH
        return isinstance(layer, (Attention, LayerNorm, GELU, ReLU, Scale))

    layers, shapes = list(spec.layers), spec.shapes()
    first = layers[0] if layers else None
    if not (isinstance(first, Conv) and first.kernel == first.stride and first.dilation == 1
            and (first.padding is Padding.VALID or first.pad == 0)):
        return None
    for layer, shape in zip(layers[1:], shapes[1:]):
        if isinstance(layer, GlobalAvgPool):
            _, h, w = shapes[1]
            return TOKEN_MEAN, h * w
        if not tokenwise(layer, shape):
            return None
    return None


def family_law(specs: Sequence[Sequence[Any]]) -> TokenLaw | None:
    """The token law of a study whose units (rows) have these specs at each size (columns): every unit
    a token readout of one kind whose patch tokens grow with the size; ``tokens`` the fewest over the
    units at each size (the 1/N term is then proportional to every unit's, patch sizes apart: N = d /
    (C p^2)).  None otherwise (a fixed token grid, ``vit(scaling=tokens)``, has no such law)."""
    got = [[spec_readout(s) for s in row] for row in specs]
    if not got or any(r is None for row in got for r in row):
        return None
    kinds = {r[0] for row in got for r in row if r is not None}
    tokens = [[r[1] for r in row if r is not None] for row in got]
    if len(kinds) != 1 or any(any(b <= a for a, b in zip(t, t[1:])) for t in tokens):
        return None
    return TokenLaw(kinds.pop(), tuple(min(t[j] for t in tokens) for j in range(len(tokens[0]))))


def too_few(law: TokenLaw) -> str | None:
    """Why the sizes cannot judge the law (None: they can)."""
    got = len(law.usable())
    if got >= MIN_SIZES:
        return None
    return (f"the exponent is asymptotic: its fit with the 1/N term needs {MIN_SIZES} sizes with >= {MIN_TOKENS} patch "
            f"tokens, these sizes have {got} (tokens {', '.join(map(str, law.tokens))}; double the side to go on)")


__all__ = ["CANNOT_TELL_INF", "CANNOT_TELL_SIZES", "CLASS_TOKEN", "LEVEL", "MIN_SIZES", "MIN_TOKENS", "TOKEN_MEAN",
           "Judged", "TokenLaw", "consistency", "exponent", "family_law", "finite_size_term", "judge", "law_log",
           "spec_readout", "too_few"]
