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
from advdim.theory._first_order import lp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from advdim.arch import family
from advdim.build import build


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
