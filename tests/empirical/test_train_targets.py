"""``advdim train`` takes every target: a user family (``file.py:NAME``, ``module:NAME``) and an
``nn.Module`` factory with ``input_shape``, like any built-in architecture; the store key carries the
hash of the user's file, so a resumed run never mixes two versions of it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from advdim.empirical._train import TrainConfig, train

from advdim.cli import main
from advdim.errors import AdvdimError

ARCHS = '''
import torch
from torch import nn


def mycnn(size, channels):
    return f"{channels}x{size}x{size} > conv(4) > relu > conv(4,s=2) > relu > flatten > dense(10)"


def factory(input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, 10))
'''
SMALL = dict(dataset="synthetic", n_train=64, n_test=16, n_eval=16, epochs=1, batch_size=32)


@pytest.fixture
def archs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "lab" / "archs.py"
    path.parent.mkdir()
    path.write_text(ARCHS)
    monkeypatch.chdir(path.parent)
    return path


@pytest.mark.parametrize("name", ["archs.py:mycnn", "archs:mycnn", "archs.py:factory"])
def test_user_targets_train_and_store_like_built_in_ones(name: str, archs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "runs.sqlite"
    rc = main(["train", "--arch", name, "--dataset", "synthetic", "--epochs", "1", "--n-train", "64", "--n-test",
               "16", "--n-eval", "16", "--batch-size", "32", "--store", str(store), "--json"])
    assert rc in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert len(res["history"]) == 1 and res["history"][0]["test"]["grad_l1"] > 0
    with sqlite3.connect(store) as db:
        keys = [json.loads(k) for (k,) in db.execute("SELECT config FROM cells")]
    assert keys and all(k["arch"] == name and len(k["arch_source"]) == 16 for k in keys)


def test_a_changed_file_is_never_mixed_into_a_stored_run(archs: Path) -> None:
    cfg = TrainConfig(arch="archs.py:mycnn", **SMALL).to_json()
    assert cfg["arch_source"]
    archs.write_text(ARCHS + "\n# edited\n")
    from advdim.empirical._models import arch_source

    arch_source.cache_clear()
    with pytest.raises(AdvdimError, match="has changed since this run was configured"):
        TrainConfig.from_json(cfg)
    assert TrainConfig(arch="archs.py:mycnn", **SMALL).arch_source != cfg["arch_source"]


def test_built_in_configurations_keep_their_keys() -> None:
    assert "arch_source" not in TrainConfig(**SMALL).to_json()


def test_a_factory_refuses_options_that_need_a_spec(archs: Path) -> None:
    with pytest.raises(AdvdimError, match="builds its own module"):
        train(TrainConfig(arch="archs.py:factory", batchnorm=True, **SMALL))
    with pytest.raises(AdvdimError, match="initialises its own weights"):
        train(TrainConfig(arch="archs.py:factory", init="glorot", **SMALL))
