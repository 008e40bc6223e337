"""Recognise the initialisation of a traced module, layer by layer, from its own weights.

:func:`recognise_init` compares the weights of each traced conv / dense layer (pooled over
independent draws of the module) with the laws of :class:`advdim.inits.WeightLaw` -- He (fan_in or
fan_out, normal or uniform), PyTorch's default, LeCun (normal, or timm's cut at 2 std), Glorot /
Xavier (normal or uniform), a uniform of bound 1/sqrt(fan_out), orthogonal rows of any gain, a
normal of a fixed std (:data:`advdim.inits.FIXED_STDS`) -- for an i.i.d. law of variance ``v``,
per layer of ``n`` weights:

- the mean: ``|mean w| <= c sqrt(v / n)``;
- the variance: ``n mean(w^2) / v`` inside the chi-square(n) interval for a Gaussian;
  ``|mean w^2 / v - 1| <= c sqrt((K - 1) / n)`` for a bounded law of kurtosis ``K``;
- the shape, from the kurtosis ``b2 = mean w^4 / mean(w^2)^2``: for a Gaussian, Anscombe and
  Glynn's normal score of ``b2`` (:func:`kurtosis_z`, the test of ``scipy.stats.kurtosistest``),
  which rejects a uniform (``b2`` = 9/5) or a heavier tail; for a bounded law (:class:`BoundedShape`),
  every weight inside its bound (``sqrt(3 v)`` for a uniform) and ``|b2 - K| <= c sqrt(V / n)`` with
  its kurtosis ``K`` and the delta-method ``V`` (9/5 and about 1.317 for a uniform);

and for orthogonal rows the structure itself: ``W W^T = g^2 I`` (or ``W^T W``), exactly up to
rounding, which i.i.d. draws never are; the gain ``g`` is read off.  Each test has level
``alpha / (3 L)`` (Bonferroni over the three tests of the ``L`` layers; ``c`` its normal critical
value), so a network whose layers are drawn from these laws has a layer called "estimated" with
probability at most ``alpha`` (asymptotically in ``n``).

A layer consistent with several laws of equal variance there (He and He fan_out on a square conv)
is named by the law most layers of the network follow.  A layer consistent with laws of different
variances (too few weights to tell) takes the one the network's unambiguous layers use, else it is
estimated; a layer consistent with none is **estimated**: its variance is ``mean w^2`` over the
draws, with its standard error, and the result says so -- unless several such layers of different
fans look like one normal of a fixed std (:func:`_pooled_fixed_std`), named ``fixed_normal`` with
the pooled std.  :attr:`InitGuess.scheme` is the one
:class:`advdim.inits.Init` scheme of the whole network when there is one (the theory takes it as
is); otherwise :func:`spec_with_init` rewrites the spec so that the theory's He law on it is the
law of the recognised per-layer variances (Theorems 4-5 need only zero-mean independent weights of
known variance: the path sum).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from advdim.arch import Attention, Conv, Dense, Layer, Residual, Scale, Spec, format_layer
from advdim.errors import AdvdimError
from advdim.inits import FIXED_STDS, Init, WeightLaw

if TYPE_CHECKING:
    from torch import nn

#: level of the init recognition: a network drawn from known laws has a layer called estimated with at most
#: this probability
ALPHA = 0.01
#: the whole-network schemes of advdim (the theory's ``init``), in the order they are named
SCHEMES = (Init.HE, Init.TORCH, Init.LECUN, Init.GLOROT, Init.ORTHOGONAL)
#: the per-layer laws tried, in the order they are named when several fit a layer equally often
LAWS = (WeightLaw.HE, WeightLaw.HE_FAN_OUT, WeightLaw.HE_UNIFORM, WeightLaw.TORCH, WeightLaw.LECUN, WeightLaw.GLOROT,
        WeightLaw.XAVIER_UNIFORM, WeightLaw.ORTHOGONAL, WeightLaw.FIXED_NORMAL, WeightLaw.UNIFORM_FAN_OUT,
        WeightLaw.LECUN_TRUNCATED)

Fans = tuple[int, int, int]


def _weight_layers(spec: Spec) -> list[tuple[str, Fans]]:
    """Per weight matrix of ``spec`` (the order of its built module's ``Conv2d`` / ``Linear`` modules):
    its label and its fans ``(fan_in, fan_out, rows)`` as PyTorch counts them."""
    def fans(layer: Layer, shape: tuple[int, ...]) -> Fans:
        if isinstance(layer, Conv):  # fan_in: the layer's own in-degree (C_in k^2, per group for a grouped conv)
            k2 = layer.kernel * layer.kernel
            return layer.in_degree(shape), layer.out_channels * k2, layer.out_channels
        if isinstance(layer, Dense):
            return shape[0], layer.out_features, layer.out_features
        return shape[0], shape[0], shape[0]  # attention: D x D projections

    def walk(layers: Sequence[Layer], shapes: Sequence[tuple[int, ...]], prefix: str) -> list[tuple[str, Fans]]:
        out: list[tuple[str, Fans]] = []
        for i, (layer, shape) in enumerate(zip(layers, shapes)):
            tag = f"{prefix}{i}:{format_layer(layer)}"
            if isinstance(layer, (Conv, Dense)):
                out.append((tag, fans(layer, shape)))
            elif isinstance(layer, Attention):
                out += [(f"{tag}.{p}", fans(layer, shape)) for p in "qkvo"]
            elif isinstance(layer, Residual):
                out += walk(layer.branch, layer.branch_shapes(shape), f"{prefix}{i}.")
                proj = layer.projection(shape)
                if proj is not None:
                    out.append((f"{prefix}{i}.proj:{format_layer(proj)}", fans(proj, shape)))
        return out

    return walk(spec.layers, spec.shapes(), "")


def weight_labels(spec: Spec) -> list[str]:
    """One label per weight matrix of ``spec``, in the order of its built module's ``Conv2d`` /
    ``Linear`` modules: a layer's index and text; in a residual block the branch's (``2.0:conv(8)``)
    then the projection's (``2.proj:conv(8,1,s=2,pad=zeros,bias=false)``); ``.q .k .v .o`` for attention.

    >>> from advdim.arch import parse
    >>> weight_labels(parse("1x4x4 > conv(4) > res(conv(8,s=2)) > res(attn(2)) > flatten > dense(2)"))[:3]
    ['0:conv(4)', '1.0:conv(8,s=2)', '1.proj:conv(8,1,s=2,pad=zeros,bias=false)']
    """
    return [label for label, _ in _weight_layers(spec)]


def module_weights(module: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """The qualified names and weights of every ``nn.Conv2d`` / ``nn.Linear`` of ``module``, in module
    order: :class:`InitStats` of a module that is not traced (``InitStats(names)``)."""
    from torch import nn

    found = [(name, m.weight.detach()) for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [n for n, _ in found], [w for _, w in found]


@dataclass(frozen=True)
class BoundedShape:
    """The shape of a bounded symmetric law, from its moments ``mu_2k`` (k = 1..4) in any unit.

    ``kurtosis`` is ``mu4 / mu2^2``; ``kurtosis_var`` is ``n`` times the delta-method variance of the
    sample kurtosis ``m4 / m2^2`` (mean known, 0); ``bound`` the largest ``|w|`` over the standard deviation.

    >>> round(BoundedShape.uniform().kurtosis_var, 4), round(BoundedShape.normal_cut_at(2.0).kurtosis, 4)
    (1.3166, 2.3655)
    """

    moments: tuple[float, float, float, float]
    bound: float

    @classmethod
    def uniform(cls) -> BoundedShape:
        """uniform(-1, 1): moments 1/3, 1/5, 1/7, 1/9."""
        return cls((1 / 3, 1 / 5, 1 / 7, 1 / 9), math.sqrt(3))

    @classmethod
    def normal_cut_at(cls, c: float) -> BoundedShape:
        """N(0, 1) conditioned on ``|z| <= c``, from
        ``E[z^2k; |z| <= c] = (2k - 1) E[z^(2k-2); |z| <= c] - 2 c^(2k-1) phi(c)``."""
        phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
        mass = math.erf(c / math.sqrt(2))
        raw, out = mass, []
        for k in range(1, 5):
            raw = (2 * k - 1) * raw - 2 * c ** (2 * k - 1) * phi
            out.append(raw / mass)
        return cls((out[0], out[1], out[2], out[3]), c / math.sqrt(out[0]))

    @property
    def kurtosis(self) -> float:
        m2, m4, _, _ = self.moments
        return m4 / m2**2

    @property
    def kurtosis_var(self) -> float:
        m2, m4, m6, m8 = self.moments
        return ((m8 - m4**2) / m2**4 + 4 * m4**2 * (m4 - m2**2) / m2**6 - 4 * m4 * (m6 - m2 * m4) / m2**5)


UNIFORM = BoundedShape.uniform()
#: timm's ``lecun_normal_`` / ``trunc_normal_tf_`` shape: a normal cut at two of its standard deviations
NORMAL_CUT_AT_2 = BoundedShape.normal_cut_at(2.0)
#: fewest weights in a layer for the kurtosis test of a Gaussian (Anscombe and Glynn's transform needs n >= 20)
MIN_KURTOSIS_N = 20
#: ``nn.init.trunc_normal_``'s default bounds ``[-2, 2]``: with a std of 0.02 they cut nothing, but in float32 its
#: inverse-CDF draw hits ``erfinv(-1) = -inf`` with probability 2^-24 per weight (its uniform's lowest value),
#: clamped to exactly -2 (timm's ViTs: about one weight in 17 million).  The Gaussian tests leave such weights
#: out (their share of E[w^2] is ``4 * 2^-24``, nil); a uniform or an i.i.d. Gaussian law never puts a
#: weight exactly there.
TRUNC_BOUND = 2.0
#: relative difference below which two variances are one (laws that coincide on a layer)
SAME_VARIANCE = 1e-9


@dataclass(frozen=True)
class LayerInit:
    """What the weights of one conv / dense layer look like, and the law taken for it.

    Attributes:
        layer: the layer in spec text form, with its index (e.g. ``"0:conv(8)"``).
        n: weights pooled (layer size x draws).
        variance_ratio: measured ``mean w^2`` over He's ``2 / fan_in``.
        kurtosis: ``mean w^4 / (mean w^2)^2`` (3 Gaussian, 1.8 uniform).
        orthogonal_gain: the gain ``g`` when every draw has ``W W^T = g^2 I`` exactly (else None).
        schemes: the laws (:class:`~advdim.inits.WeightLaw` names) this layer is consistent with.
        fans: ``(fan_in, fan_out, rows)`` as PyTorch counts them (``fan_out = C_out k^2``).
        law: the law taken (a name of :class:`~advdim.inits.WeightLaw`; ``"estimated"``: none fits).
        param: its parameter: the gain (orthogonal), the std (fixed normal), the variance (estimated).
        se: standard error of the measured ``mean w^2``, relative to it.
        zero_mean: the mean test passed (the path sum needs zero-mean weights).
        fixed_std: the std of :data:`~advdim.inits.FIXED_STDS` the weights are consistent with (else None).
        note: why the law was chosen among several, or why it was estimated.
    """

    layer: str
    n: int
    variance_ratio: float
    kurtosis: float
    orthogonal_gain: float | None
    schemes: tuple[str, ...]
    fans: Fans = (1, 1, 1)
    law: str = WeightLaw.ESTIMATED.value
    param: float | None = None
    se: float = 0.0
    zero_mean: bool = True
    fixed_std: float | None = None
    note: str = ""

    @property
    def weight_law(self) -> WeightLaw:
        return WeightLaw(self.law)

    @property
    def estimated(self) -> bool:
        return self.weight_law is WeightLaw.ESTIMATED

    @property
    def pooled(self) -> bool:
        """A fixed normal whose std was estimated from several layers (not one of the listed stds)."""
        return self.weight_law is WeightLaw.FIXED_NORMAL and self.param not in FIXED_STDS

    def variance_at(self, fans: Fans) -> float:
        """The law's ``E[w^2]`` at a layer of these fans (the same layer at another input size)."""
        if self.estimated and fans != self.fans:
            raise AdvdimError(f"layer {self.layer}: its variance was estimated from the draws at fans {self.fans} "
                              f"(no known law), and its fans are {fans} here: how its variance scales with the fans "
                              "is not known")
        return self.weight_law.variance(*fans, self.param)

    @property
    def variance(self) -> float:
        return self.variance_at(self.fans)

    @property
    def ratio(self) -> float:
        """The law's variance over He's ``2 / fan_in``."""
        return self.variance / (2.0 / self.fans[0])

    def law_text(self) -> str:
        """``he_fan_out``, ``orthogonal(gain=1)``, or ``estimated: variance 0.0123 (1.6 x He's 2/fan_in), from
        432 weights, se 0.068``."""
        if self.estimated:
            return (f"estimated: variance {self.variance:.4g} ({self.ratio:.3g} x He's 2/fan_in), from {self.n} "
                    f"weights, se {self.se:.2g}")
        return self.weight_law.text(self.param) + (" estimated" if self.pooled else "")

    def describe(self) -> str:
        """What the weights look like (the measured moments)."""
        if self.orthogonal_gain is not None:
            return f"{self.layer}: orthogonal rows with gain {self.orthogonal_gain:.4g}"
        return (f"{self.layer}: variance {self.variance_ratio:.3g} x He's 2/fan_in, kurtosis {self.kurtosis:.3g} "
                f"({self.n} weights)")

    def fits(self, law: WeightLaw, param: float | None) -> bool:
        """Whether these weights are consistent with ``law`` of parameter ``param`` (a law recognised at
        another input size)."""
        if law is WeightLaw.ESTIMATED or law.value not in self.schemes:
            return law is WeightLaw.ESTIMATED
        if law is WeightLaw.ORTHOGONAL and param is not None and self.orthogonal_gain is not None:
            return abs(self.orthogonal_gain - param) <= 1e-6 * param
        return law is not WeightLaw.FIXED_NORMAL or self.fixed_std == param

    def to_json(self) -> dict[str, Any]:
        """The layer as JSON (a number that is not finite, e.g. the kurtosis of all-zero weights, is null)."""
        def num(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {"layer": self.layer, "weights": self.n, "variance_ratio_to_he": num(self.variance_ratio),
                "kurtosis": num(self.kurtosis), "orthogonal_gain": self.orthogonal_gain, "schemes": list(self.schemes),
                "fans": list(self.fans), "law": self.law, "law_text": self.law_text(), "param": num(self.param),
                "variance": num(self.variance), "ratio_to_he": num(self.ratio), "estimated": self.estimated,
                "pooled_std": self.pooled, "variance_se_relative": num(self.se) if self.estimated or self.pooled
                else None, "note": self.note or None}


@dataclass(frozen=True)
class InitGuess:
    """The recognised initialisation of a network.

    Attributes:
        scheme: the one :class:`~advdim.inits.Init` scheme of every layer (None: there is none; the
            layers' laws are in ``layers``).
        reason: the laws per layer in words, with the level of the tests.
        layers: per conv / dense layer (:func:`weight_labels` order) its weights and its law.
        no_law: why the layers' laws give no path-sum law (weights of nonzero mean, all zero), else None.
    """

    scheme: str | None
    reason: str
    layers: tuple[LayerInit, ...] = ()
    no_law: str | None = None

    @property
    def base(self) -> str | None:
        """The scheme the theory is called with: :attr:`scheme`; orthogonal when every layer has orthogonal
        rows; else He (the other layers' variances enter through :func:`spec_with_init`).  None: no law."""
        if not self.layers or self.no_law is not None:
            return None
        if self.scheme is not None:
            return self.scheme
        if all(x.weight_law is WeightLaw.ORTHOGONAL for x in self.layers):
            return Init.ORTHOGONAL.value
        return Init.HE.value

    @property
    def estimated(self) -> tuple[LayerInit, ...]:
        return tuple(x for x in self.layers if x.estimated)

    @property
    def summary(self) -> str:
        """The laws and how many layers follow each: ``"he_fan_out x20, torch x1"``."""
        if self.scheme is not None:
            return self.scheme
        count = Counter(x.law_text() if not x.estimated else "estimated" for x in self.layers)
        return ", ".join(f"{name} x{k}" for name, k in count.items()) or "none"

    def law_text(self) -> str:
        """The law in a few words, as each measured row states it: ``he``, ``he_fan_out x20, torch x1``,
        the estimated layers' variances, or why there is no law."""
        if not self.layers:
            return f"none ({self.reason})"
        text = self.summary
        est = self.estimated
        if est:
            text += (" (" + "; ".join(f"{x.layer} {x.law_text()}" for x in est[:3])
                     + ("; ..." if len(est) > 3 else "") + ")")
        return text + (f"; no law: {self.no_law}" if self.no_law else "")

    def notes(self) -> tuple[str, ...]:
        """What the law taken assumes beyond the recognised variances (stated with the prediction)."""
        if self.base is None or self.base == self.scheme:
            return ()
        out = [f"the law: the theory's {self.base} law with each layer's own variance (a layer of r times the "
               f"{self.base} scheme's variance is its {self.base} layer followed by scale(sqrt r)): {self.summary}; "
               "the path sum (q = 1, 2) uses the variances only"]
        if self.base == Init.HE.value:
            other = [x.layer for x in self.layers if not (x.weight_law.gaussian or x.estimated)]
            if other:
                out.append(f"the q = inf model draws Gaussian weights of these variances; {len(other)} layer(s) are "
                           f"uniform or orthogonal ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
            if any(x.weight_law is WeightLaw.TORCH for x in self.layers):
                out.append("PyTorch's default also draws uniform biases: the path sum does not depend on them (the "
                           "sign symmetry of (w, b)), the q = inf model takes them zero")
        guessed = [x for x in self.layers if x.estimated or x.pooled]
        if guessed:
            se = max(x.se for x in guessed)
            out.append(f"{len(guessed)} layer(s) have no listed law: their variances are estimated from the "
                       f"draws (relative se up to {se:.2g}, which the prefactor's prediction carries; the slopes do "
                       "not depend on it while the layers' fans do not change with d), and the q = inf model takes "
                       "them Gaussian")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "recognised": self.scheme is not None, "reason": self.reason,
                "law": {"summary": self.summary, "base": self.base, "no_law": self.no_law,
                        "estimated_layers": [x.layer for x in self.estimated], "notes": list(self.notes())},
                "layers": [x.to_json() for x in self.layers]}


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
    clamped: int = 0  # weights exactly at +-TRUNC_BOUND (trunc_normal_'s clamp of an infinite draw)
    clamped_sum: float = 0.0
    gains: list[float | None] = field(default_factory=list)

    @property
    def fans(self) -> Fans:
        """``(fan_in, fan_out, rows)`` as PyTorch counts them (``fan_out = C_out k^2`` for a conv)."""
        rows, fan_in = self.shape[0], int(np.prod(self.shape[1:]))
        per_row = int(np.prod(self.shape[2:])) if len(self.shape) > 2 else 1
        return fan_in, rows * per_row, rows

    def gaussian_moments(self, z: float) -> tuple[int, float, float, float]:
        """``(n, sum w, sum w^2, sum w^4)`` for the Gaussian tests: without the weights exactly at
        ``+-TRUNC_BOUND`` when there are no more of them than ``trunc_normal_``'s float32 clamp leaves
        (:data:`TRUNC_BOUND`; at most ``n 2^-23`` expected, bounded at the tests' normal critical value ``z``)."""
        expected = self.n * 2.0**-23
        if self.clamped == 0 or self.clamped > expected + z * math.sqrt(expected) + z * z:
            return self.n, self.s1, self.s2, self.s4
        b2 = TRUNC_BOUND**2
        return (self.n - self.clamped, self.s1 - self.clamped_sum, self.s2 - self.clamped * b2,
                self.s4 - self.clamped * b2 * b2)

    @property
    def gain(self) -> float | None:
        """The orthogonal gain common to every draw, else None."""
        gains = self.gains
        gain = gains[0] if gains and all(g is not None for g in gains) else None
        if gain is not None and any(g is not None and abs(g - gain) > 1e-6 * gain for g in gains):
            return None
        return gain


#: weights per float64 block of :meth:`InitStats.add` (32 MB)
CHUNK = 1 << 22
#: rows (or columns) of a weight matrix whose orthogonality is tested (any subset of orthonormal rows is orthonormal)
ORTHOGONAL_PROBE = 64


def _orthogonal_gain(w: torch.Tensor, eps: float) -> float | None:
    """``g`` when ``W W^T = g^2 I`` (rows <= columns) or ``W^T W = g^2 I`` exactly up to rounding, else None.

    ``w``: the weights as a ``(rows, fan_in)`` matrix; ``eps``: the machine epsilon of the
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
    sub = (w[:ORTHOGONAL_PROBE] if rows <= cols else w[:, :ORTHOGONAL_PROBE].T).cpu().double().numpy()
    g = sub @ sub.T
    g2 = float(np.diagonal(g).mean())
    if not g2 > 0:
        return None
    tol = 0.02 / math.sqrt(max(rows, cols)) + 100 * eps
    dev = float(np.abs(g - g2 * np.eye(g.shape[0])).max()) / g2
    return math.sqrt(g2) if dev <= tol else None


class InitStats:
    """Moments of the weights of each conv / dense layer, pooled over draws (:func:`recognise_init`).

    Made for a traced spec (its layers' :func:`weight_labels`) or for any list of layer names
    (:func:`module_weights`).  ``add`` takes one draw's weight tensors in that order
    (:meth:`advdim.trace.Traced.weights`); only running sums are kept, so any number of draws of a
    large model fits in memory.
    """

    def __init__(self, spec: Spec | Sequence[str]) -> None:
        self.labels = weight_labels(spec) if isinstance(spec, Spec) else list(spec)
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
            flat = w.detach().reshape(w.shape[0], -1)
            step = max(1, CHUNK // max(1, flat.shape[1]))
            for r0 in range(0, flat.shape[0], step):  # float64 blocks of at most CHUNK weights (a VGG fc: 100M)
                m = flat[r0:r0 + step].cpu().double().numpy()
                sq = m * m
                acc.n += m.size
                acc.s1 += float(m.sum())
                acc.s2 += float(sq.sum())
                acc.s4 += float((sq * sq).sum())
                acc.largest = max(acc.largest, float(np.abs(m).max()))
                at = m[np.abs(m) == TRUNC_BOUND]
                acc.clamped += at.size
                acc.clamped_sum += float(at.sum())
            acc.gains.append(_orthogonal_gain(flat, torch.finfo(w.dtype).eps if w.is_floating_point() else 0.0))
        self.draws += 1

    def result(self, alpha: float = ALPHA) -> InitGuess:
        return recognise_init(self, alpha)


@dataclass(frozen=True)
class _Level:
    """The critical values of one layer's tests: normal ``z`` and the chi-square(n) interval."""

    z: float
    chi2: tuple[float, float]


def _consistent(acc: _Acc, law: WeightLaw, param: float | None, level: _Level) -> bool:
    """Whether one layer's weights are consistent with ``law`` (module docstring); ``param`` the std of a
    fixed normal (an orthogonal layer's gain is read from its weights)."""
    fan_in, fan_out, rows = acc.fans
    gain = acc.gain
    if law is WeightLaw.ORTHOGONAL:
        if gain is not None:
            return True
        # one row (or column): only its norm can be checked, sqrt(2) per unit vector
        return min(rows, fan_in) < 2 and abs(acc.s2 / acc.n / law.variance(fan_in, fan_out, rows, math.sqrt(2))
                                             - 1) <= 1e-4
    if gain is not None:
        return False  # exactly orthogonal rows are not i.i.d. draws
    v = law.variance(fan_in, fan_out, rows, param)
    z = level.z
    n, s1, s2, s4 = acc.gaussian_moments(z) if law.gaussian else (acc.n, acc.s1, acc.s2, acc.s4)
    m2 = s2 / n
    if abs(s1 / n) > z * math.sqrt(v / n):
        return False
    if law.bounded:  # e.g. uniform(-b, b), b = sqrt(3 v): inside the bound, variance b^2/3, kurtosis 9/5
        shape = UNIFORM if law.uniform else NORMAL_CUT_AT_2
        kurt = s4 / n / m2**2 if m2 > 0 else math.nan
        return (acc.largest <= shape.bound * math.sqrt(v) * (1 + 1e-6)
                and abs(m2 / v - 1) <= z * math.sqrt((shape.kurtosis - 1) / n)
                and abs(kurt - shape.kurtosis) <= z * math.sqrt(shape.kurtosis_var / n))
    if not level.chi2[0] <= n * m2 / v <= level.chi2[1]:  # n mean(w^2) / v is chi-square(n)
        return False
    return n < MIN_KURTOSIS_N or abs(kurtosis_z(s4 / n / m2**2, n)) <= z


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


def _candidates(acc: _Acc, level: _Level) -> list[tuple[WeightLaw, float | None]]:
    """The laws (with their parameter) one layer is consistent with, in :data:`LAWS` order."""
    out: list[tuple[WeightLaw, float | None]] = []
    for law in LAWS:
        if law is WeightLaw.FIXED_NORMAL:
            std = next((s for s in FIXED_STDS if _consistent(acc, law, s, level)), None)
            if std is not None:
                out.append((law, std))
        elif _consistent(acc, law, None, level):
            out.append((law, acc.gain if law is WeightLaw.ORTHOGONAL else None))
    return out


def _variance(acc: _Acc, law: WeightLaw, param: float | None) -> float:
    if law is WeightLaw.ORTHOGONAL and param is None:
        param = math.sqrt(2)  # a single row: tested against sqrt(2) only
    return law.variance(*acc.fans, param)


def _snap_gain(gain: float | None) -> float:
    """An orthogonal layer's gain without the rounding of its dtype: sqrt(2) (advdim's scheme) within 1e-4 of
    it in ``g^2``, else 6 significant digits (a float32 layer's measured gain is off by about 1e-7)."""
    if gain is None or abs(gain**2 / 2 - 1) <= 1e-4:
        return math.sqrt(2)  # None: a single row, tested against sqrt(2) only
    return float(f"{gain:.6g}")


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_VARIANCE * max(abs(a), abs(b))


def recognise_init(stats: InitStats, alpha: float = ALPHA) -> InitGuess:
    """Each layer's law, and the network's one scheme where there is one (module docstring).

    >>> import torch
    >>> from torch import nn
    >>> from advdim.arch import parse
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    >>> stats = InitStats(parse("3x8x8 > conv(16,pad=zeros) > relu > flatten > dense(10)"))
    >>> stats.add([net[0].weight, net[3].weight])
    >>> stats.result().scheme  # nn.Conv2d / nn.Linear's own init: uniform, bound 1/sqrt(fan_in)
    'torch'
    >>> net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 10))
    >>> _ = nn.init.kaiming_normal_(net[0].weight, mode="fan_out", nonlinearity="relu")  # torchvision's convs
    >>> stats = InitStats(parse("16x8x8 > conv(32,pad=zeros) > relu > flatten > dense(10)"))
    >>> stats.add([net[0].weight, net[3].weight])
    >>> guess = stats.result()
    >>> guess.scheme, guess.summary, [round(x.ratio, 4) for x in guess.layers]  # fan_in 144, fan_out 288
    (None, 'he_fan_out x1, torch x1', [0.5, 0.1667])
    """
    if not stats.labels:
        return InitGuess(None, "unknown: the network has no conv or dense layer")
    if not stats.accs:
        return InitGuess(None, "unknown: no weights were examined")
    from scipy import stats as sst

    a = alpha / (3 * len(stats.accs))
    z = float(sst.norm.ppf(1 - a / 2))
    cands = [_candidates(acc, _Level(z, (float(sst.chi2.ppf(a / 2, acc.n)), float(sst.chi2.ppf(1 - a / 2, acc.n)))))
             for acc in stats.accs]
    count = Counter(law for c in cands for law in {law for law, _ in c})
    order = sorted(LAWS, key=lambda w: (-count[w], LAWS.index(w)))
    ranked = [sorted(c, key=lambda lp: order.index(lp[0])) for c in cands]
    # unambiguous layers: every law they fit has the same variance there
    plain = [bool(r) and all(_same(_variance(acc, *lp), _variance(acc, *r[0])) for lp in r)
             for acc, r in zip(stats.accs, ranked)]
    used = {r[0] for r, p in zip(ranked, plain) if p}
    layers = []
    for acc, r, p in zip(stats.accs, ranked, plain):
        n, m2 = acc.n, acc.s2 / acc.n
        kurt = acc.s4 / n / m2**2 if m2 > 0 else math.nan
        se = math.sqrt(max(acc.s4 / n - m2**2, 0.0) / n) / m2 if m2 > 0 else math.inf
        zero_mean = abs(acc.s1 / n) <= z * math.sqrt(m2 / n)
        fixed = next((q for law, q in r if law is WeightLaw.FIXED_NORMAL), None)
        chosen: tuple[WeightLaw, float | None] | None = r[0] if p else next((lp for lp in r if lp in used), None)
        note = ""
        if r and not p:
            names = ", ".join(law.text(q) for law, q in r)
            note = (f"consistent with {names}, which differ in variance (too few weights to tell): "
                    + (f"named {chosen[0].text(chosen[1])} as the network's other layers" if chosen
                       else "variance estimated"))
        elif not r:
            note = "matches none of the known laws: variance estimated"
        if acc.clamped and chosen is not None and chosen[0].gaussian:
            note += (f"{'; ' if note else ''}{acc.clamped} weight(s) exactly at +-{TRUNC_BOUND:g} left out of the "
                     "tests (trunc_normal_'s float32 clamp)")
        base = LayerInit(acc.label, n, m2 / (2 / acc.fans[0]), kurt, acc.gain, tuple(law.value for law, _ in r),
                         acc.fans, se=se, zero_mean=zero_mean, fixed_std=fixed, note=note)
        if chosen is None:
            layers.append(replace(base, param=m2))
        else:
            law, q = chosen
            layers.append(replace(base, law=law.value, param=_snap_gain(q) if law is WeightLaw.ORTHOGONAL else q))
    return _network(stats, _pooled_fixed_std(stats, layers, z), alpha)


def _pooled_fixed_std(stats: InitStats, layers: list[LayerInit], z: float) -> tuple[LayerInit, ...]:
    """The layers that match no law but look like one normal of a std that does not depend on the fans
    (a fixed std not in :data:`~advdim.inits.FIXED_STDS`), named ``fixed_normal`` with the pooled std.

    Candidates: layers estimated for matching no law, of zero mean and Gaussian kurtosis (at ``z``).
    With at least two of them of different fan_in, each layer's ``mean w^2`` is compared with the pooled
    ``mean w^2`` of the others (``|log ratio| <= z sqrt(2/n + 2/N_rest)``, the Gaussian's standard
    errors); the fixed std is taken when every layer agrees and the same comparison of ``fan_in mean w^2``
    (a variance proportional to 1/fan_in) does not: else the layers stay estimated.
    """
    accs = {acc.label: acc for acc in stats.accs}
    pool = [i for i, x in enumerate(layers) if x.estimated and not x.schemes and x.zero_mean and x.param
            and x.n >= MIN_KURTOSIS_N and abs(kurtosis_z(x.kurtosis, x.n)) <= z]
    if len(pool) < 2 or len({layers[i].fans[0] for i in pool}) < 2:
        return tuple(layers)

    def homogeneous(weight: dict[int, float]) -> bool:
        """Every layer's ``weight * mean w^2`` within the standard errors of the pooled others'."""
        for i in pool:
            rest = [j for j in pool if j != i]
            n_rest = sum(accs[layers[j].layer].n for j in rest)
            v_rest = sum(weight[j] * accs[layers[j].layer].s2 for j in rest) / n_rest
            v_i = weight[i] * accs[layers[i].layer].s2 / accs[layers[i].layer].n
            if abs(math.log(v_i / v_rest)) > z * math.sqrt(2 / layers[i].n + 2 / n_rest):
                return False
        return True

    if not homogeneous(dict.fromkeys(pool, 1.0)) or homogeneous({i: float(layers[i].fans[0]) for i in pool}):
        return tuple(layers)
    n_all = sum(accs[layers[i].layer].n for i in pool)
    var = sum(accs[layers[i].layer].s2 for i in pool) / n_all
    note = (f"one normal over {len(pool)} layers of different fans, not one of the listed stds: std "
            f"{math.sqrt(var):.4g} estimated from {n_all} weights (se of the variance {math.sqrt(2 / n_all):.2g})")
    out = list(layers)
    for i in pool:
        out[i] = replace(layers[i], law=WeightLaw.FIXED_NORMAL.value, param=math.sqrt(var), se=math.sqrt(2 / n_all),
                         note=note)
    return tuple(out)


def _network(stats: InitStats, layers: tuple[LayerInit, ...], alpha: float) -> InitGuess:
    """The network-level guess from its layers' laws: one scheme, mixed laws, or estimated layers."""
    level = f"level {alpha:g}, Bonferroni over {3 * len(layers)} tests, {stats.draws} draw(s) pooled"
    no_law: str | None = None
    bad_mean = next((x for x in layers if x.estimated and not x.zero_mean), None)
    zero = next((x for x in layers if x.estimated and x.param == 0), None)
    if zero is not None:
        no_law = f"layer {zero.layer}: every weight is 0, so the input gradient through it is 0 at every size"
    elif bad_mean is not None:
        no_law = (f"layer {bad_mean.layer}: the weights' mean is not 0 (at the test's level): the path sum needs "
                  "zero-mean weights")
    schemes = {x.weight_law.scheme(x.param) for x in layers}
    if len(schemes) == 1 and None not in schemes:
        scheme = next(iter(schemes))
        assert scheme is not None
        also = [w.value for w in LAWS if w.value not in {x.law for x in layers} and w.scheme() is not None
                and all(w.value in x.schemes and _same(w.variance(*x.fans, x.param), x.variance) for x in layers)]
        notes = [f"{x.layer} {x.note}" for x in layers if x.note]
        return InitGuess(scheme.value, f"{scheme.value}: all {len(layers)} conv / dense layers consistent ({level})"
                         + (f"; identical here to {', '.join(also)}" if also else "")
                         + (f"; {'; '.join(notes)}" if notes else ""), layers)
    per = ", ".join(f"{law} x{k}" for law, k in Counter(
        x.law_text() if not x.estimated else "estimated" for x in layers).items())
    notes = [f"{x.layer} {x.note}" for x in layers if x.note and not x.estimated]
    tail = f"; {'; '.join(notes)}" if notes else ""
    est = [x for x in layers if x.estimated]
    if est:
        first = est[0]
        return InitGuess(None, f"unknown: {first.describe()} {first.note} ({first.law_text()}); "
                         f"{len(est)} of {len(layers)} layer(s) estimated; per layer: {per} ({level}){tail}"
                         + (f"; no law: {no_law}" if no_law else ""), layers, no_law)
    return InitGuess(None, f"per layer: {per}: each of the {len(layers)} conv / dense layers consistent with its "
                     f"law ({level}){tail}", layers)


# ---------------------------------------------------------------------------------------------
# The law of the recognised per-layer variances, as a spec the theory reads with one scheme
# ---------------------------------------------------------------------------------------------
def variance_ratios(spec: Spec, guess: InitGuess) -> list[float]:
    """Per weight matrix of ``spec`` (:func:`weight_labels` order): the variance of its recognised law
    at ``spec``'s fans over the variance of ``guess.base`` there.

    ``spec`` is the network ``guess`` was made on, at any input size: a law of the fans (He fan_out,
    a fixed std) gives a ratio that may change with d (a dense layer after flatten); an estimated
    variance holds only at the fans it was estimated at (:class:`AdvdimError` elsewhere).
    """
    base = guess.base
    if base is None:
        raise AdvdimError(f"the initialisation gives no law: {guess.no_law or guess.reason}")
    found = _weight_layers(spec)
    if [lab for lab, _ in found] != [x.layer for x in guess.layers]:
        raise AdvdimError(f"the initialisation was recognised on layers {[x.layer for x in guess.layers]}, "
                          f"not on this spec's {[lab for lab, _ in found]}")
    scheme = Init(base)
    return [x.variance_at(fans) / scheme.weight_variance(*fans) for x, (_, fans) in zip(guess.layers, found)]


def spec_with_init(spec: Spec, guess: InitGuess) -> Spec:
    """The spec whose law under ``guess.base`` (:attr:`InitGuess.base`) is the law of the recognised
    per-layer variances: ``scale(sqrt r)`` after each weight layer whose variance is ``r`` times the
    base scheme's (:func:`variance_ratios`).

    The path sum ``E||d_x f||_2^2`` (Theorems 4-5) needs only zero-mean independent weights of known
    variance per layer, and a layer of ``r`` times the base's variance is, in distribution for
    Gaussian weights (and exactly for any law that enters through its variance), the base's layer
    followed by ``scale(sqrt r)`` (``relu(a z) = a relu(z)`` for ``a > 0``).  In a residual block the
    branch is rewritten likewise; a projection of ratio ``r_p`` becomes ``res(branch, scale=a/sqrt r_p)
    > scale(sqrt r_p)``.  In attention, ``v`` and ``o`` scale the output linearly (``scale(sqrt(r_v
    r_o))`` after it); ``q`` and ``k`` set the softmax's temperature: not covered unless their ratio is 1.
    Measure traces the module at each size, so the rewrite is made per size.

    >>> from advdim.arch import parse
    >>> spec = parse("3x8x8 > conv(16,pad=zeros) > relu > flatten > dense(10)")
    >>> layers = (LayerInit("0:conv(16,pad=zeros)", 0, 1.0, 3.0, None, ("he_fan_out",), (27, 144, 16), "he_fan_out"),
    ...           LayerInit("3:dense(10)", 0, 1.0, 1.8, None, ("torch",), (1024, 10, 10), "torch"))
    >>> spec_with_init(spec, InitGuess(None, "", layers)).to_text()
    '3x8x8 > conv(16,pad=zeros) > scale(0.4330127018922193) > relu > flatten > dense(10) > scale(0.408248290463863)'
    """
    if guess.scheme is not None and guess.no_law is None:
        return spec  # one scheme of advdim's: the theory takes it as is, on any layers
    ratios = variance_ratios(spec, guess)
    if all(_same(r, 1.0) for r in ratios):
        return spec
    bad = next((x for x, r in zip(guess.layers, ratios) if not r > 0), None)
    if bad is not None:
        raise AdvdimError(f"layer {bad.layer}: its weights have variance 0: no law")
    def scaled(r: float) -> list[Layer]:
        return [] if _same(r, 1.0) else [Scale(math.sqrt(r))]

    it: Iterator[float] = iter(ratios)

    def walk(layers: Sequence[Layer], shapes: Sequence[tuple[int, ...]], prefix: str) -> list[Layer]:
        out: list[Layer] = []
        for i, (layer, shape) in enumerate(zip(layers, shapes)):
            if isinstance(layer, (Conv, Dense)):
                out += [layer, *scaled(next(it))]
            elif isinstance(layer, Attention):
                rq, rk, rv, ro = (next(it) for _ in range(4))
                if not (_same(rq, 1.0) and _same(rk, 1.0)):
                    raise AdvdimError(f"layer {prefix}{i}:{format_layer(layer)}: its query / key weights have "
                                      f"{rq:.3g} / {rk:.3g} times the {guess.base} variance: they set the softmax's "
                                      "temperature, which no scale layer expresses (not covered)")
                out += [layer, *scaled(rv * ro)]
            elif isinstance(layer, Residual):
                branch = tuple(walk(layer.branch, layer.branch_shapes(shape), f"{prefix}{i}."))
                rp = next(it) if layer.projection(shape) is not None else 1.0
                if _same(rp, 1.0):
                    out.append(replace(layer, branch=branch))
                else:
                    out += [replace(layer, branch=branch, scale=layer.scale / math.sqrt(rp)), Scale(math.sqrt(rp))]
            else:
                out.append(layer)
        return out

    layers = walk(spec.layers, spec.shapes(), "")
    try:
        return Spec(spec.input_shape, tuple(layers))
    except AdvdimError as e:
        raise AdvdimError(f"the per-layer variances give no spec of the theory: {e}") from None


def spec_at_size(spec: Spec, base: InitGuess, own: InitGuess | None) -> Spec:
    """:func:`spec_with_init` of the network at another input size: with the laws of ``base`` (the base
    size's) where the network has the same weight layers there, else with that size's ``own`` laws (a
    network that gains layers with the size), which must all be named and share ``base``'s base scheme.

    Measure takes the base size's laws so that a weight scale that changes with d is not absorbed into
    the law (it shows as a layer that does not fit: :func:`differs`)."""
    if base.scheme is not None or weight_labels(spec) == [x.layer for x in base.layers]:
        return spec_with_init(spec, base)
    if own is None or own.base != base.base or own.estimated:
        why = ("no init was recognised there" if own is None else
               f"its layers' laws are {own.law_text()}" if own.estimated or own.base is None else
               f"its base scheme is {own.base}, not {base.base}")
        raise AdvdimError(f"the network at input {spec.input_shape} has other weight layers than at the base size, "
                          f"and {why}")
    return spec_with_init(spec, own)


def _same_estimate(x: LayerInit, y: LayerInit, z: float) -> bool:
    """Whether ``y``'s measured ``mean w^2`` agrees with ``x``'s estimated variance (same fans), within ``z``
    standard errors of the log ratio (a different fan: how the variance scales is unknown, not compared)."""
    if x.fans != y.fans or x.param is None or not x.param > 0:
        return True
    m2 = y.variance_ratio * 2 / y.fans[0]
    return m2 > 0 and abs(math.log(m2 / x.param)) <= z * math.hypot(x.se, y.se)


def differs(base: InitGuess, other: InitGuess) -> list[str]:
    """The layers of ``other`` (the same network at another input size) whose weights do not fit the law
    ``base`` took for them (an estimated variance: the measured one within the standard errors, at equal
    fans; level :data:`ALPHA` over the layers); when the sizes have different weight layers, those of
    ``other`` that fit none of ``base``'s laws."""
    if base.scheme is not None and other.scheme == base.scheme:
        return []

    def fits(x: LayerInit, y: LayerInit, z: float) -> bool:
        if x.estimated:
            return _same_estimate(x, y, z)
        if x.pooled:  # an estimated fixed std: any fans
            return _same_estimate(replace(x, fans=y.fans, param=x.variance), y, z)
        return y.fits(x.weight_law, x.param)

    if [x.layer for x in base.layers] == [y.layer for y in other.layers]:
        from scipy import stats as sst

        z = float(sst.norm.ppf(1 - ALPHA / (2 * len(base.layers))))
        return [y.layer for x, y in zip(base.layers, other.layers) if not fits(x, y, z)]
    laws = {(x.weight_law, x.param) for x in base.layers if not x.estimated}
    return [y.layer for y in other.layers if not any(y.fits(law, param) for law, param in laws)]
