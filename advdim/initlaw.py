"""Recognise the initialisation of a traced module from its own weights.

:func:`recognise_init` compares the weights of the traced layers (pooled over independent draws of
the module) with the schemes advdim knows (:class:`advdim.inits.Init`): for an i.i.d. scheme of
variance ``v``, per layer of ``n`` weights,

- the mean: ``|mean w| <= c sqrt(v / n)``;
- the variance: ``n mean(w^2) / v`` inside the chi-square(n) interval for a Gaussian;
  ``|mean w^2 / v - 1| <= c sqrt(0.8 / n)`` for a uniform;
- the shape, from the kurtosis ``b2 = mean w^4 / mean(w^2)^2``: for a Gaussian, Anscombe and
  Glynn's normal score of ``b2`` (:func:`kurtosis_z`, the test of ``scipy.stats.kurtosistest``),
  which rejects a uniform (``b2`` = 9/5) or a heavier tail; for the uniform, every weight inside
  its bound and ``|b2 - 9/5| <= c sqrt(V / n)`` with the delta-method ``V`` (about 1.317);

and for the orthogonal scheme the structure itself: ``W W^T = 2 I`` (or ``W^T W``), exactly up to
rounding, which i.i.d. draws never are.  Each test has level ``alpha / (3 L)`` (Bonferroni over
the three tests of the ``L`` layers; ``c`` its normal critical value), so a network drawn from a
scheme is called "unknown" with probability at most ``alpha`` (asymptotically in ``n``).  A scheme
is recognised when every layer is consistent with it and with no scheme that predicts differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from advdim.arch import Attention, Conv, Dense, Layer, Residual, Spec, format_layer
from advdim.inits import Init

#: level of the init recognition: a network drawn from a known scheme is called unknown with at most this probability
ALPHA = 0.01
#: schemes in the order they are named when several predict the same
SCHEMES = (Init.HE, Init.TORCH, Init.LECUN, Init.GLOROT, Init.ORTHOGONAL)


def weight_labels(spec: Spec) -> list[str]:
    """One label per weight matrix of ``spec``, in the order of its built module's ``Conv2d`` /
    ``Linear`` modules: a layer's index and text; in a residual block the branch's (``2.0:conv(8)``)
    then the projection's (``2.proj:conv(8,1,s=2,pad=zeros,bias=false)``); ``.q .k .v .o`` for attention.

    >>> from advdim.arch import parse
    >>> weight_labels(parse("1x4x4 > conv(4) > res(conv(8,s=2)) > res(attn(2)) > flatten > dense(2)"))[:3]
    ['0:conv(4)', '1.0:conv(8,s=2)', '1.proj:conv(8,1,s=2,pad=zeros,bias=false)']
    """
    def walk(layers: Sequence[Layer], shapes: Sequence[tuple[int, ...]], prefix: str) -> list[str]:
        out: list[str] = []
        for i, (layer, shape) in enumerate(zip(layers, shapes)):
            tag = f"{prefix}{i}:{format_layer(layer)}"
            if isinstance(layer, (Conv, Dense)):
                out.append(tag)
            elif isinstance(layer, Attention):
                out += [f"{tag}.{p}" for p in "qkvo"]
            elif isinstance(layer, Residual):
                out += walk(layer.branch, layer.branch_shapes(shape), f"{prefix}{i}.")
                proj = layer.projection(shape)
                if proj is not None:
                    out.append(f"{prefix}{i}.proj:{format_layer(proj)}")
        return out

    return walk(spec.layers, spec.shapes(), "")


#: kurtosis of a uniform law, and ``n`` times the delta-method variance of its sample kurtosis
#: ``m4 / m2^2`` (moments 1/3, 1/5, 1/7, 1/9 of uniform(-1, 1))
UNIFORM_KURTOSIS = 9 / 5
UNIFORM_KURTOSIS_VAR = (81 * (1 / 9 - 1 / 25) + (54 / 5) ** 2 * (1 / 5 - 1 / 9)
                        - 2 * 9 * (54 / 5) * (1 / 7 - 1 / 15))  # about 1.317
#: fewest weights in a layer for the kurtosis test of a Gaussian (Anscombe and Glynn's transform needs n >= 20)
MIN_KURTOSIS_N = 20


@dataclass(frozen=True)
class LayerInit:
    """What the weights of one conv / dense layer look like.

    Attributes:
        layer: the layer in spec text form, with its index (e.g. ``"0:conv(8)"``).
        n: weights pooled (layer size x draws).
        variance_ratio: ``mean w^2`` over He's ``2 / fan_in``.
        kurtosis: ``mean w^4 / (mean w^2)^2`` (3 Gaussian, 1.8 uniform).
        orthogonal_gain: the gain ``g`` when every draw has ``W W^T = g^2 I`` exactly (else None).
        schemes: the schemes this layer is consistent with.
    """

    layer: str
    n: int
    variance_ratio: float
    kurtosis: float
    orthogonal_gain: float | None
    schemes: tuple[str, ...]

    def describe(self) -> str:
        if self.orthogonal_gain is not None:
            return f"{self.layer}: orthogonal rows with gain {self.orthogonal_gain:.4g}"
        return (f"{self.layer}: variance {self.variance_ratio:.3g} x He's 2/fan_in, kurtosis {self.kurtosis:.3g} "
                f"({self.n} weights)")


@dataclass(frozen=True)
class InitGuess:
    """The recognised scheme of a network (``scheme`` None: unknown), with the reason in words."""

    scheme: str | None
    reason: str
    layers: tuple[LayerInit, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "recognised": self.scheme is not None, "reason": self.reason,
                "layers": [{"layer": x.layer, "weights": x.n, "variance_ratio_to_he": x.variance_ratio,
                            "kurtosis": x.kurtosis, "orthogonal_gain": x.orthogonal_gain, "schemes": list(x.schemes)}
                           for x in self.layers]}


@dataclass
class _Acc:
    """Running sums of one layer's weights over draws."""

    label: str
    shape: tuple[int, ...]
    n: int = 0
    s1: float = 0.0
    s2: float = 0.0
    s4: float = 0.0
    largest: float = 0.0  # max |w|
    gains: list[float | None] = field(default_factory=list)

    @property
    def fans(self) -> tuple[int, int, int]:
        """``(fan_in, fan_out, rows)`` as PyTorch counts them (``fan_out = C_out k^2`` for a conv)."""
        rows, fan_in = self.shape[0], int(np.prod(self.shape[1:]))
        per_row = int(np.prod(self.shape[2:])) if len(self.shape) > 2 else 1
        return fan_in, rows * per_row, rows

    def variance(self, scheme: Init) -> float:
        return scheme.weight_variance(*self.fans)


#: rows (or columns) of a weight matrix whose orthogonality is tested (any subset of orthonormal rows is orthonormal)
ORTHOGONAL_PROBE = 64


def _orthogonal_gain(w: np.ndarray, eps: float) -> float | None:
    """``g`` when ``W W^T = g^2 I`` (rows <= columns) or ``W^T W = g^2 I`` exactly up to rounding, else None.

    ``w``: the weights as a float64 ``(rows, fan_in)`` matrix; ``eps``: the machine epsilon of the
    layer's own dtype.  Tested on the first :data:`ORTHOGONAL_PROBE` rows (columns), so that a large
    layer costs ``64^2 n`` operations.  Rounding leaves off-diagonal entries of order
    ``eps / sqrt(n)`` relative to the diagonal; i.i.d. draws leave entries of order ``1 / sqrt(n)``
    (``n`` the summed dimension), so the tolerance ``0.02 / sqrt(n) + 100 eps`` separates them by
    orders of magnitude either way.  A single row (or column) has no off-diagonal entries: it is
    not tested (None).
    """
    rows, cols = w.shape
    if min(rows, cols) < 2:
        return None
    sub = w[:ORTHOGONAL_PROBE] if rows <= cols else w[:, :ORTHOGONAL_PROBE].T
    g = sub @ sub.T
    g2 = float(np.diagonal(g).mean())
    if not g2 > 0:
        return None
    tol = 0.02 / math.sqrt(max(rows, cols)) + 100 * eps
    dev = float(np.abs(g - g2 * np.eye(g.shape[0])).max()) / g2
    return math.sqrt(g2) if dev <= tol else None


class InitStats:
    """Moments of the weights of each traced conv / dense layer, pooled over draws (:func:`recognise_init`).

    ``add`` takes one draw's weight tensors in spec order (:meth:`Traced.weights`); only running
    sums are kept, so any number of draws of a large model fits in memory.
    """

    def __init__(self, spec: Spec) -> None:
        self.labels = weight_labels(spec)
        self.accs: list[_Acc] = []
        self.draws = 0

    def add(self, weights: Sequence[torch.Tensor]) -> None:
        if len(weights) != len(self.labels):
            raise ValueError(f"{len(weights)} weight tensors for {len(self.labels)} layers")
        if not self.accs:
            self.accs = [_Acc(lab, tuple(w.shape)) for lab, w in zip(self.labels, weights)]
        for acc, w in zip(self.accs, weights):
            if tuple(w.shape) != acc.shape:
                raise ValueError(f"layer {acc.label}: weights of shape {tuple(w.shape)}, expected {acc.shape}")
            m = w.detach().cpu().double().numpy().reshape(w.shape[0], -1)
            sq = m * m
            acc.n += m.size
            acc.s1 += float(m.sum())
            acc.s2 += float(sq.sum())
            acc.s4 += float((sq * sq).sum())
            acc.largest = max(acc.largest, float(np.abs(m).max()))
            acc.gains.append(_orthogonal_gain(m, torch.finfo(w.dtype).eps if w.is_floating_point() else 0.0))
        self.draws += 1

    def result(self, alpha: float = ALPHA) -> InitGuess:
        return recognise_init(self, alpha)


def _consistent(acc: _Acc, scheme: Init, gain: float | None, z: float, chi2_bounds: tuple[float, float]) -> bool:
    """Whether one layer's weights are consistent with ``scheme``; each test at the level whose normal
    critical value is ``z`` (``chi2_bounds``: the chi-square(n) interval at that level)."""
    v, n = acc.variance(scheme), acc.n
    m2 = acc.s2 / n
    if scheme is Init.ORTHOGONAL:
        fan_in, _, rows = acc.fans
        if gain is not None:
            return abs(gain**2 / 2 - 1) <= 1e-4
        # one row (or column): only its norm can be checked, sqrt(2) per unit vector
        return min(rows, fan_in) < 2 and abs(m2 / v - 1) <= 1e-4
    if gain is not None:
        return False  # exactly orthogonal rows are not i.i.d. draws
    if abs(acc.s1 / n) > z * math.sqrt(v / n):
        return False
    if scheme is Init.TORCH:  # uniform(-b, b), b = 1/sqrt(fan_in): inside the bound, variance b^2/3, kurtosis 9/5
        bound = math.sqrt(3 * v)
        kurt = acc.s4 / n / m2**2 if m2 > 0 else math.nan
        return (acc.largest <= bound * (1 + 1e-6) and abs(m2 / v - 1) <= z * math.sqrt((UNIFORM_KURTOSIS - 1) / n)
                and abs(kurt - UNIFORM_KURTOSIS) <= z * math.sqrt(UNIFORM_KURTOSIS_VAR / n))
    if not chi2_bounds[0] <= n * m2 / v <= chi2_bounds[1]:  # n mean(w^2) / v is chi-square(n)
        return False
    return n < MIN_KURTOSIS_N or abs(kurtosis_z(acc.s4 / n / m2**2, n)) <= z


def kurtosis_z(b2: float, n: int) -> float:
    """Anscombe and Glynn's (1983) normal score of the sample kurtosis ``b2`` of ``n`` Gaussian draws
    (the transform of ``scipy.stats.kurtosistest``, from ``b2`` and ``n`` alone).

    >>> round(kurtosis_z(3.0, 1000), 3), kurtosis_z(1.8, 1000) < -10
    (0.114, True)
    """
    mean = 3.0 * (n - 1) / (n + 1)
    var = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) ** 2 * (n + 3) * (n + 5))
    x = (b2 - mean) / math.sqrt(var)
    skew = (6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9))
            * math.sqrt(6.0 * (n + 3) * (n + 5) / (n * (n - 2) * (n - 3))))
    big_a = 6.0 + 8.0 / skew * (2.0 / skew + math.sqrt(1 + 4.0 / skew**2))
    denom = 1 + x * math.sqrt(2 / (big_a - 4.0))
    term2 = math.copysign(abs((1 - 2.0 / big_a) / denom) ** (1 / 3), denom) if denom != 0 else -math.inf
    return ((1 - 2.0 / (9 * big_a)) - term2) / math.sqrt(2 / (9 * big_a))


def recognise_init(stats: InitStats, alpha: float = ALPHA) -> InitGuess:
    """The scheme every traced layer is consistent with (module docstring), or unknown with the reason.

    >>> import torch
    >>> from torch import nn
    >>> from advdim.arch import parse
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    >>> stats = InitStats(parse("3x8x8 > conv(16,pad=zeros) > relu > flatten > dense(10)"))
    >>> stats.add([net[0].weight, net[3].weight])
    >>> stats.result().scheme  # nn.Conv2d / nn.Linear's own init: uniform, bound 1/sqrt(fan_in)
    'torch'
    """
    if not stats.labels:
        return InitGuess(None, "unknown: the network has no conv or dense layer")
    if not stats.accs:
        return InitGuess(None, "unknown: no weights were examined")
    from scipy import stats as sst

    a = alpha / (3 * len(stats.accs))
    z = float(sst.norm.ppf(1 - a / 2))
    layers = []
    for acc in stats.accs:
        chi2_bounds = (float(sst.chi2.ppf(a / 2, acc.n)), float(sst.chi2.ppf(1 - a / 2, acc.n)))
        gains = acc.gains
        gain = gains[0] if gains and all(g is not None for g in gains) else None
        if gain is not None and any(g is not None and abs(g - gain) > 1e-6 * gain for g in gains):
            gain = None
        ok = tuple(s.value for s in SCHEMES if _consistent(acc, s, gain, z, chi2_bounds))
        m2 = acc.s2 / acc.n
        kurt = acc.s4 / acc.n / m2**2 if m2 > 0 else math.nan
        layers.append(LayerInit(acc.label, acc.n, m2 / (2 / acc.fans[0]), kurt, gain, ok))
    level = f"level {alpha:g}, Bonferroni over {3 * len(layers)} tests, {stats.draws} draw(s) pooled"
    survivors = [s for s in SCHEMES if all(s.value in x.schemes for x in layers)]
    if not survivors:
        lost = next((x for x in layers if not x.schemes), None)
        if lost is not None:
            return InitGuess(None, f"unknown: {lost.describe()} matches none of "
                             f"{', '.join(s.value for s in SCHEMES)} ({level})", tuple(layers))
        per = "; ".join(f"{x.layer} {'/'.join(x.schemes)}" for x in layers)
        return InitGuess(None, f"unknown: the layers match different schemes ({per})", tuple(layers))
    first = survivors[0]
    same = [s for s in survivors[1:] if _same_law(first, s, stats)]
    different = [s for s in survivors[1:] if s not in same]
    if different:
        names = ", ".join(s.value for s in [first, *different])
        return InitGuess(None, f"unknown: the weights are consistent with {names}, which predict differently "
                         "(layers too small to tell them apart)", tuple(layers))
    also = f"; identical here to {', '.join(s.value for s in same)}" if same else ""
    return InitGuess(first.value, f"{first.value}: all {len(layers)} conv / dense layers consistent ({level}){also}",
                     tuple(layers))


def _same_law(a: Init, b: Init, stats: InitStats) -> bool:
    """Two schemes the theory cannot tell apart on these layers: equal variances, neither uniform."""
    if Init.TORCH in (a, b):
        return False
    for acc in stats.accs:
        va, vb = acc.variance(a), acc.variance(b)
        if abs(va - vb) > 1e-12 * max(va, vb):
            return False
    return True
