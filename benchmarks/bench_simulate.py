"""Engine vs naive loop: net-gradient samples per second, plus the machine's matmul FLOP/s.

``python -m benchmarks.bench_simulate [--sizes 8,16,64,128] [--seconds 2] [--device cpu]``

Naive loop: for each net, ``advdim.build.build`` (He init), autograd on ``inputs`` inputs, norm,
throw the module away.  Engine: ``advdim.simulate.sample_norms`` (batched nets; exact shortcut
for ``dense``).  Conv FLOPs are counted for the forward convolutions and the input-gradient
pass (2x forward: the backward of each conv w.r.t. its input, no weight gradients).
"""

from __future__ import annotations

import argparse
import time

import torch
from advdim.simulate._engine import sample_norms

from advdim.arch import Conv, Dense, family
from advdim.build import build
from advdim.gradients import grad_norms

FAMILIES = ("dense", "strided", "avgpool", "maxpool")


def matmul_flops(seconds: float, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def spec_flops(spec) -> float:  # type: ignore[no-untyped-def]
    """FLOPs of one forward pass (conv and dense multiply-adds x 2)."""
    total = 0.0
    for layer, shape, out in zip(spec.layers, spec.shapes(), spec.shapes()[1:]):
        if isinstance(layer, Conv):
            total += 2.0 * out[0] * out[1] * out[2] * shape[0] * layer.kernel**2
        elif isinstance(layer, Dense):
            total += 2.0 * shape[0] * layer.out_features
    return total


def _rate(fn, samples: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps == 0:
        fn()
        reps += 1
    return samples * reps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="8,16,64,128")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--nets", type=int, default=8)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated family names")
    args = ap.parse_args(argv)
    peak = matmul_flops(args.seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul {peak / 1e9:.1f} GFLOP/s")
    print("| family | d | naive samples/s | engine samples/s | speed-up | engine GFLOP/s | share of matmul |")
    print("|---|---|---|---|---|---|---|")
    for name in args.families.split(","):
        fam = family(name)
        for s in (int(x) for x in args.sizes.split(",")):
            spec = fam.spec(s)
            n, b = args.nets, args.inputs
            x = torch.randn(b, *spec.input_shape)

            def naive(spec=spec, n=n, x=x) -> None:  # type: ignore[no-untyped-def]
                for r in range(n):
                    grad_norms(build(spec, seed=r), x, q=2)

            def engine(spec=spec, n=n, b=b) -> None:  # type: ignore[no-untyped-def]
                sample_norms(spec, n, b, seed=0, device=args.device)

            rn = _rate(naive, n * b, args.seconds)
            re = _rate(engine, n * b, args.seconds)
            if name == "dense":  # the exact shortcut does no matrix products: no FLOP share
                flops = "- | -"
            else:
                gf = 3 * spec_flops(spec) * re
                flops = f"{gf / 1e9:.1f} | {gf / peak:.0%}"
            print(f"| {name} | {spec.d} | {rn:.0f} | {re:.0f} | {re / rn:.1f}x | {flops} |", flush=True)


if __name__ == "__main__":
    main()
