"""The ``advdim verify`` command: run every registered check, print one verdict table, write the
report folder, and exit 0 when every judged claim passed, 1 when one failed, 3
(``EXIT_INCONCLUSIVE``) when none failed but some are inconclusive (``advdim.verdict``).  It also
registers ``advdim measure`` (``advdim._report_cli``), whose report has the same form; the helpers
both share live in ``advdim._report_cli``."""

from __future__ import annotations

import time
import traceback
from typing import Any

import typer

from advdim._measure_cli import register_measure
from advdim._report_cli import command_line, device_text, print_verdicts, report_dir
from advdim.checks import Budget, Check, Part, Scale, all_checks
from advdim.errors import AdvdimError
from advdim.verdict import Verdict


def run_check(check: Check, budget: Budget) -> tuple[list[Verdict], float]:
    """Run one check and time it.  A check that raises becomes one failed verdict naming the error
    (a crashed check must fail ``verify``, never pass it silently)."""
    t0 = time.perf_counter()
    try:
        verdicts = list(check.run(budget))
        for v in verdicts:
            if not isinstance(v, Verdict):
                raise TypeError(f"check {check.name!r} returned {type(v).__name__}, not Verdict")
    except Exception as e:  # noqa: BLE001 - reported as a failed verdict
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        verdicts = [Verdict(f"check '{check.name}' ran to completion", "-", None, None, None, False,
                            f"{type(e).__name__}: {e}{where}", {"error": type(e).__name__})]
    return verdicts, time.perf_counter() - t0


def family_wise(runs: list[tuple[Check, float, list[Verdict]]], fwer: float | None = None
                ) -> tuple[list[dict[str, Any]], int]:
    """The report rows of every check, the two-sided tests among them re-judged together by
    :func:`advdim.stats.holm` at family-wise rate ``fwer`` (default :data:`advdim.stats.FWER`), and how
    many rows that covers."""
    from advdim.report import verdict_rows
    from advdim.stats import FWER, holm

    flat = [v for _, _, vs in runs for v in vs]
    judged = holm(flat, FWER if fwer is None else fwer)
    rows: list[dict[str, Any]] = []
    i = 0
    for check, dt, vs in runs:
        rows += verdict_rows(check.name, check.part.value, dt, judged[i:i + len(vs)])
        i += len(vs)
    return rows, sum(1 for v in flat if v.test is not None and v.passed is not None)


def part_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per part: verdicts passed, failed, inconclusive, without comparison (n/a), and the seconds its
    checks took."""
    from advdim.report import row_outcome

    out: dict[str, dict[str, float]] = {}
    timed: set[str] = set()
    for r in rows:
        acc = out.setdefault(r["part"], {"pass": 0, "fail": 0, "inconclusive": 0, "n/a": 0, "seconds": 0.0})
        acc[row_outcome(r).value] += 1
        if r["check"] not in timed:
            timed.add(r["check"])
            acc["seconds"] += r["seconds"]
    return out


def register(app: typer.Typer) -> None:
    register_measure(app)

    @app.command("verify")
    def verify(
        scale: str = typer.Option("default", help="tiny (seconds) | default (2-core CPU) | paper (GPU/cluster)"),
        only: str = typer.Option(None, help="run one part: core | theory | simulate | empirical"),
        seed: int = typer.Option(0, help="seed of every random draw"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        out_dir: str = typer.Option("report", "--out", help="report folder (HTML, plots, CSV/Parquet, runs.sqlite)"),
        as_json: bool = typer.Option(False, "--json", help="print the verdicts as JSON on stdout"),
        workers: int = typer.Option(0, "--workers", help="local worker processes for the sweeps (0: in-process)"),
        scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786"),
        target: str = typer.Option(None, "--target", help="check YOUR architecture instead of the paper's claims: a "
                                   "family, member, spec text, file.py:NAME (a family, or an nn.Module factory)"),
        input_shape: str = typer.Option(None, "--input-shape", help="base input shape C,H,W of an nn.Module "
                                        "factory given as --target"),
        trained: bool = typer.Option(False, "--trained", help="with --target: also train it (the dimension "
                                     "experiment's small preset: init vs trained slopes)"),
        plant_exponent: float = typer.Option(0.0, "--plant-exponent", hidden=True,
                                             help="multiply measured gradient norms by d**X (planted false claim)"),
    ) -> int:
        """Check the paper's claims end to end; exit 0 if every judged claim passes, 1 if one fails, 3 if
        none fails but some are inconclusive (the budget cannot tell them from the error they must catch)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from advdim.build import resolve_device
        from advdim.cli import emit_json, err, out
        from advdim.report import RunInfo, counts, exit_status, overall, summary_line, write_report

        try:
            sc = Scale(scale)
        except ValueError:
            raise AdvdimError(f"unknown scale {scale!r} (tiny, default or paper)") from None
        try:
            part = None if only is None else Part(only)
        except ValueError:
            raise AdvdimError(f"unknown part {only!r} (core, theory, simulate or empirical)") from None
        dev = resolve_device(device)
        if plant_exponent != plant_exponent or abs(plant_exponent) == float("inf"):
            raise AdvdimError(f"--plant-exponent must be a finite number, got {plant_exponent}")
        if workers < 0:
            raise AdvdimError(f"--workers must be >= 0, got {workers}")
        if scheduler is not None:
            from advdim.sweep import probe_scheduler

            scheduler = probe_scheduler(scheduler)  # before any work: it answers, and is a Dask scheduler
        shape = None
        if target is not None:
            from advdim._target_checks import check_target
            from advdim.measure import parse_shape

            shape = None if input_shape is None else parse_shape(input_shape)
            check_target(target, shape)
        elif input_shape is not None or trained:
            raise AdvdimError("--input-shape and --trained go with --target")
        folder = report_dir(out_dir)  # last: it clears the plots of an earlier report
        budget = Budget(sc, seed, device, plant_exponent=plant_exponent, out_dir=str(folder / "plots"),
                        workers=workers, scheduler=scheduler)
        if target is not None:
            from advdim._target_checks import target_checks

            registered = target_checks(target, shape, trained)
            present = set(Part)
        else:
            registered = all_checks()
            present = {c.part for c in registered}
        checks = [c for c in registered if part is None or c.part is part]
        missing = [p.value for p in Part if p not in present and (part is None or p is part)]
        runs: list[tuple[Check, float, list[Verdict]]] = []
        t_start = time.perf_counter()
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("verify", total=len(checks))
            for check in checks:
                bar.update(task, description=f"{check.part.value}: {check.name}")
                verdicts, dt = run_check(check, budget)
                runs.append((check, dt, verdicts))
                bar.advance(task)
        seconds = time.perf_counter() - t_start
        from advdim.stats import FWER

        rows, tested = family_wise(runs)
        notes = [f"not yet available: the {m} checks (this part of advdim is not built yet)" for m in missing]
        if tested:
            notes.append(f"family-wise: the {tested} rows that are two-sided tests over independent units are judged "
                         f"by Holm's procedure at a family-wise false-failure rate of {FWER:g} (any --seed)")
        if plant_exponent:
            notes.append(f"planted error: measured gradient norms multiplied by d^{plant_exponent:g} "
                         "(the slope verdicts are expected to FAIL)")
        cmd = command_line("verify", scale=sc.value, only=only, seed=seed, device=device, out=out_dir, target=target,
                           input_shape=input_shape, trained=trained,
                           workers=workers or None, scheduler=scheduler, plant_exponent=plant_exponent or None)
        title = (f"advdim verify --target {target}: the checks that apply to it" if target is not None
                 else "advdim verify: the claims of Simon-Gabriel et al. (ICML 2019)")
        info = RunInfo(title=title, command=cmd,
                       seed=seed, device=device_text(dev), scale=sc.value, seconds=seconds, notes=tuple(notes),
                       settings={"parts": only or "all", "checks": str(len(checks)),
                                 "executor": scheduler or (f"{workers} workers" if workers else "in-process")})
        files = write_report(folder, rows, info)
        n = counts(rows)
        rc = exit_status(n)
        if as_json:
            emit_json({"verdicts": rows, "not_yet_available": missing, "outcome": overall(n).value,
                       "passed": rc == 0, "counts": {o.value: k for o, k in n.items()}, "exit_status": rc,
                       "report": str(files.html), "seconds": seconds, "parts": part_summary(rows)})
        else:
            print_verdicts("advdim verify", rows)
            for note in notes:
                err.print(note)
            out.print(f"{summary_line(n)} in {seconds:.1f} s; report: {files.html}", soft_wrap=True)
        return rc
