"""Report the health of the catalog files without stopping anything.

Queries already skip unreadable files (with a warning); :func:`check` says which
they are, so an operator can restore or quarantine them. Quarantine moves a bad
file to ``<catalog_dir>/_quarantine/<table>/<partition>/`` (never deletes it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from catalog import query as q
from catalog import schema as sch
from catalog import store


@dataclass
class CheckReport:
    """What :func:`check` found."""

    files: dict[str, int] = field(default_factory=dict)
    """Readable data files per table."""
    rows: dict[str, int] = field(default_factory=dict)
    """Rows in readable files per table (duplicates between files included)."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(path, error) of each unreadable file."""
    stale_temps: list[str] = field(default_factory=list)
    """Temp files older than the threshold (killed writers); compaction removes them."""
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    """(from, to) of files moved aside."""

    @property
    def ok(self) -> bool:
        return not self.unreadable


def check(catalog_dir: str | os.PathLike, *, full: bool = True, quarantine: bool = False,
          stale_temp_s: float = 3600.0) -> CheckReport:
    """Try every file of every table.

    Parameters
    ----------
    full : bool
        Read every row of every file (default); False checks footers only.
    quarantine : bool
        Move unreadable files to ``<catalog_dir>/_quarantine/``.
    stale_temp_s : float
        Temp files older than this (s) are reported.
    """
    root = Path(catalog_dir)
    report = CheckReport()
    now = time.time()
    for table in sch.TABLES:
        n_files = n_rows = 0
        for path in q.list_files(root, table):
            try:
                problem = q.file_problem(path, full=full)
            except FileNotFoundError:
                continue  # compacted away meanwhile
            if problem is not None:
                report.unreadable.append((path, problem))
                if quarantine:
                    report.quarantined.append((path, str(_quarantine(root, Path(path)))))
                continue
            n_files += 1
            try:
                n_rows += pq.read_metadata(path).num_rows
            except FileNotFoundError:
                pass
        report.files[table] = n_files
        report.rows[table] = n_rows
        tdir = store.table_dir(root, table)
        if tdir.exists():
            for part in tdir.iterdir():
                if not part.is_dir():
                    continue
                for entry in os.scandir(part):
                    if entry.name.startswith(store.TEMP_PREFIX):
                        try:
                            if now - entry.stat().st_mtime > stale_temp_s:
                                report.stale_temps.append(entry.path)
                        except FileNotFoundError:
                            pass
    return report


def _quarantine(root: Path, path: Path) -> Path:
    rel = path.resolve().relative_to(root.resolve())
    target = root / "_quarantine" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target
