"""The archive: verified copies before any delete, idempotent reruns, raw retention, recovery.

A finished group is built as the pipeline leaves it: a real (empty) Measurement
Set made by casacore, FITS and PNG files, a caltable directory, QA and log
directories, raw subband files, and the catalog rows the stages write (real
Parquet, read back through DuckDB). Failures are real bad bytes on disk, never a
mocked checker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

GID = "2025-03-01T00:00:00"
DATE = GID[:10]
OBSERVED = datetime(2025, 3, 1, tzinfo=timezone.utc)
BEFORE_RETENTION = OBSERVED + timedelta(days=1)
AFTER_RETENTION = OBSERVED + timedelta(days=30)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_group(settings, group_id=GID, *, stage="imaged", is_calibrator=False, seed=0) -> dict:
    """Files and catalog rows of one group as the pipeline leaves it; returns the paths."""
    from astropy.io import fits
    from casacore.tables import default_ms

    from catalog import store
    from contimg import naming

    rng = np.random.default_rng(seed)
    date = naming.group_date(group_id)
    raw = [_write(Path(settings.incoming_dir) / naming.subband_filename(group_id, sb), rng.bytes(50_000 + sb))
           for sb in range(2)]
    store.append(settings.catalog_dir, "groups", [{"group_id": group_id, "obs_date": date, "state": "converted",
                                                   "files": [str(p) for p in raw]}])
    ms = naming.ms_path(settings.products_dir, group_id)
    ms.parent.mkdir(parents=True, exist_ok=True)
    default_ms(str(ms)).close()
    base = {"group_id": group_id, "obs_date": date, "path": str(ms), "mid_mjd": 60735.0,
            "is_calibrator": is_calibrator}
    store.append(settings.catalog_dir, "ms_index", [{**base, "stage": "converted"}])
    prefix = naming.image_prefix(settings.products_dir, group_id)
    images = {}
    for kind in ("image", "pbcor"):
        images[kind] = prefix.with_name(f"{prefix.name}-{kind}.fits")
        images[kind].parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(rng.normal(size=(64, 64)).astype(np.float32)).writeto(images[kind])
    images["png"] = _write(prefix.with_name(f"{prefix.name}-pbcor.png"), rng.bytes(3000))
    store.append(settings.catalog_dir, "images", [
        {"path": str(p), "type": kind, "group_id": group_id, "obs_date": date, "ms_path": str(ms), "noise_jy": 1e-3}
        for kind, p in images.items()])
    qa = _write(naming.qa_dir(settings.products_dir, group_id) / "amp_vs_time.png", rng.bytes(2000)).parent
    logs = _write(naming.casa_log_path(settings.products_dir, group_id, "image"), b"imaging log\n").parent
    caltable = naming.caltable_path(settings.products_dir, group_id, "K", "20250301T001000")
    _write(caltable / "table.f0", rng.bytes(4000))
    _write(caltable / "table.dat", rng.bytes(500))
    store.append(settings.catalog_dir, "ms_index", [{**base, "stage": stage, "image_name": str(prefix)}])
    return {"raw": raw, "ms": ms, "images": images, "qa": qa, "logs": logs, "caltable": caltable}


def _count(settings, sql) -> int:
    from catalog import query

    return query.query(settings.catalog_dir, sql).to_pylist()[0]["n"]


def _row_counts(settings) -> dict:
    return {t: _count(settings, f"SELECT count(*) AS n FROM {t}_all")
            for t in ("archived", "ms_index", "images", "stage_runs", "groups")}


def _archived(settings, group_id=GID) -> dict:
    from catalog import query

    return {r["source_path"]: r for r in query.latest(settings.catalog_dir, "archived", group_id=group_id)}


def _archive_of(settings, path: Path) -> Path:
    from contimg import naming

    return naming.archive_product_path(settings.archive_dir, settings.products_dir, path, GID)


# --- contimg.archive: the copy itself ------------------------------------------------


def test_copy_keeps_holes_of_sparse_files_and_verifies(tmp_path):
    from contimg import archive as arc

    src = tmp_path / "src.ms"
    (src / "sub").mkdir(parents=True)
    with open(src / "table.f1", "wb") as fh:  # 64 MiB apparent, two 1 MiB data extents
        fh.write(os.urandom(2**20))
        fh.seek(40 * 2**20)
        fh.write(os.urandom(2**20))
        fh.truncate(64 * 2**20)
    _write(src / "sub" / "table.dat", b"x" * 100)
    result = arc.archive_copy(src, tmp_path / "archive" / "src.ms")
    assert result.copied and result.n_files == 2 and result.bytes == 64 * 2**20 + 100
    copy = tmp_path / "archive" / "src.ms" / "table.f1"
    if (src / "table.f1").stat().st_blocks * 512 < 16 * 2**20:  # the filesystem keeps holes
        assert copy.stat().st_blocks * 512 < 16 * 2**20
    assert arc.compare(tmp_path / "archive" / "src.ms", arc.manifest_of(src)) == []
    assert arc.sha256_file(copy) == arc.sha256_file(src / "table.f1")
    again = arc.archive_copy(src, tmp_path / "archive" / "src.ms")
    assert not again.copied and again.digest == result.digest


def test_a_copy_that_reads_back_wrong_is_never_put_in_place(tmp_path, monkeypatch):
    from contimg import archive as arc

    src = _write(tmp_path / "a.fits", os.urandom(10_000))
    real_copy = arc.copy_file

    def flipping_copy(a, b):  # the bytes reach the disk wrong (a bad cable, a failing archive disk)
        real_copy(a, b)
        with open(b, "r+b") as fh:
            fh.seek(5000)
            byte = fh.read(1)
            fh.seek(5000)
            fh.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(arc, "copy_file", flipping_copy)
    with pytest.raises(arc.ArchiveVerificationError, match="SHA-256 differs"):
        arc.archive_copy(src, tmp_path / "archive" / "a.fits")
    assert not (tmp_path / "archive" / "a.fits").exists() and os.listdir(tmp_path / "archive") == []
    assert src.exists()


# --- one group ----------------------------------------------------------------------


def test_archive_moves_products_after_verified_copies_and_records_how_to_restore(settings):
    from catalog import query
    from contimg import naming
    from tasks.archive import archive_group

    made = _make_group(settings)
    out = archive_group(settings, GID, now=BEFORE_RETENTION)
    assert out.state == "archived" and out.copied == 9 and out.removed == 6 and out.raw_removed == 0
    assert out.raw_note.startswith("raw kept until 2025-03-08")
    # moved: MS, images, QA, logs; copied and kept: the caltable (applycal opens it there), raw until retention
    for path in [made["ms"], made["qa"], made["logs"], *made["images"].values()]:
        assert not path.exists() and _archive_of(settings, path).exists()
    assert made["caltable"].exists() and _archive_of(settings, made["caltable"]).exists()
    assert all(p.exists() for p in made["raw"])
    raw_dir = naming.archive_raw_dir(settings.archive_dir, GID)
    assert sorted(os.listdir(raw_dir)) == sorted(p.name for p in made["raw"])

    rows = _archived(settings)
    assert len(rows) == 9
    assert {r["status"] for p, r in rows.items() if Path(p) in (made["caltable"], *made["raw"])} == {"verified"}
    assert rows[str(made["ms"])]["status"] == "source_removed" and rows[str(made["ms"])]["n_files"] > 10
    ms_now = query.latest(settings.catalog_dir, "ms_index", group_id=GID)[0]
    assert ms_now["stage"] == "archived" and ms_now["path"] == str(_archive_of(settings, made["ms"]))
    images = {r["path"]: r for r in query.latest(settings.catalog_dir, "images", group_id=GID)}
    assert all(images[str(p)]["archived_path"] == str(_archive_of(settings, p)) for p in made["images"].values())
    assert images[str(made["images"]["pbcor"])]["noise_jy"] == 1e-3  # the rest of the row carried over
    run = query.latest(settings.catalog_dir, "stage_runs", group_id=GID)
    assert [(r["stage"], r["status"]) for r in run] == [("archive", "completed")]

    # An operator checks and restores from the group's manifest with standard tools.
    manifest = naming.archive_manifest_path(settings.archive_dir, GID)
    assert rows[str(made["ms"])]["manifest_path"] == str(manifest)
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(manifest)], cwd=settings.archive_dir,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copytree(ms_now["path"], made["ms"])
    from casacore.tables import table

    with table(str(made["ms"]), ack=False) as t:
        assert "ANTENNA" in t.getkeywords()


def test_rerun_copies_nothing_and_writes_no_row(settings):
    from tasks.archive import archive_group

    made = _make_group(settings)
    archive_group(settings, GID, now=BEFORE_RETENTION)
    counts = _row_counts(settings)
    stamps = {p: p.stat().st_mtime_ns for p in Path(settings.archive_dir).rglob("*") if p.is_file()}
    again = archive_group(settings, GID, now=BEFORE_RETENTION)
    assert again.state == "archived" and (again.copied, again.reused, again.removed) == (0, 0, 0)
    assert _row_counts(settings) == counts
    assert {p: p.stat().st_mtime_ns for p in Path(settings.archive_dir).rglob("*") if p.is_file()} == stamps
    assert made["caltable"].exists()


def test_a_copy_failing_verification_deletes_nothing_and_the_rerun_completes(settings, monkeypatch):
    from catalog import query
    from contimg import archive as arc
    from tasks.archive import archive_group

    made = _make_group(settings)
    real_copy = arc.copy_file
    target = made["images"]["pbcor"]

    def truncating_copy(src, dst):  # the archive disk fills up silently half way through one file
        real_copy(src, dst)
        if Path(src) == target:
            with open(dst, "r+b") as fh:
                fh.truncate(os.path.getsize(dst) // 2)

    monkeypatch.setattr(arc, "copy_file", truncating_copy)
    with pytest.raises(arc.ArchiveVerificationError, match="nothing deleted"):
        archive_group(settings, GID, now=AFTER_RETENTION)
    for path in [made["ms"], made["qa"], made["logs"], *made["images"].values(), *made["raw"]]:
        assert path.exists(), f"{path} deleted after a failed verification"
    assert not _archive_of(settings, target).exists()
    rows = _archived(settings)
    assert rows[str(target)]["status"] == "failed" and "bytes, expected" in rows[str(target)]["error"]
    assert query.latest(settings.catalog_dir, "ms_index", group_id=GID)[0]["stage"] == "imaged"
    runs = query.latest(settings.catalog_dir, "stage_runs", group_id=GID)
    assert runs[0]["status"] == "failed" and "ArchiveVerificationError" in runs[0]["error"]

    monkeypatch.setattr(arc, "copy_file", real_copy)
    out = archive_group(settings, GID, now=BEFORE_RETENTION)
    # only the failed one is copied again; the others' copies are checked against their sources, then moved
    assert out.copied == 1 and out.reused == 5 and out.removed == 6
    assert _archived(settings)[str(target)]["status"] == "source_removed" and not target.exists()


def test_half_written_copies_of_a_killed_run_are_replaced(settings):
    from contimg import archive as arc
    from tasks.archive import archive_group

    made = _make_group(settings)
    # A killed copy of the MS left its temporary directory half full; another tool left a truncated image.
    ms_dest = _archive_of(settings, made["ms"])
    partial = ms_dest.with_name(f".{ms_dest.name}{arc.PARTIAL_MARK}deadbeef")
    shutil.copytree(made["ms"], partial)
    (partial / "table.f1").write_bytes(b"half")
    image_dest = _archive_of(settings, made["images"]["image"])
    _write(image_dest, made["images"]["image"].read_bytes()[:1000])
    # and an MS copy in place but missing a file (a copy killed by hand, then renamed)
    out = archive_group(settings, GID, now=BEFORE_RETENTION)
    assert out.state == "archived" and out.copied == 9
    assert not partial.exists()
    assert arc.sha256_file(image_dest) == _archived(settings)[str(made["images"]["image"])]["sha256"]
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(_archived(settings)[str(made["ms"])]["manifest_path"])],
                           cwd=settings.archive_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_killed_between_recording_and_deleting_finishes_on_rerun(settings, monkeypatch):
    from contimg import archive as arc
    from tasks.archive import archive_group

    made = _make_group(settings)

    real_remove = arc.remove_product
    deleted = []

    def killed(path):  # the process dies at its second delete, after the first one
        if deleted:
            raise KeyboardInterrupt
        real_remove(path)
        deleted.append(Path(path))

    monkeypatch.setattr(arc, "remove_product", killed)
    with pytest.raises(KeyboardInterrupt):
        archive_group(settings, GID, now=BEFORE_RETENTION)
    assert deleted == [made["ms"]] and not made["ms"].exists() and _archive_of(settings, made["ms"]).exists()
    assert made["images"]["image"].exists()
    monkeypatch.undo()
    out = archive_group(settings, GID, now=BEFORE_RETENTION)
    assert out.copied == 0 and out.reused == 5 and out.removed == 5
    rows = _archived(settings)
    assert rows[str(made["ms"])]["status"] == "source_removed"  # its deletion is recorded now
    assert {r["status"] for r in rows.values()} == {"verified", "source_removed"}
    assert not any(p.exists() for p in made["images"].values())


# --- raw retention ------------------------------------------------------------------


def test_raw_files_go_only_after_retention_with_the_ms_and_their_copies_verified(settings):
    from contimg import naming
    from tasks.archive import archive_group, candidate_groups

    made = _make_group(settings)
    assert archive_group(settings, GID, now=BEFORE_RETENTION).raw_removed == 0
    assert all(p.exists() for p in made["raw"])
    # an archived group is visited again only once its raw files are due
    assert candidate_groups(settings, now=BEFORE_RETENTION) == []
    assert candidate_groups(settings, now=AFTER_RETENTION) == [GID]

    # Retention passed, but an archived raw copy rotted: kept.
    raw_copy = naming.archive_raw_dir(settings.archive_dir, GID) / made["raw"][1].name
    good = raw_copy.read_bytes()
    raw_copy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    out = archive_group(settings, GID, now=AFTER_RETENTION)
    assert out.raw_removed == 0 and "SHA-256 differs" in out.raw_note and all(p.exists() for p in made["raw"])
    raw_copy.write_bytes(good)

    # The archived MS no longer matches what was copied: kept.
    ms_file = _archive_of(settings, made["ms"]) / "table.dat"
    good_ms = ms_file.read_bytes()
    ms_file.write_bytes(good_ms + b"\0")
    out = archive_group(settings, GID, now=AFTER_RETENTION)
    assert out.raw_removed == 0 and "table.dat" in out.raw_note and all(p.exists() for p in made["raw"])
    ms_file.write_bytes(good_ms)

    # Everything verifies: deleted, the archived copies stay, recorded; a rerun does nothing.
    out = archive_group(settings, GID, now=AFTER_RETENTION)
    assert out.raw_removed == 2 and out.raw_note == "raw removed (2 files)"
    assert not any(p.exists() for p in made["raw"]) and raw_copy.read_bytes() == good
    rows = _archived(settings)
    assert all(rows[str(p)]["status"] == "source_removed" for p in made["raw"])
    counts = _row_counts(settings)
    again = archive_group(settings, GID, now=AFTER_RETENTION)
    assert again.raw_note == "raw removed" and _row_counts(settings) == counts
    assert candidate_groups(settings, now=AFTER_RETENTION) == []


def test_unfinished_groups_and_negative_retention_keep_raw_files(settings):
    from dataclasses import replace

    from catalog import cal_registry
    from tasks.archive import archive_group, candidate_groups

    waiting = _make_group(settings, "2025-03-01T01:00:00", stage="waiting_for_cal", seed=1)
    calibrated = _make_group(settings, "2025-03-01T02:00:00", stage="calibrated", is_calibrator=True, seed=2)
    rejected = _make_group(settings, "2025-03-01T03:00:00", stage="failed", is_calibrator=True, seed=3)
    cal_registry.register_set(settings.catalog_dir, set_name="rejected-set", status="rejected", reason="bad B",
                              obs_date=DATE, mid_mjd=60735.1, calibrator="J0834+5534", refant="DSA-001",
                              source_ms=str(rejected["ms"]),
                              tables=[{"path": str(rejected["caltable"]), "type": "K"}])
    imaged = _make_group(settings, seed=4)
    assert candidate_groups(settings) == [GID, "2025-03-01T03:00:00"]
    for group_id, made in (("2025-03-01T01:00:00", waiting), ("2025-03-01T02:00:00", calibrated)):
        out = archive_group(settings, group_id, now=AFTER_RETENTION)
        assert out.state == "not_finished" and made["ms"].exists() and all(p.exists() for p in made["raw"])

    never = replace(settings, archive_raw_retention_days=-1.0)
    out = archive_group(never, GID, now=AFTER_RETENTION + timedelta(days=10_000))
    assert out.raw_note == "raw kept (retention off)" and all(p.exists() for p in imaged["raw"])
    out = archive_group(settings, "2025-03-01T03:00:00", now=AFTER_RETENTION)
    assert out.state == "archived" and not rejected["ms"].exists() and out.raw_removed == 2


def test_disk_usage_per_area_and_kind(settings):
    from catalog import query
    from tasks.archive import archive_group, record_disk_usage

    _make_group(settings)
    archive_group(settings, GID, now=BEFORE_RETENTION)
    rows = record_disk_usage(settings)
    by = {(r["area"], r["kind"]): r for r in query.latest(settings.catalog_dir, "disk_usage")}
    assert len(by) == len(rows)
    assert by[("archive_dir", "ms")]["n_files"] > 10 and by[("archive_dir", "raw")]["n_files"] == 2
    assert by[("products_dir", "caltables")]["apparent_bytes"] == 4500
    assert by[("incoming_dir", ".")]["n_files"] == 2
    assert ("products_dir", "ms") in by and by[("products_dir", "ms")]["n_files"] == 0
    assert all(r["fs_total_bytes"] >= r["fs_free_bytes"] > 0 for r in rows)


# --- the flow and the command line ---------------------------------------------------


def _group_lines(out: str) -> list[str]:
    """The command's lines but the one saying which Prefect server it uses (issue 22)."""
    return [line for line in out.strip().splitlines() if not line.startswith("using ")]


def test_contimg_run_archive_one_line_per_group_and_exit_status(settings, monkeypatch, capsys, prefect_server):
    from contimg import archive as arc
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    monkeypatch.setenv("CONTIMG_ARCHIVE_RAW_RETENTION_DAYS", "100000")
    good = _make_group(settings, seed=5)
    bad = _make_group(settings, "2025-03-02T00:00:00", seed=6)
    real_copy = arc.copy_file

    def bad_copy(src, dst):
        real_copy(src, dst)
        if "2025-03-02T000000" in str(src) and str(src).endswith(".fits"):
            with open(dst, "ab") as fh:
                fh.write(b"extra")

    monkeypatch.setattr(arc, "copy_file", bad_copy)
    assert main(["run", "archive"]) == 1
    lines = _group_lines(capsys.readouterr().out)
    assert lines[0].startswith(f"{GID}  archived  copied 9") and "raw kept until" in lines[0]
    assert lines[1].startswith("2025-03-02T00:00:00  failed") and "Traceback" not in lines[1]
    assert any(line.startswith("catalog  compacted") for line in lines)
    assert any(line.startswith("disk  archive_dir") for line in lines)
    assert all(p.exists() for p in bad["images"].values()) and not good["ms"].exists()

    monkeypatch.setattr(arc, "copy_file", real_copy)
    assert main(["run", "archive"]) == 0
    lines = _group_lines(capsys.readouterr().out)
    # the archived group has nothing left until its raw files are due: not even visited
    assert lines[0].startswith("2025-03-02T00:00:00  archived  copied 2") and not any(GID in x for x in lines)


def test_a_group_whose_lease_is_held_is_skipped_untouched(settings, prefect_server):
    from flows.archive import archive
    from tasks import ingest

    made = _make_group(settings)
    lease = ingest.try_group_lease(settings, GID)  # another run is working on the group
    with lease:
        out = archive(base_dir=str(settings.base_dir), compact=False)
    assert out["groups"][GID]["state"] == "held" and "held by" in out["groups"][GID]["detail"]
    assert made["ms"].exists() and not Path(settings.archive_dir, "ms").exists()
    assert _count(settings, "SELECT count(*) AS n FROM archived_all") == 0
    assert out["compaction"] is None and {r["area"] for r in out["disk_usage"]} >= {"products_dir", "archive_dir"}
