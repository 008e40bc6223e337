"""Residual blocks, normalisation and attention in the path-sum theory (issue 14, part 2).

The reference here builds the explicit connection graph of a residual net (a DAG: a residual sum
node receives the skip's edges and the edges of the branch's last layer) and enumerates every
path, independently of ``theory._graph``'s tap matrices and recursion.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
from advdim.theory import d, predict
from advdim.theory._graph import input_variances, no_law_layers, path_degree_classes
from advdim.theory._law import layer_factors, path_sum_cost
from advdim.theory._numeric import mc_grad_sq, mc_verdict
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from advdim.arch import Conv, Dense, Flatten, Padding, ReLU, Residual, Spec, family, parse
from advdim.errors import HypothesisError

EXAMPLE = ("3x8x8 > conv(16,pad=circular) > relu > res(conv(16,pad=circular) > relu > conv(16,pad=circular), "
           "scale=0.5) > flatten > dense(10)")


# ---------------------------------------------------------------------------------------------
# the example: E||d_x f||_2^2 = 2 (1 + 2 * 0.5^2) = 3
# ---------------------------------------------------------------------------------------------


def test_the_example_is_three_exactly() -> None:
    records = Spec((3, 8, 8), (Conv(16), ReLU(), Residual((Conv(16), ReLU(), Conv(16)), 0.5), Flatten(), Dense(10)))
    assert parse(EXAMPLE) == records
    assert float(input_variances(records).sum()) == pytest.approx(3.0, rel=1e-12)
    assert [str(f) for _, _, f in layer_factors(records, "he")] == ["2", "1/2", "3/2", "2"]
    pred = predict(records)
    assert pred.has_law and pred.grad_sq_norm_expr == 3 and pred.expr_exact and pred.approximate is None
    assert pred.beta == 0.0 and pred.exponent == {"1": 0.5, "2": 0.0, "inf": -0.5}
    held, why = pred.hypotheses, pred.reasons
    assert not held["H3"] and "identity skip edge has the deterministic weight 1" in why["H3"]
    assert not held["H1"] and "layer 2.2 conv is not followed by a ReLU" in why["H1"]
    assert held["H2"] and held["H4"] and held["H5"] and held["S"]  # circular padding: S holds
    # the same layers at every size: 3 at every d, so the paper's exponents
    over = predict(EXAMPLE, (8, 16, 32))
    assert [over.grad_sq_norm(s) for s in over.sizes] == pytest.approx([3.0] * 3, rel=1e-12)
    assert over.predicted_slope["2"] == pytest.approx(0.0, abs=1e-3)


def test_the_cli_prints_three(capsys: pytest.CaptureFixture[str]) -> None:
    from advdim.cli import main

    assert main(["theory", EXAMPLE]) == 0
    assert "E||d_x f_k||_2^2 = 3" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# reference: explicit DAG, every path enumerated
# ---------------------------------------------------------------------------------------------

_NP_MODE: dict[Padding, Literal["wrap", "reflect"]] = {Padding.CIRCULAR: "wrap", Padding.REFLECT: "reflect"}


class _Dag:
    """Nodes with a non-negativity flag; edges (src, dst, second moment, is a graph edge)."""

    def __init__(self) -> None:
        self.n = 0
        self.nonneg: list[bool] = []
        self.edges: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []

    def nodes(self, shape: tuple[int, ...], nonneg: bool) -> np.ndarray:
        ids = np.arange(self.n, self.n + math.prod(shape)).reshape(shape)
        self.n += ids.size
        self.nonneg += [nonneg] * ids.size
        return ids

    def add(self, src: np.ndarray, dst: np.ndarray, m2: float | np.ndarray, graph: bool = True) -> None:
        self.edges.append((np.asarray(src).ravel(), np.asarray(dst).ravel(),
                           np.broadcast_to(np.asarray(m2, dtype=np.float64), np.asarray(src).ravel().shape), graph))


def _conv_pairs(layer: Conv, shp_in: tuple[int, ...], shp_out: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(input index, output index) per tap of ``layer``, from a padded index map (np.pad)."""
    idx_in = np.arange(math.prod(shp_in)).reshape(shp_in)
    p = layer.pad
    if p == 0:
        padded = idx_in
    elif layer.padding is Padding.ZEROS:
        padded = np.pad(idx_in, ((0, 0), (p, p), (p, p)), mode="constant", constant_values=-1)
    else:
        padded = np.pad(idx_in, ((0, 0), (p, p), (p, p)), mode=_NP_MODE[layer.padding])
    idx_out = np.arange(math.prod(shp_out)).reshape(shp_out)
    src, dst = [], []
    for co in range(shp_out[0]):
        for oy in range(shp_out[1]):
            for ox in range(shp_out[2]):
                for ty in range(layer.kernel):
                    for tx in range(layer.kernel):
                        y, x = oy * layer.stride + ty * layer.dilation, ox * layer.stride + tx * layer.dilation
                        for ci in range(shp_in[0]):
                            if padded[ci, y, x] >= 0:
                                src.append(int(padded[ci, y, x]))
                                dst.append(int(idx_out[co, oy, ox]))
    return np.array(src), np.array(dst)


def _build(dag: _Dag, layers: tuple, ids: np.ndarray, into: np.ndarray | None = None,
           m2_scale: float = 1.0) -> np.ndarray:
    """Add ``layers`` reading the nodes ``ids``; with ``into``, the last layer writes into those nodes
    (a residual sum) with its second moments times ``m2_scale``.  He weights throughout."""
    for i, layer in enumerate(layers):
        last = into is not None and i == len(layers) - 1
        scale = m2_scale if last else 1.0
        shp_in = ids.shape
        shp_out = layer.out_shape(shp_in)
        src_nonneg = all(dag.nonneg[int(j)] for j in ids.ravel())
        if isinstance(layer, (ReLU, Flatten)):
            assert not last, "the reference needs branches that end in a layer with edges"
            if isinstance(layer, Flatten):
                ids = ids.reshape(-1)
                continue
            out = dag.nodes(shp_in, True)
            dag.add(ids, out, np.where(np.array([dag.nonneg[int(j)] for j in ids.ravel()]), 1.0, 0.5), graph=False)
            ids = out
            continue
        out = into if into is not None and last else dag.nodes(shp_out, layer.kind == "avgpool" and src_nonneg)
        if isinstance(layer, Conv):
            s, t = _conv_pairs(layer, shp_in, shp_out)
            dag.add(ids.ravel()[s], out.ravel()[t], scale * 2.0 / (shp_in[0] * layer.kernel**2))
        elif isinstance(layer, Dense):
            s, t = np.meshgrid(np.arange(shp_in[0]), np.arange(shp_out[0]), indexing="ij")
            dag.add(ids.ravel()[s.ravel()], out.ravel()[t.ravel()], scale * 2.0 / shp_in[0])
        elif layer.kind == "avgpool":
            c, h, w = shp_in
            k = layer.size
            yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            for ch in range(c):
                dag.add(ids[ch], out[ch][yy // k, xx // k], scale / k**4)
        elif isinstance(layer, Residual):
            # the skip's edges (identity: weight 1; projection: He) and the branch's last edges (times a^2)
            # enter the sum nodes; a block ending an outer branch writes into the outer sum nodes
            proj = layer.projection(shp_in)
            if proj is None:
                dag.add(ids, out, scale * 1.0)
            elif isinstance(proj, Conv):
                s, t = _conv_pairs(proj, shp_in, shp_out)
                dag.add(ids.ravel()[s], out.ravel()[t], scale * 2.0 / shp_in[0])
            else:
                s, t = np.meshgrid(np.arange(shp_in[0]), np.arange(shp_out[0]), indexing="ij")
                dag.add(ids.ravel()[s.ravel()], out.ravel()[t.ravel()], scale * 2.0 / shp_in[0])
            _build(dag, layer.branch, ids, out, scale * float(layer.scale) ** 2)
        else:
            raise AssertionError(f"reference does not cover {layer.kind}")
        ids = out
    return ids


def enumerate_paths(spec: Spec, logit: int = 0) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Every path input -> f_logit of the explicit DAG: per input node the sum of the products of
    second moments and ReLU factors (shape ``input_shape``), and the sorted path-degree codes."""
    dag = _Dag()
    inputs = dag.nodes(spec.input_shape, False)
    logits = _build(dag, spec.layers, inputs)
    src = np.concatenate([e[0] for e in dag.edges])
    dst = np.concatenate([e[1] for e in dag.edges])
    m2 = np.concatenate([e[2] for e in dag.edges])
    graph = np.concatenate([np.full(e[0].size, e[3]) for e in dag.edges])
    indeg = np.bincount(dst[graph], minlength=dag.n)
    rng = np.random.default_rng(2024)
    hashes = rng.integers(0, 2**63, size=int(indeg.max()) + 1).astype(np.uint64)
    order = np.argsort(src, kind="stable")
    src, dst, m2, graph = src[order], dst[order], m2[order], graph[order]
    start = np.searchsorted(src, np.arange(dag.n))
    count = np.bincount(src, minlength=dag.n)
    origin = node = inputs.ravel().copy()
    prod = np.ones(node.size)
    code = np.zeros(node.size, dtype=np.uint64)
    done_o, done_p, done_c = [], [], []
    target = int(logits[logit])
    while node.size:
        stop = node == target
        done_o.append(origin[stop])
        done_p.append(prod[stop])
        done_c.append(code[stop])
        go = count[node] > 0
        origin, node, prod, code = origin[go], node[go], prod[go], code[go]
        reps = count[node]
        first = np.repeat(start[node], reps)
        edge = first + np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        origin, prod, code = np.repeat(origin, reps), np.repeat(prod, reps) * m2[edge], np.repeat(code, reps)
        node = dst[edge]
        with np.errstate(over="ignore"):
            code = code + np.where(graph[edge], hashes[indeg[node]], np.uint64(0))
    o, p, c = np.concatenate(done_o), np.concatenate(done_p), np.concatenate(done_c)
    var = np.bincount(o, weights=p, minlength=spec.d).reshape(spec.input_shape)
    per_input = [tuple(sorted(c[o == i].tolist())) for i in range(spec.d)]
    return var, per_input


def _same_partition(a: np.ndarray, b: list[tuple[int, ...]]) -> bool:
    ids = {key: i for i, key in enumerate(dict.fromkeys(b))}
    pairs = set(zip(a.ravel().tolist(), [ids[key] for key in b]))
    return len(pairs) == len(set(a.ravel().tolist())) == len(ids)


REFERENCE_SPECS = (
    "1x4x4 > conv(2) > relu > res(conv(2) > relu > conv(2), scale=0.5) > flatten > dense(2)",
    "1x4x4 > conv(2,pad=zeros) > relu > res(conv(2,pad=zeros) > relu > conv(2,pad=zeros), scale=0.3) > flatten"
    " > dense(2)",
    # projection (1x1 stride-2 conv) and a stride-2 branch with zero padding
    "2x4x4 > conv(2) > relu > res(conv(3,s=2,pad=zeros) > relu > conv(3), scale=1.0) > flatten > dense(2)",
    # an average pool ending the branch, projection on the skip
    "1x4x4 > conv(2,pad=reflect) > relu > res(conv(2) > relu > conv(2) > avgpool(2), scale=2.0) > flatten > dense(2)",
    # nested blocks on flat inputs; ReLUs on symmetric sums; a dense projection
    "1x2x2 > flatten > dense(3) > res(dense(3) > res(dense(3) > relu > dense(3), scale=0.7) > relu > dense(3))"
    " > relu > res(dense(2) > relu > dense(4), scale=0.5) > relu > dense(2)",
    # a block ending a branch: one sum node takes the outer skip's, the inner skip's and the inner branch's edges
    "1x2x2 > flatten > dense(3) > relu > res(dense(3) > res(dense(3) > relu > dense(3), scale=0.5), scale=2.0)"
    " > dense(2)",
    # pre-activation blocks (the ReLU factor 1/2 is approximate there, but the path sum is the same sum)
    "1x4x4 > conv(1) > res(relu > conv(1) > relu > conv(1)) > res(relu > conv(1) > relu > conv(1)) > relu"
    " > flatten > dense(2)",
)


@pytest.mark.parametrize("text", REFERENCE_SPECS)
def test_propagation_and_classes_equal_path_enumeration(text: str) -> None:
    spec = parse(text)
    ref, per_input = enumerate_paths(spec)
    np.testing.assert_allclose(input_variances(spec), ref, rtol=1e-10, atol=0)  # summation order
    assert _same_partition(path_degree_classes(spec).ids, per_input)


@st.composite
def residual_specs(draw: st.DrawFn) -> Spec:
    """Small conv nets with one or two residual blocks (``conv > relu > conv`` branches with any padding
    but valid, stride-2 branches with projections, several scales), then ``flatten > dense(2)``."""
    pads = st.sampled_from([Padding.CIRCULAR, Padding.ZEROS, Padding.REFLECT])
    c_in, side = draw(st.integers(1, 2)), draw(st.sampled_from([4, 6]))
    first = side
    layers: list = [Conv(draw(st.integers(1, 2)), draw(st.sampled_from([1, 3])), padding=draw(pads))]
    if draw(st.booleans()):
        layers.append(ReLU())
    for _ in range(draw(st.integers(1, 2))):
        stride = draw(st.sampled_from([1, 2])) if side % 2 == 0 and side >= 4 else 1
        c_out = draw(st.integers(1, 2))
        branch = (Conv(c_out, 3, stride, padding=draw(pads)), ReLU(),
                  Conv(c_out, draw(st.sampled_from([1, 3])), padding=draw(pads)))
        layers.append(Residual(branch, draw(st.sampled_from([0.3, 0.5, 1.0, 2.0]))))
        side //= stride
        if draw(st.booleans()):
            layers.append(ReLU())
    return Spec((c_in, first, first), (*layers, Flatten(), Dense(2)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(residual_specs())
def test_propagation_equals_path_enumeration_on_random_residual_nets(spec: Spec) -> None:
    assume(not no_law_layers(spec))
    ref, per_input = enumerate_paths(spec)
    np.testing.assert_allclose(input_variances(spec), ref, rtol=1e-10, atol=0)  # summation order
    assert _same_partition(path_degree_classes(spec).ids, per_input)


# ---------------------------------------------------------------------------------------------
# Monte Carlo over real He nets (advdim.build)
# ---------------------------------------------------------------------------------------------

MC_SPECS = (
    # projection (1x1 stride-2 conv) on a non-negative input, circular padding, scale 0.3
    "2x6x6 > conv(4) > relu > res(conv(6,s=2) > relu > conv(6), scale=0.3) > flatten > dense(3)",
    # two identity blocks with zero padding, scale 1: the second block reads a shifted sum
    "2x6x6 > conv(4,pad=zeros) > relu > res(conv(4,pad=zeros) > relu > conv(4,pad=zeros)) > res(conv(4,pad=zeros)"
    " > relu > conv(4,pad=zeros)) > flatten > dense(3)",
    # a ReLU right after the add of a symmetric stream and a branch entering through a conv: an exact 1/2
    "2x6x6 > conv(4) > res(conv(4) > relu > conv(4), scale=0.7) > relu > flatten > dense(3)",
)


@pytest.fixture(scope="module")
def mc_samples() -> dict[str, np.ndarray]:
    return {text: mc_grad_sq(parse(text), "he", 0, n_nets=150, seed=5, inputs_per_net=4) for text in MC_SPECS}


@pytest.mark.parametrize("text", MC_SPECS)
def test_monte_carlo_agrees_with_the_residual_path_sum(text: str, mc_samples: dict[str, np.ndarray]) -> None:
    # 5 standard errors of the mean over 150 nets, two-sided: 5.7e-7 for a normal mean; the per-net values
    # are skewed (products of chi-squares), so of the order of 1e-5 per spec at worst (see mc_verdict)
    spec = parse(text)
    pred = predict(spec)
    assert pred.has_law and pred.approximate is None
    verdict = mc_verdict(spec, pred.grad_sq_norm(6), mc_samples[text], "E||d_x f||^2 (residual)")
    assert verdict.passed, verdict


def test_planted_cross_terms_and_scale_fail_the_monte_carlo_check(mc_samples: dict[str, np.ndarray]) -> None:
    text = MC_SPECS[0]
    spec, samples = parse(text), mc_samples[text]
    exact = float(input_variances(spec).sum())  # 2 * 1/2 * (2 + 0.3^2 * 2) * 2 = 4.36
    assert exact == pytest.approx(4.36, rel=1e-12)
    coherent = exact * (math.sqrt(2) + 0.3 * math.sqrt(2)) ** 2 / (2 + 0.3**2 * 2)  # skip and branch fully correlated
    unscaled = exact * (2 + 2) / (2 + 0.3**2 * 2)  # the branch without its scale
    assert not mc_verdict(spec, coherent, samples, "planted: cross terms").passed
    assert not mc_verdict(spec, unscaled, samples, "planted: no scale").passed


# ---------------------------------------------------------------------------------------------
# where the argument stops
# ---------------------------------------------------------------------------------------------

NO_LAW = (
    ("2x4x4 > conv(4) > gelu > conv(4) > relu > flatten > dense(2)", "H1", "gelu's derivative"),
    ("2x4x4 > conv(4) > layernorm > relu > flatten > dense(2)", "H3", "layernorm divides each token"),
    ("4x4x4 > res(layernorm > attn(2)) > flatten > dense(2)", "H3", "layer 0.0 layernorm"),
    ("4x4x4 > conv(4) > attn(2) > relu > flatten > dense(2)", "H5", "attention weights softmax"),
    ("2x4x4 > conv(4) > batchnorm(mode=batch) > relu > flatten > dense(2)", "H4", "batch's mean and variance"),
    # (a post-activation block, the ReLU after x + a*branch(x) with x >= 0, has the chain law: test_postact.py)
    # a branch ending in a ReLU: cross terms
    ("2x4x4 > conv(4) > relu > res(conv(4) > relu) > flatten > dense(2)", "H1", "cross terms do not vanish"),
    # max pooling inside a branch
    ("2x4x4 > conv(4) > res(conv(4) > relu > conv(4) > maxpool(2)) > flatten > dense(2)", "H1", "arg-max"),
)


@pytest.mark.parametrize(("text", "key", "words"), NO_LAW)
def test_layers_without_a_path_sum_law_are_refused_with_the_reason(text: str, key: str, words: str) -> None:
    spec = parse(text)
    pred = predict(spec)
    assert not pred.has_law and not pred.hypotheses[key] and words in pred.reasons[key]
    assert pred.reasons["law"].startswith("no law:") and words in pred.reasons["law"]
    assert pred.exponent == {"1": None, "2": None, "inf": None} and pred.expected_norm(2, 4) is None
    with pytest.raises(HypothesisError, match="no path-sum law"):
        input_variances(spec)
    with pytest.raises(HypothesisError):
        pred.grad_sq_norm(4)


def test_pre_activation_blocks_have_an_approximate_law() -> None:
    pred = predict(parse("2x6x6 > conv(4) > res(relu > conv(4) > relu > conv(4)) > res(relu > conv(4) > relu"
                         " > conv(4)) > relu > flatten > dense(3)"))
    assert pred.has_law and pred.grad_sq_norm(6) == pytest.approx(8.0, rel=1e-12)
    assert pred.approximate is not None and "pre-activation residual sum" in pred.approximate
    # the first block reads the conv output (an exact 1/2); the second reads the first sum
    assert not pred.hypotheses["H1"] and "layer 2.0 relu" in pred.reasons["H1"]


def test_running_batch_norm_divides_by_one_plus_eps() -> None:
    spec = parse("2x4x4 > conv(4) > batchnorm > relu > res(conv(4) > batchnorm > relu > conv(4)) > flatten > dense(2)")
    eps = 1e-5
    assert float(input_variances(spec).sum()) == pytest.approx(2 / (1 + eps) * (1 + 2 / (1 + eps)), rel=1e-12)
    assert predict(spec).expr_exact


# ---------------------------------------------------------------------------------------------
# families: depth grows with d, so the residual factor sets the exponent
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "ratio", "e8"), [
    ({}, (2 + 2) * (1 + 2), 24.0),  # a = 1, one identity block per halving: (2 + 2a^2)(1 + 2a^2) = 12
    ({"scale": 0.5, "blocks": 2}, (2 + 0.5) * (1 + 0.5) ** 2, 2 * 2.5 * 1.5**2),
    ({"scale": 0.5, "blocks": 0, "pool": "gap"}, 2.5, 2 * 2.5 / 16),  # the 4x4 head pool: 1/16
])
def test_resnet_family_law(params: dict, ratio: float, e8: float) -> None:
    pred = predict(family("resnet", **params), sizes=(8, 16, 32), symmetry=False)
    assert pred.has_law and pred.expr_exact and pred.approximate is None
    assert [pred.grad_sq_norm(s) for s in (8, 16, 32)] == pytest.approx([e8, e8 * ratio, e8 * ratio**2], rel=1e-12)
    beta = math.log2(ratio) / 2  # E(d) = E(d0) r^(log2(s/s0)) = E(d0) (d/d0)^(log2(r)/2)
    assert pred.beta == pytest.approx(beta, rel=1e-9)
    assert pred.exponent["2"] == pytest.approx(beta / 2, rel=1e-9)
    assert float(pred.grad_sq_norm_expr.subs(d, 3 * 64**2)) == pytest.approx(e8 * ratio**3, rel=1e-9)
    assert pred.predicted_slope["2"] == pytest.approx(beta / 2, abs=0.02)
    assert all(pred.predicted_slope[q] is not None for q in ("1", "inf"))


@pytest.mark.parametrize(("target", "size"), [("resnet(padding=reflect,channels=8)", 32), ("resnet(pool=gap)", 64)])
def test_the_memory_estimate_bounds_residual_nets(target: str, size: int) -> None:
    """As tests/theory/test_cli.py for plain nets: the traced peak of the path sums and the path-degree
    classes stays below :func:`path_sum_cost` (which now walks into the branches)."""
    import tracemalloc

    from advdim.arch import parse_family

    spec = parse_family(target).spec(size, 3)
    for symmetry in (False, True):
        tracemalloc.start()
        try:
            kept = [input_variances(spec)] + ([path_degree_classes(spec)] if symmetry else [])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(kept) == 1 + symmetry
        assert peak <= path_sum_cost(spec, symmetry)[1], (target, symmetry, peak)


def test_s_is_not_decided_where_the_polynomials_explode() -> None:
    """Zero padding in a residual net: border in-degrees times paths of every length (minutes at s = 16)."""
    pred = predict(family("resnet", padding="zeros"), sizes=(8, 16))
    assert not pred.hypotheses["S"] and "not decided" in pred.reasons["S"] and pred.breaking_share == {}
    assert pred.has_law and 0 < pred.grad_sq_norm(8) < 24  # circular: 24; the borders lose paths
    # circular padding: decided (stride-2 branches with kernel 3 break S, as in plain strided nets)
    circ = predict(family("resnet"), sizes=(8,))
    assert not circ.hypotheses["S"] and "kernel 3 not a multiple of stride 2" in circ.reasons["S"]
    assert predict(parse(EXAMPLE)).hypotheses["S"]
