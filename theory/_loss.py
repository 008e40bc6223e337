"""The cross-entropy's input gradient at initialisation: the law of the logits and ``E||softmax(f) - e_y||_2``.

``d_x L = sum_k a_k d_x f_k`` with ``a = softmax(f) - e_y``.  In the wide limit (Section 5 of
``docs/theory.md``) the logits at a fixed input are independent centred Gaussians ``N(0, v_k)``,
the logit gradients ``d_x f_k`` are independent across ``k`` and independent of the logits, so
``E||d_x L||_q = E||a||_2 * E||d_x f_k||_q``.  This module gives both factors of the first one:

* :func:`logit_law`: ``v_k = E[f_k^2]`` from the spec by the forward second-moment recursion
  (inputs i.i.d. ``N(0, 1)`` as in ``advdim.simulate``, weights and biases as
  ``advdim.build.init_weights`` draws them).  Exact at any width for weight layers, ReLUs, flatten
  and running-mode batch norm; average pools need the correlations of neighbouring units, taken
  from the Gaussian (arc-cosine) closure of the wide limit: approximate, and said so.
* :func:`residual_moment`: ``E||softmax(z) - e_y||_2^r`` for ``z ~ N(0, diag(v))`` and a label ``y``
  uniform over the K classes, independent of ``z``, by randomised quasi-Monte Carlo (a Kronecker
  sequence with independent random shifts: unbiased, with a standard error from the shifts).

numpy only (``advdim theory`` starts without torch and SciPy).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from advdim.theory import _graph
from advdim.theory._graph import BN_EPS, Sign, Step

from advdim.arch import (
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Padding,
    ReLU,
    Scale,
    Spec,
)
from advdim.errors import AdvdimError, HypothesisError

# --------------------------------------------------------------------------------------------
# E||softmax(z) - e_y||_2^r by randomised quasi-Monte Carlo
# --------------------------------------------------------------------------------------------

#: points of the Kronecker sequence per random shift, and independent shifts.  Measured on the
#: He logit law (K = 10, v = 2): standard error 7e-5 of a value near 1 (0.1 s on one core); 2^17
#: points x 32 shifts: 7e-6.  Ten seeds of the shifts gave errors of -0.7 to 2.5 se against that reference
POINTS = 2**13
SHIFTS = 16
#: seed of the random shifts: the estimate is a fixed number for given arguments
SEED = 20190609


class Estimate(NamedTuple):
    """A numerical estimate and its standard error (over the independent random shifts)."""

    value: float
    se: float


def _kronecker(dim: int) -> np.ndarray:
    """Roberts' ``R_d`` generator ``alpha_j = phi^-(j+1) mod 1``, ``phi^(d+1) = phi + 1``: low discrepancy in any d."""
    phi = 2.0
    for _ in range(200):  # the fixed-point map is a contraction: converges to double precision
        phi = (1.0 + phi) ** (1.0 / (dim + 1))
    return np.mod(phi ** -np.arange(1, dim + 1, dtype=np.float64), 1.0)


# Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9)
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def _poly(coef: Sequence[float], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coef[0])
    for c in coef[1:]:
        out = out * x + c
    return out


def normal_quantile(u: np.ndarray) -> np.ndarray:
    """``Phi^-1(u)`` elementwise for ``u`` in (0, 1) (Acklam's algorithm, relative error < 1.2e-9).

    >>> [round(float(x), 6) for x in normal_quantile(np.array([0.5, 0.975, 0.001]))]
    [0.0, 1.959964, -3.090232]
    """
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    low, high = u < _P_LOW, u > 1 - _P_LOW
    mid = ~(low | high)
    q = u[mid] - 0.5
    r = q * q
    out[mid] = q * _poly(_A, r) / (_poly(_B, r) * r + 1.0)
    for mask, sign, p in ((low, 1.0, u[low]), (high, -1.0, 1.0 - u[high])):
        t = np.sqrt(-2.0 * np.log(p))
        out[mask] = sign * _poly(_C, t) / (_poly(_D, t) * t + 1.0)
    return out


def _residual_sq(z: np.ndarray, label: int | None) -> np.ndarray:
    """``||softmax(z) - e_y||_2^2`` per row of ``z`` (shape ``(n, K)``): one label, or averaged over the K labels
    (``None``: returns ``(n, K)``, column ``y`` for label ``y``)."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    sq = np.sum(p * p, axis=1, keepdims=True)
    if label is not None:
        return (sq[:, 0] - 2.0 * p[:, label] + 1.0)
    return sq - 2.0 * p + 1.0


@functools.lru_cache(maxsize=512)
def _residual_moment(variances: tuple[float, ...], order: int, points: int, shifts: int) -> Estimate:
    k = len(variances)
    sd = np.sqrt(np.array(variances, dtype=np.float64))
    uniform = bool(np.all(sd == sd[0]))
    if k == 1:  # one class: the softmax is 1 = e_y
        return Estimate(0.0, 0.0)
    if not np.any(sd > 0):
        exact = (1.0 - 1.0 / k) ** (order / 2)
        return Estimate(exact, 0.0)
    alpha = _kronecker(k)
    rng = np.random.default_rng(SEED)
    chunk = max(1, min(points, 2**22 // k))  # at most 4M values per array
    means = np.empty(shifts)
    for r in range(shifts):
        shift = rng.random(k)
        total = 0.0
        for start in range(0, points, chunk):
            n = np.arange(start, min(points, start + chunk), dtype=np.float64)
            u = np.mod(shift + np.multiply.outer(n, alpha), 1.0)
            u = 1.0 - np.abs(2.0 * u - 1.0)  # tent (baker's) transform: smoother periodisation, same integral
            u = np.clip(u, 2.0**-60, 1.0 - 2.0**-53)
            z = normal_quantile(u) * sd
            # equal variances: the law is exchangeable, label 0 stands for every label
            sq = _residual_sq(z, 0 if uniform else None)
            vals = np.maximum(sq, 0.0) ** (order / 2)
            total += float(vals.sum() if uniform else vals.mean(axis=1).sum())
        means[r] = total / points
    return Estimate(float(means.mean()), float(means.std(ddof=1) / math.sqrt(shifts)))


def residual_moment(variances: Sequence[float], order: int = 1, points: int = POINTS,
                    shifts: int = SHIFTS) -> Estimate:
    """``E||softmax(z) - e_y||_2^order``, ``z_k ~ N(0, variances[k])`` independent, ``y`` uniform over the K
    classes and independent of ``z`` (labels drawn independently of the net, as in ``advdim simulate``).

    Randomised quasi-Monte Carlo: ``points`` points of the Kronecker sequence ``R_K`` under the
    tent transform, mapped through the normal quantile, each of ``shifts`` independent uniform
    random shifts (mod 1) giving an unbiased estimate; the value is their mean and ``se`` its
    standard error.  The quantile's relative error (< 1.2e-9) adds a bias below 1e-8.  With all
    variances 0 the softmax is uniform and the value is exact: ``(1 - 1/K)^(order/2)``.

    Args:
        variances: ``(K,)`` logit variances.
        order: 1 (``E||a||_2``, the loss-gradient prefactor) or 2 (``E||a||_2^2``).
    Returns:
        :class:`Estimate` ``(value, se)``.

    >>> round(residual_moment([0.0] * 10).value, 12) == round(math.sqrt(0.9), 12)
    True
    >>> est = residual_moment([2.0] * 10)
    >>> round(est.value, 3), est.se < 2e-4
    (1.024, True)
    """
    v = tuple(float(x) for x in variances)
    if not v:
        raise AdvdimError("the softmax needs at least one class")
    if not all(math.isfinite(x) and x >= 0 for x in v):
        raise AdvdimError(f"logit variances must be finite and non-negative, got {list(variances)!r}")
    if order not in (1, 2):
        raise AdvdimError(f"order must be 1 or 2, got {order!r}")
    if points < 1 or shifts < 2:
        raise AdvdimError(f"need points >= 1 and shifts >= 2, got {points}, {shifts}")
    # 12 significant digits (a change of the value below 1e-11): equal laws computed by different
    # float paths share one cache entry
    key = tuple(float(f"{x:.12g}") for x in v)
    return _residual_moment(key, int(order), int(points), int(shifts))


# --------------------------------------------------------------------------------------------
# The logit law: forward second moments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitLaw:
    """``E[f_k^2]`` of every logit at initialisation, inputs i.i.d. ``N(0, 1)``.

    Attributes:
        variances: ``(K,)`` the logits' second moments (their means are 0: zero-mean last-layer weights).
        exact: True when the recursion is exact at any width (no average pooling on a map).
        note: how it was computed, or why it is approximate.
    """

    variances: tuple[float, ...]
    exact: bool
    note: str

    @property
    def variance(self) -> float:
        """The common variance (the mean over the logits if they differ)."""
        return float(np.mean(self.variances))


_EXACT_NOTE = ("exact: zero-mean weights independent of their input propagate second moments linearly, a ReLU "
               "of a symmetric input halves them")


def relu_cross_moment(var_a: np.ndarray, var_b: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """``E[relu(u) relu(w)]`` for centred jointly Gaussian ``(u, w)`` (the arc-cosine kernel of degree 1).

    ``sqrt(ab) (sin t + (pi - t) cos t) / (2 pi)`` with ``cos t = c / sqrt(ab)``; ``a/2`` on the diagonal.

    >>> float(relu_cross_moment(np.array(2.0), np.array(2.0), np.array(2.0)))
    1.0
    >>> round(float(relu_cross_moment(np.array(1.0), np.array(1.0), np.array(0.0))), 6)  # 1/(2 pi)
    0.159155
    """
    scale = np.sqrt(np.maximum(var_a * var_b, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.clip(np.where(scale > 0, cross / scale, 0.0), -1.0, 1.0)
    theta = np.arccos(rho)
    return scale * (np.sin(theta) + (np.pi - theta) * rho) / (2.0 * np.pi)


class _State:
    """Second moments of the values entering a layer, channel-averaged (channels are exchangeable).

    ``kind``: ``"diag"`` (``m`` of shape ``(H, W)``: per position); ``"stat"`` (``m`` of shape
    ``(H, W)``: the bulk covariance between positions at each circular offset, and ``diag`` the exact
    per-position second moments); ``"full"`` (``(P, P)``: between positions) or ``"flat"`` (``(n,)``:
    per unit).
    """

    def __init__(self, kind: str, m: np.ndarray, channels: int, diag: np.ndarray | None = None) -> None:
        self.kind, self.m, self.channels, self.diag = kind, m, channels, diag

    def per_position(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "diag":
            return self.m
        if self.kind == "stat":
            assert self.diag is not None
            return self.diag
        return np.diag(self.m).reshape(shape)

    def correlation(self) -> np.ndarray:
        """``stat``: the bulk correlation coefficient at each circular offset."""
        top = float(self.m[0, 0])
        return self.m / top if top > 0 else np.zeros_like(self.m)


def _bias_variance(init: str, fan_in: int) -> float:
    """``E[b^2]``: PyTorch's default draws biases uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``; the others 0."""
    return 1.0 / (3.0 * fan_in) if init == "torch" else 0.0


def _conv_taps(n_in: int, n_out: int, layer: Conv) -> np.ndarray:
    """``idx[o, t]``: the input position read by tap ``t`` of output ``o`` along one axis, -1 for zero padding."""
    idx = np.full((n_out, layer.kernel), -1, dtype=np.int64)
    for o in range(n_out):
        for t in range(layer.kernel):
            i = o * layer.stride - layer.pad + t * layer.dilation
            if layer.padding is Padding.CIRCULAR:
                i %= n_in
            elif layer.padding is Padding.REFLECT:
                i = -i if i < 0 else (2 * (n_in - 1) - i if i >= n_in else i)
            idx[o, t] = i if 0 <= i < n_in else -1
    return idx


def _stationary(step: Step) -> bool:
    """A conv or pool that maps a circularly stationary covariance to a stationary one."""
    layer = step.layer
    if not isinstance(layer, (Conv, AvgPool)):
        return True
    (_, h, w), (_, ho, wo) = step.in_shape, step.out_shape
    if isinstance(layer, Conv):
        return layer.padding is Padding.CIRCULAR and h == ho * layer.stride and w == wo * layer.stride
    return h == ho * layer.size and w == wo * layer.size


def _conv_diag(m: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """``sum_t m[i(o, t)]`` per output position (zero-padded taps read 0)."""
    out = np.zeros((iy.shape[0], ix.shape[0]))
    for ty in range(iy.shape[1]):
        for tx in range(ix.shape[1]):
            ok = (iy[:, ty, None] >= 0) & (ix[None, :, tx] >= 0)
            out += np.where(ok, m[iy[:, ty, None], ix[None, :, tx]], 0.0)
    return out


def _conv(step: Step, st: _State, init: str) -> _State:
    layer = step.layer
    assert isinstance(layer, Conv)
    fan_in, fan_out, rows = step.fans
    var = _graph.weight_variance(init, fan_in, fan_out, rows)
    bias = _bias_variance(init, fan_in) if layer.bias else 0.0
    c_in, h, w = step.in_shape
    _, ho, wo = step.out_shape
    iy, ix = _conv_taps(h, ho, layer), _conv_taps(w, wo, layer)
    if st.kind in ("diag", "stat"):
        diag = var * c_in * _conv_diag(st.per_position((h, w)), iy, ix) + bias
        if st.kind == "diag":
            return _State("diag", diag, layer.out_channels)
        # bulk: E z_o z_(o+delta) = Var(w) C_in sum_t M[stride delta], every tap sees the same offset
        m = var * fan_in * st.m[::layer.stride, ::layer.stride][:ho, :wo] + bias
        return _State("stat", m, layer.out_channels, diag)
    out = np.zeros((ho * wo, ho * wo))
    for ty in range(layer.kernel):
        for tx in range(layer.kernel):
            flat = (iy[:, ty, None] * w + ix[None, :, tx]).ravel()
            ok = ((iy[:, ty, None] >= 0) & (ix[None, :, tx] >= 0)).ravel()
            sel = np.where(ok, flat, 0)
            out += np.where(ok[:, None] & ok[None, :], st.m[np.ix_(sel, sel)], 0.0)
    return _State("full", var * c_in * out + bias, layer.out_channels)


def _relu(step: Step, st: _State) -> _State:
    if step.sign is Sign.NONNEG:  # a ReLU of non-negative values is the identity
        return st
    if st.kind in ("diag", "flat"):
        return _State(st.kind, st.m / 2.0, st.channels)
    if st.kind == "stat":
        assert st.diag is not None
        return _State("stat", relu_cross_moment(st.m[0, 0], st.m[0, 0], st.m), st.channels, st.diag / 2.0)
    dg = np.diag(st.m)
    return _State("full", relu_cross_moment(dg[:, None], dg[None, :], st.m), st.channels)


def _avgpool(step: Step, st: _State) -> _State:
    layer = step.layer
    assert isinstance(layer, AvgPool)
    k = layer.size
    _, h, w = step.in_shape
    _, ho, wo = step.out_shape
    if st.kind == "stat":  # bulk: M'[delta] = k^-4 sum over both windows of M[k delta + b - a]
        acc = np.zeros((ho, wo))
        for dy in range(-(k - 1), k):
            for dx in range(-(k - 1), k):
                mult = (k - abs(dy)) * (k - abs(dx))
                shifted = np.roll(st.m, (-dy, -dx), axis=(0, 1))
                acc += mult * shifted[::k, ::k][:ho, :wo]
        # per position: k^-4 sum_(a, b in the window) rho[b - a] sqrt(D_a D_b), exact on the diagonal a = b
        rho = st.correlation()
        root = np.sqrt(st.per_position((h, w))[:ho * k, :wo * k]).reshape(ho, k, wo, k)
        diag = np.zeros((ho, wo))
        for ay in range(k):
            for ax in range(k):
                for by in range(k):
                    for bx in range(k):
                        diag += rho[(by - ay) % h, (bx - ax) % w] * root[:, ay, :, ax] * root[:, by, :, bx]
        return _State("stat", acc / k**4, st.channels, diag / k**4)
    m = st.m.reshape(h, w, h, w)[:ho * k, :wo * k, :ho * k, :wo * k]  # windows drop the ragged border
    m = m.reshape(ho, k, wo, k, ho, k, wo, k).sum(axis=(1, 3, 5, 7)) / k**4
    return _State("full", m.reshape(ho * wo, ho * wo), st.channels)


def _to_flat(step: Step, st: _State) -> _State:
    c, h, w = step.in_shape
    if isinstance(step.layer, GlobalAvgPool):
        if st.kind == "stat":  # (1/P^2) sum_(j, j') rho[j' - j] sqrt(D_j D_j'): the autocorrelation of sqrt(D)
            root = np.sqrt(st.per_position((h, w)))
            auto = np.fft.ifft2(np.abs(np.fft.fft2(root)) ** 2).real
            mean_sq = float(np.sum(st.correlation() * auto)) / (h * w) ** 2
        elif st.kind == "full":
            mean_sq = float(st.m.mean())
        else:
            raise AssertionError("a global pool needs the covariance between positions")
        return _State("flat", np.full(c, mean_sq), c)
    return _State("flat", np.repeat(st.per_position((h, w))[None], c, axis=0).ravel(), c * h * w)


def _dense(step: Step, st: _State, init: str) -> _State:
    layer = step.layer
    assert isinstance(layer, Dense)
    fan_in, fan_out, rows = step.fans
    var = _graph.weight_variance(init, fan_in, fan_out, rows)
    bias = _bias_variance(init, fan_in) if layer.bias else 0.0
    return _State("flat", np.full(layer.out_features, var * float(st.m.sum()) + bias), layer.out_features)


@functools.lru_cache(maxsize=256)
def logit_law(spec: Spec, init: str = "he", full: bool = False) -> LogitLaw:
    """``E[f_k^2]`` per logit by the forward second-moment recursion (wide limit: ``f ~ N(0, diag(v))``).

    Inputs i.i.d. ``N(0, 1)``; weights and biases as ``advdim.build.init_weights`` draws them (He,
    Glorot, LeCun, orthogonal: biases 0; PyTorch's default: biases uniform, ``E b^2 = 1/(3 fan_in)``).
    Per layer, channel-averaged (channels are exchangeable at initialisation):

    * conv / dense: ``E z_o z_o' = Var(w) C_in sum_t E h_(o+t) h_(o'+t) + E b^2`` (zero-mean weights,
      independent of their input, uncorrelated with each other: exact at any width);
    * ReLU of a symmetric input: ``E relu(z)^2 = E z^2 / 2`` (exact: the pre-activation is symmetric);
      between two positions the arc-cosine kernel of the Gaussian closure (wide limit); a ReLU of
      non-negative values is the identity;
    * average pool, global average pool: the exact linear map of the covariance between positions;
    * batch norm (running statistics at init): ``1 / (1 + eps)``; ``scale(a)``: ``a^2``.

    Moments between positions are only carried up to the last average pool, which needs them; the
    logit variances are exact when the spec has none.  They are carried as the per-position second
    moments (exact) and the bulk covariance at each circular offset, ``O(positions)`` per layer:
    exact under the closure when every layer up to the last pool is circular (the default
    families); with zero or reflect padding the border pairs take the bulk's correlation
    coefficients (said in ``note``).  ``full=True`` carries the whole ``(P, P)`` covariance instead
    (``8 P^2`` bytes: small maps only; the reference the tests compare with).

    Raises :class:`HypothesisError` for layers without a second-moment rule here (max pooling,
    batch statistics, layer norm, GELU, attention, residual blocks).

    >>> from advdim.arch import family
    >>> law = logit_law(family("strided").spec(16))
    >>> round(law.variance, 12), law.exact  # He: the second moment is preserved, the logit layer doubles it
    (2.0, True)
    """
    init = _graph.init_name(init)
    st = _graph.steps(spec)
    pools = [s.index for s in st if isinstance(s.layer, (AvgPool, GlobalAvgPool)) and len(s.in_shape) == 3]
    last_pool = max(pools, default=-1)
    c, h, w = spec.input_shape
    notes: list[str] = []
    state: _State
    if last_pool < 0:
        state = _State("diag", np.ones((h, w)), c)
    elif full:
        state = _State("full", np.eye(h * w), c)
    else:
        bulk = np.zeros((h, w))
        bulk[0, 0] = 1.0
        state = _State("stat", bulk, c, np.ones((h, w)))
        if not all(_stationary(s) for s in st[:last_pool + 1]):
            notes.append("border pairs of positions take the bulk's correlation coefficients (per-position second "
                         "moments exact)")
    for step in st:
        layer = step.layer
        if step.index == last_pool + 1 and state.kind in ("full", "stat") and len(step.in_shape) == 3:
            state = _State("diag", state.per_position(step.in_shape[1:]), state.channels)
        if isinstance(layer, Conv):
            state = _conv(step, state, init)
        elif isinstance(layer, Dense):
            state = _dense(step, state, init)
        elif isinstance(layer, ReLU):
            if step.sign is Sign.ROUTED:
                raise HypothesisError(f"layer {step.index} relu after a max pool: no second-moment law")
            state = _relu(step, state)
        elif isinstance(layer, AvgPool):
            state = _avgpool(step, state)
        elif isinstance(layer, (Flatten, GlobalAvgPool)):
            if len(step.in_shape) == 3:
                state = _to_flat(step, state)
        elif isinstance(layer, BatchNorm):
            if layer.mode is not BNMode.RUNNING:
                raise HypothesisError(f"layer {step.index} batchnorm with batch statistics: the logit law depends "
                                      "on the batch")
            diag = None if state.diag is None else state.diag / (1.0 + BN_EPS)
            state = _State(state.kind, state.m / (1.0 + BN_EPS), state.channels, diag)
        elif isinstance(layer, Scale):  # every second moment times a^2 (exact)
            a2 = float(layer.factor) ** 2
            state = _State(state.kind, state.m * a2, state.channels, None if state.diag is None else state.diag * a2)
        else:
            raise HypothesisError(f"layer {step.index} ({layer.kind}): no forward second-moment law")
    v = state.m if state.kind == "flat" else np.repeat(state.per_position(spec.shapes()[-1][1:])[None],
                                                       state.channels, axis=0).ravel()
    if last_pool < 0:
        return LogitLaw(tuple(map(float, v)), True, _EXACT_NOTE)
    pooled = st[pools[0]]
    notes.insert(0, f"approximate: layer {pooled.index} {pooled.layer.kind} averages units whose correlations after a "
                    "ReLU come from the wide-limit Gaussian (arc-cosine) closure")
    return LogitLaw(tuple(map(float, v)), False, "; ".join(notes))
