"""``advdim measure`` is a study like ``simulate``: its per-size cells go to a run store keyed by the
factory's canonical text and its source hash, ``--resume`` reuses them, and an edited file gets new
cells (a resumed run never mixes two versions of the user's file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advdim.cli import main
from advdim.store import RunStore

MODELS = '''
import torch
from torch import nn


def mlp(input_shape):
    d = input_shape[0] * input_shape[1] * input_shape[2]
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net
'''
ARGS = ("--input-shape", "1,4,4", "--sizes", "1,2", "--draws", "4", "--inputs", "4", "--steps", "1", "--device",
        "cpu", "--json")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["measure", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_cells_are_stored_resumed_and_keyed_by_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.py"
    models.write_text(MODELS)
    store = tmp_path / "cells.sqlite"
    rc, first = run(capsys, f"{models}:mlp", *ARGS, "--store", str(store), "--out", str(tmp_path / "a"))
    assert rc in (0, 3)
    with RunStore(store) as s:
        records = s.records("measure.cell")
    assert len(records) == 4 * 2
    assert {r["config"]["factory"] for r in records} == {f"{models.resolve()}:mlp"}
    assert len({r["config"]["source"] for r in records}) == 1
    rc, again = run(capsys, f"{models}:mlp", *ARGS, "--store", str(store), "--resume", "--out", str(tmp_path / "b"))
    assert [r["measured"] for r in again["rows"]] == [r["measured"] for r in first["rows"]]
    with RunStore(store) as s:
        assert s.count("measure.cell") == 8  # nothing recomputed
    models.write_text(MODELS + "\n# edited\n")
    run(capsys, f"{models}:mlp", *ARGS, "--store", str(store), "--resume", "--out", str(tmp_path / "c"))
    with RunStore(store) as s:
        assert s.count("measure.cell") == 16  # the edited file's own cells
