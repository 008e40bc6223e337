"""torchvision's own BasicBlock (post-activation: ReLU after the add) against the chain law of
theory/_postact.py (issue 20, item 5).  Runs in the zoo venv (``make test``'s second pytest run).

The nets are built by torchvision: ``conv3x3 > BatchNorm2d > ReLU > BasicBlock(C, C) x 2 >
BasicBlock(C, 2C, stride 2, downsample = conv1x1 + BatchNorm2d) > Flatten > Linear``, initialised as
``torchvision.models.ResNet`` does (``kaiming_normal_(mode="fan_out")`` on every conv, batch norms 1 and
0, ``nn.Linear``'s default), in eval mode.  The law is computed on the spec ``advdim.trace`` reads
from the torchvision module (one spec: the law and the nets it is checked on), with those variances
(``variance=``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from advdim.theory import _postact
from advdim.theory._postact import GateLaw
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from advdim.arch import Spec, parse
from advdim.trace import trace
from advdim.zoo import resnet_init, resnet_variance

SIDE = 8
SIGMAS = 5.0  # two-sided false-failure rate 5.7e-7 for a normal mean


def torchvision_net(c: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    down = nn.Sequential(conv1x1(c, 2 * c, 2), nn.BatchNorm2d(2 * c))
    net = nn.Sequential(conv3x3(3, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True), BasicBlock(c, c), BasicBlock(c, c),
                        BasicBlock(c, 2 * c, stride=2, downsample=down), nn.Flatten(),
                        nn.Linear(2 * c * (SIDE // 2) ** 2, 10))
    return resnet_init(net).double().eval()


def matching_spec(c: int) -> str:
    conv = "pad=zeros,bias=false"
    block = f"res(conv({c},{conv}) > batchnorm > relu > conv({c},{conv}) > batchnorm) > relu"
    down = f"res(conv({2 * c},s=2,{conv}) > batchnorm > relu > conv({2 * c},{conv}) > batchnorm,projbn=true) > relu"
    return f"3x{SIDE}x{SIDE} > conv({c},{conv}) > batchnorm > relu > {block} > {block} > {down} > flatten > dense(10)"


def measured(c: int, nets: int, seed: int, inputs: int = 8) -> tuple[float, float]:
    """``(mean, se)`` of ``||d_x f_0||_2^2`` over ``nets`` nets (per net the mean over ``inputs`` N(0, I) inputs)."""
    gen = torch.Generator().manual_seed(seed)
    per_net = []
    for j in range(nets):
        net = torchvision_net(c, seed * 100003 + j)
        x = torch.randn((inputs, 3, SIDE, SIDE), generator=gen, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
        per_net.append(float((g**2).sum()) / inputs)
    v = np.array(per_net)
    return float(v.mean()), float(v.std(ddof=1)) / math.sqrt(nets)


@pytest.mark.slow
def test_torchvision_basic_blocks_follow_the_chain_law_and_not_the_planted_ones() -> None:
    """300 nets x 8 inputs at C = 16 and at C = 64, fixed seed.  The fan_out stem makes E||d_x f||^2 = 3/C times
    its He value, so the ratio measured / law is extrapolated to infinite width, ``(4 r_64 - r_16) / 3`` (the
    finite-width excess is O(1/C)).  The law (ratio 1) agrees within 5 standard errors; the naive path sum
    (p = 1/2), the per-block law p_k (1 + G_k) and the law off by 10% do not."""
    torch.set_num_threads(1)
    specs = [trace(torchvision_net(c, 0).float(), (3, SIDE, SIDE)) for c in (16, 64)]
    for c, spec in zip((16, 64), specs):
        assert isinstance(spec, Spec) and spec == parse(matching_spec(c)), spec
    laws = {g: [_postact.grad_sq_norm(spec, gate_law=g, variance=resnet_variance) for spec in specs]
            for g in GateLaw}
    law = laws[GateLaw.CHAIN]
    (m16, se16), (m64, se64) = measured(16, 300, 0), measured(64, 300, 1)
    ratio = (4 * m64 / law[1] - m16 / law[0]) / 3
    se = math.sqrt(16 * (se64 / law[1]) ** 2 + (se16 / law[0]) ** 2) / 3
    assert se < 0.02  # power: a 10% error is at least 5 standard errors away
    assert abs(ratio - 1) <= SIGMAS * se, (ratio, se, m16, m64, law)
    for g in (GateLaw.HALF, GateLaw.PRODUCT):
        planted = laws[g][1] / law[1]
        assert abs(planted / laws[g][0] * law[0] - 1) < 1e-9  # the same ratio at both widths
        assert abs(ratio - planted) > SIGMAS * se, (g, ratio, se, planted)
    assert abs(ratio - 1.1) > SIGMAS * se and abs(ratio - 1 / 1.1) > SIGMAS * se
