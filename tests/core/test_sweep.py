"""The sweep executor: in-process, local processes and Dask give the same results; resume."""

from pathlib import Path

import pytest

from advdim.errors import AdvdimError, StoreError
from advdim.store import RunStore
from advdim.sweep import _square, run_sweep

CONFIGS = [{"x": i} for i in range(6)] + [{"x": 2}]  # a duplicate is computed once
EXPECTED = [{"y": i * i} for i in range(6)] + [{"y": 4}]


def test_in_process_and_resume(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r.sqlite") as store:
        assert run_sweep("sq", CONFIGS[:3], _square, store, progress=False) == EXPECTED[:3]
        assert store.count("sq") == 3
        calls: list[int] = []

        def counting(config: dict) -> dict:
            calls.append(config["x"])
            return _square(config)

        assert run_sweep("sq", CONFIGS, counting, store, progress=False) == EXPECTED
        assert sorted(calls) == [3, 4, 5]  # finished cells are not recomputed
        assert store.count("sq") == 6
        with pytest.raises(StoreError, match="use --resume"):
            run_sweep("sq", CONFIGS, _square, store, resume=False, progress=False)
        assert store.count("sq") == 6


def test_local_processes(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r.sqlite") as store:
        assert run_sweep("sq", CONFIGS, _square, store, workers=2, progress=False) == EXPECTED
        assert store.count("sq") == 6


def test_dask_local_cluster_on_loopback(tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster, RunStore(tmp_path / "r.sqlite") as store:
        got = run_sweep("sq", CONFIGS, _square, store, scheduler=cluster.scheduler_address, progress=False)
    assert got == run_sweep("sq", CONFIGS, _square, progress=False) == EXPECTED


def test_bad_executor_arguments() -> None:
    with pytest.raises(AdvdimError, match="not both"):
        run_sweep("sq", CONFIGS, _square, workers=2, scheduler="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(AdvdimError, match="workers must be >= 0"):
        run_sweep("sq", CONFIGS, _square, workers=-1, progress=False)
    unreachable = r"^cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' .*; is it running\?$"
    with pytest.raises(AdvdimError, match=unreachable):
        run_sweep("sq", CONFIGS, _square, scheduler="tcp://127.0.0.1:9", progress=False, connect_timeout=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_cell_keeps_the_others_and_fails_the_sweep(tmp_path: Path, workers: int) -> None:
    """One cell raising does not stop the sweep: the others are stored, then one error names the count."""
    configs = [*CONFIGS[:6], {"x": "not a number"}]  # _square raises TypeError on a string
    with RunStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(AdvdimError, match=r"1 of 7 cells failed \(first: TypeError.*6 finished cells are in"):
            run_sweep("sq", configs, _square, store, workers=workers, progress=False)
        assert store.count("sq") == 6
        assert run_sweep("sq", CONFIGS, _square, store, progress=False) == EXPECTED  # resumed from the store
