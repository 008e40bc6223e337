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
