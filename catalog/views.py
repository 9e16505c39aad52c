"""The DuckDB views of the catalog, and the text of ``catalog/views.sql``.

``views.sql`` has two parts:

* *sources*: one table macro per table, ``<table>_source()``, reading the table's
  Parquet files by a glob relative to the catalog root (for the DuckDB command
  line started in the catalog root);
* *views* (after the ``-- @views`` line): ``<table>_all`` (every row, each
  ``event_id`` once) and ``<table>`` (latest row per key), defined over the
  sources; then the *derived* views and table macros of :data:`DERIVED`, defined
  over the tables' views (``variability``: per-source variability metrics of the
  ``photometry`` table, :func:`variability_sql`).

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


#: Default thresholds of the ``variability`` view's ``is_candidate``; equal to the ``variability_*``
#: defaults of ``contimg.config.Settings`` (a test checks), where they are explained.
VARIABILITY_DEFAULTS = {"eta_min": 5.0, "v_min": 0.1, "min_epochs": 10, "min_snr": 5.0}


def variability_sql() -> str:
    """The ``variability_at`` table macro and the ``variability`` view (its defaults).

    Per ``source_name``, over the latest ``photometry`` row of each (image, source) of group
    images with no flags and a positive rms: ``n_epochs``, ``first_mjd``, ``last_mjd``,
    ``mean_jy``, ``wmean_jy``, ``v``, ``eta``, ``max_dev_sigma``, ``max_snr``, the last reference
    position and ``is_candidate`` (the definitions are in :mod:`contimg.variability` and
    docs/catalog.md). ``variability_at(eta_min := ..., v_min := ..., min_epochs := ..., min_snr := ...,
    start_mjd := ..., end_mjd := ...)`` takes other thresholds and only the epochs in
    ``[start_mjd, end_mjd]`` (MJD, UTC; default: all).
    """
    d = VARIABILITY_DEFAULTS
    return f"""CREATE OR REPLACE MACRO variability_at(eta_min := {d['eta_min']!r}, v_min := {d['v_min']!r}, \
min_epochs := {d['min_epochs']!r}, min_snr := {d['min_snr']!r}, start_mjd := 0.0, end_mjd := 1000000.0) AS TABLE
    WITH epochs AS (
        SELECT source_name, ra_deg, dec_deg, mid_mjd, peak_jy AS f, rms_jy AS e, snr, 1.0 / (rms_jy * rms_jy) AS w
        FROM photometry
        WHERE image_kind = 'group' AND coalesce(len(flags), 0) = 0
          AND isfinite(peak_jy) AND isfinite(rms_jy) AND rms_jy > 0
          AND mid_mjd >= start_mjd AND mid_mjd <= end_mjd
    ), sums AS (
        SELECT source_name, count(*) AS n_epochs, min(mid_mjd) AS first_mjd, max(mid_mjd) AS last_mjd,
               arg_max(ra_deg, mid_mjd) AS ra_deg, arg_max(dec_deg, mid_mjd) AS dec_deg,
               avg(f) AS mean_jy, sum(w * f) / sum(w) AS wmean_jy, stddev_samp(f) AS std_jy,
               max(coalesce(snr, f / e)) AS max_snr
        FROM epochs GROUP BY source_name
    ), metrics AS (
        SELECT s.source_name, any_value(s.ra_deg) AS ra_deg, any_value(s.dec_deg) AS dec_deg,
               any_value(s.n_epochs) AS n_epochs, any_value(s.first_mjd) AS first_mjd,
               any_value(s.last_mjd) AS last_mjd, any_value(s.mean_jy) AS mean_jy,
               any_value(s.wmean_jy) AS wmean_jy,
               any_value(s.std_jy) / nullif(any_value(s.mean_jy), 0) AS v,
               CASE WHEN any_value(s.n_epochs) > 1
                    THEN sum(p.w * (p.f - s.wmean_jy) * (p.f - s.wmean_jy)) / (any_value(s.n_epochs) - 1) END AS eta,
               max(abs(p.f - s.wmean_jy) / p.e) AS max_dev_sigma, any_value(s.max_snr) AS max_snr
        FROM sums s JOIN epochs p USING (source_name)
        GROUP BY s.source_name
    )
    SELECT *, coalesce(n_epochs >= min_epochs AND eta >= eta_min AND v >= v_min AND max_snr >= min_snr, false)
              AS is_candidate
    FROM metrics;
CREATE OR REPLACE VIEW variability AS
    SELECT * FROM variability_at();
"""


#: Derived views and table macros (after the tables' views, in this order): name -> the tables
#: and derived names they read.
DERIVED: dict[str, tuple[str, ...]] = {"variability_at": ("photometry",),
                                       "variability": ("photometry", "variability_at")}


def render() -> str:
    """The full text of ``views.sql``."""
    keys = " | ".join(f"{t}: {', '.join(k)}" for t, k in sch.KEYS.items())
    parts = [_HEADER.format(keys=keys), "\n-- Sources (globs relative to the catalog root)\n"]
    parts += [source_macro(t) for t in sch.TABLES]
    parts += [f"\n{VIEWS_MARKER}\n"]
    parts += [view_statements(t) for t in sch.TABLES]
    parts += ["\n-- Derived views (over the views above)\n", variability_sql()]
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
