"""``predict``: hypotheses H1-H5 and S, the path-sum law of ``||d_x f_k||_q`` and its finite-d prediction.

Everything here is numpy / SymPy; nothing imports torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp
from advdim.theory import _gauss, _graph, _maxnorm, _postact
from advdim.theory._graph import BN_EPS, Sign, Step

from advdim.arch import (
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Family,
    GlobalAvgPool,
    Layer,
    MaxPool,
    Padding,
    ReLU,
    Residual,
    Scale,
    Shape,
    Spec,
    Target,
    TargetKind,
    resolve_target,
)
from advdim.errors import AdvdimError, HypothesisError, SpecError
from advdim.norms import check_q

#: the input dimension d = C * s^2
d = sp.Symbol("d", positive=True)

NORMS: dict[str, float] = {"1": 1.0, "2": 2.0, "inf": math.inf}
HYPOTHESES = ("H1", "H2", "H3", "H4", "H5", "S")


def norm_key(q: float) -> str:
    return "inf" if math.isinf(q) else (str(int(q)) if float(q).is_integer() else repr(float(q)))


# --------------------------------------------------------------------------------------------
# Cached graph computations (specs are frozen, hence hashable)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _variances(spec: Spec, init: str, logit: int) -> np.ndarray:
    v = (_postact.input_variances(spec, init, logit) if _postact.applies(spec)  # ReLUs after residual adds
         else _graph.input_variances(spec, init, logit))
    v.setflags(write=False)
    return v


@functools.lru_cache(maxsize=256)
def _profile(spec: Spec, init: str, logit: int) -> tuple[np.ndarray, np.ndarray]:
    return _gauss.profile(_variances(spec, init, logit))


@functools.lru_cache(maxsize=256)
def _classes(spec: Spec, logit: int) -> _graph.Classes | str:
    """The path-degree classes, or why S is not decided (layers without a path graph, too many monomials)."""
    undecided = _graph.s_undecided(spec)
    if undecided is not None:
        return undecided
    try:
        return _graph.path_degree_classes(spec, logit)
    except HypothesisError as err:
        return str(err)


# --------------------------------------------------------------------------------------------
# Cost of the exact path sums, checked before any of them runs
# --------------------------------------------------------------------------------------------

#: the largest graph (nodes: the entries of every layer's input and output, summed) on which
#: ``predict`` decides the symmetry assumption S: the path-degree classes of ``strided`` at s = 1024
#: (4.8e7 nodes) take half a minute to a minute on one core, and each doubling of s five times as long
MAX_SYMMETRY_NODES = 5 * 10**7
#: headroom of the memory estimates over the arrays they count: numpy's sort and index temporaries
#: for the path sums; for the path-degree classes also the interned polynomials, which are Python
#: objects (zero-padded nets with 5 x 5 kernels: measured peak 1.4 times the counted arrays).
#: tests/theory/test_cli.py checks that measured peaks stay below the estimates
VARIANCE_SAFETY = 1.5
CLASSES_SAFETY = 3.0


def _axis_taps(n_in: int, n_out: int, layer: Conv | AvgPool | MaxPool) -> int:
    """At most how many outputs along one axis read one input (the width of ``_graph._neighbours``)."""
    if isinstance(layer, MaxPool):
        return -(-layer.size // layer.step)  # overlapping windows: up to ceil(size / stride) read one input
    if not isinstance(layer, Conv):
        return 1
    if layer.padding is Padding.REFLECT:
        per_tap = 2 if n_in > 2 * layer.pad + 1 else 3  # the input itself and its mirror image(s)
    elif layer.padding is Padding.CIRCULAR:
        per_tap = -(-n_out * layer.stride // n_in)  # the outputs' positions wrap around the map
    else:
        per_tap = 1
    return min(n_out, layer.kernel * per_tap)


def path_sum_cost(spec: Spec, symmetry: bool = True) -> tuple[int, int]:
    """``(nodes, bytes)``: the graph nodes of ``spec`` and an upper estimate of the peak memory of
    its exact path sums (and, with ``symmetry``, of its path-degree classes), without building either.

    Per layer, in 8-byte values (``in`` / ``out``: the entries before / after it): the path sums
    hold ``in + out`` values, a convolution or pool also its two tap-count matrices and their float
    copies (``2 (H' H + W' W)``) and map-sized products (``H' W' + H W' + 2 H W``); the classes hold
    ``in + out`` ids, the tap-count matrices, the sorted channel keys of the output positions
    (``3 H' W' (C' + 1) + 4 H' W'``) and five arrays of ``H W t_y t_x`` entries (``t``: at most how
    many outputs read one input along an axis) plus five of ``H W``.  Each estimate is its largest
    layer plus the input-shaped results kept in the caches, times its safety factor
    (:data:`VARIANCE_SAFETY`, :data:`CLASSES_SAFETY`).

    >>> from advdim.arch import family
    >>> nodes, n_bytes = path_sum_cost(family("strided").spec(1024))
    >>> nodes, round(n_bytes / 1e9, 1)
    (47885066, 3.3)
    """
    nodes, var_peak, cls_peak = _cost(spec.layers, spec.input_shape)
    n_bytes = VARIANCE_SAFETY * 8 * (var_peak + 2 * spec.d)  # + the cached variances and their profile
    if symmetry:
        n_bytes = max(n_bytes, VARIANCE_SAFETY * 16 * spec.d + CLASSES_SAFETY * 8 * (cls_peak + spec.d))
    return nodes, int(n_bytes)


def _cost(layers: Sequence[Layer], shape: Shape) -> tuple[int, int, int]:
    """``(nodes, variance peak, classes peak)`` of a layer sequence, in 8-byte values (see :func:`path_sum_cost`).

    A residual block holds its output's values while its branch and projection run, then the two
    input-shaped results and their sum (the classes: the two id maps, their stacked keys and
    ``np.unique``'s temporaries, ``8 in`` in all)."""
    nodes, var_peak, cls_peak = math.prod(shape), 0, 0
    for layer in layers:
        out = layer.out_shape(shape)
        a, b = math.prod(shape), math.prod(out)
        var = cls = a + b
        if isinstance(layer, (Conv, AvgPool, MaxPool)):
            (_, h, w), (c_out, ho, wo) = shape, out
            axes = ho * h + wo * w
            var += 2 * axes + ho * wo + h * wo + 2 * h * w
            taps = _axis_taps(h, ho, layer) * _axis_taps(w, wo, layer)
            cls += axes + 3 * ho * wo * (c_out + 1) + 4 * ho * wo + 5 * h * w * taps + 5 * h * w
        elif isinstance(layer, Residual):
            proj = layer.projection(shape)
            parts = [_cost(layer.branch, shape)] + ([] if proj is None else [_cost((proj,), shape)])
            nodes += sum(n - a for n, _, _ in parts)  # the branch's and projection's own nodes
            var = b + 3 * a + max(v for _, v, _ in parts)
            cls = b + 8 * a + max(c for _, _, c in parts)
        nodes += b
        var_peak, cls_peak = max(var_peak, var), max(cls_peak, cls)
        shape = out
    return nodes, var_peak, cls_peak


def check_cost(members: Sequence[Spec], sizes: Sequence[int], symmetry: bool = True) -> None:
    """Refuse, before any path sum runs, members too large to compute: more than
    :data:`MAX_SYMMETRY_NODES` graph nodes when S is decided, or more memory than is available."""
    from advdim.cli_args import check_fits

    need = 0
    for s, m in zip(sizes, members):
        nodes, n_bytes = path_sum_cost(m, symmetry)
        if symmetry and nodes > MAX_SYMMETRY_NODES:
            raise AdvdimError(f"size {s}: deciding the symmetry assumption S walks {nodes:.2g} graph nodes, more "
                              f"than the maximum of {MAX_SYMMETRY_NODES:.2g} (about a minute of work): "
                              "use smaller --sizes")
        need += n_bytes  # the results of every size stay cached
    check_fits(need, f"computing the exact path sums up to size {max(sizes)}", "cpu")


# --------------------------------------------------------------------------------------------
# Hypotheses
# --------------------------------------------------------------------------------------------


def hypotheses(spec: Spec, init: str = "he", logit: int = 0,
               symmetry: bool = True) -> tuple[dict[str, bool], dict[str, str]]:
    """Which of H1-H5 and S hold on ``spec`` at initialisation ``init``, with a one-line reason each.

    ``symmetry=False`` skips the decision of S (the path-degree classes, the costly part on large
    graphs); the result then has no ``"S"`` key.  The law itself never needs it: it is computed
    from each input node's own variance.

    >>> from advdim.arch import family
    >>> held, why = hypotheses(family("avgpool", final=2).spec(8))
    >>> held["H3"], why["H3"]
    (False, 'layer 3 avgpool(2) has deterministic weights 1/4 (not zero-mean with variance 2/in-degree)')
    """
    init = _graph.init_name(init)
    _graph.check_logit(spec, logit)
    st = _graph.all_steps(spec)
    held: dict[str, bool] = {}
    why: dict[str, str] = {}

    residual = any(isinstance(s.layer, Residual) for s in st)
    held["H1"], why["H1"] = _h1(st)
    held["H2"], why["H2"] = True, ("every path crosses each layer at most once (paths through a residual skip "
                                   "bypass its branch: paths differ in length)" if residual else
                                   "sequential spec: every path crosses each layer at most once")
    held["H3"], why["H3"] = _h3(st, init)
    held["H4"], why["H4"] = True, "each layer's weights are drawn independently of the other layers'"
    held["H5"], why["H5"] = _h5(st, init)
    for _, key, reason in reversed(_graph.no_law_layers(spec)):  # the first such layer's reason is kept
        held[key], why[key] = False, reason
    if not symmetry:
        return held, why
    cls = _classes(spec, logit)
    if isinstance(cls, str):
        held["S"], why["S"] = False, cls
        return held, why
    held["S"] = cls.symmetric
    why["S"] = ("every input node has the same multiset of path-degrees" if cls.symmetric else
                f"{len(cls.polys)} path-degree classes; {100 * cls.breaking_share:.1f}% of the input nodes "
                f"lie outside the largest class{_s_cause(st)}")
    return held, why


def _s_cause(st: list[Step]) -> str:
    for s in st:
        layer = s.layer
        if isinstance(layer, Conv):
            if layer.padding in (Padding.ZEROS, Padding.REFLECT) and layer.pad > 0:
                return f" (layer {s.label}: {layer.padding.value} padding at the borders)"
            if layer.padding is Padding.VALID and layer.kernel > 1:
                return f" (layer {s.label}: valid convolution, border inputs feed fewer outputs)"
            if layer.stride > 1 and layer.kernel % layer.stride:
                return (f" (layer {s.label}: kernel {layer.kernel} not a multiple of stride {layer.stride}: "
                        "inputs are covered by different numbers of taps)")
    return ""


def _h1(st: list[Step]) -> tuple[bool, str]:
    """H1 on the steps in execution order (:func:`_graph.all_steps`); a residual's addition is the step
    after its branch and projection, so a branch's last weight layer is followed by what follows the block."""
    weighted = [i for i, s in enumerate(st) if isinstance(s.layer, (Conv, Dense))]
    for s in st:
        if isinstance(s.layer, (MaxPool,)) or s.layer.kind == "globalmaxpool":
            return False, (f"layer {s.label} {s.layer.kind} passes only the arg-max of each window: the unit "
                           "kept is active with probability other than 1/2")
        if isinstance(s.layer, ReLU) and s.sign is Sign.INPUT:
            return False, f"layer {s.label} relu acts on the raw input: its pattern is set by the data"
        if isinstance(s.layer, ReLU) and s.sign is Sign.APPROX:
            return False, f"layer {s.label} relu {_graph.APPROX_REASON}"
    for wi in weighted[:-1]:
        w = st[wi]
        ri = None
        for j in range(wi + 1, len(st)):
            if isinstance(st[j].layer, (Conv, Dense)):
                break
            if isinstance(st[j].layer, ReLU):
                ri = j
                break
        if ri is None:
            return False, f"layer {w.label} {w.layer.kind} is not followed by a ReLU (its factor is 1, not 1/2)"
    pooled = _pooled_before_relu(st)
    if pooled is not None:
        return False, pooled
    return True, "every hidden conv / dense unit is followed by a ReLU active with probability 1/2"


def _pooled_before_relu(st: list[Step]) -> str | None:
    """A conv's outputs average-pooled before the ReLU that follows it (no weight layer between)."""
    for wi, w in enumerate(st):
        if not isinstance(w.layer, Conv):
            continue
        pool = None
        for s in st[wi + 1:]:
            if isinstance(s.layer, (Conv, Dense)):
                break
            if isinstance(s.layer, (AvgPool, GlobalAvgPool)) and pool is None:
                pool = s
            if isinstance(s.layer, ReLU):
                if pool is not None:
                    return (f"layer {pool.label} {pool.layer.kind} pools conv outputs before the ReLU: the pooled "
                            "pre-activation and the input gradient load on overlapping sums of the same kernel "
                            "weights, so the ReLU pattern is not independent of the weights (the path sum holds "
                            "only approximately: measured E||d_x f||_2^2 a few % above it, about 20% where the "
                            "kernel covers the whole map)")
                break
    return None


def approximation(spec: Spec) -> str | None:
    """Why the path sum of ``spec`` is only approximate (None: exact given the hypotheses it needs).

    A ReLU on a pre-activation residual sum (:data:`advdim.theory._graph.APPROX_REASON`) or on average
    pooled conv outputs is treated as a Bernoulli(1/2) gate independent of the weights, which it is
    only approximately; post-activation blocks have the wide-limit chain law (:data:`_postact.LEVEL`).
    Every other spec with a law has an exact path sum: missing ReLUs (factor 1),
    He-breaking layers and residual blocks (cross terms exactly zero) included.
    """
    if _postact.applies(spec):
        return _postact.LEVEL
    st = _graph.all_steps(spec)
    for s in st:
        if isinstance(s.layer, ReLU) and s.sign is Sign.APPROX:
            return f"layer {s.label} relu {_graph.APPROX_REASON}"
        if isinstance(s.layer, MaxPool) and s.rho is not None:
            return f"layer {s.label} maxpool: {MAXPOOL_REASON}"
    return _pooled_before_relu(st)


#: the relative error of the max pool's routed path sum that the tests allow (docs/theory.md, 'Layers of library
#: code': +0.1% to +0.8% measured at 16 and 64 channels, s = 8 to 64, torchvision's resnet18 stem included)
MAXPOOL_BOUND = 0.03
#: why the routed path sum of a max pool is approximate, with its Monte Carlo check (docs/theory.md, 'Layers of
#: library code')
MAXPOOL_REASON = ("the routed path sum takes each window's arg-max equally likely among its entries, independent "
                  "of the weights after it, and the ReLU under it active w.p. 1 - P(max <= 0) with the window "
                  "equicorrelated at the mean-field rho; Monte Carlo of real He nets: E||d_x f||_2^2 within 1% of "
                  "it (+0.1% to +0.8%, docs/theory.md 'Layers of library code')")


def _h3(st: list[Step], init: str) -> tuple[bool, str]:
    for s in st:
        layer = s.layer
        if isinstance(layer, AvgPool):
            return False, (f"layer {s.label} avgpool({layer.size}) has deterministic weights 1/{layer.size**2} "
                           "(not zero-mean with variance 2/in-degree)")
        if isinstance(layer, GlobalAvgPool):
            return False, f"layer {s.label} globalavgpool has deterministic weights 1/{s.in_shape[1] * s.in_shape[2]}"
        if isinstance(layer, BatchNorm):
            return False, (f"layer {s.label} batchnorm rescales deterministically (eval mode at init)"
                           if layer.mode is BNMode.RUNNING else
                           f"layer {s.label} batchnorm(mode=batch) rescales by the batch's statistics")
        if isinstance(layer, Scale) and layer.factor != 1.0:
            return False, (f"layer {s.label} scale({layer.factor!r}) multiplies by the deterministic {layer.factor!r}: "
                           f"the weights before it have {layer.factor**2:g} x the variance 2/in-degree")
        if isinstance(layer, Residual):
            return False, (f"layer {s.label} res: " + (
                "the identity skip edge has the deterministic weight 1" if s.skip is None else
                "a sum node's in-degree is the projection's plus the branch's, above the fan-in of each")
                + f" (not zero-mean with variance 2/in-degree); the block multiplies E||g||^2 by "
                f"{'1' if s.skip is None else 'the projection factor'} + {layer.scale:g}^2 x the branch's factor")
    if init != "he":
        return False, f"{init} initialisation: Var w != 2/fan_in, each layer multiplies E||g||^2 by fan_in*Var(w)/2"
    for s in st:
        layer = s.layer
        if isinstance(layer, Conv) and layer.padding is Padding.ZEROS and layer.pad > 0:
            return False, (f"layer {s.label} zero padding: border units have in-degree < fan_in, so their "
                           "weights' variance 2/fan_in is below 2/in-degree")
    return True, "He initialisation: zero-mean weights with variance 2/in-degree"


def _h5(st: list[Step], init: str) -> tuple[bool, str]:
    for s in st:
        layer = s.layer
        if isinstance(layer, Conv) and layer.padding is Padding.REFLECT and layer.pad > 0:
            return False, (f"layer {s.label} reflect padding: a mirrored border unit reaches two outputs through "
                           "the same weight (cross terms appear if a later average merges them)")
    tail = " (orthogonal: uncorrelated by sign symmetry)" if init == "orthogonal" else ""
    return True, ("distinct weights leaving a node are distinct zero-mean draws; conv weight sharing never "
                  f"puts one weight on two edges of a node{tail}")


# --------------------------------------------------------------------------------------------
# Symbolic per-layer factors of E||d_x f_k||_2^2
# --------------------------------------------------------------------------------------------


def _sym_variance(init: str, fan_in: sp.Expr, fan_out: sp.Expr, rows: sp.Expr) -> sp.Expr:
    if init == "he":
        return 2 / fan_in
    if init == "lecun":
        return 1 / fan_in
    if init == "glorot":
        return 2 / (fan_in + fan_out)
    if init == "torch":
        return sp.Rational(1, 3) / fan_in
    return 2 / sp.Max(rows, fan_in)


def layer_factors(spec: Spec, init: str, scaled: frozenset[int] = frozenset()) -> list[tuple[int, str, sp.Expr]]:
    """Per-layer factors ``T_in / T_out`` of the total ``T = sum_nodes V`` (bulk: full in-degrees).

    A weight layer multiplies by ``fan_in * Var(w)`` (2 for He), ``scale(a)`` by ``a^2``, a ReLU by 1/2 (1 on a
    non-negative input), a ``k x k`` average pool by ``k^2 / k^4 = 1/k^2``, a global average pool by
    ``1/(H W)``, a residual block ``skip(x) + a branch(x)`` by ``1 + a^2 B`` (identity skip) or
    ``P + a^2 B`` (projection factor ``P``), ``B`` the product of the branch's factors.  ``scaled``
    lists the layers whose fan-in / area is proportional to d (family members): they are written with
    the symbol ``d``.  Raises :class:`HypothesisError` on a layer without a path-sum law.

    >>> from advdim.arch import parse
    >>> spec = parse("3x8x8 > conv(16) > relu > res(conv(16) > relu > conv(16), scale=0.5) > flatten > dense(10)")
    >>> [(label, f) for _, label, f in layer_factors(spec, "he")]
    [('0:conv', 2), ('1:relu', 1/2), ('2:res', 3/2), ('4:dense', 2)]
    """
    return _factors(_graph.steps(spec), init, scaled, spec.d)


def _factors(st: Sequence[Step], init: str, scaled: frozenset[int], dd: int,
             flat_in: Shape | None = None) -> list[tuple[int, str, sp.Expr]]:
    """:func:`layer_factors` of a step sequence.  Inside a residual block whose flat input grows with d
    (``flat_in``: its shape), the dense layers reading that input have fan-ins proportional to d."""
    out: list[tuple[int, str, sp.Expr]] = []
    for s in st:
        layer = s.layer
        label = f"{s.label}:{layer.kind}"
        if no_law := _graph.no_law_reason(s):
            raise HypothesisError(f"no path-sum law ({no_law[0]}): {no_law[1]}")
        if isinstance(layer, (Conv, Dense)):
            fi, fo, rows = s.fans
            grows = s.index in scaled and (not s.name or "." not in s.name or s.in_shape == flat_in)
            fan_in: sp.Expr = sp.Rational(fi, dd) * d if grows else sp.Integer(fi)
            out.append((s.index, label, sp.simplify(fan_in * _sym_variance(init, fan_in, sp.Integer(fo),
                                                                            sp.Integer(rows)))))
        elif isinstance(layer, Residual):  # skip + a^2 branch: the cross terms vanish (_graph.branch_is_odd)
            inner = s.in_shape if s.index in scaled and len(s.in_shape) == 1 else None
            skip = sp.Integer(1) if s.skip is None else _product(_factors([s.skip], init, scaled, dd, inner))
            if layer.projbn:  # the projection's batch norm (running statistics at init)
                skip = skip / (1 + sp.nsimplify(BN_EPS))
            branch = _product(_factors(s.branch, init, scaled, dd, inner))
            out.append((s.index, label, sp.simplify(skip + sp.nsimplify(layer.scale, rational=True) ** 2 * branch)))
        elif isinstance(layer, ReLU):
            out.append((s.index, label, sp.Integer(1) if s.sign is Sign.NONNEG else sp.Rational(1, 2)))
        elif isinstance(layer, AvgPool):
            out.append((s.index, label, sp.Rational(1, layer.size**2)))
        elif isinstance(layer, GlobalAvgPool):
            area = s.in_shape[1] * s.in_shape[2]
            out.append((s.index, label, 1 / (sp.Rational(area, dd) * d) if s.index in scaled else sp.Rational(1, area)))
        elif isinstance(layer, BatchNorm):
            out.append((s.index, label, 1 / (1 + sp.nsimplify(BN_EPS))))
        elif isinstance(layer, MaxPool):  # the bulk window: 2 (1 - P(max of size^2 entries <= 0)), see _graph._back
            assert s.rho is not None  # a max pool without a law raised above
            out.append((s.index, label, sp.Float(2.0 * (1.0 - _graph.orthant(layer.size**2, s.rho)), 15)))
        elif isinstance(layer, Scale):
            # a^2 as the simplest rational within 1e-12 of it: scale(sqrt(r)) gives r itself
            out.append((s.index, label, sp.nsimplify(layer.factor**2, tolerance=1e-12 * layer.factor**2,
                                                     rational=True)))
    return out


def _scaled_layers(small: Spec, large: Spec) -> frozenset[int]:
    """Layers of ``small`` whose fan-in (dense) or area (global pool) grows with d (matched from the end)."""
    st_s, st_l = _graph.steps(small), _graph.steps(large)
    out = set()
    for a, b in zip(reversed(st_s), reversed(st_l)):
        if type(a.layer) is not type(b.layer):
            break
        if isinstance(a.layer, Dense) and b.in_shape[0] != a.in_shape[0]:
            out.add(a.index)
        if isinstance(a.layer, GlobalAvgPool) and b.in_shape[1:] != a.in_shape[1:]:
            out.add(a.index)
        if isinstance(a.layer, Residual) and len(a.in_shape) == 1 and b.in_shape != a.in_shape:
            out.add(a.index)  # a block on a flat input that grows with d: its dense layers reading it
    return frozenset(out)


def _product(factors: list[tuple[int, str, sp.Expr]]) -> sp.Expr:
    return sp.simplify(sp.Mul(*[f for _, _, f in factors]))


def family_expression(fam: Family | Target, s0: int, channels: int, init: str) -> tuple[sp.Expr, bool]:
    """``E||d_x f_k||_2^2`` as a SymPy expression in ``d`` for the family, from its per-layer factors.

    Members at ``s0``, ``2 s0``, ``4 s0``: when the member at ``2s`` repeats the member at ``s``
    with one more block, the products differ by a constant ratio ``r`` per doubling of s, so
    ``E(d) = E(d0) r^(log2(s/s0)) = E(d0) (d/d0)^(log2(r)/2)``.  Returns the expression and whether
    the ratio was found constant (else the expression at ``s0`` alone).
    """
    specs = [fam.spec(s0 * 2**j, channels) for j in range(3)]
    exprs = []
    for j in range(3):
        nxt = specs[j + 1] if j < 2 else None
        prev = specs[j - 1] if j > 0 else None
        scaled = _scaled_layers(specs[j], nxt) if nxt is not None else _scaled_by_prev(prev, specs[j])
        exprs.append(_product(layer_factors(specs[j], init, scaled)))
    r1 = sp.simplify(exprs[1] / exprs[0])
    r2 = sp.simplify(exprs[2] / exprs[1])
    if r1.has(d) or sp.simplify(r1 - r2) != 0:
        return exprs[0], False
    if r1 == 1:
        return exprs[0], True
    d0 = specs[0].d
    power = sp.simplify(sp.log(r1, 2) / 2)
    if not power.is_Rational:
        power = sp.log(r1) / (2 * sp.log(2))
    return exprs[0] * (d / d0) ** power, True


def _scaled_by_prev(prev: Spec | None, spec: Spec) -> frozenset[int]:
    if prev is None:
        return frozenset()
    inner = _scaled_layers(prev, spec)
    shift = len(spec.layers) - len(prev.layers)
    return frozenset(i + shift for i in inner)


def growth_exponent(expr: sp.Expr) -> float:
    """``beta`` with ``E||d_x f||_2^2 ~ d^beta``: ``lim d (log E)'``."""
    if not expr.has(d):
        return 0.0
    try:
        beta = sp.limit(sp.simplify(d * sp.diff(sp.log(expr), d)), d, sp.oo)
        if beta.is_finite:
            return float(beta)
    except (NotImplementedError, ValueError):
        pass
    # Max / Piecewise (orthogonal init) defeat the Gruntz algorithm: slope far out, in high precision
    lo, hi = sp.Integer(10) ** 40, sp.Integer(10) ** 41
    slope = (sp.log(expr.subs(d, hi)) - sp.log(expr.subs(d, lo))) / sp.log(hi / lo)
    return round(float(slope.evalf(50)), 12)


# --------------------------------------------------------------------------------------------
# The prediction record
# --------------------------------------------------------------------------------------------


class Slopes(Mapping[str, "float | None"]):
    """``Prediction.predicted_slope``: per norm key (``"1"``, ``"2"``, ``"inf"``) the least-squares slope
    of the finite-d prediction (:meth:`Prediction.slope_q`), computed on first use and kept.

    The q = inf slope of a conv net inside the channel-gate envelope runs the Monte Carlo of
    :func:`advdim.theory._maxnorm.expected_max_norm` at every size (seconds each at 0.5%): a caller
    reading only the path sums or the q = 1, 2 slopes does not pay for it.  A read-only mapping with
    the keys of :data:`NORMS`; ``dict(...)`` computes them all.
    """

    def __init__(self) -> None:
        self.of: Prediction | None = None
        self._done: dict[str, float | None] = {}

    def __getitem__(self, key: str) -> float | None:
        if key not in NORMS:
            raise KeyError(key)
        if key not in self._done:
            assert self.of is not None, "the slopes of a prediction not yet made"
            self._done[key] = self.of.slope_q(NORMS[key])
        return self._done[key]

    def __iter__(self) -> Iterator[str]:
        return iter(NORMS)

    def __len__(self) -> int:
        return len(NORMS)

    def __contains__(self, key: object) -> bool:
        return key in NORMS

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {self._done[k]!r}" if k in self._done else f"{k!r}: (not computed)"
                               for k in NORMS) + "}"


@dataclass(frozen=True)
class Prediction:
    """The theory's prediction for one family (or spec), init and logit.

    Attributes:
        target: the family or spec predicted.
        init: initialisation scheme name.
        channels: input channels C (d = C s^2).
        sizes: the input sides s of the finite-d prediction (one for a spec).
        hypotheses / reasons: H1-H5 and S, each with a one-line reason (S checked at every size).
        has_law: False when no law follows (max pooling): exponents, slopes and norms are None.
        exponent: asymptotic exponent of ``E||d_x f_k||_q`` in d for q = 1, 2, inf.
        predicted_slope: log-log slope of the finite-d prediction over ``sizes`` (:class:`Slopes`: each
            computed on first use, so that a caller who never reads the q = inf one runs no Monte Carlo).
        grad_sq_norm_expr: ``E||d_x f_k||_2^2`` in the symbol ``d`` (bulk law, see ``expr_exact``).
        expr_exact: True when ``grad_sq_norm_expr`` equals the exact path sum at every size.
        beta: growth exponent of ``E||d_x f_k||_2^2`` in d (0 under H).
        breaking_share: per size, the share of input nodes outside the largest S class.
        approximate: why the path sum is only approximate (:func:`approximation`), None when it is
            exact given H4-H5 and the ReLU gates; a failed H1 or H3 alone does not make it approximate
            (a missing ReLU, average pools and residual blocks are counted exactly).
    """

    target: Family | Spec | Target
    init: str
    channels: int
    logit: int
    sizes: tuple[int, ...]
    hypotheses: dict[str, bool]
    reasons: dict[str, str]
    has_law: bool
    exponent: dict[str, float | None]
    predicted_slope: Mapping[str, float | None]
    grad_sq_norm_expr: sp.Expr | None
    expr_exact: bool
    beta: float | None
    breaking_share: dict[int, float] = field(default_factory=dict)
    approximate: str | None = None
    #: relative standard error of the q = inf Monte Carlo of conv nets (``_maxnorm.expected_max_norm``)
    inf_rel_se: float = _maxnorm.REL_SE
    #: instead, a fixed number of draws of that Monte Carlo (no pilot; one unit of a study over random
    #: topologies, ``_maxnorm.UNIT_DRAWS``), or None
    inf_draws: int | None = None

    # ---- members ---------------------------------------------------------------------------
    def spec_at(self, size: int) -> Spec:
        """The member at input side ``size`` (a spec only has its own size)."""
        if isinstance(self.target, Spec):
            if size != self.target.input_shape[1]:
                raise AdvdimError(f"a spec has one size ({self.target.input_shape[1]}), got {size}")
            return self.target
        return self.target.spec(size, self.channels)

    def dim(self, size: int) -> int:
        return self.spec_at(size).d

    # ---- the wide limit beyond the path sum (average pooling; theory/_meanfield.py) ---------------
    def pooling_correction_applies(self, size: int) -> bool:
        """Does an average pool or global average pool after the first conv make the wide limit of
        ``E||d_x f_k||_2^2`` differ from the path sum?  (:func:`advdim.theory._meanfield.pooling_correction_applies`)"""
        from advdim.theory._meanfield import pooling_correction_applies

        return self.has_law and pooling_correction_applies(self.spec_at(size))

    def wide_grad_sq_norm(self, size: int) -> float:
        """``E||d_x f_k||_2^2`` in the limit of infinitely many channels: the covariance recursion of
        :func:`advdim.theory._meanfield.wide_law` where :meth:`pooling_correction_applies`, the path sum
        (:meth:`grad_sq_norm`, exact there in that limit) otherwise.  The recursion's expectation over
        the input is a seeded sample mean (relative standard error about 1e-3); results are cached.

        Raises :class:`HypothesisError` when no law follows (max pooling) or the recursion does not
        cover the net (see :func:`~advdim.theory._meanfield.wide_law`).
        """
        if not self.pooling_correction_applies(size):
            return self.grad_sq_norm(size)
        from advdim.theory._meanfield import cached_wide_law

        return cached_wide_law(self.spec_at(size), self.init, self.logit).value

    # ---- exact second moments ----------------------------------------------------------------
    def input_variances(self, size: int) -> np.ndarray | None:
        """``E[(d f_k / d x_i)^2]`` per input node, shape ``(C, s, s)`` (None without a law)."""
        if not self.has_law:
            return None
        return _variances(self.spec_at(size), self.init, self.logit)

    def grad_sq_norm(self, size: int) -> float:
        """Exact ``E||d_x f_k||_2^2`` at side ``size``: the path sum on the real graph.

        Raises :class:`HypothesisError` when no law follows (max pooling).
        """
        if not self.has_law:
            raise HypothesisError(self.reasons.get("law", "no path-sum law"))
        return float(np.sum(_variances(self.spec_at(size), self.init, self.logit)))

    # ---- the law of ||d_x f_k||_q ---------------------------------------------------------------
    def expected_norm(self, q: float | str, size: int) -> float | None:
        """Finite-d prediction of ``E||d_x f_k||_q``.

        Independent ``N(0, sigma_i^2)`` coordinates, ``sigma_i^2`` the exact path-sum variances of
        the input nodes (so zero padding and stride artefacts are included; see
        :func:`advdim.theory._gauss.expected_q_norm`), except for ``q = inf`` on the conv nets of
        :func:`advdim.theory._maxnorm.covers`: there the coordinates are correlated and a Gaussian
        scale mixture, and the prediction is the path-sum model's own law with channel gates, by Monte
        Carlo to 0.5% (:func:`advdim.theory._maxnorm.expected_max_norm`; docs/theory.md, "The q = inf
        prediction for conv nets"), or ``inf_rel_se``, or with ``inf_draws`` draws.
        """
        q = check_q(q)
        if not self.has_law:
            return None
        spec = self.spec_at(size)
        if math.isinf(q) and _maxnorm.model_applies(spec, self.init):
            est = _maxnorm.expected_max_norm(spec, self.init, self.logit, rel_se=self.inf_rel_se, draws=self.inf_draws)
            if est is not None:
                return est.mean
        values, counts = _profile(spec, self.init, self.logit)
        return _gauss.expected_q_norm(values, counts, q)

    def exponent_q(self, q: float | str) -> float | None:
        """Asymptotic exponent of ``E||d_x f_k||_q`` in d: ``1/q - 1/2 + beta/2`` (q = inf: ``-1/2 + beta/2``,
        up to the factor ``sqrt(log d)``)."""
        q = check_q(q)
        if not self.has_law or self.beta is None:
            return None
        return (0.0 if math.isinf(q) else 1.0 / q) - 0.5 + self.beta / 2

    def slope_q(self, q: float | str) -> float | None:
        """Least-squares slope of ``log E||d_x f_k||_q`` against ``log d`` over ``sizes``."""
        q = check_q(q)
        if not self.has_law or len(self.sizes) < 2:
            return None
        x = np.log([float(self.dim(s)) for s in self.sizes])
        y = np.log([float(self.expected_norm(q, s) or math.nan) for s in self.sizes])
        return float(np.polyfit(x, y, 1)[0])

    # ---- the loss --------------------------------------------------------------------------
    def expected_loss_norm(self, q: float | str, size: int, softmax_weight: float | None = None) -> float | None:
        """``E||d_x L||_q = E||softmax(f) - e_y||_2 * E||d_x f_k||_q`` for the cross-entropy (wide limit).

        The logits are the predicted ``N(0, diag(v))`` with ``v`` from the forward recursion
        (:func:`advdim.theory._loss.logit_law`; approximate where average pools need correlations,
        see ``logit_law`` in :meth:`to_json`), the label uniform and independent of the net;
        ``softmax_weight`` overrides the first factor (e.g. ``sqrt(1 - 1/K)``, a uniform softmax).
        None without a law (max pooling) or without a logit law (batch statistics).
        """
        from advdim.theory import _loss

        base = self.expected_norm(q, size)
        if base is None:
            return None
        spec = self.spec_at(size)
        if softmax_weight is not None:
            return loss_weight(spec.n_classes, softmax_weight) * base
        try:
            law = _loss.logit_law(spec, self.init)
        except HypothesisError:
            return None
        return _loss.residual_moment(law.variances).value * base

    # ---- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``advdim theory --json`` record."""
        sizes = list(self.sizes)
        return {
            "target": self.target.to_text(),
            "init": self.init,
            "channels": self.channels,
            "logit": self.logit,
            "sizes": sizes,
            "d": [self.dim(s) for s in sizes],
            "hypotheses": dict(self.hypotheses),
            "reasons": dict(self.reasons),
            "has_law": self.has_law,
            "exponent": dict(self.exponent),
            "predicted_slope": dict(self.predicted_slope),
            "grad_sq_norm": None if self.grad_sq_norm_expr is None else str(self.grad_sq_norm_expr),
            "grad_sq_norm_exact_symbolic": self.expr_exact,
            "beta": self.beta,
            "grad_sq_norm_at": {str(s): (self.grad_sq_norm(s) if self.has_law else None) for s in sizes},
            "expected_norm": {norm_key(q): {str(s): self.expected_norm(q, s) for s in sizes} for q in NORMS.values()},
            # how the q = inf entry was computed, per size (advdim.theory._maxnorm.inf_law_json)
            "expected_norm_inf": {str(s): _maxnorm.inf_law_json(self.spec_at(s), self.init, self.logit, self.has_law,
                                                                self.inf_rel_se, self.inf_draws)
                                  for s in sizes},
            "s_breaking_share": {str(s): v for s, v in self.breaking_share.items()},
            # the loss gradient (docs/theory.md, "The loss gradient"): the logit law and E||d_x L||_q
            "expected_loss_norm": {norm_key(q): {str(s): self.expected_loss_norm(q, s) for s in sizes}
                                   for q in NORMS.values()},
            "logit_law": self._logit_law_json(),
        }

    def _logit_law_json(self) -> dict[str, Any] | None:
        """``{"variance": {size: E f_k^2}, "exact": bool, "note": str}`` (None without a law)."""
        from advdim.theory import _loss

        if not self.has_law:
            return None
        try:
            laws = {str(s): _loss.logit_law(self.spec_at(s), self.init) for s in self.sizes}
        except HypothesisError as err:
            return {"variance": None, "exact": False, "note": str(err)}
        inexact = [law for law in laws.values() if not law.exact]
        return {"variance": {s: law.variance for s, law in laws.items()}, "exact": not inexact,
                "note": (inexact or list(laws.values()))[0].note}




def loss_weight(n_classes: int, softmax_weight: float | None = None, logit_variance: float = 0.0) -> float:
    """``E||softmax(f) - e_y||_2`` for ``f ~ N(0, logit_variance I_K)`` and a uniform label, or the given value.

    ``logit_variance = 0`` (a uniform softmax) gives ``sqrt(1 - 1/K)`` exactly; otherwise the
    randomised quasi-Monte Carlo value of :func:`advdim.theory._loss.residual_moment` (standard
    error about 1e-4).

    >>> round(loss_weight(10), 6), round(loss_weight(10, logit_variance=2.0), 3)
    (0.948683, 1.024)
    """
    from advdim.theory import _loss

    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise AdvdimError(f"the softmax needs a positive integer number of classes, got {n_classes!r}")
    if softmax_weight is not None:
        if not math.isfinite(softmax_weight) or not 0 <= softmax_weight <= math.sqrt(2):
            raise AdvdimError(f"E||softmax - y||_2 lies in [0, sqrt(2)], got {softmax_weight!r}")
        return float(softmax_weight)
    if not math.isfinite(logit_variance) or logit_variance < 0:
        raise AdvdimError(f"the logit variance must be finite and >= 0, got {logit_variance!r}")
    if logit_variance == 0:
        return math.sqrt(1.0 - 1.0 / n_classes)
    return _loss.residual_moment([float(logit_variance)] * n_classes).value


def predict(target: Family | Spec | Target | str, sizes: Sequence[int] | None = None, channels: int | None = None,
            init: object = "he", logit: int = 0, symmetry: bool = True, inf_rel_se: float | None = None,
            inf_draws: int | None = None) -> Prediction:
    """Predict ``E||d_x f_k||_q`` for any target over ``sizes`` (Theorems 4-5, Corollary 6).

    Args:
        target: anything :func:`advdim.arch.resolve_target` takes: a family (its default member) or
            a member, spec text or a :class:`~advdim.arch.Spec` (the same layers at every size), a
            user family; or a :class:`~advdim.arch.Spec` without ``sizes`` (its own size only;
            slopes are None).
        sizes: input sides s of the finite-d prediction (d = C s^2); default 8, 16, 32, 64.
        channels: input channels C (default 3; a spec keeps its own).
        init: ``"he"`` (H3), ``"torch"``, ``"glorot"``, ``"lecun"``, ``"orthogonal"`` or an ``Init``.
        logit: index k of the logit.
        inf_rel_se: relative standard error of the q = inf Monte Carlo on conv nets (default
            ``_maxnorm.REL_SE`` = 0.005).
        inf_draws: instead, a fixed number of draws of that Monte Carlo, no pilot, the se stated after:
            one unit of a study averaging many random topologies (``_maxnorm.UNIT_DRAWS``; a random
            member of a built-in family at the default sizes is read from ``_maxnorm.tabulated``).
        symmetry: decide S (default).  ``False`` skips it (no ``"S"`` in ``hypotheses``, no
            ``breaking_share``): the Monte Carlo engine, which predicts thousands of topologies,
            needs only the law.
    Returns:
        A :class:`Prediction`.

    >>> from advdim.arch import family
    >>> pred = predict(family("dense", widths=(64,)), sizes=(8, 16))
    >>> pred.grad_sq_norm_expr, pred.exponent["1"], pred.hypotheses["S"]
    (2, 0.5, True)
    """
    init = _graph.init_name(init)
    if isinstance(target, str) or (isinstance(target, Spec) and sizes is not None) or callable(target):
        target = resolve_target(target)
    if isinstance(target, Target) and target.kind in (TargetKind.FAMILY, TargetKind.MEMBER):
        assert target.member is not None
        target = target.member  # a family name predicts its default member
    if isinstance(target, Spec):
        if channels is not None and channels != target.input_shape[0]:
            raise AdvdimError(f"the spec's input has {target.input_shape[0]} channel(s), not {channels}")
        sizes_t: tuple[int, ...] = (target.input_shape[1],)
        channels = target.input_shape[0]
        members = [target]
    elif isinstance(target, (Family, Target)):
        sizes_t = tuple(int(s) for s in (sizes if sizes is not None else (8, 16, 32, 64)))
        if not sizes_t or any(s < 1 for s in sizes_t):
            raise AdvdimError(f"sizes must be positive integers, got {sizes!r}")
        if isinstance(target, Target):
            channels = target.channels or channels or 3
            target.check_sizes(sizes_t, channels)
        channels = channels or 3
        members = [target.spec(s, channels) for s in sizes_t]
    else:
        raise AdvdimError(f"predict needs a family, a spec or a target, got {type(target).__name__}")
    for m in members:
        _graph.check_logit(m, logit)
    check_cost(members, sizes_t, symmetry)

    keys = HYPOTHESES if symmetry else tuple(k for k in HYPOTHESES if k != "S")
    held: dict[str, bool] = dict.fromkeys(keys, True)
    why: dict[str, str] = {}
    share: dict[int, float] = {}
    for s, m in zip(sizes_t, members):
        h, r = hypotheses(m, init, logit, symmetry)
        cls = _classes(m, logit) if symmetry else None
        if isinstance(cls, _graph.Classes):
            share[s] = cls.breaking_share
        for key in keys:
            if not h[key] and held[key]:
                held[key], why[key] = False, (r[key] if len(members) == 1 else f"s={s}: {r[key]}")
            why.setdefault(key, r[key])
    chains = all(_postact.applies(m) for m in members)  # post-activation blocks: the chain law of theory/_postact.py
    bad = None if chains else next((b for m in members for b in _graph.no_law_layers(m)), None)
    has_law = bad is None

    expr: sp.Expr | None = None
    exact = False
    beta: float | None = None
    if chains:
        beta, why["law"] = _postact.growth(members, init)
    elif has_law:
        if not isinstance(target, Spec):
            try:
                expr, constant_ratio = family_expression(target, min(sizes_t), channels, init)
            except (SpecError, HypothesisError):  # no member at 2 s0 or 4 s0, or one without a law: s0 only
                expr, constant_ratio = _product(layer_factors(members[0], init)), False
            beta = growth_exponent(expr) if constant_ratio else None
            if not constant_ratio:
                why["law"] = "no constant per-doubling factor: the expression holds at the smallest size only"
        else:
            expr = _product(layer_factors(target, init))
            dimension_free = init == "he" and not any(
                isinstance(s.layer, (AvgPool, GlobalAvgPool, BatchNorm)) for s in _graph.all_steps(target))
            beta = 0.0 if dimension_free else None
            if not dimension_free:
                why["law"] = ("a spec at one size does not say how its layers scale with d: give several sizes "
                              "(--sizes) for exponents")
        exact = all(abs(float(expr.subs(d, m.d)) - float(np.sum(_variances(m, init, logit))))
                    <= 1e-9 * float(np.sum(_variances(m, init, logit))) for m in members)
    else:
        assert bad is not None
        why["law"] = f"no law: {bad[2]} ({bad[1]}); the simulation measures this case"

    approx = next((a for a in (approximation(m) for m in members) if a is not None), None) if has_law else None
    slopes = Slopes()
    pred = Prediction(target, init, channels, logit, sizes_t, held, why, has_law, {}, slopes, expr, exact, beta,
                      share, approx, _maxnorm.REL_SE if inf_rel_se is None else float(inf_rel_se), inf_draws)
    slopes.of = pred
    for key, q in NORMS.items():
        pred.exponent[key] = pred.exponent_q(q)
    return pred
