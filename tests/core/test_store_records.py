"""Damaged store records and a full disk (issue 24, item 4): a record that is not a non-empty JSON
object is one line naming the store and the record, at the store and through ``--resume``; the
full-disk message names no flag a command may lack."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from advdim.cli import main
from advdim.errors import StoreError
from advdim.store import RunStore, cell_key

DAMAGES = {
    "not JSON": ("'not json'", "its result is not JSON (Expecting value"),
    "truncated": ("'{\"v\": 1'", "its result is not JSON"),
    "empty object": ("'{}'", "its result is empty ({})"),
    "list": ("'[1, 2]'", "its result is an array, not a JSON object"),
    "number": ("5", "its result is a number, not a JSON object"),
    "null": ("'null'", "its result is null, not a JSON object"),
    "blob": ("x'00ff'", "its result is not JSON"),
}


def damage(path: Path, column: str, value_sql: str, where: str = "1") -> None:
    """Overwrite ``column`` of the matching records with SQLite directly, as another program might."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute(f"UPDATE cells SET {column} = {value_sql} WHERE {where}")
    finally:
        con.close()


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_record_is_one_line_naming_the_store_and_the_record(tmp_path: Path, name: str) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        store.put("cell", {"i": 0}, {"v": 0.5})
        store.put("cell", {"i": 1}, {"v": 1.5})
    key = cell_key("cell", {"i": 1})
    value_sql, words = DAMAGES[name]
    damage(path, "result", value_sql, f"key = '{key}'")
    with RunStore(path) as store:
        assert store.get("cell", {"i": 0}) == {"v": 0.5}  # the others read as before
        for read in (lambda: store.get("cell", {"i": 1}), lambda: store.records("cell"), lambda: store.dataframe()):
            with pytest.raises(StoreError) as info:
                read()
            message = str(info.value)
            assert message.startswith(f"the run store {str(path)!r} holds a damaged record (kind 'cell', key {key})")
            assert words in message and "\n" not in message, message


def test_damaged_config_and_meta_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        store.put("cell", {"i": 0}, {"v": 0.5})
    damage(path, "config", "'{\"i\": '")
    with RunStore(path) as store, pytest.raises(StoreError, match="its config is not JSON"):
        store.records()
    damage(path, "config", "'{\"i\": 0}'")
    damage(path, "meta", "'[]'")
    with RunStore(path) as store, pytest.raises(StoreError, match="its meta is an array, not a JSON object"):
        store.records()


def test_an_empty_result_is_not_written(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(StoreError, match="a cell's result must be a non-empty dict"):
            store.put("cell", {"i": 0}, {})
        assert store.count() == 0


SIMULATE = ["simulate", "-f", "dense(widths=4)", "--sizes", "4,8", "--nets", "2", "--inputs", "1", "--seed", "1"]


@pytest.mark.parametrize("name", ["not JSON", "empty object", "list"])
def test_resume_from_a_damaged_record_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          name: str) -> None:
    path = tmp_path / "runs.sqlite"
    assert main([*SIMULATE, "--store", str(path)]) in (0, 1, 3)
    capsys.readouterr()
    value_sql, words = DAMAGES[name]
    damage(path, "result", value_sql, "kind = 'simulate.cell' AND rowid = (SELECT MIN(rowid) FROM cells "
                                      "WHERE kind = 'simulate.cell')")
    assert main([*SIMULATE, "--store", str(path), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"advdim: error: the run store {str(path)!r} holds a damaged record (kind "
                          "'simulate.cell', key ") and words in err and "\n" not in err, err


def test_a_full_disk_names_the_store_and_no_flag(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    for rerun, tail in ((None, "free space and run the command again"),
                        ("rerun with --resume", "free space and rerun with --resume")):
        path.unlink(missing_ok=True)
        with RunStore(path) if rerun is None else RunStore(path, rerun=rerun) as store:
            pages = store._con.execute("PRAGMA page_count").fetchone()[0]
            store._con.execute(f"PRAGMA max_page_count = {pages + 10}")  # SQLITE_FULL beyond, as a full disk
            with pytest.raises(StoreError) as info:
                for i in range(100):
                    store.put("cell", {"i": i}, {"payload": "x" * 20000})
        message = str(info.value)
        assert message.startswith(f"the disk holding the run store {str(path)!r} is full: ")
        assert message.endswith(tail) and "\n" not in message
        assert rerun is not None or "--resume" not in message
