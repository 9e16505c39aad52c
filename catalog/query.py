"""Read the catalog with DuckDB: views over the files that pass validation.

:func:`connect` lists each table's Parquet files, checks each one cheaply (magic
bytes and footer; results cached in-process by path, size and mtime), warns
about and skips unreadable ones, defines ``<table>_source()`` over the explicit
list of good files, then the views of ``views.sql``. :func:`query` also recovers
from the races a shared, compacted catalog has: a file deleted by compaction
after it was listed, or a file whose footer is fine but whose data is not, are
handled by re-listing (and excluding the bad file) and running the query again.

Reading is all these connections do. Once the views are defined, DuckDB's
external access is switched off except for the catalog directory
(``allowed_directories``) and the configuration is locked, so SQL cannot read
other files, install or load extensions, attach databases, or switch that back
on. DuckDB allows writes under an allowed directory as well, so :func:`query`
also accepts only one ``SELECT`` statement: ``COPY ... TO``, ``ATTACH``,
``EXPORT``, ``CREATE``, ``SET`` and the like are refused with :class:`QueryError`.
The catalog's writers (:mod:`catalog.store`, :mod:`catalog.compact`) write with
pyarrow, not through these connections.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from catalog import schema as sch
from catalog import store, views
from catalog.errors import CatalogError

log = logging.getLogger(__name__)


class QueryError(CatalogError, ValueError):
    """A catalog query was refused or is invalid: the SQL is at fault, running it again cannot help."""


#: Attempts of one query (each with a fresh file listing, after a short random pause).
MAX_ATTEMPTS = 20

_cache_lock = threading.Lock()
_problems: dict[tuple[str, int, int], str | None] = {}
"""(path, size, mtime_ns) -> None (good) or the reason it is unreadable."""
_signatures: dict[tuple[str, int, int], tuple] = {}
"""(path, size, mtime_ns) -> the file's schema as ((name, type), ...)."""
_warned: set[tuple[str, int, int]] = set()


# --- files -------------------------------------------------------------------

def list_files(catalog_dir: str | os.PathLike, table: str) -> list[str]:
    """Every committed data file and schema file of ``table`` (absolute paths, sorted).

    Temporary files (``.tmp-*.partial``) and anything else are ignored.
    """
    with store.listing_lock(catalog_dir, table, exclusive=False):
        return _scan_files(store.table_dir(catalog_dir, table).resolve())


def _scan_files(root: Path) -> list[str]:
    found = []
    try:
        partitions = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for part in partitions:
        if not part.name.startswith(store.PARTITION_PREFIX):
            continue
        is_schema = part.name == store.SCHEMA_PARTITION
        try:
            with os.scandir(part.path) as entries:
                for entry in entries:
                    name = entry.name
                    if store.is_part_name(name) or (is_schema and name.endswith(".parquet")):
                        found.append(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    found.sort()
    return found


def _inspect(path: str | os.PathLike, *, full: bool = False) -> tuple[str | None, tuple | None]:
    """(why ``path`` is unreadable or None, its schema signature or None)."""
    try:
        size = os.path.getsize(path)
        if size < 12:
            return f"too small to be Parquet ({size} bytes)", None
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(size - 8)
            tail = fh.read(8)
        if head != b"PAR1" or tail[4:] != b"PAR1":
            return "no Parquet magic bytes (truncated or not Parquet)", None
        footer = int.from_bytes(tail[:4], "little")
        if footer > size - 12:
            return f"footer length {footer} exceeds file size {size}", None
        if full:
            pq.read_table(path)
        arrow = pq.read_schema(path)
        signature = tuple((f.name, str(f.type)) for f in arrow)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
        return f"{type(exc).__name__}: {exc}", None
    return None, signature


def file_problem(path: str | os.PathLike, *, full: bool = False) -> str | None:
    """Why ``path`` is not a readable Parquet file, or None when it is.

    Parameters
    ----------
    full : bool
        Also read every row (slow); otherwise only the magic bytes and footer.
    """
    return _inspect(path, full=full)[0]


def _key(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (path, st.st_size, st.st_mtime_ns)


def _mark_bad(path: str, problem: str) -> None:
    key = _key(path)
    if key is not None:
        with _cache_lock:
            _problems[key] = problem
        _warn(key, problem)


def _warn(key: tuple[str, int, int], problem: str) -> None:
    with _cache_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("skipping unreadable catalog file %s: %s (see `contimg catalog check`)", key[0], problem)


def good_files(catalog_dir: str | os.PathLike, table: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The readable files of ``table`` and the unreadable ones with their reason.

    Unreadable files are logged (once per process) as warnings.
    """
    return _good_files(catalog_dir, table)[:2]


def _good_files(catalog_dir, table: str) -> tuple[list[str], list[tuple[str, str]], bool]:
    """Also says whether all good files have one schema (then ``union_by_name`` is not needed)."""
    # Inspected under the listing's shared lock: a compaction swap between listing and inspecting
    # would make the merged files vanish, and skipping them dropped their rows from the answer
    # (the concurrency test saw a count fall from 2132 to 1519). A file removed after the lock is
    # released fails DuckDB's read instead, and the query re-lists (_recoverable).
    with store.listing_lock(catalog_dir, table, exclusive=False):
        return _inspect_listing(_scan_files(store.table_dir(catalog_dir, table).resolve()))


def _inspect_listing(paths: list[str]) -> tuple[list[str], list[tuple[str, str]], bool]:
    good, bad, signatures = [], [], set()
    for path in paths:
        key = _key(path)
        if key is None:
            continue  # removed by hand (compaction cannot swap while the listing lock is held)
        with _cache_lock:
            known = key in _problems
            problem = _problems.get(key)
            signature = _signatures.get(key)
        if not known:
            try:
                problem, signature = _inspect(path)
            except FileNotFoundError:
                continue
            with _cache_lock:
                _problems[key] = problem
                if signature is not None:
                    _signatures[key] = signature
        if problem is None:
            good.append(path)
            signatures.add(signature)
        else:
            _warn(key, problem)
            bad.append((path, problem))
    return good, bad, len(signatures) <= 1


# --- connections -------------------------------------------------------------

def _view_statements(tables: Iterable[str], names: Iterable[str] | None = None) -> list[str]:
    """Statements of the views part of ``views.sql`` that define views of ``tables``.

    ``names`` limits them further to these view names (each view binds, reading
    file footers, when created: defining only the views a query uses is cheaper).
    """
    tables = set(tables)
    wanted = set()
    for t in tables:
        wanted |= {t, f"{t}_all"}
    derived = {name for name, needs in views.DERIVED.items() if tables >= set(needs) & set(sch.TABLES)}
    if names is not None:
        wanted &= set(names)
        derived &= set(names)
    # a derived view reads its tables' views and the derived statements it names
    todo = list(derived)
    while todo:
        for need in views.DERIVED[todo.pop()]:
            if need not in wanted:
                wanted.add(need)
                if need in views.DERIVED:
                    todo.append(need)
    wanted |= derived
    out = []
    for stmt in views.views_part().split(";"):
        m = re.search(r"CREATE\s+OR\s+REPLACE\s+(?:VIEW|MACRO)\s+(\w+)", stmt, re.IGNORECASE)
        if m and m.group(1) in wanted:
            out.append(stmt.strip() + ";")
    return out


def _define_sources(con: duckdb.DuckDBPyConnection, catalog_dir, tables: Sequence[str],
                    used: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    used = {} if used is None else used
    for table in tables:
        files, _, uniform = _good_files(catalog_dir, table)
        used[table] = files  # before executing: DuckDB may read the files right away
        if files:
            # one schema in every file: no need to read every footer to unify them
            con.execute(views.source_macro(table, files, union_by_name=not uniform))
        else:
            con.register(f"_empty_{table}", sch.SCHEMAS[table].empty_table())
            con.execute(f"CREATE OR REPLACE MACRO {table}_source() AS TABLE SELECT * FROM _empty_{table};")
    return used


def _lock_down(con: duckdb.DuckDBPyConnection, catalog_dir) -> None:
    """Limit ``con``'s file access to the catalog directory and lock its configuration.

    After this, SQL on ``con`` cannot touch files outside the catalog, install or
    load extensions, attach databases, or change any setting (these fail with
    ``duckdb.PermissionException`` or ``duckdb.InvalidInputException``).
    """
    root = str(Path(catalog_dir).resolve()).rstrip(os.sep) + os.sep  # a directory, not a name prefix
    con.execute("SET allowed_directories = [" + _sql_string(root) + "]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(catalog_dir, tables: Sequence[str] | None, used: dict[str, list[str]] | None = None,
             view_names: Iterable[str] | None = None):
    """A locked connection with views, and the files each table's source reads (also filled on failure)."""
    tables = list(sch.TABLES) if tables is None else [t for t in sch.TABLES if t in set(tables)]
    used = {} if used is None else used
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        _define_sources(con, catalog_dir, tables, used)
        for stmt in _view_statements(tables, view_names):
            con.execute(stmt)
        _lock_down(con, catalog_dir)
    except BaseException:
        con.close()
        raise
    return con, used


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is exactly one ``SELECT`` statement."""
    kinds = [stmt.type.name for stmt in con.extract_statements(sql)]  # a syntax error raises here
    if kinds != ["SELECT"]:
        got = ", ".join(kinds) or "no statement"
        raise QueryError(
            f"catalog queries are read-only and take one SELECT statement, got {got}; "
            f"to save a result, write it from the returned table (contimg query --output FILE)\nSQL: {sql}"
        )


def connect(catalog_dir: str | os.PathLike, *, tables: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the catalog views, for reading.

    The connection can only reach files under ``catalog_dir`` and its
    configuration is locked (see the module docstring). Unlike :func:`query` it
    does not check statements, so do not run SQL from untrusted sources on it.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root (it may not exist yet: the views are then empty).
    tables : list of str, optional
        Only define these tables' views (default: all).

    Notes
    -----
    The views see the files present when the connection was made; call
    :func:`refresh` on a long-lived connection to see newer ones. Prefer
    :func:`query`, which also retries when compaction removes a listed file.
    """
    return _connect(catalog_dir, tables)[0]


def refresh(con: duckdb.DuckDBPyConnection, catalog_dir: str | os.PathLike, *,
            tables: Sequence[str] | None = None) -> None:
    """Point the views of ``con`` at the files present now."""
    tables = list(sch.TABLES) if tables is None else list(tables)
    _define_sources(con, catalog_dir, tables)


def referenced_tables(sql: str) -> list[str]:
    """The catalog tables an SQL text mentions (by table, view or source name)."""
    return referenced(sql)[0]


def referenced(sql: str) -> tuple[list[str], list[str]]:
    """The catalog tables an SQL text mentions, and the view names it mentions."""
    tables, names = [], []
    for table in sch.TABLES:
        hits = set(re.findall(rf"\b{table}(_all|_source)?\b", sql))
        if hits:
            tables.append(table)
            names += [table + suffix for suffix in hits if suffix != "_source"]
    for name, needs in views.DERIVED.items():
        if re.search(rf"\b{name}\b", sql):
            tables += [t for t in needs if t not in tables]
            names.append(name)
    tables = [t for t in sch.TABLES if t in set(tables)]
    return tables, names


#: DuckDB errors about the SQL itself (or what it may do): re-reading files cannot help.
_SQL_ERRORS = tuple(getattr(duckdb, n) for n in (
    "ParserException", "BinderException", "CatalogException", "SyntaxException", "NotImplementedException",
    "ConversionException", "OutOfRangeException", "TypeMismatchException", "PermissionException")
    if hasattr(duckdb, n))
_fully_read: set[tuple[str, int, int]] = set()


def _recoverable(exc: Exception, used: dict[str, list[str]]) -> bool:
    """After a failed query: True when a re-listing may help (a file vanished or is bad).

    A file named in the message that is gone (compacted away) or fails a full
    read is the cause. DuckDB does not always name the file (a scrambled data
    page); then every file not yet fully read in this process is read once.
    """
    if isinstance(exc, _SQL_ERRORS):
        return False
    message = str(exc)
    files = [f for fs in used.values() for f in fs]
    named = [f for f in files if f in message]
    if any(not os.path.exists(path) for path in named or files):
        return True  # compacted away since listing
    for path in named or files:
        key = _key(path)
        if key is None:
            return True
        if key in _fully_read:
            continue
        try:
            problem = file_problem(path, full=True)
        except FileNotFoundError:
            return True
        if problem is not None:
            _mark_bad(path, problem)
            return True
        with _cache_lock:
            _fully_read.add(key)
    return False


def query(catalog_dir: str | os.PathLike, sql: str, params: Sequence | dict | None = None) -> pa.Table:
    """Run ``sql`` over the catalog views and return the result as an Arrow table.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    sql : str
        One ``SELECT`` statement; may use the views ``<table>`` and ``<table>_all``.
        It can read only the catalog's files: anything that would write, attach,
        load or reconfigure is refused.
    params : sequence or dict, optional
        Values for ``?`` (or ``$name``) placeholders.

    Raises
    ------
    QueryError
        The query is invalid or not a single ``SELECT`` (a :class:`CatalogError`
        and a ``ValueError``).
    CatalogError
        The query kept failing on files (after re-listing).
    """
    tables, names = referenced(sql)
    if not tables:  # nothing recognisable (e.g. a quoted name): define everything
        tables, names = None, None
    last: Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        used: dict[str, list[str]] = {}
        con = None
        try:
            # views bind (and read footers) when created, so this is inside the retry too
            con, _ = _connect(catalog_dir, tables, used, names)
            _check_read_only(con, sql)
            rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
            if rel is None:
                return pa.table({})
            return rel.to_arrow_table()
        except duckdb.Error as exc:
            last = exc
            if isinstance(exc, _SQL_ERRORS):
                hint = (" (catalog queries read only the catalog's own files)"
                        if isinstance(exc, getattr(duckdb, "PermissionException", ())) else "")
                raise QueryError(f"catalog query failed: {exc}{hint}\nSQL: {sql}") from exc
            if not _recoverable(exc, used):
                raise CatalogError(f"catalog query failed: {exc}\nSQL: {sql}") from exc
            log.debug("query attempt %d hit a changed or bad file (%s); re-listing", attempt + 1, exc)
            time.sleep(random.uniform(0, min(0.01 * 2 ** attempt, 0.2)))
        finally:
            if con is not None:
                con.close()
    raise CatalogError(f"catalog query kept failing after {MAX_ATTEMPTS} attempts: {last}\nSQL: {sql}")


def _where(table: str, filters: dict) -> tuple[str, list]:
    names = {c.name for c in sch.columns(table)}
    clauses, params = [], []
    for column, value in filters.items():
        if column not in names:
            raise CatalogError(f"catalog table {table!r} has no column {column!r}")
        if value is None:
            clauses.append(f'"{column}" IS NULL')
        else:
            clauses.append(f'"{column}" = ?')
            params.append(os.fspath(value) if isinstance(value, os.PathLike) else value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def latest(catalog_dir: str | os.PathLike, table: str, **filters) -> list[dict]:
    """The latest row of each key of ``table`` matching ``column=value`` filters.

    Filters on key columns (and ``obs_date``) are applied before picking the
    latest row, so DuckDB can skip files and row groups; other filters apply to
    the latest rows (``state="failed"`` means "currently failed").

    Examples
    --------
    >>> latest(cat, "ms_index", group_id="2025-01-01T00:00:00")   # [] or [row]
    >>> latest(cat, "groups", state="incomplete")

    Returns
    -------
    list of dict
        Rows ordered by key; timestamps are UTC ``datetime``.
    """
    store.table_dir(catalog_dir, table)  # validates the name
    keys = sch.KEYS[table]
    early = {k: v for k, v in filters.items() if k in keys or k == "obs_date"}
    late = {k: v for k, v in filters.items() if k not in early}
    inner_where, inner_params = _where(table, early)
    outer_where, outer_params = _where(table, late)
    key_list = ", ".join(f'"{k}"' for k in keys)
    sql = (f"SELECT * FROM (SELECT * FROM {table}_source(){inner_where} "
           f"QUALIFY row_number() OVER (PARTITION BY {key_list} ORDER BY recorded_at DESC, event_id DESC) = 1)"
           f"{outer_where} ORDER BY {key_list}")
    return query(catalog_dir, sql, inner_params + outer_params).to_pylist()


def history(catalog_dir: str | os.PathLike, table: str, **filters) -> list[dict]:
    """Every row of ``table`` matching the filters, oldest first (the provenance)."""
    store.table_dir(catalog_dir, table)
    where, params = _where(table, filters)
    return query(catalog_dir, f"SELECT * FROM {table}_all{where} ORDER BY recorded_at, event_id", params).to_pylist()
