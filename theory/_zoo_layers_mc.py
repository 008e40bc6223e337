"""Monte Carlo of the laws of ``scale(a)``, overlapping max pooling and ``res(..., projbn=true)`` on real nets.

``python -m advdim.theory._zoo_layers_mc [--quick]`` prints the table of docs/theory.md ("Layers of
library code"): per row and size, the law of ``E||d_x f_0||_2^2``, ``E||d_x f_0||_1`` and
``E||d_x f_0||_inf`` (:func:`advdim.theory._best.best_laws`, with its level) beside the mean over
independently initialised nets (He, float64, 8 ``N(0, I)`` inputs each) with its standard error.  The
nets are our builds of the spec, and where torchvision is installed (``.venv-zoo``) also the library's
own modules: the stem of ``torchvision.models.resnet18`` (``conv1``, ``bn1``, ``relu``, ``maxpool``,
its conv re-drawn He fan-in, eval mode) under a conv head, and torchvision's ``downsample``
(``conv1x1`` + ``BatchNorm2d``) as the skip of a block.  Torch is imported when called.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from advdim.arch import Spec, parse

#: the three statistics sampled per net: ``||g||_2^2``, ``||g||_1``, ``||g||_inf``
STATS = ("grad_sq_norm", "1", "inf")


def sample_norms(spec: Spec, nets: int, seed: int = 0, inputs: int = 8,
                 factory: Callable[[Spec, int], Any] | None = None) -> np.ndarray:
    """Per net, the means over ``inputs`` ``N(0, I)`` inputs of ``||d_x f_0||_2^2``, ``||d_x f_0||_1`` and
    ``||d_x f_0||_inf``: shape ``(nets, 3)``, float64, i.i.d. rows.

    Net ``j`` is ``factory(spec, seed * 100003 + j)`` (default: :func:`advdim.build.build` of ``spec``
    from that seed, He), cast to float64 and put in eval mode; its inputs come from the same number.
    """
    import torch

    from advdim.build import build
    from advdim.gradients import input_gradient

    out = np.empty((nets, 3), dtype=np.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for j in range(nets):
            net_seed = seed * 100003 + j
            net = (build(spec, "he", seed=net_seed) if factory is None else factory(spec, net_seed))
            net = net.to(torch.float64).eval()
            gen = torch.Generator().manual_seed(net_seed + (1 << 40))
            x = torch.randn((inputs, *spec.input_shape), generator=gen, dtype=torch.float64)
            g = input_gradient(net, x, "logit", 0).flatten(1)
            out[j] = [float((g**2).sum(1).mean()), float(g.abs().sum(1).mean()), float(g.abs().amax(1).mean())]
    finally:
        torch.set_num_threads(threads)
    return out


def torchvision_stem(spec: Spec, seed: int) -> Any:
    """``torchvision.models.resnet18``'s stem (``conv1`` 7x7/2, ``bn1``, ``relu``, ``maxpool`` 3/2/1) followed by
    ``conv(C,pad=zeros) > relu > flatten > dense(K)`` as ``spec`` states them (its layers 4-7), every conv and
    linear weight He fan-in ``N(0, 2/fan_in)`` and zero biases (torchvision draws ``conv1`` fan-out; the law of
    other inits is advdim.initlaw's), batch norm at its initial running statistics."""
    import torchvision
    from torch import nn

    tv = torchvision.models.resnet18(num_classes=10)
    shapes = spec.shapes()  # shapes[5]: the head conv's output, shapes[7]: the flat features, shapes[8]: the logits
    net = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, nn.Conv2d(64, shapes[5][0], 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(shapes[7][0], shapes[8][0]))
    _he(net, seed)
    return net


def torchvision_downsample(spec: Spec, seed: int) -> Any:
    """A block ``x + branch(x)`` whose skip is torchvision's own ``downsample`` of a stride-2 BasicBlock
    (``Sequential(conv1x1(in, out, 2), BatchNorm2d(out))``, taken from ``resnet18().layer2[0]``), on
    ``3xSxS > conv(64) > relu > res(conv(128,s=2) > relu > conv(128),projbn=true) > flatten > dense(K)``
    (circular padding as the spec; He fan-in weights, zero biases)."""
    import torchvision
    from torch import nn

    from advdim.build import ResidualBlock

    tv = torchvision.models.resnet18(num_classes=10)
    down = tv.layer2[0].downsample
    assert isinstance(down[0], nn.Conv2d) and isinstance(down[1], nn.BatchNorm2d)
    c_in = spec.input_shape[0]
    branch = nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1, padding_mode="circular"), nn.ReLU(),
                           nn.Conv2d(128, 128, 3, 1, 1, padding_mode="circular"))
    shapes = spec.shapes()
    net = nn.Sequential(nn.Conv2d(c_in, 64, 3, 1, 1, padding_mode="circular"), nn.ReLU(),
                        ResidualBlock(branch, down, 1.0), nn.Flatten(), nn.Linear(shapes[4][0], shapes[5][0]))
    _he(net, seed)
    return net


def _he(net: Any, seed: int) -> None:
    """Every Conv2d / Linear weight ``N(0, 2 / fan_in)`` (a CPU generator from ``seed``), biases 0, in module order."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
                               * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


@dataclass(frozen=True)
class Row:
    """One net of the table: a spec text with ``{s}`` for the side, the sides, the number of nets and
    the nets' maker (None: our build)."""

    name: str
    text: str
    sizes: tuple[int, ...]
    nets: int
    factory: Callable[[Spec, int], Any] | None = None


ROWS = (
    Row("scale before a ReLU (1/2 x He)", "3x{s}x{s} > conv(16) > scale(0.7071067811865476) > relu > conv(16) > relu > "
        "flatten > dense(10)", (8, 16), 1000),
    Row("scale on a residual branch", "3x{s}x{s} > conv(16) > relu > res(conv(16) > relu > conv(16) > scale(0.5)) > "
        "flatten > dense(10)", (8,), 1000),
    Row("scale before an average pool (wide limit)", "3x{s}x{s} > conv(16) > relu > scale(2.0) > avgpool(2) > "
        "conv(16) > relu > globalavgpool > dense(10)", (8,), 2000),
    Row("projbn (our build)", "3x{s}x{s} > conv(16) > relu > res(conv(16,s=2) > relu > conv(16),projbn=true) > "
        "flatten > dense(10)", (8, 16), 1000),
    Row("projbn (torchvision's downsample)", "3x{s}x{s} > conv(64) > relu > res(conv(128,s=2) > relu > conv(128),"
        "projbn=true) > flatten > dense(10)", (8,), 300, torchvision_downsample),
    Row("maxpool(2) after the first ReLU", "3x{s}x{s} > conv(16) > relu > maxpool(2) > conv(16) > relu > flatten > "
        "dense(10)", (8, 16), 2000),
    Row("maxpool(3,s=2,pad=1) after the first ReLU", "3x{s}x{s} > conv(16) > relu > maxpool(3,s=2,pad=1) > conv(16) > "
        "relu > flatten > dense(10)", (8, 16, 32), 2000),
    Row("maxpool(2) after a second ReLU", "3x{s}x{s} > conv(16) > relu > conv(16) > relu > maxpool(2) > conv(16) > "
        "relu > flatten > dense(10)", (8, 16), 2000),
    Row("maxpool(3,s=2,pad=1) after a second ReLU, 64 channels", "3x{s}x{s} > conv(64) > relu > conv(64) > relu > "
        "maxpool(3,s=2,pad=1) > conv(64) > relu > flatten > dense(10)", (8,), 1000),
    Row("torchvision resnet18 stem", "3x{s}x{s} > conv(64,k=7,s=2,pad=zeros,bias=false) > batchnorm > relu > "
        "maxpool(3,s=2,pad=1) > conv(16,pad=zeros) > relu > flatten > dense(10)", (32, 64), 500, torchvision_stem),
    Row("maxpool, then a conv and an average pool", "3x{s}x{s} > conv(16) > relu > maxpool(2) > conv(16) > relu > "
        "avgpool(2) > conv(16) > relu > flatten > dense(10)", (16,), 1000),
    Row("maxpool, then a global average pool, 16 channels", "3x{s}x{s} > conv(16,pad=zeros) > relu > "
        "maxpool(3,s=2,pad=1) > conv(16,pad=zeros) > relu > globalavgpool > dense(10)", (16, 32), 1000),
    Row("maxpool, then a global average pool, 64 channels", "3x{s}x{s} > conv(64) > relu > maxpool(2) > conv(64) > "
        "relu > globalavgpool > dense(10)", (8, 16), 300),
    Row("resnet18's stem, then a global average pool", "3x{s}x{s} > conv(64,k=7,s=2,pad=zeros,bias=false) > "
        "batchnorm > relu > maxpool(3,s=2,pad=1) > conv(16,pad=zeros) > relu > globalavgpool > dense(10)", (32,), 500),
)


def routed_path_sum(spec: Spec) -> float:
    """``E||d_x f_0||_2^2`` by the routed path sum even where a later average pool refuses it (the max pools
    whose window law is known; :func:`advdim.theory._graph.steps`): what the table compares such nets with."""
    from dataclasses import replace

    from advdim.theory import _graph

    st = _graph.steps(spec)
    rho = _graph.window_correlations(st)
    v = np.zeros(spec.shapes()[-1], dtype=np.float64)
    v[0] = 1.0
    for step in reversed(st):
        if step.refused is not None:
            step = replace(step, rho=rho[step.index], refused=None)
        v = _graph._back(step, v, "he")
    return float(v.sum())


def measure_row(row: Row, size: int, nets: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The law and the Monte Carlo of one row at one side: per statistic ``(law, level, mean, se)``; a row
    without a law is compared with :func:`routed_path_sum` (level ``refused``)."""
    from advdim.theory import predict
    from advdim.theory._best import SQ, best_laws

    spec = parse(row.text.format(s=size))
    laws = best_laws(predict(spec))
    t0 = time.time()
    sample = sample_norms(spec, nets or row.nets, seed, factory=row.factory)
    out: dict[str, Any] = {"row": row.name, "s": size, "nets": sample.shape[0], "seconds": time.time() - t0}
    for j, key in enumerate(STATS):
        law = laws[SQ if key == "grad_sq_norm" else key][size]
        value, level = law.value, law.level.value
        if value is None and key == "grad_sq_norm":
            value, level = routed_path_sum(spec), "refused: routed path sum"
        se = float(sample[:, j].std(ddof=1) / math.sqrt(sample.shape[0]))
        out[key] = (value, level, float(sample[:, j].mean()), se)
    return out


def _cell(entry: tuple[float | None, str, float, float]) -> str:
    law, level, mean, se = entry
    if law is None:
        return f"none / {mean:.4g} +- {se:.2g}"
    return f"{law:.4g} ({level}) / {mean:.4g} +- {se:.2g} / **{100 * (mean / law - 1):+.1f}% +- {100 * se / law:.1f}%**"


def main(argv: list[str] | None = None) -> None:
    """Print the markdown table (``--quick``: a tenth of the nets)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    norm = "E\\|\\|g\\|\\|"
    print(f"| net | s | nets | {norm}_2^2: law (level) / MC / MC vs law | {norm}_1 | {norm}_inf | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        for size in row.sizes:
            try:
                res = measure_row(row, size, max(20, row.nets // 10) if args.quick else None, args.seed)
            except ImportError as err:
                print(f"| {row.name} | {size} | -- | skipped: {err} | | | |")
                continue
            print(f"| {row.name} | {size} | {res['nets']} | {_cell(res['grad_sq_norm'])} | {_cell(res['1'])} | "
                  f"{_cell(res['inf'])} | {res['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
