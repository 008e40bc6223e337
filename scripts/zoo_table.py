"""The zoo table (issue 20): torchvision and timm models, built by their libraries, through ``advdim measure``.

For each model of :data:`advdim.zoo.ZOO`: per-size draws (a new model per input side and seed, the
units of the study) at sides ``base * k``; one row with whether it traced (or every obstacle), the
initialisation law recognised, the prediction and its level (or why there is none), the measured
slopes of ``E||d_x L||_q`` in ``d`` for q = 1, 2, inf with their intervals, the verdict of each
(pass / fail / inconclusive against the prediction, or consistent / inconsistent / cannot tell
against the paper's ``d^(1/q - 1/2)``), and the seconds it took.  Writes ``docs/zoo.md`` (between
its markers) and the rows as JSON.  Needs the zoo extra (``make install-zoo``)::

    .venv-zoo/bin/python scripts/zoo_table.py                 # every model, the default budget
    .venv-zoo/bin/python scripts/zoo_table.py --only tv_resnet18 --draws 4 --inputs 8 --no-write
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "zoo.md"
BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
QS = (1.0, 2.0, math.inf)
#: token-readout models (ViTs, patch 16 or 8): one more doubling of the side, so that three sizes have the 16
#: patch tokens their exponent-only law is fitted on (docs/theory.md, "Class-token and token-mean readouts")
TOKEN_MODELS = ("timm_vit_tiny_patch16_224", "timm_deit_tiny_patch16_224", "tv_vit_small_drawn_head")


def _q(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


def _loss_row(verdicts: list[Any], q: float) -> Any:
    pattern = re.compile(rf"slope of E\|\|d_x L\|\|_{re.escape(_q(q))} in d")
    return next((v for v in verdicts if pattern.search(v.claim)), None)


def _verdict_word(v: Any) -> str:
    if v is None:
        return "-"
    if v.predicted is not None and v.outcome.judged:
        return v.outcome.value  # pass / fail / inconclusive against the prediction
    return str(v.extra.get("consistency") or v.outcome.value)


def _obstacles(theory: Any) -> str:
    from advdim.trace import Untraceable

    bad = [t for t in theory.traces.values() if isinstance(t, Untraceable)]
    if not theory.traces:
        return "not attempted"
    if not bad:
        return "yes"
    first = bad[0]
    return first.summary() if first.obstacles else f"no: {first.reason}"


def measure_one(model: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One zoo row: ``advdim.measure.measure`` on the model's factory at the table's budget."""
    from advdim.errors import AdvdimError
    from advdim.measure import MeasureConfig, measure
    from advdim.trace import Untraceable

    sizes = tuple(args.sizes) + ((2 * args.sizes[-1],) if model.name in TOKEN_MODELS else ())
    cfg = MeasureConfig(input_shape=(3, args.base, args.base), factors=sizes, qs=QS,
                        inputs=args.inputs, seed=args.seed, draws=args.draws, steps=1)
    row: dict[str, Any] = {"model": model.name, "library": model.library, "builds": model.builds,
                           "target": model.target, "sides": [args.base * k for k in sizes]}
    t0 = time.perf_counter()
    try:
        m = measure(model.factory, cfg, device, name=model.target)
    except AdvdimError as e:
        row.update(error=str(e).splitlines()[0], seconds=round(time.perf_counter() - t0, 1))
        return row
    th = m.theory
    row["traced"] = _obstacles(th)
    bad = next((t for t in th.traces.values() if isinstance(t, Untraceable)), None)
    row["obstacles"] = [o.to_json() for o in bad.obstacles] if bad is not None else []
    row["init"] = th.init.law_text() if th.init is not None else "not examined (no trace)"
    pred = th.prediction
    if th.token_law is not None:
        row["prediction"] = "d^(1/q - 1)"
        row["level"] = f"exponent only: {th.token_law.kind} readout"
    elif th.reason is None and pred is not None:
        row["prediction"] = "; ".join(f"q={k}: {v:+.3f}" for k, v in sorted(dict(pred.predicted_slope).items())
                                      if isinstance(v, float)) or "judged"
        row["level"] = str(getattr(pred, "level", "") or "judged against advdim.theory.predict")
    else:
        row["prediction"] = "none"
        row["level"] = th.reason or "none"
    for q in QS:
        v = _loss_row(m.verdicts, q)
        key = _q(q)
        row[f"slope_{key}"] = None if v is None or v.measured is None else float(v.measured)
        row[f"interval_{key}"] = None if v is None or v.interval is None else [float(x) for x in v.interval]
        row[f"verdict_{key}"] = _verdict_word(v)
        row[f"paper_{key}"] = None if v is None else v.extra.get("paper_law_slope")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _cell(row: dict[str, Any], q: float) -> str:
    key = _q(q)
    s, iv = row.get(f"slope_{key}"), row.get(f"interval_{key}")
    if s is None:
        return "-"
    ci = f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else ""
    return f"{s:+.2f}{ci} {row.get(f'verdict_{key}', '')}"


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


def _traced_cell(row: dict[str, Any]) -> str:
    """``yes``, or the obstacles counted by class and kind (the JSON keeps each with its path and fix)."""
    obstacles = row.get("obstacles") or []
    if not obstacles:
        return _short(row["traced"])
    groups: dict[tuple[str, str], int] = {}
    for o in obstacles:
        groups[(o["cls"], o["kind"])] = groups.get((o["cls"], o["kind"]), 0) + 1
    parts = [f"{n} x {cls} ({kind})" for (cls, kind), n in sorted(groups.items(), key=lambda kv: -kv[1])]
    return f"no, {len(obstacles)} obstacles: " + ", ".join(parts)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    sides = ", ".join(str(args.base * k) for k in args.sizes)
    head = [f"Budget: sides {sides} (ViT rows also {2 * args.base * args.sizes[-1]}; d = 3 x side^2), {args.draws} "
            f"draws per side, {args.inputs} Gaussian inputs per draw, seed {args.seed}; {wall:.0f} s in all on "
            f"{platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}.",
            "",
            "| model | traced | init law | prediction (level) | q = 1 | q = 2 | q = inf | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            zero = "is zero for every input" in r["error"]
            why = ("input gradient identically 0 at initialisation (the library zero-initialises the classifier "
                   "head): nothing to scale; see the drawn-head row" if zero else f"error: {r['error']}")
            word = "n/a (zero gradient)" if zero else "-"
            head.append(f"| {r['library']} `{r['model']}` | {why} | | | {word} | {word} | {word} | {r['seconds']} |")
            continue
        pred = f"none: {_short(r['level'])}" if r["prediction"] == "none" else f"{r['prediction']} ({r['level']})"
        cells = [f"{r['library']} `{r['model']}`", _traced_cell(r), r["init"], pred, *(_cell(r, q) for q in QS),
                 str(r["seconds"])]
        head.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(head) + "\n"


def write_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC.name} lacks the markers {BEGIN} / {END}")
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    DOC.write_text(f"{pre}{BEGIN}\n{table}{END}{post}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from advdim.zoo import ZOO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", default=[], help="a model's name (repeatable)")
    p.add_argument("--base", type=int, default=32, help="base input side")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/zoo.md")
    p.add_argument("--from-json", type=Path, default=None, help="render the rows of an earlier --json, measure nothing")
    args = p.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        for k, v in saved.get("budget", {}).items():
            setattr(args, k, v)
        table = markdown(saved["rows"], args, saved["seconds"])
        print(table)
        if not args.no_write:
            write_doc(table)
        return 0
    models = [m for m in ZOO if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in ZOO}
    if unknown:
        raise SystemExit(f"unknown zoo model(s): {', '.join(sorted(unknown))}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, t0 = [], time.perf_counter()
    for m in models:
        row = measure_one(m, args, device)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    table = markdown(rows, args, wall)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"seconds": wall, "rows": rows, "budget": {
            k: getattr(args, k) for k in ("base", "sizes", "draws", "inputs", "seed")}}, indent=1), encoding="utf-8")
    if not args.no_write:
        write_doc(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
