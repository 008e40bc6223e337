"""Calibration of the infinite-width extrapolation on the real engine (docs/theory.md, section 4).

In families whose depth grows with d (``strided``: one stride-2 block per doubling of s) the slope
of ``log E||d_x f||_q`` measured at the sampled widths bends below the Gaussian law; ``advdim
simulate`` therefore judges the slope extrapolated to infinite width (``fit_width_limit`` over the
topologies' width index, docs/simulate.md).  This script runs ``replicates`` independent studies
(seeds 0, 1, ...) of random topologies and reports, per q:

* the sampled-width deviation ``measured - predicted slope`` (mean over replicates, its se from the
  spread of the replicates, and the mean of the studies' own bootstrap se);
* the extrapolated deviation (the intercept of ``fit_width_limit``), the same way, the mean and
  standard deviation of its z-scores ``deviation / se`` (calibrated: about 0 and 1) and the number of
  studies whose verdict falsely rejects the true law (alpha 0.01);
* for each planted exponent error (``plant_exponent``: every norm times ``d^p``, the cells reused from
  a run store) the number of studies whose extrapolated verdict rejects it;
* per width group (topologies sharing the width index x, i.e. the channel count) the deviation of
  its own slope, averaged over the studies, and the extrapolation refitted without the narrowest
  group (the shape of the finite-width term: is it linear in x?).

Usage (the table of docs/theory.md)::

    OMP_NUM_THREADS=1 python scripts/width_calibration.py --replicates 6 --nets 200

The theory of each distinct topology is computed once for all replicates (the family has 216), and
only for q = 1, 2 (:func:`law_q12`: the same finite-d law as ``Prediction.expected_norm``; the
q = inf prediction for conv nets samples the path-sum model, tens of seconds per topology, and
is not calibrated here).
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from advdim.simulate import _study
from advdim.theory import _gauss, _graph, _law

from advdim.arch import Family, Target
from advdim.build import Init
from advdim.stats import critical, fit_width_limit
from advdim.store import RunStore

QS = ("1", "2")


@functools.cache
def law_q12(fam: Family | Target, sizes: tuple[int, ...], channels: int,
            init: Init = Init.HE) -> _study.TopologyLaw:
    """``advdim.simulate._study.predict_topology`` for q = 1, 2: ``E||d_x f_k||_q`` of independent
    ``N(0, sigma_i^2)`` coordinates with the exact path-sum variances (``Prediction.expected_norm``)."""
    specs = [fam.spec(int(s), channels) for s in sizes]
    none: dict[str, float | None] = {q: None for q in _study.Q_KEYS}
    if any(_graph.routing_layers(spec) for spec in specs):
        return _study.TopologyLaw({q: None for q in _study.Q_KEYS}, None, none)
    norms: dict[str, tuple[float, ...] | None] = {"inf": None}
    for q in QS:
        norms[q] = tuple(_gauss.expected_q_norm(*_law._profile(spec, init.value, 0), float(q)) for spec in specs)
    sq = tuple(float(np.sum(_law._variances(spec, init.value, 0))) for spec in specs)
    return _study.TopologyLaw(norms, sq, none)


def _summary(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="strided")
    ap.add_argument("--replicates", type=int, default=6)
    ap.add_argument("--nets", type=int, default=200, help="random topologies per study")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=2)
    ap.add_argument("--plant", default="-0.05,0.05", help="planted exponent errors, comma-separated")
    ap.add_argument("--store", default=None, help="run store file (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    plants = [float(p) for p in args.plant.split(",") if p.strip()]
    _study.predict_topology = law_q12  # the study's theory adapter, for q = 1, 2, each topology once
    start = time.time()
    rows: dict[str, dict[str, list[float]]] = {q: {k: [] for k in ("sampled", "sampled_se", "limit", "limit_se",
                                                                   "coef", "reject", "wide", "wide_se")} for q in QS}
    groups: dict[tuple[str, float], list[tuple[float, float]]] = {}
    channels: dict[float, str] = {}
    planted: dict[tuple[str, float], int] = {(q, p): 0 for q in QS for p in plants}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(args.store) if args.store else Path(tmp) / "cells.sqlite")
        for rep in range(args.replicates):
            common = {"sizes": sizes, "nets": args.nets, "draws": args.draws, "inputs": args.inputs, "seed": rep,
                      "store": store, "progress": False}
            res = _study.study(args.family, **common)
            topos = _study.topologies(args.family, args.nets, rep, sizes, res.channels)
            x = np.array([_study.width_index(f, sizes, res.channels) for f in topos])
            laws = [law_q12(f, sizes, res.channels) for f in topos]
            for f, xf in zip(topos, x):
                channels[round(float(xf), 6)] = str(dict(f.params).get("channels", "-"))
            for q in QS:
                r = res.q[q]
                assert r.predicted_slope is not None and r.limit is not None, "no extrapolation: nothing to calibrate"
                for xg, _, dev, se in r.limit.groups:
                    groups.setdefault((q, round(xg, 6)), []).append((dev, se))
                keep = x < x.max() - 1e-12  # without the narrowest group
                pred = np.array([law.norms[q] for law in laws], dtype=np.float64)
                wide = fit_width_limit(np.array(res.d, dtype=np.float64), np.array(res.values[q])[keep], pred[keep],
                                       x[keep], seed=rep)
                rows[q]["wide"].append(math.nan if wide is None else wide.deviation)
                rows[q]["wide_se"].append(math.nan if wide is None else wide.se)
                rows[q]["sampled"].append(r.measured_slope - r.predicted_slope)
                rows[q]["sampled_se"].append(r.se)
                rows[q]["limit"].append(r.limit.deviation)
                rows[q]["limit_se"].append(r.limit.se)
                rows[q]["coef"].append(r.limit.coefficient)
                rows[q]["reject"].append(float(r.passed is False))
            for p in plants:
                pres = _study.study(args.family, plant_exponent=p, **common)  # the same cells, read back
                for q in QS:
                    planted[(q, p)] += int(pres.q[q].passed is False)
            print(f"replicate {rep}: " + "; ".join(
                f"q={q} sampled {rows[q]['sampled'][-1]:+.4f} (se {rows[q]['sampled_se'][-1]:.4f}), limit "
                f"{rows[q]['limit'][-1]:+.4f} (se {rows[q]['limit_se'][-1]:.4f})" for q in QS)
                + f"  [{time.time() - start:.0f} s]", flush=True)
        store.close()
    n = args.replicates
    print(f"\n{args.family}, sizes {list(sizes)}, {n} studies x {args.nets} topologies x {args.draws} draws x "
          f"{args.inputs} inputs (seeds 0-{n - 1}); critical value c = {critical(n=args.nets):.3f}; "
          f"{time.time() - start:.0f} s\n")
    print("| q | sampled-width deviation | extrapolated deviation | z-scores of the extrapolation | finite-width "
          "coefficient | true law rejected | " + " | ".join(f"plant {p:+g} rejected" for p in plants) + " |")
    print("|" + "---|" * (6 + len(plants)))
    for q in QS:
        d = rows[q]
        s_mean, s_se = _summary(d["sampled"])
        l_mean, l_se = _summary(d["limit"])
        z = np.asarray(d["limit"]) / np.asarray(d["limit_se"])
        c_mean, c_se = _summary(d["coef"])
        print(f"| {q} | {s_mean:+.4f} +- {s_se:.4f} (per study se {np.mean(d['sampled_se']):.4f}) | "
              f"{l_mean:+.4f} +- {l_se:.4f} (per study se {np.mean(d['limit_se']):.4f}) | "
              f"mean {z.mean():+.2f}, sd {z.std(ddof=1) if n > 1 else math.nan:.2f} | {c_mean:+.3f} +- {c_se:.3f} | "
              f"{int(sum(d['reject']))}/{n} | " + " | ".join(f"{planted[(q, p)]}/{n}" for p in plants) + " |")
    print("\n| q | width index x (channels) | deviation of the group's slope, mean over studies (se) | studies |")
    print("|---|---|---|---|")
    for (q, xg), devs in sorted(groups.items()):
        g_mean, g_se = _summary([v for v, _ in devs])
        print(f"| {q} | {xg:.4f} ({channels.get(xg, '?')}) | {g_mean:+.4f} "
              f"({g_se:.4f}) | {len(devs)} |")
    for q in QS:
        w_mean, w_se = _summary(rows[q]["wide"])
        print(f"\nq = {q}: extrapolated without the narrowest group: {w_mean:+.4f} +- {w_se:.4f} "
              f"(per study se {np.nanmean(rows[q]['wide_se']):.4f})")


if __name__ == "__main__":
    main()
