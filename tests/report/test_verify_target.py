"""``advdim verify --target``: the checks that apply to a user's architecture (theory, the Monte Carlo
at initialisation, and with ``--trained`` the dimension experiment), in the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advdim.cli import main

ARCHS = '''
from torch import nn


def mycnn(size, channels):
    return f"{channels}x{size}x{size} > conv(4) > relu > conv(4,s=2) > relu > flatten > dense(10)"


def planted(size, channels):
    return f"{channels}x{size}x{size} > conv(4) > relu > maxpool(2) > flatten > dense(10)"


def factory(input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, 10))
'''


@pytest.fixture
def archs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's file as ``archs.py`` in the working folder: the target's text, and with it the seeds
    of its weight draws (a fixed target's cells are seeded by its canonical text), is the same in
    every run, so the outcomes below are fixed, not a 1% chance per run."""
    (tmp_path / "archs.py").write_text(ARCHS)
    monkeypatch.chdir(tmp_path)
    return Path("archs.py")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict | str]:
    capsys.readouterr()
    rc = main(["verify", "--scale", "tiny", "--json", *args])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc in (0, 1, 3) else cap.err.strip())


def test_a_user_family_gets_its_law_and_the_monte_carlo(archs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, res = run(capsys, "--target", f"{archs}:mycnn", "--out", str(tmp_path / "r"))
    assert isinstance(res, dict) and rc in (0, 3)
    parts = {r["part"] for r in res["verdicts"]}
    assert parts == {"theory", "simulate"} and res["counts"]["fail"] == 0
    judged = [r for r in res["verdicts"] if r["part"] == "simulate" and r["predicted"] is not None]
    assert len(judged) >= 3 and all(r["test"] is not None for r in judged if "slope" in r["claim"])
    assert (tmp_path / "r" / "report.html").is_file()


def test_an_nn_module_factory_needs_its_input_shape_and_is_measured(archs: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(capsys, "--target", f"{archs}:factory", "--out", str(tmp_path / "a"))
    assert rc == 2 and isinstance(err, str) and "--input-shape" in err and not (tmp_path / "a").exists()
    rc, res = run(capsys, "--target", f"{archs}:factory", "--input-shape", "1,8,8", "--out", str(tmp_path / "b"))
    assert isinstance(res, dict) and rc in (0, 3)
    assert any("slope of E||d_x f_0||_1" in r["claim"] and r["predicted"] is not None for r in res["verdicts"])


def test_a_planted_exponent_fails_the_target_rows(archs: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, res = run(capsys, "--target", f"{archs}:mycnn", "--plant-exponent", "0.5", "--out", str(tmp_path / "p"))
    assert rc == 1 and isinstance(res, dict) and res["counts"]["fail"] >= 1


def test_bad_target_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(capsys, "--trained", "--out", str(tmp_path / "a"))
    assert rc == 2 and "--target" in str(err)
    rc, err = run(capsys, "--target", "nope.py:missing", "--out", str(tmp_path / "b"))
    assert rc == 2 and "nope.py" in str(err) and not (tmp_path / "b").exists()


def test_trained_adds_the_dimension_experiment(archs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from advdim.empirical import _experiments as ex

    monkeypatch.setitem(ex.PRESETS["dimension"], "small", {
        "base": {"dataset": "synthetic", "epochs": 1, "n_train": 32, "n_test": 16, "n_eval": 16, "batch_size": 16},
        "eps": [0.0], "seeds": [0], "sizes": [14, 28]})
    rc, res = run(capsys, "--target", f"{archs}:mycnn", "--trained", "--only", "empirical", "--out",
                  str(tmp_path / "t"))
    assert isinstance(res, dict) and rc == 0
    (row,) = res["verdicts"]
    assert row["part"] == "empirical" and "at init" in row["detail"] and "trained" in row["detail"]
