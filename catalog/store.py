"""Append rows to catalog tables: one new Parquet file per call, renamed into place.

Layout under the catalog root::

    <table>/obs_date=<YYYY-MM-DD>/part-<UTC time>-<uuid>.parquet   committed rows
    <table>/obs_date=<YYYY-MM-DD>/.tmp-<uuid>.partial             a write in progress
    <table>/obs_date=_schema/schema-v<N>.parquet                   zero rows, full schema

A write goes to the temporary name (which no reader glob ``*.parquet`` matches),
is flushed and fsynced, then renamed to its final name in the same directory:
rename is atomic, so a reader sees the whole file or nothing, and a writer killed
at any moment leaves at most a ``.tmp-*.partial`` file (removed later by
:func:`catalog.compact.compact`). No locks: every write has its own file, so any
number of processes on any number of hosts sharing the filesystem may append at
once.

The zero-row schema file keeps a table readable (and typed) before its first row
and after columns were added.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import numbers
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import schema as sch
from catalog.errors import CatalogError, SchemaError

log = logging.getLogger(__name__)

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"
SCHEMA_PARTITION = "obs_date=_schema"
PARTITION_PREFIX = "obs_date="
COMPRESSION = "zstd"
LISTING_LOCK = ".listing.lock"

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_AUTO = {"event_id", "recorded_at", "schema_version", "code_version"}
_ensured: set[tuple[str, str]] = set()
_clock_lock = threading.Lock()
_last_us = 0


# --- paths -------------------------------------------------------------------

def table_dir(catalog_dir: str | os.PathLike, table: str) -> Path:
    """Directory of ``table`` under the catalog root."""
    if table not in sch.TABLES:
        raise CatalogError(f"unknown catalog table {table!r}; tables: {', '.join(sch.TABLES)}")
    return Path(catalog_dir) / table


def partition_dir(catalog_dir: str | os.PathLike, table: str, obs_date: str) -> Path:
    """Directory of one observation date of ``table``."""
    return table_dir(catalog_dir, table) / f"{PARTITION_PREFIX}{obs_date}"


def schema_file(catalog_dir: str | os.PathLike, table: str) -> Path:
    """The zero-row file carrying the current schema of ``table``."""
    return table_dir(catalog_dir, table) / SCHEMA_PARTITION / f"schema-v{sch.VERSIONS[table]}.parquet"


def is_part_name(name: str) -> bool:
    """True for the name of a committed data file (not a temp or schema file)."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


@lru_cache(maxsize=1)
def default_code_version() -> str:
    """Version recorded in ``code_version``: ``$CONTIMG_CODE_VERSION`` or the installed distribution's."""
    env = os.environ.get("CONTIMG_CODE_VERSION")
    if env:
        return env
    try:
        from importlib.metadata import version

        return version("dsa110-contimg")
    except Exception:  # noqa: BLE001 - not installed (e.g. run from a checkout)
        return "unknown"


# --- validation --------------------------------------------------------------

def _now() -> dt.datetime:
    """UTC now, strictly increasing within this process (microseconds)."""
    global _last_us
    with _clock_lock:
        us = max(time.time_ns() // 1000, _last_us + 1)
        _last_us = us
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)


def _type_name(value) -> str:
    return type(value).__name__


def _coerce(table: str, index: int, col: sch.Column, value):
    """Return ``value`` converted for ``col`` or raise :class:`SchemaError`."""
    t = col.type

    def bad(expected: str) -> SchemaError:
        return SchemaError(table, index, col.name,
                           f"expected {expected}, got {_type_name(value)} {value!r:.80}")

    if pa.types.is_string(t):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise bad("a string")
        if col.allowed is not None and value not in col.allowed:
            raise SchemaError(table, index, col.name,
                              f"{value!r} is not one of {', '.join(sorted(col.allowed))}")
        return value
    if pa.types.is_boolean(t):
        if isinstance(value, bool) or _type_name(value) == "bool_":
            return bool(value)
        raise bad("a bool")
    if pa.types.is_integer(t):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad("an integer")
        value = int(value)
        limit = 2 ** (t.bit_width - 1)
        if not -limit <= value < limit:
            raise SchemaError(table, index, col.name, f"{value} does not fit in {t}")
        return value
    if pa.types.is_floating(t):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad("a number")
        return float(value)
    if pa.types.is_timestamp(t):
        if not isinstance(value, dt.datetime):
            raise bad("a timezone-aware datetime")
        if value.tzinfo is None or value.utcoffset() is None:
            raise SchemaError(table, index, col.name,
                              f"naive datetime {value.isoformat()}; give a timezone (UTC)")
        return value.astimezone(dt.timezone.utc)
    if pa.types.is_list(t):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad("a list")
        inner = t.value_type
        out = []
        for item in value:
            if pa.types.is_integer(inner):
                if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                    raise SchemaError(table, index, col.name,
                                      f"expected a list of integers, found {_type_name(item)} {item!r:.40}")
                out.append(int(item))
            else:
                if isinstance(item, os.PathLike):
                    item = os.fspath(item)
                if not isinstance(item, str):
                    raise SchemaError(table, index, col.name,
                                      f"expected a list of strings, found {_type_name(item)} {item!r:.40}")
                out.append(item)
        return out
    raise SchemaError(table, index, col.name, f"unsupported column type {t}")  # pragma: no cover


def validate_rows(table: str, rows: Iterable[Mapping], *, code_version: str | None = None) -> list[dict]:
    """Check ``rows`` against the schema of ``table`` and complete them.

    Fills ``event_id`` (uuid4 hex), ``recorded_at`` (now, UTC), ``schema_version``
    and ``code_version`` when a row does not give them.

    Returns
    -------
    list of dict
        One dict per row with every column of the table (absent ones None).

    Raises
    ------
    SchemaError
        Naming the table, the row index and the column: unknown table or column,
        missing required value, wrong type, value not allowed, bad ``obs_date``.
    """
    if table not in sch.TABLES:
        raise SchemaError(table, None, None, f"unknown table; tables: {', '.join(sch.TABLES)}")
    cols = sch.columns(table)
    names = {c.name for c in cols}
    keys = set(sch.KEYS[table])
    version = sch.VERSIONS[table]
    code = code_version or default_code_version()
    out = []
    if isinstance(rows, Mapping):
        raise SchemaError(table, None, None, "rows must be a list of dicts, got a single dict")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(table, index, None, f"a row must be a dict, got {_type_name(row)}")
        unknown = [k for k in row if k not in names]
        if unknown:
            raise SchemaError(table, index, unknown[0],
                              f"unknown column; known columns: {', '.join(sorted(names))}")
        clean = {}
        for col in cols:
            value = row.get(col.name)
            if value is None:
                if col.name in _AUTO:
                    value = {"event_id": lambda: uuid.uuid4().hex, "recorded_at": _now,
                             "schema_version": lambda: version, "code_version": lambda: code}[col.name]()
                elif col.required:
                    raise SchemaError(table, index, col.name, "missing required value")
                else:
                    clean[col.name] = None
                    continue
            value = _coerce(table, index, col, value)
            if col.name in keys and isinstance(value, str) and not value:
                raise SchemaError(table, index, col.name, "key column must not be empty")
            clean[col.name] = value
        date = clean["obs_date"]
        if not _DATE_RE.match(date):
            raise SchemaError(table, index, "obs_date", f"{date!r} is not YYYY-MM-DD")
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            raise SchemaError(table, index, "obs_date", f"{date!r} is not a calendar date") from None
        out.append(clean)
    return out


# --- writing -----------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(fd)


def write_atomic(table: pa.Table, directory: Path, final_name: str, *, replace: bool = False) -> Path:
    """Write ``table`` as Parquet to ``directory/final_name`` via a fsynced temp file and rename.

    Parameters
    ----------
    replace : bool
        Allow replacing an existing file of that name (schema files only).
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"
    final = directory / final_name
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, compression=COMPRESSION)
            fh.flush()
            os.fsync(fh.fileno())
        if not replace and final.exists():  # uuid names: never in practice
            raise CatalogError(f"{final} already exists; refusing to overwrite a catalog file")
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return final


@contextmanager
def listing_lock(catalog_dir: str | os.PathLike, table: str, *, exclusive: bool) -> Iterator[None]:
    """Readers list a table's files under a shared lock; compaction swaps files under an exclusive one.

    A directory listing is not a snapshot: a reader scanning a partition while
    compaction renames the merged file in and removes the files it merged can
    miss both (seen in the concurrency test: a count of 994 rows after 1673).
    Appends need no lock: a listing that misses a file committed meanwhile sees
    it next time. A catalog the caller cannot write to is listed without the
    lock (nothing can compact it then).
    """
    lock_path = table_dir(catalog_dir, table) / LISTING_LOCK
    fd = None
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            fd = os.open(lock_path, flags, 0o644)
            break
        except OSError:  # no table yet (nothing to list or swap), or a read-only catalog
            continue
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def part_name() -> str:
    """A new, unique data file name: ``part-<UTC time>-<uuid4 hex>.parquet``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"{PART_PREFIX}{stamp}-{uuid.uuid4().hex}{PART_SUFFIX}"


def ensure_table(catalog_dir: str | os.PathLike, table: str) -> None:
    """Create the table's directory and its zero-row schema file when absent."""
    cache_key = (str(Path(catalog_dir).resolve()), table)
    if cache_key in _ensured:
        return
    path = schema_file(catalog_dir, table)
    if not path.exists():
        write_atomic(sch.SCHEMAS[table].empty_table(), path.parent, path.name, replace=True)
    _ensured.add(cache_key)


def ensure_catalog(catalog_dir: str | os.PathLike) -> Path:
    """Create every table's schema file and a copy of ``views.sql`` at the catalog root.

    The copy lets an operator ``cd <catalog_dir> && duckdb -init views.sql``.
    """
    root = Path(catalog_dir)
    cache_key = (str(root.resolve()), "")
    if cache_key in _ensured:
        return root
    for table in sch.TABLES:
        ensure_table(root, table)
    text = (Path(__file__).with_name("views.sql")).read_text()
    target = root / "views.sql"
    try:
        current = target.read_text() if target.exists() else None
    except OSError:
        current = None
    if current != text:
        tmp = root / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"
        tmp.write_text(text)
        os.replace(tmp, target)
    _ensured.add(cache_key)
    return root


def append(catalog_dir: str | os.PathLike, table: str, rows: Iterable[Mapping], *,
           code_version: str | None = None) -> list[str]:
    """Append ``rows`` (dicts) to ``table``.

    Each call writes one new Parquet file per observation date among the rows
    (normally exactly one), under a temporary name, fsynced, then renamed into
    place. When this returns, the rows are committed.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    table : str
        One of :data:`catalog.schema.TABLES`.
    rows : list of dict
        Column name -> value. Unknown columns are refused; absent optional
        columns are NULL.
    code_version : str, optional
        Recorded in ``code_version`` when a row does not give it.

    Returns
    -------
    list of str
        The ``event_id`` of each row, in order.

    Raises
    ------
    SchemaError
        A row is invalid (nothing is written).
    OSError
        The filesystem refused the write (nothing is visible).
    """
    clean = validate_rows(table, rows if isinstance(rows, Mapping) else list(rows), code_version=code_version)
    if not clean:
        return []
    ensure_catalog(catalog_dir)  # once per process: schema files and views.sql at the root
    by_date: dict[str, list[dict]] = {}
    for row in clean:
        by_date.setdefault(row["obs_date"], []).append(row)
    schema = sch.SCHEMAS[table]
    for date, date_rows in by_date.items():
        arrow = pa.Table.from_pylist(date_rows, schema=schema)
        write_atomic(arrow, partition_dir(catalog_dir, table, date), part_name())
    return [row["event_id"] for row in clean]
