"""Wide-limit ``E||d_x f_k||_2^2`` from spatial covariances: what the path sum misses under average pooling.

The path sum (:mod:`advdim.theory._graph`) pairs only identical paths and treats every ReLU gate as a
Bernoulli(1/2) independent of the weights and of the gradient (H1, H4, H5).  Let every hidden
layer's channel count go to infinity, the first layer's input channels staying fixed, and fix an
input x.  Per channel, the pre-activations ``z`` of a layer and their tangents ``dz^i = dz / dx_i``
are jointly centred Gaussian over the positions of the map: exactly at the first layer (both are
linear in the channel's Gaussian weights ``w``: ``z_p = w.a_p``, ``dz_p^i = w.e_p^i``, ``a_p`` the
input patch), by the central limit over channels at the others.  Three covariances are carried,
``S = Cov(z, z)``, ``c^i = Cov(z, dz^i)``, ``T^i = Cov(dz^i, dz^i)``:

* a convolution maps each to ``Var(w) C_in sum_t A_t (.) A_t^T`` (``A_t``: which input position tap
  ``t`` of each output reads), a pool to ``P (.) P^T``, a dense layer to ``Var(w)`` times the sum over
  its inputs;
* a ReLU (``rho = cos th`` the correlation of ``z_a, z_b``, ``P = (pi - th) / (2 pi)`` the probability
  that both gates are open) maps ``S`` to the arc-cosine kernel ``sqrt(S_aa S_bb) (sin th + (pi - th)
  cos th) / (2 pi)``, ``c`` to ``P c(a,b) + (sd_a / sd_b) sin th / (2 pi) c(b,b)`` and ``T`` to
  ``P T(a,b) + (u_a1 u_b2 + u_a2 u_b1 - rho (u_a1 u_b1 + u_a2 u_b2)) / (2 pi sin th)`` with
  ``u_a = (c(a,a) / sd_a, c(b,a) / sd_b)``, ``u_b = (c(a,b) / sd_a, c(b,b) / sd_b)`` (Gaussian
  regression of the tangents on ``z_a, z_b``, then orthant moments);
* at the logit, ``sum_i T^i = E_w||d_x f_k||_2^2``.

The part linear in ``T`` is carried backwards: ``B``, the covariance of ``d f_k / d h`` over
positions, goes through each layer transposed and is multiplied by ``P`` at each ReLU.  On the
diagonal this is the path sum; pooling merges positions, so ``B`` gets off-diagonal entries, and
only there do the terms the path sum drops survive (the second term of ``T`` vanishes for
``a = b``; ``P != 1/4`` for correlated neighbours):

    E_w||d_x f_k||^2 = sum_i [ C_1 <B_1, T_1^i> + sum_{wide ReLUs l} C_l sum_{a != b} B_l(a,b) cross_l(c_l^i)(a,b) ]

* the first layer's term is summed over every input coordinate in closed form:
  ``E[w_t w_t' 1(w.a > 0) 1(w.b > 0)] = Var [P delta_tt' + ((u_t v_t' + v_t u_t') - rho (u_t u_t' +
  v_t v_t')) / (2 pi sin th)]``, ``u, v`` the unit pre-gate patches (:func:`first_layer_moment`); the
  path sum keeps only ``t = t'``, ``p = p'``;
* the wide ReLUs' terms are quadratic in ``c^i``: their sum over ``i`` is exact for
  ``d <= EXACT_COORDINATES`` and otherwise the mean over Rademacher directions ``xi`` of the same
  terms for the tangent ``dz = sum_i xi_i dz^i`` (unbiased: ``E[xi xi^T] = I``).

The expectation over the i.i.d. ``N(0, 1)`` input has no closed form (each input's covariances
depend on all of it): it is the mean over seeded Gaussian inputs, reported with its standard error
(each per-input value already averages over every position, so the spread is small).

Numpy only; nothing here imports torch or scipy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
from advdim.inits import Init

#: inits whose first-layer weights are i.i.d. Gaussian (the closed form of the first layer needs it)
GAUSSIAN_INITS = frozenset({Init.HE, Init.LECUN, Init.GLOROT})
#: default number of input positions (inputs x positions per input) averaged over: 2^12
POSITIONS = 1 << 12
#: fewest Gaussian inputs of the default (the standard error is estimated from their spread)
MIN_INPUTS = 4
#: up to this input dimension the gate-tangent terms sum every input coordinate (exact)
EXACT_COORDINATES = 64
#: random directions per input for the gate-tangent terms above that dimension
PROBES = 4
#: tangent directions are propagated in batches of about this many covariance entries
BATCH_ENTRIES = 1 << 23
#: peak memory in covariance arrays of the largest map (measured: 1.3 GB for 4096 positions, ~10 arrays)
ARRAYS_AT_PEAK = 12


# --------------------------------------------------------------------------------------------
# Per-axis linear maps, applied to covariance arrays by gathers
# --------------------------------------------------------------------------------------------


class _Axis:
    """A small ``(rows, cols)`` matrix with few nonzeros per row, applied along one array axis.

    ``idx[j, r]`` / ``val[j, r]``: column and value of the j-th nonzero of row ``r`` (value 0
    where the row has fewer), so applying it is ``J`` gathers instead of a dense product.
    """

    def __init__(self, dense: np.ndarray) -> None:
        nz = dense != 0
        j = max(1, int(nz.sum(axis=1).max()))
        self.idx = np.zeros((j, dense.shape[0]), dtype=np.int64)
        self.val = np.zeros((j, dense.shape[0]), dtype=np.float64)
        for r in range(dense.shape[0]):
            cols = np.nonzero(nz[r])[0]
            self.idx[: cols.size, r] = cols
            self.val[: cols.size, r] = dense[r, cols]
        self.ones = [bool(np.all(v == 1.0)) for v in self.val]

    def apply(self, arr: np.ndarray, axis: int) -> np.ndarray:
        """``tensordot(dense, arr)`` along ``axis`` (the axis keeps its place; negative axes allowed)."""
        shape = [1] * arr.ndim
        shape[axis % arr.ndim] = -1
        out = np.take(arr, self.idx[0], axis=axis)
        if not self.ones[0]:
            out *= self.val[0].reshape(shape)
        for i, v, ones in zip(self.idx[1:], self.val[1:], self.ones[1:]):
            out += np.take(arr, i, axis=axis) if ones else np.take(arr, i, axis=axis) * v.reshape(shape)
        return out


def _tap_axes(n_in: int, n_out: int, layer: Conv) -> list[np.ndarray]:
    """Per tap, the ``(n_out, n_in)`` 0/1 matrix of which input each output reads (rows of zeros: padding)."""
    out = []
    for t in range(layer.kernel):
        a = np.zeros((n_out, n_in), dtype=np.float64)
        for o in range(n_out):
            i = o * layer.stride - layer.pad + t * layer.dilation
            if layer.padding is Padding.CIRCULAR:
                i %= n_in
            elif layer.padding is Padding.REFLECT:
                i = -i if i < 0 else (2 * (n_in - 1) - i if i >= n_in else i)
            elif not 0 <= i < n_in:
                continue
            a[o, i] = 1.0
        out.append(a)
    return out


def _pool_axis(n_in: int, size: int) -> np.ndarray:
    """``(n_in // size, n_in)`` averaging matrix of non-overlapping windows (``size = n_in``: global)."""
    return _graph.pool_axis(n_in, size).astype(np.float64) / size


def _linear_axes(step: Step) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis matrices of a pool (average or global average)."""
    _, h, w = step.in_shape
    if isinstance(step.layer, AvgPool):
        return _pool_axis(h, step.layer.size), _pool_axis(w, step.layer.size)
    return _pool_axis(h, h), _pool_axis(w, w)


# --------------------------------------------------------------------------------------------
# Gaussian ReLU kernels
# --------------------------------------------------------------------------------------------


def relu_kernel(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(E[relu(y_q) relu(y_q')], E[1(y_q > 0) 1(y_q' > 0)])`` for a centred Gaussian ``y`` of covariance ``cov``.

    Arc-cosine kernel ``sqrt(s s') (sin th + (pi - th) cos th) / (2 pi)`` and orthant probability
    ``(pi - th) / (2 pi)``, ``cos th = rho`` (Cho and Saul 2009); shapes ``(H, W, H, W)``.

    >>> k, g = relu_kernel(np.array([[[[2.0, 0.0]], [[0.0, 2.0]]]]).reshape(1, 2, 1, 2))
    >>> k.reshape(2, 2).round(4).tolist(), g.reshape(2, 2).tolist()
    ([[1.0, 0.3183], [0.3183, 1.0]], [[0.5, 0.25], [0.25, 0.5]])
    """
    n = cov.shape[0] * cov.shape[1]
    flat = cov.reshape(n, n)
    sd = np.sqrt(np.diagonal(flat))
    if np.any(sd == 0):
        raise HypothesisError("a ReLU input has zero variance at some position: no Gaussian gate")
    rho = flat / sd[:, None]
    rho /= sd[None, :]
    np.clip(rho, -1.0, 1.0, out=rho)
    np.fill_diagonal(rho, 1.0)
    gate = np.arccos(rho)
    np.subtract(math.pi, gate, out=gate)  # pi - theta
    kern = rho * gate
    np.multiply(rho, rho, out=rho)
    np.subtract(1.0, rho, out=rho)
    np.sqrt(rho, out=rho)  # sin theta
    kern += rho
    kern *= sd[:, None] / (2 * math.pi)
    kern *= sd[None, :]
    gate /= 2 * math.pi
    return kern.reshape(cov.shape), gate.reshape(cov.shape)


def first_layer_moment(a: np.ndarray, b: np.ndarray, ta: np.ndarray, tb: np.ndarray,
                       var: float) -> np.ndarray:
    """``E[w_t w_t' 1(w.a > 0) 1(w.b > 0)]`` for ``w ~ N(0, var I)`` (batched over leading axes).

    ``a, b``: ``(..., n)`` pre-gate patch vectors; ``ta, tb``: ``(...)`` tap indices ``t, t'``.
    Closed form ``var [P delta_tt' + ((u_t v_t' + v_t u_t') - rho (u_t u_t' + v_t v_t')) / (2 pi s)]``,
    ``u, v`` the unit vectors, ``rho = u.v``, ``s = sqrt(1 - rho^2)``, ``P = (pi - arccos rho) / (2 pi)``;
    ``a`` parallel to ``b`` gives ``var P delta_tt'``.

    >>> e = np.eye(3)
    >>> float(first_layer_moment(e[0], e[1], np.array(0), np.array(1), 1.0).round(6))   # 1 / (2 pi)
    0.159155
    """
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    if np.any(na == 0) or np.any(nb == 0):
        raise HypothesisError("a first-layer unit reads an all-zero patch: its gate is not a half-space")
    u, v = a / na[..., None], b / nb[..., None]
    rho = np.einsum("...n,...n->...", u, v)

    def at(vec: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.take_along_axis(vec, np.asarray(t)[..., None], -1)[..., 0]

    return _moment(rho, at(u, ta), at(u, tb), at(v, ta), at(v, tb), np.asarray(ta) == np.asarray(tb), var)


def _moment(rho: np.ndarray, ut: np.ndarray, ut2: np.ndarray, vt: np.ndarray, vt2: np.ndarray,
            same: np.ndarray, var: float) -> np.ndarray:
    """:func:`first_layer_moment` from ``rho`` and the unit vectors' entries ``u_t, u_t', v_t, v_t'``."""
    rho = np.clip(rho, -1.0, 1.0)
    s = np.sqrt(1.0 - rho**2)
    prob = (math.pi - np.arccos(rho)) / (2 * math.pi)
    num = (ut * vt2 + vt * ut2) - rho * (ut * ut2 + vt * vt2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = np.where(s > 1e-12, num / (2 * math.pi * np.where(s > 1e-12, s, 1.0)), 0.0)
    return var * (prob * same + cross)


# --------------------------------------------------------------------------------------------
# The plan: the first block (finite fan-in) and the wide layers as a list of operations
# --------------------------------------------------------------------------------------------


class _Linear:
    """A channel-wise linear map of the positions, ``sum_{ty, tx} Y_ty (x) X_tx`` (a convolution's taps,
    with the pools that follow it folded in; a pool alone has one tap), with the gains of the
    forward covariance (``Var(w) C_in``) and of the backward one (``Var(w) C_out``)."""

    def __init__(self, ys: list[np.ndarray], xs: list[np.ndarray], fwd: float, bwd: float) -> None:
        self.ys, self.xs, self.fwd, self.bwd = ys, xs, fwd, bwd
        self._ys, self._xs = [_Axis(m) for m in ys], [_Axis(m) for m in xs]
        self._yt, self._xt = [_Axis(m.T) for m in ys], [_Axis(m.T) for m in xs]

    def then(self, my: np.ndarray, mx: np.ndarray, scale: float) -> _Linear:
        """This map followed by the per-axis map ``my (x) mx`` times ``scale`` (a pool, a batch norm)."""
        return _Linear([my @ m for m in self.ys], [mx @ m for m in self.xs], self.fwd * scale**2,
                       self.bwd * scale**2)

    @staticmethod
    def _apply(k: np.ndarray, ys: list[_Axis], xs: list[_Axis]) -> np.ndarray:
        """On the last four axes ``(H, W, H, W)`` (leading axes are a batch)."""
        inner = xs[0].apply(xs[0].apply(k, -3), -1)
        for ax in xs[1:]:
            inner += ax.apply(ax.apply(k, -3), -1)
        out = ys[0].apply(ys[0].apply(inner, -4), -2)
        for ay in ys[1:]:
            out += ay.apply(ay.apply(inner, -4), -2)
        return out

    def forward(self, k: np.ndarray) -> np.ndarray:
        return self.fwd * self._apply(k, self._ys, self._xs)

    def backward(self, b: np.ndarray) -> np.ndarray:
        return self.bwd * self._apply(b, self._yt, self._xt)


@dataclass(frozen=True)
class _Gate:
    """A ReLU on a centred Gaussian input: index of its step, number of channels (units per position)."""

    index: int
    channels: int


@dataclass(frozen=True)
class _Dense:
    """A dense layer reading ``units`` values laid out on an ``(H, W)`` map (per channel)."""

    var: float
    units: int
    live: int  # output units that carry gradient: all, or 1 for the logit layer
    hw: tuple[int, int]


_Op = _Linear | _Gate | _Dense


@dataclass(frozen=True)
class _First:
    """The first convolution and the channel-wise layers up to its ReLU, with the routes of each input.

    ``pairs``: per pair of routes ``(t, p) -> r`` and ``(t', p') -> r'`` from one input position,
    the gate positions ``r1y, r1x, r2y, r2x``, tap indices within a channel ``t1, t2`` and the weight
    ``A_t[p, i] L[r, p] A_t'[p', i] L[r', p']`` (1-d arrays over the pairs with nonzero weight).
    """

    step: Step
    var: float
    channels: int  # its output channels that carry gradient
    ys: list[np.ndarray]  # per tap, the (H', H) / (W', W) 0/1 matrices of which input each output reads
    xs: list[np.ndarray]
    ly: np.ndarray
    lx: np.ndarray
    scale: float
    pairs: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Plan:
    first: _First
    gated: bool  # the first conv's ReLU exists before the next weight layer
    ops: tuple[_Op, ...]  # the operations after the ReLU (gated) or after the first conv (not gated)
    head: _Linear | None  # not gated: the first conv as a linear map (its backward gives B at the input)


def _unsupported(step: Step) -> HypothesisError:
    return HypothesisError(f"layer {step.index} ({step.layer.kind}): no wide-limit covariance law here "
                           "(conv, dense, relu, avgpool, globalavgpool, flatten and running batchnorm only)")


def _check(spec: Spec, init: Init) -> tuple[Step, ...] | None:
    """The steps, or None when the first weight layer is dense (one position: the path sum is exact)."""
    st = tuple(_graph.steps(spec))
    for s in st:
        if not isinstance(s.layer, (Conv, Dense, ReLU, AvgPool, GlobalAvgPool, Flatten, BatchNorm, Scale)):
            raise _unsupported(s)
        if isinstance(s.layer, BatchNorm) and s.layer.mode is not BNMode.RUNNING:
            raise HypothesisError(f"layer {s.index} batchnorm in batch mode couples the samples of a batch")
    weights = [s.index for s in st if isinstance(s.layer, (Conv, Dense))]
    if not weights:
        raise HypothesisError("the spec has no weight layer")
    if isinstance(st[weights[0]].layer, Dense):
        return None
    if weights[0] != 0:
        raise HypothesisError(f"layer 0 ({st[0].layer.kind}) acts on the raw input: the recursion starts at a "
                              "first conv or dense layer")
    for s in st[weights[-1] + 1:]:
        if isinstance(s.layer, Flatten) and len(s.in_shape) == 3 and s.in_shape[1] * s.in_shape[2] > 1:
            raise HypothesisError(f"layer {s.index} flattens a map into the logits: no channel is read out whole")
    if init not in GAUSSIAN_INITS:
        raise HypothesisError(f"{init.value} initialisation: the first layer's closed form needs i.i.d. Gaussian "
                              "weights (he, lecun, glorot)")
    return st


def _maps(st: tuple[Step, ...]) -> list[tuple[int, int]]:
    """Per step, the spatial ``(H, W)`` of its input in the covariance arrays (a flat input keeps the
    positions of the map it flattens; after a dense layer or a global pool it is ``(1, 1)``)."""
    maps, current = [], (1, 1)
    for s in st:
        if len(s.in_shape) == 3:
            current = (s.in_shape[1], s.in_shape[2])
        maps.append(current)
        if isinstance(s.layer, (Dense, GlobalAvgPool)):
            current = (1, 1)
    return maps


def _ops(st: tuple[Step, ...], lo: int, init: Init, readout: int) -> list[_Op]:
    """The wide part from step ``lo`` on, linear layers folded into the convolution before them."""
    maps = _maps(st)
    ops: list[_Op] = []
    for s in st[lo:]:
        layer = s.layer
        live = 1 if s.index == readout else None
        if isinstance(layer, Conv):
            var = _graph.weight_variance(init.value, *s.fans)
            (_, h, w), (_, ho, wo) = s.in_shape, s.out_shape
            ops.append(_Linear(_tap_axes(h, ho, layer), _tap_axes(w, wo, layer), var * s.in_shape[0],
                               var * (live or layer.out_channels)))
        elif isinstance(layer, (AvgPool, GlobalAvgPool, BatchNorm, Scale)):
            if isinstance(layer, (BatchNorm, Scale)):
                h, w = maps[s.index]
                my, mx = np.eye(h), np.eye(w)
                scale = float(layer.factor) if isinstance(layer, Scale) else 1.0 / math.sqrt(1.0 + BN_EPS)
            else:
                (my, mx), scale = _linear_axes(s), 1.0
            if ops and isinstance(ops[-1], _Linear):
                ops[-1] = ops[-1].then(my, mx, scale)
            else:
                ops.append(_Linear([my], [mx], scale**2, scale**2))
        elif isinstance(layer, ReLU) and s.sign is Sign.SYMMETRIC:
            h, w = maps[s.index]
            ops.append(_Gate(s.index, s.in_shape[0] if len(s.in_shape) == 3 else s.in_shape[0] // (h * w)))
        elif isinstance(layer, Dense):
            var = _graph.weight_variance(init.value, *s.fans)
            ops.append(_Dense(var, s.in_shape[0], live or layer.out_features, maps[s.index]))
    return ops


def _route_lists(taps: list[np.ndarray], chain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, per input index ``i``: the taps ``t`` and gate rows ``r`` through which ``x_i``
    reaches a gate, with weights ``A_t[o, i] L[r, o]`` (arrays ``(n_in, J)``, weight 0 where unused)."""
    n_in = taps[0].shape[1]
    rows: list[list[tuple[int, int, float]]] = [[] for _ in range(n_in)]
    for t, a in enumerate(taps):
        for out, inp in zip(*np.nonzero(a)):
            for row in np.nonzero(chain[:, out])[0]:
                rows[int(inp)].append((t, int(row), float(a[out, inp] * chain[row, out])))
    j = max(len(entries) for entries in rows)
    tap = np.zeros((n_in, j), dtype=np.int64)
    gate = np.zeros((n_in, j), dtype=np.int64)
    weight = np.zeros((n_in, j))
    for i, entries in enumerate(rows):
        for n, (t, r, v) in enumerate(entries):
            tap[i, n], gate[i, n], weight[i, n] = t, r, v
    return tap, gate, weight


def _first(st: tuple[Step, ...], init: Init, gate: int, readout: int) -> _First:
    step = st[0]
    layer = step.layer
    assert isinstance(layer, Conv)
    (_, h, w), (_, ho, wo) = step.in_shape, step.out_shape
    ly, lx, scale = np.eye(ho), np.eye(wo), 1.0
    for s in st[1:gate]:
        if isinstance(s.layer, (AvgPool, GlobalAvgPool)):
            py, px = _linear_axes(s)
            ly, lx = py @ ly, px @ lx
        elif isinstance(s.layer, BatchNorm):
            scale /= math.sqrt(1.0 + BN_EPS)
        elif isinstance(s.layer, Scale):
            scale *= float(s.layer.factor)
    ty, ry, wy = _route_lists(_tap_axes(h, ho, layer), ly)
    tx, rx, wx = _route_lists(_tap_axes(w, wo, layer), lx)
    # pairs (jy, jx), (jy', jx') of routes from each input position (y, x): arrays (h, w, jy, jx, jy, jx)
    one, one_x = (slice(None), None, slice(None), None, None, None), (None, slice(None), None, slice(None), None, None)
    two, two_x = (slice(None), None, None, None, slice(None), None), (None, slice(None), None, None, None, slice(None))
    weight = wy[one] * wx[one_x] * wy[two] * wx[two_x] * scale**2
    keep = weight != 0
    k = layer.kernel
    full = {"r1y": ry[one], "r1x": rx[one_x], "r2y": ry[two], "r2x": rx[two_x],
            "t1": ty[one] * k + tx[one_x], "t2": ty[two] * k + tx[two_x], "weight": weight}
    pairs = {key: np.broadcast_to(v, weight.shape)[keep] for key, v in full.items()}
    var = _graph.weight_variance(init.value, *step.fans)
    return _First(step, var, 1 if readout == 0 else layer.out_channels, _tap_axes(h, ho, layer),
                  _tap_axes(w, wo, layer), ly, lx, scale, pairs)


def _plan(spec: Spec, init: Init) -> _Plan | None:
    """The structure of the computation (independent of the input); None when the path sum is exact."""
    st = _check(spec, init)
    if st is None:
        return None
    readout = max(s.index for s in st if isinstance(s.layer, (Conv, Dense)))
    gate = None
    for s in st[1:]:
        if isinstance(s.layer, (Conv, Dense)):
            break
        if isinstance(s.layer, ReLU) and s.sign is Sign.SYMMETRIC:
            gate = s.index
            break
    if gate is None:
        first = _first(st, init, 1, readout)
        step = first.step
        assert isinstance(step.layer, Conv)
        (_, h, w), (_, ho, wo) = step.in_shape, step.out_shape
        head = _Linear(_tap_axes(h, ho, step.layer), _tap_axes(w, wo, step.layer), first.var * step.in_shape[0],
                       first.var * first.channels)
        return _Plan(first, False, tuple(_ops(st, 1, init, readout)), head)
    return _Plan(_first(st, init, gate, readout), True, tuple(_ops(st, gate, init, readout)), None)


# --------------------------------------------------------------------------------------------
# Forward and backward covariances for one input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GateStats:
    """A Gaussian ReLU's input law: standard deviations ``(H, W)``, and per pair ``sin th`` and the
    orthant probability ``(pi - th) / (2 pi)`` ``(H, W, H, W)``; ``cos th = rho``."""

    sd: np.ndarray
    rho: np.ndarray
    sin: np.ndarray
    prob: np.ndarray


def _forward(ops: tuple[_Op, ...], cov: np.ndarray) -> dict[int, _GateStats]:
    """The input law of every Gaussian ReLU, from the covariance ``cov`` entering the first operation."""
    stats: dict[int, _GateStats] = {}
    last = max((n for n, op in enumerate(ops) if isinstance(op, _Gate)), default=-1)
    k = cov
    for op in ops[: last + 1]:
        if isinstance(op, _Gate):
            h, w = k.shape[:2]
            sd = np.sqrt(np.diagonal(k.reshape(h * w, h * w))).reshape(h, w)
            k, prob = relu_kernel(k)
            rho = np.cos(2 * math.pi * (0.5 - prob))  # th = pi - 2 pi prob
            stats[op.index] = _GateStats(sd, rho, np.sqrt(np.clip(1.0 - rho**2, 0.0, None)), prob)
        elif isinstance(op, _Linear):
            k = op.forward(k)
        else:
            h, w = op.hw
            total = float(np.trace(k.reshape(h * w, h * w))) * op.units / (h * w)
            k = np.full((1, 1, 1, 1), op.var * total)
    return stats


def _backward(ops: tuple[_Op, ...], stats: dict[int, _GateStats]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-channel covariance ``B`` of ``d f_k / d (values entering the first operation)``, and of
    ``d f_k / d (ReLU output)`` at every Gaussian ReLU."""
    b = np.ones((1, 1, 1, 1))
    at: dict[int, np.ndarray] = {}
    for op in reversed(ops):
        if isinstance(op, _Gate):
            at[op.index] = b
            b = b * stats[op.index].prob
        elif isinstance(op, _Linear):
            b = op.backward(b)
        else:
            h, w = op.hw
            b = op.var * op.live * float(b.reshape(-1)[0]) * np.eye(h * w).reshape(h, w, h, w)
    return b, at


def _tangent_relu(c: np.ndarray, st: _GateStats) -> np.ndarray:
    """``E[relu(z_a) 1(z_b > 0) dz_b]`` from ``c(a, b) = Cov(z_a, dz_b)`` (``(..., H, W, H, W)``, leading axes
    a batch of tangents): ``P_ab c(a, b) + (sd_a / sd_b) sin th_ab / (2 pi) c(b, b)`` (Gaussian regression
    of ``dz_b`` on ``z_a, z_b``)."""
    h, w = st.sd.shape
    n = h * w
    flat = c.reshape(-1, n, n)
    sd = st.sd.reshape(n)
    diag = np.diagonal(flat, axis1=1, axis2=2) / sd
    out = st.prob.reshape(n, n) * flat + (st.sin.reshape(n, n) / (2 * math.pi) * sd[:, None]) * diag[:, None, :]
    return out.reshape(c.shape)


def _tangent_cross(c: np.ndarray, st: _GateStats, b: np.ndarray) -> float:
    """``sum_{a != b} B(a, b) [E 1(z_a>0) 1(z_b>0) dz_a dz_b - P_ab Cov(dz_a, dz_b)]`` summed over a batch of
    tangents ``c(a, b) = Cov(z_a, dz_b)`` (``(..., H, W, H, W)``): the part of the tangents' second moment
    after a ReLU that comes from their correlation with the gates,
    ``(u_a1 u_b2 + u_a2 u_b1 - rho (u_a1 u_b1 + u_a2 u_b2)) / (2 pi sin th)``, ``u_a = (c(a,a)/sd_a, c(b,a)/sd_b)``,
    ``u_b = (c(a,b)/sd_a, c(b,b)/sd_b)`` (Gaussian integration, as in :func:`first_layer_moment`)."""
    h, w = st.sd.shape
    n = h * w
    bf = b.reshape(n, n)
    rows, cols = np.nonzero(bf)
    off = rows != cols
    rows, cols = rows[off], cols[off]
    if rows.size == 0:
        return 0.0
    flat = c.reshape(-1, n, n)
    sd = st.sd.reshape(n)
    diag = np.diagonal(flat, axis1=1, axis2=2)
    caa, cbb = diag[:, rows], diag[:, cols]
    cab, cba = flat[:, rows, cols], flat[:, cols, rows]
    sa, sb = sd[rows], sd[cols]
    rho = st.rho.reshape(n, n)[rows, cols]
    sin = st.sin.reshape(n, n)[rows, cols]
    num = ((caa * cbb + cba * cab) / (sa * sb) - rho * (caa * cab / sa**2 + cba * cbb / sb**2)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(sin > 1e-12, num / (2 * math.pi * np.where(sin > 1e-12, sin, 1.0)), 0.0)
    return float(np.sum(bf[rows, cols] * val))


def _tangent_correction(plan: _Plan, c0: np.ndarray, stats: dict[int, _GateStats],
                        at: dict[int, np.ndarray]) -> float:
    """The gate-tangent cross terms of every wide ReLU, summed over a batch of tangent directions of the
    input, given ``c0 = Cov(z, dz)`` entering the first operation (``(m, H, W, H, W)``; the first ReLU's
    own term is computed exactly by :func:`_first_layer_sum`)."""
    gate_ops = [n for n, op in enumerate(plan.ops) if isinstance(op, _Gate)]
    if not gate_ops or (plan.gated and len(gate_ops) == 1):
        return 0.0
    c, total = c0, 0.0
    for n, op in enumerate(plan.ops[: gate_ops[-1] + 1]):
        if isinstance(op, _Gate):
            st = stats[op.index]
            if not (plan.gated and n == 0):
                total += op.channels * _tangent_cross(c, st, at[op.index])
            if n < gate_ops[-1]:
                c = _tangent_relu(c, st)
        elif isinstance(op, _Linear):
            c = op.forward(c)
        else:
            h, w = op.hw
            tr = np.trace(c.reshape(-1, h * w, h * w), axis1=1, axis2=2)
            c = (op.var * op.units / (h * w) * tr).reshape(-1, 1, 1, 1, 1)
    return total


def _patches(x: np.ndarray, first: _First) -> np.ndarray:
    """``a[..., oy, ox, (c, ty, tx)]``: the input values tap ``(ty, tx)`` of output ``(oy, ox)`` of the first
    conv reads (0: padding), for ``x`` of shape ``(..., C, H, W)``."""
    k = len(first.ys)
    _, ho, wo = first.step.out_shape
    out = np.empty((*x.shape[:-3], ho, wo, x.shape[-3], k, k))
    for ty, ay in enumerate(first.ys):
        for tx, ax in enumerate(first.xs):
            out[..., ty, tx] = np.moveaxis(ay @ x @ ax.T, -3, -1)
    return out.reshape(*x.shape[:-3], ho, wo, -1)


def _gram(a: np.ndarray, var: float) -> np.ndarray:
    """``var a_p . a_p'`` for ``a`` of shape ``(H, W, n)``: shape ``(H, W, H, W)``."""
    h, w, n = a.shape
    flat = a.reshape(h * w, n)
    return (var * (flat @ flat.T)).reshape(h, w, h, w)


def _first_layer_sum(first: _First, alpha: np.ndarray, b_gate: np.ndarray) -> float:
    """``sum_i E[(d f_k / d x_i)^2]`` from the pre-gate patches ``alpha`` ``(Hr, Wr, n)`` of the first
    ReLU and the per-channel covariance ``b_gate`` of the gradient at its output."""
    norms = np.linalg.norm(alpha, axis=-1)
    if np.any(norms == 0):
        raise HypothesisError("a first-layer unit reads an all-zero patch: its gate is not a half-space")
    unit = alpha / norms[..., None]
    p = first.pairs
    r1, r2 = (p["r1y"], p["r1x"]), (p["r2y"], p["r2x"])
    coef = b_gate[r1[0], r1[1], r2[0], r2[1]] * p["weight"]
    rho = np.where((r1[0] == r2[0]) & (r1[1] == r2[1]), 1.0, np.einsum("in,in->i", unit[r1], unit[r2]))
    c_in = first.step.in_shape[0]
    taps = unit.shape[-1] // c_in
    total = 0.0
    for c in range(c_in):
        a1, a2 = c * taps + p["t1"], c * taps + p["t2"]
        m = _moment(rho, unit[(*r1, a1)], unit[(*r1, a2)], unit[(*r2, a1)], unit[(*r2, a2)], a1 == a2, first.var)
        total += float(np.sum(m * coef))
    return first.channels * total


def _per_input(plan: _Plan, x: np.ndarray, directions: np.ndarray | None, weight: float) -> tuple[float, float]:
    """Wide-limit ``E_w||d_x f_k||_2^2`` at one input ``x`` (shape ``spec.input_shape``), in two parts:
    the backward recursion with the first layer exact, and the wide ReLUs' gate-tangent terms
    ``weight * sum over directions`` (``directions``: ``(m, *input_shape)``; None: every coordinate)."""
    first = plan.first
    a = _patches(x, first)
    alpha = _pre_gate(first, a) if plan.gated else a
    stats = _forward(plan.ops, _gram(alpha, first.var))
    b, at = _backward(plan.ops, stats)
    if plan.gated:
        main = _first_layer_sum(first, alpha, at[plan.ops[0].index])  # type: ignore[union-attr]
    else:  # the first conv is linear up to the next weight layer: its backward gives B at the input
        assert plan.head is not None
        bx = plan.head.backward(b)
        c, h, w = first.step.in_shape
        main = c * float(np.trace(bx.reshape(h * w, h * w)))
    n = alpha.shape[0] * alpha.shape[1]
    flat = alpha.reshape(n, -1)
    wide = [op for op in plan.ops[1 if plan.gated else 0:] if isinstance(op, _Gate)]
    if not any(np.any(_off_diagonal(at[g.index])) for g in wide):
        return main, 0.0  # no wide ReLU output is merged with another position: no cross terms
    if directions is None:
        directions = np.eye(x.size).reshape(-1, *x.shape)
    batch = max(1, int(BATCH_ENTRIES // (n * n)))
    corr = 0.0
    for lo in range(0, len(directions), batch):
        t = _patches(directions[lo:lo + batch], first)
        t = np.stack([_pre_gate(first, v) for v in t]) if plan.gated else t
        c0 = first.var * np.matmul(flat, t.reshape(t.shape[0], n, -1).transpose(0, 2, 1))
        corr += _tangent_correction(plan, c0.reshape(-1, *alpha.shape[:2], *alpha.shape[:2]), stats, at)
    return main, weight * corr


def _off_diagonal(b: np.ndarray) -> np.ndarray:
    n = b.shape[0] * b.shape[1]
    flat = b.reshape(n, n)
    return (flat != 0) & ~np.eye(n, dtype=bool)


def _pre_gate(first: _First, a: np.ndarray) -> np.ndarray:
    """Patches ``(H, W, n)`` mapped by the pools (and batch-norm scale) between the first conv and its ReLU."""
    return first.scale * np.tensordot(first.lx, np.tensordot(first.ly, a, axes=(1, 0)), axes=(1, 1)).transpose(1, 0, 2)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def _check_memory(spec: Spec) -> None:
    """Refuse a spec whose covariance arrays (positions^2 of the largest map) do not fit in memory."""
    from advdim.cli_args import check_fits

    n = max(h * w for h, w in _maps(tuple(_graph.steps(spec))))
    check_fits(ARRAYS_AT_PEAK * 8.0 * n * n, f"the wide-limit recursion on {n} positions", "cpu",
               "use a smaller input size")


@dataclass(frozen=True)
class WideLaw:
    """Wide-limit ``E||d_x f_k||_2^2`` of a spec: ``value`` (mean over ``inputs`` Gaussian inputs), its
    standard error, the path sum, and the part ``tangent`` of ``value`` that comes from the wide ReLUs'
    gate-tangent correlations (estimated with ``probes`` random directions per input; 0: exact, every
    input coordinate)."""

    value: float
    stderr: float
    path_sum: float
    tangent: float
    inputs: int
    probes: int
    per_input: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """``value / path_sum``: the pooling correction factor."""
        return self.value / self.path_sum


def pooling_correction_applies(spec: Spec) -> bool:
    """Can the wide limit of ``E||d_x f_k||_2^2`` differ from the path sum?

    True when the first weight layer is a convolution and an average pool or a global average pool
    merges positions after it: the merged paths' cross terms (through the first layer's gates, and
    through the correlation of each wide ReLU's gates with the input gradient) are then not 0.
    Without such a merge the recursion of :func:`wide_law` gives the path sum exactly.

    >>> from advdim.arch import family
    >>> pooling_correction_applies(family("avgpool").spec(16)), pooling_correction_applies(family("strided").spec(16))
    (True, False)
    """
    st = _graph.steps(spec)
    weights = [s for s in st if isinstance(s.layer, (Conv, Dense))]
    if not weights or not isinstance(weights[0].layer, Conv):
        return False
    return any((isinstance(s.layer, AvgPool) and s.layer.size > 1)
               or (isinstance(s.layer, GlobalAvgPool) and s.in_shape[1] * s.in_shape[2] > 1)
               for s in st[weights[0].index + 1:])


def wide_law(spec: Spec, init: object = "he", logit: int = 0, inputs: int | None = None, probes: int | None = None,
             seed: int = 0) -> WideLaw:
    """Wide-limit ``E||d_x f_k||_2^2`` over i.i.d. ``N(0, 1)`` inputs, with its standard error.

    Exact in the limit of infinitely many channels for each input (covariance recursions, no
    network is sampled).  Two expectations are sampled, each unbiased: over the input, the mean over
    ``inputs`` inputs drawn from ``seed`` (default: enough for :data:`POSITIONS` input positions, at
    least :data:`MIN_INPUTS`); and the wide ReLUs' gate-tangent terms, a sum over input coordinates, which for
    ``d > EXACT_COORDINATES`` is estimated with ``probes`` Rademacher directions per input (default
    :data:`PROBES`; ``probes=0`` sums every coordinate).  ``stderr`` covers both.  Nets whose first
    weight layer is dense have one position and return the path sum exactly (``stderr`` 0).

    Raises:
        HypothesisError: a layer without a covariance law (max pooling, attention, ...), a non-Gaussian
            first layer (torch, orthogonal init), a logit read from one position of a map.
    """
    init_e = Init(_graph.init_name(init))
    _graph.check_logit(spec, logit)
    path_sum = float(_graph.input_variances(spec, init_e.value, logit).sum())
    plan = _plan(spec, init_e)
    if plan is None:
        return WideLaw(path_sum, 0.0, path_sum, 0.0, 0, 0, ())
    _check_memory(spec)
    if inputs is None:
        inputs = max(MIN_INPUTS, -(-POSITIONS // (spec.input_shape[1] * spec.input_shape[2])))
    if isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 2:
        raise AdvdimError(f"inputs must be an integer >= 2 (for a standard error), got {inputs!r}")
    if probes is None:
        probes = 0 if spec.d <= EXACT_COORDINATES else PROBES
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise AdvdimError(f"probes must be a non-negative integer (0: every coordinate), got {probes!r}")
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(inputs):
        x = rng.standard_normal(spec.input_shape)
        dirs = None if probes == 0 else rng.choice([-1.0, 1.0], size=(probes, *spec.input_shape))
        parts.append(_per_input(plan, x, dirs, 1.0 if probes == 0 else 1.0 / probes))
    arr = np.asarray(parts)
    total = arr.sum(axis=1)
    return WideLaw(float(total.mean()), float(total.std(ddof=1) / math.sqrt(total.size)), path_sum,
                   float(arr[:, 1].mean()), inputs, probes, tuple(float(v) for v in total))


def wide_grad_sq_norm(spec: Spec, init: object = "he", logit: int = 0, inputs: int | None = None,
                      probes: int | None = None, seed: int = 0) -> float:
    """Wide-limit ``E||d_x f_k||_2^2`` of ``spec`` at initialisation ``init`` (see :func:`wide_law`).

    >>> from advdim.arch import parse
    >>> spec = parse("1x4x4 > conv(4,k=3) > relu > flatten > dense(3)")   # no pooling: the path sum
    >>> round(wide_grad_sq_norm(spec, inputs=2), 12)
    2.0
    """
    return wide_law(spec, init, logit, inputs, probes, seed).value


@functools.lru_cache(maxsize=64)
def cached_wide_law(spec: Spec, init: str = "he", logit: int = 0) -> WideLaw:
    """:func:`wide_law` with its defaults, cached per (spec, init, logit) (specs are frozen)."""
    return wide_law(spec, init, logit)


def wide_grad_sq_norm_at(spec: Spec, x: np.ndarray, init: object = "he", logit: int = 0, probes: int = 0,
                         seed: int = 0) -> float:
    """Wide-limit ``E_w||d_x f_k||_2^2`` at one input ``x`` (shape ``spec.input_shape``): exact with
    ``probes=0`` (the gate-tangent terms summed over every coordinate), else those terms estimated
    with ``probes`` Rademacher directions drawn from ``seed``.

    >>> from advdim.arch import parse
    >>> spec = parse("1x4x4 > conv(4,k=3) > relu > globalavgpool > dense(1)")
    >>> x = np.random.default_rng(0).standard_normal((1, 4, 4))
    >>> round(wide_grad_sq_norm_at(spec, x), 4) > 0.125   # above the path sum: the first layer's cross terms
    True
    """
    init_e = Init(_graph.init_name(init))
    _graph.check_logit(spec, logit)
    x = np.asarray(x, dtype=np.float64)
    if x.shape != spec.input_shape:
        raise AdvdimError(f"x has shape {x.shape}, the spec's input is {spec.input_shape}")
    plan = _plan(spec, init_e)
    if plan is None:
        return float(_graph.input_variances(spec, init_e.value, logit).sum())
    _check_memory(spec)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise AdvdimError(f"probes must be a non-negative integer (0: every coordinate), got {probes!r}")
    dirs = None if probes == 0 else np.random.default_rng(seed).choice([-1.0, 1.0], size=(probes, *x.shape))
    return float(sum(_per_input(plan, x, dirs, 1.0 if probes == 0 else 1.0 / probes)))
