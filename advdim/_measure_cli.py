"""The ``advdim measure`` command: options, the run, the table, the report and the JSON.

The measurement itself is :func:`advdim.measure.measure` (a study over the factory's weight draws).
Nothing heavy is imported at module level (``advdim --help`` must not import torch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from advdim._report_cli import command_line, device_text, print_verdicts, report_dir
from advdim.errors import AdvdimError
from advdim.verdict import Outcome


def register_measure(app: typer.Typer) -> None:
    """Add ``advdim measure`` to ``app`` (its work is :func:`advdim.measure.main`)."""

    @app.command("measure")
    def measure(
        target: str = typer.Argument(..., help="MODULE:FACTORY (module or .py file; FACTORY returns an nn.Module)"),
        input_shape: str = typer.Option(..., "--input-shape", help="base input shape C,H,W, e.g. 3,32,32"),
        sizes: str = typer.Option("1,2,4", help="size factors k of the base shape: inputs C x kH x kW"),
        q: str = typer.Option("1,2,inf", "--q", help="gradient norm orders (>= 1 or inf)"),
        inputs: int = typer.Option(64, help="Gaussian inputs per size (per draw when the factory takes input_shape)"),
        draws: int = typer.Option(16, help="independent models per size (factories taking input_shape)"),
        eps: float = typer.Option(0.004, help="l_inf attack size for the vulnerability, in input units"),
        steps: int = typer.Option(10, help="PGD steps"),
        seed: int = typer.Option(0, help="seed of the weights (seed + draw), inputs, labels and bootstrap"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        workers: int = typer.Option(0, help="local worker processes for the per-size cells (0: in-process)"),
        store: Path = typer.Option(None, help="run store (SQLite) receiving every finished per-size cell"),
        resume: bool = typer.Option(False, "--resume", help="reuse the cells already in --store"),
        out_dir: str = typer.Option("report-measure", "--out", help="report folder"),
        as_json: bool = typer.Option(False, "--json", help="print the results as JSON on stdout"),
    ) -> int:
        """Measure how YOUR model's input gradients and vulnerability scale with the input dimension."""
        return main(target, input_shape, sizes=sizes, q=q, inputs=inputs, draws=draws, eps=eps, steps=steps,
                    seed=seed, device=device, out_dir=out_dir, as_json=as_json, workers=workers, store=store,
                    resume=resume)


def main(target: str, input_shape: str, sizes: str = "1,2,4", q: str = "1,2,inf", inputs: int = 64, draws: int = 16,
         eps: float = 0.004, steps: int = 10, seed: int = 0, device: str = "auto", out_dir: str = "report-measure",
         as_json: bool = False, workers: int = 0, store: Path | None = None, resume: bool = False) -> int:
    """The ``advdim measure`` command (arguments as on the command line); returns the exit status:
    0 when every judged row passed (or none is judged), 1 when one failed, 3 when none failed but some
    are inconclusive (too few --draws for power 0.8 against a slope off by 0.05)."""
    from advdim.build import resolve_device
    from advdim.cli import emit_json, err, out
    from advdim.cli_args import check_out_folder
    from advdim.measure import MeasureConfig, Setting, measure, parse_ints, parse_qs, parse_shape
    from advdim.models import load_factory
    from advdim.report import RunInfo, counts, exit_status, summary_line, verdict_rows, write_report
    from advdim.store import RunStore

    if workers < 0:
        raise AdvdimError(f"--workers must be 0 (in-process) or a positive number of processes, got {workers}")
    if resume and store is None:
        raise AdvdimError("--resume needs --store")
    cfg = MeasureConfig(parse_shape(input_shape), parse_ints(sizes, "--sizes"), parse_qs(q), inputs, seed, eps, steps,
                        draws)
    dev = resolve_device(device)
    check_out_folder(out_dir)  # nothing is written before the measurement succeeded
    factory = load_factory(target)
    t0 = time.perf_counter()
    run_store = RunStore(store) if store is not None else None
    try:
        result = measure(factory, cfg, dev, target, run_store, workers, resume, progress=not as_json)
    finally:
        if run_store is not None:
            run_store.close()
    seconds = time.perf_counter() - t0
    folder = report_dir(out_dir)
    rows = verdict_rows(target, "measure", seconds, result.verdicts)
    per_size = result.setting is Setting.PER_SIZE
    theory = result.theory.to_json()
    init, trace = theory["init"], theory["trace"]
    info = RunInfo(title=f"advdim measure {target}", command=command_line(
        "measure", target, input_shape=input_shape, sizes=sizes, q=q, inputs=inputs, draws=draws, eps=eps, steps=steps,
        seed=seed, device=device, out=out_dir, workers=workers or None, store=store, resume=resume), seed=seed,
                   device=device_text(dev),
                   seconds=seconds, notes=tuple(result.notes),
                   settings={"model": target, "setting": result.setting.value, "input shape": input_shape,
                             "size factors": sizes, "q": q,
                             "inputs per size": f"{inputs} per draw" if per_size else str(inputs),
                             "draws per size": str(draws) if per_size else "1 (one fixed model)",
                             "eps (l_inf)": f"{eps:g}", "PGD steps": str(steps),
                             "trace": "traced" if trace["traced"] else f"not traced: {trace['reason']}",
                             "initialisation": init["reason"] if init else "not examined",
                             "judged": "yes" if theory["prediction"]["judged"] else
                             f"no: {theory['prediction']['reason']}"})
    files = write_report(folder, rows, info)
    if as_json:
        emit_json(_json(target, cfg, result, rows, str(files.html)))
    else:
        print_verdicts(f"advdim measure {target} ({result.setting.value})", rows)
        for note in result.notes:
            err.print(note, soft_wrap=True)
        out.print(f"{summary_line(counts(rows))}; report: {files.html}", soft_wrap=True)
    return exit_status(counts(rows))


#: the verdict of a row in words (JSON): n/a rows are "reported"
VERDICT_WORDS = {Outcome.PASS: "pass", Outcome.FAIL: "fail", Outcome.INCONCLUSIVE: "inconclusive",
                 Outcome.REPORTED: "reported"}


def _json(target: str, cfg: Any, result: Any, rows: list[dict[str, Any]], report: str
          ) -> dict[str, Any]:
    from advdim.measure import Setting
    from advdim.report import counts, exit_status, overall, row_outcome

    n = counts(rows)
    sample = result.sample
    res: dict[str, Any] = {
        "model": target, "setting": result.setting.value, "input_shape": list(cfg.input_shape), "seed": cfg.seed,
        "inputs": cfg.inputs, "draws": cfg.draws if result.setting is Setting.PER_SIZE else 1,
        "d": sample.ds, "factors": sample.factors, "fixed_size": len(sample.ds) < 2,
        **result.theory.to_json(),
        "rows": [{"claim": r["claim"], "reference": r["reference"], "predicted": r["predicted"],
                  "measured": r["measured"], "interval": r["interval"], "verdict": VERDICT_WORDS[row_outcome(r)],
                  "outcome": r["outcome"], "power": r["power"], "detail": r["detail"]} for r in rows],
        "passed": exit_status(n) == 0, "outcome": overall(n).value, "counts": {o.value: k for o, k in n.items()},
        "notes": result.notes, "report": report, "q": {}, "vulnerability": []}
    for r in rows:
        ex = r["extra"]
        if "target" in ex and "q" in ex:
            slope = len(ex["d"]) >= 2
            res["q"].setdefault(ex["q"], {})[ex["target"]] = {
                "predicted_slope": r["predicted"], "measured_slope": r["measured"] if slope else None,
                "interval": r["interval"] if slope else None, "verdict": VERDICT_WORDS[row_outcome(r)],
                "pass": r["passed"], "outcome": r["outcome"], "power": r["power"], "norms": ex["norms_mean"],
                "consistency": ex.get("consistency"), "level": ex.get("level"),
                "law_slope": ex.get("law_slope")}
        elif "eps" in ex:
            res["vulnerability"].append({"d": ex["d"], "eps": ex["eps"], "share": r["measured"],
                                         "interval": r["interval"], "attack": ex["attack"]})
    return res
