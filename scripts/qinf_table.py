"""The q = inf table of docs/theory.md: predicted vs measured ``E||d_x f_k||_inf`` for conv family members.

For each member and size: the mean of ``||d_x f_0||_inf`` over ``--nets`` He-initialised nets of the
repository's engine (:func:`advdim.simulate._engine.sample_norms`, i.i.d. ``N(0, 1)`` inputs, the mean
over ``--inputs`` inputs per net, its standard error over nets), against the theory's predictions:
the path-sum model with channel gates (:func:`advdim.theory._maxnorm.expected_max_norm`, the one
``Prediction.expected_norm(inf, s)`` uses where :func:`~advdim.theory._maxnorm.inf_norm_exact`
holds), the same model with independent gates (H1 as stated) and independent Gaussian coordinates.

    python scripts/qinf_table.py                       # the six members of docs/theory.md, s = 8..64
    python scripts/qinf_table.py --members "gap;strided(channels=8)" --sizes 16,64 --json out.json

Every number is seeded: the measurements by ``--seed``, the predictions by the seed that
``Prediction.expected_norm`` uses (0); the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

MEMBERS = ("strided", "avgpool", "gap", "strided(padding=zeros)", "strided(dilation=2)", "strided(kernel=5)")
#: nets per engine call (memory), each call with its own seed
CHUNK = 250


def measure(spec, nets: int, inputs: int, seed: int, init: str) -> tuple[float, float]:
    """Mean over nets of the per-net mean of ``||d_x f_0||_inf`` and its standard error."""
    from advdim.simulate._engine import sample_norms

    from advdim.build import Init

    per_net = []
    for i, start in enumerate(range(0, nets, CHUNK)):
        out = sample_norms(spec, nets=min(CHUNK, nets - start), inputs=inputs, seed=seed * 100003 + i,
                           init=Init.parse(init))
        per_net.append(out["inf"].mean(axis=1))
    v = np.concatenate(per_net)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def row(member: str, size: int, args: argparse.Namespace) -> dict:
    from advdim.theory import _gauss
    from advdim.theory._graph import input_variances
    from advdim.theory._maxnorm import GateLaw, estimate_max_norm, expected_max_norm, inf_norm_exact

    from advdim.arch import parse_family

    spec = parse_family(member).spec(size, args.channels)
    t0 = time.process_time()
    chan = expected_max_norm(spec, args.init, 0, GateLaw.CHANNEL, args.rel_se)  # Prediction.expected_norm's seed
    t_pred = time.process_time() - t0
    assert chan is not None, f"{member} at {size}: too large for the Monte Carlo budget"
    indep = estimate_max_norm(spec, chan.draws, args.init, 0, GateLaw.INDEPENDENT) if args.independent else None
    values, counts = _gauss.profile(input_variances(spec, args.init))
    iid = _gauss.expected_q_norm(values, counts, math.inf)
    t0 = time.process_time()
    meas, se = measure(spec, args.nets, args.inputs, args.seed, args.init)
    return {"member": member, "size": size, "d": spec.d, "init": args.init, "measured": meas, "measured_se": se,
            "nets": args.nets, "inputs": args.inputs, "predicted": chan.to_json(),
            "independent_gates": None if indep is None else indep.to_json(), "independent_gaussians": iid,
            "ratio": chan.mean / meas, "ratio_se": math.hypot(chan.se / meas, chan.mean * se / meas**2),
            "inf_norm_exact": inf_norm_exact(spec, args.init), "predict_cpu_s": t_pred,
            "measure_cpu_s": time.process_time() - t0}


def markdown(r: dict) -> str:
    p = r["predicted"]
    ind = r["independent_gates"]
    ind_txt = "-" if ind is None else f"{ind['mean'] / r['measured']:.3f}"
    init = "" if r["init"] == "he" else f" ({r['init']})"
    meas = f"{r['measured']:#.4g} +- {100 * r['measured_se'] / r['measured']:.2f}%"
    return (f"| `{r['member']}`{init} | {r['size']} | {meas} "
            f"| {p['mean']:#.4g} +- {100 * p['se'] / p['mean']:.2f}% | **{r['ratio']:.3f}** +- {r['ratio_se']:.3f} "
            f"| {ind_txt} | {r['independent_gaussians'] / r['measured']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default=";".join(MEMBERS), help="family members separated by ';'")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--init", default="he")
    ap.add_argument("--nets", type=int, default=2000)
    ap.add_argument("--inputs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1, help="seed of the measured nets")
    ap.add_argument("--rel-se", type=float, default=None,
                    help="relative se of the prediction [default: the one Prediction.expected_norm uses]")
    ap.add_argument("--no-independent", dest="independent", action="store_false",
                    help="skip the independent-gate column")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    if args.rel_se is None:
        from advdim.theory._maxnorm import REL_SE

        args.rel_se = REL_SE
    import torch

    torch.set_num_threads(1)
    rows = []
    print("| member | s | measured +- se | predicted +- se | ratio | indep. gates | indep. Gaussians |")
    print("|---|---|---|---|---|---|---|")
    for member in [m.strip() for m in args.members.split(";") if m.strip()]:
        for size in (int(s) for s in args.sizes.split(",")):
            r = row(member, size, args)
            rows.append(r)
            print(markdown(r), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
