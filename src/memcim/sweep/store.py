"""The durable result store of a sweep: one SQLite file, one row per point.

Why SQLite (and not a directory of Parquet files) as the store of record:

* **Durable point by point.** Each finished point is one committed transaction, so a crash,
  ``kill -9`` or Ctrl-C loses nothing that finished; a half-written row cannot exist. Parquet
  files are immutable, so the same guarantee would need one file per point and a compaction
  step that can itself be interrupted.
* **Columns appear as results arrive.** A task's result keys are only known once a point has
  run, and failed points have none; SQLite adds a column in place (``ALTER TABLE``) and every
  reader sees one table with one schema. Per-point Parquet files with different schemas make
  ``pandas.read_parquet(dir)`` drop columns silently (it takes the first file's schema).
* **Readable while it runs**, by any number of readers (WAL journal), from the standard
  library alone, in one file that is easy to copy.

Readers::

    import sqlite3, pandas as pd
    df = pd.read_sql("SELECT * FROM points", sqlite3.connect("sweep.sqlite"))
    import polars as pl
    df = pl.read_database("SELECT * FROM points", sqlite3.connect("sweep.sqlite"))
    import duckdb                      # DuckDB's sqlite extension
    duckdb.sql("SELECT * FROM sqlite_scan('sweep.sqlite', 'points')")

and because DuckDB's sqlite extension is downloaded on first use (not possible on an offline
cluster), :func:`export_parquet` also writes the same table as one Parquet file at the end of
every ``memcim sweep`` run (``sweep.parquet`` next to ``sweep.sqlite``), which pandas, polars
and DuckDB read natively.

Table ``points``: ``point_id`` (content hash of the computation, the resume key), ``point_index``,
``sweep``, ``task``, ``status`` ("ok" or "error"), ``error`` (one line: exception type and
message), ``seed``, one column per varied parameter (dotted names as in the spec), one column per
result (prefixed ``result.`` if it collides with another column), ``wall_time_s`` (the
computation alone, measured in the worker), ``started_at``/``finished_at`` (UTC, ISO 8601),
``host``, ``pid``, ``memcim_version``, ``git_commit`` (of the worker that ran it) and ``config``
(JSON: the full hardware config, every argument and the seed). Table ``meta``: key/value
(sweep name, spec text, created).
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

#: columns every row has, in table order (parameters and results are added after ``seed``)
FIXED_COLUMNS = ("point_id", "point_index", "sweep", "task", "status", "error", "seed")
TRAILING_COLUMNS = ("wall_time_s", "started_at", "finished_at", "host", "pid", "memcim_version",
                    "git_commit", "config")
STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def _q(name: str) -> str:
    """Quote an SQL identifier (column names hold dots)."""
    return '"' + name.replace('"', '""') + '"'


def check_store_path(path: str | os.PathLike, name: str = "store", *, writable: bool = False) -> Path:
    """Validate a store path: an SQLite file name ending in .sqlite, .sqlite3 or .db; with
    ``writable``, also that it can be written (its directory created if missing), before any work."""
    p = Path(path)
    if p.suffix not in STORE_SUFFIXES:
        raise ValueError(f"{name}: {str(p)!r} is not allowed; the store is an SQLite file ending in "
                         f"{', '.join(STORE_SUFFIXES)}")
    if p.exists() and not p.is_file():
        raise ValueError(f"{name}: {p} exists and is not a file")
    if writable:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{name}: cannot create directory {p.parent} ({e.strerror or e})") from None
        if not p.parent.is_dir():
            raise ValueError(f"{name}: {p.parent} is not a directory")
        if p.exists() and not os.access(p, os.R_OK | os.W_OK):
            raise ValueError(f"{name}: {p} is not writable")
        if not p.exists() and not os.access(p.parent, os.W_OK | os.X_OK):
            raise ValueError(f"{name}: directory {p.parent} is not writable")
    return p


class SweepStore:
    """A sweep's SQLite store (see the module docstring for the schema).

    Parameters
    ----------
    path : the ``.sqlite`` file (created with its directory when missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = check_store_path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with open(self.path, "rb") as f:
                    head = f.read(16)
                if head and head != b"SQLite format 3\x00":
                    raise ValueError(f"store: {self.path} exists and is not an SQLite database")
            self.con = sqlite3.connect(self.path, timeout=30)
            mode = self.con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # WAL + NORMAL: a commit survives the process being killed (not a power cut), without an
            # fsync per point; where WAL is unavailable (some network file systems) fall back to FULL.
            self.con.execute("PRAGMA synchronous=NORMAL" if mode == "wal" else "PRAGMA synchronous=FULL")
            cols = ", ".join(f"{_q(c)}" + (" TEXT PRIMARY KEY" if c == "point_id" else "") for c in FIXED_COLUMNS)
            self.con.execute(f"CREATE TABLE IF NOT EXISTS points ({cols})")
            self.con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.con.commit()
        except (OSError, sqlite3.Error) as e:
            raise ValueError(f"store: cannot write {self.path} ({getattr(e, 'strerror', None) or e})") from None
        self._columns = self._table_columns()

    # ---- schema ------------------------------------------------------------------------------
    def _table_columns(self) -> list[str]:
        return [r[1] for r in self.con.execute("PRAGMA table_info(points)")]

    def _ensure_columns(self, names) -> None:
        for n in names:
            if n not in self._columns:
                self.con.execute(f"ALTER TABLE points ADD COLUMN {_q(n)}")
                self._columns.append(n)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    # ---- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        r = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else r[0]

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        self.con.commit()

    # ---- rows --------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.con.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def statuses(self) -> dict[str, str]:
        """point_id -> status of every recorded point."""
        return dict(self.con.execute("SELECT point_id, status FROM points"))

    def write(self, row: dict[str, Any]) -> None:
        """Insert (or replace) one point's row and commit it."""
        row = {k: _sql_value(v) for k, v in row.items()}
        self._ensure_columns(row)
        names = list(row)
        sql = (f"INSERT OR REPLACE INTO points ({', '.join(map(_q, names))}) "
               f"VALUES ({', '.join('?' * len(names))})")
        self.con.execute(sql, [row[n] for n in names])
        self.con.commit()

    def ordered_columns(self) -> list[str]:
        """Fixed columns, then parameters and results (in order of appearance), then provenance."""
        cols = self._columns
        middle = [c for c in cols if c not in FIXED_COLUMNS and c not in TRAILING_COLUMNS]
        return [c for c in FIXED_COLUMNS if c in cols] + middle + [c for c in TRAILING_COLUMNS if c in cols]

    def to_pandas(self):
        """The whole table as a pandas DataFrame, sorted by ``point_index``."""
        import pandas as pd

        cols = ", ".join(map(_q, self.ordered_columns()))
        return pd.read_sql(f"SELECT {cols} FROM points ORDER BY point_index, point_id", self.con)

    def close(self) -> None:
        try:
            self.con.close()
        except sqlite3.Error:  # pragma: no cover
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sql_value(v: Any) -> Any:
    if v is None or isinstance(v, (str, bytes)):
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    return json.dumps(v, default=str)


def load_table(path: str | os.PathLike, name: str = "STORE"):
    """Read a sweep store (``.sqlite``/``.db``) or its Parquet export as a pandas DataFrame."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: file not found: {p}")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix not in STORE_SUFFIXES:
        raise ValueError(f"{name}: {p} has suffix {p.suffix!r}; give a sweep store (.sqlite, .db) or a .parquet export")
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        con.close()
        raise ValueError(f"{name}: {p} is not an SQLite database ({e})") from None
    con.close()
    if "points" not in tables:
        raise ValueError(f"{name}: {p} holds no sweep (no 'points' table)")
    with SweepStore(p) as st:
        return st.to_pandas()


def export_parquet(store_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the store's table to one Parquet file (atomically) and return its path.

    Columns that mix types (a result that is a number in one point and text in another) are
    written as text so that the file has one schema.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = Path(store_path)
    out = Path(out) if out is not None else src.with_suffix(".parquet")
    df = load_table(src)
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and v != v)}
            if len(kinds) > 1:
                df[c] = df[c].map(lambda v: None if v is None else str(v))
    table = pa.Table.from_pandas(df, preserve_index=False)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out
