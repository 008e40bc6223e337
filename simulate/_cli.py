"""CLI commands of advdim.simulate (registered on the main app by ``advdim.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from advdim.verdict import Verdict

#: the default CPU study: every family, 200 topologies, 2 draws (FAMILY_DRAWS: more) x 2 inputs per cell
DEFAULT_NETS = 200
DEFAULT_DRAWS = 2
DEFAULT_INPUTS = 2
#: families whose default draws per cell are more than DEFAULT_DRAWS, so that every judged row of the
#: default study has power >= 0.8 (issue 12).  gap: at 200 topologies x 2 draws the se of its
#: prefactor ratio is 0.045 (power 0.35 against +-10%); its variance is between weight draws, not
#: between topologies (30 topologies x 8 draws: se 0.052, i.e. 0.020 at 200), so 8 draws give about
#: 0.022 (power ~0.97) for about 1.6 times gap's time (docs/simulate.md)
FAMILY_DRAWS = {"gap": 8}
#: the records of a run, in ``--out``
RESULTS = "results.json"


def default_draws(family: str) -> int:
    """The default ``--draws`` of a target's study: :data:`FAMILY_DRAWS` for a built-in family named there
    (random topologies), else :data:`DEFAULT_DRAWS`."""
    return FAMILY_DRAWS.get(family, DEFAULT_DRAWS)


def check_counts(*, seed: int, nets: int, inputs: int, draws: int | None, workers: int,
                 scheduler: str | None) -> None:
    """The numeric options of ``simulate``, checked before any work (one line, exit 2)."""
    from advdim.errors import AdvdimError
    from advdim.sweep import check_scheduler

    for option, value, least in (("--seed", seed, 0), ("--nets", nets, 2), ("--inputs", inputs, 1),
                                 ("--draws", draws, 1), ("--workers", workers, 0)):
        if value is not None and value < least:
            raise AdvdimError(f"{option} must be at least {least}, got {value}")
    if workers and scheduler is not None:
        raise AdvdimError("give either --workers or --scheduler, not both")
    if scheduler is not None:
        check_scheduler(scheduler)


def register(app: typer.Typer) -> None:
    """Add this layer's commands to ``app``."""

    @app.command("simulate")
    def simulate(
        families: list[str] = typer.Option(None, "--family", "-f",
                                           help="what to simulate (repeatable; default: the paper's families dense, "
                                                "strided,"
                                                " avgpool, maxpool, gap; beyond the paper: resnet, bn, ln, vit): a "
                                                "family name (random topologies), a member family(key=value,...), "
                                                "spec text 'CxHxW > layer > ...' (the same layers at each size), or "
                                                "file.py:NAME / module:NAME (a user family)"),
        sizes: str = typer.Option("8,16,32,64", help="input sides s, comma-separated (d = channels * s^2)"),
        channels: int = typer.Option(None, help="input channels [default: 3, or the dataset's with --data]"),
        nets: int = typer.Option(DEFAULT_NETS, help="random topologies per family (for a fixed target: independent "
                                                    "weight-draw units of the one network)"),
        inputs: int = typer.Option(DEFAULT_INPUTS, help="inputs per weight draw"),
        draws: int = typer.Option(None, help="independent weight draws per topology and size [default: "
                                             f"{DEFAULT_DRAWS}; gap: {FAMILY_DRAWS['gap']}, for a conclusive "
                                             "prefactor]"),
        seed: int = typer.Option(0, help="seed of every random draw"),
        device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda"),
        target: str = typer.Option("logit", help="logit (f_0) | loss (cross-entropy)"),
        init: str = typer.Option("he", "--init",
                                 help="weight law of the nets: he | torch | glorot | lecun | orthogonal"),
        law_init: str = typer.Option(None, "--law-init",
                                     help="the init the predicted law assumes [default: --init]; e.g. --init torch "
                                          "--law-init he asks whether PyTorch's default init obeys the He law"),
        exact_shortcuts: bool = typer.Option(True, "--exact-shortcuts/--no-exact-shortcuts",
                                             help="exact conditional sampling for dense chains"),
        data: str = typer.Option(None, "--data",
                                 help="real-image inputs instead of Gaussian ones: fashion-mnist | cifar10 | synthetic "
                                      "(its first 1000 test images, resampled to each size)"),
        data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR-10 batches, ...)"),
        workers: int = typer.Option(0, help="local worker processes (0: in-process)"),
        scheduler: str = typer.Option(None, help="Dask distributed scheduler address, e.g. tcp://host:8786"),
        store: Path = typer.Option(None, help="run store (SQLite) receiving every finished cell"),
        resume: bool = typer.Option(False, "--resume", help="reuse the cells already in --store"),
        out_dir: Path = typer.Option(None, "--out", help="write plots (PNG+SVG) and results.json in this folder "
                                                         "(files of an earlier run are replaced, others never)"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output on stdout"),
    ) -> int:
        """Monte Carlo check of E||d_x f||_q ~ d^(1/q - 1/2) over random He-initialised topologies.

        Exit 0 when every judged row passes, 1 when one fails, 3 when none fails but some are
        inconclusive (too few --nets to tell the law from a slope off by 0.05)."""
        from advdim.simulate._plot import plot_family, plot_names
        from advdim.simulate._study import check_memory, study, topologies

        from advdim.arch import PAPER_FAMILIES, resolve_target
        from advdim.build import Init, resolve_device
        from advdim.cli import emit_json, out, table
        from advdim.cli_args import parse_sizes
        from advdim.errors import AdvdimError
        from advdim.paths import OutputFolder, unique_stems
        from advdim.store import RunStore

        archs = [resolve_target(f) for f in (families or list(PAPER_FAMILIES))]
        init_e = Init.parse(init)
        law_e = init_e if law_init is None else Init.parse(law_init)
        if resume and store is None:
            raise AdvdimError("--resume needs --store")
        size_list = parse_sizes(sizes)
        if len(size_list) < 2:
            raise AdvdimError(f"--sizes needs at least 2 sizes to fit a slope, got {sizes!r}")
        check_counts(seed=seed, nets=nets, inputs=inputs, draws=draws, workers=workers, scheduler=scheduler)
        stems = unique_stems([a.text for a in archs])  # distinct plot names, even for one target named twice
        outputs = None if out_dir is None else OutputFolder(out_dir)
        if outputs is not None:
            outputs.check([RESULTS, *(n for stem in stems for n in plot_names(stem))])
        if data is not None:
            from advdim.empirical._data import DatasetName

            data = DatasetName.parse(data).value
        fixed_channels = {a.channels for a in archs if a.channels is not None}
        if len(fixed_channels) > 1 or (channels is not None and fixed_channels and channels not in fixed_channels):
            raise AdvdimError(f"the spec texts fix {sorted(fixed_channels)} input channel(s); --channels is "
                              f"{channels}: simulate specs of one channel count at a time")
        if channels is None:
            channels = fixed_channels.pop() if fixed_channels else 3
            if data is not None:
                from advdim.simulate._study import image_pool

                channels = int(image_pool(data, data_dir, size_list[0]).shape[1])
        if channels < 1:
            raise AdvdimError(f"--channels must be a positive integer, got {channels}")
        dev = resolve_device(device).type
        if scheduler is not None:  # last of the checks: it waits for the scheduler's answer
            from advdim.sweep import probe_scheduler

            scheduler = probe_scheduler(scheduler)
        draws_of = {a.text: draws if draws is not None else default_draws(a.text) for a in archs}
        for arch in archs:  # every target is valid at every size, and its largest cells fit, before any cell runs
            check_memory(topologies(arch, nets, seed, size_list, channels), size_list, channels, draws_of[arch.text],
                         inputs, exact_shortcuts, device=dev, data=data, workers=workers, scheduler=scheduler,
                         with_theory=True)
        run_store = RunStore(store) if store is not None else None
        results = []
        try:
            for arch in archs:
                results.append(study(arch, size_list, channels, nets, inputs, seed, device, target,
                                     exact_shortcuts, store=run_store, draws=draws_of[arch.text], workers=workers,
                                     scheduler=scheduler, resume=resume, progress=not as_json, data=data,
                                     data_dir=data_dir, init=init_e, law_init=law_e))
                if run_store is not None:
                    inits = {} if init_e is law_e is Init.HE else {"init": init_e.value, "law_init": law_e.value}
                    run_store.put("simulate.family", {"family": arch.text, "sizes": list(size_list),
                                                      "channels": channels, "nets": nets,
                                                      "draws": draws_of[arch.text],
                                                      "inputs": inputs, "seed": seed, "target": target,
                                                      "shortcuts": exact_shortcuts,
                                                      **({"data": data} if data else {}), **inits},
                                  results[-1].to_record())
        finally:
            if run_store is not None:
                run_store.close()
        if outputs is not None:
            for r, stem in zip(results, stems):
                plot_family(r, outputs, stem)
            outputs.file(RESULTS).write_text(json.dumps([r.to_record() for r in results], indent=1))
        from advdim._report_cli import STYLES, predicted_cell
        from advdim.report import exit_status, fmt, fmt_interval, status, summary_line
        from advdim.verdict import Outcome, count

        verdicts = [v for r in results for v in r.verdicts()]
        n = count(verdicts)
        if as_json:
            emit_json(results[0].to_json() if len(results) == 1 else [r.to_json() for r in results])
            return exit_status(n)

        def power(v: Verdict) -> str:
            return "-" if v.power is None or not v.outcome.judged else f"{v.power:.2f}"

        rows = [[v.claim, predicted_cell({"predicted": v.predicted, "extra": v.extra}), fmt(v.measured),
                 fmt_interval(v.interval), power(v),
                 STYLES.get(status(v.outcome), status(v.outcome))
                 + (f" ({v.extra['consistency']})" if v.extra.get("consistency") else "")] for v in verdicts]
        out.print(table("advdim simulate: predicted vs measured (interval: acceptance band, or 95% CI when n/a; "
                        "power against slope +-0.05 or prefactor +-10%)",
                        ["claim", "predicted", "measured", "interval", "power", "verdict"], rows))
        source = f"{data} test images" if data else "Gaussian inputs"
        units = "topologies (fixed targets: weight-draw units)" if any(not a.random for a in archs) else "topologies"
        shown = str(next(iter(draws_of.values())))
        if len(set(draws_of.values())) > 1:
            more = ", ".join(f"{k}: {v}" for k, v in draws_of.items() if v != DEFAULT_DRAWS)
            shown = f"{DEFAULT_DRAWS} ({more})"
        out.print(f"{nets} {units} x {shown} draws x {inputs} {source} per size; sizes {sizes}; seed {seed}; "
                  f"init {init_e.value}" + (f", law for {law_e.value}" if law_e is not init_e else ""))
        out.print(summary_line(n) + ("; inconclusive: more --nets narrow the interval (docs/simulate.md)"
                                     if n[Outcome.INCONCLUSIVE] else ""), soft_wrap=True)
        return exit_status(n)
