"""EMPIRICAL checks run by ``advdim verify``: first-order identities and the dimension effect on
trained nets.

- Lemma 2 (p = inf and 2): ``(L(x + delta) - L(x)) / (eps ||d_x L||_q) -> 1`` as eps -> 0;
- Proposition 3: FGSM augmentation minus the l_1 penalty shrinks like ``eps^2``;
- Section 4.2: ``E||d_x L||_1`` of plainly trained nets grows like ``sqrt(d)`` on up-sampled
  images (slope 1 in log-log against sqrt(d)); the PGD-trained slope is reported;
- Section 4.2 against Galloway et al. (2019): the growth with and without batch norm, with and
  without weight decay (:mod:`advdim.empirical._batchnorm`).

``Scale.TINY`` trains on the synthetic set (seconds); ``DEFAULT`` on Fashion-MNIST subsets
(a few minutes on 2 cores); ``PAPER`` on more data and epochs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from advdim.empirical import _batchnorm as bn
from advdim.empirical._data import Dataset, load, synthetic
from advdim.empirical._defences import Method
from advdim.empirical._firstorder import fit_order, lemma2_ratios, prop3_gaps
from advdim.empirical._train import TrainConfig, TrainResult, train

from advdim.checks import Budget, Part, Scale, register
from advdim.verdict import Verdict

# The checks keep the net and the constant-lr schedule they were calibrated with (no validation split,
# no lr halving): a global-average-pool conv stack, the family of Section 4.1's net.
CHECK_SCHEDULE = {"arch": "gap(channels=16,final=7,padding=zeros)", "valid_fraction": 0.0, "halve_every": 0,
                  "lr": 0.05, "batch_size": 64}
EPS_SMALL = np.array([5e-7, 1e-6, 2e-6, 4e-6])  # below the ReLU-kink scale of these nets
EPS_PLOT = np.logspace(-7, -1, 13)


def _setup(budget: Budget) -> tuple[Dataset, dict[str, Any]]:
    if budget.scale is Scale.TINY:
        return synthetic(n_train=192, n_test=128, seed=budget.seed), {**CHECK_SCHEDULE,
            "dataset": "synthetic", "n_train": 192, "n_test": 128, "n_eval": 8, "epochs": 2, "batch_size": 32}
    n = 2000 if budget.scale is Scale.DEFAULT else 20000
    return load("fashion-mnist"), {**CHECK_SCHEDULE, "dataset": "fashion-mnist", "n_train": n, "n_test": 500,
                                   "n_eval": 64,
                                   "epochs": 2 if budget.scale is Scale.DEFAULT else 10}


@functools.lru_cache(maxsize=2)
def _trained_cached(scale: Scale, seed: int, device: str) -> tuple[TrainResult, Dataset]:
    budget = Budget(scale=scale, seed=seed, device=device)
    data, base = _setup(budget)
    device = "cpu" if budget.device == "auto" and budget.scale is not Scale.PAPER else budget.device
    result = train(TrainConfig(**base, seed=budget.seed, device=device), data=data)
    return result, data.subset(base["n_train"], base["n_test"])


def _trained(budget: Budget) -> tuple[TrainResult, Dataset]:
    """The trained net shared by the Lemma 2 and Proposition 3 checks (trained once per budget)."""
    return _trained_cached(budget.scale, budget.seed, budget.device)


def _plot(budget: Budget, name: str, xs: np.ndarray, ys: dict[str, np.ndarray], title: str,
          ylabel: str) -> list[str]:
    if budget.out_dir is None:
        return []
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in ys.items():
        ax.plot(xs, y, "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("eps (normalised input units)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    out = Path(budget.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return [str(p) for p in paths]


@register("empirical.lemma2", Part.EMPIRICAL)
def check_lemma2(budget: Budget) -> list[Verdict]:
    result, data = _trained(budget)
    x, y = data.batch(data.x_test), data.y_test
    factor = float(result.d) ** budget.plant_exponent
    verdicts, curves = [], {}
    for p, name in ((math.inf, "inf"), (2.0, "2")):
        small = lemma2_ratios(result.model, x, y, p, EPS_SMALL[:1], norm_factor=factor)[0]
        mean = float(small.mean())
        se = float(small.std(ddof=1) / math.sqrt(small.size))
        # tolerance: 5 standard errors of the per-sample mean (false failure < 1e-6 under normality),
        # floored at 1e-3 for the O(eps) remainder at eps = 5e-7
        tol = max(5 * se, 1e-3)
        curve = lemma2_ratios(result.model, x, y, p, EPS_PLOT, norm_factor=factor).mean(axis=1)
        curves[f"p = {name}"] = curve
        verdicts.append(Verdict(
            claim=f"loss increase of an eps-sized l_{name} attack / (eps ||d_x L||_q) -> 1 as eps -> 0",
            reference="Lemma 2", predicted=1.0, measured=mean, interval=(mean - tol, mean + tol),
            passed=abs(mean - 1) <= tol,
            detail=f"trained {result.config.arch} on {result.config.dataset}, d={result.d}, n={small.size} test "
                   f"points, eps={EPS_SMALL[0]:g}, float64; tol = max(5 SE, 1e-3); seed {budget.seed}",
            extra={"series": {"figure": "Lemma 2 ratio", "label": f"p={name}", "x": EPS_PLOT.tolist(),
                              "y": curve.tolist(), "xlabel": "eps", "ylabel": "ratio", "loglog": False}},
        ))
    plots = _plot(budget, "lemma2", EPS_PLOT, curves,
                  f"Lemma 2 on a trained net ({result.config.dataset}, d={result.d}, seed {budget.seed})",
                  "(L(x+delta)-L(x)) / (eps ||d_x L||_q)")
    if plots:
        verdicts[0] = Verdict(**{**verdicts[0].__dict__, "extra": {**verdicts[0].extra, "plots": plots}})
    return verdicts


@register("empirical.prop3", Part.EMPIRICAL)
def check_prop3(budget: Budget) -> list[Verdict]:
    result, data = _trained(budget)
    x, y = data.batch(data.x_test), data.y_test
    gaps = prop3_gaps(result.model, x, y, EPS_SMALL, norm_factor=float(result.d) ** budget.plant_exponent)
    slope, (lo, hi) = fit_order(EPS_SMALL, gaps, seed=budget.seed)
    # pass when 2 lies in the 99.9% bootstrap interval (false rejection 1e-3 when the order is 2);
    # a first-order error gives slope 1
    passed = lo <= 2.0 <= hi
    return [Verdict(
        claim="FGSM-augmented loss minus l_1-penalised loss shrinks like eps^2",
        reference="Proposition 3", predicted=2.0, measured=slope, interval=(lo, hi), passed=passed,
        detail=f"slope of log|mean gap| vs log eps over eps {EPS_SMALL.tolist()}, n={x.shape[0]} test points of "
               f"{result.config.dataset}, d={result.d}, 400 bootstraps, seed {budget.seed}",
        extra={"series": {"figure": "Proposition 3 gap", "label": "mean gap", "x": EPS_SMALL.tolist(),
                          "y": np.abs(gaps.mean(axis=1)).tolist(), "xlabel": "eps", "ylabel": "|gap|",
                          "loglog": True}},
    )]


def _slope_vs_sqrt_d(runs: list[tuple[int, np.ndarray]], seed: int) -> tuple[float, tuple[float, float]]:
    """Slope of log E||g||_1 against log sqrt(d), bootstrap over the test points of each size."""
    lx = np.log(np.sqrt([d for d, _ in runs]))
    rng = np.random.default_rng(seed)

    def fit(means: list[float]) -> float:
        return float(np.polyfit(lx, np.log(means), 1)[0])

    boots = [fit([float(v[rng.integers(0, v.size, v.size)].mean()) for _, v in runs]) for _ in range(400)]
    lo, hi = np.quantile(boots, [0.0005, 0.9995])
    return fit([float(v.mean()) for _, v in runs]), (float(lo), float(hi))


@functools.lru_cache(maxsize=2)
def _dimension_runs(scale: Scale, seed: int, device: str) -> tuple[list[int], dict[str, list[tuple[int, np.ndarray]]],
                                                                   dict[str, Any]]:
    """Per-sample test ``||d_x L||_1`` of nets trained plainly and with PGD at three up-sampled sizes."""
    from advdim.gradients import Target, input_gradient, lp_norm

    data, base = _setup(Budget(scale=scale, seed=seed, device=device))
    sizes = [data.native, 2 * data.native, 4 * data.native]
    base = {**base, "n_train": base["n_train"] // 4 if scale is not Scale.PAPER else base["n_train"],
            "n_test": min(base["n_test"], 256), "epochs": 1 if scale is not Scale.PAPER else base["epochs"],
            "n_eval": 8}
    runs: dict[str, list[tuple[int, np.ndarray]]] = {}
    for method, eps in (("plain", 0.0), ("pgd", PGD_EPS)):
        runs[method] = []
        for s in sizes:
            r = train(TrainConfig(**base, size=s, method=Method.parse(method), eps=eps, seed=seed), data=data)
            sub = data.subset(base["n_train"], base["n_test"])
            dev = next(r.model.parameters()).device
            g = input_gradient(r.model, sub.batch(sub.x_test, s, device=dev), Target.LOSS, labels=sub.y_test.to(dev))
            runs[method].append((r.d, lp_norm(g, 1).double().cpu().numpy()))
    return sizes, runs, base


PGD_EPS = 0.01


@register("empirical.dimension", Part.EMPIRICAL)
def check_dimension(budget: Budget) -> list[Verdict]:
    sizes, all_runs, base = _dimension_runs(budget.scale, budget.seed, budget.device)
    verdicts = []
    for method, raw in all_runs.items():
        runs = [(d, g * float(d) ** budget.plant_exponent) for d, g in raw]
        slope, (lo, hi) = _slope_vs_sqrt_d(runs, budget.seed)
        series = {"figure": "E||d_x L||_1 vs sqrt(d)", "label": method, "x": [math.sqrt(d) for d, _ in runs],
                  "y": [float(v.mean()) for _, v in runs], "xlabel": "sqrt(d)", "ylabel": "E||d_x L||_1",
                  "loglog": True}
        detail = (f"{base['dataset']} up-sampled x1/x2/x4 (sizes {sizes}), {base['n_train']} train imgs, "
                  f"{base['epochs']} epoch, {base['n_test']} test points, 99.9% bootstrap, seed {budget.seed}")
        if method == "plain":
            # The claim after training (Section 4.2): the dependence on d persists (slope > 0) and is
            # at most the initialisation's sqrt(d) (slope <= 1).  Both ends are judged on the 99.9%
            # bootstrap interval (false rejection <= 1e-3 per end); a planted d^0.5 moves the slope by 1.
            verdicts.append(Verdict(
                claim="E||d_x L||_1 of plainly trained nets grows with d, at most like sqrt(d), on up-sampled images",
                reference="Section 4.2, Theorem 4", predicted=1.0, measured=slope, interval=(lo, hi),
                passed=lo > 0.0 and hi <= 1.0, detail=detail + "; pass iff 0 < slope <= 1 (initialisation: 1)",
                extra={"series": series}))
        else:
            verdicts.append(Verdict(
                claim=f"slope of E||d_x L||_1 against sqrt(d) with PGD training (eps {PGD_EPS:g}), reported",
                reference="Section 4.2, Figure 2", predicted=None, measured=slope, interval=(lo, hi),
                passed=None, detail=detail, extra={"series": series}))
    return verdicts


def _gradient_cell(config: dict[str, Any]) -> dict[str, Any]:
    """A training run of the batch-norm check and the per-point ``||d_x L||_1`` (eval mode) of its
    ``n_test`` test images; no attack beyond the ``n_eval`` points of training (module level,
    picklable for workers and Dask)."""
    from advdim.gradients import Target, input_gradient, lp_norm

    cfg = TrainConfig.from_json(config)
    data = load(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    result = train(cfg, data=data)
    sub = data.subset(cfg.n_train, cfg.n_test)
    dev = next(result.model.parameters()).device
    x = sub.batch(sub.x_test, result.final["size"], cfg.pad, device=dev)
    g = input_gradient(result.model, x, Target.LOSS, labels=sub.y_test.to(dev))
    return {"d": result.d, "size": result.final["size"], "final": result.final,
            "samples": {"grad_l1": lp_norm(g, 1).double().cpu().tolist()}}


@functools.lru_cache(maxsize=2)
def _batchnorm_rows(scale: Scale, seed: int, device: str, workers: int,
                    scheduler: str | None) -> tuple[dict[str, Any], ...]:
    """The runs of the batch-norm check: {BN, none} x {no decay, decay} at each size, two seeds.

    ``TINY``: the synthetic set at 14 and 28 px, one epoch of 64 images (seconds); ``DEFAULT``:
    Fashion-MNIST at 28 / 56 / 112 px, 2 epochs of 800 images, the gradient norms of 128 test
    points (no vulnerability), decay 5e-2 only (about 2 minutes on one core); ``PAPER``: the whole
    ``small`` preset of ``advdim experiment batchnorm`` (both decays, vulnerability too).
    """
    from advdim.empirical import _experiments as ex

    from advdim.sweep import run_sweep

    dev = "cpu" if device == "auto" and scale is not Scale.PAPER else device
    if scale is Scale.PAPER:
        cells = ex.configs("batchnorm", "small", device=dev)
        fn = ex._samples_cell
    else:
        if scale is Scale.TINY:
            base = {"dataset": "synthetic", "epochs": 1, "n_train": 64, "lr": 0.05, "batch_size": 16, "n_test": 32}
            sizes = [14, 28]
        else:
            small = ex.PRESETS["batchnorm"]["small"]
            base = {**small["base"], "n_train": 800, "epochs": 2, "n_test": 128}
            sizes = small["sizes"]
        # n_eval 8: training's own evaluation and attack are not used here
        cells = ex.grid({**base, "n_eval": 8, "device": dev}, sizes, [seed, seed + 1], [BN_DECAY])
        fn = _gradient_cell
    results = run_sweep(bn.RUN_KIND, cells, fn, None, workers=workers, scheduler=scheduler, progress=False)
    return tuple({**c, **r} for c, r in zip(cells, results))


#: the decay of the check below the PAPER scale: over its short schedule the published 5e-4 changes
#: nothing (see ``PRESETS["batchnorm"]``)
BN_DECAY = 5e-2


def planted(rows: Sequence[dict[str, Any]], exponent: float) -> list[dict[str, Any]]:
    """``rows`` with every per-sample gradient norm multiplied by ``d ** exponent`` (the planted error)."""
    if exponent == 0:
        return list(rows)
    out = []
    for r in rows:
        factor = float(r["d"]) ** exponent
        samples = {**r["samples"], "grad_l1": [g * factor for g in r["samples"]["grad_l1"]]}
        out.append({**r, "samples": samples})
    return out


@register("empirical.batchnorm", Part.EMPIRICAL)
def check_batchnorm(budget: Budget) -> list[Verdict]:
    rows = _batchnorm_rows(budget.scale, budget.seed, budget.device, budget.workers, budget.scheduler)
    found = bn.verdicts(planted(rows, budget.plant_exponent), seed=budget.seed)
    if budget.out_dir is not None:
        from pathlib import Path

        out = Path(budget.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [str(p) for p in bn.plot(planted(rows, budget.plant_exponent), out, seed=budget.seed)]
        found[0] = Verdict(**{**found[0].__dict__, "extra": {**found[0].extra, "plots": paths}})
    return found
