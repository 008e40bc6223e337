"""``E||d_x f_k||_inf`` of a conv net at finite width: the exact law of the path-sum model, by Monte Carlo.

Why the independent-Gaussian law of :func:`advdim.theory._gauss.expected_q_norm` misses conv nets:
the input gradient is ``g_i = sum_{c,t} w1[c, t] u_c(i + t)`` with ``u`` the gated back-propagated
signal at the first layer.  Given ``u``, ``g`` is Gaussian with variance ``V_i = s1^2 sum_{c,t}
u_c(i + t)^2`` (and small conditional correlations); ``V_i`` is a sum over a few channels and taps,
and each strided layer multiplies it by one more such random factor shared by a whole region (a
multiplicative cascade).  The maximum over ``d`` coordinates picks the regions where these factors
align: at s = 8..64 the measured ``E||g||_inf`` is 3% to twice above the independent law, more
the larger ``d`` and the fewer the channels.

The model here is the theory's own (no forward pass): ``g = W_1^T D_1 W_2^T D_2 ... W_L^T e_k``
with every weight an independent draw of the init's law (H3-H5) and diagonal 0/1 gates ``D_l``
independent of the weights (H1).  Two gate laws (:class:`GateLaw`):

* ``INDEPENDENT``: every gate an independent Bernoulli(1/2) -- H1 as the paper states it.
* ``CHANNEL`` (the default): H1 at finite width.  The pre-activations of one conv channel share
  its weights, and at initialisation the ReLU outputs they read have a positive mean, so the
  channel has an offset ``m_c`` common to all its positions.  In the mean-field limit two distinct
  positions of one channel have correlation ``rho`` (:func:`gate_correlations`: 0 after the input,
  then ``rho' = kappa(rho)``, the arc-cosine map of the ReLU, ``4 rho / (1 + 3 rho)`` through a
  2x2 average pool), so ``m_c ~ N(0, rho q)`` and each position is active with probability
  ``pi_c = Phi(sqrt(rho / (1 - rho)) xi_c)``, ``xi_c ~ N(0, 1)`` per net and channel.  Every gate
  is still Bernoulli(1/2) and independent of the weights, and a path crosses each layer once, so
  every path sum (``E||g||_2^2``, Theorems 4-5) is unchanged; only the fourth and higher moments
  move: with the channels' rates spread, the maximum is up to 8% below ``INDEPENDENT`` at s = 64,
  and within 2% of the measured one on every validated member (docs/theory.md).

The expectation is estimated from ``n`` independent draws of the model (weights and gates) with the
exact path sums of the squared norms of the back-propagated signal at every weight layer as control
variates (their means are known, except with reflect padding: :func:`exact_energies`; leave-one-out
coefficients, :func:`control_variate_mean`), so the estimate carries its own standard error: sized
by a pilot for one network (:func:`expected_max_norm`), a fixed number of draws for each unit of a
study over random topologies, or read from the table of the built-in families' random members
(:func:`tabulated`).  Everything is numpy; nothing imports torch.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from advdim.theory import _graph
from advdim.theory._graph import BN_EPS, Sign, Step

from advdim.arch import AvgPool, BatchNorm, Conv, Dense, Family, Flatten, GlobalAvgPool, Padding, ReLU, Scale, Spec
from advdim.errors import AdvdimError, HypothesisError
from advdim.inits import Init


class GateLaw(enum.Enum):
    """The joint law of the ReLU gates in the path-sum model (each gate Bernoulli(1/2), independent of the weights)."""

    INDEPENDENT = "independent"  # every gate independent: H1 as stated
    CHANNEL = "channel"  # the gates of one conv channel share a mean-field offset: H1 at finite width


#: the layers the model walks (the same as the exact path sums of :func:`advdim.theory._graph.input_variances`)
SUPPORTED = (Conv, Dense, AvgPool, GlobalAvgPool, Flatten, ReLU, BatchNorm, Scale)
#: default relative standard error of :func:`expected_max_norm` (after the control variates)
REL_SE = 0.005
#: draws of the pilot run that sizes the sample, and the most draws one estimate takes
PILOT_DRAWS = 256
MAX_DRAWS = 8192
#: the most multiply-adds one estimate may spend (measured 2-3e9 per second of one core in numpy
#: float32: under 10 s); a member too large for even :data:`PILOT_DRAWS` draws (strided beyond s = 128,
#: 32 channels with 5 x 5 kernels beyond s = 64) has no finite-width prediction here
MAX_MACS = 2 * 10**10
#: draws of one unit of a study over random topologies (``expected_max_norm(..., draws=UNIT_DRAWS)``):
#: no pilot; on the default strided study's members the relative se per unit is then 3.1-3.7% (median
#: per size; 90th percentile 7-10%) and its mean prediction over 200 topologies is within 0.5-0.9%
#: (docs/performance.md)
UNIT_DRAWS = 32
#: the fewest draws of a fixed-size estimate (one control variate and a standard error)
MIN_UNIT_DRAWS = 8
#: bytes of the working arrays of one batch of draws
BATCH_BYTES = 48 * 2**20


# --------------------------------------------------------------------------------------------
# The mean-field correlation of distinct positions of one channel (the gates' common offset)
# --------------------------------------------------------------------------------------------


def kappa(rho: float) -> float:
    """``E[relu(z) relu(z')] / E[relu(z)^2]`` for standard Gaussians of correlation ``rho`` (arc-cosine kernel).

    ``(sqrt(1 - rho^2) + (pi - arccos rho) rho) / pi``: ``kappa(0) = 1/pi``, ``kappa(1) = 1``.

    >>> round(kappa(0.0), 6), kappa(1.0)
    (0.31831, 1.0)
    """
    rho = min(1.0, max(-1.0, rho))
    return (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / math.pi


def _bias_variance(init: str, step: Step) -> float:
    """Variance of one bias at initialisation (PyTorch's default draws ``U(-b, b)``, ``b = 1/sqrt(fan_in)``)."""
    if init != Init.TORCH.value or not getattr(step.layer, "bias", False):
        return 0.0
    return 1.0 / (3.0 * step.fans[0])


def gate_correlations(spec: Spec, init: str = "he") -> dict[int, float]:
    """Per ReLU layer on a map: the mean-field correlation ``rho`` of two distinct positions of one channel.

    The forward recursion of the second moments ``q = E[h^2]`` and ``c = E[h(p) h(p')]`` (``p != p'``,
    same channel) over weights and i.i.d. ``N(0, 1)`` inputs: the input has ``c = 0``; a convolution
    maps ``(q, c)`` to ``fan_in Var(w) (q, c) + Var(b)`` (distinct outputs read distinct inputs through
    the same tap, whatever the stride, dilation or padding); a ReLU to ``(q/2, q kappa(c/q)/2)``; a
    ``k x k`` average pool to ``((q + (k^2 - 1) c)/k^2, c)``.  ``rho = c/q`` at the ReLU's input.

    >>> from advdim.arch import family
    >>> {k: round(v, 4) for k, v in gate_correlations(family("strided", final=2).spec(8)).items()}
    {1: 0.0, 3: 0.3183, 5: 0.4937}
    """
    init = _graph.init_name(init)
    q, c = 1.0, 0.0
    out: dict[int, float] = {}
    for step in _graph.steps(spec):
        layer = step.layer
        if isinstance(layer, Conv):
            gain = step.fans[0] * _graph.weight_variance(init, *step.fans)
            bias = _bias_variance(init, step)
            q, c = gain * q + bias, gain * c + bias
        elif isinstance(layer, ReLU):
            if len(step.in_shape) == 3 and step.sign is not Sign.NONNEG:
                out[step.index] = c / q if q > 0 else 0.0
            if step.sign is not Sign.NONNEG:
                q, c = q / 2, q * kappa(c / q if q > 0 else 0.0) / 2
        elif isinstance(layer, AvgPool):
            k2 = layer.size**2
            q = (q + (k2 - 1) * c) / k2
        elif isinstance(layer, BatchNorm):
            q, c = q / (1 + BN_EPS), c / (1 + BN_EPS)
        elif isinstance(layer, Scale):
            q, c = q * layer.factor**2, c * layer.factor**2
        elif isinstance(layer, (Flatten, GlobalAvgPool, Dense)):
            break  # flat from here on: one gate per unit, no channel shared by positions
    return out


# --------------------------------------------------------------------------------------------
# The backward pass of the gated linear model
# --------------------------------------------------------------------------------------------


def _check(spec: Spec, logit: int) -> list[Step]:
    _graph.check_logit(spec, logit)
    st = _graph.steps(spec)
    for s in st:
        if not isinstance(s.layer, SUPPORTED):
            raise HypothesisError(f"layer {s.index} ({s.layer.kind}): no path-sum law, so no finite-width "
                                  "law of ||d_x f||_inf either")
        if isinstance(s.layer, BatchNorm) and s.layer.mode.value != "running":
            raise HypothesisError(f"layer {s.index} batchnorm in batch mode: the samples of a batch interact")
    return st


def _fold(p: np.ndarray, n: int, pad: int, padding: Padding, axis: int) -> np.ndarray:
    """The adjoint of padding ``n`` entries by ``pad`` along ``axis`` (``p`` may be longer than ``n + 2 pad``)."""
    def at(lo: int | None, hi: int | None, step: int | None = None) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(lo, hi, step),)

    if not pad or padding is Padding.ZEROS:  # nothing wraps: a view of the inner entries
        return p if p.shape[axis] == n else p[at(pad, pad + n)]
    out = p[at(pad, pad + n)].copy()
    if padding is Padding.CIRCULAR:
        out[at(n - pad, None)] += p[at(None, pad)]
        out[at(None, pad)] += p[at(pad + n, 2 * pad + n)]
    elif padding is Padding.REFLECT:
        out[at(1, pad + 1)] += p[at(pad - 1, None, -1)]
        out[at(n - 1 - pad, n - 1)] += p[at(2 * pad + n - 1, pad + n - 1, -1)]
    return out


#: the size ``m n k`` up to which OpenBLAS runs one matrix product on one thread (its
#: ``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``): larger products of these thin matrices spawn
#: threads per product, which on a busy machine costs up to 100 times the product itself
_ONE_THREAD_MNK = 65536 * 4
_BLAS = threading.local()


@functools.cache
def _openblas_threads_local() -> Callable[[int], int] | None:
    """numpy's bundled OpenBLAS ``openblas_set_num_threads_local`` (the calling thread's number of
    threads; returns the previous one), or None (another BLAS, or an OpenBLAS without it)."""
    import ctypes
    import glob
    import os

    root = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*")) +
                       glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the model's matrix products on one BLAS thread of the calling thread (numpy's OpenBLAS).

    These products are many and thin: OpenBLAS would spread each over every core, which costs more
    than the product (100 times more on a busy machine); on one thread whole stacks go to BLAS at
    once, 2-5 times faster than the column blocks :func:`_batched_matmul` falls back to.
    """
    fn = _openblas_threads_local()
    if fn is None or getattr(_BLAS, "one", False):
        yield
        return
    old = fn(1)
    _BLAS.one = True
    try:
        yield
    finally:
        _BLAS.one = False
        fn(old)


def _batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for stacks ``(R, m, k) @ (R, k, n)``: at once on one BLAS thread (:func:`one_blas_thread`),
    else in column blocks small enough for OpenBLAS to run each on one thread."""
    r, m, k = a.shape
    n = b.shape[2]
    block = max(1, _ONE_THREAD_MNK // (m * k))
    if block >= n or getattr(_BLAS, "one", False):
        return np.matmul(a, b)
    out = np.empty((r, m, n), dtype=np.result_type(a, b))
    for lo in range(0, n, block):
        out[:, :, lo:lo + block] = np.matmul(a, b[:, :, lo:lo + block])
    return out


def _conv_back(delta: np.ndarray, w: np.ndarray, step: Step) -> np.ndarray:
    """``W^T delta`` of a convolution: ``delta`` ``(R, C_out, H', W')``, ``w`` ``(R, C_out, C_in, k, k)``."""
    layer = step.layer
    assert isinstance(layer, Conv)
    r = delta.shape[0]
    c_in, h, wd = step.in_shape
    c_out, ho, wo = step.out_shape
    k, st, dil, pad = layer.kernel, layer.stride, layer.dilation, layer.pad
    wt = w.transpose(0, 3, 4, 2, 1).reshape(r, k * k * c_in, c_out)
    cols = _batched_matmul(wt, delta.reshape(r, c_out, ho * wo)).reshape(r, k, k, c_in, ho, wo)
    hp = max(h + 2 * pad, (ho - 1) * st + (k - 1) * dil + 1)
    wp = max(wd + 2 * pad, (wo - 1) * st + (k - 1) * dil + 1)
    canvas = np.zeros((r, c_in, hp, wp), dtype=delta.dtype)
    for ty in range(k):
        for tx in range(k):
            canvas[:, :, ty * dil:ty * dil + st * (ho - 1) + 1:st, tx * dil:tx * dil + st * (wo - 1) + 1:st] += \
                cols[:, ty, tx]
    return _fold(_fold(canvas, h, pad, layer.padding, 2), wd, pad, layer.padding, 3)


WeightFn = Callable[[Step], np.ndarray]
GateFn = Callable[[Step, tuple[int, ...]], np.ndarray]


def _walk(st: list[Step], r: int, logit: int, weights: WeightFn, gates: GateFn,
          energies: list[np.ndarray] | None = None) -> np.ndarray:
    """The input gradient of ``f_logit`` of ``r`` gated linear nets, shape ``(r, *input_shape)``.

    ``weights(step)``: the layer's weights with a leading net axis (PyTorch's layout); ``gates(step,
    shape)``: the 0/1 gates of a ReLU whose input is not already non-negative.  ``energies`` collects
    ``||delta||_2^2`` per net below every weight layer (float64).
    """
    delta: np.ndarray | None = None
    for step in reversed(st):
        layer = step.layer
        if isinstance(layer, Dense):
            w = weights(step)  # (r, out, in)
            if delta is None:
                delta = w[:, logit, :].copy()
            else:
                delta = np.matmul(delta[:, None, :], w)[:, 0, :]
        elif delta is None:
            raise AdvdimError(f"layer {step.index} ({layer.kind}): the model needs a dense output layer")
        elif isinstance(layer, Conv):
            delta = _conv_back(delta, weights(step), step)
        elif isinstance(layer, Flatten):
            delta = delta.reshape(r, *step.in_shape)
        elif isinstance(layer, ReLU):
            if step.sign is not Sign.NONNEG:
                delta = delta * gates(step, delta.shape)
        elif isinstance(layer, GlobalAvgPool):
            c, h, w_ = step.in_shape
            delta = np.broadcast_to((delta / (h * w_))[:, :, None, None], (r, c, h, w_)).copy()
        elif isinstance(layer, AvgPool):
            k = layer.size
            delta = np.repeat(np.repeat(delta, k, axis=2), k, axis=3) / delta.dtype.type(k * k)
        elif isinstance(layer, BatchNorm):
            delta = delta / delta.dtype.type(math.sqrt(1.0 + BN_EPS))
        elif isinstance(layer, Scale):
            delta = delta * delta.dtype.type(layer.factor)
        if energies is not None and isinstance(layer, (Dense, Conv)):
            energies.append(np.einsum("ij,ij->i", flat := delta.reshape(r, -1), flat, dtype=np.float64))
    assert delta is not None
    return delta.reshape(r, *st[0].in_shape)


def backward(spec: Spec, weights: dict[int, np.ndarray], gates: dict[int, np.ndarray], logit: int = 0) -> np.ndarray:
    """``d f_logit / d x`` of the gated linear nets ``f = W_L D_L ... D_1 W_1 x`` (biases do not enter).

    Args:
        spec: the architecture.
        weights: per weight layer index, the weights of ``R`` nets in PyTorch's layout, ``(R, out, in)``
            or ``(R, C_out, C_in, k, k)``.
        gates: per ReLU layer index (those whose input is not already non-negative), 0/1 gates of the
            ReLU's shape with the leading net axis.
        logit: the index k of ``f_k``.
    Returns:
        ``(R, *spec.input_shape)``, in the weights' dtype.

    >>> from advdim.arch import parse
    >>> spec = parse("1x2x2 > flatten > dense(2)")
    >>> backward(spec, {1: np.arange(8.0).reshape(1, 2, 4)}, {}, logit=1)[0]
    array([[[4., 5.],
            [6., 7.]]])
    """
    st = _check(spec, logit)
    r = next(iter(weights.values())).shape[0]
    return _walk(st, r, logit, lambda s: weights[s.index], lambda s, shape: gates[s.index])


# --------------------------------------------------------------------------------------------
# Draws of the model
# --------------------------------------------------------------------------------------------

_PHI = np.frompyfunc(NormalDist().cdf, 1, 1)


def _weight_shape(step: Step) -> tuple[int, ...]:
    layer = step.layer
    if isinstance(layer, Conv):
        return (layer.out_channels, step.in_shape[0], layer.kernel, layer.kernel)
    assert isinstance(layer, Dense)
    return (layer.out_features, step.in_shape[0])


def _draw_weights(step: Step, r: int, rng: np.random.Generator, init: str, dtype: type) -> np.ndarray:
    """``r`` independent weight draws of one layer by the laws of :func:`advdim.simulate._engine.draw_stack`."""
    shape = _weight_shape(step)
    fan_in, fan_out, rows = step.fans
    if init == Init.TORCH.value:
        bound = 1.0 / math.sqrt(fan_in)
        return (rng.uniform(-bound, bound, (r, *shape))).astype(dtype)
    if init == Init.ORTHOGONAL.value:
        flat = rng.standard_normal((r, max(rows, fan_in), min(rows, fan_in)))
        q, tri = np.linalg.qr(flat)
        q = q * np.sign(np.diagonal(tri, axis1=-2, axis2=-1))[:, None, :]
        if rows < fan_in:
            q = q.transpose(0, 2, 1)
        return (math.sqrt(2.0) * q).reshape(r, *shape).astype(dtype)
    std = math.sqrt(_graph.weight_variance(init, fan_in, fan_out, rows))
    w = rng.standard_normal((r, *shape), dtype=np.float32)
    w *= np.float32(std)
    return w.astype(dtype, copy=False)


def _draw_gates(step: Step, shape: tuple[int, ...], rng: np.random.Generator, law: GateLaw,
                rho: dict[int, float], dtype: type) -> np.ndarray:
    """0/1 gates of one ReLU for ``shape[0]`` nets: Bernoulli(1/2), or per channel Bernoulli(pi_c) (``CHANNEL``)."""
    r = rho.get(step.index, 0.0) if law is GateLaw.CHANNEL else 0.0
    if r <= 0.0 or len(shape) != 4:  # fair coins: the bits of random bytes
        n = math.prod(shape)
        return np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n).reshape(shape) \
            .astype(dtype)
    u = rng.random(shape, dtype=np.float32)
    if r >= 1.0:
        raise HypothesisError(f"layer {step.index}: the positions of a channel are perfectly correlated (rho = 1)")
    xi = rng.standard_normal(shape[:2]) * math.sqrt(r / (1.0 - r))
    rate = np.asarray(_PHI(xi), dtype=np.float32)[:, :, None, None]
    return (u < rate).astype(dtype)


@functools.lru_cache(maxsize=4096)
def macs_per_draw(spec: Spec) -> int:
    """Multiply-adds of one backward pass of the model (the weight layers)."""
    total = 0
    for step in _graph.steps(spec):
        if isinstance(step.layer, Conv):
            total += step.fans[0] * step.layer.out_channels * step.out_shape[1] * step.out_shape[2]
        elif isinstance(step.layer, Dense):
            total += step.in_shape[0] * step.layer.out_features
    return total


def _batch(spec: Spec) -> int:
    per_draw = 4 * 4 * max(int(np.prod(s)) for s in spec.shapes())  # float32: delta, the canvas, the columns
    return max(1, min(512, BATCH_BYTES // per_draw))


def sample_gradients(spec: Spec, n: int, seed: int | np.random.SeedSequence = 0, init: str = "he", logit: int = 0,
                     law: GateLaw = GateLaw.CHANNEL, energies: list[np.ndarray] | None = None) -> np.ndarray:
    """``n`` independent draws of ``d_x f_logit`` from the path-sum model, ``(n, *input_shape)`` float32.

    Each draw has its own weights (the init's law) and gates (``law``); ``energies``, if given,
    receives per weight layer (from the output down) the ``(n,)`` float64 values ``||delta||_2^2``
    of the back-propagated signal below that layer (the last one is ``||g||_2^2``).
    """
    if n < 1:
        raise AdvdimError(f"the number of draws must be positive, got {n}")
    init = _graph.init_name(init)
    st = _check(spec, logit)
    rho = gate_correlations(spec, init) if law is GateLaw.CHANNEL else {}
    rng = np.random.default_rng(seed)
    batch = _batch(spec)
    parts: list[np.ndarray] = []
    per_layer: list[list[np.ndarray]] = []
    done = 0
    with one_blas_thread():
        while done < n:
            r = min(batch, n - done)
            got: list[np.ndarray] = []

            def weights(step: Step, r: int = r) -> np.ndarray:
                return _draw_weights(step, r, rng, init, np.float32)

            def gates(step: Step, shape: tuple[int, ...]) -> np.ndarray:
                return _draw_gates(step, shape, rng, law, rho, np.float32)

            parts.append(_walk(st, r, logit, weights, gates, got))
            per_layer.append(got)
            done += r
    if energies is not None:
        energies.extend(np.concatenate([p[j] for p in per_layer]) for j in range(len(per_layer[0])))
    return np.concatenate(parts)


def energy_means(spec: Spec, init: str = "he", logit: int = 0) -> np.ndarray:
    """Exact ``E||delta||_2^2`` below every weight layer (from the output down): the path sums of
    :func:`advdim.theory._graph.input_variances` stopped at each layer (the same under both gate laws)."""
    init = _graph.init_name(init)
    st = _check(spec, logit)
    v = np.zeros(spec.shapes()[-1], dtype=np.float64)
    v[logit] = 1.0
    out = []
    for step in reversed(st):
        v = _graph._back(step, v, init)
        if isinstance(step.layer, (Dense, Conv)):
            out.append(float(v.sum()))
    return np.array(out)


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaxNormEstimate:
    """A Monte Carlo estimate of ``E||d_x f_k||_inf`` under the path-sum model.

    Attributes:
        mean: the control-variate estimate.
        se: its standard error (residual standard deviation / sqrt(n)).
        draws: independent draws of the model used.
        law: the gate law.
        seed: the seed of the draws.
        plain_mean / plain_se: the plain sample mean and its standard error (no control variates).
    """

    mean: float
    se: float
    draws: int
    law: GateLaw
    seed: int
    plain_mean: float
    plain_se: float

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "se": self.se, "draws": self.draws, "gates": self.law.value, "seed": self.seed,
                "method": "Monte Carlo of the path-sum model (no forward pass), control variates: exact path sums"}


def control_variate_mean(y: np.ndarray, x: np.ndarray, x_means: np.ndarray) -> tuple[float, float]:
    """``(estimate, se)`` of ``E y`` from draws ``y`` ``(n,)`` with controls ``x`` ``(n, m)`` of known means.

    Leave-one-out regression: draw i contributes ``y_i - beta_(-i) (x_i - E x)``, ``beta_(-i)`` the
    least-squares slopes fitted without it (closed form through the leverages); the estimate is the
    mean of these residuals and its se their standard deviation over ``sqrt(n)``.  Each
    ``beta_(-i)`` is independent of draw i, so the estimate is unbiased whatever the law of the
    controls.  The plain regression estimator ``mean(y) - beta (mean(x) - E x)`` is biased by
    ``-Cov(beta, mean(x))``: on the narrow deep members, whose energies are heavy-tailed, +1.4% to
    +1.8% at 256 draws and +3% to +5% at 32 with its se understated by up to a third (measured
    against 20000 plain draws); the leave-one-out form is unbiased there and its se calibrated
    (docs/performance.md), at the regression's variance to a few percent elsewhere.
    """
    n, m = x.shape
    if n <= m + 2:
        raise AdvdimError(f"{n} draws cannot fit {m} control variates")
    scale = np.where(x_means > 0, x_means, 1.0)
    xs = (x - x_means) / scale
    design = np.column_stack([np.ones(n), xs])
    inv = np.linalg.pinv(design.T @ design)
    coef = inv @ (design.T @ y)
    resid = y - design @ coef
    free = 1.0 - np.einsum("ij,jk,ik->i", design, inv, design)  # 1 - leverage
    ok = free > 1e-9  # a draw that alone fixes a slope: left without its control (y_i is unbiased too)
    loo = coef[None, :] - (design @ inv) * np.where(ok, resid / np.where(ok, free, 1.0), 0.0)[:, None]
    r = np.where(ok, y - np.einsum("ij,ij->i", loo[:, 1:], xs), y)
    return float(r.mean()), float(r.std(ddof=1) / math.sqrt(n))


def _draw_maxima(spec: Spec, draws: int, seed: int | np.random.SeedSequence, init: str, logit: int,
                 law: GateLaw) -> tuple[np.ndarray, np.ndarray]:
    """``(max_i |g_i|, energies)`` of ``draws`` draws: shapes ``(draws,)`` and ``(draws, weight layers)``."""
    en: list[np.ndarray] = []
    g = sample_gradients(spec, draws, seed, init, logit, law, en)
    return np.abs(g.reshape(draws, -1)).max(axis=1).astype(np.float64), np.stack(en, axis=1)


def exact_energies(spec: Spec) -> bool:
    """Whether :func:`energy_means` are the model's exact expectations (H5 on every layer).

    Reflect padding puts one weight on two edges leaving a border node; where a later average merges
    the two edges' paths their cross terms do not vanish and the path sums are only the bulk value.
    The control variates are then not used (the plain sample mean is unbiased whatever the graph).
    """
    return not any(isinstance(s.layer, Conv) and s.layer.padding is Padding.REFLECT and s.layer.pad > 0
                   for s in _graph.steps(spec))


def _estimate(spec: Spec, y: np.ndarray, x: np.ndarray, init: str, logit: int, law: GateLaw,
              seed: int) -> MaxNormEstimate:
    plain, plain_se = float(y.mean()), float(y.std(ddof=1) / math.sqrt(y.size))
    if not exact_energies(spec):
        return MaxNormEstimate(plain, plain_se, y.size, law, seed, plain, plain_se)
    mean, se = control_variate_mean(y, x, energy_means(spec, init, logit))
    return MaxNormEstimate(mean, se, y.size, law, seed, plain, plain_se)


def estimate_max_norm(spec: Spec, draws: int, init: str = "he", logit: int = 0, law: GateLaw = GateLaw.CHANNEL,
                      seed: int = 0) -> MaxNormEstimate:
    """``E||d_x f_logit||_inf`` from ``draws`` draws of the model, with the exact energies as control variates."""
    init = _graph.init_name(init)
    return _estimate(spec, *_draw_maxima(spec, draws, seed, init, logit, law), init, logit, law, seed)


def _unit_seed(spec: Spec, seed: int) -> np.random.SeedSequence:
    """The seed of one unit's draws: ``seed`` and the spec's canonical text, so that the units of a
    study (distinct specs, every size of every topology) have independent draws."""
    return np.random.SeedSequence([seed, zlib.crc32(spec.to_text().encode())])


def _unit_estimate(spec: Spec, draws: int, init: str, logit: int, law: GateLaw, seed: int) -> MaxNormEstimate:
    """``draws`` draws and no pilot; one control variate, ``||g||_2^2`` (with a few dozen draws one
    coefficient per weight layer would fit the noise and understate the se; ``||g||_2^2`` alone takes
    as much of the variance as all of them: measured on random strided members, residual sd within 5%)."""
    y, x = _draw_maxima(spec, draws, _unit_seed(spec, seed), init, logit, law)
    plain, plain_se = float(y.mean()), float(y.std(ddof=1) / math.sqrt(y.size))
    if not exact_energies(spec):
        return MaxNormEstimate(plain, plain_se, y.size, law, seed, plain, plain_se)
    mean, se = control_variate_mean(y, x[:, -1:], energy_means(spec, init, logit)[-1:])
    return MaxNormEstimate(mean, se, y.size, law, seed, plain, plain_se)


@functools.lru_cache(maxsize=4096)
def expected_max_norm(spec: Spec, init: str = "he", logit: int = 0, law: GateLaw = GateLaw.CHANNEL,
                      rel_se: float = REL_SE, seed: int = 0, draws: int | None = None) -> MaxNormEstimate | None:
    """``E||d_x f_logit||_inf`` under the path-sum model, to a relative standard error ``rel_se``.

    A pilot of :data:`PILOT_DRAWS` draws measures the spread after the control variates; as many
    further draws as reach ``rel_se`` follow (in all at most :data:`MAX_DRAWS`, and
    :data:`MAX_MACS` multiply-adds: the standard error is then larger, and stated), and the
    estimate uses them all.  Seeded: the pilot and the rest are the two children of ``seed``'s
    ``SeedSequence``.  ``None`` when even the pilot would exceed :data:`MAX_MACS`.

    ``draws``: instead, exactly that many draws, no pilot and no target (``rel_se`` is not used):
    one unit of a study over random topologies (:data:`UNIT_DRAWS`), whose precision is the se
    stated after.  The study averages its units, so the error of its mean prediction is about the
    units' relative se over ``sqrt(units)``; each spec gets its own stream (:func:`_unit_seed`).
    Results are cached per spec and arguments: the repeated members of a study cost nothing.  A spec
    of the table (:func:`tabulated`: the built-in families' random members at the default sizes) is
    read from it when its entry is as precise as asked (always for ``draws``; not for the 0.5% of a
    fixed network).

    >>> from advdim.arch import family
    >>> est = expected_max_norm(family("strided", channels=4, final=2).spec(4), rel_se=0.02)
    >>> round(est.mean, 1), est.se / est.mean < 0.02, est.draws
    (0.5, True, 256)
    >>> unit = expected_max_norm(family("strided", channels=4, final=2).spec(4), draws=UNIT_DRAWS)
    >>> unit.draws, abs(unit.mean - est.mean) < 5 * math.hypot(unit.se, est.se)
    (32, True)
    """
    init = _graph.init_name(init)
    if not 0 < rel_se < 1:
        raise AdvdimError(f"the relative standard error must lie in (0, 1), got {rel_se!r}")
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < MIN_UNIT_DRAWS):
        raise AdvdimError(f"a fixed number of draws must be an integer >= {MIN_UNIT_DRAWS}, got {draws!r}")
    table = tabulated(spec, init, logit, law, seed)
    if table is not None and (draws is not None or table.se <= rel_se * table.mean):
        return table
    cost = macs_per_draw(spec)
    if draws is not None:
        return None if cost * draws > MAX_MACS else _unit_estimate(spec, draws, init, logit, law, seed)
    if cost * PILOT_DRAWS > MAX_MACS:
        return None
    return _sized_estimate(spec, init, logit, law, rel_se, np.random.SeedSequence(seed), seed)


def _sized_estimate(spec: Spec, init: str, logit: int, law: GateLaw, rel_se: float, seq: np.random.SeedSequence,
                    seed: int) -> MaxNormEstimate:
    """The pilot and as many further draws as reach ``rel_se`` (:func:`expected_max_norm`)."""
    cost = macs_per_draw(spec)
    first, rest = seq.spawn(2)
    y, x = _draw_maxima(spec, PILOT_DRAWS, first, init, logit, law)
    pilot = _estimate(spec, y, x, init, logit, law, seed)
    need = math.ceil(PILOT_DRAWS * (pilot.se / (rel_se * pilot.mean)) ** 2) if pilot.mean > 0 else PILOT_DRAWS
    more = int(min(need, MAX_DRAWS, MAX_MACS // cost)) - PILOT_DRAWS
    if more <= 0:
        return pilot
    y2, x2 = _draw_maxima(spec, more, rest, init, logit, law)
    return _estimate(spec, np.concatenate([y, y2]), np.concatenate([x, x2]), init, logit, law, seed)


# --------------------------------------------------------------------------------------------
# The table of the random members of the built-in conv families
# --------------------------------------------------------------------------------------------

#: the version of the model's law (the gate laws, the init laws, the backward pass): the table of
#: :func:`tabulated` is used only when it was written under this version.  Bump it with any change
#: that moves the law, and regenerate the table (:func:`write_table`)
MODEL_VERSION = 1
#: what the table holds: members of these families, valid at these sides, 3 input channels, He init,
#: logit 0, channel gates, each pilot-sized to this relative se (what each random topology of a study
#: got before the table), seed 0 with the spec's own stream
TABLE_FAMILIES = ("strided", "gap")
TABLE_SIZES = (8, 16, 32, 64)
TABLE_REL_SE = 0.02
TABLE_PATH = Path(__file__).with_name("_maxnorm_table.py")


def tabulated(spec: Spec, init: str = "he", logit: int = 0, law: GateLaw = GateLaw.CHANNEL,
              seed: int = 0) -> MaxNormEstimate | None:
    """The table's estimate for ``spec`` (looked up by its canonical text), or None when it has none:
    another spec, init, logit, gate law or seed, or a table of another :data:`MODEL_VERSION`."""
    from advdim.theory import _maxnorm_table as table

    head = table.MODEL
    if (head.get("version") != MODEL_VERSION or init != head.get("init") or logit != head.get("logit")
            or law.value != head.get("gates") or seed != head.get("seed")):
        return None
    row = table.TABLE.get(spec.to_text())
    if row is None:
        return None
    mean, se, draws, plain_mean, plain_se = row
    return MaxNormEstimate(mean, se, int(draws), law, seed, plain_mean, plain_se)


def table_members(families: Sequence[str] = TABLE_FAMILIES, sizes: Sequence[int] = TABLE_SIZES,
                  channels: int = 3, samples: int = 20000, seed: int = 0) -> list[Family]:
    """The distinct random members of ``families`` valid at every size: ``samples`` draws of each
    family's own sampler (``advdim.arch.sample_family``, as a study draws its topologies), deduplicated."""
    from advdim.arch import sample_family
    from advdim.errors import SpecError

    out: dict[str, Family] = {}
    for name in families:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        for _ in range(samples):
            fam = sample_family(name, rng)
            try:
                for s in sizes:
                    fam.spec(int(s), channels)
            except SpecError:
                continue
            out.setdefault(fam.to_text(), fam)
    return [out[k] for k in sorted(out)]


def write_table(path: Path = TABLE_PATH, families: Sequence[str] = TABLE_FAMILIES,
                sizes: Sequence[int] = TABLE_SIZES, progress: Path | None = None) -> int:
    """Estimate every member of :func:`table_members` at every size and write the table module.

    ``progress``: a JSON-lines file of the entries done so far (read back, so that an interrupted run
    resumes).  Returns the number of entries.  Minutes of CPU: about 2 s per strided member on one core.

        python -c "from advdim.theory._maxnorm import write_table; write_table()"
    """
    import json

    done: dict[str, list[float]] = {}
    if progress is not None and progress.exists():
        for line in progress.read_text().splitlines():
            key, row = json.loads(line)
            done[key] = row
    for fam in table_members(families, sizes):
        for s in sizes:
            spec = fam.spec(int(s), 3)
            key = spec.to_text()
            if key in done:
                continue
            est = _sized_estimate(spec, "he", 0, GateLaw.CHANNEL, TABLE_REL_SE, _unit_seed(spec, 0), 0)
            done[key] = [est.mean, est.se, est.draws, est.plain_mean, est.plain_se]
            if progress is not None:
                with progress.open("a") as fh:
                    fh.write(json.dumps([key, done[key]]) + "\n")
    rows = "".join(f"    {json.dumps(k)}: ({m:.7g}, {se:.4g}, {int(n)}, {pm:.7g}, {ps:.4g}),\n"
                   for k, (m, se, n, pm, ps) in sorted(done.items()))
    head = {"version": MODEL_VERSION, "init": "he", "logit": 0, "gates": GateLaw.CHANNEL.value, "seed": 0,
            "rel_se": TABLE_REL_SE, "families": list(families), "sizes": [int(s) for s in sizes], "channels": 3}
    path.write_text(TABLE_HEADER + f"MODEL: dict[str, Any] = {head!r}\n\n"
                    "#: spec canonical text -> (mean, se, draws, plain mean, plain se)\n"
                    "TABLE: dict[str, tuple[float, float, int, float, float]] = {\n" + rows + "}\n")
    return len(done)


TABLE_HEADER = '''# ruff: noqa: E501
"""Generated by ``advdim.theory._maxnorm.write_table``: do not edit.

``E||d_x f_0||_inf`` of the path-sum model with channel gates (``advdim.theory._maxnorm``) for every
random member of the built-in conv families at the sizes of ``MODEL``, each by
``expected_max_norm``'s pilot-sized Monte Carlo to the relative se ``MODEL["rel_se"]`` on the spec's
own stream.  :func:`advdim.theory._maxnorm.tabulated` reads it; ``tests/theory/test_maxnorm_units.py``
re-estimates some entries.
"""

from __future__ import annotations

from typing import Any

'''


# --------------------------------------------------------------------------------------------
# Coverage: where Prediction.expected_norm(inf, s) is within 3% of the measured mean
# --------------------------------------------------------------------------------------------

#: the inits of the validated members: He; PyTorch's default (uniform weights, biases in the gates'
#: offsets) and orthogonal, measured on strided and gap; LeCun and Glorot rescale each of He's layers
#: by a constant (zero biases, Gaussian weights), in the model and in the net alike
COVERED_INITS = tuple(i.value for i in Init)
#: paddings and layers of the validated members (docs/theory.md, "The q = inf prediction for conv nets")
COVERED_PADDINGS = (Padding.CIRCULAR, Padding.ZEROS, Padding.REFLECT)


def first_weighted_is_dense(spec: Spec) -> bool:
    """The first weight layer is dense: given the rest, ``g = W_1^T v`` has i.i.d. ``N(0, s^2 ||v||^2)``
    coordinates and the independent-Gaussian law of :mod:`advdim.theory._gauss` holds."""
    return isinstance(next((layer for layer in spec.layers if layer.has_weights), None), Dense)


@functools.lru_cache(maxsize=4096)
def covers(spec: Spec, init: str = "he") -> str | None:
    """Why the channel-gate prediction of ``E||d_x f||_inf`` is not covered on ``spec`` (None: covered).

    Covered: a conv first layer; only convolutions (circular, zero or reflect padding), ReLUs,
    flatten, a global average pool and dense layers; a ReLU right after every hidden conv / dense
    layer; any of the inits (:data:`COVERED_INITS`); an affordable Monte Carlo.  The members
    measured within 3% span this envelope: 4 to 32 channels, kernels 3 and 5, dilation 2, final
    maps 1 to 4, a dense hidden head, each padding, s = 8 to 128 (docs/theory.md).  Average pools
    are out: before a ReLU they break H1 locally (the pooled gates are coupled to the weights:
    measured 3-6% above the model at s >= 16).
    """
    init = _graph.init_name(init)
    if init not in COVERED_INITS:
        return f"{init} init: not validated"
    if not isinstance(spec.layers[-1], Dense):
        return "the model needs a dense output layer"
    st = _graph.steps(spec)
    for i, s in enumerate(st):
        layer = s.layer
        if isinstance(layer, AvgPool):
            return (f"layer {s.label} avgpool: an average pool breaks H1 locally (its gates are coupled to the "
                    "weights; measured 3-6% above the model at s >= 16)")
        if isinstance(layer, Scale) and init != Init.TORCH.value:
            continue  # zero biases: relu(a z) = a relu(z), the model and the net are a times those without it
        if not isinstance(layer, (Conv, ReLU, Flatten, GlobalAvgPool, Dense)):
            return (f"layer {s.label} ({layer.kind}): not among the validated layers "
                    "(conv, relu, flatten, globalavgpool, dense; scale under zero biases)")
        if isinstance(layer, Conv) and layer.padding not in COVERED_PADDINGS:
            return f"layer {s.label}: {layer.padding.value} padding not validated"
        if isinstance(layer, ReLU) and s.sign is not Sign.SYMMETRIC:
            return f"layer {s.label}: a ReLU on a {s.sign.value} input"
        after = next((t.layer for t in st[i + 1:] if not isinstance(t.layer, Scale)), None)
        if isinstance(layer, (Conv, Dense)) and i + 1 < len(st) and not isinstance(after, ReLU):
            return f"layer {s.label} ({layer.kind}) is not followed by a ReLU"
    if macs_per_draw(spec) * PILOT_DRAWS > MAX_MACS:
        return f"{macs_per_draw(spec) * PILOT_DRAWS:.2g} multiply-adds: above the budget of {MAX_MACS:.2g}"
    return None


def inf_norm_exact(spec: Spec, init: str = "he") -> bool:
    """Whether ``Prediction.expected_norm(inf, s)`` on ``spec`` is exact to the 3% standard.

    True for a dense first layer (the independent-Gaussian law) and for the conv nets
    :func:`covers` accepts (the channel-gate Monte Carlo of :func:`expected_max_norm`).

    >>> from advdim.arch import family
    >>> inf_norm_exact(family("strided").spec(16)), inf_norm_exact(family("avgpool").spec(16))
    (True, False)
    """
    return first_weighted_is_dense(spec) or covers(spec, init) is None


def model_applies(spec: Spec, init: str = "he") -> bool:
    """Whether ``Prediction.expected_norm(inf, s)`` uses :func:`expected_max_norm` on ``spec``: a conv first
    layer inside the validated envelope (:func:`covers`); elsewhere it keeps the independent-Gaussian law."""
    return not first_weighted_is_dense(spec) and covers(spec, init) is None


def inf_law_json(spec: Spec, init: str, logit: int, has_law: bool = True, rel_se: float = REL_SE,
                 draws: int | None = None) -> dict[str, Any] | None:
    """How ``expected_norm(inf)`` is computed on ``spec``: the Monte Carlo record, or the independent law."""
    if not has_law:
        return None
    if model_applies(spec, init):
        est = expected_max_norm(spec, _graph.init_name(init), logit, rel_se=rel_se, draws=draws)
        if est is not None:
            return {**est.to_json(), "exact": True}
    why = ("dense first layer: i.i.d. Gaussian coordinates given the rest" if first_weighted_is_dense(spec)
           else covers(spec, init) or "beyond the Monte Carlo budget")
    return {"method": "independent Gaussian coordinates with the path-sum variances",
            "exact": inf_norm_exact(spec, init), "why": why}
