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
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from advdim.arch import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    MaxPool,
    Padding,
    ReLU,
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
    INPUT = "input"  # the raw input: sign set by the data, not by the weights
    SYMMETRIC = "symmetric"  # a zero-mean weight layer's output: positive w.p. 1/2
    NONNEG = "nonneg"  # after a ReLU, possibly averaged: a further ReLU passes every active path
    ROUTED = "routed"  # after a max: the law of the ReLU indicator is not 1/2


def sign_states(spec: Spec) -> list[Sign]:
    """The sign state of the values entering each layer (``len(spec.layers)`` entries)."""
    state, out = Sign.INPUT, []
    for layer in spec.layers:
        out.append(state)
        if isinstance(layer, (Conv, Dense)):
            state = Sign.SYMMETRIC
        elif isinstance(layer, ReLU):
            state = Sign.NONNEG
        elif isinstance(layer, (MaxPool, GlobalMaxPool)):
            state = Sign.NONNEG if state is Sign.NONNEG else Sign.ROUTED
    return out


def relu_factor(state: Sign) -> float:
    """Expected squared ReLU derivative along a path: 1/2 (H1), or 1 on an already non-negative input.

    A ReLU whose input is a non-negative average of ReLU outputs is active whenever any path
    through it is active, so it contributes no factor.
    """
    return 1.0 if state is Sign.NONNEG else 0.5


# --------------------------------------------------------------------------------------------
# Layer records with their shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One layer with its input / output shapes, its sign state and its fan-in / fan-out."""

    index: int
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    sign: Sign

    @property
    def fans(self) -> tuple[int, int, int]:
        """``(fan_in, fan_out, rows)`` of a weight layer."""
        if isinstance(self.layer, Conv):
            k2 = self.layer.kernel**2
            return self.in_shape[0] * k2, self.layer.out_channels * k2, self.layer.out_channels
        if isinstance(self.layer, Dense):
            return self.in_shape[0], self.layer.out_features, self.layer.out_features
        raise AdvdimError(f"layer {self.index} has no weights")

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis connection matrices (y, x) of a conv or pool layer."""
        layer = self.layer
        (_, h, w), (_, ho, wo) = self.in_shape, self.out_shape
        if isinstance(layer, Conv):
            return (conv_axis(h, ho, layer.kernel, layer.stride, layer.dilation, layer.pad, layer.padding),
                    conv_axis(w, wo, layer.kernel, layer.stride, layer.dilation, layer.pad, layer.padding))
        if isinstance(layer, (AvgPool, MaxPool)):
            return pool_axis(h, layer.size), pool_axis(w, layer.size)
        raise AdvdimError(f"layer {self.index} has no spatial connections")


def steps(spec: Spec) -> list[Step]:
    shapes = spec.shapes()
    signs = sign_states(spec)
    return [Step(i, layer, shapes[i], shapes[i + 1], signs[i]) for i, layer in enumerate(spec.layers)]


def routing_layers(spec: Spec) -> list[Step]:
    """Layers after which no second-moment law follows (max pooling routes the gradient)."""
    return [s for s in steps(spec) if isinstance(s.layer, (MaxPool, GlobalMaxPool))]


def check_logit(spec: Spec, logit: int) -> None:
    if isinstance(logit, bool) or not isinstance(logit, int) or not 0 <= logit < spec.n_classes:
        raise AdvdimError(f"logit index {logit!r} out of range for {spec.n_classes} logits")


# --------------------------------------------------------------------------------------------
# Path-sum variances
# --------------------------------------------------------------------------------------------


def input_variances(spec: Spec, init: str = "he", logit: int = 0) -> np.ndarray:
    """``E[(d f_k / d x_i)^2]`` for every input node, shape ``spec.input_shape``, float64.

    The sum over all paths from ``x_i`` to ``f_k`` of the products of the weights' second
    moments and of the ReLU factors (proof of Theorem 5).  Raises :class:`HypothesisError` when
    the spec max-pools (the gradient is routed to the arg-max: no path law).

    >>> from advdim.arch import parse
    >>> v = input_variances(parse("1x4x4 > flatten > dense(8) > relu > dense(3)"))
    >>> round(float(v.sum()), 12), v.shape
    (2.0, (1, 4, 4))
    """
    init = init_name(init)
    check_logit(spec, logit)
    routed = routing_layers(spec)
    if routed:
        raise HypothesisError(
            f"layer {routed[0].index} ({routed[0].layer.kind}) routes the gradient through an arg-max: "
            "no path-sum law (H1 and H3 fail); measure it by simulation")
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
    if isinstance(layer, BatchNorm):
        return v / (1.0 + BN_EPS)
    raise HypothesisError(f"layer {step.index} ({layer.kind}): no path-sum law")


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


class _Interner:
    """Maps polynomials to dense integer class ids (equal id <=> equal polynomial)."""

    def __init__(self) -> None:
        self.ids: dict[Poly, int] = {}
        self.polys: list[Poly] = []

    def __call__(self, poly: Poly) -> int:
        got = self.ids.get(poly)
        if got is None:
            got = self.ids[poly] = len(self.polys)
            self.polys.append(poly)
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

    >>> from advdim.arch import parse
    >>> parse_ = parse("1x8x8 > conv(2,k=3,pad=circular) > relu > flatten > dense(3)")
    >>> path_degree_classes(parse_).symmetric
    True
    >>> path_degree_classes(parse("1x8x8 > conv(2,k=3,pad=zeros) > relu > flatten > dense(3)")).breaking_share
    0.75
    """
    check_logit(spec, logit)
    intern = _Interner()
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


def _back_classes(step: Step, ids: np.ndarray, intern: _Interner) -> np.ndarray:
    layer = step.layer
    if isinstance(layer, (Flatten,)):
        return ids.reshape(step.in_shape)
    if isinstance(layer, (ReLU, BatchNorm)):
        return ids
    if isinstance(layer, Dense):
        acc: dict[tuple[int, ...], int] = {}
        uniq, counts = np.unique(ids, return_counts=True)
        for u, c in zip(uniq, counts):
            _poly_add(acc, intern.polys[int(u)], step.in_shape[0], int(c))
        return np.full(step.in_shape, intern(_canon(acc)), dtype=np.int64)
    if isinstance(layer, (GlobalAvgPool, GlobalMaxPool)):  # every position of a channel alike (max pool as
        c, h, w = step.in_shape                             # max pooling: its routing is judged by H1)
        per_channel = np.array([intern(_canon(_shift(intern.polys[int(i)], h * w))) for i in ids])
        return np.broadcast_to(per_channel[:, None, None], step.in_shape).copy()
    if isinstance(layer, (Conv, AvgPool, MaxPool)):
        return _back_map(step, ids, intern)
    raise AdvdimError(f"layer {step.index}: unsupported layer {layer.kind}")


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


def _back_map(step: Step, ids: np.ndarray, intern: _Interner) -> np.ndarray:
    """Classes of a conv / pool layer's inputs from the classes of its outputs (C, Ho, Wo)."""
    c_in, h, w = step.in_shape
    ay, ax = step.axes()
    deg_y, deg_x = ay.sum(axis=1), ax.sum(axis=1)  # per output row / column: taps inside the map
    fan_c = c_in if isinstance(step.layer, Conv) else 1
    indeg = fan_c * deg_y[:, None] * deg_x[None, :]  # (Ho, Wo)
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
