"""Bad options of simulate, experiment and verify are refused before any work (issue 24): one line
``advdim: error: ...``, exit 2, and no file created; an unreachable scheduler and an address that
answers but is not Dask are told apart."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import advdim.sweep
from advdim.cli import main
from advdim.errors import EXIT_BAD_INPUT, AdvdimError
from advdim.sweep import probe_scheduler

TINY = ["--sizes", "4,8", "--nets", "2", "--draws", "1", "--inputs", "2", "--device", "cpu"]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tiny HTTP server on loopback: it answers, but is no Dask scheduler (the probe waits 0.3 s
    for a handshake it never sends)."""
    monkeypatch.setattr(advdim.sweep, "SCHEDULER_PROBE_TIMEOUT", 0.3)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _refused(capsys: pytest.CaptureFixture[str], root: Path, argv: list[str]) -> str:
    """Run ``argv`` in ``root``; assert exit 2, one error line and no new file; return the line."""
    before = sorted(root.rglob("*"))
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT, f"{argv}: exit {rc}\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advdim: error: "), err
    assert sorted(root.rglob("*")) == before, f"{argv} created {set(root.rglob('*')) - set(before)}"
    assert seconds < 5, f"{argv} took {seconds:.1f} s to refuse"  # before any work
    return lines[0]


@pytest.mark.parametrize(("extra", "says"), [
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--workers", "-2"], "--workers must be at least 0, got -2"),
    (["--nets", "1"], "--nets must be at least 2"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "either --workers or --scheduler"),
])
def test_simulate_refuses_bad_counts_before_creating_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str],
        says: str) -> None:
    monkeypatch.chdir(tmp_path)
    line = _refused(capsys, tmp_path, ["simulate", "-f", "dense", *TINY, "--store", "s1.sqlite", "--out", "o",
                                       *extra])
    assert says in line


def test_an_unreachable_scheduler_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    monkeypatch.chdir(tmp_path)
    address = f"tcp://127.0.0.1:{closed_port}"
    for argv in (["simulate", "-f", "dense", *TINY, "--store", "s1.sqlite", "--out", "o", "--scheduler", address],
                 ["experiment", "batchnorm", "--out", "e", "--scheduler", address],
                 ["verify", "--scale", "tiny", "--out", "r", "--scheduler", address]):
        line = _refused(capsys, tmp_path, argv)
        assert f"cannot reach the Dask scheduler at '{address}'" in line and "is it running?" in line, line


def test_an_address_that_answers_but_is_not_dask_is_told_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        http_address: str) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["simulate", "-f", "dense", *TINY, "--store", "s1.sqlite", "--scheduler", http_address],
                 ["experiment", "dimension", "--out", "e", "--scheduler", http_address],
                 ["verify", "--scale", "tiny", "--out", "r", "--scheduler", http_address]):
        line = _refused(capsys, tmp_path, argv)
        assert f"{http_address} answers but is not a Dask scheduler" in line and "cannot reach" not in line, line


@pytest.mark.parametrize("extra", [["--workers", "-1"], ["--preset", "huge"], ["--workers", "2", "--scheduler",
                                                                              "tcp://127.0.0.1:8786"]])
def test_experiment_refuses_before_creating_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, ["experiment", "batchnorm", *extra])
    assert not (tmp_path / "advdim-experiment").exists()


def test_probe_accepts_a_dask_scheduler_and_names_an_unknown_host() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert probe_scheduler(cluster.scheduler_address, timeout=5) == cluster.scheduler_address
    with pytest.raises(AdvdimError, match="unknown host 'no-such-host.invalid'"):
        probe_scheduler("tcp://no-such-host.invalid:8786", timeout=2)
    with pytest.raises(AdvdimError, match="must be a Dask scheduler address"):
        probe_scheduler("not-an-address")
