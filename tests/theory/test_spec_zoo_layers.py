"""The laws of ``scale(a)``, overlapping max pooling and ``res(..., projbn=true)`` (issue 20).

Exact identities (``scale`` multiplies every law by ``a^2`` or ``a``; ``projbn`` divides the skip's share by
``1 + eps``), the max pool's routed path sum (total kept times the window's gate, zero where no window
reaches, the orthant probabilities against closed forms), which max pools have a law, and Monte Carlo
of real He nets against each law with the tolerance of the sample (5 standard errors, plus the max pool's
documented bound), each with a planted error the same check must catch.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import numpy as np
import pytest
from advdim.theory import _graph, _maxnorm, predict
from advdim.theory._graph import BN_EPS
from advdim.theory._law import MAXPOOL_BOUND, layer_factors
from hypothesis import given, settings
from hypothesis import strategies as st

from advdim.arch import Conv, Dense, MaxPool, Padding, Spec, family, parse
from advdim.errors import HypothesisError

BASE = "3x8x8 > conv(8) > relu > conv(8) > relu > flatten > dense(4)"


# ---------------------------------------------------------------------------------------------
# scale(a): exact in every law
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(a=st.floats(1e-3, 1e3), where=st.sampled_from([2, 3, 5]))
def test_scale_multiplies_every_path_by_a(a: float, where: int) -> None:
    """Inserted anywhere in a ReLU net, ``scale(a)`` multiplies each node's path sum by ``a^2`` (a ReLU
    commutes with it, its gate is unchanged)."""
    layers = BASE.split(" > ")
    scaled = parse(" > ".join([*layers[:where], f"scale({a!r})", *layers[where:]]))
    np.testing.assert_allclose(_graph.input_variances(scaled), a * a * _graph.input_variances(parse(BASE)),
                               rtol=1e-12)


def test_scale_of_a_square_root_is_a_rational_factor() -> None:
    """A layer of r times He's variance is He then ``scale(sqrt(r))``: its factor is r exactly, and the
    symbolic law equals the path sum."""
    spec = parse(f"3x8x8 > conv(8) > scale({math.sqrt(0.5)!r}) > relu > conv(8) > relu > flatten > dense(4)")
    assert [f for _, label, f in layer_factors(spec, "he") if "scale" in label] == [pytest.approx(0.5)]
    assert str([f for _, label, f in layer_factors(spec, "he") if "scale" in label][0]) == "1/2"
    pred = predict(spec)
    assert pred.has_law and pred.expr_exact and str(pred.grad_sq_norm_expr) == "1"
    assert not pred.hypotheses["H3"] and "scale" in pred.reasons["H3"]


def test_scale_in_the_wide_limit_logit_and_max_norm_laws() -> None:
    """The wide-limit recursion, the logit law and the q = inf channel-gate model see ``scale(a)`` as the
    same nets times ``a``: with the same draws, exactly ``a^2`` (second moments) and ``a`` (the max norm)."""
    from advdim.theory._loss import logit_law
    from advdim.theory._meanfield import wide_grad_sq_norm

    a = 1.5
    pooled = "2x8x8 > conv(4) > relu > {}avgpool(2) > conv(4) > relu > globalavgpool > dense(3)"
    plain, scaled = parse(pooled.format("")), parse(pooled.format(f"scale({a}) > "))
    assert wide_grad_sq_norm(scaled, inputs=4) == pytest.approx(a * a * wide_grad_sq_norm(plain, inputs=4), rel=1e-9)
    assert logit_law(scaled).variance == pytest.approx(a * a * logit_law(plain).variance, rel=1e-12)
    conv = "3x8x8 > conv(4) > relu > conv(4,s=2) > {}relu > flatten > dense(3)"
    plain, scaled = parse(conv.format("")), parse(conv.format(f"scale({a}) > "))
    assert _maxnorm.covers(scaled) is None
    one, other = (_maxnorm.estimate_max_norm(s, 64, seed=3) for s in (plain, scaled))
    assert other.mean == pytest.approx(a * one.mean, rel=1e-6)  # the model draws in float32
    assert _maxnorm.covers(scaled, "torch") is not None  # biases: relu(a z + b) is not a relu(z + b/a)


# ---------------------------------------------------------------------------------------------
# res(..., projbn=true): the skip's share over 1 + eps
# ---------------------------------------------------------------------------------------------

PROJ = "3x8x8 > conv(8) > relu > res(conv(8,s=2) > relu > conv(8){}) > flatten > dense(4)"


def test_projbn_divides_the_skip_share_by_one_plus_eps() -> None:
    """``E||g||^2 = 2 * 1/2 * (P / (1 + eps) + B) * 2`` with P = B = 2 under He, node by node and symbolically."""
    with_bn, plain = parse(PROJ.format(",projbn=true")), parse(PROJ.format(""))
    assert float(_graph.input_variances(with_bn).sum()) == pytest.approx(2 * 0.5 * (2 / (1 + BN_EPS) + 2) * 2,
                                                                          rel=1e-12)
    pred = predict(with_bn)
    assert pred.has_law and pred.expr_exact and pred.approximate is None
    assert float(pred.grad_sq_norm_expr) == pytest.approx(pred.grad_sq_norm(8), rel=1e-12)
    np.testing.assert_array_equal(_graph.path_degree_classes(with_bn).ids, _graph.path_degree_classes(plain).ids)
    assert _graph.sign_states(with_bn) == _graph.sign_states(plain)


# ---------------------------------------------------------------------------------------------
# max pooling: the routed path sum
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, 0.1, 1 / math.pi, 0.6, 0.95])
def test_orthant_probabilities_match_closed_forms(rho: float) -> None:
    """``P(max <= 0)`` of n equicorrelated Gaussians: ``1/4 + asin(rho)/(2 pi)`` (n = 2), ``1/8 + 3 asin(rho)/(4 pi)``
    (n = 3); decreasing in n, ``2^-n`` at ``rho = 0``."""
    assert _graph.orthant(2, rho) == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-9)
    assert _graph.orthant(3, rho) == pytest.approx(0.125 + 3 * math.asin(rho) / (4 * math.pi), abs=1e-9)
    probs = [_graph.orthant(n, rho) for n in (1, 4, 9, 25)]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(0.5)


def test_window_correlations_follow_the_mean_field_recursion() -> None:
    first = parse("3x8x8 > conv(4) > relu > maxpool(2) > conv(4) > relu > flatten > dense(2)")
    second = parse("3x8x8 > conv(4) > batchnorm > relu > conv(4,s=2) > scale(3.0) > relu > maxpool(3,s=2,pad=1) > "
                   "flatten > dense(2)")
    assert _graph.window_correlations(_graph.steps(first)) == {2: 0.0}
    assert _graph.window_correlations(_graph.steps(second)) == {6: pytest.approx(1 / math.pi)}


@pytest.mark.parametrize("pool", ["maxpool(2)", "maxpool(3,s=2,pad=1)", "maxpool(3,s=1,pad=1)", "maxpool(2,s=3)"])
def test_routing_keeps_the_total_times_the_gate(pool: str) -> None:
    """Backwards through the pool, the total is the outputs' values times ``2 (1 - P(max <= 0))`` (each output
    routes to one arg-max; the ReLU's own 1/2 comes after), spread over each window's entries; an input no
    window reaches (floor mode) gets nothing, one inside several windows gets several shares."""
    spec = parse(f"3x8x8 > conv(4) > relu > {pool} > flatten > dense(2)")
    step = next(s for s in _graph.steps(spec) if s.layer.kind == "maxpool")
    v = np.random.default_rng(0).random(step.out_shape)
    back = _graph._back(step, v, "he")
    assert back.shape == step.in_shape
    assert back.sum() == pytest.approx(float((v * 2 * _graph.maxpool_gates(step)[None]).sum()), rel=1e-12)
    ay, ax = step.axes()
    reached = (ay.sum(axis=0)[:, None] * ax.sum(axis=0)[None, :]) > 0
    assert np.all(back[:, ~reached] == 0) and np.all(back[:, reached] > 0)
    if pool == "maxpool(2,s=3)":
        assert not reached.all()
    # the windows are nn.MaxPool2d's: entry (o, i) of an axis matrix says whether input i lies in window o
    k, s, p = step.layer.size, step.layer.step, step.layer.pad
    brute = np.array([[1 if o * s - p <= i < o * s - p + k else 0 for i in range(8)] for o in range(ay.shape[0])])
    np.testing.assert_array_equal(ay, brute)


@pytest.mark.parametrize("pool", ["maxpool(2)", "maxpool(3,s=2,pad=1)"])
def test_max_then_relu_is_relu_then_max(pool: str) -> None:
    """``relu(max z) = max relu(z)``: the two orders are one function and get one law, node by node."""
    first = parse(f"3x8x8 > conv(4) > relu > conv(4) > relu > {pool} > conv(4) > relu > flatten > dense(2)")
    second = parse(f"3x8x8 > conv(4) > relu > conv(4) > {pool} > relu > conv(4) > relu > flatten > dense(2)")
    np.testing.assert_allclose(_graph.input_variances(second), _graph.input_variances(first), rtol=1e-12)


@pytest.mark.parametrize(("text", "words"), [
    ("3x8x8 > conv(4) > maxpool(2) > conv(4) > relu > flatten > dense(2)", "right after a ReLU"),
    ("3x8x8 > maxpool(2) > conv(4) > relu > flatten > dense(2)", "right after a ReLU"),
    ("3x16x16 > conv(4) > relu > maxpool(2) > conv(4) > relu > maxpool(2) > flatten > dense(2)", "no max pool"),
    ("3x8x8 > conv(4) > res(conv(4) > relu > conv(4)) > relu > maxpool(2) > flatten > dense(2)", "residual block"),
    ("3x8x8 > conv(4) > layernorm > relu > maxpool(2) > flatten > dense(2)", "right after a ReLU"),
    ("3x8x8 > conv(4) > relu > maxpool(2) > conv(4) > relu > globalavgpool > dense(2)", "averages positions after"),
    ("3x8x8 > conv(4) > relu > maxpool(2) > res(conv(4) > relu > avgpool(2) > conv(4)) > flatten > dense(2)",
     "averages positions after"),
])
def test_max_pools_without_a_law_say_why(text: str, words: str) -> None:
    spec = parse(text)
    assert not predict(spec).has_law
    pools = [reason for s, _, reason in _graph.no_law_layers(spec) if s.layer.kind == "maxpool"]
    assert pools and words in pools[-1], pools
    with pytest.raises(HypothesisError):
        _graph.input_variances(spec)


def test_the_maxpool_family_keeps_no_law_beyond_one_pool() -> None:
    assert not predict(family("maxpool"), sizes=(8, 16)).has_law
    one = predict(family("maxpool"), sizes=(8,))
    assert one.has_law and one.approximate is not None and "maxpool" in one.approximate
    assert one.beta is None  # members with more pools have no law: no exponent


def test_torchvision_stem_has_an_approximate_law_with_every_quantity() -> None:
    """The resnet18 stem (conv 7x7/2, BN, ReLU, maxpool 3/2/1) under a conv head: a law at every size, its level
    approximate, the q-norms from the routed profile, q = inf by the fallback (max pools are outside the
    channel-gate model)."""
    from advdim.theory._best import Level, best_laws

    text = ("3x{s}x{s} > conv(64,k=7,s=2,pad=zeros,bias=false) > batchnorm > relu > maxpool(3,s=2,pad=1) > "
            "conv(16,pad=zeros) > relu > flatten > dense(10)")
    for s in (32, 64):
        laws = best_laws(predict(parse(text.format(s=s))))
        assert laws["grad_sq_norm"][s].level is Level.APPROXIMATE and "maxpool" in laws["grad_sq_norm"][s].note
        assert all(laws[q][s].value is not None and laws[q][s].value > 0 for q in ("1", "2", "inf"))
        assert laws["inf"][s].level is Level.FALLBACK


# ---------------------------------------------------------------------------------------------
# Monte Carlo of real He nets, with a planted error the same check must catch
# ---------------------------------------------------------------------------------------------

SIGMAS = 5.0


def _agrees(samples: np.ndarray, law: float, bound: float = 0.0) -> bool:
    """``|mean - law| <= 5 se + bound * law``: the sample's own standard error, and the law's documented
    relative bound (0 for an exact law)."""
    se = float(samples.std(ddof=1)) / math.sqrt(samples.size)
    return abs(float(samples.mean()) - law) <= SIGMAS * se + bound * law


@pytest.mark.parametrize(("text", "nets", "bound"), [
    (PROJ.format(",projbn=true"), 300, 0.0),
    ("3x8x8 > conv(8) > relu > res(conv(8) > relu > conv(8) > scale(0.5)) > flatten > dense(4)", 300, 0.0),
    ("3x8x8 > conv(8) > relu > maxpool(3,s=2,pad=1) > conv(8) > relu > flatten > dense(4)", 400, MAXPOOL_BOUND),
    ("3x8x8 > conv(8) > relu > conv(8) > relu > maxpool(2) > conv(8) > relu > flatten > dense(4)", 400,
     MAXPOOL_BOUND),
])
def test_monte_carlo_of_real_nets_agrees_and_a_planted_error_is_caught(text: str, nets: int, bound: float) -> None:
    """The law within 5 se of the mean over ``nets`` He nets (plus the max pool's bound); the same nets with the
    last layer's variance 1.3 times He (``E||g||^2`` moves by exactly 1.3) fail the same check."""
    from advdim.theory._numeric import mc_grad_sq

    spec = parse(text)
    law = predict(spec).grad_sq_norm(8)
    assert _agrees(mc_grad_sq(spec, n_nets=nets, seed=7), law, bound)
    assert not _agrees(mc_grad_sq(spec, n_nets=nets, seed=7, variance_factor=1.3), law, bound)


def _brute_classes(spec: Spec) -> list[tuple]:
    """Per input node, the multiset of path-degree multisets of its paths to logit 0, by explicit recursion
    over the graph (conv taps, zero or circular padding; max-pool windows; dense; ReLU and flatten keep the
    node)."""
    shapes = spec.shapes()
    edges: list[list[tuple[int, int]] | None] = []  # per layer: (src, dst) over flat indices; None: node-wise
    for layer, shp_in, shp_out in zip(spec.layers, shapes, shapes[1:]):
        if isinstance(layer, (Conv, MaxPool)):
            (c_in, h, w), (c_out, ho, wo) = shp_in, shp_out
            k, s, p = ((layer.kernel, layer.stride, layer.pad) if isinstance(layer, Conv)
                       else (layer.size, layer.step, layer.pad))
            pairs = []
            for co in range(c_out):
                for oy in range(ho):
                    for ox in range(wo):
                        for ty in range(k):
                            for tx in range(k):
                                y, x = oy * s - p + ty, ox * s - p + tx
                                if isinstance(layer, Conv) and layer.padding is Padding.CIRCULAR:
                                    y, x = y % h, x % w
                                if 0 <= y < h and 0 <= x < w:
                                    for ci in (range(c_in) if isinstance(layer, Conv) else (co,)):
                                        pairs.append((ci * h * w + y * w + x, co * ho * wo + oy * wo + ox))
            edges.append(pairs)
        elif isinstance(layer, Dense):
            edges.append([(i, j) for j in range(layer.out_features) for i in range(shp_in[0])])
        else:
            edges.append(None)
    indeg = [None if e is None else Counter(dst for _, dst in e) for e in edges]

    @functools.cache
    def paths(layer: int, node: int) -> tuple:
        if layer == len(spec.layers):
            return ((),) if node == 0 else ()
        if edges[layer] is None:
            return paths(layer + 1, node)
        out = []
        for src, dst in edges[layer]:
            if src == node:
                out += [tuple(sorted((*p, indeg[layer][dst]))) for p in paths(layer + 1, dst)]
        return tuple(sorted(out))

    return [paths(0, i) for i in range(spec.d)]


@pytest.mark.parametrize("text", [
    "1x5x5 > conv(1,k=3,pad=zeros) > relu > maxpool(3,s=2,pad=1) > flatten > dense(2)",
    "1x6x6 > conv(2,k=3,pad=zeros) > relu > maxpool(2,s=1) > flatten > dense(2)",
    "2x7x7 > conv(1,k=3,pad=circular) > relu > maxpool(3,s=2) > flatten > dense(2)",
])
def test_s_classes_of_overlapping_pools_equal_brute_force(text: str) -> None:
    """The path-degree classes (assumption S) through overlapping and padded windows, against an explicit
    enumeration of every path: the same partition of the input nodes."""
    spec = parse(text)
    brute = _brute_classes(spec)
    ids = {key: i for i, key in enumerate(dict.fromkeys(brute))}
    fast = _graph.path_degree_classes(spec).ids.ravel().tolist()
    pairs = set(zip(fast, [ids[key] for key in brute]))
    assert len(pairs) == len(set(fast)) == len(ids)


@pytest.mark.parametrize("pool", ["maxpool(3,s=2,pad=1)", "maxpool(2,s=3)"])
def test_the_routed_profile_per_coordinate_against_real_nets(pool: str) -> None:
    """A 1x1 first conv puts each input coordinate under its own windows: ``z_c(i) = w_c x_i``, so the arg-max
    and the gate depend on ``x`` and the sign of ``w_c`` only, and the routed profile is exact for i.i.d.
    inputs. Inside two windows (odd positions of the 3/2/1 pool) a coordinate collects two shares, one
    that no window reaches (the 2/3 pool's third rows and columns) none: per position class, the mean of
    ``(d f / d x_i)^2`` over 200 He nets agrees with the law within 5 se, and a planted 1.5x on one class
    (what a profile spread evenly over the window's inputs would miss) is caught."""
    import torch

    from advdim.build import build
    from advdim.gradients import input_gradient

    spec = parse(f"1x8x8 > conv(16,k=1) > relu > {pool} > flatten > dense(4)")
    law = _graph.input_variances(spec)[0]
    nets, acc = 200, []
    for j in range(nets):
        net = build(spec, seed=1000 + j, dtype=torch.float64)
        x = torch.randn((8, *spec.input_shape), generator=torch.Generator().manual_seed(j), dtype=torch.float64)
        acc.append((input_gradient(net, x, "logit", 0) ** 2).mean(0)[0].numpy())
    sample = np.stack(acc)  # (nets, 8, 8)
    classes = (np.arange(8)[:, None] % 3 if pool == "maxpool(2,s=3)" else np.arange(8)[:, None] % 2) * 3 + (
        np.arange(8)[None, :] % 3 if pool == "maxpool(2,s=3)" else np.arange(8)[None, :] % 2)
    for k in np.unique(classes):
        per_net = sample[:, classes == k].sum(axis=1)
        want = float(law[classes == k].sum())
        if want == 0:
            assert np.all(per_net == 0)
            continue
        assert _agrees(per_net, want), (k, per_net.mean(), want)
        assert not _agrees(per_net, 1.5 * want)
    if pool == "maxpool(2,s=3)":
        assert np.any(law == 0)  # rows and columns that no window reaches
    else:
        assert float(law.max()) > 1.9 * float(law.min())  # inputs inside two windows collect two shares
