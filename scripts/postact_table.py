"""The Monte Carlo table of docs/theory.md, "Post-activation residual blocks": the chain law of
theory/_postact.py against real nets built by advdim (``advdim.build`` of the spec) and by torchvision
(``BasicBlock``, initialised as ``torchvision.models.ResNet``).

Run in the zoo venv (it needs torchvision):  ``.venv-zoo/bin/python scripts/postact_table.py [--json PATH]``.
Per row: E||d_x f_0||_2^2 measured (mean over nets of the mean over 8 N(0, I) inputs, with its standard
error), the chain law, and the measured excess over it and over the per-block law ``p_k (1 + G_k)`` and
the naive path sum (p = 1/2); then, per net and depth, the 1/C extrapolation ``(4 r_64 - r_16) / 3`` of
the ratio measured / law, and the d-exponent check of E||d_x f||_1 over the input side.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from advdim.theory import _gauss, _postact
from advdim.theory._postact import GateLaw
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from advdim.arch import parse
from advdim.build import build
from advdim.zoo import resnet_init, resnet_variance

NETS = {16: 300, 64: 200}
INPUTS = 8


def spec_text(c: int, s: int, k: int, pad: str, down: bool = False, pool: bool = False) -> str:
    conv = f"pad={pad},bias=false"
    stem = f"conv({c},{conv}) > batchnorm > relu > " + ("maxpool(2) > " if pool else "")
    block = f"res(conv({c},{conv}) > batchnorm > relu > conv({c},{conv}) > batchnorm) > relu"
    blocks = [block] * k
    if down:
        blocks.append(f"res(conv({2 * c},s=2,{conv}) > batchnorm > relu > conv({2 * c},{conv}) > batchnorm) > relu")
    return f"3x{s}x{s} > {stem}" + " > ".join(blocks) + " > flatten > dense(10)"


def torchvision_net(c: int, s: int, k: int, down: bool, pool: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [conv3x3(3, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    width, side = c, s
    if pool:
        layers.append(nn.MaxPool2d(2))
        side //= 2
    layers += [BasicBlock(c, c) for _ in range(k)]
    if down:
        layers.append(BasicBlock(c, 2 * c, stride=2, downsample=nn.Sequential(conv1x1(c, 2 * c, 2),
                                                                               nn.BatchNorm2d(2 * c))))
        width, side = 2 * c, side // 2
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, 10))
    return resnet_init(net).double().eval()


def sample(make, s: int, nets: int, seed: int, q: float | None = None) -> np.ndarray:
    """Per net: the mean over INPUTS inputs of ||d_x f_0||_2^2 (q None) or of ||d_x f_0||_q."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty(nets)
    for j in range(nets):
        net = make(seed * 100003 + j)
        x = torch.randn((INPUTS, 3, s, s), generator=gen, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
        g = g.flatten(1)
        out[j] = float((g**2).sum(1).mean()) if q is None else float(g.norm(p=q, dim=1).mean())
    return out


def row(builder: str, c: int, s: int, k: int, pad: str, down: bool, pool: bool, seed: int) -> dict:
    spec = parse(spec_text(c, s, k, pad, down, pool))
    variance = resnet_variance if builder == "torchvision" else None
    laws = {g.value: _postact.grad_sq_norm(spec, gate_law=g, variance=variance) for g in GateLaw}
    if builder == "torchvision":
        def make(seed: int) -> nn.Module:
            return torchvision_net(c, s, k, down, pool, seed)
    else:
        def make(seed: int) -> nn.Module:
            return build(spec, "he", seed=seed, dtype=torch.float64).eval()
    t = time.time()
    v = sample(make, s, NETS[c], seed)
    mean, se = float(v.mean()), float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"builder": builder, "pad": pad, "C": c, "s": s, "blocks": k, "downsample": down, "maxpool": pool,
            "nets": v.size,
            "mean": mean, "se": se, "laws": laws, "seconds": round(time.time() - t, 1)}


def exponent_rows(seed: int) -> list[dict]:
    """E||d_x f_0||_q, q = 1, 2 (advdim build, C = 16, two blocks, zero padding) at s = 8, 16, 32: measured
    vs predicted (independent Gaussian coordinates with the chain law's variances)."""
    out = []
    for s in (8, 16, 32):
        spec = parse(spec_text(16, s, 2, "zeros"))
        var = _postact.input_variances(spec)
        values, counts = _gauss.profile(var)
        rec = {"s": s, "d": 3 * s * s}
        for q in (1.0, 2.0):
            v = sample(lambda sd, sp=spec: build(sp, "he", seed=sd, dtype=torch.float64).eval(), s, 200, seed + s, q=q)
            rec[f"q{q:g}"] = {"mean": float(v.mean()), "se": float(v.std(ddof=1)) / math.sqrt(v.size),
                              "law": _gauss.expected_q_norm(values, counts, q)}
        out.append(rec)
    return out


CONFIGS = [  # (builder, s, blocks, padding, downsampling block, max pool after the stem)
    ("advdim", 8, 1, "circular", False, False), ("advdim", 8, 2, "circular", False, False),
    ("advdim", 8, 4, "circular", False, False), ("advdim", 8, 2, "zeros", False, False),
    ("advdim", 8, 4, "zeros", False, False), ("advdim", 16, 2, "zeros", False, False),
    ("advdim", 8, 2, "zeros", True, False), ("advdim", 16, 2, "zeros", False, True),
    ("torchvision", 8, 1, "zeros", False, False), ("torchvision", 8, 2, "zeros", False, False),
    ("torchvision", 8, 4, "zeros", False, False), ("torchvision", 8, 2, "zeros", True, False),
    ("torchvision", 16, 2, "zeros", True, True),
]


def _net(r: dict) -> str:
    pool = "maxpool, " if r["maxpool"] else ""
    return f"s={r['s']}, {pool}{r['blocks']} blocks{' + down' if r['downsample'] else ''}, {r['pad']}"


def markdown(rows: list[dict], exps: list[dict]) -> str:
    lines = ["| builder | net | C | nets | measured E‖∂ₓf‖₂² | chain law | excess over law | over p_k(1+G_k) "
             "| over p = 1/2 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        net = _net(r)
        law = r["laws"]
        exc = [100 * (r["mean"] / law[g] - 1) for g in ("chain", "product", "half")]
        lines.append(f"| {r['builder']} | {net} | {r['C']} | {r['nets']} | {r['mean']:.4g} ± {r['se']:.2g} | "
                     f"{law['chain']:.4g} | {exc[0]:+.1f}% ± {100 * r['se'] / law['chain']:.1f}% | {exc[1]:+.1f}% | "
                     f"{exc[2]:+.0f}% |")
    lines += ["", "| builder | net | ratio measured / law at C → ∞ (4 r₆₄ − r₁₆)/3 | in se | per-block law / law "
              "| p = 1/2 / law |", "|---|---|---|---|---|---|"]
    for a in rows:
        if a["C"] != 16:
            continue
        b = next(r for r in rows if r["C"] == 64 and all(r[k] == a[k] for k in ("builder", "pad", "s", "blocks",
                                                                                  "downsample", "maxpool")))
        la, lb = a["laws"]["chain"], b["laws"]["chain"]
        ratio = (4 * b["mean"] / lb - a["mean"] / la) / 3
        se = math.sqrt(16 * (b["se"] / lb) ** 2 + (a["se"] / la) ** 2) / 3
        net = _net(a)
        lines.append(f"| {a['builder']} | {net} | {ratio:.4f} ± {se:.4f} | {(ratio - 1) / se:+.1f} | "
                     f"{b['laws']['product'] / lb:.4f} | {b['laws']['half'] / lb:.4f} |")
    lines += ["", "| s | d | E‖∂ₓf‖₁ measured | law | E‖∂ₓf‖₂ measured | law |", "|---|---|---|---|---|---|"]
    for e in exps:
        lines.append(f"| {e['s']} | {e['d']} | {e['q1']['mean']:.4g} ± {e['q1']['se']:.2g} | {e['q1']['law']:.4g} | "
                     f"{e['q2']['mean']:.4g} ± {e['q2']['se']:.2g} | {e['q2']['law']:.4g} |")
    for q in ("q1", "q2"):
        x = np.log([e["d"] for e in exps])
        meas = np.polyfit(x, np.log([e[q]["mean"] for e in exps]), 1)[0]
        law = np.polyfit(x, np.log([e[q]["law"] for e in exps]), 1)[0]
        lines.append(f"\nslope of log E‖∂ₓf‖_{q[1]} against log d: measured {meas:.3f}, law {law:.3f}, "
                     f"paper's exponent {1 / float(q[1]) - 0.5:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the records here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows = [row(b, c, s, k, pad, down, pool, seed=17 * i + c) for i, (b, s, k, pad, down, pool) in enumerate(CONFIGS)
            for c in (16, 64)]
    exps = exponent_rows(seed=5)
    print(markdown(rows, exps))
    print(f"\n({time.time() - t0:.0f} s, torch {torch.__version__}, one thread)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "exponent": exps, "torch": torch.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
