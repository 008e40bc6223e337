"""The connection graph of a spec, walked backwards from one logit (no torch).

Two exact computations share one walk over the layers:

* **path-sum variances** ``V(n) = sum_{paths p: n -> f_k} prod_{edges e in p} E[w_e^2] *
  prod_{ReLU'd nodes on p} r`` (proof of Theorems 4-5): ``V`` at the input is
  ``E[(d f_k / d x_i)^2]`` under H1-H5.  Per layer it is a linear map of the per-node values:
  a dense layer sums, a convolution is ``var * A_y^T U A_x`` with ``U`` the channel sum of the
  output values and ``A`` the per-axis tap-count matrices (so every padding, stride and
  dilation is handled by the same two matrices), an average pool spreads ``V / k^4``.
* **path-degree classes** for the symmetry assumption S: the generating polynomial
  ``P(n) = sum_p prod_{edges e in p} x_{indeg(head(e))}`` (monomials are the path-degree
  multisets, coefficients their counts); two input nodes satisfy S together iff their
  polynomials are equal.  Nodes are grouped into classes of equal polynomials, position by
  position with numpy, and polynomials are only built once per class (translation structure:
  the number of classes stays small however large the map).

Residual blocks ``skip(x) + a * branch(x)`` are walked by recursion into the branch: the per-node
values add, ``V_in = back_skip(V_out) + a^2 back_branch(V_out)`` (the skip-branch cross terms vanish
when the branch ends in a weight layer, see :func:`branch_is_odd`), and a sum node's in-degree is
the skip's plus the branch's.  Layers with no path-sum law (max pooling, GELU, layer norm,
attention, batch-mode batch norm, a ReLU on a residual sum without sign symmetry) are listed by
:func:`no_law_layers` with the hypothesis that fails and why.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from advdim.arch import (
    GELU,
    Attention,
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    LayerNorm,
    MaxPool,
    Padding,
    ReLU,
    Residual,
    Scale,
    Shape,
    Spec,
)
from advdim.errors import AdvdimError, HypothesisError
from advdim.inits import Init

#: BatchNorm at initialisation in eval mode: running mean 0, running variance 1, y = x / sqrt(1 + eps)
BN_EPS = 1e-5

def init_name(init: object) -> str:
    """The scheme name of ``init`` (an :class:`advdim.inits.Init` or its name), validated."""
    return Init.parse(init if isinstance(init, Init) else str(init)).value


def weight_variance(init: str, fan_in: int, fan_out: int, rows: int) -> float:
    """``E[w^2]`` of one weight under ``advdim.build.init_weights`` (see :meth:`Init.weight_variance`)."""
    return Init(init).weight_variance(fan_in, fan_out, rows)


# --------------------------------------------------------------------------------------------
# Per-axis connection matrices
# --------------------------------------------------------------------------------------------


def conv_axis(n_in: int, n_out: int, kernel: int, stride: int, dilation: int, pad: int,
              padding: Padding) -> np.ndarray:
    """``A[o, i]`` = number of taps of output ``o`` reading input ``i`` along one axis."""
    a = np.zeros((n_out, n_in), dtype=np.int64)
    for o in range(n_out):
        for t in range(kernel):
            i = o * stride - pad + t * dilation
            if padding is Padding.CIRCULAR:
                i %= n_in
            elif padding is Padding.REFLECT:
                i = -i if i < 0 else (2 * (n_in - 1) - i if i >= n_in else i)
            elif not 0 <= i < n_in:
                continue  # zero padding (VALID never leaves the map)
            a[o, i] += 1
    return a


def pool_axis(n_in: int, size: int) -> np.ndarray:
    """``P[o, i] = 1`` when input ``i`` lies in the window of output ``o`` (non-overlapping)."""
    p = np.zeros((n_in // size, n_in), dtype=np.int64)
    p[np.arange(n_in) // size, np.arange(n_in)] = 1
    return p


# --------------------------------------------------------------------------------------------
# Sign states of the nodes (for the ReLU factors of H1)
# --------------------------------------------------------------------------------------------


class Sign(enum.Enum):
    """The law of the sign of a value at initialisation, which sets the factor of a ReLU on it."""

    INPUT = "input"  # the raw input: sign set by the data, not by the weights
    #: negated by flipping the sign of some weight layers (its last weight layer; for a residual sum
    #: the projection or the skip's own flip, with the branch's) that leave everything before them
    #: unchanged: positive w.p. 1/2, and a ReLU on it is a Bernoulli(1/2) gate (H1)
    SYMMETRIC = "symmetric"
    NONNEG = "nonneg"  # after a ReLU, possibly averaged: a further ReLU passes every active path
    ROUTED = "routed"  # after a max: the law of the ReLU indicator is not 1/2
    #: ``x + a * branch(x)`` with ``x >= 0`` and a sign-symmetric branch: a ReLU on it is active with a
    #: probability strictly between 1/2 and 1, set by the ratio of the two terms
    SHIFTED = "shifted"
    #: a pre-activation residual sum ``x + a * branch(x)``: ``x`` symmetric (or itself such a sum), the branch
    #: odd in its own weights but reading ``x`` through a ReLU, so no weight flip negates both terms; a
    #: ReLU on it is taken as a Bernoulli(1/2) gate, an approximation (:data:`APPROX_REASON`)
    APPROX = "approx"
    #: no sign law: after a GELU or a normalisation, or a residual sum whose terms cannot be negated
    #: together (its branch is not odd in its input)
    MIXED = "mixed"


#: why a ReLU on a pre-activation residual sum is only approximately a Bernoulli(1/2) gate, with the
#: Monte Carlo check (2 x 10^4 He nets at c = 4, 10^4 at c = 16, of ``2x6x6 > conv(c) > [res(relu > conv(c) >
#: relu > conv(c))] x 2 > relu > flatten > dense(3)``, circular padding; docs/theory.md section 7)
APPROX_REASON = ("acts on a pre-activation residual sum (a symmetric stream plus a branch that reads it through "
                 "a ReLU): no weight flip negates both terms, so its Bernoulli(1/2) gate is an approximation; "
                 "the path sum is approximate (Monte Carlo: E||d_x f||_2^2 2.5% +- 0.4% above it for two 4-channel "
                 "blocks, 0.5% +- 0.3% for 16 channels)")


def _odd_linear(layer: Layer) -> bool:
    """Linear layers that commute with a sign flip of their input (``L(-x) = -L(x)``) and keep its sign law
    (a positive ``scale`` keeps a non-negative input non-negative)."""
    return isinstance(layer, (AvgPool, GlobalAvgPool, Flatten, Scale)) or (
        isinstance(layer, BatchNorm) and layer.mode is BNMode.RUNNING)


def sign_states(spec: Spec) -> list[Sign]:
    """The sign state of the values entering each (top-level) layer (``len(spec.layers)`` entries)."""
    return [s.sign for s in steps(spec)]


def relu_factor(state: Sign) -> float:
    """Expected squared ReLU derivative along a path: 1/2 (H1), or 1 on an already non-negative input.

    A ReLU whose input is a non-negative average of ReLU outputs is active whenever any path
    through it is active, so it contributes no factor.  (``SHIFTED`` / ``MIXED`` inputs have no
    factor at all: :func:`no_law_layers` lists them.)
    """
    return 1.0 if state is Sign.NONNEG else 0.5


def _sign_after(layer: Layer, state: Sign, branch: tuple[Step, ...], shape: Shape) -> Sign:
    if isinstance(layer, (Conv, Dense, Attention)):  # bias 0 at init: flipping the weights negates the output
        return Sign.SYMMETRIC
    if isinstance(layer, ReLU):
        return Sign.NONNEG
    if isinstance(layer, (MaxPool, GlobalMaxPool)):
        return Sign.NONNEG if state is Sign.NONNEG else Sign.ROUTED
    if isinstance(layer, Residual):
        return _residual_sign(layer, state, branch[-1].after, shape)
    if _odd_linear(layer):
        return state
    if isinstance(layer, (LayerNorm, BatchNorm)):  # odd maps (weight 1, bias 0): a flip of the input negates them
        return state if state in (Sign.SYMMETRIC, Sign.APPROX) else Sign.MIXED
    return Sign.MIXED  # GELU


def branch_is_odd(layer: Residual, shape: Shape) -> bool:
    """Whether flipping the signs of some of the branch's own weight layers negates its output while
    its input stays fixed: true when the branch ends in a weight layer followed only by linear layers
    (average pools, flatten, running-mode batch norm), or in a residual sum with that property.

    Then the branch's Jacobian changes sign under that flip while the block input and its tangent do
    not, so the skip-branch cross terms of ``E[(d f / d x_i)^2]`` are exactly zero.  A branch ending
    in a ReLU (or without weights) shares its gates with the skip's paths: no path-sum law.
    """
    return _chain(layer.branch, shape, Sign.INPUT, "", 0)[1] is Sign.SYMMETRIC


def _enters_through_weights(branch: tuple[Layer, ...]) -> bool:
    """The branch reads its input through a weight layer (after odd linear layers only), so negating
    the input and that layer's weights leaves the rest of the branch unchanged."""
    for layer in branch:
        if isinstance(layer, (Conv, Dense)):
            return True
        if not _odd_linear(layer):
            return False
    return False


def _residual_sign(layer: Residual, state: Sign, branch_after: Sign, shape: Shape) -> Sign:
    projected = layer.projection(shape) is not None
    if layer.scale == 0:
        return Sign.SYMMETRIC if projected else state
    if not branch_is_odd(layer, shape):
        both_nonneg = not projected and state is Sign.NONNEG and branch_after is Sign.NONNEG and layer.scale > 0
        return Sign.NONNEG if both_nonneg else Sign.MIXED
    if projected:  # flip the projection and the branch's own flip: the sum is negated, the input is not
        return Sign.SYMMETRIC
    if state is Sign.SYMMETRIC and _enters_through_weights(layer.branch):
        return Sign.SYMMETRIC  # flip the input's weights, the branch's first weights and its own flip
    if state in (Sign.SYMMETRIC, Sign.APPROX):
        return Sign.APPROX
    return Sign.SHIFTED if state is Sign.NONNEG else Sign.MIXED


# --------------------------------------------------------------------------------------------
# Layer records with their shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One layer with its input / output shapes, its sign states and its fan-in / fan-out.

    ``index`` is the top-level layer index; ``name`` the position, dotted inside residual branches
    (``"2.0"``: layer 0 of the branch of layer 2; ``"2.skip"``: its projection).  A residual step
    holds its ``branch`` steps and its projection step ``skip`` (None: the identity).
    """

    index: int
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    sign: Sign
    name: str = ""
    branch: tuple[Step, ...] = ()
    skip: Step | None = None
    after: Sign = Sign.MIXED
    #: a max pool right after a ReLU of a symmetric input: the mean-field correlation of two distinct
    #: positions of one channel at that ReLU's input (:func:`window_correlations`); None: no law
    rho: float | None = None
    #: a max pool whose window law is known but whose path sum is refused all the same: why
    refused: str | None = None

    @property
    def label(self) -> str:
        return self.name or str(self.index)

    @property
    def fans(self) -> tuple[int, int, int]:
        """``(fan_in, fan_out, rows)`` of a weight layer."""
        if isinstance(self.layer, Conv):
            k2 = self.layer.kernel**2
            return self.in_shape[0] * k2, self.layer.out_channels * k2, self.layer.out_channels
        if isinstance(self.layer, Dense):
            return self.in_shape[0], self.layer.out_features, self.layer.out_features
        raise AdvdimError(f"layer {self.label} has no weights")

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis connection matrices (y, x) of a conv or pool layer."""
        layer = self.layer
        (_, h, w), (_, ho, wo) = self.in_shape, self.out_shape
        if isinstance(layer, Conv):
            return (conv_axis(h, ho, layer.kernel, layer.stride, layer.dilation, layer.pad, layer.padding),
                    conv_axis(w, wo, layer.kernel, layer.stride, layer.dilation, layer.pad, layer.padding))
        if isinstance(layer, MaxPool):  # windows of stride layer.step, padded by -inf (never read)
            return (conv_axis(h, ho, layer.size, layer.step, 1, layer.pad, Padding.ZEROS),
                    conv_axis(w, wo, layer.size, layer.step, 1, layer.pad, Padding.ZEROS))
        if isinstance(layer, AvgPool):
            return pool_axis(h, layer.size), pool_axis(w, layer.size)
        raise AdvdimError(f"layer {self.label} has no spatial connections")


def _chain(layers: tuple[Layer, ...], shape: Shape, state: Sign, prefix: str,
           top: int | None) -> tuple[list[Step], Sign]:
    """Steps of a layer sequence from ``shape`` and sign ``state`` (``top``: the top-level index of a
    branch's block, None at the top level); returns them and the sign after the last."""
    out: list[Step] = []
    for i, layer in enumerate(layers):
        index, name = (i if top is None else top), f"{prefix}{i}"
        nxt = layer.out_shape(shape)
        branch: tuple[Step, ...] = ()
        skip = None
        if isinstance(layer, Residual):
            branch = tuple(_chain(layer.branch, shape, state, f"{name}.", index)[0])
            proj = layer.projection(shape)
            if proj is not None:
                skip = Step(index, proj, shape, nxt, state, f"{name}.skip", after=Sign.SYMMETRIC)
        after = _sign_after(layer, state, branch, shape)
        out.append(Step(index, layer, shape, nxt, state, name, branch, skip, after))
        state, shape = after, nxt
    return out, state


def steps(spec: Spec) -> list[Step]:
    """The top-level steps of ``spec`` (residual steps hold their branch and projection); a max pool's
    step carries its window correlation (:func:`window_correlations`)."""
    st = _chain(spec.layers, spec.input_shape, Sign.INPUT, "", None)[0]
    rho = window_correlations(st)
    out = []
    for i, s in enumerate(st):
        if s.index in rho:
            averaged = _averaged_after(st[i + 1:])
            s = replace(s, rho=rho[s.index]) if averaged is None else replace(s, refused=averaged)
        out.append(s)
    return out


def _averaged_after(rest: Sequence[Step]) -> str | None:
    """Why a max pool followed by ``rest`` gets no law: an average over positions after it (None: none)."""
    def walk(seq: Sequence[Step]) -> Iterator[Step]:
        for t in seq:
            yield from walk(t.branch)
            yield t

    for t in walk(rest):
        pooled = (isinstance(t.layer, AvgPool) and t.layer.size > 1) or (
            isinstance(t.layer, GlobalAvgPool) and t.in_shape[1] * t.in_shape[2] > 1)
        if pooled:
            return (f"layer {t.label} {t.layer.kind} averages positions after the max pool, and keeps cross terms the "
                    "routed path sum drops (measured E||d_x f||_2^2 13% above it with circular padding, 80-100% with "
                    "zero padding, nearly the same at every s; the likely cause: the window maxima share a large "
                    "common mean, which couples the later ReLU gates to the weights; docs/theory.md 'Layers of "
                    "library code')")
    return None


def kappa(rho: float) -> float:
    """The arc-cosine kernel: ``E[relu(u) relu(v)] / (E u^2 / 2)`` for standard Gaussians of correlation ``rho``.

    >>> round(kappa(0.0), 6), kappa(1.0)
    (0.31831, 1.0)
    """
    rho = min(1.0, max(-1.0, rho))
    return (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / math.pi


def window_correlations(st: Sequence[Step]) -> dict[int, float]:
    """Per max pool that follows a ReLU of a symmetric input, or acts on a symmetric input right before a ReLU
    (``relu(max z) = max relu(z)``), before any other max pool: the mean-field correlation ``rho`` of two
    distinct positions of one channel at that ReLU's input (the window's pre-activations).

    The recursion of :func:`advdim.theory._maxnorm.gate_correlations` over i.i.d. ``N(0, 1)`` inputs
    (the simulation's): the input has ``rho = 0``; a convolution keeps ``rho`` (distinct outputs read
    distinct inputs through the same tap; zero biases); a ReLU maps it to ``kappa(rho)``; a ``k x k``
    average pool to ``k^2 rho / (1 + (k^2 - 1) rho)``; batch norm and ``scale`` keep it.  Nothing is
    known after a max pool (the law of the window maxima), a residual block or a normalisation by
    the data: the max pools after one have no law (:func:`no_law_reason`).

    >>> from advdim.arch import parse
    >>> spec = parse("3x8x8 > conv(4) > relu > conv(4) > relu > maxpool(3,s=2,pad=1) > flatten > dense(2)")
    >>> {k: round(v, 4) for k, v in window_correlations(steps(spec)).items()}
    {4: 0.3183}
    """
    rho, prev_rho, out = 0.0, 0.0, {}
    for i, s in enumerate(st):
        layer = s.layer
        if isinstance(layer, MaxPool):
            prev, nxt = (st[i - 1] if i else None), (st[i + 1] if i + 1 < len(st) else None)
            if prev is not None and isinstance(prev.layer, ReLU) and prev.sign is Sign.SYMMETRIC:
                out[s.index] = prev_rho
            elif s.sign is Sign.SYMMETRIC and nxt is not None and isinstance(nxt.layer, ReLU):
                out[s.index] = rho  # max then ReLU: the same function as ReLU then max
            return out
        if isinstance(layer, ReLU):
            prev_rho = rho
            if s.sign is not Sign.NONNEG:
                rho = kappa(rho)
        elif isinstance(layer, AvgPool):
            k2 = layer.size**2
            rho = k2 * rho / (1.0 + (k2 - 1) * rho)
        elif not isinstance(layer, (Conv, Scale)) and not (isinstance(layer, BatchNorm)
                                                          and layer.mode is BNMode.RUNNING):
            return out  # flat from here on, or moments the recursion does not carry
    return out


def orthant(n: int, rho: float) -> float:
    """``P(Z_1 <= 0, ..., Z_n <= 0)`` for ``n`` standard Gaussians of pairwise correlation ``rho`` in ``[0, 1]``:
    ``int phi(z) Phi(a z)^n dz`` with ``a = sqrt(rho / (1 - rho))`` (``Z_i = sqrt(rho) z + sqrt(1 - rho) e_i``),
    by the trapezoid rule on ``[-9, 9]`` with a step of ``min(1, 1/a) / 200`` (the integrand's steepest part
    has width ``1/a``: absolute error below 1e-9).

    >>> orthant(4, 0.0), round(orthant(2, 0.5), 6)  # 2^-n; 1/4 + asin(rho)/(2 pi)
    (0.0625, 0.333333)
    """
    if not 0.0 <= rho <= 1.0:
        raise AdvdimError(f"the orthant probability needs a correlation in [0, 1], got {rho!r}")
    if rho == 0.0:
        return 0.5**n
    if rho >= 1.0:
        return 0.5
    a = math.sqrt(rho / (1.0 - rho))
    z = np.linspace(-9.0, 9.0, int(18 * 200 * max(1.0, a)) + 1)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(a * z / math.sqrt(2.0)))
    f = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * cdf**n
    return float(np.sum((f[1:] + f[:-1]) / 2.0) * (z[1] - z[0]))


def maxpool_gates(step: Step) -> np.ndarray:
    """Per output position ``(Ho, Wo)`` of a max pool on a ReLU's output (or before a ReLU): ``P(max of its
    window > 0) = 1 - orthant(n, rho)``, ``n`` the window's entries inside the map (-inf padding is never the max).

    The ReLU under a max pool is active on the routed unit iff the window's maximum pre-activation is
    positive (``max relu(z) = relu(max z)``); with the window's pre-activations taken equicorrelated at
    the mean-field ``rho`` of :func:`window_correlations`, this is the factor of the ReLU-max pair."""
    assert step.rho is not None
    ay, ax = step.axes()
    n = ay.sum(axis=1)[:, None] * ax.sum(axis=1)[None, :]
    table = {int(k): 1.0 - orthant(int(k), step.rho) for k in np.unique(n)}
    return np.vectorize(table.__getitem__, otypes=[float])(n)


def all_steps(spec: Spec) -> list[Step]:
    """Every step in execution order: a residual block's branch steps, then its projection, then the
    residual step itself (the addition)."""
    out: list[Step] = []

    def walk(seq: Sequence[Step]) -> None:
        for s in seq:
            walk(s.branch)
            if s.skip is not None:
                out.append(s.skip)
            out.append(s)

    walk(steps(spec))
    return out


def routing_layers(spec: Spec) -> list[Step]:
    """Layers after which no second-moment law follows: max pooling routes the gradient, and its law
    (the routed path sum) holds only where the window's correlation is known (:func:`window_correlations`)."""
    return [s for s in all_steps(spec) if isinstance(s.layer, GlobalMaxPool)
            or (isinstance(s.layer, MaxPool) and s.rho is None)]


def no_law_reason(s: Step) -> tuple[str, str] | None:
    """``(hypothesis, reason)`` when no path-sum law follows this layer (None: it has one)."""
    layer = s.layer
    where = f"layer {s.label} {layer.kind}"
    if isinstance(layer, MaxPool) and s.rho is not None:
        return None  # the routed path sum with the window's gate (docs/theory.md, 'Layers of library code')
    if isinstance(layer, MaxPool) and s.refused is not None:
        return "H1", f"{where}: {s.refused}"
    if isinstance(layer, MaxPool):
        return "H1", (f"{where} passes only the arg-max of each window: the unit kept is active with "
                      "probability other than 1/2, chosen by the weights; the law (the routed path sum) needs the "
                      "pool right after a ReLU of a symmetric input (or on one, right before a ReLU) with no max "
                      "pool, residual block or data normalisation before it (the window's correlation is known "
                      "only there)")
    if isinstance(layer, GlobalMaxPool):
        return "H1", (f"{where} passes only the arg-max of each window: the unit kept is active with "
                      "probability other than 1/2, chosen by the weights")
    if isinstance(layer, ReLU) and s.sign is Sign.SHIFTED:
        return "H1", (f"{where} acts on a residual sum x + a*branch(x) of a non-negative x and a zero-mean branch: "
                      "active with a probability between 1/2 and 1, set by the ratio of the two terms")
    if isinstance(layer, ReLU) and s.sign is Sign.MIXED:
        return "H1", (f"{where} acts on a value with no sign symmetry (a residual sum whose branch is not odd "
                      "in its input, or a GELU / normalisation output): its activation law is unknown")
    if isinstance(layer, GELU):
        return "H1", (f"{where}'s derivative Phi(z) + z phi(z) is not a Bernoulli(1/2) gate: its second "
                      "moment depends on the pre-activation's scale, hence on the input")
    if isinstance(layer, LayerNorm):
        return "H3", (f"{where} divides each token by its own standard deviation: its Jacobian "
                      "(I - 11^T/D - y y^T/D)/sigma is a data-dependent projection, not independent zero-mean weights")
    if isinstance(layer, Attention):
        return "H5", (f"{where}: the attention weights softmax(q.k/sqrt(D/heads)) depend on the input and on "
                      "the query and key weights, so the gradient has terms through the softmax that are not "
                      "sums over paths of independent weights")
    if isinstance(layer, BatchNorm) and layer.mode is BNMode.BATCH:
        return "H4", (f"{where}(mode=batch) normalises with the batch's mean and variance: each sample's "
                      "gradient has terms through the other samples, not a path sum over fixed weights")
    if isinstance(layer, Residual) and layer.scale != 0 and not branch_is_odd(layer, s.in_shape):
        return "H1", (f"layer {s.label} res: the branch does not end in a weight layer (followed only by "
                      "linear layers), so its last gates depend on the weights its paths share with the skip's: "
                      "the skip-branch cross terms do not vanish")
    return None


def no_law_layers(spec: Spec) -> list[tuple[Step, str, str]]:
    """``(step, hypothesis, reason)`` for every layer after which no path-sum law follows.

    >>> from advdim.arch import parse
    >>> [(s.label, h) for s, h, _ in no_law_layers(parse("3x8x8 > conv(8) > relu > res(conv(8) > relu > conv(8))"
    ...                                                   " > relu > flatten > dense(2)"))]
    [('3', 'H1')]
    """
    out: list[tuple[Step, str, str]] = []
    for s in all_steps(spec):
        got = no_law_reason(s)
        if got is not None:
            out.append((s, *got))
    return out


def check_logit(spec: Spec, logit: int) -> None:
    if isinstance(logit, bool) or not isinstance(logit, int) or not 0 <= logit < spec.n_classes:
        raise AdvdimError(f"logit index {logit!r} out of range for {spec.n_classes} logits")


# --------------------------------------------------------------------------------------------
# Path-sum variances
# --------------------------------------------------------------------------------------------


def input_variances(spec: Spec, init: str = "he", logit: int = 0) -> np.ndarray:
    """``E[(d f_k / d x_i)^2]`` for every input node, shape ``spec.input_shape``, float64.

    The sum over all paths from ``x_i`` to ``f_k`` of the products of the weights' second
    moments and of the ReLU factors (proof of Theorem 5); a residual block adds its skip's and
    ``scale^2`` times its branch's values.  Raises :class:`HypothesisError` when a layer has no
    path-sum law (:func:`no_law_layers`: max pooling, GELU, layer norm, attention, ...).

    >>> from advdim.arch import parse
    >>> v = input_variances(parse("1x4x4 > flatten > dense(8) > relu > dense(3)"))
    >>> round(float(v.sum()), 12), v.shape
    (2.0, (1, 4, 4))
    >>> round(float(input_variances(parse("3x8x8 > conv(16) > relu > res(conv(16) > relu > conv(16), scale=0.5)"
    ...                                   " > flatten > dense(10)")).sum()), 12)  # 2 (1 + 0.5^2 * 2)
    3.0
    """
    init = init_name(init)
    check_logit(spec, logit)
    bad = no_law_layers(spec)
    if bad:
        raise HypothesisError(f"no path-sum law ({bad[0][1]}): {bad[0][2]}; measure it by simulation")
    v = np.zeros(spec.shapes()[-1], dtype=np.float64)
    v[logit] = 1.0
    for step in reversed(steps(spec)):
        v = _back(step, v, init)
    return v


def _back(step: Step, v: np.ndarray, init: str) -> np.ndarray:
    layer = step.layer
    if isinstance(layer, Dense):
        var = weight_variance(init, *step.fans)
        return np.full(step.in_shape, var * float(v.sum()))
    if isinstance(layer, Conv):
        var = weight_variance(init, *step.fans)
        ay, ax = step.axes()
        u = v.sum(axis=0)
        return np.broadcast_to(var * (ay.T @ u @ ax), step.in_shape).copy()
    if isinstance(layer, AvgPool):
        k = layer.size
        return np.repeat(np.repeat(v, k, axis=1), k, axis=2) / float(k**4)
    if isinstance(layer, GlobalAvgPool):
        _, h, w = step.in_shape
        return np.broadcast_to((v / float((h * w) ** 2))[:, None, None], step.in_shape).copy()
    if isinstance(layer, Flatten):
        return v.reshape(step.in_shape)
    if isinstance(layer, ReLU):
        return v * relu_factor(step.sign)
    if isinstance(layer, BatchNorm) and layer.mode is BNMode.RUNNING:
        return v / (1.0 + BN_EPS)
    if isinstance(layer, Scale):
        return v * float(layer.factor) ** 2
    if isinstance(layer, MaxPool) and step.rho is not None:
        # each output routes to one arg-max of its n-entry window, each entry equally likely (exchangeable
        # in the mean field); the ReLU under (or right after) it is active w.p. 1 - orthant(n, rho), and the
        # ReLU's own step multiplies by 1/2: the pool carries the rest, 2 (1 - orthant(n, rho))
        ay, ax = step.axes()
        n = ay.sum(axis=1)[:, None] * ax.sum(axis=1)[None, :]
        routed = v * (2.0 * maxpool_gates(step) / n)[None]
        return np.einsum("yi,cyx,xj->cij", ay.astype(np.float64), routed, ax.astype(np.float64))
    if isinstance(layer, Residual):  # V_in = back_skip(V) + a^2 back_branch(V): no cross terms (branch_is_odd)
        branch = v
        for b in reversed(step.branch):
            branch = _back(b, branch, init)
        skip = v if step.skip is None else _back(step.skip, v / (1.0 + BN_EPS) if layer.projbn else v, init)
        return skip + float(layer.scale) ** 2 * branch
    raise HypothesisError(f"layer {step.label} ({layer.kind}): no path-sum law")


# --------------------------------------------------------------------------------------------
# Path-degree classes (symmetry assumption S)
# --------------------------------------------------------------------------------------------

Poly = tuple[tuple[tuple[int, ...], int], ...]  # canonical: sorted (monomial, count) pairs


def _poly_add(acc: dict[tuple[int, ...], int], poly: Poly, deg: int | None, mult: int) -> None:
    for mono, count in poly:
        key = mono if deg is None else tuple(sorted((*mono, deg)))
        acc[key] = acc.get(key, 0) + mult * count


def _canon(acc: dict[tuple[int, ...], int]) -> Poly:
    return tuple(sorted((m, c) for m, c in acc.items() if c))


#: the most monomials the distinct path-degree polynomials of a residual net may hold together (a safety
#: net: the paths of a residual net differ in length, skip or branch at every block, so where in-degrees
#: vary the polynomials grow exponentially with the number of blocks; see :func:`s_undecided`)
#: (``resnet(padding=reflect,channels=8)``: 2080 classes at s = 64, 45 s; refused at this budget)
MAX_RESIDUAL_MONOMIALS = 30_000


class _Interner:
    """Maps polynomials to dense integer class ids (equal id <=> equal polynomial); with a ``budget``,
    refuses (HypothesisError) once the distinct polynomials hold more monomials than that."""

    def __init__(self, budget: int | None = None) -> None:
        self.ids: dict[Poly, int] = {}
        self.polys: list[Poly] = []
        self.budget = budget
        self.monomials = 0

    def __call__(self, poly: Poly) -> int:
        got = self.ids.get(poly)
        if got is None:
            got = self.ids[poly] = len(self.polys)
            self.polys.append(poly)
            self.monomials += len(poly)
            if self.budget is not None and self.monomials > self.budget:
                raise HypothesisError(f"not decided: the path-degree polynomials of this residual net hold more than "
                                      f"{self.budget} monomials (deciding S would take minutes; the law does not "
                                      "need S)")
        return got


@dataclass(frozen=True)
class Classes:
    """Path-degree classes of the input nodes: ``ids`` (shape ``input_shape``) and their polynomials."""

    ids: np.ndarray
    polys: tuple[Poly, ...]

    @property
    def symmetric(self) -> bool:
        return len(np.unique(self.ids)) == 1

    @property
    def breaking_share(self) -> float:
        """Share of input nodes outside the largest class (0 when S holds)."""
        counts = np.bincount(self.ids.ravel())
        return float(1.0 - counts.max() / self.ids.size)


def path_degree_classes(spec: Spec, logit: int = 0) -> Classes:
    """Group input nodes by their multiset of path-degrees to ``f_logit`` (assumption S).

    The in-degree of a node counts incoming edges of the multigraph (reflect and circular
    padding can read one input twice); with zero padding, border nodes have smaller in-degrees.
    A residual sum node's in-degree is its skip's edges plus its branch's.  Raises
    :class:`HypothesisError` when a residual net's polynomials exceed :data:`MAX_RESIDUAL_MONOMIALS`.

    >>> from advdim.arch import parse
    >>> parse_ = parse("1x8x8 > conv(2,k=3,pad=circular) > relu > flatten > dense(3)")
    >>> path_degree_classes(parse_).symmetric
    True
    >>> path_degree_classes(parse("1x8x8 > conv(2,k=3,pad=zeros) > relu > flatten > dense(3)")).breaking_share
    0.75
    """
    check_logit(spec, logit)
    residual = any(isinstance(s.layer, Residual) for s in all_steps(spec))
    intern = _Interner(MAX_RESIDUAL_MONOMIALS if residual else None)
    one: Poly = (((), 1),)
    zero: Poly = ()
    n_out = spec.shapes()[-1][0]
    ids = np.array([intern(one if j == logit else zero) for j in range(n_out)], dtype=np.int64)
    for step in reversed(steps(spec)):
        ids = _back_classes(step, ids, intern)
    # re-number densely
    uniq, inverse = np.unique(ids.ravel(), return_inverse=True)
    return Classes(inverse.reshape(ids.shape), tuple(intern.polys[int(u)] for u in uniq))


def _classes_from_keys(keys: np.ndarray, build: Callable[[np.ndarray], Poly], intern: _Interner) -> np.ndarray:
    """Intern the polynomial of each distinct key row; returns the class id of every row."""
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    cls = np.array([intern(build(row)) for row in uniq], dtype=np.int64)
    return cls[np.asarray(inverse).ravel()]


#: an in-degree added to a layer's own: the other incoming edges of a residual sum node (per output
#: position of a map, or one number)
Extra = int | np.ndarray


def s_undecided(spec: Spec) -> str | None:
    """Why S is not decided on ``spec`` (None: it is).  Layer norm, attention and batch-mode batch
    norm couple nodes through data-dependent statistics: their graph has no path-degrees of
    independent weights.  In a residual net with zero padding the path-degree polynomials are too
    large to build (``resnet(padding=zeros,blocks=2)``: 36 classes of up to 758 monomials in 3 s at
    s = 8, minutes at s = 16); without zero padding every unit of a layer has the same in-degree and
    they stay small (``resnet(pool=gap)`` at s = 64: 45 classes of at most 9 monomials, 1 s)."""
    st = all_steps(spec)
    for s in st:
        if isinstance(s.layer, (LayerNorm, Attention)) or (
                isinstance(s.layer, BatchNorm) and s.layer.mode is BNMode.BATCH):
            return f"not decided: layer {s.label} {s.layer.kind} is not a graph of independent weights"
    if any(isinstance(s.layer, Residual) for s in st):
        for s in st:
            if isinstance(s.layer, Conv) and s.layer.padding is Padding.ZEROS and s.layer.pad > 0:
                return (f"not decided: layer {s.label} zero-pads (border nodes have in-degrees of their own) in a "
                        "residual net (paths of many lengths): the path-degree polynomials grow exponentially "
                        "with the blocks (the law does not need S)")
    return None


def _graph_layer(step: Step) -> bool:
    """Whether the layer has edges (a node-wise layer -- ReLU, GELU, batch norm, flatten -- keeps its nodes)."""
    return not isinstance(step.layer, (ReLU, GELU, BatchNorm, Flatten, Scale))


def _indeg_out(step: Step) -> Extra:
    """In-degree of each output node of a graph layer: ``(Ho, Wo)`` per position on maps, else one number."""
    layer = step.layer
    if isinstance(layer, Conv):
        ay, ax = step.axes()
        return step.in_shape[0] * ay.sum(axis=1)[:, None] * ax.sum(axis=1)[None, :]
    if isinstance(layer, AvgPool):
        return layer.size**2
    if isinstance(layer, MaxPool):  # an overlapping or padded window reads fewer inputs at the borders
        ay, ax = step.axes()
        return ay.sum(axis=1)[:, None] * ax.sum(axis=1)[None, :]
    if isinstance(layer, Dense):
        return step.in_shape[0]
    if isinstance(layer, (GlobalAvgPool, GlobalMaxPool)):
        return step.in_shape[1] * step.in_shape[2]
    if isinstance(layer, Residual):
        return (1 if step.skip is None else _indeg_out(step.skip)) + _branch_indeg(step)
    raise AdvdimError(f"layer {step.label}: unsupported layer {layer.kind}")


def _last_graph(branch: tuple[Step, ...]) -> int | None:
    return next((j for j in reversed(range(len(branch))) if _graph_layer(branch[j])), None)


def _branch_indeg(step: Step) -> Extra:
    """Edges a residual sum node receives from the branch (1 when the branch has only node-wise layers)."""
    last = _last_graph(step.branch)
    return 1 if last is None else _indeg_out(step.branch[last])


def _shift_ids(ids: np.ndarray, deg: Extra, intern: _Interner) -> np.ndarray:
    """Classes of the sources of one edge into each node of ``ids``, the node having in-degree ``deg``."""
    degs = np.broadcast_to(np.asarray(deg, dtype=np.int64), ids.shape)
    keys = np.stack([ids.ravel(), degs.ravel()], axis=1)
    return _classes_from_keys(keys, lambda row: _canon(_shift(intern.polys[int(row[0])], int(row[1]))),
                              intern).reshape(ids.shape)


def _add_ids(a: np.ndarray, b: np.ndarray, intern: _Interner) -> np.ndarray:
    """Classes of the node-wise sums of two polynomial maps of the same shape."""
    def build(row: np.ndarray) -> Poly:
        acc: dict[tuple[int, ...], int] = {}
        for i in row:
            _poly_add(acc, intern.polys[int(i)], None, 1)
        return _canon(acc)

    return _classes_from_keys(np.stack([a.ravel(), b.ravel()], axis=1), build, intern).reshape(a.shape)


def _back_residual(step: Step, ids: np.ndarray, intern: _Interner, extra: Extra) -> np.ndarray:
    """A sum node's in-degree is the skip's edges plus the branch's (plus ``extra`` from an outer sum)."""
    skip_deg: Extra = 1 if step.skip is None else _indeg_out(step.skip)
    branch_deg = _branch_indeg(step)
    if step.skip is None:
        skip = _shift_ids(ids, extra + skip_deg + branch_deg, intern)
    else:
        skip = _back_classes(step.skip, ids, intern, extra + branch_deg)
    last = _last_graph(step.branch)
    if last is None:  # node-wise branch: one more edge from the same node
        branch = _shift_ids(ids, extra + skip_deg + branch_deg, intern)
    else:
        branch = ids
        for j in reversed(range(len(step.branch))):
            branch = _back_classes(step.branch[j], branch, intern, extra + skip_deg if j == last else 0)
    return _add_ids(skip, branch, intern)


def _back_classes(step: Step, ids: np.ndarray, intern: _Interner, extra: Extra = 0) -> np.ndarray:
    layer = step.layer
    if isinstance(layer, (Flatten,)):
        return ids.reshape(step.in_shape)
    if isinstance(layer, (ReLU, BatchNorm, GELU, Scale)):
        return ids
    if isinstance(layer, Residual):
        return _back_residual(step, ids, intern, extra)
    if isinstance(layer, Dense):
        acc: dict[tuple[int, ...], int] = {}
        uniq, counts = np.unique(ids, return_counts=True)
        for u, c in zip(uniq, counts):
            _poly_add(acc, intern.polys[int(u)], step.in_shape[0] + int(extra), int(c))
        return np.full(step.in_shape, intern(_canon(acc)), dtype=np.int64)
    if isinstance(layer, (GlobalAvgPool, GlobalMaxPool)):  # every position of a channel alike (max pool as
        c, h, w = step.in_shape                             # max pooling: its routing is judged by H1)
        per_channel = np.array([intern(_canon(_shift(intern.polys[int(i)], h * w + int(extra)))) for i in ids])
        return np.broadcast_to(per_channel[:, None, None], step.in_shape).copy()
    if isinstance(layer, (Conv, AvgPool, MaxPool)):
        return _back_map(step, ids, intern, extra)
    raise AdvdimError(f"layer {step.label}: unsupported layer {layer.kind}")


def _shift(poly: Poly, deg: int) -> dict[tuple[int, ...], int]:
    acc: dict[tuple[int, ...], int] = {}
    _poly_add(acc, poly, deg, 1)
    return acc


def _neighbours(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per input index: the output indices it feeds (padded with -1) and their tap counts."""
    n_out, n_in = a.shape
    width = max(1, int((a > 0).sum(axis=0).max()))
    nbr = np.full((n_in, width), -1, dtype=np.int64)
    cnt = np.zeros((n_in, width), dtype=np.int64)
    for i in range(n_in):
        outs = np.nonzero(a[:, i])[0]
        nbr[i, : len(outs)] = outs
        cnt[i, : len(outs)] = a[outs, i]
    return nbr, cnt


def _back_map(step: Step, ids: np.ndarray, intern: _Interner, extra: Extra = 0) -> np.ndarray:
    """Classes of a conv / pool layer's inputs from the classes of its outputs (C, Ho, Wo); ``extra``:
    further in-degree of the output nodes (the other edges of a residual sum)."""
    c_in, h, w = step.in_shape
    ay, ax = step.axes()
    deg_y, deg_x = ay.sum(axis=1), ax.sum(axis=1)  # per output row / column: taps inside the map
    fan_c = c_in if isinstance(step.layer, Conv) else 1
    extra_yx = np.broadcast_to(np.asarray(extra, dtype=np.int64), (len(deg_y), len(deg_x)))
    indeg = fan_c * deg_y[:, None] * deg_x[None, :] + extra_yx  # (Ho, Wo)
    # label of an output position: (in-degree, sum over its channels of their polynomials)
    c_out = ids.shape[0]
    if isinstance(step.layer, Conv):
        col_keys = np.sort(ids.reshape(c_out, -1).T, axis=1)  # (Ho*Wo, C_out) multiset of channel classes
    else:
        col_keys = ids.reshape(c_out, -1).T  # pools keep channels apart
    keys = np.concatenate([indeg.reshape(-1, 1), col_keys], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    labels = np.asarray(inverse).reshape(indeg.shape)  # (Ho, Wo) label ids
    nby, cny = _neighbours(ay)
    nbx, cnx = _neighbours(ax)
    # key per input position: sorted list of (label, multiplicity) over the output positions it feeds
    lab = labels[np.clip(nby, 0, None)[:, None, :, None], np.clip(nbx, 0, None)[None, :, None, :]]
    mult = cny[:, None, :, None] * cnx[None, :, None, :]
    lab = np.where(mult > 0, lab, -1)
    base = int(mult.max()) + 1
    code = ((lab + 1) * base + mult).reshape(h, w, -1)
    code = np.sort(code, axis=2).reshape(h * w, -1)

    def edges(row: np.ndarray) -> Iterator[tuple[Any, int]]:
        """Decode one input position's key: (class key of an output position, multiplicity)."""
        for entry in row:
            label, m = divmod(int(entry), base)
            if label and m:
                yield uniq[label - 1], m

    if isinstance(step.layer, Conv):
        def build(row: np.ndarray) -> Poly:
            acc: dict[tuple[int, ...], int] = {}
            for key, m in edges(row):
                for cls in key[1:]:
                    _poly_add(acc, intern.polys[int(cls)], int(key[0]), m)
            return _canon(acc)

        pos = _classes_from_keys(code, build, intern).reshape(h, w)
        return np.broadcast_to(pos, step.in_shape).copy()
    # pools: per channel, one out-edge to (c, o) with in-degree size^2
    out = np.empty(step.in_shape, dtype=np.int64)
    for ch in range(c_in):
        def build_ch(row: np.ndarray, ch: int = ch) -> Poly:
            acc: dict[tuple[int, ...], int] = {}
            for key, m in edges(row):
                _poly_add(acc, intern.polys[int(key[1 + ch])], int(key[0]), m)
            return _canon(acc)

        out[ch] = _classes_from_keys(code, build_ch, intern).reshape(h, w)
    return out
