"""Post-activation residual blocks ``x_k = relu(x_{k-1} + F_k(x_{k-1}))``: the wide-limit law of ``E||d_x f_k||_2^2``.

torchvision's BasicBlock is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``; in spec text
``res(conv(C) > batchnorm > relu > conv(C) > batchnorm) > relu``.  Its input ``x`` is a ReLU
output (``x >= 0``), so the ReLU after the add is open with probability ``P(x + F > 0) > 1/2`` and
the path sum's Bernoulli(1/2) gate (H1, S) does not hold.  The law (docs/theory.md,
"Post-activation residual blocks"):

* **Forward, per unit.**  Let the channels go to infinity, the input fixed.  The branch output
  ``F_k(c, p) = sum W2 h`` is, given the block input, a centred Gaussian whose variance
  ``v_k(p) = Var(W2) sum_{taps, c'} E h(c', p + t)^2`` (times the batch norms' ``1/(1 + eps)``) is set
  by the raw second moments ``E[x_{k-1}^2]`` (not variances: the skip stream has a positive mean)
  of the block input over the conv windows; its row of ``W2`` is fresh, so ``F_k(c, p)`` is
  independent of the unit's own skip value ``x_{k-1}(c, p)``.  Each unit is thus the scalar Markov
  chain ``x_k = relu(x_{k-1} + sqrt(v_k) xi_k)``, started at the stem's ReLU ``x_0 = relu(z_0)``,
  ``z_0 ~ N(0, q_0(p))`` -- or, after a max pool, at ``x_0 = relu(M)``, ``M`` the max of the window's
  independent ``z_0`` (gate 0 is ``M > 0``; the backward goes to the arg-max, entry ``i`` w.p.
  ``P(argmax = i | M > 0)``).  A projection block (``1x1`` conv, optional batch norm) adds a fresh
  centred Gaussian skip: the chain restarts there, ``z_k ~ N(0, s_k + v_k)``, open w.p. 1/2.
* **Backward, per path.**  Gradient independence (the backward reads the weights as independent
  draws; exact in the wide limit) makes each path's weights and inner gates factor as in the path
  sum, except the post-activation gates: a path that follows the identity skip from gate ``a`` to
  gate ``b`` crosses the gates of **one** unit, ``a, a+1, ..., b``, whose events are dependent (an
  open gate makes ``x_k > 0``, which opens the next more often).  A run of skips counts
  ``R(a, b; p) = P(z_a > 0, ..., z_b > 0)`` of that unit's chain, not ``prod_k p_k``; a branch step
  or a projection moves the path to a fresh unit (independent in the wide limit).  With
  ``In_b`` the backward second moment arriving at gate ``b`` from above (the head at ``b = K``, block
  ``b + 1``'s branch, and its projection) and ``Z_a`` the moment leaving gate ``a`` downwards:

      Z_a = sum_{b >= a, blocks a+1..b identity} R(a, b) In_b,
      In_{a-1} = a_a^2 back_branch_a(Z_a) + back_projection_a(Z_a),      E[(d f_k/d x_i)^2] = back_stem(Z_0).

  With ``R = 2^-(b - a + 1)`` this is the path sum; with ``R = prod p_k`` the per-block law
  ``p_k (1 + G_k)``, which misses the run correlations (:class:`GateLaw`).
* **The stem's coupling.**  The stem conv's fan-in ``n`` (``C_in k^2``) does not grow with the width, so
  its weights' norm, the unit's input-gradient gain, is coupled to the chain's start ``z_0 = w.a``:
  ``E[||w||^2 | z_0] = sigma^2 (n - 1 + zeta^2)``, ``zeta = z_0 / sd``.  The runs from gate 0 carry that
  weight (after a max pool, given all ``m`` entries of the window: ``n - m + sum_j zeta_j^2``); O(1/n),
  +0.3% to +0.5% here, and exactly the wide limit (``coupling=False``: without it).

The run probabilities are iterated 1-D integrals: each chain's density is carried on a grid of
``points`` nodes over ``[0, 9 sd]`` of the current pre-activation ``z_k`` (Gregory's end-corrected
trapezoid rule; the discretisation error is below 1e-7 relative at the default,
tests/theory/test_postact.py), per
position (zero padding makes ``v_k`` position-dependent; positions with equal histories share one
chain).  The forward moments are those of the input's expectation (``E x^2 = 1``), or of given
inputs (``inputs``: the exact wide limit given each input, averaged), since ``q_0(p)`` fluctuates
with the input's patch norms.

Numpy only (no torch, no SciPy).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from advdim.theory import _graph
from advdim.theory._graph import BN_EPS, Sign, Step

from advdim.arch import AvgPool, BatchNorm, BNMode, Conv, Dense, GlobalAvgPool, MaxPool, ReLU, Residual, Spec
from advdim.errors import HypothesisError

#: grid nodes per chain density (Gregory's rule on [0, SPAN sd]); error below 1e-7 relative (test_postact.py)
POINTS = 401
#: the grid spans this many standard deviations of the current pre-activation
SPAN = 9.0


#: ``E[w^2]`` of a weight layer's step, where it is not ``init``'s (torchvision's ``kaiming_normal_(mode="fan_out")``)
Variance = Callable[[Step], float]


def _variance(step: Step, init: str, variance: Variance | None) -> float:
    return _graph.weight_variance(init, *step.fans) if variance is None else float(variance(step))


def _back(step: Step, v: np.ndarray, init: str, variance: Variance | None) -> np.ndarray:
    """``_graph._back``, with the weight layers' variances from ``variance`` when given."""
    if variance is not None and isinstance(step.layer, Dense):
        return np.full(step.in_shape, variance(step) * float(v.sum()))
    if variance is not None and isinstance(step.layer, Conv):
        ay, ax = step.axes()
        return np.broadcast_to(variance(step) * (ay.T @ v.sum(axis=0) @ ax), step.in_shape).copy()
    return _graph._back(step, v, init)


class GateLaw(enum.Enum):
    """How the post-activation gates along a path are counted."""

    CHAIN = "chain"  # the law: runs of skips on one unit count the joint probability R(a, b) of its chain
    PRODUCT = "product"  # each gate independently open with its marginal p_k: the per-block p_k (1 + G_k)
    HALF = "half"  # each gate a Bernoulli(1/2): the naive path sum (H1)


@dataclass(frozen=True)
class Layout:
    """A spec seen as ``stem > relu > [maxpool] > [res > relu] x K > tail`` (top-level steps)."""

    stem: tuple[Step, ...]  # before the stem ReLU (its last weight layer makes z_0 Gaussian)
    stem_relu: Step
    blocks: tuple[Step, ...]  # the residual steps
    tail: tuple[Step, ...]  # after the last block's ReLU
    pool: Step | None = None  # a max pool after the stem's ReLU: gate 0 is "the window's max > 0"

    @property
    def restarts(self) -> tuple[bool, ...]:
        """Per gate 0..K: whether the chain restarts there (the stem, and every projection block)."""
        return (True, *(b.skip is not None for b in self.blocks))


_FORWARD = (Conv, BatchNorm, ReLU)


def _forward_ok(st: Sequence[Step], where: str) -> None:
    for s in st:
        layer = s.layer
        if not isinstance(layer, _FORWARD) or (isinstance(layer, BatchNorm) and layer.mode is not BNMode.RUNNING):
            raise HypothesisError(f"{where}: layer {s.label} {layer.kind} is not covered by the post-activation law's "
                                  "forward second moments (conv, batchnorm in running mode and ReLU only)")
        if isinstance(layer, ReLU) and s.sign is not Sign.SYMMETRIC:
            raise HypothesisError(f"{where}: layer {s.label} relu does not act on a sign-symmetric value")


def layout(spec: Spec) -> Layout:
    """Recognise ``spec`` as post-activation residual blocks after a conv stem (and a max pool), or say why not.

    Raises :class:`HypothesisError` when the spec has no ReLU after a residual add on a non-negative
    stream, or when some part is outside the law: the stem must end ``conv > [batchnorm] > relu``, the
    blocks follow each other as ``res(...) > relu`` with branches of conv / batchnorm / ReLU ending in a
    weight layer (plus batch norms), and the tail after the last block has a path-sum law and no
    pooling (a pool pairs paths through different positions: the cross terms of
    :mod:`advdim.theory._meanfield`, not derived for these chains).

    >>> from advdim.arch import parse
    >>> lay = layout(parse("3x8x8 > conv(8) > batchnorm > relu > res(conv(8) > batchnorm > relu > conv(8) > "
    ...                    "batchnorm) > relu > flatten > dense(10)"))
    >>> len(lay.blocks), lay.restarts
    (1, (True, False))
    """
    st = _graph.steps(spec)
    shifted = [i for i, s in enumerate(st) if isinstance(s.layer, ReLU) and s.sign is Sign.SHIFTED]
    if not shifted:
        raise HypothesisError("no ReLU acts on a residual sum of a non-negative stream (no post-activation block)")
    first = shifted[0] - 1
    while first >= 2 and isinstance(st[first - 1].layer, ReLU) and isinstance(st[first - 2].layer, Residual):
        first -= 2
    last = shifted[0] - 1
    while last + 3 < len(st) and isinstance(st[last + 2].layer, Residual) and isinstance(st[last + 3].layer, ReLU):
        last += 2
    pool = st[first - 1] if first >= 2 and isinstance(st[first - 1].layer, MaxPool) else None
    if pool is not None:
        first -= 1
    if first < 1 or not isinstance(st[first - 1].layer, ReLU) or st[first - 1].sign is not Sign.SYMMETRIC:
        raise HypothesisError("the first post-activation block must follow a ReLU on a conv output (the stem), "
                              "or a max pool of it")
    stem, stem_relu = tuple(st[: first - 1]), st[first - 1]
    if pool is not None:
        first += 1
    weighted = [s for s in stem if isinstance(s.layer, Conv)]
    if not weighted or any(not isinstance(s.layer, BatchNorm) for s in stem[stem.index(weighted[-1]) + 1:]):
        raise HypothesisError("the stem must end in conv > [batchnorm] > relu (a Gaussian pre-activation)")
    _forward_ok(stem, "stem")
    blocks = tuple(st[first: last + 1: 2])
    for b in blocks:
        layer = b.layer
        assert isinstance(layer, Residual)
        if not _graph.branch_is_odd(layer, b.in_shape):
            raise HypothesisError(f"layer {b.label} res: the branch must end in a weight layer (then batch norms)")
        if b.skip is None and b.sign is not Sign.NONNEG:
            raise HypothesisError(f"layer {b.label} res: an identity block must read a ReLU output")
        _forward_ok(b.branch, f"layer {b.label} res")
    tail = tuple(st[last + 2:])
    for s in (x for t in tail for x in _flat(t)):
        if _graph.no_law_reason(s) is not None:
            raise HypothesisError(f"after the post-activation blocks, layer {s.label} {s.layer.kind} has no law")
        if isinstance(s.layer, (AvgPool, GlobalAvgPool)):
            raise HypothesisError(f"layer {s.label} {s.layer.kind} pools after post-activation blocks: it pairs paths "
                                  "through different positions, whose gate correlations this law does not include "
                                  "(measured +33% to +36% above the law that ignores them, docs/theory.md)")
    return Layout(stem, stem_relu, blocks, tail, pool)


def _flat(s: Step) -> list[Step]:
    out: list[Step] = []
    for b in s.branch:
        out.extend(_flat(b))
    return [*out, *([s.skip] if s.skip is not None else []), s]


def applies(spec: Spec) -> bool:
    """Whether :func:`input_variances` covers ``spec`` (see :func:`layout`)."""
    try:
        layout(spec)
    except HypothesisError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Forward second moments, per position (every channel of a layer alike)
# --------------------------------------------------------------------------------------------


def _forward(st: Sequence[Step], m: np.ndarray, init: str, variance: Variance | None) -> np.ndarray:
    """Per-channel second moments ``(N, H, W)`` (N inputs or 1) after ``st`` from ``m`` of shape
    ``(N, C, H, W)`` (channels summed at the first conv, so every later channel is alike)."""
    for s in st:
        layer = s.layer
        if isinstance(layer, Conv):
            var = _variance(s, init, variance)
            ay, ax = (a.astype(np.float64) for a in s.axes())
            total = m.sum(axis=1) if m.ndim == 4 else s.in_shape[0] * m
            m = var * np.einsum("oh,nhw,pw->nop", ay, total, ax)
        elif isinstance(layer, BatchNorm):
            m = m / (1.0 + BN_EPS)
        elif isinstance(layer, ReLU):  # on a centred Gaussian: E relu(z)^2 = E z^2 / 2
            m = m / 2.0
    assert m.ndim == 3, "a forward second moment needs a conv"
    return m


# --------------------------------------------------------------------------------------------
# The chains: densities on a grid in units of the current pre-activation's standard deviation
# --------------------------------------------------------------------------------------------


#: chain classes whose grid kernels are built at once (each POINTS^2 floats)
CHUNK = 16


def _kernel(y: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``K[c, i, j]``: density at ``y_i`` of ``alpha_c y_j + beta_c xi`` (the next pre-activation in its own
    units from the current value ``y_j``)."""
    a, b = alpha[:, None, None], beta[:, None, None]
    return np.exp(-0.5 * ((y[None, :, None] - a * y[None, None, :]) / b) ** 2) / (b * math.sqrt(2 * math.pi))


#: end weights of Gregory's rule (the trapezoid rule with third-order end corrections)
GREGORY = np.array([3 / 8, 7 / 6, 23 / 24])


class _Chains:
    """Every position's chain (positions with equal histories share one), with its open runs.

    ``f[c]``: density of ``z_k / sd_k`` on the grid's ``y >= 0`` for chain class ``c``, ``atom[c]``
    ``= P(z_k <= 0)``; ``runs[c, a]``: the sub-density of ``z_k / sd_k`` on the event that gates
    ``a..k`` are all open (zero for runs closed by a restart).
    """

    def __init__(self, points: int, gates: int) -> None:
        self.y = np.linspace(0.0, SPAN, points)
        self.h = float(self.y[1])
        self.w = np.full(points, self.h)  # Gregory's end corrections of the trapezoid rule: O(h^4)
        self.w[[0, 1, 2]] *= GREGORY
        self.w[[-1, -2, -3]] *= GREGORY
        self.gates = gates
        self.cls = np.zeros(0, dtype=np.int64)  # per position
        self.f = np.zeros((0, points))
        self.atom = np.zeros(0)
        self.runs = np.zeros((0, gates, points))
        self.sd = np.zeros(0)  # per position

    def prob(self, g: np.ndarray) -> np.ndarray:
        return g @ self.w

    def second(self) -> np.ndarray:
        """``E[x_k^2]`` per position."""
        return self.prob(self.f * self.y**2)[self.cls] * self.sd**2

    def start(self, var: np.ndarray, k: int, fan: np.ndarray | None = None) -> None:
        """A restart at gate ``k``: ``z_k ~ N(0, var)`` per position (the stem, a projection block).

        ``fan`` (per position, the stem): the in-degree ``n`` of the conv that makes ``z_0``; the run from
        gate 0 is weighted by ``E[||w||^2 | z_0] / E||w||^2 = (n - 1 + zeta^2) / n``, ``zeta = z_0 / sd``."""
        self.sd = np.sqrt(var)
        f0 = np.exp(-0.5 * self.y**2) / math.sqrt(2 * math.pi)
        fans, inverse = np.unique(np.ones(var.size) if fan is None else fan, return_inverse=True)
        self.cls = np.asarray(inverse).ravel()
        self.f = np.repeat(f0[None], fans.size, axis=0)
        self.atom = np.full(fans.size, 0.5)
        self.runs = np.zeros((fans.size, self.gates, self.y.size))
        weight = 1.0 if fan is None else (fans[:, None] - 1 + self.y[None] ** 2) / fans[:, None]
        self.runs[:, k] = f0[None] * weight

    def start_max(self, var: np.ndarray, fan: np.ndarray | None = None) -> np.ndarray:
        """Gate 0 after a max pool: per output position ``o``, ``M_o = max_i z_i`` over its window of
        independent ``z_i ~ N(0, var[o, i])`` (``var`` ``(positions, window)``, 0 for no entry); ``x_0 = relu(M)``,
        gate 0 open iff ``M > 0``.  Returns the routing ``P(argmax = i | M > 0)``, shape of ``var``.  ``fan``
        (shape of ``var``): the stem conv's in-degrees, weighting the run from gate 0 as in :meth:`start`."""
        scale = np.sqrt(var.max(axis=1))
        ratio = np.round(np.sqrt(var) / scale[:, None], 12)  # sd_i / sd_o: 0 for padding
        fans = np.zeros_like(ratio) if fan is None else np.asarray(fan, dtype=np.float64)
        uniq, first, inverse = np.unique(np.concatenate([ratio, fans], axis=1), axis=0, return_index=True,
                                         return_inverse=True)
        uniq, uniq_fan = uniq[:, : ratio.shape[1]], uniq[:, ratio.shape[1]:]
        erf = np.frompyfunc(math.erf, 1, 1)
        y = self.y
        f = np.zeros((len(uniq), y.size))
        route = np.zeros(uniq.shape)
        run0 = np.zeros((len(uniq), y.size))
        for c, r in enumerate(uniq):
            live = r > 0
            t = y[None, :] / r[live][:, None]  # (entries, grid): z_i / sd_i at M = y sd_o
            cdf = 0.5 * (1.0 + erf(t / math.sqrt(2.0)).astype(np.float64))
            dens = np.exp(-0.5 * t**2) / (r[live][:, None] * math.sqrt(2 * math.pi))
            total = np.prod(cdf, axis=0)
            each = dens * total[None, :] / cdf  # density of M at y with the arg-max at entry i
            f[c] = each.sum(axis=0)
            # E||w||^2 given the window, its m (near-orthogonal) patches' zeta_j: sigma^2 (n - m + sum_j zeta_j^2); the
            # arg-max is zeta_i = t_i, the others lie below their own t_j: E[zeta^2 | zeta < t] = 1 - t phi(t) / Phi(t)
            run0[c] = f[c]
            if fan is not None:
                n, m = uniq_fan[c, live][:, None], int(live.sum())
                below = 1.0 - t * np.exp(-0.5 * t**2) / (math.sqrt(2 * math.pi) * cdf)
                run0[c] = (each * (n - m + t**2 + below.sum(axis=0)[None, :] - below) / n).sum(axis=0)
            route[c, live] = each @ self.w
            route[c] /= route[c].sum()
        self.sd = scale
        self.cls = np.asarray(inverse).ravel()
        self.f = f
        self.atom = 1.0 - self.prob(f)
        self.runs = np.zeros((len(uniq), self.gates, y.size))
        self.runs[:, 0] = run0
        return route[self.cls]

    def step(self, v: np.ndarray, k: int) -> None:
        """Gate ``k`` of an identity block: ``z_k = x_{k-1} + sqrt(v) xi`` per position."""
        second = self.second()
        sd = np.sqrt(second + v)
        alpha, beta = self.sd / sd, np.sqrt(v) / sd
        keys = np.stack([self.cls.astype(np.float64), np.round(alpha, 12), np.round(beta, 12)], axis=1)
        uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        old = self.cls[first]
        f = np.empty((len(uniq), self.y.size))
        runs = np.empty((len(uniq), self.gates, self.y.size))
        for lo in range(0, len(uniq), CHUNK):
            sl = slice(lo, lo + CHUNK)
            kern = _kernel(self.y, alpha[first][sl], beta[first][sl])
            atom_col = kern[:, :, 0].copy()  # y_j = 0: the atom at x = 0 moves as a point mass
            kern *= self.w[None, None, :]
            f[sl] = np.einsum("cij,cj->ci", kern, self.f[old[sl]]) + self.atom[old[sl]][:, None] * atom_col
            runs[sl] = np.einsum("cij,caj->cai", kern, self.runs[old[sl]])
        runs[:, k] = f
        self.f, self.runs, self.atom = f, runs, 1.0 - self.prob(f)
        self.cls, self.sd = np.asarray(inverse).ravel(), sd

    def run_probs(self) -> np.ndarray:
        """``R(a, k)`` at the current gate ``k`` per position and start ``a``: ``(positions, gates)``."""
        return self.prob(self.runs)[self.cls]

    def open_prob(self) -> np.ndarray:
        return 1.0 - self.atom[self.cls]


@dataclass(frozen=True)
class ChainLaw:
    """The chains of one spec, per gate ``k = 0..K`` (0: the stem's ReLU, k: block k's) and input:
    ``p[k] = P(z_k > 0)``, ``second[k] = E[x_k^2]``, ``ratio[k] = v_k / E[x_{k-1}^2]`` (None at a restart),
    each of shape ``(N, H_k, W_k)``; ``runs[(a, b)] = P(z_a > 0, ..., z_b > 0)`` for the runs inside a
    segment without restarts."""

    p: tuple[np.ndarray, ...]
    second: tuple[np.ndarray, ...]
    ratio: tuple[np.ndarray | None, ...]
    runs: dict[tuple[int, int], np.ndarray]
    #: after a max pool: ``P(argmax = i | M > 0)`` per input and output position (rows) and window entry
    route: np.ndarray | None = None


def _windows(pool: Step) -> np.ndarray:
    """Per output position of a max pool (row-major), the flat input positions of its window (-1: none)."""
    ay, ax = pool.axes()
    w = pool.in_shape[2]
    rows = [[iy * w + ix for iy in np.nonzero(ay[oy])[0] for ix in np.nonzero(ax[ox])[0]]
            for oy in range(ay.shape[0]) for ox in range(ax.shape[0])]
    out = np.full((len(rows), max(map(len, rows))), -1, dtype=np.int64)
    for o, r in enumerate(rows):
        out[o, : len(r)] = r
    return out


def chain_law(spec: Spec, init: str = "he", inputs: np.ndarray | None = None, points: int = POINTS,
              variance: Variance | None = None, coupling: bool = True) -> ChainLaw:
    """Run every position's chain ``x_k = relu(x_{k-1} + sqrt(v_k) xi_k)`` of ``spec``.

    Args:
        inputs: ``(N, C, H, W)`` inputs whose own forward moments are used (the exact wide limit
            given each input); None: the input's expectation, ``E x^2 = 1`` everywhere.
        points: grid nodes per density.
        variance: ``E[w^2]`` per weight layer's step, instead of ``init``'s.
        coupling: weight the runs from gate 0 by the stem weights' norm given ``z_0`` (the stem's fixed
            fan-in couples its gain to the chain's start; False: the uncoupled chain, ``runs`` = ``R``).

    >>> from advdim.arch import parse
    >>> law = chain_law(parse("3x8x8 > conv(8) > relu > res(conv(8) > relu > conv(8)) > relu > flatten > dense(2)"))
    >>> [round(float(p[0, 3, 3]), 4) for p in law.p], round(float(law.runs[(0, 1)][0, 3, 3]), 4)
    ([0.5, 0.625], 0.3779)
    """
    lay = layout(spec)
    init = _graph.init_name(init)
    m_in = np.ones((1, *spec.input_shape)) if inputs is None else np.asarray(inputs, dtype=np.float64) ** 2
    if m_in.ndim != 4 or m_in.shape[1:] != spec.input_shape:
        raise HypothesisError(f"inputs must have shape (N, {', '.join(map(str, spec.input_shape))}), got {m_in.shape}")
    gates = len(lay.blocks) + 1
    q0 = _forward(lay.stem, m_in, init, variance)
    ch = _Chains(points, gates)
    route = None
    conv = [s for s in lay.stem if isinstance(s.layer, Conv)][-1]
    ay, ax = conv.axes()
    fan = np.broadcast_to(conv.in_shape[0] * np.outer(ay.sum(axis=1), ax.sum(axis=1)).astype(np.float64), q0.shape)
    if lay.pool is None:
        ch.start(q0.ravel(), 0, fan.ravel() if coupling else None)
    else:
        windows = _windows(lay.pool)
        flat, fan_flat = q0.reshape(q0.shape[0], -1), fan.reshape(q0.shape[0], -1)
        pick = [np.where(windows >= 0, a[:, windows.clip(0)], 0.0).reshape(-1, windows.shape[1])
                for a in (flat, fan_flat)]
        route = ch.start_max(pick[0], pick[1] if coupling else None)
        q0 = np.zeros((q0.shape[0], *lay.pool.out_shape[1:]))
    shape, seg = q0.shape, 0
    p: list[np.ndarray] = []
    second: list[np.ndarray] = []
    ratio: list[np.ndarray | None] = [None]
    runs: dict[tuple[int, int], np.ndarray] = {}
    for k in range(gates):
        if k > 0:
            block = lay.blocks[k - 1]
            layer = block.layer
            assert isinstance(layer, Residual)
            m_x = second[-1]
            v = float(layer.scale) ** 2 * _forward(block.branch, m_x, init, variance)
            if block.skip is not None:  # a fresh centred Gaussian skip: the chain restarts
                bn = 1.0 + BN_EPS if getattr(layer, "projbn", False) else 1.0  # projbn: torchvision's downsample
                s = _forward((block.skip,), m_x, init, variance) / bn
                ch.start((s + v).ravel(), k)
                shape, seg = v.shape, k
                ratio.append(None)
            else:
                ratio.append(v / m_x)
                ch.step(v.ravel(), k)
        p.append(ch.open_prob().reshape(shape))
        second.append(ch.second().reshape(shape))
        r = ch.run_probs()
        for a in range(seg, k + 1):
            runs[(a, k)] = r[:, a].reshape(shape)
    return ChainLaw(tuple(p), tuple(second), tuple(ratio), runs, route)


def _run_prob(law: ChainLaw, gate_law: GateLaw, a: int, b: int) -> np.ndarray | float:
    if gate_law is GateLaw.CHAIN:
        return law.runs[(a, b)]
    if gate_law is GateLaw.HALF:
        return 0.5 ** (b - a + 1)
    return np.prod(np.stack(law.p[a: b + 1]), axis=0)


def input_variances(spec: Spec, init: str = "he", logit: int = 0, gate_law: GateLaw = GateLaw.CHAIN,
                    inputs: np.ndarray | None = None, points: int = POINTS,
                    variance: Variance | None = None, coupling: bool = True) -> np.ndarray:
    """``E[(d f_k / d x_i)^2]`` per input node in the wide limit, shape ``spec.input_shape``, float64.

    The run recursion of the module docstring, per position (zero padding included), from the chains
    of :func:`chain_law`; ``gate_law`` counts the post-activation gates by their runs (the law), by
    their marginals (``PRODUCT``, the per-block ``p_k (1 + G_k)``) or as Bernoulli(1/2) (``HALF``, the
    naive path sum).  ``inputs``: average the exact laws given these inputs (see :func:`chain_law`);
    ``variance``: ``E[w^2]`` per weight layer's step instead of ``init``'s (the stem, the blocks' convs and
    projections, the head; a residual block in the tail keeps ``init``).

    Raises :class:`HypothesisError` when :func:`layout` does not recognise the spec.

    >>> from advdim.arch import parse
    >>> spec = parse("3x8x8 > conv(8) > relu > res(conv(8) > relu > conv(8)) > relu > flatten > dense(2)")
    >>> [round(float(input_variances(spec, gate_law=g).sum()), 4) for g in GateLaw]
    [4.0118, 3.75, 3.0]
    """
    lay = layout(spec)
    init = _graph.init_name(init)
    _graph.check_logit(spec, logit)
    law = chain_law(spec, init, inputs, points, variance, coupling and gate_law is GateLaw.CHAIN)
    gates = len(lay.blocks) + 1
    n_in = law.p[0].shape[0]
    head = np.zeros(spec.shapes()[-1], dtype=np.float64)
    head[logit] = 1.0
    for s in reversed(lay.tail):
        head = _back(s, head, init, variance)
    arrive: dict[int, np.ndarray] = {gates - 1: np.broadcast_to(head, (n_in, *head.shape))}
    restarts = lay.restarts
    total = np.zeros(spec.input_shape)
    for a in reversed(range(gates)):
        end = a
        while end + 1 < gates and not restarts[end + 1]:
            end += 1
        leave = sum(np.asarray(_run_prob(law, gate_law, a, b))[..., None, :, :] * arrive[b]
                    if np.ndim(_run_prob(law, gate_law, a, b)) else _run_prob(law, gate_law, a, b) * arrive[b]
                    for b in range(a, end + 1))
        leave = np.broadcast_to(leave, arrive[end].shape)
        if a == 0:
            for n in range(n_in):
                v = leave[n] if lay.pool is None else _unpool(lay.pool, leave[n], law.route, n)
                for s in reversed(lay.stem):
                    v = _back(s, v, init, variance)
                total += v
            break
        block = lay.blocks[a - 1]
        layer = block.layer
        assert isinstance(layer, Residual)
        below = []
        for n in range(n_in):
            v = leave[n]
            for s in reversed(block.branch):
                v = _back(s, v, init, variance)
            v = float(layer.scale) ** 2 * v
            if block.skip is not None:
                bn = 1.0 + BN_EPS if getattr(layer, "projbn", False) else 1.0
                v = v + _back(block.skip, leave[n] / bn, init, variance)
            below.append(v)
        arrive[a - 1] = np.stack(below)
    return total / n_in


def _unpool(pool: Step, z: np.ndarray, route: np.ndarray | None, n: int) -> np.ndarray:
    """Back through a max pool: each output's value goes to its window's arg-max, entry ``i`` w.p. ``route``."""
    assert route is not None
    windows = _windows(pool)
    c = z.shape[0]
    r = route.reshape(-1, *windows.shape)[n]  # (outputs, window)
    out = np.zeros((c, pool.in_shape[1] * pool.in_shape[2]))
    live = windows >= 0
    o_idx = np.broadcast_to(np.arange(windows.shape[0])[:, None], windows.shape)[live]
    np.add.at(out.T, windows[live], (z.reshape(c, -1)[:, o_idx] * r[live][None, :]).T)  # out.T: a view
    return out.reshape(pool.in_shape)


def grad_sq_norm(spec: Spec, init: str = "he", logit: int = 0, gate_law: GateLaw = GateLaw.CHAIN,
                 inputs: np.ndarray | None = None, points: int = POINTS, variance: Variance | None = None,
                 coupling: bool = True) -> float:
    """``E||d_x f_k||_2^2`` in the wide limit: the sum of :func:`input_variances`."""
    return float(np.sum(input_variances(spec, init, logit, gate_law, inputs, points, variance, coupling)))


def naive_path_sum(spec: Spec, init: str = "he", logit: int = 0) -> np.ndarray:
    """The path sum with every post-activation gate a Bernoulli(1/2) (``_graph._back`` on every step,
    no law check): what :func:`input_variances` with ``GateLaw.HALF`` must reproduce exactly."""
    init = _graph.init_name(init)
    v = np.zeros(spec.shapes()[-1], dtype=np.float64)
    v[logit] = 1.0
    for s in reversed(_graph.steps(spec)):
        v = _graph._back(s, v, init)
    return v


#: the level of the law, as ``Prediction.approximate`` states it
LEVEL = ("post-activation residual blocks: the wide-limit chain law (gradient independence; docs/theory.md, "
         "'Post-activation residual blocks'); at finite width E||d_x f||_2^2 lies O(1/C) above it (Monte Carlo of "
         "advdim and torchvision nets, 1 to 4 blocks: -0.4% to +4.9% at 16 channels, -0.5% to +3.2% at 64, about "
         "+1% at 128 to 256 for four blocks; extrapolated to infinite width 1.004 +- 0.003 of the law over 13 nets)")


def growth(members: Sequence[Spec], init: str) -> tuple[float | None, str]:
    """``(beta, reason)`` of ``E||d_x f_k||_2^2 ~ d^beta`` for members with post-activation blocks.

    With He weights and members that differ only in the map size (the same layers, a dense head
    reading every position), every interior position runs the same chains and the head's and stem's
    gains do not depend on the fan-in: ``beta = 0`` (zero padding adds a border term that fades as
    ``1/s``), so ``E||d_x f_k||_q`` keeps the exponent ``1/q - 1/2``.  Otherwise None.
    """
    kinds = {tuple(layer.kind for layer in m.layers) for m in members}
    if _graph.init_name(init) == "he" and len(kinds) == 1:
        return 0.0, f"{LEVEL}; the same layers at every size: d-independent in the bulk (beta = 0)"
    return None, f"{LEVEL}; no exponent: the members' layers differ or the init is not He"
