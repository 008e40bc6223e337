"""Wide-limit E||d_x f_k||_2^2 (theory/_meanfield.py) against Monte Carlo over real He nets.

For each (family, s, channels, nets) row: the mean of ||d_x f_0||_2^2 over ``nets`` independently
initialised nets of ``family(channels=C).spec(s)`` (each on ``inputs`` i.i.d. N(0, 1) inputs, the
simulate engine in float64, in chunks of ``chunk`` nets), its standard error over nets, the path
sum and the wide-limit value.  Prints a markdown table and, with --json, one JSON record per row.

    python scripts/meanfield_table.py avgpool:8:16:6400 avgpool:8:64:1600 gap:8:16:6400 --inputs 8
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from advdim.simulate._engine import sample_norms
from advdim.theory._meanfield import wide_law

from advdim.arch import family


def monte_carlo(spec_family: str, size: int, channels: int, nets: int, inputs: int, seed: int,
                chunk: int) -> np.ndarray:
    """Per-net means of ``||d_x f_0||_2^2``, shape ``(nets,)``, float64."""
    spec = family(spec_family, channels=channels).spec(size)
    out = []
    for n, start in enumerate(range(0, nets, chunk)):
        ss = np.random.SeedSequence([seed, size, channels, n])
        got = sample_norms(spec, nets=min(chunk, nets - start), inputs=inputs, seed=ss, dtype=torch.float64)
        out.append(got["sq2"].mean(axis=1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="family:s:channels:nets")
    ap.add_argument("--inputs", type=int, default=4, help="inputs per net")
    ap.add_argument("--chunk", type=int, default=100, help="nets per engine call")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--wide-inputs", type=int, help="inputs of the wide-limit recursion (default: wide_law's)")
    ap.add_argument("--wide-probes", type=int, help="random directions per input (default: wide_law's)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mc-from", nargs="*", default=(),
                    help="JSON records of earlier runs (same rows and seed): reuse their Monte Carlo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| family | s | d | channels | nets | MC mean +- se | path sum | wide limit | MC / path sum | "
          "MC / wide limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    old, laws = {}, {}
    for path in args.mc_from:
        with open(path) as fh:
            for line in fh:
                if line.startswith("{"):
                    rec = json.loads(line)
                    old[(rec["family"], rec["s"], rec["channels"], rec["nets"], rec["inputs"], rec["seed"])] = rec
    for row in args.rows:
        fam, s, c, n = row.split(":")
        size, channels, nets = int(s), int(c), int(n)
        t0 = time.time()
        if (fam, size) not in laws:  # the wide limit does not depend on the channel count
            laws[fam, size] = wide_law(family(fam).spec(size), inputs=args.wide_inputs, probes=args.wide_probes)
        law = laws[fam, size]
        t1 = time.time()
        key = (fam, size, channels, nets, args.inputs, args.seed)
        if key in old:
            mean, se = old[key]["mc_mean"], old[key]["mc_se"]
        else:
            per_net = monte_carlo(fam, size, channels, nets, args.inputs, args.seed, args.chunk)
            mean, se = float(per_net.mean()), float(per_net.std(ddof=1) / math.sqrt(nets))
        t2 = time.time()
        d = 3 * size * size
        print(f"| {fam} | {size} | {d} | {channels} | {nets} | {mean:.5g} +- {se:.2g} | {law.path_sum:.5g} | "
              f"{law.value:.5g} | {mean / law.path_sum:.4f} +- {se / law.path_sum:.4f} | "
              f"{mean / law.value:.4f} +- {se / law.value:.4f} |", flush=True)
        if args.json:
            print(json.dumps({"family": fam, "s": size, "channels": channels, "nets": nets, "inputs": args.inputs,
                              "seed": args.seed, "mc_mean": mean, "mc_se": se, "path_sum": law.path_sum,
                              "wide": law.value, "wide_se": law.stderr, "wide_inputs": law.inputs,
                              "wide_tangent": law.tangent, "seconds_wide": t1 - t0, "seconds_mc": t2 - t1}), flush=True)


if __name__ == "__main__":
    main()
