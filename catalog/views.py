"""The DuckDB views of the catalog, and the text of ``catalog/views.sql``.

``views.sql`` has two parts:

* *sources*: one table macro per table, ``<table>_source()``, reading the table's
  Parquet files by a glob relative to the catalog root (for the DuckDB command
  line started in the catalog root);
* *views* (after the ``-- @views`` line): ``<table>_all`` (every row, each
  ``event_id`` once) and ``<table>`` (latest row per key), defined over the
  sources.

:func:`catalog.query.connect` defines the sources itself, from an explicit list of
the files that passed validation (so unreadable files are skipped), then runs the
views part of the same file. Views bind their macros at query time, so redefining
a source (:func:`catalog.query.refresh`) updates every view.

``views.sql`` is generated from :mod:`catalog.schema` (``python -m catalog.views``);
a test checks the committed file is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from catalog import schema as sch

VIEWS_SQL = Path(__file__).with_name("views.sql")
VIEWS_MARKER = "-- @views"
READ_OPTIONS = "hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'}"

_HEADER = """\
-- DSA-110 contimg product catalog: DuckDB views over the append-only Parquet tables.
-- Generated from catalog/schema.py by `python -m catalog.views` (do not edit by hand).
--
-- DuckDB command line: start it in the catalog root (which keeps a copy of this file):
--     cd <catalog_dir> && duckdb -init views.sql
-- Python: catalog.query.connect(catalog_dir) (skips unreadable files with a warning).
--
-- <table>_all   every row ever appended (the history), each event_id once
-- <table>       the latest row per key (ORDER BY recorded_at DESC, event_id DESC)
--
-- Keys: {keys}
"""


def sql_string(text: str) -> str:
    """``text`` as a single-quoted SQL literal."""
    return "'" + text.replace("'", "''") + "'"


def source_macro(table: str, files: list[str] | None = None, *, union_by_name: bool = True) -> str:
    """``CREATE OR REPLACE MACRO <table>_source()`` over a glob or an explicit file list.

    ``union_by_name=False`` is only right when every file has the same schema.
    """
    if files is None:
        target = sql_string(f"{table}/*/*.parquet")
    else:
        target = "[" + ", ".join(sql_string(f) for f in files) + "]"
    options = READ_OPTIONS if union_by_name else READ_OPTIONS.replace("union_by_name = true", "union_by_name = false")
    return (f"CREATE OR REPLACE MACRO {table}_source() AS TABLE\n"
            f"    SELECT * FROM read_parquet({target}, {options});\n")


def view_statements(table: str) -> str:
    """The two views of ``table``."""
    keys = ", ".join(sch.KEYS[table])
    return (
        f"CREATE OR REPLACE VIEW {table}_all AS\n"
        f"    SELECT * FROM {table}_source()\n"
        f"    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;\n"
        f"CREATE OR REPLACE VIEW {table} AS\n"
        f"    SELECT * FROM {table}_source()\n"
        f"    QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY recorded_at DESC, event_id DESC) = 1;\n"
    )


def render() -> str:
    """The full text of ``views.sql``."""
    keys = " | ".join(f"{t}: {', '.join(k)}" for t, k in sch.KEYS.items())
    parts = [_HEADER.format(keys=keys), "\n-- Sources (globs relative to the catalog root)\n"]
    parts += [source_macro(t) for t in sch.TABLES]
    parts += [f"\n{VIEWS_MARKER}\n"]
    parts += [view_statements(t) for t in sch.TABLES]
    return "".join(parts)


def views_part(text: str | None = None) -> str:
    """The views section of ``views.sql`` (what follows the ``-- @views`` line)."""
    text = VIEWS_SQL.read_text() if text is None else text
    _, sep, views = text.partition(VIEWS_MARKER)
    if not sep:
        raise ValueError(f"{VIEWS_SQL} has no {VIEWS_MARKER!r} line")
    return views


def main() -> int:
    VIEWS_SQL.write_text(render())
    print(f"wrote {VIEWS_SQL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
