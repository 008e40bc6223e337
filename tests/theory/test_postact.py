"""Post-activation residual blocks (ReLU after the add): the wide-limit chain law of theory/_postact.py.

Three kinds of check: exact identities (the Bernoulli(1/2) gates give the path sum; one He block has
p = 5/8 and R(0, 1) = 3/8 in closed form), agreement of two computations (the grid integrals against
a scalar Monte Carlo of the chains), and the law against Monte Carlo of real nets (``advdim.build``,
eval-mode batch norm), extrapolated in 1/C from 16 and 64 channels, with planted errors rejected by
the same check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from advdim.theory import _postact, predict
from advdim.theory._numeric import SIGMAS, mc_grad_sq
from advdim.theory._postact import GateLaw
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from advdim.arch import parse
from advdim.errors import HypothesisError


def block_spec(c: int, s: int, k: int, pad: str = "circular", bn: bool = True,
               head: str = "flatten > dense(10)") -> str:
    """``stem conv(c) > [bn] > relu > k x (res(conv(c) > [bn] > relu > conv(c) > [bn]) > relu) > head``."""
    b = "batchnorm > " if bn else ""
    block = f"res(conv({c},pad={pad}) > {b}relu > conv({c},pad={pad}){' > batchnorm' if bn else ''}) > relu"
    return f"3x{s}x{s} > conv({c},pad={pad}) > {b}relu > " + " > ".join([block] * k) + f" > {head}"


PROJECTION = ("3x8x8 > conv(8,pad=zeros) > batchnorm > relu > res(conv(8,pad=zeros) > batchnorm > relu > "
              "conv(8,pad=zeros) > batchnorm) > relu > res(conv(16,s=2,pad=zeros) > batchnorm > relu > "
              "conv(16,pad=zeros) > batchnorm) > relu > res(conv(16,pad=zeros) > batchnorm > relu > "
              "conv(16,pad=zeros) > batchnorm) > relu > flatten > dense(10)")


# ---------------------------------------------------------------------------------------------
# exact identities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [block_spec(8, 8, 3), block_spec(8, 8, 3, "zeros"), PROJECTION])
def test_bernoulli_half_gates_give_the_path_sum(text: str) -> None:
    """With R(a, b) = 2^-(b-a+1) the run recursion is the path sum (every step of ``_graph._back``)."""
    spec = parse(text)
    half = _postact.input_variances(spec, gate_law=GateLaw.HALF)
    np.testing.assert_allclose(half, _postact.naive_path_sum(spec), rtol=1e-12, atol=0)


@given(c=st.integers(1, 4), k=st.integers(1, 3), pad=st.sampled_from(["circular", "zeros", "reflect"]),
       bn=st.booleans(), down=st.integers(0, 3), scale=st.sampled_from([1.0, 0.5]), logit=st.integers(0, 2))
@settings(max_examples=25)
def test_bernoulli_half_gates_give_the_path_sum_on_any_stack(c: int, k: int, pad: str, bn: bool, down: int,
                                                             scale: float, logit: int) -> None:
    """The same identity on random stacks: widths, depths, paddings, batch norms, a projection block at any
    depth (or none), a branch scale, any logit."""
    assume(down >= k or k >= 2)  # at least one identity block (a projection block alone has the plain path sum)
    b = "batchnorm > " if bn else ""
    widths = [c if j <= down else 2 * c for j in range(k)]  # the projection block doubles the channels
    blocks = [f"res(conv({w},pad={pad}) > {b}relu > conv({w},pad={pad}){' > batchnorm' if bn else ''},scale={scale})"
              f" > relu" for w in widths]
    if down < k:
        blocks[down] = (f"res(conv({2 * c},s=2,pad={pad}) > {b}relu > conv({2 * c},pad={pad})"
                        f"{' > batchnorm' if bn else ''}) > relu")
    spec = parse(f"2x8x8 > conv({c},pad={pad}) > {b}relu > " + " > ".join(blocks) + " > flatten > dense(3)")
    half = _postact.input_variances(spec, logit=logit, gate_law=GateLaw.HALF, points=41)
    np.testing.assert_allclose(half, _postact.naive_path_sum(spec, logit=logit), rtol=1e-12, atol=0)


def test_one_block_in_closed_form() -> None:
    """He, no batch norm: v_1 = 2 E[x_0^2] = Var z_0, so z_1 = x_0 + xi with x_0 = relu(z_0), z_0, xi ~ N(0, 1):
    p_1 = 1/4 + 1/2 P(xi < |z_0|) = 5/8, R(0, 1) = 1/2 * 3/4 = 3/8, and without the stem coupling
    E||d_x f||^2 = 2 * 2 (R(0,1) + 2 p_0 p_1) = 4; the per-block law p_1 (1 + G) gives 4 * 15/16 = 3.75.  The stem's
    27 weights given z_0 = sigma |a| zeta have E||w||^2 = sigma^2 (26 + zeta^2): the run from gate 0 becomes
    E[(26 + zeta^2)/27 1(zeta > 0) Phi(zeta)] = 3/8 + 1/(4 pi 27) (int_0^inf x^2 phi Phi dx = 3/8 + 1/(4 pi)), and
    E||d_x f||^2 = 4 + 1/(27 pi)."""
    spec = parse(block_spec(8, 8, 1, bn=False))
    law = _postact.chain_law(spec, coupling=False)
    assert abs(float(law.p[1].max()) - 5 / 8) < 1e-7 and abs(float(law.p[1].min()) - 5 / 8) < 1e-7
    assert abs(float(law.runs[(0, 1)].max()) - 3 / 8) < 1e-7
    assert abs(_postact.grad_sq_norm(spec, coupling=False) - 4.0) < 1e-6
    assert abs(_postact.grad_sq_norm(spec, gate_law=GateLaw.PRODUCT) - 3.75) < 1e-6
    coupled = _postact.chain_law(spec)
    assert abs(float(coupled.runs[(0, 1)].max()) - (3 / 8 + 1 / (4 * math.pi * 27))) < 1e-7
    assert abs(_postact.grad_sq_norm(spec) - (4 + 1 / (27 * math.pi))) < 1e-6


def test_a_max_pool_after_the_stem_starts_the_chains_at_the_window_max() -> None:
    """maxpool(2): gate 0 is "the max of four independent centred Gaussians > 0", open w.p. 1 - 2^-4, and
    the arg-max is each entry w.p. 1/4 in the interior (zero padding lowers the border entries' variance)."""
    spec = parse("3x8x8 > conv(8,pad=zeros) > relu > maxpool(2) > res(conv(8,pad=zeros) > relu > conv(8,pad=zeros))"
                 " > relu > flatten > dense(10)")
    law = _postact.chain_law(spec)
    assert law.route is not None and np.allclose(law.route.reshape(4, 4, 4)[1:3, 1:3], 0.25, rtol=0, atol=1e-9)
    np.testing.assert_allclose(law.p[0], 15 / 16, rtol=1e-7)
    assert 15 / 16 * 0.5 < float(law.runs[(0, 1)].min()) < float(law.p[1].max()) < 1


def test_the_grid_integrals_have_converged() -> None:
    """Gregory's rule on 401 nodes against 1601: the discretisation error is below 1e-7 relative."""
    spec = parse(block_spec(8, 8, 4, "zeros"))
    coarse, fine = _postact.grad_sq_norm(spec), _postact.grad_sq_norm(spec, points=1601)
    assert abs(coarse / fine - 1) < 1e-7


@pytest.mark.parametrize(("pad", "where"), [("circular", (0, 0)), ("zeros", (0, 0)), ("zeros", (0, 3))])
def test_the_chains_match_a_scalar_monte_carlo(pad: str, where: tuple[int, int]) -> None:
    """The grid's run probabilities against 4 x 10^5 draws of the scalar chain with the same variance ratios
    (5 standard errors of a binomial proportion; fixed seed), in the bulk and at zero-padded borders, where
    the branch variance v_k(p) reads fewer taps."""
    spec = parse(block_spec(8, 8, 4, pad))
    law = _postact.chain_law(spec, coupling=False)
    rng = np.random.default_rng(1)
    n = 400_000
    z = rng.standard_normal(n)  # units of sd(z_0)
    opened = [z > 0]
    x = np.maximum(z, 0)
    for k in range(1, 5):
        ratio = float(law.ratio[k][(0, *where)])  # v_k(p) / E[x_{k-1}(p)^2] at this position
        z = x + math.sqrt(ratio * float(np.mean(x**2))) * rng.standard_normal(n)
        opened.append(z > 0)
        x = np.maximum(z, 0)
    for (a, b), r in law.runs.items():
        hit = np.all(np.stack(opened[a: b + 1]), axis=0).mean()
        se = math.sqrt(hit * (1 - hit) / n)
        assert abs(hit - float(r[(0, *where)])) < SIGMAS * se, (a, b, hit, float(r[(0, *where)]))


def test_input_fluctuations_move_the_law_little() -> None:
    """The default uses the input's expected moments; the exact wide limit given each input (patch norms
    fluctuate, so q_0 varies over positions) averages within 1% of it (measured: -0.35% at four blocks)."""
    spec = parse(block_spec(8, 4, 2))
    x = np.random.default_rng(0).standard_normal((16, 3, 4, 4))
    assert abs(_postact.grad_sq_norm(spec, inputs=x) / _postact.grad_sq_norm(spec) - 1) < 0.01


# ---------------------------------------------------------------------------------------------
# the prediction record and the refusals
# ---------------------------------------------------------------------------------------------


def test_predict_uses_the_chain_law_with_its_level_and_the_exponent_of_the_paper() -> None:
    spec = parse(block_spec(8, 8, 2, "zeros"))
    pred = predict(spec)
    assert pred.has_law and not pred.hypotheses["H1"] and pred.approximate == _postact.LEVEL
    assert pred.grad_sq_norm(8) == pytest.approx(_postact.grad_sq_norm(spec), rel=1e-12)
    assert pred.beta == 0.0 and pred.exponent == {"1": 0.5, "2": 0.0, "inf": -0.5}


def test_the_bulk_law_does_not_depend_on_d() -> None:
    """Circular padding: every position runs the same chains, the totals agree at every side (beta = 0);
    zero padding: the border term fades as 1/s, so the q = 1 slope of the prediction tends to 1/2."""
    totals = [_postact.grad_sq_norm(parse(block_spec(8, s, 3))) for s in (4, 8, 16)]
    assert max(totals) / min(totals) - 1 < 1e-9
    norms = []
    for s in (8, 16, 32):
        pred = predict(parse(block_spec(8, s, 3, "zeros")))
        norms.append(pred.expected_norm(1, s))
    slopes = np.diff(np.log(norms)) / np.diff(np.log([3.0 * s * s for s in (8, 16, 32)]))
    assert 0.5 < slopes[1] and slopes[1] - 0.5 < 0.6 * (slopes[0] - 0.5)  # 0.602, 0.549 (0.524 at s = 64): O(1/s)


@pytest.mark.parametrize(("text", "words"), [
    (block_spec(8, 8, 2, head="globalavgpool > dense(10)"), "pools after post-activation blocks"),
    ("3x8x8 > conv(8) > relu > avgpool(2) > res(conv(8) > relu > conv(8)) > relu > flatten > dense(2)",
     "must follow a ReLU on a conv output"),
    ("3x8x8 > conv(8) > relu > flatten > dense(2)", "no post-activation block"),
])
def test_outside_the_law_it_says_why(text: str, words: str) -> None:
    with pytest.raises(HypothesisError, match=words):
        _postact.layout(parse(text))


# ---------------------------------------------------------------------------------------------
# the law against Monte Carlo of real nets, and planted errors
# ---------------------------------------------------------------------------------------------


def extrapolated(text: str, nets: tuple[int, int] = (300, 300), seed: int = 0) -> tuple[float, float]:
    """``(mean, se)`` of E||d_x f||_2^2 extrapolated to infinite width from real nets at 16 and 64 channels.

    The finite-width excess is O(1/C) (measured +7.7% at C = 16, +2.1% at C = 64 for four blocks), so
    ``(4 m_64 - m_16) / 3`` removes it; its standard error is ``sqrt(16 se_64^2 + se_16^2) / 3``."""
    m16 = mc_grad_sq(parse(text.format(c=16)), n_nets=nets[0], seed=seed)
    m64 = mc_grad_sq(parse(text.format(c=64)), n_nets=nets[1], seed=seed + 1)
    se = [float(m.std(ddof=1)) / math.sqrt(m.size) for m in (m16, m64)]
    return (4 * float(m64.mean()) - float(m16.mean())) / 3, math.sqrt(16 * se[1] ** 2 + se[0] ** 2) / 3


def agrees(predicted: float, mean: float, se: float) -> bool:
    """Within SIGMAS = 5 standard errors: two-sided false-failure rate 5.7e-7 for a normal mean."""
    return abs(mean - predicted) <= SIGMAS * se


@pytest.mark.slow
@pytest.mark.parametrize("text", [
    block_spec(0, 8, 2, "circular").replace("(0,", "({c},"),
    block_spec(0, 8, 2, "zeros").replace("(0,", "({c},"),
    block_spec(0, 16, 2, "zeros").replace("(0,", "({c},").replace("batchnorm > relu > res", "batchnorm > relu > "
                                                                      "maxpool(2) > res", 1),
], ids=["circular", "zeros", "maxpool"])
def test_real_nets_follow_the_chain_law_and_not_the_planted_ones(text: str) -> None:
    """Two BasicBlock-like blocks (advdim.build, He, eval batch norm; s = 8, or s = 16 with a max pool after
    the stem), 300 nets x 8 inputs per width, fixed seed.  Rejected by the same check: the naive path sum
    (p = 1/2), the per-block law p_k (1 + G_k) and the law off by 10%."""
    law = _postact.grad_sq_norm(parse(text.format(c=16)))
    mean, se = extrapolated(text)
    assert se < 0.02 * law  # power: a 10% error is at least 5 standard errors away
    assert agrees(law, mean, se), (law, mean, se)
    for gate_law in (GateLaw.HALF, GateLaw.PRODUCT):
        assert not agrees(_postact.grad_sq_norm(parse(text.format(c=16)), gate_law=gate_law), mean, se)
    assert not agrees(1.1 * law, mean, se) and not agrees(law / 1.1, mean, se)
