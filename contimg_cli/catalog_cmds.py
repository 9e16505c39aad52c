"""``contimg query``, ``contimg status`` and ``contimg catalog compact|check``.

Examples::

    contimg query "SELECT state, count(*) FROM groups GROUP BY state"
    contimg query "SELECT * FROM images" --format csv --output images.csv
    contimg status
    contimg catalog compact
    contimg catalog check --quarantine

The catalog directory is the ``catalog_dir`` setting (``CONTIMG_CATALOG_DIR``)
unless ``--catalog-dir`` is given. ``contimg query`` only reads: its SQL is one
``SELECT`` over the catalog's files (``COPY ... TO``, ``ATTACH``, ``SET``... are
refused); ``--output`` writes the result. In CSV (and the table), list, struct and
map columns (e.g. ``cal_registry.spwmap``) are JSON text (``[0,0,1]``); JSON and
Parquet keep them as lists and objects. See docs/catalog.md for the tables and views.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FORMATS = ("table", "csv", "json", "parquet")
MAX_CELL = 48


def _add_catalog_dir(p) -> None:
    p.add_argument("--catalog-dir", default=None, help="catalog root (default: the catalog_dir setting)")


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="run a read-only SQL query over the product catalog views")
    p.add_argument("sql", help="one SELECT statement over the views (groups, ms_index, images, ..., <table>_all)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout (required for parquet)")
    p.add_argument("--max-rows", type=int, default=200, help="rows shown by --format table (default 200)")
    _add_catalog_dir(p)
    p.set_defaults(handler=run_query)

    p = subparsers.add_parser("status", help="one-screen summary: groups by state, failures, waiting, images")
    p.add_argument("--limit", type=int, default=10, help="rows per list (default 10)")
    _add_catalog_dir(p)
    p.set_defaults(handler=run_status)

    p = subparsers.add_parser("catalog", help="catalog maintenance: compact, check")
    sub = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    c = sub.add_parser("compact", help="merge each partition's small files into one (safe while running)")
    c.add_argument("--table", action="append", default=None, help="only this table (repeatable)")
    c.add_argument("--min-files", type=int, default=2, help="leave partitions with fewer files (default 2)")
    _add_catalog_dir(c)
    c.set_defaults(handler=run_compact)
    c = sub.add_parser("check", help="report unreadable files (exit 1 if any)")
    c.add_argument("--quick", action="store_true", help="check footers only, not every row")
    c.add_argument("--quarantine", action="store_true", help="move unreadable files to <catalog>/_quarantine/")
    _add_catalog_dir(c)
    c.set_defaults(handler=run_check)


def catalog_dir(args) -> Path:
    if args.catalog_dir:
        return Path(args.catalog_dir)
    from contimg.config import load_settings

    return Path(load_settings().catalog_dir)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif hasattr(value, "isoformat"):
        text = value.isoformat().replace("+00:00", "Z")
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "~"


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned text: a header, a rule, one line per row."""
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _json_default(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _plain(value, type_):
    """A value of Arrow type ``type_`` (from ``to_pylist``) as JSON-ready Python: maps become objects."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(type_):
        return {k if isinstance(k, str) else _json_default(k): _plain(v, type_.item_type) for k, v in value}
    if pa.types.is_struct(type_):
        return {type_.field(i).name: _plain(value[type_.field(i).name], type_.field(i).type)
                for i in range(type_.num_fields)}
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_) \
            or getattr(pa.types, "is_list_view", lambda t: False)(type_) \
            or getattr(pa.types, "is_large_list_view", lambda t: False)(type_):
        return [_plain(v, type_.value_type) for v in value]
    return value


def _is_plain_text(type_) -> bool:
    """Whether a CSV writer can write the type as it is (lists, structs, maps, unions, intervals cannot)."""
    import pyarrow as pa

    return not (pa.types.is_nested(type_) or pa.types.is_interval(type_))


def json_text_columns(table):
    """``table`` with each list, struct, map (union, interval) column as JSON text, one value per cell.

    For ``--format csv`` (and the table's cells): a CSV cell cannot hold a list, so
    ``[1, 2]`` is written as the JSON text ``[1,2]``, a struct or a map as an object; a
    null stays an empty cell. ``--format json`` and ``parquet`` keep the types.
    """
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if _is_plain_text(field.type):
            continue
        texts = [None if v is None else json.dumps(_plain(v, field.type), default=_json_default,
                                                    separators=(",", ":"))
                 for v in table.column(i).to_pylist()]
        table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(texts, pa.string()))
    return table


def json_rows(table) -> list[dict]:
    """The rows as JSON-ready dicts (lists and structs as they are, maps as objects)."""
    types = {f.name: f.type for f in table.schema}
    return [{k: _plain(v, types[k]) for k, v in row.items()} for row in table.to_pylist()]


def run_query(args) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from catalog.query import query

    if args.format == "parquet" and not args.output:
        raise ValueError("--format parquet needs --output FILE")
    root = catalog_dir(args)
    if args.output and Path(args.output).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"--output {args.output} is inside the catalog directory {root}; write results elsewhere")
    # Read-only: a statement other than one SELECT is refused (catalog.query.QueryError,
    # exit status 2); results are written here, from Python, never by the SQL.
    table = query(root, args.sql)
    if args.format == "parquet":
        pq.write_table(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}", file=sys.stderr)
        return 0
    if args.format == "csv":
        import io

        sink = io.BytesIO()
        pacsv.write_csv(json_text_columns(table), sink)  # list/struct/map cells as JSON text
        text = sink.getvalue().decode()
    elif args.format == "json":
        text = json.dumps(json_rows(table), default=_json_default, indent=1) + "\n"
    else:
        rows = json_text_columns(table.slice(0, args.max_rows)).to_pylist()
        text = format_table(rows, table.column_names) + "\n"
        more = table.num_rows - len(rows)
        text += f"({table.num_rows} rows" + (f", {more} not shown; use --max-rows or --format csv)" if more else ")") + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {table.num_rows} rows to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _counts(counts: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in counts.items()) or "none"


def _reason_lines(rows: list[dict]) -> str:
    """One line per group with its whole reason (a table cell would cut it)."""
    return "\n".join(f"  {_cell(r['recorded_at'])}  {r['group_id']}  {r['reason'] or ''}".rstrip() for r in rows)


def run_status(args) -> int:
    from catalog.status import summary

    root = catalog_dir(args)
    s = summary(root, limit=args.limit)
    out = [f"catalog {root}",
           f"groups by state:  {_counts(s['groups_by_state'])}",
           f"MS by stage:      {_counts(s['ms_by_stage'])}"]
    sections = [
        ("failures (newest first)", s["failures"], ["recorded_at", "group_id", "source", "status", "error"]),
        ("waiting", s["waiting"], ["recorded_at", "group_id", "source", "status", "detail"]),
        # cols None: the reason in full; "waiting ended" is terminal, so say how to undo it
        ("uncalibrated (waiting ended; a registration whose set covers it, or `contimg run target GROUP "
         "--force`, wakes it)", s["uncalibrated"], None),
        ("latest images", s["latest_images"], ["recorded_at", "group_id", "noise_jy", "dynamic_range", "path"]),
        ("stage timing", s["stage_timing"], ["stage", "runs", "failed", "median_s", "max_s", "peak_mb"]),
    ]
    for title, rows, cols in sections:
        out.append("")
        out.append(f"{title}:")
        if not rows:
            out.append("  none")
        else:
            out.append(_reason_lines(rows) if cols is None else format_table(rows, cols))
    if s["unreadable_files"]:
        out.append("")
        out.append(f"UNREADABLE catalog files: {len(s['unreadable_files'])} (skipped; run `contimg catalog check`)")
    print("\n".join(out))
    return 0


def run_compact(args) -> int:
    from catalog.compact import compact

    r = compact(catalog_dir(args), tables=args.table, min_files=args.min_files)
    print(f"compacted {r.partitions} partitions: {r.files_in} files -> {r.partitions} "
          f"({r.rows_out} rows, {r.duplicates_dropped} duplicates dropped, "
          f"{r.temps_removed} stale temp files removed) in {r.seconds:.2f} s")
    for where, why in r.skipped:
        print(f"  skipped {where}: {why}")
    return 0


def run_check(args) -> int:
    from catalog.check import check

    r = check(catalog_dir(args), full=not args.quick, quarantine=args.quarantine)
    for table, n in r.files.items():
        print(f"{table:14s} {n:6d} files {r.rows[table]:10d} rows")
    for path, why in r.unreadable:
        print(f"UNREADABLE {path}: {why}")
    for src, dst in r.quarantined:
        print(f"quarantined {src} -> {dst}")
    for path in r.stale_temps:
        print(f"stale temp file (killed writer; compaction removes it): {path}")
    if not r.ok:
        from contimg_cli.main import CommandFailed

        raise CommandFailed(f"{len(r.unreadable)} unreadable file(s) in {catalog_dir(args)}"
                            + ("" if args.quarantine else "; --quarantine moves them aside"))
    print("ok")
    return 0
