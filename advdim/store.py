"""The run store: a SQLite file with one record per finished cell.

A *cell* is the smallest unit of work of a sweep (one family x size x topology x seed, one
training epoch, ...).  Its record is keyed by the SHA-256 of its configuration in canonical JSON,
so the same configuration always maps to the same key; writing is one transaction per cell
(SQLite's journal makes it atomic: a process killed at any point leaves either the whole record
or none), and a re-run skips the keys already present (``--resume``).

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
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from advdim.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key      TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    config   TEXT NOT NULL,
    result   TEXT NOT NULL,
    created  REAL NOT NULL,
    meta     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_kind ON cells(kind);
"""


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


class RunStore:
    """A SQLite run store.  Safe against ``kill -9`` of a writer at any point.

    Args:
        path: file to open or create (parent folders are created).
        timeout: seconds to wait for another writer's lock.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"run store path {str(self.path)!r} is a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open run store {str(self.path)!r}: {err}") from None
        self._meta = canonical(versions())

    # ---- context manager -------------------------------------------------------------------
    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    # ---- writing ---------------------------------------------------------------------------
    def put(self, kind: str, config: dict[str, Any], result: dict[str, Any]) -> bool:
        """Store one finished cell in its own transaction.

        Returns True when written, False when the key was already present (the stored record is
        kept: a re-executed cell must not duplicate or overwrite one that finished).
        """
        key = cell_key(kind, config)
        cfg = canonical(config)
        res = _result_json(result)
        with self._transaction():
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
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # ---- reading ---------------------------------------------------------------------------
    def has(self, kind: str, config: dict[str, Any]) -> bool:
        key = cell_key(kind, config)
        return self._con.execute("SELECT 1 FROM cells WHERE key=?", (key,)).fetchone() is not None

    def get(self, kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
        row = self._con.execute("SELECT result FROM cells WHERE key=?", (cell_key(kind, config),)).fetchone()
        return None if row is None else json.loads(row[0])

    def keys(self, kind: str | None = None) -> set[str]:
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
        rows = self._con.execute(query + " ORDER BY created, key", args).fetchall()
        return [
            {"key": k, "kind": kd, "config": json.loads(c), "result": json.loads(r), "created": t,
             "meta": json.loads(m)}
            for k, kd, c, r, t, m in rows
        ]

    def count(self, kind: str | None = None) -> int:
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
        """SQLite's own integrity check."""
        return self._con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


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
