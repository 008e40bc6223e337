"""The theory's share of a random-topology study's wall time: the q = inf prediction, old method vs new.

    python -m benchmarks.bench_theory_scaling [--nets 40] [--family strided] [--methods new,units,old]
                                              [--sizes 8,16,32,64] [--seed 0]

Each method runs the whole study (``advdim.simulate._study.study`` with the defaults of ``advdim
simulate``: 2 inputs, the family's default draws), in one process, one after the other, with the
theory's caches cleared before each; the theory's seconds are those spent in ``predict_topology``
(wall and CPU), the share is theory wall / study wall.  Methods (issue 21):

* ``new``: what ``study`` does: each random topology's q = inf Monte Carlo is read from the theory's
  table of the built-in families' members (``advdim.theory._maxnorm.tabulated``) or else runs
  ``RANDOM_INF_DRAWS`` draws with no pilot; a study's repeated topologies are predicted once;
* ``units``: the same without the table (what a study outside it -- other sizes, inits, channels --
  costs per topology);
* ``old``: the method before: a pilot-sized Monte Carlo to 2% per topology (``inf_rel_se=0.02``,
  256 draws at least), no table and no cache of topologies (on today's matrix kernels, which are
  themselves about 1.5x faster than before).

Besides the times, each method's q rows (predicted and measured slopes, outcome) are printed, so that
one run shows whether the verdicts move.  JSON on stdout, a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from advdim.simulate import _analysis, _study
from advdim.simulate._cli import default_draws
from advdim.theory import _maxnorm

METHODS = ("new", "units", "old")


class _Timed:
    """``predict_topology`` wrapped with wall and CPU clocks (and, for ``old``, the method before)."""

    def __init__(self, old: bool) -> None:
        self.old, self.wall, self.cpu, self.calls = old, 0.0, 0.0, 0

    def __call__(self, fam: Any, sizes: Any, channels: int, *args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            if self.old and kwargs.get("inf_draws") is not None:  # a random topology, predicted as before
                kwargs = {**kwargs, "inf_draws": None, "inf_rel_se": 0.02}
                init, target = (list(args) + [_analysis.Init.HE, _analysis.GradTarget.LOGIT])[:2]
                return _analysis._topology_law(fam, tuple(sizes), channels, init, target, 0.02,
                                               kwargs.get("wide", False), tuple(kwargs.get("keys", _analysis.Q_KEYS)),
                                               None, None)
            return _analysis.predict_topology(fam, sizes, channels, *args, **kwargs)
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c
            self.calls += 1


def run(method: str, family: str, sizes: tuple[int, ...], nets: int, seed: int) -> dict[str, Any]:
    """One study with ``method``'s q = inf prediction: seconds and the q rows."""
    _maxnorm.expected_max_norm.cache_clear()
    _analysis._cached_topology_law.cache_clear()
    timed = _Timed(method == "old")
    table = _maxnorm.tabulated
    _study.predict_topology = timed  # type: ignore[assignment]
    if method != "new":
        _maxnorm.tabulated = lambda *a, **k: None  # type: ignore[assignment]
    try:
        w, c = time.perf_counter(), time.process_time()
        res = _study.study(family, sizes, 3, nets, 2, seed, "cpu", "logit", True, draws=default_draws(family),
                           progress=False)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    finally:
        _study.predict_topology = _analysis.predict_topology
        _maxnorm.tabulated = table  # type: ignore[assignment]
    rows = {k: {"predicted": r.predicted_slope, "measured": r.measured_slope,
                "limit": r.limit_slope, "se": r.limit.se if r.limit is not None else r.se,
                "outcome": r.outcome.value} for k, r in res.q.items()}
    return {"method": method, "nets": nets, "distinct": len(set(res.topologies)), "study_wall_s": wall,
            "study_cpu_s": cpu, "theory_wall_s": timed.wall, "theory_cpu_s": timed.cpu,
            "theory_share": timed.wall / wall, "theory_ms_per_topology": 1e3 * timed.wall / nets, "q": rows,
            "prefactor": res.prefactor_ratio}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="strided")
    ap.add_argument("--nets", default="40", help="topologies per study, comma-separated (e.g. 200,2000)")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--methods", default="new,units", help=f"comma-separated, of {', '.join(METHODS)} (old: "
                                                           "minutes per 100 topologies)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    methods = [m for m in args.methods.split(",") if m]
    if bad := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s) {bad}: choose from {', '.join(METHODS)}")
    out = [run(m, args.family, sizes, int(n), args.seed) for n in args.nets.split(",") for m in methods]
    result = {"benchmark": "theory_scaling", "family": args.family, "sizes": list(sizes), "runs": out}
    print(json.dumps(result, indent=1))
    print("| method | topologies (distinct) | study wall s | theory wall s | theory share | theory ms/topology "
          "| q=inf predicted slope | q=inf outcome |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in out:
        inf = r["q"].get("inf", {})
        pred = "-" if inf.get("predicted") is None else f"{inf['predicted']:.4f}"
        print(f"| {r['method']} | {r['nets']} ({r['distinct']}) | {r['study_wall_s']:.1f} | {r['theory_wall_s']:.2f} "
              f"| {r['theory_share']:.1%} | {r['theory_ms_per_topology']:.1f} | {pred} | {inf.get('outcome', '-')} |",
              file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
