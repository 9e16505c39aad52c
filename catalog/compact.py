"""Merge the small files of each partition into one, safely under concurrent use.

For each partition (table, observation date) with at least ``min_files`` data
files, compaction

1. lists the files (a snapshot: files committed later are left for next time),
2. reads them all (an unreadable one is left in place and reported; a file that
   vanished means another compactor is at work, so the partition is skipped),
3. writes their rows, each ``event_id`` once, into one new file (temp name,
   fsync, rename: the same commit as :func:`catalog.store.append`),
4. then removes exactly the files it merged.

Steps 3 and 4 happen under the table's exclusive listing lock
(:func:`catalog.store.listing_lock`), so a reader lists the partition either
before or after the swap, never half-way. If compaction is killed between 3
and 4, rows exist twice; the views de-duplicate by ``event_id``. A reader that
listed a file just removed re-lists (:func:`catalog.query.query`). A row is only removed from a file after a durable
file holds it, so no committed row is ever lost, whatever is killed when.

Compaction also removes temp files (``.tmp-*.partial``) older than
``stale_temp_s``: leftovers of killed writers.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import schema as sch
from catalog import store

log = logging.getLogger(__name__)


@dataclass
class CompactionReport:
    """What one :func:`compact` call did."""

    partitions: int = 0
    """Partitions merged."""
    files_in: int = 0
    files_removed: int = 0
    rows_out: int = 0
    duplicates_dropped: int = 0
    temps_removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(partition or file, reason) left alone."""
    seconds: float = 0.0


def conform(table: pa.Table, name: str) -> pa.Table:
    """``table`` with the current schema of catalog table ``name`` (added columns as nulls).

    Columns the schema does not know (none, unless a file is newer than this code)
    are kept after the known ones.
    """
    target = sch.SCHEMAS[name]
    arrays, fields = [], []
    for f in target:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    for col in table.column_names:
        if col not in target.names:
            arrays.append(table.column(col))
            fields.append(table.schema.field(col))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=target.metadata))


def _dedupe(table: pa.Table) -> pa.Table:
    seen: set[str] = set()
    keep = []
    for i, eid in enumerate(table.column("event_id").to_pylist()):
        if eid not in seen:
            seen.add(eid)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(keep)


def _remove_stale_temps(directory: Path, stale_temp_s: float, report: CompactionReport) -> None:
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(store.TEMP_PREFIX) and entry.name.endswith(store.TEMP_SUFFIX):
            try:
                if now - entry.stat().st_mtime > stale_temp_s:
                    os.unlink(entry.path)
                    report.temps_removed += 1
            except FileNotFoundError:
                pass


def compact_partition(catalog_dir, table: str, partition: Path, *, min_files: int = 2,
                      report: CompactionReport | None = None) -> CompactionReport:
    """Merge the data files of one partition directory (see module docs)."""
    report = report if report is not None else CompactionReport()
    try:
        names = sorted(n for n in os.listdir(partition) if store.is_part_name(n))
    except FileNotFoundError:
        return report
    if len(names) < min_files:
        return report
    pieces, merged = [], []
    for name in names:
        path = partition / name
        try:
            piece = pq.read_table(path)
        except FileNotFoundError:
            report.skipped.append((str(partition), f"{name} vanished: another compactor is at work"))
            return report
        except Exception as exc:  # noqa: BLE001 - leave the bad file for `check`
            report.skipped.append((str(path), f"unreadable, left in place: {type(exc).__name__}: {exc}"))
            continue
        pieces.append(conform(piece, table))
        merged.append(path)
    if len(merged) < max(min_files, 2):
        return report
    combined = pa.concat_tables(pieces, promote_options="default")
    deduped = _dedupe(combined)
    deduped = deduped.sort_by([("recorded_at", "ascending"), ("event_id", "ascending")])
    with store.listing_lock(catalog_dir, table, exclusive=True):  # no reader lists half a swap
        store.write_atomic(deduped, partition, store.part_name())
        for path in merged:
            try:
                os.unlink(path)
                report.files_removed += 1
            except FileNotFoundError:
                pass
    store._fsync_dir(partition)
    report.partitions += 1
    report.files_in += len(merged)
    report.rows_out += deduped.num_rows
    report.duplicates_dropped += combined.num_rows - deduped.num_rows
    return report


def compact(catalog_dir: str | os.PathLike, *, tables: list[str] | None = None, min_files: int = 2,
            obs_dates: list[str] | None = None, stale_temp_s: float = 3600.0) -> CompactionReport:
    """Compact every partition of ``tables`` (default all) holding ``min_files`` or more files.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    tables : list of str, optional
        Tables to compact (default: all).
    min_files : int
        Leave partitions with fewer data files alone.
    obs_dates : list of str, optional
        Only these observation dates (``YYYY-MM-DD``).
    stale_temp_s : float
        Remove temp files older than this (s): leftovers of killed writers.
    """
    started = time.perf_counter()
    report = CompactionReport()
    for table in tables or list(sch.TABLES):
        root = store.table_dir(catalog_dir, table)
        try:
            parts = sorted(p for p in root.iterdir()
                           if p.name.startswith(store.PARTITION_PREFIX) and p.name != store.SCHEMA_PARTITION)
        except FileNotFoundError:
            continue
        for partition in parts:
            if obs_dates is not None and partition.name[len(store.PARTITION_PREFIX):] not in obs_dates:
                continue
            _remove_stale_temps(partition, stale_temp_s, report)
            compact_partition(catalog_dir, table, partition, min_files=min_files, report=report)
    report.seconds = time.perf_counter() - started
    if report.partitions:
        log.info("compacted %d partitions: %d files -> %d rows (%d duplicates dropped) in %.2f s",
                 report.partitions, report.files_in, report.rows_out, report.duplicates_dropped, report.seconds)
    for where, why in report.skipped:
        log.warning("compaction skipped %s: %s", where, why)
    return report
