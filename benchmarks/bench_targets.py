"""A fixed target through the engine against random topologies of the same family: samples/s of
whole sweep cells (``advdim.simulate._study.run_cell``), measured round-robin in one run.

    python -m benchmarks.bench_targets [--size 32] [--cells 6] [--draws 2] [--inputs 4] [--device cpu]

Issue 11: a fixed member (its concrete spec travels in the cell) must be at least as fast per
sample as a random topology of its family (rebuilt from the family's parameters in the cell).
Both paths run the SAME networks: the study's random topologies, once as family cells and once
named as fixed members, so the ratio measures the target path, not a difference of nets.
"""

from __future__ import annotations

import argparse
import json
import time

from advdim.simulate._study import cell_config, run_cell, topologies

from advdim.arch import resolve_target
from advdim.build import resolve_device
from advdim.gradients import Target


def _per_sample(configs: list[dict[str, object]]) -> float:
    run_cell(configs[0])  # warm-up
    t0, n = time.perf_counter(), 0
    for cfg in configs:
        out = run_cell(cfg)
        n += int(out["n"])
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--families", default="dense,strided,avgpool,gap")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).type
    rows = {}
    for name in args.families.split(","):
        topos = topologies(name, args.cells, 0, (args.size // 2, args.size), 3)
        rand = [cell_config(f, t, args.size, 3, args.draws, args.inputs, 0, Target.LOGIT, True, device=dev)
                for t, f in enumerate(topos)]
        fixed = [cell_config(resolve_target(f), t, args.size, 3, args.draws, args.inputs, 0, Target.LOGIT, True,
                             device=dev) for t, f in enumerate(topos)]
        s_rand, s_fixed = _per_sample(rand), _per_sample(fixed)
        s_rand = min(s_rand, _per_sample(rand))  # round-robin twice: the better of two for each path
        s_fixed = min(s_fixed, _per_sample(fixed))
        rows[name] = {"fixed_s_per_sample": s_fixed, "random_s_per_sample": s_rand,
                      "fixed_over_random_speed": s_rand / s_fixed}
    result = {"benchmark": "targets", "size": args.size, "device": dev, "families": rows}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
