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
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.count(ex.RUN_KIND) == summary["cells"]
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
