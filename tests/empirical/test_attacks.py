"""Attack invariants and agreement with foolbox 3.3.4 (float32, <= 1e-6)."""

import math

import foolbox as fb
import pytest
import torch
from advdim.empirical import attacks
from hypothesis import given, settings
from hypothesis import strategies as st

from advdim.arch import family
from advdim.build import build
from advdim.errors import AdvdimError
from advdim.gradients import lp_norm


def _net(seed=0):
    return build(family("dense", widths=(32,)).spec(6, channels=1), seed=seed)


def _data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("p", [math.inf, 2.0])
@pytest.mark.parametrize("steps", [1, 5])
def test_agrees_with_foolbox(p, steps):
    net = _net().eval()
    x, y = _data()
    eps = 0.05 if math.isinf(p) else 0.5
    step = eps / (0.75 * steps)
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    cls = fb.attacks.LinfPGD if math.isinf(p) else fb.attacks.L2PGD
    attack = cls(abs_stepsize=step, steps=steps, random_start=False)
    _, expected, _ = attack(fmodel, x, y, epsilons=eps)
    ours = attacks.pgd(net, x, y, eps, p, steps, step, bounds=(0.0, 1.0))
    assert (ours - expected).abs().max().item() <= 1e-6


def test_fgsm_and_l2_step_agree_with_foolbox():
    net = _net().eval()
    x, y = _data()
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    _, expected, _ = fb.attacks.FGSM()(fmodel, x, y, epsilons=0.03)
    assert (attacks.fgsm(net, x, y, 0.03, bounds=(0.0, 1.0)) - expected).abs().max().item() <= 1e-6
    _, expected, _ = fb.attacks.L2FastGradientAttack()(fmodel, x, y, epsilons=0.3)
    assert (attacks.l2_step(net, x, y, 0.3, bounds=(0.0, 1.0)) - expected).abs().max().item() <= 1e-6


@settings(max_examples=15)
@given(p=st.sampled_from([math.inf, 2.0]), eps=st.floats(0.0, 2.0), random_start=st.booleans(),
       seed=st.integers(0, 1000))
def test_invariants(p, eps, random_start, seed):
    net = _net(seed % 3)
    net.train()
    x, y = _data(8, seed)
    before = x.clone()
    gen = torch.Generator().manual_seed(seed)
    adv = attacks.pgd(net, x, y, eps, p, 3, random_start=random_start, generator=gen, bounds=(0.0, 1.0))
    assert torch.equal(x, before)  # input untouched
    assert net.training and all(m.training for m in net.modules())  # mode restored
    assert adv.min() >= 0 and adv.max() <= 1  # inside the box
    assert (lp_norm(adv - x, p) <= eps + 1e-5).all()  # inside the eps-ball


def test_batch_consistency_and_per_sample_eps():
    net = _net()
    x, y = _data(10)
    full = attacks.pgd(net, x, y, 0.1, math.inf, 4)
    parts = torch.cat([attacks.pgd(net, x[:4], y[:4], 0.1, math.inf, 4),
                       attacks.pgd(net, x[4:], y[4:], 0.1, math.inf, 4)])
    assert torch.allclose(full, parts, atol=1e-6)
    eps = torch.linspace(0.01, 0.2, 10)
    per = attacks.pgd(net, x, y, eps, 2.0, 3)
    for i in range(10):
        one = attacks.pgd(net, x[i:i + 1], y[i:i + 1], float(eps[i]), 2.0, 3)
        assert torch.allclose(per[i:i + 1], one, atol=1e-6)


def test_pgd_at_least_as_strong_as_fgsm():
    # PGD starts where FGSM does (first step = FGSM with step eps) then climbs; averaged over a batch
    # the loss it reaches is never below FGSM's on this net (deterministic, fixed seed).
    net = _net()
    x, y = _data(64, 3)
    eps = 0.1
    f = torch.nn.functional
    adv_f = attacks.fgsm(net, x, y, eps)
    adv_p = attacks.pgd(net, x, y, eps, math.inf, 10, step_size=eps / 4)
    with torch.no_grad():
        pred = net(x).argmax(1)
        succ_f = (net(adv_f).argmax(1) != pred).float().mean()
        succ_p = (net(adv_p).argmax(1) != pred).float().mean()
        assert f.cross_entropy(net(adv_p), y) >= f.cross_entropy(net(adv_f), y)
    assert succ_p >= succ_f


def test_rejects_bad_input():
    net = _net()
    x, y = _data(4)
    with pytest.raises(AdvdimError):
        attacks.pgd(net, x, y, -1.0)
    with pytest.raises(AdvdimError):
        attacks.pgd(net, x, y, 0.1, p=1.0)
    with pytest.raises(AdvdimError):
        attacks.fgsm(net, x, y[:2], 0.1)
    with pytest.raises(AdvdimError):
        attacks.fgsm(net, x + 2, y, 0.1, bounds=(0.0, 1.0))
