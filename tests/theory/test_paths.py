"""The path-sum law against explicit path enumeration, Monte Carlo over real nets, and S by brute force.

The reference here enumerates every path of the explicit connection graph (edges built by
indexing a padded index map with ``np.pad``, independently of ``theory._graph``'s tap matrices).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from advdim.theory import d, predict
from advdim.theory._graph import input_variances, path_degree_classes
from advdim.theory._numeric import mc_grad_sq, mc_verdict
from hypothesis import given, settings
from hypothesis import strategies as st

from advdim.arch import (
    AvgPool,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Padding,
    ReLU,
    Spec,
    family,
    parse,
)
from advdim.build import Init
from advdim.errors import HypothesisError
from advdim.testing import relu_specs

_NP_MODE = {Padding.CIRCULAR: "wrap", Padding.REFLECT: "reflect", Padding.ZEROS: "constant"}


def _edges(spec: Spec, init: Init) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Per layer: (src, dst, second moment of the edge, is a graph edge) over flat node indices."""
    shapes = spec.shapes()
    out = []
    nonneg = False  # a ReLU on a non-negative average of ReLU outputs passes every active path
    for layer, shp_in, shp_out in zip(spec.layers, shapes, shapes[1:]):
        n_in = int(np.prod(shp_in))
        idx_in = np.arange(n_in).reshape(shp_in)
        src: list[int] = []
        dst: list[int] = []
        m2: list[float] = []
        graph = True
        if isinstance(layer, Conv):
            c_in, h, w = shp_in
            fan_in, fan_out = c_in * layer.kernel**2, layer.out_channels * layer.kernel**2
            var = init.weight_variance(fan_in, fan_out, rows=layer.out_channels)
            p = layer.pad
            if layer.padding is Padding.VALID or p == 0:
                padded = idx_in
            elif layer.padding is Padding.ZEROS:
                padded = np.pad(idx_in, ((0, 0), (p, p), (p, p)), mode="constant", constant_values=-1)
            else:
                padded = np.pad(idx_in, ((0, 0), (p, p), (p, p)), mode=_NP_MODE[layer.padding])
            idx_out = np.arange(int(np.prod(shp_out))).reshape(shp_out)
            for co in range(shp_out[0]):
                for oy in range(shp_out[1]):
                    for ox in range(shp_out[2]):
                        for ty in range(layer.kernel):
                            for tx in range(layer.kernel):
                                y = oy * layer.stride + ty * layer.dilation
                                x = ox * layer.stride + tx * layer.dilation
                                for ci in range(c_in):
                                    s = int(padded[ci, y, x])
                                    if s >= 0:
                                        src.append(s)
                                        dst.append(int(idx_out[co, oy, ox]))
                                        m2.append(var)
        elif isinstance(layer, Dense):
            var = init.weight_variance(shp_in[0], layer.out_features)
            for j in range(layer.out_features):
                for i in range(shp_in[0]):
                    src.append(i)
                    dst.append(j)
                    m2.append(var)
        elif isinstance(layer, AvgPool):
            c, h, w = shp_in
            for ch in range(c):
                for y in range(h):
                    for x in range(w):
                        src.append(int(idx_in[ch, y, x]))
                        dst.append(ch * (h // layer.size) * (w // layer.size) + (y // layer.size) * (w // layer.size)
                                   + x // layer.size)
                        m2.append(1.0 / layer.size**4)
        elif isinstance(layer, GlobalAvgPool):
            c, h, w = shp_in
            for ch in range(c):
                for i in idx_in[ch].ravel():
                    src.append(int(i))
                    dst.append(ch)
                    m2.append(1.0 / (h * w) ** 2)
        elif isinstance(layer, (Flatten, ReLU)):
            graph = False
            src = list(range(n_in))
            dst = list(range(n_in))
            m2 = [0.5 if isinstance(layer, ReLU) and not nonneg else 1.0] * n_in
        else:
            raise AssertionError(f"reference does not cover {layer.kind}")
        if isinstance(layer, (Conv, Dense)):
            nonneg = False
        elif isinstance(layer, ReLU):
            nonneg = True
        out.append((np.array(src), np.array(dst), np.array(m2), graph))
    return out


def enumerate_paths(spec: Spec, init: Init = Init.HE, logit: int = 0) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Explicit enumeration of every path input -> f_logit.

    Returns the per-input sum of path products of second moments (shape ``input_shape``) and,
    per input node, the sorted tuple of path-degree codes (a multiset hash of the in-degrees of
    the nodes each path enters).
    """
    layers = _edges(spec, init)
    rng = np.random.default_rng(12345)
    d = spec.d
    origin = np.arange(d)
    node = np.arange(d)
    prod = np.ones(d)
    code = np.zeros(d, dtype=np.uint64)
    hashes: dict[int, np.uint64] = {}
    for src, dst, m2, graph in layers:
        n_src = int(max(src.max(), node.max())) + 1
        indeg = np.bincount(dst) if graph else None
        order = np.argsort(src, kind="stable")
        src, dst, m2 = src[order], dst[order], m2[order]
        start = np.searchsorted(src, np.arange(n_src))
        count = np.bincount(src, minlength=n_src)
        reps = count[node]
        first = np.repeat(start[node], reps)
        offset = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        edge = first + offset
        origin, prod, code = np.repeat(origin, reps), np.repeat(prod, reps) * m2[edge], np.repeat(code, reps)
        node = dst[edge]
        if graph:
            assert indeg is not None
            for deg in np.unique(indeg[node]):
                hashes.setdefault(int(deg), np.uint64(rng.integers(0, 2**63)))
            with np.errstate(over="ignore"):
                code = code + np.array([hashes[int(g)] for g in indeg[node]], dtype=np.uint64)
    keep = node == logit
    var = np.bincount(origin[keep], weights=prod[keep], minlength=d).reshape(spec.input_shape)
    per_input = [tuple(sorted(code[keep & (origin == i)].tolist())) for i in range(d)]
    return var, per_input


def small_specs(paddings: tuple[Padding, ...] = tuple(Padding)) -> st.SearchStrategy[Spec]:
    return relu_specs(max_side=5, max_channels=2, max_layers=2, paddings=paddings).filter(
        lambda s: not any(isinstance(layer, GlobalMaxPool) for layer in s.layers))


# ---------------------------------------------------------------------------------------------
# fast propagation == explicit enumeration
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(small_specs(), st.sampled_from([Init.HE, Init.GLOROT, Init.LECUN, Init.TORCH]))
def test_propagation_equals_path_enumeration(spec: Spec, init: Init) -> None:
    ref, _ = enumerate_paths(spec, init)
    fast = input_variances(spec, init.value)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(small_specs())
def test_s_classes_equal_brute_force(spec: Spec) -> None:
    _, per_input = enumerate_paths(spec)
    fast = path_degree_classes(spec).ids.ravel()
    brute = {key: i for i, key in enumerate(dict.fromkeys(per_input))}
    brute_ids = np.array([brute[key] for key in per_input])
    pairs = set(zip(fast.tolist(), brute_ids.tolist()))
    # same partition of the input nodes: the pairing is a bijection between class ids
    assert len(pairs) == len(set(fast.tolist())) == len(set(brute_ids.tolist()))


def test_avgpool_and_gap_against_enumeration() -> None:
    for text in ("2x4x4 > conv(2,k=3,pad=zeros) > avgpool(2) > relu > flatten > dense(3)",
                 "1x6x6 > conv(2,k=3,s=2,pad=circular) > relu > globalavgpool > dense(2)",
                 "1x6x6 > conv(1,k=3,pad=reflect) > relu > avgpool(3) > relu > flatten > dense(2)"):
        spec = parse(text)
        ref, per_input = enumerate_paths(spec)
        np.testing.assert_allclose(input_variances(spec), ref, rtol=1e-12)
        fast = path_degree_classes(spec)
        assert fast.symmetric == (len(set(per_input)) == 1)


def test_symbolic_law_equals_exact_sum_without_zero_padding() -> None:
    for name, params in (("dense", {"widths": (16, 8)}), ("strided", {"channels": 4}),
                         ("avgpool", {"channels": 4, "final": 2}), ("gap", {"channels": 4}),
                         ("strided", {"channels": 4, "padding": Padding.REFLECT})):
        for init in ("he", "glorot", "lecun", "torch", "orthogonal"):
            pred = predict(family(name, **params), sizes=(8, 16, 32), init=init)
            assert pred.expr_exact, (name, init)
            for s in pred.sizes:
                exact = pred.grad_sq_norm(s)
                assert math.isclose(float(pred.grad_sq_norm_expr.subs(d, 3 * s * s)), exact, rel_tol=1e-9)


def test_he_law_is_two_and_avgpool_is_damped() -> None:
    assert predict(family("strided"), sizes=(8, 16)).grad_sq_norm_expr == 2
    pred = predict(family("avgpool", final=2, channels=4), sizes=(8, 16, 32))
    # Appendix B: each 2x2 average pool divides E||g||^2 by 4: 2 * 4^-m with m = log2(s/final)
    assert [pred.grad_sq_norm(s) for s in (8, 16, 32)] == pytest.approx([2 / 16, 2 / 64, 2 / 256], rel=1e-12)
    assert str(pred.grad_sq_norm_expr) == "24/d"
    assert pred.exponent == {"1": 0.0, "2": -0.5, "inf": -1.0}


def test_zero_padding_reduces_the_sum_and_breaks_s() -> None:
    pred = predict(family("strided", padding=Padding.ZEROS), sizes=(8, 16, 32))
    sums = [pred.grad_sq_norm(s) for s in pred.sizes]
    assert all(v < 2 for v in sums) and sums == sorted(sums)  # borders matter less as s grows
    assert not pred.hypotheses["S"] and not pred.hypotheses["H3"] and not pred.expr_exact
    assert 0 < pred.breaking_share[8] < 1


def test_max_pooling_has_no_law() -> None:
    pred = predict(family("maxpool"), sizes=(8, 16))
    assert not pred.has_law and not pred.hypotheses["H1"]
    assert pred.exponent == {"1": None, "2": None, "inf": None}
    assert pred.expected_norm(2, 8) is None
    with pytest.raises(HypothesisError):
        pred.grad_sq_norm(8)


# ---------------------------------------------------------------------------------------------
# Monte Carlo over real He nets
# ---------------------------------------------------------------------------------------------

MC_SPECS = (
    "3x6x6 > conv(3,k=3,s=2,pad=zeros) > relu > flatten > dense(8) > relu > dense(4)",
    "2x4x4 > conv(3,k=3,pad=circular) > relu > conv(3,k=3,s=2,dil=1,pad=circular) > relu > flatten > dense(3)",
    "2x8x8 > conv(4,k=3,pad=circular) > avgpool(2) > relu > conv(4,k=3,s=2,pad=zeros) > relu > globalavgpool"
    " > dense(5)",
    "1x6x6 > conv(2,k=3,dil=2,pad=valid) > relu > flatten > dense(6) > relu > dense(2)",
)


@pytest.mark.parametrize("text", MC_SPECS)
def test_monte_carlo_agrees_with_path_sum(text: str) -> None:
    # 5 standard errors, two-sided: false-failure rate ~1e-6 per spec for a normal mean (see mc_verdict)
    spec = parse(text)
    predicted = float(input_variances(spec).sum())
    samples = mc_grad_sq(spec, "he", 0, n_nets=120, seed=7)
    verdict = mc_verdict(spec, predicted, samples, "E||d_x f||^2")
    assert verdict.passed, verdict


@settings(max_examples=4, deadline=None, derandomize=True)
@given(small_specs(paddings=(Padding.CIRCULAR, Padding.ZEROS, Padding.VALID)))
def test_monte_carlo_property(spec: Spec) -> None:
    # random small specs without reflect padding (where H5's cross terms can appear); 5 sigma
    samples = mc_grad_sq(spec, "he", 0, n_nets=100, seed=3)
    verdict = mc_verdict(spec, float(input_variances(spec).sum()), samples, "E||d_x f||^2")
    assert verdict.passed, verdict


def test_planted_error_fails_the_monte_carlo_check() -> None:
    # a wrong ReLU factor (1 instead of 1/2 on each of the two ReLUs) quadruples the prediction
    spec = parse(MC_SPECS[0])
    samples = mc_grad_sq(spec, "he", 0, n_nets=120, seed=7)
    predicted = float(input_variances(spec).sum())
    assert mc_verdict(spec, predicted, samples, "right").passed
    assert not mc_verdict(spec, 4 * predicted, samples, "planted: ReLU factor 1").passed
    # and a wrong average-pool factor (1/k^2 instead of 1/k^4 per edge)
    pooled = parse(MC_SPECS[2])
    samples = mc_grad_sq(pooled, "he", 0, n_nets=120, seed=7)
    assert not mc_verdict(pooled, 4 * float(input_variances(pooled).sum()), samples, "planted: pool").passed


def test_pooling_before_the_relu_makes_h1_approximate_but_keeps_the_law() -> None:
    pooled = predict(family("avgpool"), sizes=(8, 16), symmetry=False)
    assert pooled.has_law and not pooled.hypotheses["H1"] and "before the ReLU" in pooled.reasons["H1"]
    assert pooled.grad_sq_norm(16) > 0 and pooled.exponent["2"] is not None
    # pooling after the ReLU (global-average-pool head) leaves H1 as it is
    assert predict(family("gap"), sizes=(8, 16), symmetry=False).hypotheses["H1"]
