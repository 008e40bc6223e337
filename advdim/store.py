"""The run store: a SQLite file with one record per finished cell.

A *cell* is the smallest unit of work of a sweep (one family x size x topology x seed, one
training epoch, ...).  Its record is keyed by the SHA-256 of its configuration in canonical JSON,
so the same configuration always maps to the same key; writing is one transaction per cell
(SQLite's journal makes it atomic: a process killed at any point leaves either the whole record
or none), and a re-run skips the keys already present (``--resume``).

The file is recognisable: SQLite's header carries :data:`APPLICATION_ID` (the bytes ``ADVD``) and
the schema version :data:`SCHEMA_VERSION` (``PRAGMA user_version``).  Any other non-empty file,
SQLite or not, is refused before a byte of it is written; a store of an earlier advdim (no
application id, one ``cells`` table with our columns) is accepted and stamped.  An SQLite error
(a full disk, a damaged file, a lock held too long) is a :class:`~advdim.errors.StoreError` with
a one-line message, and a failed write leaves every finished cell in place.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.sqlite")
    >>> with RunStore(path) as store:
    ...     store.put("demo", {"size": 8, "seed": 0}, {"value": 1.5})
    ...     store.get("demo", {"seed": 0, "size": 8})["value"]
    True
    1.5
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advdim.errors import StoreError

#: ``PRAGMA application_id`` of a run store: the bytes ``ADVD``, big-endian, as SQLite stores it
APPLICATION_ID = int.from_bytes(b"ADVD", "big")
#: ``PRAGMA user_version`` of the schema below; a store of a later version is refused
SCHEMA_VERSION = 1
_COLUMNS = ("key", "kind", "config", "result", "created", "meta")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cells (
        key      TEXT PRIMARY KEY,
        kind     TEXT NOT NULL,
        config   TEXT NOT NULL,
        result   TEXT NOT NULL,
        created  REAL NOT NULL,
        meta     TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS cells_kind ON cells(kind)",
)
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _default(obj: Any) -> Any:
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums
        return obj.value
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, NaN refused (configurations must be exact)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise StoreError(f"configuration is not storable as JSON: {err}") from None


def cell_key(kind: str, config: dict[str, Any]) -> str:
    """SHA-256 of ``kind`` and the canonical configuration."""
    return hashlib.sha256(f"{kind}\n{canonical(config)}".encode()).hexdigest()


def _result_json(result: dict[str, Any]) -> str:
    # Results may hold NaN (e.g. an undefined ratio); store them as null, never as invalid JSON.
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(json.loads(json.dumps(result, default=_default))), sort_keys=True)


def versions() -> dict[str, str]:
    """Versions of the packages that produce numbers (recorded with every cell)."""
    import platform

    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "scipy", "sympy"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            continue
    from advdim import __version__

    out["advdim"] = __version__
    return out


class _Kind(enum.Enum):
    """What an SQLite file is to advdim."""

    EMPTY = "empty"  # no pages, or no tables and no stamp: to initialise
    STORE = "store"  # a run store of this schema version (or an older one)
    LEGACY = "legacy"  # a run store of an advdim before the stamp: accepted and stamped


@dataclass(frozen=True)
class _Layout:
    """The little of an SQLite file that tells a run store from another file."""

    application_id: int
    user_version: int
    tables: tuple[str, ...]
    cells_columns: tuple[str, ...]

    @classmethod
    def read(cls, con: sqlite3.Connection) -> _Layout:
        tables = con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
        return cls(
            application_id=int(con.execute("PRAGMA application_id").fetchone()[0]) & 0xFFFFFFFF,
            user_version=int(con.execute("PRAGMA user_version").fetchone()[0]),
            tables=tuple(r[0] for r in tables),
            cells_columns=tuple(r[1] for r in con.execute("PRAGMA table_info(cells)")),
        )

    def kind(self, path: Path) -> _Kind:
        """The kind of the file at ``path``; a file that is none of them raises :class:`StoreError`."""
        if self.application_id == APPLICATION_ID:
            if self.user_version > SCHEMA_VERSION:
                raise StoreError(
                    f"the run store {str(path)!r} has schema version {self.user_version}, newer than this "
                    f"advdim's {SCHEMA_VERSION}; open it with a newer advdim or give another --store path"
                )
            return _Kind.STORE
        if self.application_id:
            tables = f", tables: {', '.join(self.tables)}" if self.tables else ""
            raise _foreign(path, f"SQLite file of another application: application_id 0x{self.application_id:08x}"
                                 f"{tables}")
        if self.tables == ("cells",) and self.cells_columns == _COLUMNS and self.user_version == 0:
            return _Kind.LEGACY
        if not self.tables and self.user_version == 0:
            return _Kind.EMPTY
        if self.tables == ("cells",):
            raise _foreign(path, f"SQLite file with a table cells of columns {', '.join(self.cells_columns)}, "
                                 f"not advdim's {', '.join(_COLUMNS)}")
        if self.tables:
            raise _foreign(path, f"SQLite file with tables: {', '.join(self.tables)}")
        raise _foreign(path, f"SQLite file of user_version {self.user_version} without tables")


def _foreign(path: Path, what: str) -> StoreError:
    return StoreError(f"{str(path)!r} is not an advdim run store ({what}); give another --store path")


def _inspect(path: Path, timeout: float) -> _Kind:
    """The kind of the existing file ``path``, found without writing to it (nor creating a file
    beside it); a zero-byte file is :attr:`_Kind.EMPTY`.  Raises :class:`StoreError` for any file
    that is not a run store this advdim can open, untouched."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as err:
        raise StoreError(f"cannot read the run store {str(path)!r}: {err.strerror or err}") from None
    if not header:
        return _Kind.EMPTY
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _foreign(path, "not an SQLite file")
    # With a -wal or -journal beside it the file may hold only part of the data: read it through
    # them (read-only); without, ``immutable`` reads the file alone and creates no -shm or -wal.
    busy = any(path.with_name(path.name + s).exists() for s in ("-wal", "-journal"))
    uri = path.resolve().as_uri() + ("?mode=ro" if busy else "?immutable=1")
    try:
        con = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            layout = _Layout.read(con)
        finally:
            con.close()
    except sqlite3.Error as err:
        raise StoreError(f"cannot read {str(path)!r} as a run store ({err}); give another --store path") from None
    kind = layout.kind(path)
    if kind is _Kind.EMPTY:  # an SQLite database that someone else created, not a blank file
        raise _foreign(path, "SQLite file without tables, not created by advdim")
    return kind


def _error_name(err: sqlite3.Error) -> str:
    """SQLite's name of the error (``SQLITE_FULL``, ...); Python < 3.11 gives only the message."""
    name = getattr(err, "sqlite_errorname", None)
    if name:
        return str(name)
    message = str(err)
    for text, code in (("disk is full", "SQLITE_FULL"), ("database is locked", "SQLITE_BUSY"),
                       ("table is locked", "SQLITE_LOCKED"), ("malformed", "SQLITE_CORRUPT"),
                       ("not a database", "SQLITE_NOTADB"), ("readonly database", "SQLITE_READONLY")):
        if text in message:
            return code
    return "SQLITE_ERROR"


class RunStore:
    """A SQLite run store.  Safe against ``kill -9`` of a writer at any point.

    Args:
        path: file to open or create (parent folders are created).  An existing non-empty file
            must be a run store (see the module docstring); any other is refused untouched.
        timeout: seconds to wait for another writer's lock.
        rerun: how the command that writes the store goes on from the cells it holds, for the
            message of a full disk (``"rerun with --resume"`` where the command has that flag);
            the default names no flag, for commands that have none.
    Raises:
        StoreError: the path is a folder, the file is not a run store or one of a later schema
            version, or SQLite cannot open it.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0,
                 rerun: str = "run the command again") -> None:
        self.path = Path(path)
        self.rerun = rerun
        if self.path.is_dir():
            raise StoreError(f"run store path {str(self.path)!r} is a directory; give a file path")
        kind = _inspect(self.path, timeout) if self.path.exists() else _Kind.EMPTY
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the folder of the run store {str(self.path)!r}: "
                             f"{err.strerror or err}") from None
        try:
            self._con = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the run store {str(self.path)!r}: {err}") from None
        try:
            with self._faults("opening it"):
                if kind is not _Kind.STORE:
                    self._stamp()
                if self._con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._con.execute("PRAGMA journal_mode=WAL")
                self._con.execute("PRAGMA synchronous=FULL")
        except BaseException:
            self._con.close()
            raise
        self._meta = canonical(versions())

    def _stamp(self) -> None:
        """Create the schema in an empty file, or stamp a store of an earlier advdim, in one
        transaction that first checks again what the file holds (another process may have
        created it meanwhile)."""
        with self._transaction():
            if _Layout.read(self._con).kind(self.path) is _Kind.STORE:
                return
            self._con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                self._con.execute(statement)

    # ---- context manager -------------------------------------------------------------------
    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._faults("closing it"):
            self._con.close()

    # ---- faults ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        """Turn an SQLite error into a one-line :class:`StoreError` (the transaction, if any, is
        already rolled back by :meth:`_transaction`)."""
        try:
            yield
        except sqlite3.Error as err:
            raise self._fault(err, doing) from None

    def _fault(self, err: sqlite3.Error, doing: str) -> StoreError:
        where = repr(str(self.path))
        name = _error_name(err)
        if name.startswith("SQLITE_FULL"):
            try:
                n = self.count()
                kept = f"the {n} cell{'' if n == 1 else 's'} stored before {'is' if n == 1 else 'are'} kept"
            except StoreError:
                kept = "the cells stored before are kept"
            return StoreError(f"the disk holding the run store {where} is full: {kept}; free space and {self.rerun}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreError(f"the run store {where} stayed locked by another process while {doing} ({err}); "
                              "rerun when that process is done, or give another --store path")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreError(f"the run store {where} is damaged ({err}); give another --store path")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            return StoreError(f"cannot write the run store {where} ({err}); check the permissions of the file "
                              "and its folder, or give another --store path")
        return StoreError(f"the run store {where} failed while {doing}: {err}")

    # ---- writing ---------------------------------------------------------------------------
    def put(self, kind: str, config: dict[str, Any], result: dict[str, Any]) -> bool:
        """Store one finished cell in its own transaction.

        Returns True when written, False when the key was already present (the stored record is
        kept: a re-executed cell must not duplicate or overwrite one that finished).  On any
        failure (a full disk, ...) the transaction is rolled back: the cells stored before stay.
        """
        key = cell_key(kind, config)
        cfg = canonical(config)
        if not isinstance(result, dict) or not result:
            raise StoreError(f"a cell's result must be a non-empty dict, got {str(result)[:60]!r}")
        res = _result_json(result)
        with self._faults("storing a cell"), self._transaction():
            cur = self._con.execute(
                "INSERT OR IGNORE INTO cells(key, kind, config, result, created, meta) VALUES (?,?,?,?,?,?)",
                (key, kind, cfg, res, time.time(), self._meta),
            )
        return cur.rowcount == 1

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._con.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (e.g. on SQLITE_FULL); a failing ROLLBACK must
            # not hide the error that caused it
            if self._con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
            raise

    # ---- reading ---------------------------------------------------------------------------
    def has(self, kind: str, config: dict[str, Any]) -> bool:
        key = cell_key(kind, config)
        with self._faults("reading a cell"):
            return self._con.execute("SELECT 1 FROM cells WHERE key=?", (key,)).fetchone() is not None

    def get(self, kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The result stored for ``(kind, config)``, or None; a damaged record (a result that is not
        a non-empty JSON object) raises a one-line :class:`StoreError` naming the store and the key."""
        key = cell_key(kind, config)
        with self._faults("reading a cell"):
            row = self._con.execute("SELECT result FROM cells WHERE key=?", (key,)).fetchone()
        return None if row is None else self._decode(key, kind, "result", row[0])

    def _decode(self, key: str, kind: Any, column: str, text: Any) -> dict[str, Any]:
        """The JSON object of one column of a record; anything else (not JSON, not an object, an
        empty result: a record written by other means than :meth:`put`) is a :class:`StoreError`."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError) as err:
            reason = str(err).splitlines()[0][:100] if str(err) else type(err).__name__
            raise self._damaged(key, kind, f"its {column} is not JSON ({reason})") from None
        if not isinstance(value, dict):
            names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            what = names.get(type(value), "a number")
            raise self._damaged(key, kind, f"its {column} is {what}, not a JSON object")
        if column == "result" and not value:
            raise self._damaged(key, kind, "its result is empty ({})")
        return value

    def _damaged(self, key: str, kind: Any, what: str) -> StoreError:
        return StoreError(f"the run store {str(self.path)!r} holds a damaged record (kind {str(kind)[:60]!r}, key "
                          f"{str(key)[:64]}): {what}; delete that record or use another store")

    def keys(self, kind: str | None = None) -> set[str]:
        with self._faults("reading its keys"):
            if kind is None:
                rows = self._con.execute("SELECT key FROM cells").fetchall()
            else:
                rows = self._con.execute("SELECT key FROM cells WHERE kind=?", (kind,)).fetchall()
        return {r[0] for r in rows}

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All records (optionally of one kind) as ``{"kind", "key", "config", "result", "created", "meta"}``."""
        query = "SELECT key, kind, config, result, created, meta FROM cells"
        args: tuple[Any, ...] = ()
        if kind is not None:
            query += " WHERE kind=?"
            args = (kind,)
        with self._faults("reading its records"):
            rows = self._con.execute(query + " ORDER BY created, key", args).fetchall()
        return [
            {"key": k, "kind": kd, "config": self._decode(k, kd, "config", c),
             "result": self._decode(k, kd, "result", r), "created": t, "meta": self._decode(k, kd, "meta", m)}
            for k, kd, c, r, t, m in rows
        ]

    def count(self, kind: str | None = None) -> int:
        with self._faults("counting its cells"):
            if kind is None:
                return int(self._con.execute("SELECT COUNT(*) FROM cells").fetchone()[0])
            return int(self._con.execute("SELECT COUNT(*) FROM cells WHERE kind=?", (kind,)).fetchone()[0])

    def dataframe(self, kind: str | None = None) -> Any:
        """Records as a pandas DataFrame, config and result keys flattened into columns."""
        import pandas as pd

        rows = []
        for rec in self.records(kind):
            row = {"key": rec["key"], "kind": rec["kind"], "created": rec["created"]}
            row.update({f"config.{k}": v for k, v in _flatten(rec["config"]).items()})
            row.update({f"result.{k}": v for k, v in _flatten(rec["result"]).items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def export(self, path: str | os.PathLike[str], kind: str | None = None) -> Path:
        """Write the records to ``.csv`` or ``.parquet`` (by suffix); returns the path."""
        out = Path(path)
        df = self.dataframe(kind)
        if out.suffix == ".csv":
            df.to_csv(out, index=False)
        elif out.suffix == ".parquet":
            df.to_parquet(out, index=False)
        else:
            raise StoreError(f"export needs a .csv or .parquet path, got {str(out)!r}")
        return out

    def integrity(self) -> bool:
        """SQLite's own integrity check (False also when the check cannot read a damaged file)."""
        try:
            return self._con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as err:
            if _error_name(err).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
                return False
            raise self._fault(err, "checking its integrity") from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out
