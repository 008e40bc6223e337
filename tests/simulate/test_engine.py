"""The batched engine against the plain per-net computation, and the exact shortcut in distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from advdim.simulate._engine import (
    Scheme,
    circular_pad,
    draw_stack,
    input_gradients,
    sample_norms,
    shortcut_applies,
    shortcut_gradients,
    stack_modules,
)
from scipy import stats

from advdim.arch import family, sample_family
from advdim.build import build
from advdim.errors import AdvdimError
from advdim.gradients import Target, input_gradient, lp_norm

FAMILIES = ["dense", "strided", "avgpool", "maxpool", "gap"]
#: level of every two-sample test below (fixed seeds: the outcome is deterministic; a correct
#: shortcut fails a given test with probability KS_ALPHA over seeds)
KS_ALPHA = 1e-3


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("scheme", [Scheme.GROUPED, Scheme.SPLIT, Scheme.UNFOLD])
@pytest.mark.parametrize("channels_last", [False, True])
def test_engine_equals_plain_autograd(name: str, scheme: Scheme, channels_last: bool) -> None:
    """Shortcuts off: the batched engine equals build + gradients net by net, to 1e-5 (float32), in both layouts."""
    for t in range(2):
        spec = sample_family(name, np.random.default_rng([7, t])).spec(16)
        nets = [build(spec, seed=100 + r) for r in range(3)]
        stack = stack_modules(nets, spec)
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(4, 3, *spec.input_shape, generator=gen)
        labels = torch.randint(0, spec.n_classes, (4, 3), generator=gen)
        for target in Target:
            g = input_gradients(stack, x, target, 2, labels, scheme, channels_last)
            for r, net in enumerate(nets):
                ref = input_gradient(net, x[:, r], target, 2, labels[:, r])
                for q in (1, 2, math.inf):
                    a, b = lp_norm(g[:, r], q), lp_norm(ref, q)
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 1), (2, 4, 2, 3), (3, 6, 4)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_circular_pad_equals_torch_pad(shape: tuple[int, ...], p: int, channels_last: bool) -> None:
    """The engine's circular padding and its folding backward equal F.pad's, float64, exactly up to rounding."""
    if p > min(shape[-2:]):
        with pytest.raises(AdvdimError, match="exceeds the map"):
            circular_pad(torch.zeros(shape), p)
        return
    gen = torch.Generator().manual_seed(p)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = circular_pad(a, p), F.pad(b, (p, p, p, p), mode="circular")
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    w = torch.randn(out_a.shape, generator=gen, dtype=torch.float64)
    (ga,) = torch.autograd.grad((out_a * w).sum(), a)
    (gb,) = torch.autograd.grad((out_b * w).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_draw_stack_has_he_variance() -> None:
    spec = family("strided", channels=8).spec(8)
    stack = draw_stack(spec, 50, torch.Generator().manual_seed(0), dtype=torch.float64)
    w = stack.weights[0]
    assert w is not None
    n = w.numel()
    ratio = float((w**2).mean() / (2.0 / (3 * 9)))
    # chi-square with n dof: 5 standard errors sqrt(2/n) (false failure < 1e-6)
    assert abs(ratio - 1) < 5 * math.sqrt(2 / n)


def test_shortcut_applies_only_to_dense_chains() -> None:
    assert shortcut_applies(family("dense", widths=(8, 8)).spec(4))
    assert shortcut_applies(family("dense", widths=()).spec(4))
    assert not shortcut_applies(family("strided").spec(8))


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ks_2samp(a.ravel(), b.ravel()).pvalue)


@pytest.mark.parametrize("target", ["logit", "loss"])
@pytest.mark.parametrize("widths", [(), (32,), (64, 16, 32)])
def test_shortcut_equal_in_distribution(target: str, widths: tuple[int, ...]) -> None:
    """KS two-sample test at level KS_ALPHA: shortcut norms vs plain engine norms (one input per net)."""
    spec = family("dense", widths=widths).spec(8)
    fast = sample_norms(spec, 3000, 1, seed=1, target=target, exact_shortcuts=True, dtype=torch.float64)
    plain = sample_norms(spec, 3000, 1, seed=2, target=target, exact_shortcuts=False, dtype=torch.float64)
    for key in ("1", "2", "inf"):
        assert _ks(fast[key], plain[key]) > KS_ALPHA, key


def test_ks_detects_a_wrong_shortcut() -> None:
    """The same test rejects a shortcut with a 10% error in the weight scale (the test has power)."""
    spec = family("dense", widths=(32,)).spec(4, channels=1)
    x = torch.randn(3000, *spec.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    good = shortcut_gradients(spec, x, torch.Generator().manual_seed(1))
    wrong = good * 1.1  # a 10% error in the weight scale
    plain = sample_norms(spec, 3000, 1, seed=3, exact_shortcuts=False, dtype=torch.float64)["2"]
    assert _ks(lp_norm(good, 2).numpy(), plain) > KS_ALPHA
    assert _ks(lp_norm(wrong, 2).numpy(), plain) < KS_ALPHA


def test_sample_norms_shapes_and_errors() -> None:
    spec = family("maxpool", channels=4).spec(8)
    out = sample_norms(spec, 2, 3, seed=0)
    assert set(out) == {"1", "2", "inf", "sq2"} and out["2"].shape == (2, 3)
    np.testing.assert_allclose(out["sq2"], out["2"] ** 2, rtol=1e-9)
    assert np.all(out["inf"] <= out["2"]) and np.all(out["2"] <= out["1"])
    again = sample_norms(spec, 2, 3, seed=0)
    np.testing.assert_array_equal(out["1"], again["1"])  # seeded
    with pytest.raises(AdvdimError):
        sample_norms(spec, 2, 3, scheme="bogus")
    with pytest.raises(AdvdimError):
        sample_norms(spec, 2, 3, images=torch.zeros(5, 1, 8, 8))


def test_images_as_inputs() -> None:
    spec = family("dense", widths=(16,)).spec(4, channels=1)
    images = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_norms(spec, 4, 2, seed=0, images=images, exact_shortcuts=True)
    b = sample_norms(spec, 4, 2, seed=0, images=images, exact_shortcuts=False)
    assert np.all(np.isfinite(a["2"])) and np.all(np.isfinite(b["2"]))


@pytest.mark.parametrize("init", ["torch", "orthogonal"])
def test_engine_draws_every_init_like_build(init: str) -> None:
    """The engine's weight laws equal :func:`advdim.build.init_weights`' (the plain per-net build):
    a KS two-sample test at level KS_ALPHA on ||d_x f||_2 of 300 nets from each (strided, zero
    padding: biases matter), and each law's exact structure on the drawn weights."""
    from advdim.build import Init

    spec = family("strided", channels=4, padding="zeros").spec(8, channels=1)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, *spec.input_shape, generator=gen, dtype=torch.float64)
    plain = []
    for i in range(300):
        net = build(spec, seed=1000 + i, init=Init(init)).double()
        plain.append(float(lp_norm(input_gradient(net, x[i:i + 1], Target.LOGIT), 2)[0]))
    stack = draw_stack(spec, 300, torch.Generator().manual_seed(9), Init(init), dtype=torch.float64)
    fast = lp_norm(input_gradients(stack, x.unsqueeze(0), Target.LOGIT)[0], 2).numpy()  # x: (1 input, R nets, ...)
    assert _ks(fast, np.array(plain)) > KS_ALPHA
    w = stack.weights[0]
    assert w is not None
    if init == "torch":  # uniform on [-b, b], b = 1/sqrt(fan_in): bounded, variance b^2/3, biases drawn
        b = 1 / math.sqrt(9)
        assert float(w.abs().max()) <= b and float(w.abs().max()) > 0.99 * b
        assert abs(float((w**2).mean()) / (b * b / 3) - 1) < 5 * math.sqrt(0.8 / w.numel())  # Var(U^2)/E^2 = 0.8
        assert stack.biases[0] is not None and float(stack.biases[0].abs().max()) > 0
    if init == "orthogonal":  # 4 rows of length 9: W W^T = 2 I for every net
        m = w.reshape(300, 4, 9)
        eye = 2 * torch.eye(4, dtype=torch.float64).expand(300, 4, 4)
        torch.testing.assert_close(m @ m.transpose(1, 2), eye, atol=1e-10, rtol=0)


def test_engine_init_test_has_power() -> None:
    """The KS test above tells PyTorch's default init from He's (a variance 6x smaller)."""
    from advdim.build import Init

    spec = family("strided", channels=4, padding="zeros").spec(8, channels=1)
    x = torch.randn(300, *spec.input_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    he = draw_stack(spec, 300, torch.Generator().manual_seed(9), Init.HE, dtype=torch.float64)
    tv = draw_stack(spec, 300, torch.Generator().manual_seed(8), Init.TORCH, dtype=torch.float64)
    x = x.unsqueeze(0)  # (1 input, R nets, ...)
    assert _ks(lp_norm(input_gradients(he, x, Target.LOGIT)[0], 2).numpy(),
               lp_norm(input_gradients(tv, x, Target.LOGIT)[0], 2).numpy()) < KS_ALPHA
