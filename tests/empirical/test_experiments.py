"""Experiments: preset cells, a tiny sweep end to end (store, resume, figures)."""

import pytest
from advdim.empirical import _experiments as ex

from advdim.errors import AdvdimError
from advdim.store import RunStore


def test_presets_are_valid_configs():
    for which in ex.PRESETS:
        for preset in ("small", "paper"):
            cells = ex.configs(which, preset)
            assert cells and len({str(sorted(c.items())) for c in cells}) == len(cells)
    assert len(ex.configs("first-order", "small")) == 1 + 6 * 3
    with pytest.raises(AdvdimError):
        ex.configs("nope", "small")


@pytest.mark.parametrize("which", ["first-order", "dimension"])
def test_tiny_experiment_end_to_end(which, tmp_path, monkeypatch):
    tiny = {"dataset": "synthetic", "epochs": 1, "n_train": 16, "n_test": 8, "n_eval": 4, "batch_size": 16}
    monkeypatch.setitem(ex.PRESETS[which], "small", {
        "base": {**tiny, "size": 14} if which == "first-order" else tiny, "eps": [0.0, 0.01][which == "first-order":]
        if which == "dimension" else [0.01, 0.03], "seeds": [0], "methods": ["gp1", "fgsm-aug"], "sizes": [14, 28]})
    summary = ex.run_experiment(which, "small", tmp_path, progress=False)
    assert all(__import__("os").path.isfile(p) for p in summary["plots"])
    kind = "empirical.run-dimension" if which == "dimension" else ex.RUN_KIND
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.count(kind) == summary["cells"]
    again = ex.run_experiment(which, "small", tmp_path, progress=False)  # resumes: nothing recomputed
    assert again["cells"] == summary["cells"]


def test_collapsed_runs_are_recognised_and_left_out_of_the_trends():
    def row(acc, grad, size, eps=0.05):
        return {"method": "pgd", "eps": eps, "size": size, "d": size * size, "n_eval": 500, "n_test": 500,
                "final": {"test": {"acc": acc, "grad_l1": grad, "vuln_linf": 0.02}}}

    # the dimension preset's PGD eps 0.05 nets at 56 and 112 px: chance accuracy, gradient ~1e-4
    dead = [row(0.104, 1.3e-4, 56), row(0.104, 4.9e-4, 112)]
    alive = [row(0.826, 3.5, 28), row(0.83, 4.0, 56, eps=0.0), row(0.84, 5.0, 112, eps=0.0), row(0.8, 3.0, 28, 0.0)]
    assert all(ex.collapsed(r) for r in dead) and not any(ex.collapsed(r) for r in alive)
    assert ex.collapsed(row(0.9, 0.0, 28))  # an exactly zero gradient: a constant net
    # chance + 3 binomial se on 500 images is 0.140: a net just above it has learned something
    assert not ex.collapsed(row(0.15, 1.0, 28)) and ex.collapsed(row(0.13, 1.0, 28))
    found = ex.trends("dimension", dead + alive)
    assert sum(bool(t.get("collapsed")) for t in found) == 2
    plain = next(t for t in found if t.get("eps") == 0.0 and "slope_grad_l1" in t)
    assert plain["slope_grad_l1"] > 0


def test_a_users_file_in_the_folder_is_refused_before_any_work(tmp_path):
    """An experiment's figures and trends replace only files an earlier run wrote (issue 24)."""
    (tmp_path / "figure_batchnorm.png").write_bytes(b"the user's figure")
    with pytest.raises(AdvdimError, match="already holds 'figure_batchnorm.png', which advdim did not write"):
        ex.run_experiment("batchnorm", "small", tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure_batchnorm.png"]  # no store, nothing else
    assert (tmp_path / "figure_batchnorm.png").read_bytes() == b"the user's figure"


TINY_DIM = {"base": {"dataset": "synthetic", "epochs": 1, "n_train": 32, "n_test": 24, "n_eval": 24, "batch_size": 16,
                     "lr": 0.02}, "eps": [0.0], "seeds": [0], "sizes": [14, 28]}
USER_ARCHS = """
from torch import nn


def mycnn(size, channels):
    return f"{channels}x{size}x{size} > conv(4) > relu > conv(4,s=2) > relu > flatten > dense(10)"


def factory(input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))
"""


@pytest.mark.parametrize("arch", ["{dir}/archs.py:mycnn", "{dir}/archs.py:factory",
                                  "gap(channels=4,final=7,padding=zeros)"])
def test_dimension_experiment_for_any_architecture(arch, tmp_path, monkeypatch):
    """``experiment dimension --arch``: a user family, an nn.Module factory and a member, two seeds
    by default; per eps the init and trained slopes with their hierarchical intervals and words."""
    from advdim.empirical import _dimension as dim

    (tmp_path / "archs.py").write_text(USER_ARCHS)
    arch = arch.format(dir=tmp_path)
    monkeypatch.setitem(ex.PRESETS["dimension"], "small", TINY_DIM)
    cells = ex.configs("dimension", "small", arch=arch)
    assert {c["seed"] for c in cells} == {0, 1} and all(c["arch"] == arch for c in cells)
    ex.check_arch(cells)
    summary = ex.run_experiment("dimension", "small", tmp_path / "out", progress=False, arch=arch)
    with RunStore(tmp_path / "out" / "runs.sqlite") as store:
        rows = [r["result"] for r in store.records(dim.RUN_KIND)]
    assert len(rows) == 4 and all(len(r["init_samples"]["grad_l1"]) == 24 == len(r["samples"]["grad_l1"])
                                  for r in rows)
    line = next(t for t in summary["trends"] if "slope of E||d_x L||_1 vs sqrt(d) at init" in t)
    assert "2 training seeds x test points" in line and line.count("(") >= 2
    assert any(p.endswith("figure_dimension_slopes.png") for p in summary["plots"])


def test_dimension_words_follow_the_interval():
    import numpy as np
    from advdim.empirical import _dimension as dim

    from advdim.stats import fit_hierarchical_slope

    rng = np.random.default_rng(0)
    sq = [10.0, 20.0, 40.0]

    def runs(exponent):
        return [(s, [np.exp(rng.normal(0, 0.1, 200)) * s**exponent for _ in range(2)]) for s in sq]

    words = [dim.word(fit_hierarchical_slope(runs(e), np.random.default_rng(1))) for e in (1.0, 0.0, -1.0, 2.0)]
    assert words == ["grows", "does not grow", "shrinks", "grows faster than sqrt(d)"]
    assert dim.word(None) == "inconclusive"


def test_a_bad_architecture_is_one_line_before_any_file(tmp_path, capsys):
    from advdim.cli import main

    rc = main(["experiment", "dimension", "--arch", "nope.py:missing", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "nope.py" in err and not (tmp_path / "o").exists()
