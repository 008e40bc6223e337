"""CLI commands of advdim.empirical (registered on the main app by ``advdim.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this layer's commands to ``app``: ``advdim train`` and ``advdim experiment``."""

    @app.command("train")
    def train_cmd(
        dataset: str = typer.Option("fashion-mnist", "--dataset", help="fashion-mnist, cifar10 or synthetic"),
        size: int = typer.Option(None, "--size", help="input side after pixel-copy up-sampling (default native)"),
        pad: bool = typer.Option(False, "--pad", help="zero-pad 28 -> 32 before up-sampling"),
        method: str = typer.Option("plain", "--method",
                                   help="plain, gp1, gp2, fgsm-aug, l2-aug, pgd or cross-lipschitz"),
        eps: float = typer.Option(0.0, "--eps", help="defence strength, normalised input units"),
        epochs: int = typer.Option(6, "--epochs"),
        arch: str = typer.Option(None, "--arch", help="family, member, spec text, file.py:NAME or module:NAME (a "
                                 "user family, or an nn.Module factory taking input_shape); default "
                                 "strided(channels=16,...)"),
        batchnorm: bool = typer.Option(False, "--batchnorm",
                                       help="a batch norm after every conv (conv -> BN -> ReLU); measured in eval "
                                            "mode (running statistics)"),
        batch_size: int = typer.Option(64, "--batch-size"),
        lr: float = typer.Option(0.05, "--lr", help="initial SGD learning rate (the reference: 0.01 over 200 epochs)"),
        weight_decay: float = typer.Option(0.0, "--weight-decay",
                                           help="SGD's coupled L2 coefficient (torch.optim.SGD weight_decay; the "
                                                "reference: 0; Galloway et al.: 5e-4)"),
        halve_every: int = typer.Option(2, "--halve-every",
                                        help="reload the best-validation weights and halve the lr every N epochs "
                                             "(the reference: 30; 0: never)"),
        valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="share of --n-train held out"),
        n_train: int = typer.Option(20000, "--n-train", help="training examples used, validation included (0: all)"),
        n_test: int = typer.Option(2000, "--n-test", help="test examples used (0: all)"),
        n_eval: int = typer.Option(1000, "--n-eval", help="train and test examples measured every epoch"),
        attack_eps: float = typer.Option(0.004, "--attack-eps", help="test-time PGD l_inf radius"),
        attack_every: int = typer.Option(0, "--attack-every",
                                         help="attack every N epochs (0: the last epoch only; the reference: 1)"),
        threads: int = typer.Option(1, "--threads",
                                    help="torch CPU threads (1: small nets gain little from more, and OpenMP "
                                         "spin-waits slow 2 threads down on a busy 2-core machine; 0: torch's "
                                         "default)"),
        seed: int = typer.Option(0, "--seed"),
        data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR-10 batches, ...)"),
        device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when there is one), cpu or cuda"),
        store: Path = typer.Option(None, "--store", help="run store (SQLite) receiving one record per epoch"),
        checkpoint: Path = typer.Option(None, "--checkpoint", help="checkpoint file written every epoch"),
        resume: bool = typer.Option(False, "--resume", help="continue from --checkpoint"),
        as_json: bool = typer.Option(False, "--json", help="print the final metrics as JSON"),
    ) -> None:
        """Train a net with a defence; measure accuracy, gradient norms, vulnerability every epoch."""
        from advdim.empirical._defences import Method
        from advdim.empirical._train import DEFAULT_ARCH, TrainConfig, train

        from advdim.build import resolve_device
        from advdim.cli import emit_json, out, table
        from advdim.errors import AdvdimError
        from advdim.store import RunStore

        if resume and checkpoint is None:
            raise AdvdimError("--resume needs --checkpoint")
        device = resolve_device(device).type
        config = TrainConfig(dataset=dataset, size=size, pad=pad, arch=arch or DEFAULT_ARCH,
                             method=Method.parse(method), eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                             halve_every=halve_every, valid_fraction=valid_fraction, n_train=n_train or None,
                             n_test=n_test or None, n_eval=n_eval, attack_eps=attack_eps, attack_every=attack_every,
                             seed=seed, data_dir=data_dir, device=device, weight_decay=weight_decay,
                             batchnorm=batchnorm)
        _set_threads(threads)
        run_store = RunStore(store) if store is not None else None
        try:
            result = train(config, store=run_store, checkpoint=checkpoint, resume=resume, progress=True)
        finally:
            if run_store is not None:
                run_store.close()
        if as_json:
            emit_json({"config": config.to_json(), "d": result.d, "final": result.final,
                       "history": list(result.history)})
            return
        keys = ["acc", "grad_l1", "grad_l2", "vuln_linf", "damage_linf", "vuln_l2", "damage_l2"]
        rows = [[r["epoch"], f"{r['lr']:g}", split] + [f"{r[split][k]:.4g}" if k in r[split] else "-" for k in keys]
                for r in result.history for split in ("train", "valid", "test") if split in r]
        options = "".join([", batch norm" if batchnorm else "",
                           f", weight decay {weight_decay:g}" if weight_decay else ""])
        out.print(table(f"{config.method.value} eps={config.eps:g}{options} on {dataset} at {result.final['size']} "
                        f"px (d={result.d}); measured in eval mode; attacks: PGD l_inf eps={config.attack_eps:g}, "
                        "l_2 eps*sqrt(d) (normalised units)", ["epoch", "lr", "split", *keys], rows))

    @app.command("experiment")
    def experiment_cmd(
        which: str = typer.Argument(..., help="first-order (Section 4.1), dimension (Section 4.2) or batchnorm "
                                                "(BN and weight decay vs d: Galloway et al.'s counter-claim)"),
        preset: str = typer.Option("small", "--preset", help="small (2-core CPU) or paper (GPU / cluster)"),
        out_dir: Path = typer.Option(Path("advdim-experiment"), "--out", help="folder of the store and plots"),
        workers: int = typer.Option(None, "--workers",
                                    help="local worker processes of one torch thread each (default: one per CPU "
                                         "core on cpu, 0 = in-process otherwise)"),
        scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address tcp://host:port"),
        data_dir: str = typer.Option(None, "--data-dir"),
        device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when there is one), cpu or cuda"),
        arch: str = typer.Option(None, "--arch", help="the network to train instead of the preset's: any target "
                                 "train --arch takes (family, spec text, file.py:NAME, an nn.Module factory)"),
        seeds: int = typer.Option(None, "--seeds", help="training seeds per cell (default: the preset's; 2 with "
                                  "--arch)"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Run a Section 4 experiment as a resumable sweep, then draw its figures."""
        import os

        from advdim.empirical._experiments import configs, run_experiment

        from advdim.build import resolve_device
        from advdim.cli import emit_json, out
        from advdim.cli_args import check_out_folder
        from advdim.errors import AdvdimError
        from advdim.sweep import probe_scheduler

        device = resolve_device(device).type
        cells = configs(which, preset, data_dir, device, arch, seeds)  # bad experiment, preset, seeds: before any file
        if arch is not None:  # the network at the smallest size, before any file: a bad target is one line
            from advdim.empirical._experiments import check_arch

            check_arch(cells)
        check_out_folder(out_dir)
        if workers is not None and workers < 0:
            raise AdvdimError(f"--workers must be at least 0, got {workers}")
        if workers and scheduler is not None:
            raise AdvdimError("give either --workers or --scheduler, not both")
        if scheduler is not None:
            scheduler = probe_scheduler(scheduler)  # last: it waits for the scheduler's answer
        if workers is None:
            workers = (os.cpu_count() or 1) if device == "cpu" and scheduler is None else 0
        if workers == 0:
            _set_threads(1 if device == "cpu" else 0)
        summary = run_experiment(which, preset, out_dir, workers=workers, scheduler=scheduler,
                                 data_dir=data_dir, device=device, arch=arch, seeds=seeds)
        if as_json:
            emit_json(summary)
        else:
            out.print(f"{summary['experiment']}: {summary['cells']} runs in {summary['store']}")
            for p in summary["plots"]:
                out.print(f"  {p}")
            for line in summary["trends"]:
                out.print(f"  {line}")


def _set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads (0: leave torch's default)."""
    if threads < 0:
        from advdim.errors import AdvdimError

        raise AdvdimError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
