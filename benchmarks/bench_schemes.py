"""Batching scheme x memory layout of the conv engine, measured side by side on one device.

``python -m benchmarks.bench_schemes [--device cpu|cuda] [--nets 8,64] [--sizes 8,16,64,128] [--seconds 1]``

For each family's default member, size and number of nets per call, times one engine call
(``input_gradients``: forward + input-gradient pass of R nets on 4 inputs each) under
``Scheme.GROUPED`` / ``Scheme.SPLIT`` in NCHW and NHWC (channels_last) and ``Scheme.UNFOLD``, and prints samples per
second with the winner.  This is the measurement behind ``choose_scheme`` and
``choose_channels_last`` in ``advdim.simulate._engine`` (see ``docs/performance.md``).
"""

from __future__ import annotations

import argparse

import torch
from advdim.simulate._engine import Scheme, choose_channels_last, choose_scheme, draw_stack, input_gradients

from advdim.arch import family
from advdim.build import resolve_device
from benchmarks.bench_simulate import rate

VARIANTS = [(Scheme.GROUPED, False), (Scheme.GROUPED, True), (Scheme.SPLIT, False), (Scheme.SPLIT, True),
            (Scheme.UNFOLD, False)]


def _label(scheme: Scheme, cl: bool) -> str:
    return f"{scheme.value}/{'NHWC' if cl else 'NCHW'}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", default="8")
    ap.add_argument("--sizes", default="8,16,64,128")
    ap.add_argument("--families", default="strided,avgpool,maxpool")
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; "
          f"{args.inputs} inputs per net; samples/s")
    print("| family | s | nets | " + " | ".join(_label(*v) for v in VARIANTS) + " | best | engine's choice |")
    print("|---" * (len(VARIANTS) + 5) + "|")
    for name in args.families.split(","):
        for s in (int(x) for x in args.sizes.split(",")):
            spec = family(name).spec(s)
            for r in (int(x) for x in args.nets.split(",")):
                stack = draw_stack(spec, r, torch.Generator().manual_seed(0), device=dev)
                x = torch.randn(args.inputs, r, *spec.input_shape, device=dev)
                rates = [rate(lambda sch=sch, cl=cl, st=stack, x=x: input_gradients(st, x, scheme=sch,
                                                                                      channels_last=cl),
                               r * args.inputs, args.seconds, dev) for sch, cl in VARIANTS]
                best = max(range(len(VARIANTS)), key=lambda i: rates[i])
                chosen = _label(choose_scheme(spec, dev), choose_channels_last(spec, dev))
                cells = " | ".join(f"{v:.0f}" for v in rates)
                print(f"| {name} | {s} | {r} | {cells} | {_label(*VARIANTS[best])} | {chosen} |", flush=True)


if __name__ == "__main__":
    main()
