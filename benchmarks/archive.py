"""Lean archive (issue 21): one full-size group's archive against its raw size, and its restore.

    nice flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/archive.py [--workdir DIR] [--keep]

Inputs, read and never written: a converted full-size target MS, its raw subband files, a calibrator
set's caltables (K, B, GP, GA) and one group's image products; by default those of
``benchmarks/target_fidelity.py`` (``target20``: 20 min after 3C147). Everything else happens in
``--workdir``'s own data directories, through the pipeline's own functions:

1. the MS is copied (sparse) to its place in the products; the caltables are copied and registered
   as an active set 20 min before the group; the images are copied and recorded;
2. ``tasks.calibration.apply_group`` (the target flow's apply: CORRECTED_DATA written, recorded);
   MODEL_DATA stays as the target flow leaves it (never written: holes; a calibrator group's is
   written, which the apparent size counts); the group is recorded imaged;
3. ``tasks.archive.archive_group``: the lean MS, the images, the logs (raw files are not archived
   here: after their retention the archive holds none, and their size is the yardstick);
4. ``tasks.archive.restore_group``: timed; DATA, CORRECTED_DATA, FLAG and WEIGHT_SPECTRUM checksummed
   (SHA-256 of their cells) before archiving and after the restore.

Prints the raw size, the MS as the archive kept it before (the whole MS: on disk, and apparent), the
lean MS, the images, the archive per group over the raw size, the times, whether the restore is bit
for bit, and what a day (288 groups) and a year cost at that rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIDELITY = REPO / "benchmarks" / "_work" / "target_fidelity"
GROUPS_PER_DAY = 288
COLUMNS = ("DATA", "CORRECTED_DATA", "FLAG", "WEIGHT_SPECTRUM")


def allocated(path: Path) -> int:
    """Bytes the filesystem allocated under ``path`` (a sparse file counts its data only)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def apparent(path: Path) -> int:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def column_sums(ms: Path) -> dict:
    """SHA-256 of each column's cells, in row order (chunks of 65536 rows)."""
    from casacore.tables import table

    out = {}
    with table(str(ms), ack=False) as t:
        for col in COLUMNS:
            h = hashlib.sha256()
            for start in range(0, t.nrows(), 65536):
                n = min(65536, t.nrows() - start)
                h.update(t.getcol(col, start, n).tobytes())
            out[col] = h.hexdigest()
    return out


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ms", type=Path, default=next((FIDELITY / "prod" / "target20" / "ms").glob("*/*.ms"), None))
    parser.add_argument("--raw", type=Path, default=FIDELITY / "in" / "target20")
    parser.add_argument("--caltables", type=Path, default=FIDELITY / "caltables")
    parser.add_argument("--images", type=Path, default=FIDELITY / "images" / "target20-full")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "archive")
    parser.add_argument("--keep", action="store_true", help="keep the work directory's data")
    args = parser.parse_args(argv)

    from catalog import cal_registry, store
    from contimg import archive as arc
    from contimg import naming
    from contimg.calibration.solve import APPLY_INTERP
    from contimg.config import load_settings
    from contimg.conversion.inspect import ms_summary
    from tasks import records
    from tasks.archive import archive_group, restore_group
    from tasks.calibration import apply_group, group_id_of

    data = args.workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    settings = load_settings(environ={}, base_dir=data)
    settings.ensure_dirs()
    gid = group_id_of(args.ms)
    date = naming.group_date(gid)
    raw_files = sorted(args.raw.glob(f"{date}T*_sb*.hdf5"))
    raw_bytes = sum(p.stat().st_size for p in raw_files)

    t0 = time.perf_counter()
    ms = naming.ms_path(settings.products_dir, gid)
    ms.parent.mkdir(parents=True, exist_ok=True)
    arc.copy_tree(args.ms, ms)
    print(f"group {gid}: {len(raw_files)} raw files, {gb(raw_bytes)}; MS copied in {time.perf_counter() - t0:.0f} s",
          flush=True)
    summary = ms_summary(ms)
    # the calibrator's set, registered as the calibrator flow does (its tables copied into these products)
    cal_dir = naming.caltable_prefix(settings.products_dir, gid).parent
    cal_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for kind in ("K", "B", "GP", "GA"):
        src = args.caltables / f"set.{kind}"
        dest = cal_dir / f"calibrator.{kind}"
        shutil.copytree(src, dest, dirs_exist_ok=True)
        tables.append({"path": str(dest), "type": kind, "interp": APPLY_INTERP[kind], "spwmap": [], "gainfield": ""})
    set_mjd = summary["mid_mjd"] - 20 / 1440
    cal_registry.register_set(settings.catalog_dir, set_name="benchmark-calibrator", tables=tables, status="active",
                              obs_date=date, mid_mjd=set_mjd, calibrator="J0542+4951", refant="DSA-001",
                              source_ms="calibrator.ms")
    store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(
        None, gid, ms, stage="converted", is_calibrator=False,
        **{k: summary[k] for k in ("start_mjd", "mid_mjd", "end_mjd")})])
    t = time.perf_counter()
    applied = apply_group(settings, ms)
    apply_s = time.perf_counter() - t
    print(f"apply_group: {', '.join(applied['sets'])} in {apply_s:.0f} s", flush=True)
    prefix = naming.image_prefix(settings.products_dir, gid)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    image_rows = []
    for fits in sorted(args.images.glob("img-*.fits")):
        kind = fits.stem.split("-", 1)[1]
        dest = prefix.with_name(f"{prefix.name}-{kind}.fits")
        shutil.copyfile(fits, dest)
        image_rows.append({"path": str(dest), "type": kind, "group_id": gid, "obs_date": date, "ms_path": str(ms)})
    store.append(settings.catalog_dir, "images", image_rows)
    store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(records.latest_ms(settings, gid), gid, ms,
                                                                        stage="imaged")])
    full_disk, full_apparent = allocated(ms), apparent(ms)
    images_bytes = sum(allocated(Path(r["path"])) for r in image_rows)
    t = time.perf_counter()
    before = column_sums(ms)
    sums_s = time.perf_counter() - t

    t = time.perf_counter()
    out = archive_group(settings, gid)
    archive_s = time.perf_counter() - t
    print(f"archive_group: {out.line()} in {archive_s:.0f} s", flush=True)
    archived_ms = Path(records.latest_ms(settings, gid)["path"])
    lean = allocated(archived_ms)
    usage = arc.disk_usage(settings.archive_dir)
    archive_total = sum(u.bytes for u in usage.values())

    t = time.perf_counter()
    done = restore_group(settings, gid)
    restore_s = time.perf_counter() - t
    print(f"restore_group: {done.line()}", flush=True)
    after = column_sums(done.path)
    same = {col: before[col] == after[col] for col in COLUMNS}

    per_group = archive_total
    before_group = archive_total - lean + full_disk
    result = {
        "group": gid, "raw_bytes": raw_bytes, "ms_full_on_disk_bytes": full_disk,
        "ms_full_apparent_bytes": full_apparent, "ms_lean_bytes": lean, "images_bytes": images_bytes,
        "caltable_set_bytes": sum(allocated(Path(x["path"])) for x in tables),
        "archive_per_group_bytes": per_group, "archive_per_group_before_bytes": before_group,
        "ratio_before": before_group / raw_bytes, "ratio_after": per_group / raw_bytes,
        "archive_by_kind": {k: u.bytes for k, u in usage.items()},
        "apply_s": apply_s, "archive_s": archive_s, "restore_s": restore_s, "column_checksums_s": sums_s,
        "restored_bit_for_bit": same,
        "day_bytes": per_group * GROUPS_PER_DAY, "year_bytes": per_group * GROUPS_PER_DAY * 365,
        "day_bytes_before": before_group * GROUPS_PER_DAY,
        "raw_retention_bytes": raw_bytes * GROUPS_PER_DAY * settings.archive_raw_retention_days,
    }
    print()
    print("| | per group | / raw |")
    print("|---|---|---|")
    print(f"| raw subband files ({len(raw_files)}) | {gb(raw_bytes)} | 1.00 |")
    print(f"| MS as archived before (whole, on disk) | {gb(full_disk)} | {full_disk / raw_bytes:.2f} |")
    print(f"| MS apparent (MODEL_DATA written, as a calibrator group's) | {gb(full_apparent)} | "
          f"{full_apparent / raw_bytes:.2f} |")
    print(f"| MS lean (archived now) | {gb(lean)} | {lean / raw_bytes:.2f} |")
    print(f"| images ({len(image_rows)} FITS) | {gb(images_bytes)} | {images_bytes / raw_bytes:.2f} |")
    print(f"| archive per group after raw retention, before | {gb(before_group)} | {before_group / raw_bytes:.2f} |")
    print(f"| archive per group after raw retention, now | {gb(per_group)} | {per_group / raw_bytes:.2f} |")
    print()
    print(f"archive {archive_s:.0f} s, restore {restore_s:.0f} s (apply {apply_s:.0f} s in the pipeline); restored "
          f"bit for bit: {', '.join(f'{c} {s}' for c, s in same.items())}")
    print(f"a day ({GROUPS_PER_DAY} groups): {gb(result['day_bytes'])} (before: {gb(result['day_bytes_before'])}); "
          f"a year: {result['year_bytes'] / 1e12:.0f} TB; raw kept {settings.archive_raw_retention_days:g} days: "
          f"{result['raw_retention_bytes'] / 1e12:.1f} TB more")
    (args.workdir / "report.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    return 0 if all(same.values()) and result["ratio_after"] <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
