"""A sweep that is stopped keeps what it finished and leaves nothing behind: Ctrl-C, a killed
parent, a lost Dask scheduler.  Each stop is one line that says how many cells are stored."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from advdim.errors import Interrupted
from advdim.store import RunStore
from advdim.sweep import _sleep, _square, run_sweep

# 4 quick cells, then one that would run for minutes: once 4 are stored, the sweep is mid-way with
# one worker busy in a cell and the other idle, waiting for work (both must ignore Ctrl-C).
QUICK = 4
CONFIGS = [{"seconds": 0.1, "i": i} for i in range(QUICK)] + [{"seconds": 300, "i": QUICK}]

# Runs a sweep of `configs` in a fresh interpreter; prints the one-line message as the CLI does.
SWEEP = """
import sys
from advdim.errors import AdvdimError, Interrupted
from advdim.store import RunStore
from advdim.sweep import _sleep, run_sweep
with RunStore(sys.argv[1]) as store:
    try:
        run_sweep("nap", {configs!r}, _sleep, store, progress=False, **{executor})
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    except AdvdimError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
"""

# Hosts a one-thread Dask cluster until killed, printing the scheduler's address.
CLUSTER = """
import time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                       dashboard_address=None)
print(cluster.scheduler_address, flush=True)
time.sleep(600)
"""


def _stored(path: Path) -> int:
    """Cells in the run store at ``path`` (0 while it is not created yet), read beside its writer."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as con:
            return int(con.execute("SELECT count(*) FROM cells").fetchone()[0])
    except sqlite3.OperationalError:  # no file or no table yet
        return 0


def _wait_for_cells(path: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while _stored(path) < n:
        assert proc.poll() is None, f"the sweep ended (status {proc.returncode}) before storing {n} cells"
        assert time.monotonic() < deadline, f"no {n} cells stored in 120 s"
        time.sleep(0.05)


def _gone(processes: list[psutil.Process], within: float = 10.0) -> bool:
    """Whether every process has exited (a zombie left for init to reap counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its ``SigIgn`` mask in /proc, Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (signal.SIGINT - 1) & 1)


def _start(store: Path, executor: dict[str, object], configs: list[dict] = CONFIGS) -> subprocess.Popen[str]:
    """The sweep in a new session (its own process group, as a command started from a shell)."""
    code = SWEEP.format(configs=configs, executor=executor)
    return subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A Dask cluster in a process of its own (outside the sweep's process group): its address
    and the process, killed on leaving."""
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill what is left of a sweep started by :func:`_start` (a failed test leaves no orphan)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.mark.parametrize("executor", ["in-process", "workers", "dask"])
def test_ctrl_c_stores_the_finished_cells_and_says_so_in_one_line(tmp_path: Path, executor: str) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it): exit 130, one line on
    stderr that counts the stored cells exactly, no worker traceback, no process left."""
    store = tmp_path / "r.sqlite"
    with contextlib.ExitStack() as stack:
        kwargs: dict[str, object] = {"workers": 2} if executor == "workers" else {}
        if executor == "dask":
            kwargs["scheduler"] = stack.enter_context(_cluster())[0]
        proc = _start(store, kwargs)
        stack.callback(_kill_group, proc)
        _wait_for_cells(store, QUICK, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == (3 if executor == "workers" else 0)  # 2 workers + the resource tracker
        if sys.platform.startswith("linux"):  # else the traceback check below is the only (racy) witness
            assert all(_ignores_sigint(p.pid) for p in children)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    stored = _stored(store)
    assert QUICK <= stored < len(CONFIGS)
    assert (proc.returncode, err) == (130, f"interrupted: {stored} cells stored; rerun with --resume\n")
    assert _gone(children)


def test_workers_and_resource_tracker_end_when_the_parent_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the sweep: its workers (one busy with a 300 s cell) and the multiprocessing
    resource tracker exit on their own within seconds, not keep running orphaned."""
    store = tmp_path / "r.sqlite"
    proc = _start(store, {"workers": 2})
    children: list[psutil.Process] = []
    try:
        _wait_for_cells(store, QUICK, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert _gone(children)
    finally:
        for p in [proc, *children]:  # leave no orphan behind when the test fails
            try:
                p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        proc.wait(timeout=60)
    assert _stored(store) >= QUICK


def test_a_worker_watches_its_parent_where_the_kernel_does_not() -> None:
    """The portable fallback of PR_SET_PDEATHSIG: :func:`_watch_parent` exits once the process
    that started it is gone (here a middle process killed with SIGKILL)."""
    child = ("import os; from advdim.sweep import _watch_parent; parent = os.getppid(); "
             "print(os.getpid(), flush=True); _watch_parent(parent, every=0.05)")
    middle = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watcher = psutil.Process(int(proc.stdout.readline()))
    try:
        assert watcher.ppid() == proc.pid
        assert not _gone([watcher], within=0.5)  # it waits while its parent lives
        proc.kill()
        proc.wait(timeout=60)
        assert _gone([watcher])
    finally:
        proc.kill()
        with contextlib.suppress(psutil.NoSuchProcess):
            watcher.kill()
        proc.communicate(timeout=60)


def test_a_keyboard_interrupt_in_a_cell_becomes_interrupted(tmp_path: Path) -> None:
    """In-process, the interrupt arrives inside the cell function: the cells before are stored
    (and counted), the rest not computed; without a store the message says nothing is kept."""

    def until_3(config: dict) -> dict:
        if config["x"] == 3:
            raise KeyboardInterrupt
        return _square(config)

    configs = [{"x": i} for i in range(6)]
    with RunStore(tmp_path / "r.sqlite") as store:
        run_sweep("sq", configs[:1], _square, store, progress=False)  # one cell stored by an earlier run
        with pytest.raises(Interrupted, match=r"^interrupted: 3 cells stored; rerun with --resume$"):
            run_sweep("sq", configs, until_3, store, progress=False)
        assert store.count("sq") == 3
    with pytest.raises(Interrupted, match=r"^interrupted: no --store, the 3 cells finished are lost$"):
        run_sweep("sq", configs, until_3, progress=False)


def test_a_lost_dask_scheduler_is_one_line_and_resume_completes(tmp_path: Path) -> None:
    """The scheduler's process is killed mid-sweep: the sweep's stderr is one line that counts the
    stored cells and says to rerun with --resume (none of distributed's CommClosedError
    tracebacks); the rerun against a new cluster computes the rest."""
    from distributed import LocalCluster

    configs = [{"seconds": 0.3, "i": i} for i in range(12)]
    path = tmp_path / "r.sqlite"
    with _cluster() as (address, cluster):
        proc = _start(path, {"scheduler": address}, configs)
        try:
            _wait_for_cells(path, 3, proc)
            cluster.kill()
            _, err = proc.communicate(timeout=60)
        finally:
            _kill_group(proc)
    stored = _stored(path)
    assert 3 <= stored < len(configs)
    assert (proc.returncode, err) == (2, f"lost the Dask scheduler at {address}: {stored} cells stored; "
                                         "restart it and rerun with --resume\n")

    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as again, RunStore(path) as store:
        got = run_sweep("nap", configs, _sleep, store, scheduler=again.scheduler_address, progress=False)
        assert store.count("nap") == len(configs)
    assert got == [{"slept": 0.3}] * len(configs)
