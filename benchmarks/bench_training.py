"""Training-step cost of each defence, as a ratio to a plain step measured in the same run, and the
batched per-sample gradient penalty against the naive one-sample-at-a-time double back-propagation.

    .venv/bin/python benchmarks/bench_training.py [--size 28] [--batch 64] [--reps 5] [--threads 1]   (prints JSON)

Timings are medians over ``reps`` round-robin steps after one warm-up step; only ratios are meaningful across
machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from advdim.empirical import Method, objective
from advdim.empirical._train import DEFAULT_ARCH
from torch.nn import functional as F

from advdim.arch import resolve
from advdim.build import build
from advdim.gradients import lp_norm


def _time(fn, reps: int) -> float:
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def step_ratios(size: int, batch: int, reps: int, eps: float = 0.01) -> dict[str, float]:
    """Median seconds of a plain step and each defence's step as a ratio to it."""
    net = build(resolve(DEFAULT_ARCH, size, 1), seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step(method: Method) -> None:
        loss = objective(method, net, x, y, eps, g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for m in Method:  # warm-up
        step(m)
    samples: dict[str, list[float]] = {m.value: [] for m in Method}
    for _ in range(reps):  # round robin, so that load drift on a shared machine hits every method alike
        for m in Method:
            t = time.perf_counter()
            step(m)
            samples[m.value].append(time.perf_counter() - t)
    times = {k: statistics.median(v) for k, v in samples.items()}
    plain = times["plain"]
    return {"plain_seconds": plain, **{m: t / plain for m, t in times.items() if m != "plain"}}


def penalty_vs_naive(size: int, batch: int, reps: int) -> dict[str, float]:
    """Seconds per gradient-penalty step, batched (one double back-prop) and one sample at a time."""
    net = build(resolve(DEFAULT_ARCH, size, 1), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def batched() -> None:
        objective(Method.GP2, net, x, y, 0.01).backward()

    def naive() -> None:
        total = F.cross_entropy(net(x), y)
        pens = []
        for b in range(batch):
            xb = x[b:b + 1].clone().requires_grad_(True)
            (gb,) = torch.autograd.grad(F.cross_entropy(net(xb), y[b:b + 1]), xb, create_graph=True)
            pens.append(lp_norm(gb, 2))
        (total + 0.01 * size * torch.cat(pens).mean() / 2).backward()

    tb, tn = _time(batched, reps), _time(naive, max(1, reps // 2))
    return {"batched_seconds": tb, "naive_seconds": tn, "naive_over_batched": tn / tb}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (advdim train's default is 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"config": vars(args), "arch": DEFAULT_ARCH, "threads": torch.get_num_threads(),
           "step_ratio_to_plain": step_ratios(args.size, args.batch, args.reps),
           "gradient_penalty": penalty_vs_naive(args.size, args.batch, args.reps)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
