"""The paper's Section 4 experiments as resumable sweeps, and their figures.

- ``first-order`` (Section 4.1, Figure 1): one input size, every defence over an eps grid;
- ``dimension`` (Section 4.2, Figure 2): several up-sampled sizes x PGD-training eps;
- ``batchnorm`` (issue 15, Galloway et al. 2019's counter-claim): several up-sampled sizes x
  {batch norm, none} x weight decay (plain training, several seeds); slopes, verdicts and
  figure in :mod:`advdim.empirical._batchnorm`.

Each training run is one cell of :func:`advdim.sweep.run_sweep` (kind ``empirical.run``): cells
already in the run store are not recomputed, so an interrupted experiment resumes; ``workers``
and ``scheduler`` spread cells over local processes or a Dask cluster.  Eps are per-pixel, in
units of the normalised input (an l_p defence of strength eps acts at l_p size
``eps * d^(1/p)``, eq. 3).  Figures read only the stored results.

    >>> sorted(PRESETS)
    ['batchnorm', 'dimension', 'first-order']
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from advdim.empirical._data import NORMALISATION, DatasetName
from advdim.empirical._defences import Method
from advdim.empirical._figures import collapsed, save_figure
from advdim.empirical._train import DEFAULT_ARCH, TrainConfig, train

from advdim.errors import AdvdimError
from advdim.paths import OutputFolder
from advdim.store import RunStore
from advdim.sweep import run_sweep

RUN_KIND = "empirical.run"

_FASHION_STD = NORMALISATION[DatasetName.FASHION_MNIST][1][0]
# Section 4.1's test-time attack: l_inf radius 0.5% of the pixel range, in normalised units.  The
# small presets use it for both experiments: Section 4.2's 0.08% changes too few of 500 test labels
# of a 28 px net to be measured.
ATTACK_EPS_41 = round(0.005 / _FASHION_STD, 5)

# small: sized for a 2-core CPU (one worker process per core), about 10 minutes each when idle.
_SMALL = {"dataset": "fashion-mnist", "arch": DEFAULT_ARCH, "batch_size": 64, "lr": 0.05, "halve_every": 2,
          "valid_fraction": 0.1, "n_test": 500, "n_eval": 500, "attack_eps": ATTACK_EPS_41}
# paper: the reference's schedule (lr 0.01 halved with a reload of the best weights every 30 of 200
# epochs, batch 128, 10% validation, attacks every epoch); meant for a GPU or a cluster.
_PAPER = {"dataset": "fashion-mnist", "epochs": 200, "halve_every": 30, "lr": 0.01, "valid_fraction": 0.1,
          "n_train": None, "n_test": None, "n_eval": 1000, "batch_size": 128, "attack_every": 1}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "first-order": {
        "small": {"base": {**_SMALL, "size": 28, "n_train": 6000, "epochs": 6}, "eps": [0.003, 0.03, 0.3],
                  "seeds": [0], "methods": [m.value for m in Method if m is not Method.PLAIN]},
        "paper": {"base": {**_PAPER, "size": 32, "pad": True, "arch": "gap(channels=64,final=1,padding=zeros)",
                           "attack_eps": ATTACK_EPS_41},
                  "eps": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5], "seeds": [0, 1, 2],
                  "methods": [m.value for m in Method if m is not Method.PLAIN]},
    },
    "dimension": {
        # lr 0.02: at lr 0.05 the 112 px net (four stride-2 convs) diverged in its 2nd epoch
        "small": {"base": {**_SMALL, "n_train": 4000, "epochs": 4, "lr": 0.02}, "sizes": [28, 56, 112],
                  "eps": [0.0, 0.01, 0.05], "seeds": [0]},
        "paper": {"base": {**_PAPER, "pad": True, "arch": "strided(channels=32,final=8,padding=zeros)"},
                  "sizes": [32, 64, 128, 256], "eps": [0.0, 0.001, 0.003, 0.01, 0.03], "seeds": [0, 1, 2]},
    },
    "batchnorm": {
        # plain training of the dimension preset's net and schedule, with and without a BN after
        # every conv, at no decay and at each decay; 300 test points per run (gradient norms and
        # l_inf vulnerability per point, bootstrapped over points and seeds); 3000 images (2700
        # trained on) to fit 20 minutes on 2 cores.  5e-4 is the published decay; over this
        # schedule's 172 SGD steps (sum of lr 2.6) its pull exp(-wd sum lr) shrinks the weights by
        # 0.1% only, 5e-2 by 12%: about the 10% of 5e-4 over the reference's 200 epochs of 352
        # steps (sum of lr 209)
        "small": {"base": {**_SMALL, "n_train": 3000, "epochs": 4, "lr": 0.02, "n_test": 300, "n_eval": 300},
                  "sizes": [28, 56, 112], "decays": [5e-4, 5e-2], "seeds": [0, 1]},
        "paper": {"base": {**_PAPER, "dataset": "cifar10", "arch": "strided(channels=32,final=8,padding=zeros)",
                           "attack_eps": 0.004},
                  "sizes": [32, 64, 128, 256], "decays": [5e-4, 5e-3], "seeds": [0, 1, 2]},
    },
}


def _cell(config: dict[str, Any]) -> dict[str, Any]:
    """One sweep cell: a training run (module level, picklable for workers and Dask)."""
    result = train(TrainConfig.from_json(config))
    return {"d": result.d, "size": result.final["size"], "final": result.final, "history": list(result.history)}


def _samples_cell(config: dict[str, Any]) -> dict[str, Any]:
    """A training run with the per-test-point values of its last epoch (``samples``: ``grad_l1``,
    ``vuln_linf``, ``vuln_l2``), for bootstraps over test points."""
    result = train(TrainConfig.from_json(config))
    return {"d": result.d, "size": result.final["size"], "final": result.final, "history": list(result.history),
            "samples": result.test_samples}


def _dimension_cell(config: dict[str, Any]) -> dict[str, Any]:
    """A training run with ``||d_x L||_1`` per evaluated test point at initialisation (``init_samples``)
    and after its last epoch (``samples``): the dimension experiment's cell."""
    result = train(TrainConfig.from_json(config), init_samples=True)
    return {"d": result.d, "size": result.final["size"], "final": result.final, "history": list(result.history),
            "samples": {"grad_l1": result.test_samples.get("grad_l1", [])},
            "init_samples": {"grad_l1": result.init_samples.get("grad_l1", [])}}


def grid(base: dict[str, Any], sizes: list[int], seeds: list[int], decays: list[float]) -> list[dict[str, Any]]:
    """The cells of the batch-norm experiment: per size (largest first, so that no long run is left
    alone at the end), seed, BN or not, decay 0 and each of ``decays`` (plain training)."""
    return [TrainConfig(**base, size=s, batchnorm=bn, weight_decay=wd, seed=seed).to_json()
            for s in sorted(sizes, reverse=True) for seed in seeds for bn in (False, True) for wd in [0.0, *decays]]


def configs(which: str, preset: str, data_dir: str | None = None, device: str = "cpu", arch: str | None = None,
            seeds: int | None = None) -> list[dict[str, Any]]:
    """The cells of an experiment preset (JSON-able training configurations); ``arch`` replaces the
    preset's network (any target ``train`` takes), ``seeds`` its number of training seeds (a user's
    architecture gets 2 at least: the seed is the independent unit of a trained net)."""
    if which not in PRESETS:
        raise AdvdimError(f"unknown experiment {which!r} (expected: {', '.join(PRESETS)})")
    if preset not in PRESETS[which]:
        raise AdvdimError(f"unknown preset {preset!r} (expected: small or paper)")
    p = dict(PRESETS[which][preset])
    base = {**p["base"], "data_dir": data_dir, "device": device}
    if arch is not None:
        base["arch"] = arch
    if seeds is not None or arch is not None:
        count = seeds if seeds is not None else max(2, len(p["seeds"]))
        if count < 1:
            raise AdvdimError(f"--seeds must be at least 1, got {count}")
        p["seeds"] = list(range(count))
    out: list[dict[str, Any]] = []
    if which == "batchnorm":
        return grid(base, p["sizes"], p["seeds"], p["decays"])
    for seed in p["seeds"]:
        if which == "first-order":
            out.append(TrainConfig(**base, method=Method.PLAIN, eps=0.0, seed=seed).to_json())
            out += [TrainConfig(**base, method=m, eps=e, seed=seed).to_json() for m in p["methods"] for e in p["eps"]]
        else:
            # largest size first: the longest runs start first, so that no long one is left alone at the end
            out += [TrainConfig(**base, size=s, method=Method.PGD if e > 0 else Method.PLAIN, eps=e,
                                seed=seed).to_json() for s in sorted(p["sizes"], reverse=True) for e in p["eps"]]
    return out


def check_arch(cells: list[dict[str, Any]]) -> None:
    """Build the first cell's network at the smallest size on the CPU (a bad target: one line, before
    any file or training)."""
    import torch
    from advdim.empirical._data import load
    from advdim.empirical._models import build_model

    from advdim.build import Init

    first = TrainConfig.from_json(min(cells, key=lambda c: c.get("size") or 0))
    data = load(first.dataset, first.data_dir, seed=first.seed)
    size = first.size if first.size is not None else (32 if first.pad else data.native)
    built = build_model(first.arch, size, data.channels, Init.parse(first.init), first.seed, torch.device("cpu"),
                        first.batchnorm)
    if built.n_classes != data.n_classes:
        raise AdvdimError(f"{first.arch} has {built.n_classes} logits but {first.dataset} has {data.n_classes} classes")


def run_experiment(which: str, preset: str, out_dir: str | Path, workers: int = 0, scheduler: str | None = None,
                   data_dir: str | None = None, device: str = "cpu", progress: bool = True, arch: str | None = None,
                   seeds: int | None = None) -> dict[str, Any]:
    """Run (or resume) an experiment into ``out_dir/runs.sqlite`` and draw its figures there
    (``arch``, ``seeds``: see :func:`configs`)."""
    from advdim.empirical import _batchnorm as bn
    from advdim.empirical import _dimension as dim

    cells = configs(which, preset, data_dir, device, arch, seeds)
    out = Path(out_dir)
    folder = OutputFolder(out)
    folder.check(output_names(which))  # before any work: its files replace only those advdim wrote there
    out.mkdir(parents=True, exist_ok=True)
    samples = which == "batchnorm"
    kind, cell = (bn.RUN_KIND, _samples_cell) if samples else (dim.RUN_KIND, _dimension_cell) \
        if which == "dimension" else (RUN_KIND, _cell)
    with RunStore(out / "runs.sqlite") as store:
        results = run_sweep(kind, cells, cell, store, workers=workers, scheduler=scheduler,
                            description=f"{which} ({preset})", progress=progress)
    rows = [{**c, **r} for c, r in zip(cells, results)]
    if samples:
        found = bn.summary(rows, bn.verdicts(rows))
        folder.file(TRENDS).write_text(json.dumps(found, indent=2) + "\n")
        return {"experiment": which, "preset": preset, "cells": len(cells), "store": str(out / "runs.sqlite"),
                "plots": [str(p) for p in bn.plot(rows, folder)], "trends": [t["text"] for t in found]}
    plots = (plot_first_order if which == "first-order" else plot_dimension)(rows, folder)
    plots += plot_epochs(rows, folder)
    found = trends(which, rows)
    if which == "dimension":  # init vs trained, with intervals over seeds and test points
        plots += dim.plot(rows, folder)
        found += dim.summary(rows)
    folder.file(TRENDS).write_text(json.dumps(found, indent=2) + "\n")
    return {"experiment": which, "preset": preset, "cells": len(cells), "store": str(out / "runs.sqlite"),
            "plots": [str(p) for p in plots], "trends": [t["text"] for t in found]}


def _loglog_slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y against log x (``None`` with < 2 points or a value <= 0)."""
    if len(x) < 2 or min(y) <= 0:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def trends(which: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured trends of an experiment, one record per curve (test-set values of the last epoch).

    - ``first-order``: per method, the log-log slopes of ``E||d_x L||_1`` and of the l_inf
      vulnerability against eps (Figure 1 a-b: both fall as eps grows), and the accuracy range;
      plus, per eps, the spread ``max / min`` of ``E||d_x L||_1`` over the augmentation and
      penalty methods (Figure 1's near superposition gives a spread near 1);
    - ``dimension``: per PGD eps, the log-log slopes of ``E||d_x L||_1`` and of the vulnerability
      against ``sqrt(d)`` (Figure 2 a-b: about 1 for plain training, smaller with PGD).
    """
    out: list[dict[str, Any]] = []

    def test(r: dict[str, Any], key: str) -> float:
        return float(r["final"]["test"][key])

    # a net that did not learn (ReLUs died, constant output: accuracy at chance, input gradient 0 or
    # nearly) is listed, and left out of the slopes and spreads
    for r in rows:
        if collapsed(r):
            out.append({"method": r["method"], "eps": r["eps"], "size": r["size"], "collapsed": True,
                        "text": f"{r['method']} eps {r['eps']:g} size {r['size']}: collapsed (accuracy "
                                f"{test(r, 'acc'):.3f}, at chance; E||g||_1 {test(r, 'grad_l1'):.2g}); "
                                "left out of the slopes"})
    rows = [r for r in rows if not collapsed(r)]
    if which == "first-order":
        for m in sorted({r["method"] for r in rows} - {"plain"}):
            sel = sorted((r for r in rows if r["method"] == m), key=lambda r: r["eps"])
            eps = [r["eps"] for r in sel]
            g = _loglog_slope(eps, [test(r, "grad_l1") for r in sel])
            v = _loglog_slope(eps, [test(r, "vuln_linf") for r in sel])
            accs = [test(r, "acc") for r in sel]
            out.append({"method": m, "eps": eps, "slope_grad_l1": g, "slope_vuln_linf": v, "acc": accs,
                        "text": f"{m}: slope of E||g||_1 vs eps {_fmt(g)}, of vulnerability {_fmt(v)}; "
                                f"accuracy {min(accs):.3f}-{max(accs):.3f}"})
        first_order = {"gp1", "gp2", "fgsm-aug", "l2-aug", "pgd"}
        for e in sorted({r["eps"] for r in rows if r["method"] in first_order}):
            vals = [test(r, "grad_l1") for r in rows if r["method"] in first_order and r["eps"] == e]
            if len(vals) < 2:
                continue
            out.append({"eps": e, "spread_grad_l1": max(vals) / min(vals),
                        "text": f"eps {e:g}: E||g||_1 spread (max/min) over {len(vals)} methods "
                                f"{max(vals) / min(vals):.2f}"})
        for r in rows:
            if r["method"] == "plain":
                out.append({"method": "plain", "acc": test(r, "acc"), "grad_l1": test(r, "grad_l1"),
                            "vuln_linf": test(r, "vuln_linf"),
                            "text": f"plain: accuracy {test(r, 'acc'):.3f}, E||g||_1 {test(r, 'grad_l1'):.3g}, "
                                    f"vulnerability {test(r, 'vuln_linf'):.3f}"})
        return out
    plain_slope: float | None = None
    for e in sorted({r["eps"] for r in rows}):
        sel = sorted((r for r in rows if r["eps"] == e), key=lambda r: r["d"])
        sq = [math.sqrt(r["d"]) for r in sel]
        g = _loglog_slope(sq, [test(r, "grad_l1") for r in sel])
        v = _loglog_slope(sq, [test(r, "vuln_linf") for r in sel])
        accs = [test(r, "acc") for r in sel]
        label = "plain" if e == 0 else f"PGD eps {e:g}"
        record = {"eps": e, "sizes": [r["size"] for r in sel], "slope_grad_l1": g, "slope_vuln_linf": v,
                  "acc": accs, "grad_l1": [test(r, "grad_l1") for r in sel],
                  "vuln_linf": [test(r, "vuln_linf") for r in sel],
                  "text": f"{label}: slope of E||g||_1 vs sqrt(d) {_fmt(g)}, of vulnerability {_fmt(v)}; "
                          f"accuracy {min(accs):.3f}-{max(accs):.3f}"}
        if e == 0:
            plain_slope = g
        elif g is not None and plain_slope is not None:
            # Figure 2's dampening, reported: one value per size and no per-point samples here, so no
            # interval; `advdim verify`'s empirical.dimension row judges it (pgd_dampening_verdict)
            record["slope_change_grad_l1"] = g - plain_slope
            record["text"] += f"; slope minus plain {_fmt(g - plain_slope)} (reported, not judged: no interval)"
        out.append(record)
    return out


def _caption(rows: list[dict[str, Any]]) -> str:
    sizes = sorted({r["size"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    r0 = rows[0]
    n = "all" if r0["n_train"] is None else r0["n_train"]
    return (f"{r0['dataset']} ({n} train imgs, {r0['epochs']} epochs), sizes {sizes}, seeds {seeds}; "
            f"eps per pixel, normalised units; test PGD eps {r0['attack_eps']:g}")


#: the figures of each experiment (``<name>.png`` and ``<name>.svg``) and its trends, in ``--out``
FIGURES = {"first-order": ("figure1", "grad_norms_epochs"),
           "dimension": ("figure2", "grad_norms_epochs", "figure_dimension_slopes"),
           "batchnorm": ("figure_batchnorm",)}
TRENDS = "trends.json"


def output_names(which: str) -> list[str]:
    """The files :func:`run_experiment` writes in its folder besides the run store.

    >>> output_names("batchnorm")
    ['trends.json', 'figure_batchnorm.png', 'figure_batchnorm.svg']
    """
    return [TRENDS, *(f"{name}.{ext}" for name in FIGURES[which] for ext in ("png", "svg"))]


def plot_first_order(rows: list[dict[str, Any]], out: Path | OutputFolder) -> list[Path]:
    """Figure 1 (a-f) analogues: gradient norm, vulnerability, accuracy against eps, and the
    relations vulnerability-gradient, l_1-l_2 norms, accuracy-vulnerability (test set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    n_collapsed = sum(1 for r in rows if collapsed(r))
    rows = [r for r in rows if not collapsed(r)]  # constant nets: no log of 0
    plain = [r for r in rows if r["method"] == "plain"]
    methods = sorted({r["method"] for r in rows} - {"plain"})
    colour = {"plain": "k", **{m: f"C{i}" for i, m in enumerate(methods)}}
    panels = [("grad_l1", "E||d_x L||_1"), ("vuln_linf", "vulnerability (l_inf PGD)"), ("acc", "test accuracy")]
    for ax, (key, label) in zip(axes[0], panels):
        for m in methods:
            sel = sorted((r for r in rows if r["method"] == m), key=lambda r: r["eps"])
            ax.plot([r["eps"] for r in sel], [r["final"]["test"][key] for r in sel], "o-", color=colour[m], label=m)
        for r in plain:
            ax.axhline(r["final"]["test"][key], color="k", ls=":", label="plain" if r is plain[0] else None)
        ax.set_xscale("log")
        ax.set_xlabel("eps per pixel, normalised units (l_p size eps d^(1/p))")
        ax.set_ylabel(label)
    axes[0][0].set_yscale("log")
    axes[0][0].legend(fontsize=7)
    pairs = [("grad_l1", "vuln_linf"), ("grad_l2", "grad_l1"), ("vuln_linf", "acc")]
    for ax, (kx, ky) in zip(axes[1], pairs):
        for m in ["plain", *methods]:
            sel = [r for r in rows if r["method"] == m]
            ax.plot([r["final"]["test"][kx] for r in sel], [r["final"]["test"][ky] for r in sel], "o",
                    color=colour[m], label=m)
        ax.set_xlabel(kx)
        ax.set_ylabel(ky)
    axes[1][0].set_xscale("log")
    axes[1][0].legend(fontsize=7)
    axes[1][1].set_xscale("log")
    axes[1][1].set_yscale("log")
    note = f"; {n_collapsed} collapsed run(s) (constant output) omitted" if n_collapsed else ""
    fig.suptitle("Figure 1 analogue (a-f): " + _caption(rows) + note, fontsize=9)
    return save_figure(fig, out, "figure1")


def plot_dimension(rows: list[dict[str, Any]], out: Path | OutputFolder) -> list[Path]:
    """Figure 2 (a-d) analogues: gradient norm, vulnerability and accuracy against sqrt(d) per
    PGD eps, and vulnerability against gradient norm with a smoothing spline (s = 200)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.interpolate import UnivariateSpline

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    n_collapsed = sum(1 for r in rows if collapsed(r))
    rows = [r for r in rows if not collapsed(r)]
    for eps in sorted({r["eps"] for r in rows}):
        sel = sorted((r for r in rows if r["eps"] == eps), key=lambda r: r["d"])
        x = [math.sqrt(r["d"]) for r in sel]
        label = "plain" if eps == 0 else f"PGD eps={eps:g}"
        for ax, key in zip(axes[:3], ("grad_l1", "vuln_linf", "acc")):
            ax.plot(x, [r["final"]["test"][key] for r in sel], "o-", label=label)
            ax.set_xlabel("sqrt(d)")
            ax.set_ylabel(key)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    gx = np.array([r["final"]["test"]["grad_l1"] for r in rows])
    vy = np.array([r["final"]["test"]["vuln_linf"] for r in rows])
    axes[3].plot(gx, vy, "o")
    order = np.argsort(gx)
    xs, ys = gx[order], vy[order]
    if np.unique(xs).size >= 4:
        spline = UnivariateSpline(xs, ys, s=200, k=min(3, xs.size - 1))
        grid = np.linspace(xs[0], xs[-1], 100)
        axes[3].plot(grid, spline(grid), "-", label="UnivariateSpline s=200")
        axes[3].legend(fontsize=7)
    axes[3].set_xlabel("E||d_x L||_1")
    axes[3].set_ylabel("vulnerability")
    note = f"; {n_collapsed} collapsed run(s) (accuracy at chance) omitted" if n_collapsed else ""
    fig.suptitle("Figure 2 analogue (a-d): " + _caption(rows) + note, fontsize=9)
    return save_figure(fig, out, "figure2")


def plot_epochs(rows: list[dict[str, Any]], out: Path | OutputFolder) -> list[Path]:
    """Train (dashed) vs test (solid) E||d_x L||_1 over epochs, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, r in enumerate(rows):
        epochs = [h["epoch"] for h in r["history"]]
        color = f"C{i % 10}"
        label = f"{r['method']} eps={r['eps']:g} size={r['size']}"
        ax.plot(epochs, [h["test"]["grad_l1"] for h in r["history"]], "-", color=color, label=label)
        ax.plot(epochs, [h["train"]["grad_l1"] for h in r["history"]], "--", color=color)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("E||d_x L||_1 (train dashed, test solid)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(_caption(rows), fontsize=8)
    return save_figure(fig, out, "grad_norms_epochs")
