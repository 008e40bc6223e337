"""The run store: keys, round trips, export, and survival of a `kill -9` mid-write."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from advdim.errors import StoreError
from advdim.store import RunStore, canonical, cell_key


def test_put_get_and_keys(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.put("cell", {"b": 2, "a": [1, 2]}, {"v": 1.5, "nan": float("nan")})
        assert not store.put("cell", {"a": [1, 2], "b": 2}, {"v": 99})  # same key: kept, not overwritten
        assert store.get("cell", {"a": [1, 2], "b": 2}) == {"v": 1.5, "nan": None}
        assert store.has("cell", {"b": 2, "a": [1, 2]}) and not store.has("other", {"b": 2, "a": [1, 2]})
        assert store.count() == 1 and store.count("cell") == 1
        assert cell_key("cell", {"a": [1, 2], "b": 2}) in store.keys("cell")
        rec = store.records("cell")[0]
        assert rec["config"] == {"a": [1, 2], "b": 2} and "torch" in rec["meta"]


def test_export_csv_and_parquet(tmp_path: Path) -> None:
    import pandas as pd

    with RunStore(tmp_path / "r.sqlite") as store:
        for i in range(3):
            store.put("cell", {"i": i}, {"y": i * i, "sub": {"z": -i}})
        store.export(tmp_path / "r.csv")
        store.export(tmp_path / "r.parquet")
        with pytest.raises(StoreError, match="needs a .csv or .parquet"):
            store.export(tmp_path / "r.txt")
    for df in (pd.read_csv(tmp_path / "r.csv"), pd.read_parquet(tmp_path / "r.parquet")):
        assert sorted(df["result.y"]) == [0, 1, 4] and sorted(df["result.sub.z"]) == [-2, -1, 0]


def test_bad_configs_and_paths(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not storable"):
        canonical({"x": float("nan")})
    with pytest.raises(StoreError, match="is a directory"):
        RunStore(tmp_path)
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open run store"):
        RunStore(bad)


WRITER = textwrap.dedent(
    """
    import sys
    from advdim.store import RunStore
    store = RunStore(sys.argv[1])
    i = 0
    while True:
        # a large result makes each transaction long enough to be interrupted mid-write
        store.put("cell", {"i": i}, {"i": i, "payload": [i] * 20000})
        print(i, flush=True)
        i += 1
    """
)


def test_store_survives_kill_9_of_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reported = -1
    deadline = time.monotonic() + 60
    while reported < 20 and time.monotonic() < deadline:
        reported = int(proc.stdout.readline())
    time.sleep(0.05)  # let it get into the middle of another write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert reported >= 20
    with RunStore(path) as store:
        assert store.integrity()
        records = store.records("cell")
        indices = sorted(r["config"]["i"] for r in records)
        # every cell reported as finished is there; nothing half-written: each record is whole
        assert indices[: reported + 1] == list(range(reported + 1))
        assert indices == list(range(len(indices)))
        for r in records:
            assert r["result"]["i"] == r["config"]["i"] and r["result"]["payload"] == [r["result"]["i"]] * 20000
        # the store stays writable after the crash
        assert store.put("cell", {"i": -1}, {"ok": json.dumps(True)})
