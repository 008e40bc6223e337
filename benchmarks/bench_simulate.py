"""Engine vs naive loop: net-gradient samples per second, plus the machine's matmul FLOP/s.

``python -m benchmarks.bench_simulate [--sizes 8,16,64,128] [--seconds 2] [--device cpu|cuda] [--nets 8]``

Naive loop: for each net, ``advdim.build.build`` (He init), autograd on ``inputs`` inputs, norm,
throw the module away.  Engine: ``advdim.simulate.sample_norms`` (batched nets; exact shortcut
for ``dense``).  Conv FLOPs are counted for the forward convolutions and the input-gradient
pass: the backward of a conv w.r.t. its input is a transposed convolution with the same
multiply-adds, so the count is 2x the forward (no weight gradients are computed).
"""

from __future__ import annotations

import argparse
import time

import torch
from advdim.simulate._engine import ieee_float32, sample_norms

from advdim.arch import Conv, Dense, family
from advdim.build import build, resolve_device
from advdim.gradients import grad_norms

FAMILIES = ("dense", "strided", "avgpool", "maxpool")


def matmul_flops(seconds: float, device: torch.device, n: int = 1024) -> float:
    """float32 matmul FLOP/s (n = 1024 on CPU, 8192 on GPU, TF32 off: the IEEE float32 rate the engine uses)."""
    n = 8192 if device.type == "cuda" else n
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with ieee_float32():
        return 2 * n**3 * rate(lambda: a @ b, 1, seconds, device)


def spec_flops(spec) -> float:  # type: ignore[no-untyped-def]
    """FLOPs of one forward pass (conv and dense multiply-adds x 2)."""
    total = 0.0
    for layer, shape, out in zip(spec.layers, spec.shapes(), spec.shapes()[1:]):
        if isinstance(layer, Conv):
            total += 2.0 * out[0] * out[1] * out[2] * shape[0] * layer.kernel**2
        elif isinstance(layer, Dense):
            total += 2.0 * shape[0] * layer.out_features
    return total


def conv_flops(seconds: float, device: torch.device, side: int = 128, channels: int = 16, batch: int = 32) -> float:
    """FLOP/s of the library's best 3x3 convolution kernel at the engine's densest layer shape.

    One ``channels -> channels`` convolution on ``batch`` maps of ``side x side`` (forward only,
    the faster of the NCHW and NHWC layouts): the ceiling that the convolution kernels themselves
    reach on this machine, beside the matmul peak.
    """
    x = torch.randn(batch, channels, side, side, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)
    best = 0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        calls = rate(lambda xf=xf: torch.nn.functional.conv2d(xf, w, padding=1), 1, seconds, device)
        best = max(best, calls * 2.0 * batch * channels * side * side * channels * 9)
    return best


def rate(fn, samples: int, seconds: float, device: torch.device | None = None) -> float:  # type: ignore[no-untyped-def]
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    fn()
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps == 0:
        fn()
        reps += 1
        sync()
    return samples * reps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="8,16,64,128")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--nets", type=int, default=8)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated family names")
    ap.add_argument("--no-naive", action="store_true", help="time the engine only (large --nets on a GPU)")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    peak = matmul_flops(args.seconds, dev)
    conv_peak = conv_flops(args.seconds, dev)
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {name_dev}; matmul {peak / 1e9:.1f} GFLOP/s; "
          f"best 3x3 conv kernel (16 ch, 128x128) {conv_peak / 1e9:.1f} GFLOP/s ({conv_peak / peak:.0%} of matmul); "
          f"{args.nets} nets x {args.inputs} inputs per call")
    print("| family | d | naive samples/s | engine samples/s | engine nets/s | speed-up | engine GFLOP/s "
          "| share of matmul | share of conv kernel |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.families.split(","):
        fam = family(name)
        for s in (int(x) for x in args.sizes.split(",")):
            spec = fam.spec(s)
            n, b = args.nets, args.inputs
            x = torch.randn(b, *spec.input_shape, device=dev)

            def naive(spec=spec, n=n, x=x) -> None:  # type: ignore[no-untyped-def]
                for r in range(n):
                    grad_norms(build(spec, seed=r, device=dev), x, q=2)

            def engine(spec=spec, n=n, b=b) -> None:  # type: ignore[no-untyped-def]
                sample_norms(spec, n, b, seed=0, device=dev)

            rn = float("nan") if args.no_naive else rate(naive, n * b, args.seconds, dev)
            re = rate(engine, n * b, args.seconds, dev)
            if name == "dense":  # the exact shortcut does no matrix products: no FLOP share
                flops = "- | - | -"
            else:
                gf = 2 * spec_flops(spec) * re
                flops = f"{gf / 1e9:.1f} | {gf / peak:.0%} | {gf / conv_peak:.0%}"
            print(f"| {name} | {spec.d} | {rn:.0f} | {re:.0f} | {re / b:.0f} | {re / rn:.1f}x | {flops} |", flush=True)


if __name__ == "__main__":
    main()
