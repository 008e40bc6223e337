"""Engine vs naive loop for the block families (``resnet``, ``bn``, ``ln``, ``vit``) at ``d = 3*32^2``.

``python -m benchmarks.bench_blocks [--size 32] [--families resnet,bn,ln,vit] [--nets 8] [--inputs 4]
[--seconds 2] [--rounds 3] [--device cpu] [--threads N] [--clock wall|cpu]``

Naive loop: for each net, ``advdim.build.build`` (He init: residual blocks, batch / layer norm,
attention as torch modules), autograd on its ``inputs`` inputs (its batch, for batch norm in batch
mode), norm, throw the module away.  Engine: ``advdim.simulate.sample_norms`` (the nets' weights
stacked; grouped convolutions, batched matmuls and one attention call for all nets).  Both draw
their weights.  The two are timed in alternating rounds of ``--seconds`` each, so that a machine
whose load drifts (other jobs on a shared CPU) biases neither; the table gives the median rate of
each and the median and smallest per-round ratio.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

import torch
from advdim.simulate._engine import choose_channels_last, choose_scheme, sample_norms

from advdim.arch import parse_family
from advdim.build import build, resolve_device
from advdim.gradients import grad_norms


def rate(fn: Callable[[], None], samples: int, seconds: float, device: torch.device,
         timer: Callable[[], float] = time.perf_counter) -> float:
    """Samples per second of ``fn`` (``samples`` per call) over at least ``seconds`` of ``timer``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    reps, t0 = 0, timer()
    while timer() - t0 < seconds or reps == 0:
        fn()
        reps += 1
        sync()
    return samples * reps / (timer() - t0)

FAMILIES = ("resnet", "bn", "ln", "vit")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=32, help="input side s (d = 3 s^2)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma-separated families (default members) or members, e.g. resnet,vit(scaling=tokens)")
    ap.add_argument("--nets", type=int, default=8)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one timing round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating naive / engine rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0: torch's default); 1 gives steadier numbers on a CPU shared with other jobs")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (with --threads 1 on a CPU shared with other jobs, the time "
                         "the work took, not the time spent waiting for a core)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        ap.error("--clock cpu measures one thread's work: add --threads 1")
    timer = time.process_time if args.clock == "cpu" else time.perf_counter
    dev = resolve_device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}; {args.nets} nets x {args.inputs} inputs per call; "
          f"{args.rounds} alternating rounds of {args.seconds:g} s ({args.clock} clock); "
          "samples/s (median over rounds)")
    print("| member | d | scheme | naive samples/s | engine samples/s | speed-up (median) | speed-up (worst round) |")
    print("|---|---|---|---|---|---|---|")
    for text in re.findall(r"[^,()]+(?:\([^)]*\))?", args.families):
        member = parse_family(text.strip())
        spec = member.spec(args.size)
        n, b = args.nets, args.inputs
        x = torch.randn(b, *spec.input_shape, generator=torch.Generator().manual_seed(0)).to(dev)

        def naive(spec=spec, n=n, x=x) -> None:  # type: ignore[no-untyped-def]
            for r in range(n):
                grad_norms(build(spec, seed=r, device=dev), x, q=2)

        def engine(spec=spec, n=n, b=b) -> None:  # type: ignore[no-untyped-def]
            sample_norms(spec, n, b, seed=0, device=dev)

        naive_rates, engine_rates = [], []
        for _ in range(args.rounds):
            naive_rates.append(rate(naive, n * b, args.seconds, dev, timer))
            engine_rates.append(rate(engine, n * b, args.seconds, dev, timer))
        ratios = [e / v for e, v in zip(engine_rates, naive_rates)]
        scheme = f"{choose_scheme(spec, dev).value}/{'NHWC' if choose_channels_last(spec, dev) else 'NCHW'}"
        print(f"| {member.to_text()} | {spec.d} | {scheme} | "
              f"{statistics.median(naive_rates):.1f} | {statistics.median(engine_rates):.1f} | "
              f"{statistics.median(ratios):.1f}x | {min(ratios):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
