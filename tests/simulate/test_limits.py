"""``advdim simulate`` refuses, in one line and before its first cell, what it cannot finish: sizes whose
cells do not fit in memory, an ``--out`` that cannot be a folder, malformed ``--sizes``."""

from __future__ import annotations

from pathlib import Path

import pytest
from advdim.simulate import _study
from advdim.simulate._study import cell_bytes, check_memory, study, topologies

from advdim import cli_args
from advdim.arch import family
from advdim.cli import main
from advdim.errors import AdvdimError
from advdim.store import RunStore


def _no_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(config: dict[str, object]) -> dict[str, object]:
        raise AssertionError("a cell ran")

    monkeypatch.setattr(_study, "run_cell", refuse)


def simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["simulate", "--nets", "2", "--draws", "1", "--inputs", "2", "--device", "cpu", "--json", *args])
    return rc, capsys.readouterr().err.strip()


def test_sizes_beyond_memory_are_refused_before_the_first_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A strided cell at s = 8192 (d = 2e8: inside the specs' size bounds) needs terabytes."""
    _no_cells(monkeypatch)
    store = tmp_path / "runs.sqlite"
    rc, err = simulate(capsys, "--family", "strided", "--sizes", "8,8192", "--store", str(store))
    assert rc == 2 and "\n" not in err
    assert err.startswith("advdim: error: simulate strided at size 8192 (1 draws x 2 inputs per cell) needs about ")
    assert "(estimate) and this machine has" in err and err.endswith("available: use smaller --sizes")
    assert not store.exists()


def test_every_family_is_checked_before_the_first_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """With 100 MB available, dense at s = 256 fits (12.6 MB) and strided does not: the dense cells,
    which come first, must not run."""
    monkeypatch.setattr(cli_args, "available_memory", lambda device="cpu": (10**8, "this machine has"))
    _no_cells(monkeypatch)
    rc, err = simulate(capsys, "--family", "dense", "--family", "strided", "--sizes", "8,256",
                       "--store", str(tmp_path / "runs.sqlite"), "--out", str(tmp_path / "plots"))
    assert rc == 2 and "\n" not in err
    assert "simulate strided at size 256" in err and "this machine has 100 MB available" in err
    assert not (tmp_path / "runs.sqlite").exists() and not (tmp_path / "plots").exists()


def test_local_workers_multiply_the_need(monkeypatch: pytest.MonkeyPatch) -> None:
    topos = topologies("strided", 4, 0, (8, 64), 3)
    need = max(cell_bytes(f.spec(64, 3), 2, 2) for f in topos)
    monkeypatch.setattr(cli_args, "available_memory", lambda device="cpu": (3 * need, "this machine has"))
    check_memory(topos, (8, 64), 3, 2, 2, workers=3)
    with pytest.raises(AdvdimError, match="4 cells at once"):
        check_memory(topos, (8, 64), 3, 2, 2, workers=8)
    check_memory(topos, (8, 64), 3, 2, 2, workers=8, scheduler="tcp://cluster:8786")  # its workers' memory


def test_study_refuses_before_any_cell(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(AdvdimError, match="simulate strided at size 8192"):
            study("strided", (8, 8192), 3, nets=2, draws=1, inputs=1, progress=False, store=store)
        assert store.count("simulate.cell") == 0


def test_cell_estimate_counts_samples_activations_and_weights() -> None:
    """The terms of :func:`cell_bytes`, exactly (4-byte values)."""
    spec = family("dense", widths=(16,)).spec(10, channels=1)  # d = 100; flatten > dense(16) > relu > dense(10)
    assert cell_bytes(spec, draws=2, inputs=3) == 4 * 6 * 100 * 4  # exact shortcut: d-sized directions
    acts = 100 + 100 + 16 + 16 + 10
    weights = 16 * 100 + 10 * 16
    assert cell_bytes(spec, 2, 3, exact_shortcuts=False) == 4 * 6 * 4 * acts + 2 * 2 * 4 * weights + 4 * 6 * 100 * 4
    assert cell_bytes(spec, 2, 3, exact_shortcuts=False, dtype="float64") == 2 * cell_bytes(spec, 2, 3, False)


@pytest.mark.parametrize(("sizes", "message"), [
    ("", "--sizes is empty"),
    ("0", "(0 is not positive)"),
    ("-3,8", "(-3 is not positive)"),
    ("8,8", "--sizes lists 8 twice"),
    ("abc", "--sizes must be positive integers"),
    ("8", "--sizes needs at least 2 sizes"),
])
def test_bad_sizes_are_one_line(sizes: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = simulate(capsys, "--family", "dense", "--sizes", sizes)
    assert rc == 2 and err.startswith("advdim: error: ") and "\n" not in err and message in err


def test_an_out_that_is_a_file_is_refused_before_any_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _no_cells(monkeypatch)
    taken = tmp_path / "results.txt"
    taken.write_text("keep\n")
    rc, err = simulate(capsys, "--family", "dense", "--sizes", "4,8", "--out", str(taken))
    assert rc == 2 and "\n" not in err and "exists and is not a folder" in err
    rc, err = simulate(capsys, "--family", "dense", "--sizes", "4,8", "--out", str(taken / "inside"))
    assert rc == 2 and "\n" not in err and "is a file, not a folder" in err
    assert taken.read_text() == "keep\n"


def test_out_is_created_once_the_study_is_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "folder"
    rc, err = simulate(capsys, "--family", "dense", "--sizes", "4,8", "--out", str(out))
    assert rc in (0, 3), err  # pass, or inconclusive at this small budget: not a fault
    assert (out / "results.json").is_file() and list(out.glob("*.png"))
