"""Sweeps of simulation cells: kill -9 or Ctrl-C then --resume, and the Dask executor, against in-process
runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
from advdim.simulate import study
from advdim.simulate._study import KIND

from advdim.store import RunStore

ARGS = ["--family", "strided", "--sizes", "8,16", "--nets", "16", "--draws", "2", "--inputs", "2", "--seed", "5"]


def _cells(path: Path) -> dict[str, object]:
    """Key -> result of every simulation cell (also the family summary records, which must agree too)."""
    with RunStore(path) as store:
        return {r["key"]: r["result"] for r in store.records()}


def _run(store: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from advdim.cli import entry; entry()", "simulate", *ARGS, "--store", str(store),
           "--json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full = tmp_path / "full.sqlite"
    rc_full = _run(full).wait(timeout=300)
    assert rc_full in (0, 3)  # 3: 16 topologies leave some verdicts inconclusive
    expected = _cells(full)
    assert len(expected) == 33  # 16 topologies x 2 sizes + the family record

    part = tmp_path / "part.sqlite"
    proc = _run(part)
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if part.exists():
            try:
                with RunStore(part) as s:
                    stored = s.count(KIND)
            except Exception:  # the writer holds the file at this instant
                stored = 0
            if stored >= 4:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunStore(part) as s:
        interrupted = s.count(KIND)
    assert 4 <= interrupted < 32
    assert _run(part, "--resume").wait(timeout=300) == rc_full
    assert _cells(part) == expected


def test_dask_executor_gives_the_in_process_numbers(tmp_path: Path) -> None:
    from distributed import LocalCluster

    kwargs = dict(sizes=(4, 8), channels=1, nets=4, inputs=2, seed=11, draws=2, progress=False, with_theory=False)
    local = study("strided", **kwargs)  # type: ignore[arg-type]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster, RunStore(tmp_path / "d.sqlite") as store:
        remote = study("strided", store=store, scheduler=cluster.scheduler_address, **kwargs)  # type: ignore[arg-type]
        assert store.count(KIND) == 8
    assert remote.values == local.values
    assert remote.q["2"].measured_slope == local.q["2"].measured_slope


def test_ctrl_c_on_the_command_line_is_one_line_and_resume_completes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) of ``advdim simulate --workers 2``: exit 130, one last
    line (after the progress bar) that counts the stored cells and says --resume, no traceback from
    the parent or the workers, no process left; ``--resume`` then completes the sweep."""
    store = tmp_path / "s.sqlite"
    # 600 cells: enough that the sweep cannot finish between its first stored cell and the SIGINT (80 could,
    # on an idle machine)
    cmd = [sys.executable, "-m", "advdim", "simulate", "--family", "dense", "--sizes", "8,16", "--nets", "300",
           "--workers", "2", "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _count(store) < 1:
            assert proc.poll() is None, f"the sweep ended (status {proc.returncode}) before storing a cell"
            assert time.monotonic() < deadline, "no cell stored in 120 s"
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with RunStore(store) as s:
        stored = s.count(KIND)
    assert 1 <= stored < 600
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "interrupted" in line] == [err.splitlines()[-1]]
    assert err.endswith(f"interrupted: {stored} cells stored; rerun with --resume\n")
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children):
        assert time.monotonic() < deadline, "a worker outlived the interrupted sweep"
        time.sleep(0.1)

    resumed = subprocess.run([*cmd, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             timeout=300)
    assert resumed.returncode in (0, 3), resumed.stderr  # pass, or inconclusive at this small budget
    with RunStore(store) as s:
        assert s.count(KIND) == 600


def _count(path: Path) -> int:
    """Rows in the ``cells`` table of the store at ``path`` (0 before it exists), read beside its writer."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as con:
            return int(con.execute("SELECT count(*) FROM cells").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
