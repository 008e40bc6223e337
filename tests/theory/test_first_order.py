"""Lemma 2, eq. 3, Proposition 3 and the one-neuron toy: symbolic forms and numeric checkers, with planted errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
import torch
from advdim.theory import (
    check_lemma2,
    check_one_neuron,
    check_proposition3_numeric,
    check_proposition3_on_net,
    check_snr,
    eq3_epsilon,
    lemma2_maximiser,
    one_neuron,
    proposition3,
)
from advdim.theory._first_order import check_one_neuron_slope, lp, one_neuron_vulnerability
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from advdim.arch import family
from advdim.build import build
from advdim.verdict import Outcome


def test_import_does_not_load_torch() -> None:
    code = "import sys, advdim.theory; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e3, 1e3)),
       st.sampled_from([1.0, 1.3, 2.0, 3.0, 7.5, math.inf]))
def test_lemma2_maximiser_attains_the_dual_norm(g: np.ndarray, p: float) -> None:
    if not np.any(g):
        assert not np.any(lemma2_maximiser(g, p))
        return
    q = math.inf if p == 1 else (1.0 if math.isinf(p) else p / (p - 1))
    delta = lemma2_maximiser(g, p, eps=0.5)
    assert math.isclose(lp(delta, p), 0.5, rel_tol=1e-9)
    assert math.isclose(float(g @ delta), 0.5 * lp(g, q), rel_tol=1e-9, abs_tol=1e-300)
    assert check_lemma2(g, p, n_random=200).passed


def test_lemma2_planted_error_fails() -> None:
    g = np.random.default_rng(0).standard_normal(40)
    # the l_2 direction used for an l_inf attack is feasible but not the maximiser
    wrong = lambda g, p, eps: eps * g / np.abs(g).max()  # noqa: E731
    assert not check_lemma2(g, math.inf, maximiser=wrong).passed


def test_eq3_and_snr() -> None:
    assert eq3_epsilon(0.01, 100, 2) == pytest.approx(0.1)
    assert eq3_epsilon(0.01, 100, 1) == pytest.approx(1.0)
    assert eq3_epsilon(0.01, 100, math.inf) == 0.01
    assert check_snr().passed


def test_proposition3_symbolic() -> None:
    xi = sp.Symbol("xi")
    eps = sp.Symbol("epsilon")
    phi = sp.Function("phi")
    assert sp.simplify(proposition3().expr - eps**2 / 4 * sp.Subs(sp.Derivative(phi(xi), (xi, 2)), xi, 0)) == 0
    # on a concrete smooth loss the residual is exactly what the series says
    t = sp.Symbol("t")
    concrete = sp.exp(2 * t) + sp.sin(t)
    aug = (concrete.subs(t, 0) + concrete.subs(t, eps)) / 2
    pen = concrete.subs(t, 0) + eps / 2 * sp.diff(concrete, t).subs(t, 0)
    lead = sp.series(aug - pen, eps, 0, 3).removeO()
    assert sp.simplify(lead - eps**2 / 4 * sp.diff(concrete, t, 2).subs(t, 0)) == 0


@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_proposition3_on_a_real_net(p: float) -> None:
    net = build(family("strided", channels=4).spec(8), seed=0)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    verdict = check_proposition3_on_net(net, x, label=2, p=p)
    assert verdict.passed, verdict


def test_proposition3_planted_error_fails() -> None:
    # a loss whose first-order term is not eps/2 ||g||_q (gradient scaled by 1.1): the gap is O(eps)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(20)
    loss = lambda v: float(np.log1p(np.exp(a @ v)))  # noqa: E731
    x = rng.standard_normal(20)
    g = a / (1 + np.exp(-(a @ x)))
    assert check_proposition3_numeric(loss, x, g, 2).passed
    assert not check_proposition3_numeric(loss, x, 1.1 * g, 2).passed


def test_one_neuron() -> None:
    d = sp.Symbol("d", positive=True)
    expr = one_neuron().expr.rhs
    assert sp.simplify(sp.diff(sp.log(expr), d) * d) == sp.Rational(1, 2)
    for q in (1, 2, math.inf):
        assert check_one_neuron(q=q, n=300).passed
    # planted: a prediction without the d^(1/p) calibration of eq. 3
    wrong = lambda dd, qq: check_one_neuron.__globals__["one_neuron_vulnerability"](dd, qq) / dd ** 0.5  # noqa: E731
    assert not check_one_neuron(q=2, n=300, predicted=wrong).passed


# ---- every row states its power, and fails on the error it must catch ------------------------
# Statistical rows below: family-wise false failure 1e-3 (Bonferroni over their cells), fixed seeds.


def test_exact_rows_state_power_one() -> None:
    g = np.random.default_rng(1).standard_normal(50)
    assert check_lemma2(g, 2).outcome is Outcome.PASS and check_lemma2(g, 2).power == 1.0
    net = build(family("strided", channels=4).spec(8), seed=0)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    v = check_proposition3_on_net(net, x, label=2, p=2)
    assert v.outcome is Outcome.PASS and v.power == 1.0 and v.resolution


@pytest.mark.parametrize("where", ["all p", "p = 2 only"])
def test_eq3_row_fails_on_a_forty_percent_rescaling_error(where: str) -> None:
    good = check_snr(n=100)
    assert good.outcome is Outcome.PASS and good.power >= 0.99  # type: ignore[operator]

    def wrong(eps_inf: float, dim: int, p: float) -> float:
        hit = not math.isinf(p) if where == "all p" else p == 2
        return eq3_epsilon(eps_inf, dim, p) * (1.4 if hit else 1.0)

    bad = check_snr(n=100, epsilon=wrong)
    assert bad.outcome is Outcome.FAIL, bad.detail
    assert abs(bad.measured - 1 / 1.4) < 0.05  # type: ignore[operator]  # the planted cell is shown


def test_eq3_row_fails_on_a_wrong_exponent() -> None:
    # d^(1/2) for every p instead of d^(1/p): right at p = 2 only
    wrong = lambda e, dim, p: float(e * dim**0.5)  # noqa: E731
    assert check_snr(n=100, epsilon=wrong).outcome is Outcome.FAIL


def test_one_neuron_rows_show_what_they_judge() -> None:
    for q in (1, 2, math.inf):
        ratio = check_one_neuron(q=q, n=300)
        slope = check_one_neuron_slope(q=q, n=300, seed=1)
        assert ratio.outcome is Outcome.PASS and slope.outcome is Outcome.PASS, (ratio.detail, slope.detail)
        # the ratio row shows a ratio near 1, the slope row the finite-d slope it judges
        assert ratio.predicted == 1.0 and abs(ratio.measured - 1) <= ratio.interval[1] - 1  # type: ignore[index,operator]
        assert slope.interval[0] <= slope.predicted <= slope.interval[1]  # type: ignore[index,operator]
    # q = inf: the finite-d slope over d = 16..1024 is about 0.62, not the asymptotic 1/2; the row shows it
    inf = check_one_neuron_slope(q=math.inf, n=300, seed=1)
    assert 0.58 < inf.predicted < 0.66 and abs(inf.measured - inf.predicted) < 0.02  # type: ignore[operator]


def test_one_neuron_rows_fail_on_a_wrong_quantity() -> None:
    vuln = one_neuron_vulnerability
    # judging q = inf against the asymptotic c sqrt(d) (the quantity the old row showed): slope 1/2
    asymptotic = lambda dd, qq: vuln(16, qq) * math.sqrt(dd / 16)  # noqa: E731
    assert check_one_neuron_slope(q=math.inf, n=300, seed=1, predicted=asymptotic).outcome is Outcome.FAIL
    assert check_one_neuron(q=math.inf, n=300, predicted=asymptotic).outcome is Outcome.FAIL
    # a prefactor 20% off at every d: the slope is right, the ratio row fails
    off = lambda dd, qq: 1.2 * vuln(dd, qq)  # noqa: E731
    assert check_one_neuron(q=2, n=300, predicted=off).outcome is Outcome.FAIL
    assert check_one_neuron_slope(q=2, n=300, seed=1, predicted=off).outcome is Outcome.PASS
