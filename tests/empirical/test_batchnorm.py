"""Issue 15: weight decay and batch norm in training, eval-mode measurement of BN nets, the
batch-norm experiment and its verdicts (on planted records and end to end on the synthetic set)."""

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from advdim.empirical import TrainConfig, train
from advdim.empirical import _batchnorm as bn
from advdim.empirical import _experiments as ex
from advdim.empirical._train import DEFAULT_ARCH, with_batchnorm

from advdim.arch import BatchNorm, Conv, resolve
from advdim.build import build
from advdim.errors import AdvdimError
from advdim.gradients import Target, input_gradient
from advdim.store import RunStore
from advdim.verdict import Outcome as Says

TINY = dict(dataset="synthetic", n_train=32, n_test=16, n_eval=16, batch_size=32, epochs=1)

# the store-key fields of a run before issue 15: unchanged for runs without decay and batch norm
KEYS_BEFORE = {"dataset", "size", "pad", "arch", "init", "method", "eps", "epochs", "batch_size", "lr", "momentum",
               "halve_every", "valid_fraction", "n_train", "n_test", "n_eval", "attack_eps", "attack_steps",
               "attack_every", "seed"}


def test_new_options_enter_the_store_key_only_when_set():
    assert set(TrainConfig().store_config()) == KEYS_BEFORE
    cfg = TrainConfig(weight_decay=5e-4, batchnorm=True)
    assert cfg.store_config() == {**TrainConfig().store_config(), "weight_decay": 5e-4, "batchnorm": True}
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_json(TrainConfig().to_json()).weight_decay == 0.0
    for bad in ({"weight_decay": -1e-4}, {"weight_decay": math.inf}, {"batchnorm": "yes"}):
        with pytest.raises(AdvdimError):
            TrainConfig(**bad)


def test_weight_decay_is_sgds_coupled_l2():
    """One SGD step without momentum: w1(wd) - w1(0) = -lr * wd * w0 exactly (the same gradient at w0)."""
    common = dict(TINY, valid_fraction=0.0, momentum=0.0, halve_every=0, lr=0.1)
    plain = train(TrainConfig(**common)).model.state_dict()
    decayed = train(TrainConfig(**common, weight_decay=0.3)).model.state_dict()
    w0 = build(resolve(DEFAULT_ARCH, 14, 1), seed=0).state_dict()
    for k, w in w0.items():
        torch.testing.assert_close(decayed[k] - plain[k], -0.1 * 0.3 * w, rtol=0, atol=1e-6)
    assert any(w.abs().max() > 0.1 for w in w0.values())  # the expected change is well above the tolerance


def test_with_batchnorm_puts_one_bn_after_every_conv_and_records_say_eval_mode():
    spec = with_batchnorm(resolve(DEFAULT_ARCH, 56, 1))
    layers = spec.layers
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, Conv)]
    assert len(convs) == 4 and all(isinstance(layers[i + 1], BatchNorm) for i in convs)
    assert sum(isinstance(layer, BatchNorm) for layer in layers) == len(convs)
    result = train(TrainConfig(**TINY, batchnorm=True))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in result.model.modules()) == 2
    assert result.final["measure_mode"] == "eval"
    assert len(result.test_samples["grad_l1"]) == len(result.test_samples["vuln_linf"]) == 16
    assert np.mean(result.test_samples["grad_l1"]) == pytest.approx(result.final["test"]["grad_l1"], rel=1e-9)
    with pytest.raises(AdvdimError, match="has no conv"):
        train(TrainConfig(**TINY, batchnorm=True, arch="dense(widths=8)"))


def test_eval_mode_gradient_of_a_bn_net_does_not_depend_on_the_batch():
    model = train(TrainConfig(**{**TINY, "epochs": 2}, batchnorm=True)).model.double()  # running statistics trained
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 1, 14, 14, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)

    def alone_and_in_batch(train_mode):
        net = copy.deepcopy(model)  # a train-mode forward updates the running statistics
        alone = input_gradient(net, x[:1], Target.LOSS, labels=y[:1], train_mode=train_mode)[0]
        batch = input_gradient(net, x, Target.LOSS, labels=y, train_mode=train_mode)[0]
        return alone, batch, float(alone.abs().max())

    alone, batch, scale = alone_and_in_batch(False)
    assert scale > 1e-3 and float((alone - batch).abs().max()) <= 1e-6 * scale
    alone, batch, scale = alone_and_in_batch(True)  # batch statistics couple the samples
    assert float((alone - batch).abs().max()) > 0.1 * scale


# ---- verdicts on planted records ------------------------------------------------------------

SIZES = (28, 56, 112)


def _rows(slopes, n=400, sigma=0.3, seeds=(0, 1, 2), seed_sd=0.02, rng_seed=0):
    """Stored runs whose per-point ||d_x L||_1 follows ``sqrt(d)^slope`` per condition (lognormal noise,
    a small per-seed factor); the vulnerability follows ``sqrt(d)^(slope / 2)``."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for (batchnorm, wd), slope in slopes.items():
        for size in SIZES:
            for s in seeds:
                g = (size ** slope) * math.exp(seed_sd * rng.standard_normal()) * rng.lognormal(0, sigma, n)
                v = (rng.random(n) < 0.05 * (size / 28) ** (slope / 2)).astype(float)
                rows.append({"dataset": "planted", "size": size, "d": size * size, "seed": s, "n_train": 100,
                             "n_eval": n, "n_test": n, "epochs": 1, "lr": 0.1, "attack_eps": 0.01,
                             "batchnorm": batchnorm, "weight_decay": wd,
                             "final": {"test": {"acc": 0.8, "grad_l1": float(g.mean())}},
                             "samples": {"grad_l1": g.tolist(), "vuln_linf": v.tolist()}})
    return rows


def _by_label(verdicts):
    return {v.claim: v for v in verdicts}


def test_sqrt_d_law_persists_and_d_independent_law_vanishes():
    conditions = {(False, 0.0): 1.0, (True, 0.0): 1.0, (True, 5e-4): 1.0, (False, 5e-4): 0.0, (False, 5e-2): 1.0}
    verdicts = bn.verdicts(_rows(conditions))
    rows = [v for v in verdicts if "condition" in v.extra]
    assert len(rows) == 5
    for v in rows:
        c = v.extra["condition"]
        want = conditions[(c["batchnorm"], c["weight_decay"])]
        assert v.interval[0] <= want <= v.interval[1]  # the planted slope lies in its interval
        if want == 1.0:
            assert v.extra["outcome"] == "persists" and v.passed is True and v.outcome is Says.PASS
        else:  # d-independent: inside the band +-0.25, a contradiction of the paper's claim
            assert v.extra["outcome"] == "vanishes" and v.passed is False and v.outcome is Says.FAIL
            assert -bn.BAND < v.interval[0] and v.interval[1] < bn.BAND
    comparisons = [v for v in verdicts if v.claim.startswith("counter-claim refuted")]
    assert len(comparisons) == 2
    by_wd = {v.extra["comparison"][0]: v for v in comparisons}
    # slope 0 without BN with decay, slope 1 with BN: nullified there, present here -> the counter-claim holds
    assert by_wd["no BN, wd 0.0005"].outcome is Says.FAIL and by_wd["no BN, wd 0.0005"].interval[1] < 0
    # slope 1 without BN with decay: the growth survives the substitution -> refuted
    assert by_wd["no BN, wd 0.05"].outcome is Says.PASS
    reported = [v for v in verdicts if v.predicted is None and not v.claim.startswith("counter-claim")]
    assert len(reported) == 3 and all(v.outcome is Says.REPORTED for v in reported)


def test_few_noisy_points_are_inconclusive():
    conditions = {(True, 0.0): 0.4, (False, 5e-4): 0.4}
    verdicts = bn.verdicts(_rows(conditions, n=5, sigma=1.5, seeds=(0, 1), seed_sd=0.3))
    rows = [v for v in verdicts if "condition" in v.extra]
    assert [v.outcome for v in rows] == [Says.INCONCLUSIVE] * 2, [(v.measured, v.interval) for v in rows]
    assert all(v.interval[0] < 0 < bn.BAND < v.interval[1] for v in rows)
    comparison = next(v for v in verdicts if v.claim.startswith("counter-claim refuted"))
    assert comparison.outcome is Says.INCONCLUSIVE and comparison.to_json()["outcome"] == "inconclusive"
    assert "(inconclusive)" in next(t["text"] for t in bn.summary([], verdicts) if t["claim"] == comparison.claim)


def test_a_planted_d_to_the_half_on_trained_like_records_is_caught():
    """Slope 1 records with norms multiplied by d^0.5: slope 2, above the initialisation's law."""
    from advdim.empirical._checks import planted

    rows = planted(_rows({(True, 0.0): 1.0, (False, 5e-4): 0.3}), 0.5)
    outcomes = {v.extra["condition"]["batchnorm"]: v for v in bn.verdicts(rows) if "condition" in v.extra}
    assert outcomes[True].extra["outcome"] == "faster than sqrt(d)" and outcomes[True].outcome is Says.FAIL
    assert outcomes[True].measured == pytest.approx(2.0, abs=0.1)


def test_fit_slope_is_exact_on_noise_free_values_and_outcomes_follow_the_band():
    groups = [(math.sqrt(s * s), [np.full(10, 3.0 * s ** 0.7)] * 2) for s in SIZES]
    fit = bn.fit_slope(groups, np.random.default_rng(0), n_boot=200)
    assert fit.slope == pytest.approx(0.7, abs=1e-12) and fit.lo == pytest.approx(0.7) == fit.hi
    assert bn.fit_slope(groups[:1], np.random.default_rng(0)) is None
    assert bn.classify(0.3, 0.8) is bn.Outcome.PERSISTS and bn.classify(0.01, 0.24) is bn.Outcome.VANISHES
    assert bn.classify(-0.3, 0.1) is bn.Outcome.INCONCLUSIVE and bn.classify(-0.6, -0.3) is bn.Outcome.REVERSES
    assert bn.classify(1.26, 1.5) is bn.Outcome.FASTER and bn.classify(1.2, 1.5) is bn.Outcome.PERSISTS


# ---- the experiment end to end ---------------------------------------------------------------


def test_batchnorm_preset_cells():
    cells = ex.configs("batchnorm", "small")
    assert len(cells) == 3 * 2 * 3 * 2  # sizes x BN x decays {0, 5e-4, 5e-2} x seeds
    assert {c.get("weight_decay", 0.0) for c in cells} == {0.0, 5e-4, 5e-2}
    assert sum("batchnorm" in c for c in cells) == len(cells) // 2
    assert all(c["method"] == "plain" for c in cells)
    paper = ex.configs("batchnorm", "paper", data_dir="/data/cifar")
    assert {c["size"] for c in paper} == {32, 64, 128, 256} and {c["dataset"] for c in paper} == {"cifar10"}


def test_tiny_batchnorm_experiment_end_to_end(tmp_path, monkeypatch):
    tiny = {"dataset": "synthetic", "epochs": 1, "n_train": 48, "n_test": 16, "n_eval": 16, "batch_size": 16}
    monkeypatch.setitem(ex.PRESETS["batchnorm"], "small",
                        {"base": tiny, "sizes": [14, 28], "decays": [0.05], "seeds": [0]})
    summary = ex.run_experiment("batchnorm", "small", tmp_path, progress=False)
    assert summary["cells"] == 2 * 2 * 2  # sizes x BN x decays
    assert {p.rsplit("/", 1)[1] for p in summary["plots"]} == {"figure_batchnorm.png", "figure_batchnorm.svg"}
    trends = json.loads((tmp_path / "trends.json").read_text())
    conditions = [t for t in trends if t.get("extra", {}).get("condition")]
    assert len(conditions) == 4 and all(t["extra"]["outcome"] in {o.value for o in bn.Outcome} for t in conditions)
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.count(bn.RUN_KIND) == summary["cells"]

    def no_training(config):
        raise AssertionError("a stored cell was recomputed")

    monkeypatch.setattr(ex, "_samples_cell", no_training)
    assert ex.run_experiment("batchnorm", "small", tmp_path, progress=False)["trends"] == summary["trends"]


def test_cli_train_weight_decay_and_batchnorm():
    out = subprocess.run([sys.executable, "-m", "advdim", "train", "--dataset", "synthetic", "--epochs", "1",
                          "--n-train", "32", "--n-test", "16", "--n-eval", "8", "--weight-decay", "5e-4",
                          "--batchnorm", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["config"]["weight_decay"] == 5e-4 and data["config"]["batchnorm"] is True
    assert data["final"]["measure_mode"] == "eval"
    bad = subprocess.run([sys.executable, "-m", "advdim", "train", "--weight-decay", "-1"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "advdim: error: weight_decay must be finite and >= 0, got -1.0"]
