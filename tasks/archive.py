"""The archive as the pipeline runs it: which products of a finished group go where, recorded.

A group is *finished* when nothing later will read its products from the fast
disk: its latest ``ms_index`` stage is ``imaged``, or it is a calibrator group
whose set was registered ``rejected`` (stage ``failed``; an active set's group
is imaged with its own set, then it is ``imaged``). :func:`archive_group`, run
under the group's lease, copies each product into ``archive_dir`` (same layout
as ``products_dir``; :mod:`contimg.naming`) with :func:`contimg.archive.archive_copy`,
which verifies the copy by SHA-256 (the MS with :func:`contimg.archive.archive_ms`: lean,
without the columns :func:`restore_group` recomputes, verified file by file and
column by column against the source), and then

* records each verified copy in ``archived`` (source, archive path, checksum),
  the group's checksums in ``<archive>/manifests/<date>/<stem>.sha256``, the MS
  as ``archived`` in ``ms_index`` (its path now the archived copy) and the
  ``archived_path`` of each ``images`` row, and only then
* deletes the sources of the products that move: the MS, images, QA and log
  directories. Caltables are copied and kept: the registry's paths are what
  ``applycal`` opens, for any later group. Raw subband files are copied and kept
  until ``archive_raw_retention_days`` after the observation; then they are
  deleted only if the archived MS and the archived raw copies verify again
  (:func:`raw_retention`).

If any copy fails verification, nothing of the group is deleted and the run
fails (the copy's ``archived`` row says ``failed`` and why). Reruns do only what
is left: a product whose verified copy is recorded is not copied again, and a
step that is already recorded writes no row.

:func:`restore_group` (``contimg restore``) rebuilds an archived group's
calibrated MS from its lean copy and the caltables recorded for the group.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import compact as catalog_compact
from catalog import query as catalog_query
from catalog import store
from contimg import archive as arc
from contimg import naming
from contimg.config import Settings
from contimg.errors import ContimgError, InvalidInputError
from tasks import records
from tasks.retry import retry_transient

log = logging.getLogger(__name__)

IMAGED = "imaged"
ARCHIVED = "archived"
#: Columns ``store.append`` fills: never copied from an earlier row into a new one.
_AUTO = ("event_id", "recorded_at", "schema_version", "code_version")
#: Outcomes of :func:`archive_group`.
NOT_FINISHED = "not_finished"
FAILED = "failed"


@dataclass(frozen=True)
class Product:
    """One thing to archive: what it is, where it is, where its copy goes, and whether it stays."""

    kind: str
    source: Path
    dest: Path
    keep_source: bool


@dataclass
class GroupArchive:
    """What :func:`archive_group` did to one group."""

    group_id: str
    state: str
    copied: int = 0
    reused: int = 0
    bytes_copied: int = 0
    removed: int = 0
    raw_removed: int = 0
    raw_note: str = ""
    missing: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the command line and the summary artifact."""
        if self.state == NOT_FINISHED:
            return "not finished: left alone"
        parts = []
        if self.copied or self.reused:
            parts.append(f"copied {self.copied} ({human_bytes(self.bytes_copied)}), {self.reused} already there")
        if self.removed:
            parts.append(f"removed {self.removed} from products")
        if self.raw_note:
            parts.append(self.raw_note)
        if self.missing:
            parts.append(f"{len(self.missing)} recorded product(s) missing: {', '.join(self.missing[:3])}")
        return "; ".join(parts) or "nothing to do"


def human_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``2.6 MB``, ``3.20 GB``, ``1.50 TB`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit in ("TB", "GB") else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# --- which groups, which products -------------------------------------------------


def is_finished(ms_row: dict | None, *, rejected_set: bool) -> bool:
    """Is a group done with its products on the fast disk? (see module docs)"""
    if not ms_row:
        return False
    if ms_row["stage"] == IMAGED:
        return True
    return ms_row["stage"] == "failed" and bool(ms_row.get("is_calibrator")) and rejected_set


def _rejected_set_sources(settings: Settings, **filters) -> set[str]:
    rows = catalog_query.latest(settings.catalog_dir, "cal_registry", **filters)
    return {r["source_ms"] for r in rows if r.get("source_ms") and r["status"] == "rejected"}


def candidate_groups(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Groups with archive work left: finished ones not yet archived, archived ones whose raw files are due.

    Cheap (three catalog reads, no file read): whether a group really has work
    is decided by :func:`archive_group` under its lease. Archived groups whose raw
    files are not due for deletion yet are not candidates, so a night's run does
    not visit the week of groups waiting for their retention.
    """
    now = now or datetime.now(timezone.utc)
    rejected = _rejected_set_sources(settings)
    out = set()
    for row in catalog_query.latest(settings.catalog_dir, "ms_index"):
        if is_finished(row, rejected_set=row["path"] in rejected):
            out.add(row["group_id"])
    pending = catalog_query.query(
        settings.catalog_dir,
        "SELECT DISTINCT group_id FROM archived WHERE kind = 'raw' AND status = 'verified'").to_pylist()
    for r in pending:
        due = _raw_due_at(settings, r["group_id"])
        if due is not None and now >= due:
            out.add(r["group_id"])
    return sorted(out)


def group_products(settings: Settings, group_id: str, ms_row: dict, archived: dict | None = None) -> list[Product]:
    """Every product of a group and where its archived copy goes (paths from :mod:`contimg.naming`).

    ``archived`` (latest ``archived`` rows by source path) gives the MS's place
    in the products once ``ms_index`` points at its archived copy.
    """
    date, stem = naming.group_date(group_id), naming.group_stem(group_id)
    products_dir, archive_dir = Path(settings.products_dir), Path(settings.archive_dir)

    def product(kind: str, path, *, keep: bool = False) -> Product:
        path = Path(path)
        return Product(kind, path, naming.archive_product_path(archive_dir, products_dir, path, group_id), keep)

    out: list[Product] = []
    ms = Path(ms_row["path"])
    if not _under(ms, archive_dir):
        out.append(product("ms", ms))
    else:  # recorded archived: the source may still need deleting (a run killed before it could)
        out += [Product("ms", Path(r["source_path"]), ms, False) for r in (archived or {}).values()
                if r["kind"] == "ms" and r["archive_path"] == str(ms)]
    for row in sorted(catalog_query.latest(settings.catalog_dir, "images", obs_date=date, group_id=group_id),
                      key=lambda r: r["path"]):
        out.append(product(row["type"], row["path"]))
    for directory, kind in ((naming.qa_dir(products_dir, group_id), "qa"),
                            (naming.casa_log_path(products_dir, group_id, "x").parent, "logs")):
        if directory.is_dir():
            out.append(product(kind, directory))
    caltables = naming.caltable_prefix(products_dir, group_id).parent
    if caltables.is_dir():  # every solve of the group, active or not: copied, never moved (the registry's paths)
        for path in sorted(caltables.iterdir()):
            if path.name.startswith((f"{stem}.", f"{stem}_")) and not path.name.startswith("."):
                out.append(product("caltable", path, keep=True))
    group = records.latest_group_state(settings, group_id) or {}
    raw_dir = naming.archive_raw_dir(archive_dir, group_id)
    for name in group.get("files") or []:
        out.append(Product("raw", Path(name), raw_dir / Path(name).name, True))
    return out


def _under(path: Path, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True


# --- rows ----------------------------------------------------------------------------


def _archived_row(group_id: str, p: Product, status: str, manifest_path: Path, *, result: arc.CopyResult | None = None,
                  previous: dict | None = None, error: str | None = None) -> dict:
    row = {"source_path": str(p.source), "archive_path": str(p.dest), "kind": p.kind, "status": status,
           "group_id": group_id, "obs_date": naming.group_date(group_id), "manifest_path": str(manifest_path),
           "keep_source": p.keep_source, "host": socket.gethostname(), "error": error}
    if result is not None:
        row.update(sha256=result.digest, n_files=result.n_files, bytes=result.bytes, copied=result.copied,
                   seconds=result.seconds)
    elif previous is not None:
        row.update({k: previous.get(k) for k in ("sha256", "n_files", "bytes")})
    return row


def _is_done(p: Product, row: dict | None) -> bool:
    """Nothing left to do for this product (its copy recorded, the source gone if it moves)."""
    if row is None or row["status"] == FAILED or row["archive_path"] != str(p.dest):
        return False
    if row["status"] == "source_removed":
        return not p.source.exists()  # a product made again at the same path is archived again
    # verified: a kept source is done; a moved one still needs deleting, or its deletion recording
    # (a run killed between the two)
    return p.keep_source


def _rel(archive_dir: Path, path: Path) -> str:
    return str(Path(path).relative_to(archive_dir)) if _under(path, archive_dir) else str(path)


# --- one group ------------------------------------------------------------------------


def archive_group(settings: Settings, group_id: str, *, now: datetime | None = None, lease=None) -> GroupArchive:
    """Archive one finished group's products (see module docs); call it holding the group's lease.

    Parameters
    ----------
    settings : Settings
    group_id : str
    now : datetime, optional
        The time raw retention is measured at (UTC; default now).
    lease : contimg.lease.Lease, optional
        The group's lease: checked still held before anything is deleted
        (``LeaseLostError`` otherwise, nothing deleted).

    Returns
    -------
    GroupArchive

    Raises
    ------
    contimg.archive.ArchiveVerificationError
        A copy did not verify: nothing of the group was deleted.
    """
    now = now or datetime.now(timezone.utc)
    date = naming.group_date(group_id)
    ms_row = records.latest_ms(settings, group_id)
    out = GroupArchive(group_id, ARCHIVED)
    if ms_row is None or (ms_row["stage"] != ARCHIVED and not is_finished(
            ms_row, rejected_set=ms_row["path"] in _rejected_set_sources(settings, obs_date=date))):
        out.state = NOT_FINISHED
        return out
    archive_dir = Path(settings.archive_dir)
    manifest_path = naming.archive_manifest_path(archive_dir, group_id)
    rows = {r["source_path"]: r for r in catalog_query.latest(settings.catalog_dir, "archived", obs_date=date,
                                                              group_id=group_id)}
    products = group_products(settings, group_id, ms_row, rows)
    todo = []
    for p in products:
        row = rows.get(str(p.source))
        if _is_done(p, row):
            continue
        if not p.source.exists() and (row is None or row["status"] == FAILED):
            out.missing.append(str(p.source))  # recorded but gone, never archived: reported, nothing to do
            continue
        todo.append(p)
    raw_due = _raw_due(settings, group_id, products, rows, now)
    if not todo and not raw_due and ms_row["stage"] == ARCHIVED:
        out.raw_note = _raw_note(settings, group_id, products, rows, now)
        return out
    with records.stage_run(settings, group_id, "archive") as info:
        _copy_products(settings, group_id, todo, rows, manifest_path, out)
        if lease is not None:
            lease.ensure_held()  # another run owns the group now: we neither repoint the catalog nor delete
        _record_moves(settings, group_id, ms_row, products, rows, out)
        if lease is not None:
            lease.ensure_held()
        removed_rows = []
        for p in todo:
            if p.keep_source or rows.get(str(p.source), {}).get("status") not in ("verified", "source_removed"):
                continue
            if p.source.exists():
                arc.remove_product(p.source)
                out.removed += 1
            removed_rows.append(_archived_row(group_id, p, "source_removed", manifest_path,
                                              previous=rows.get(str(p.source))))
        store.append(settings.catalog_dir, "archived", removed_rows)
        for row in removed_rows:
            rows[row["source_path"]] = row
        if lease is not None:
            lease.ensure_held()
        out.raw_removed, out.raw_note = raw_retention(settings, group_id, products, rows, now=now)
        info["detail"] = {"copied": out.copied, "reused": out.reused, "removed": out.removed,
                          "raw_removed": out.raw_removed}
    return out


def _copy_products(settings: Settings, group_id: str, todo: list[Product], rows: dict, manifest_path: Path,
                   out: GroupArchive) -> None:
    """Copy and verify every product still to do; record each; raise after all if one failed."""
    archive_dir = Path(settings.archive_dir)
    failures, new_rows, sums = [], [], {}
    for p in todo:
        previous = rows.get(str(p.source))
        if not p.source.exists():
            continue  # moved earlier (the run was killed before recording the removal)
        try:
            result = (arc.archive_ms if p.kind == "ms" else arc.archive_copy)(p.source, p.dest)
        except arc.ArchiveVerificationError as exc:
            failures.append(str(exc))
            new_rows.append(_archived_row(group_id, p, FAILED, manifest_path, error=str(exc)))
            continue
        out.copied += result.copied
        out.reused += not result.copied
        out.bytes_copied += result.bytes if result.copied else 0
        sums[_rel(archive_dir, p.dest)] = dict(line.split("  ", 1)[::-1] for line in arc.manifest_lines(
            result.manifest, _rel(archive_dir, p.dest)))
        if not (previous and previous["status"] == "verified" and previous.get("sha256") == result.digest
                and previous["archive_path"] == str(p.dest)):
            new_rows.append(_archived_row(group_id, p, "verified", manifest_path, result=result))
    if sums:  # the checksums an operator restores with, on disk before any source is deleted
        entries = arc.read_sha256sums(manifest_path)
        for prefix, lines in sums.items():  # a replaced copy's old lines go: they would fail `sha256sum -c`
            entries = {k: v for k, v in entries.items() if k != prefix and not k.startswith(prefix + "/")}
            entries.update(lines)
        arc.write_sha256sums(manifest_path, entries)
    store.append(settings.catalog_dir, "archived", new_rows)
    for row in new_rows:
        rows[row["source_path"]] = row
    if failures:
        raise arc.ArchiveVerificationError(
            f"group {group_id}: {len(failures)} cop(ies) failed verification, nothing deleted: {failures[0]}")


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _AUTO}


def _record_moves(settings: Settings, group_id: str, ms_row: dict, products: list[Product], rows: dict,
                  out: GroupArchive) -> None:
    """Point the catalog at the archived copies (before any source is deleted); rows only where they change."""
    date = naming.group_date(group_id)
    moved = {str(p.source): p for p in products if not p.keep_source
             and rows.get(str(p.source), {}).get("status") in ("verified", "source_removed")}
    image_rows = [
        {**_strip(r), "archived_path": str(moved[r["path"]].dest)}
        for r in catalog_query.latest(settings.catalog_dir, "images", obs_date=date, group_id=group_id)
        if r["path"] in moved and r.get("archived_path") != str(moved[r["path"]].dest)]
    store.append(settings.catalog_dir, "images", image_rows)
    if ms_row["stage"] != ARCHIVED and ms_row["path"] in moved:
        store.append(settings.catalog_dir, "ms_index", [
            {**_strip(ms_row), "stage": ARCHIVED, "path": str(moved[ms_row["path"]].dest), "error": None}])


# --- raw retention ----------------------------------------------------------------------


def _raw_due_at(settings: Settings, group_id: str) -> datetime | None:
    """When the group's raw files may go (``None``: never, retention is off)."""
    if settings.archive_raw_retention_days < 0:
        return None
    observed = naming.parse_group_id(group_id).replace(tzinfo=timezone.utc)
    return observed + timedelta(days=settings.archive_raw_retention_days)


def _raw_due(settings: Settings, group_id: str, products: list[Product], rows: dict, now: datetime) -> bool:
    due = _raw_due_at(settings, group_id)
    return due is not None and now >= due and any(
        p.kind == "raw" and rows.get(str(p.source), {}).get("status") == "verified" for p in products)


def _raw_note(settings: Settings, group_id: str, products: list[Product], rows: dict, now: datetime) -> str:
    raw = [p for p in products if p.kind == "raw"]
    if not raw:
        return ""
    if all(rows.get(str(p.source), {}).get("status") == "source_removed" for p in raw):
        return "raw removed"
    due = _raw_due_at(settings, group_id)
    return "raw kept (retention off)" if due is None else f"raw kept until {due:%Y-%m-%d %H:%M}"


def raw_retention(settings: Settings, group_id: str, products: list[Product], rows: dict, *,
                  now: datetime) -> tuple[int, str]:
    """Delete a group's raw subband files if retention passed and both the MS and the raw copies verify.

    Conditions, all required: ``archive_raw_retention_days`` passed since the
    observation; the group's latest ``ms_index`` stage is ``archived`` and the
    archived MS matches the checksums recorded when it was copied (every byte
    read again); each raw file's archived copy matches its recorded SHA-256 and
    the file is still the size it was when copied. Otherwise nothing is deleted.

    Returns
    -------
    (int, str)
        Files deleted, and a note for the summary.
    """
    raw = [p for p in products if p.kind == "raw"]
    if not raw:
        return 0, ""
    if not _raw_due(settings, group_id, products, rows, now):
        return 0, _raw_note(settings, group_id, products, rows, now)
    problems = _ms_problems(settings, group_id, rows)
    for p in raw:
        row = rows.get(str(p.source))
        if row is None or row["status"] == FAILED:
            problems.append(f"{p.source}: no verified archived copy")
        elif row["status"] == "verified" and p.source.exists():
            if p.source.stat().st_size != row["bytes"]:
                problems.append(f"{p.source}: {p.source.stat().st_size} bytes, {row['bytes']} when archived")
            problems += arc.compare(p.dest, {"": arc.FileEntry(row["bytes"], row["sha256"])})
    if problems:
        note = f"raw kept: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        log.warning("%s: %s", group_id, note)
        return 0, note
    manifest_path = naming.archive_manifest_path(settings.archive_dir, group_id)
    done, removed = [], 0
    for p in raw:
        row = rows[str(p.source)]
        if row["status"] == "verified":
            if p.source.exists():
                arc.remove_product(p.source)
                removed += 1
            done.append(_archived_row(group_id, p, "source_removed", manifest_path, previous=row))
    store.append(settings.catalog_dir, "archived", done)
    for row in done:
        rows[row["source_path"]] = row
    return removed, f"raw removed ({removed} files)"


def _ms_problems(settings: Settings, group_id: str, rows: dict) -> list[str]:
    """Why the group's MS does not count as verified (empty: it does)."""
    ms_row = records.latest_ms(settings, group_id) or {}
    if ms_row.get("stage") != ARCHIVED:
        return [f"MS not archived (latest stage {ms_row.get('stage')})"]
    ms = [r for r in rows.values() if r["kind"] == "ms" and r["archive_path"] == ms_row["path"]
          and r["status"] in ("verified", "source_removed")]
    if not ms:
        return [f"{ms_row['path']}: no verified archived MS recorded"]
    archive_dir = Path(settings.archive_dir)
    dest = Path(ms[0]["archive_path"])
    sums = arc.read_sha256sums(ms[0]["manifest_path"])
    manifest = arc.manifest_from_sha256sums(sums, _rel(archive_dir, dest), dest)
    if not manifest or arc.manifest_digest(manifest) != ms[0]["sha256"]:
        return [f"{dest}: its checksums in {ms[0]['manifest_path']} do not match the catalog's"]
    return arc.compare(dest, manifest)


# --- catalog upkeep -------------------------------------------------------------------


def compact_catalog(settings: Settings) -> catalog_compact.CompactionReport:
    """Merge the catalog's small files (``catalog.compact``): queries stay fast."""
    return catalog_compact.compact(settings.catalog_dir)


#: Data directories measured by :func:`record_disk_usage` (setting names).
MEASURED_AREAS = ("products_dir", "archive_dir", "scratch_dir", "incoming_dir", "quarantine_dir", "catalog_dir")


def record_disk_usage(settings: Settings, *, now: datetime | None = None) -> list[dict]:
    """Measure every data directory per top-level kind and append the rows to ``disk_usage``.

    ``obs_date`` of these rows is the date measured (they belong to no observation).
    """
    now = now or datetime.now(timezone.utc)
    rows = []
    for area in MEASURED_AREAS:
        root = Path(getattr(settings, area))
        if not root.is_dir():
            continue
        fs = shutil.disk_usage(root)
        for kind, usage in (arc.disk_usage(root) or {".": arc.Usage(0, 0, 0)}).items():  # empty: one zero row
            rows.append({"area": area, "kind": kind, "path": str(root / kind),
                         "bytes": usage.bytes, "apparent_bytes": usage.apparent_bytes, "n_files": usage.n_files,
                         "fs_total_bytes": fs.total, "fs_free_bytes": fs.free, "measured_at": now,
                         "obs_date": now.strftime("%Y-%m-%d")})
    store.append(settings.catalog_dir, "disk_usage", rows)
    return rows


# --- restore ---------------------------------------------------------------------------


@dataclass
class Restored:
    """What :func:`restore_group` did."""

    group_id: str
    path: Path
    archived_path: Path
    sets: list[str]
    tables: list[str]
    columns: list[str]
    seconds: float
    bytes: int

    def line(self) -> str:
        """One line for the command line."""
        cal = (f"CORRECTED_DATA from {len(self.tables)} caltable(s) of {', '.join(self.sets)}" if self.sets
               else "no calibration was applied to this group: CORRECTED_DATA left zero, as it was")
        return (f"restored to {self.path} ({human_bytes(self.bytes)}, {self.seconds:.1f} s); "
                f"put back {', '.join(self.columns) or 'nothing'}; {cal}")


@dataclass(frozen=True)
class RecordedApply:
    """The calibration a group's MS was given, as recorded: the sets and the tables, in apply order.

    ``tables`` holds :class:`contimg.calibration.applycal.ApplyTable` items, or lists
    of them (one type's tables of two bracketing sets, merged and interpolated).
    """

    sets: list[str]
    tables: list
    interpolated_g: bool


def _one_table(cal_row: dict):
    from contimg.calibration.applycal import ApplyTable

    return ApplyTable(Path(cal_row["table_path"]), cal_row["table_type"], cal_row["interp"] or "",
                      list(cal_row["spwmap"] or []), cal_row["gainfield"] or "")


def recorded_apply(settings: Settings, group_id: str) -> RecordedApply | None:
    """The caltables applied to a group, rebuilt as ``tasks.calibration.apply_group`` applied them.

    From the catalog: the latest ``ms_index`` row ``applycal_done`` (its
    ``caltable_set``: the K/B set, then the G set(s)), the ``qa_metrics`` of that
    apply (``interpolated_g``, and ``applied``: the table paths in apply order),
    and each set's ``cal_registry`` rows (path, type, interp, spwmap, gainfield:
    the registered parameters, whatever the set's status is now). The rebuilt
    list must name the recorded paths; a merged table (two bracketing G sets)
    is merged again from the same two tables. ``None``: no calibration was
    ever applied to the group.

    Raises
    ------
    contimg.errors.ContimgError
        The records disagree (a set missing from the registry, other tables).
    """
    from catalog.cal_registry import G_TYPES, KB_TYPES

    applied = catalog_query.query(
        settings.catalog_dir,
        "SELECT caltable_set, recorded_at FROM ms_index_all WHERE group_id = ? AND stage = 'applycal_done' "
        "ORDER BY recorded_at DESC LIMIT 1", [group_id]).to_pylist()
    if not applied or not applied[0]["caltable_set"]:
        return None
    names = applied[0]["caltable_set"].split(",")
    metrics = {}
    for r in catalog_query.query(
            settings.catalog_dir,
            "SELECT metric, value, value_text FROM qa_metrics_all WHERE group_id = ? AND stage = 'applycal' "
            "AND metric IN ('applied', 'interpolated_g') AND recorded_at >= ? ORDER BY recorded_at",
            [group_id, applied[0]["recorded_at"]]).to_pylist():
        metrics[r["metric"]] = r["value_text"] if r["value_text"] is not None else r["value"]
    interpolate = str(metrics.get("interpolated_g", "false")).lower() in ("true", "1", "1.0")
    sets = {}
    for name in names:
        rows = catalog_query.latest(settings.catalog_dir, "cal_registry", set_name=name)
        if not rows:
            raise ContimgError(f"{group_id}: set {name} (recorded applied to the group) is not in cal_registry")
        sets[name] = sorted(rows, key=lambda r: (r["apply_order"], r["table_path"]))
    # what cal_registry.active_applylist chose: the K/B set first, then the G set(s) in time order
    kb_name = names[0]
    if interpolate:
        g_names = names[1:] if len(names) > 2 else list(names)
    else:
        g_names = names[-1:]
    g_names.sort(key=lambda n: sets[n][0].get("mid_mjd") or 0.0)
    flat = [r for r in sets[kb_name] if r["table_type"] in KB_TYPES]
    flat += [r for n in g_names for r in sets[n] if r["table_type"] in G_TYPES]
    by_type: dict[str, list] = {}
    for r in flat:
        by_type.setdefault(r["table_type"], []).append(_one_table(r))
    tables = [g if interpolate and len(g) > 1 else g[0] for g in by_type.values()]
    recorded = metrics.get("applied")
    if recorded is not None:
        paths = json.loads(recorded) if isinstance(recorded, str) else recorded
        rebuilt = [f"<{t[0].kind} merged>" if isinstance(t, list) else str(t.path) for t in tables]
        want = [f"<{Path(p).name.rsplit('.', 2)[-2]} merged>" if str(p).endswith(".merged") else str(p)
                for p in paths]
        if rebuilt != want:
            raise ContimgError(f"{group_id}: the caltables recorded applied ({want}) are not those its sets "
                               f"{', '.join(names)} give ({rebuilt}); restore it by hand")
    return RecordedApply(names, tables, interpolate)


def _available(settings: Settings, group_id: str, tables: list) -> list:
    """``tables`` with each missing caltable replaced by its verified archived copy."""
    from contimg.calibration.applycal import ApplyTable

    def find(t: ApplyTable) -> ApplyTable:
        if t.path.exists():
            return t
        copies = catalog_query.query(
            settings.catalog_dir,
            "SELECT archive_path FROM archived WHERE source_path = ? AND kind = 'caltable' "
            "AND status IN ('verified', 'source_removed')", [str(t.path)]).to_pylist()
        for row in copies:
            if Path(row["archive_path"]).exists():
                return ApplyTable(Path(row["archive_path"]), t.kind, t.interp, list(t.spwmap), t.gainfield)
        raise InvalidInputError(f"{group_id}: caltable {t.path} ({t.kind}) is missing, and no archived copy of it "
                                "exists; CORRECTED_DATA cannot be rebuilt")

    return [[find(x) for x in t] if isinstance(t, list) else find(t) for t in tables]


def restore_group(settings: Settings, group_id: str, *, out: str | os.PathLike | None = None,
                  lease=None) -> Restored:
    """Rebuild an archived group's calibrated MS from its archived (lean) copy.

    Checks the archived MS against its manifest (every byte), copies it to
    ``out`` (default: its place in the products, :func:`contimg.naming.ms_path`)
    under a temporary name, puts back the columns the lean copy left out
    (:func:`contimg.archive.expand_lean_ms`), applies the caltables recorded for
    the group (:func:`recorded_apply`, with
    :func:`contimg.calibration.applycal.apply_tables` as the pipeline does: the same
    CORRECTED_DATA, bit for bit, and FLAG), renames it into place and records a
    ``stage_runs`` row ``restore``. The archive and the catalog's MS path are
    not changed. Call it holding the group's lease.

    Self-calibration (type ``SC``) is not applied: the pipeline applies it to
    the imaging MS only, never to the group MS's CORRECTED_DATA.

    Raises
    ------
    contimg.errors.InvalidInputError
        An unknown group, a group not archived, an MS already at ``out``, a
        caltable missing with no archived copy.
    contimg.archive.ArchiveVerificationError
        The archived MS does not match its recorded checksums.
    """
    from contimg.calibration.applycal import apply_tables

    started = time.perf_counter()
    try:
        naming.parse_group_id(group_id)
    except ValueError:
        raise InvalidInputError(f"{group_id!r} is not a group id (YYYY-MM-DDTHH:MM:SS)") from None
    ms_row = records.latest_ms(settings, group_id)
    if ms_row is None:
        raise InvalidInputError(f"{group_id}: no such group in the catalog (no ms_index row)")
    if ms_row["stage"] != ARCHIVED:
        raise InvalidInputError(f"{group_id}: not archived (stage {ms_row['stage']}); its MS is {ms_row['path']}")
    archived = Path(ms_row["path"])
    date = naming.group_date(group_id)
    rows = {r["source_path"]: r for r in catalog_query.latest(settings.catalog_dir, "archived", obs_date=date,
                                                              group_id=group_id)}
    apply = recorded_apply(settings, group_id)
    tables = _available(settings, group_id, apply.tables) if apply else []
    dest = Path(out) if out else naming.ms_path(settings.products_dir, group_id)
    if dest.exists() or dest.is_symlink():
        raise InvalidInputError(f"{group_id}: {dest} already exists; remove it, or restore elsewhere with --out")
    with records.stage_run(settings, group_id, "restore") as info:
        problems = _ms_problems(settings, group_id, rows)
        if problems:
            raise arc.ArchiveVerificationError(
                f"{group_id}: the archived MS does not verify ({len(problems)} problem(s): {problems[0]}); "
                "nothing restored")
        if lease is not None:
            lease.ensure_held()
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = dest.with_name(f".{dest.name}{arc.PARTIAL_MARK}{uuid.uuid4().hex}")
        work = Path(settings.scratch_dir) / "restore" / f"{naming.group_stem(group_id)}-{uuid.uuid4().hex[:8]}"
        try:
            arc.copy_tree(archived, temp)
            columns = arc.expand_lean_ms(temp)
            if tables:
                work.mkdir(parents=True, exist_ok=True)
                apply_tables(temp, tables, log_path=work / "applycal.log", work_dir=work)
            os.rename(temp, dest)
        except BaseException:
            if temp.exists():
                arc.remove_product(temp)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        size = sum(e.bytes for e in arc.disk_usage(dest).values())
        done = Restored(group_id, dest, archived, apply.sets if apply else [],
                        [str(x.path) for t in tables for x in (t if isinstance(t, list) else [t])],
                        columns, time.perf_counter() - started, size)
        info["detail"] = {"path": str(dest), "archived_path": str(archived), "sets": done.sets,
                          "tables": done.tables, "columns": columns, "seconds": done.seconds}
    return done


# --- Prefect tasks ---------------------------------------------------------------------


@task(name="archive-group", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=60,
      retry_condition_fn=retry_transient)
def task_archive_group(settings: Settings, group_id: str, lease=None) -> GroupArchive:
    """Prefect task of :func:`archive_group` (an I/O error is retried once; a failed verification is not)."""
    return archive_group(settings, group_id, lease=lease)


@task(name="compact-catalog", cache_policy=NO_CACHE)
def task_compact(settings: Settings) -> catalog_compact.CompactionReport:
    """Prefect task of :func:`compact_catalog`."""
    return compact_catalog(settings)


@task(name="disk-usage", cache_policy=NO_CACHE)
def task_disk_usage(settings: Settings) -> list[dict]:
    """Prefect task of :func:`record_disk_usage`."""
    return record_disk_usage(settings)
