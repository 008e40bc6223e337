"""The run store: keys, round trips, export, survival of a `kill -9` mid-write, refusal of files
that are not run stores (untouched), and a full disk."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from advdim.errors import StoreError
from advdim.store import APPLICATION_ID, SCHEMA_VERSION, RunStore, canonical, cell_key


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
    with pytest.raises(StoreError, match=r"is not an advdim run store \(not an SQLite file\)"):
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


LEGACY_SCHEMA = """
CREATE TABLE cells (key TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL, result TEXT NOT NULL,
                    created REAL NOT NULL, meta TEXT NOT NULL);
CREATE INDEX cells_kind ON cells(kind);
"""


def _sqlite(path: Path, *statements: str, wal: bool = False) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.executescript(";".join(statements))
    con.close()


def _folder(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the folder: its bytes and its mtime (a -wal or -shm left behind shows too)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def test_a_new_store_carries_the_application_id_and_schema_version(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        store.put("cell", {"i": 0}, {"v": 0})
    header = (tmp_path / "runs.sqlite").read_bytes()[:100]
    assert header[68:72] == b"ADVD" == APPLICATION_ID.to_bytes(4, "big")  # SQLite's header, big-endian
    assert int.from_bytes(header[60:64], "big") == SCHEMA_VERSION == 1
    assert header[18:20] == b"\x02\x02"  # WAL


FOREIGN = {
    "garbage": (None, "not an SQLite file"),
    "short": (None, "not an SQLite file"),
    "tables": (("CREATE TABLE foo(a)", "CREATE TABLE bar(b)"), "SQLite file with tables: foo, bar"),
    "other-app": (("PRAGMA application_id = 1234", "CREATE TABLE foo(a)"),
                  "another application: application_id 0x000004d2, tables: foo"),
    "cells-of-other-columns": (("CREATE TABLE cells(key, value)",), "a table cells of columns key, value"),
    "legacy-plus-a-table": ((LEGACY_SCHEMA, "CREATE TABLE foo(a)"), "SQLite file with tables: cells, foo"),
    "empty-database": (("PRAGMA user_version = 0", "CREATE TABLE t(a)", "DROP TABLE t"),
                       "SQLite file without tables"),
    "newer-schema": ((f"PRAGMA application_id = {APPLICATION_ID}", "PRAGMA user_version = 2", LEGACY_SCHEMA),
                     "has schema version 2, newer than this advdim's 1"),
}


@pytest.mark.parametrize(("case", "wal"), [(c, w) for c in sorted(FOREIGN) for w in (False, True)
                                           if FOREIGN[c][0] is not None or not w])
def test_a_file_that_is_not_a_run_store_is_refused_untouched(tmp_path: Path, case: str, wal: bool) -> None:
    statements, reason = FOREIGN[case]
    path = tmp_path / "other.sqlite"
    if statements is None:  # not SQLite
        path.write_bytes(b"\x00\x01garbage" * (1 if case == "short" else 500))
    else:
        _sqlite(path, *statements, wal=wal)
    before = _folder(tmp_path)
    time.sleep(0.01)  # a write would then show in the mtime even on a coarse clock
    with pytest.raises(StoreError) as info:
        RunStore(path)
    message = str(info.value)
    assert reason in message and "\n" not in message
    if case != "newer-schema":
        assert message.startswith(f"{str(path)!r} is not an advdim run store (")
    assert message.endswith("give another --store path")
    assert _folder(tmp_path) == before  # not a byte written, no -wal, -shm or -journal left


def test_a_store_of_an_earlier_advdim_is_accepted_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    record = ("k1", "cell", '{"i":1}', '{"v":2.5}', 1.0, '{"advdim":"0.1"}')
    _sqlite(path, LEGACY_SCHEMA, f"INSERT INTO cells VALUES {record!r}", wal=True)
    assert path.read_bytes()[68:72] == b"\x00" * 4
    with RunStore(path) as store:
        assert [(r["key"], r["result"]) for r in store.records()] == [("k1", {"v": 2.5})]
        assert store.put("cell", {"i": 2}, {"v": 3})
    assert path.read_bytes()[68:72] == b"ADVD"
    with RunStore(path) as store:
        assert store.count() == 2 and store.integrity()


def test_a_zero_byte_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    with RunStore(path) as store:
        assert store.put("cell", {"i": 0}, {"v": 1}) and store.count() == 1
    assert path.read_bytes()[68:72] == b"ADVD"


def test_a_full_disk_keeps_every_stored_cell(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    stored = 0
    with RunStore(path) as store:
        # SQLite raises SQLITE_FULL, as on a full disk, once the file would pass this many pages
        pages = store._con.execute("PRAGMA page_count").fetchone()[0]
        store._con.execute(f"PRAGMA max_page_count = {pages + 30}")
        with pytest.raises(StoreError) as info:
            while True:
                store.put("cell", {"i": stored}, {"i": stored, "payload": "x" * 20000})  # 5 pages each
                stored += 1
        assert str(info.value) == (f"the disk holding the run store {str(path)!r} is full: the {stored} cells stored "
                                   "before are kept; free space and run the command again")
        assert stored >= 3
        assert store.integrity() and store.count() == stored
    with RunStore(path) as store:
        assert store.integrity()
        assert sorted(r["result"]["i"] for r in store.records("cell")) == list(range(stored))
        assert store.put("cell", {"i": -1}, {"small": True})  # writable again once there is room


def test_a_lock_held_too_long_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with RunStore(path, timeout=0.05) as store:
            with pytest.raises(StoreError, match="stayed locked by another process while storing a cell") as info:
                store.put("cell", {"i": 0}, {"v": 0})
            assert "\n" not in str(info.value)
        other.execute("ROLLBACK")
    finally:
        other.close()
    with RunStore(path) as store:
        assert store.count() == 0 and store.integrity()
