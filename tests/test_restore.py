"""The lean archive of an MS and ``contimg restore``: CORRECTED_DATA rebuilt bit for bit.

The night of ``tests/test_calibration_stage.py`` (reused, not rebuilt: a strong
calibrator solving K, B and gains, a fainter one 40 min later solving gains
only, a target between them whose gains are the two sets interpolated, so its
apply merges tables) is calibrated and applied as the pipeline does
(``tasks.calibration``), recorded imaged, then archived by
``tasks.archive.archive_group`` and restored. The restored CORRECTED_DATA is
compared with the original's bit for bit.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from casacore.tables import table

from test_calibration_stage import FAINT, J0834, NOISELESS_RFI_FREE, TARGET, _catalog_csv, _group

pytestmark = pytest.mark.slow

COLUMNS = ("DATA", "CORRECTED_DATA", "FLAG", "FLAG_ROW", "WEIGHT_SPECTRUM", "WEIGHT", "SIGMA", "UVW", "TIME")
NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)  # a day after the night: raw retention (7 days) not due


def _columns(ms) -> dict:
    with table(str(ms), ack=False) as t:
        return {c: t.getcol(c) for c in COLUMNS}


def _bits_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def _mark_imaged(settings, ms):
    from catalog import store
    from tasks import records
    from tasks.calibration import group_id_of

    gid = group_id_of(Path(ms))
    store.append(settings.catalog_dir, "ms_index",
                 [records.next_ms_row(records.latest_ms(settings, gid), gid, ms, stage="imaged")])
    return gid


@pytest.fixture(scope="module")
def archived_night(tmp_path_factory):
    """The night calibrated and applied; the target and the strong calibrator group archived."""
    from contimg import simulate
    from contimg.config import load_settings
    from tasks.archive import archive_group
    from tasks.calibration import apply_group, calibrate_group, group_id_of

    root = tmp_path_factory.mktemp("restore")
    settings = load_settings(environ={}, base_dir=root / "data",
                             calibrator_catalog=_catalog_csv(root / "calibrators.csv"))
    settings.ensure_dirs()
    strong = simulate.Source(J0834.name, J0834.ra_deg, J0834.dec_deg, J0834.flux_jy, J0834.spectral_index)
    # the target with noise, so that CORRECTED_DATA is no smooth function an error could hide in
    ms_a, _ = _group(root, "a", strong, [strong], corruptions=NOISELESS_RFI_FREE)
    ms_t, _ = _group(root, "t", TARGET, [TARGET], corruptions=simulate.Corruptions(rfi=False))
    ms_c, _ = _group(root, "c", FAINT, [FAINT], corruptions=NOISELESS_RFI_FREE)
    assert calibrate_group(settings, ms_a).status == "active"
    assert calibrate_group(settings, ms_c).status == "active"
    applied = {"t": apply_group(settings, ms_t), "a": apply_group(settings, ms_a)}
    assert applied["t"]["interpolated_g"] and not applied["a"]["interpolated_g"]
    before = {"t": _columns(ms_t), "a": _columns(ms_a)}
    sizes = {k: sum(f.stat().st_blocks * 512 for f in Path(ms).rglob("*") if f.is_file())
             for k, ms in (("t", ms_t), ("a", ms_a))}
    gids = {"t": _mark_imaged(settings, ms_t), "a": _mark_imaged(settings, ms_a)}
    gids["c"] = group_id_of(Path(ms_c))
    for key in ("t", "a"):
        out = archive_group(settings, gids[key], now=NOW)
        assert out.state == "archived" and out.removed >= 1, out.line()
    return {"settings": settings, "ms": {"t": ms_t, "a": ms_a, "c": ms_c}, "gids": gids, "before": before,
            "sizes": sizes, "applied": applied}


def test_the_archived_ms_is_lean_verified_and_checkable_with_sha256sum(archived_night):
    from catalog import query
    from contimg import archive as arc
    from contimg import naming

    settings, gid, ms = archived_night["settings"], archived_night["gids"]["t"], archived_night["ms"]["t"]
    assert not ms.exists()
    row = query.latest(settings.catalog_dir, "ms_index", group_id=gid)[0]
    archived = Path(row["path"])
    assert row["stage"] == "archived" and archived.is_dir()
    with table(str(archived), ack=False) as t:
        names = t.colnames()
        lean = t.getkeywords()[arc.LEAN_KEYWORD]
        assert _bits_equal(t.getcol("DATA"), archived_night["before"]["t"]["DATA"])
        assert _bits_equal(t.getcol("FLAG"), archived_night["before"]["t"]["FLAG"])  # the flags after applycal
    assert not {"MODEL_DATA", "CORRECTED_DATA", "WEIGHT_SPECTRUM"} & set(names)
    assert list(lean["dropped"]) == ["MODEL_DATA", "CORRECTED_DATA", "WEIGHT_SPECTRUM"]
    on_disk = sum(f.stat().st_blocks * 512 for f in archived.rglob("*") if f.is_file())
    assert on_disk < 0.7 * archived_night["sizes"]["t"]  # small MS: its subtables weigh as much as DATA
    # the group's manifest holds the lean copy's own checksums, and the catalog's digest is theirs
    record = {r["kind"]: r for r in query.latest(settings.catalog_dir, "archived", group_id=gid)}["ms"]
    manifest = naming.archive_manifest_path(settings.archive_dir, gid)
    sums = arc.read_sha256sums(manifest)
    rel = str(archived.relative_to(settings.archive_dir))
    assert arc.manifest_digest(arc.manifest_from_sha256sums(sums, rel, archived)) == record["sha256"]
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(manifest)], cwd=settings.archive_dir,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_restore_rebuilds_corrected_data_bit_for_bit(archived_night, monkeypatch, capsys):
    from catalog import query
    from contimg import naming
    from contimg_cli.main import main

    settings, gids, before = archived_night["settings"], archived_night["gids"], archived_night["before"]
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    # the target: two G sets interpolated (their tables merged again), through the command line, back to its
    # place in the products
    assert main(["restore", gids["t"]]) == 0
    line = capsys.readouterr().out.strip()
    restored = naming.ms_path(settings.products_dir, gids["t"])
    assert line.startswith(f"{gids['t']}  restored to {restored}") and "from 6 caltable(s) of" in line
    # the calibrator group: its own set, restored elsewhere
    out = settings.base_dir / "elsewhere" / "a.ms"
    assert main(["restore", gids["a"], "--out", str(out)]) == 0
    capsys.readouterr()
    for key, ms in (("t", restored), ("a", out)):
        after = _columns(ms)
        for col in COLUMNS:  # CORRECTED_DATA above all; FLAG as applycal left it; WEIGHT_SPECTRUM put back
            assert _bits_equal(after[col], before[key][col]), f"{key}: {col} differs after restore"
        assert np.count_nonzero(after["CORRECTED_DATA"]) > 0
        with table(str(ms), ack=False) as t:
            assert "MODEL_DATA" in t.colnames() and not np.any(t.getcol("MODEL_DATA"))
    # recorded; the archive's record of the MS unchanged
    runs = query.query(settings.catalog_dir, "SELECT group_id, status FROM stage_runs_all WHERE stage = 'restore'")
    assert sorted((r["group_id"], r["status"]) for r in runs.to_pylist()) == sorted(
        [(gids["t"], "completed"), (gids["a"], "completed")])
    assert query.latest(settings.catalog_dir, "ms_index", group_id=gids["t"])[0]["stage"] == "archived"
    # restored again on top of it: refused, one line
    assert main(["restore", gids["t"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contimg restore: error: ") and "already exists" in err and "\n" not in err


def test_restore_errors_are_one_line(archived_night, monkeypatch, capsys, tmp_path):
    from contimg_cli.main import main

    settings, gids = archived_night["settings"], archived_night["gids"]
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))

    def error(*args):
        status = main(["restore", *args])
        err = capsys.readouterr().err.strip()
        assert status == 2 and err.startswith("contimg restore: error: ") and "\n" not in err, err
        return err

    assert "no such group" in error("2020-01-01T00:00:00")
    assert "not a group id" in error("yesterday")
    assert "not archived (stage calibrated)" in error(gids["c"])
    # a caltable gone from the products: its verified archived copy is applied (the strong calibrator's group
    # is archived), bit for bit the same
    k_table = Path(archived_night["applied"]["t"]["gaintable"][0])
    shutil.move(k_table, tmp_path / "K")
    try:
        assert main(["restore", gids["t"], "--out", str(tmp_path / "k.ms")]) == 0
    finally:
        shutil.move(tmp_path / "K", k_table)
    capsys.readouterr()
    assert _bits_equal(_columns(tmp_path / "k.ms")["CORRECTED_DATA"], archived_night["before"]["t"]["CORRECTED_DATA"])
    # one of the faint calibrator's tables gone, never archived (its group was not): nothing restored
    from catalog import query

    faint_set = archived_night["applied"]["t"]["sets"][-1]
    gp = Path(next(r["table_path"] for r in query.latest(settings.catalog_dir, "cal_registry", set_name=faint_set)
                   if r["table_type"] == "GP"))
    shutil.move(gp, tmp_path / "GP")
    try:
        err = error(gids["t"], "--out", str(tmp_path / "t.ms"))
        assert f"caltable {gp} (GP) is missing, and no archived copy of it exists" in err
    finally:
        shutil.move(tmp_path / "GP", gp)
    assert not (tmp_path / "t.ms").exists()


def test_lean_copy_keeps_a_weight_spectrum_that_is_not_weight_and_never_places_a_bad_copy(archived_night,
                                                                                          tmp_path, monkeypatch):
    from contimg import archive as arc

    src = tmp_path / "c.ms"
    shutil.copytree(archived_night["ms"]["c"], src)
    with table(str(src), ack=False, readonly=False) as t:
        cell = t.getcell("WEIGHT_SPECTRUM", 3)
        cell[1, 0] *= 0.5  # one channel with fewer samples
        t.putcell("WEIGHT_SPECTRUM", 3, cell)
    plan = arc.lean_plan(src)
    assert plan.dropped == ("MODEL_DATA", "CORRECTED_DATA") and "WEIGHT_SPECTRUM" in plan.kept
    # a copy killed half way left its temporary directory: removed by the next copy
    partial = tmp_path / "archive" / f".c.ms{arc.PARTIAL_MARK}deadbeef"
    shutil.copytree(src, partial)
    result = arc.archive_ms(src, tmp_path / "archive" / "c.ms")
    assert result.copied and arc.verify_lean(src, result.dest) == [] and not partial.exists()
    assert arc.archive_ms(src, result.dest).copied is False  # a rerun keeps the verified copy
    restored = tmp_path / "back.ms"
    arc.copy_tree(result.dest, restored)
    assert arc.expand_lean_ms(restored) == ["MODEL_DATA", "CORRECTED_DATA"]
    with table(str(restored), ack=False) as t, table(str(src), ack=False) as s:
        assert _bits_equal(t.getcol("WEIGHT_SPECTRUM"), s.getcol("WEIGHT_SPECTRUM"))

    # a copy whose DATA reaches the disk wrong is never put in place; the source is untouched
    real_copy = arc.copy_file
    data_file = next(f"table.f{v['SEQNR']}_TSM0" for v in table(str(src), ack=False).getdminfo().values()
                     if v["COLUMNS"] == ["DATA"])

    def flipping_copy(a, b):
        real_copy(a, b)
        if Path(a).name == data_file:
            with open(b, "r+b") as fh:
                fh.seek(100)
                byte = fh.read(1)
                fh.seek(100)
                fh.write(bytes([byte[0] ^ 0x01]))

    monkeypatch.setattr(arc, "copy_file", flipping_copy)
    with pytest.raises(arc.ArchiveVerificationError, match="SHA-256 differs"):
        arc.archive_ms(src, tmp_path / "archive2" / "c.ms")
    assert not (tmp_path / "archive2" / "c.ms").exists() and list((tmp_path / "archive2").iterdir()) == []
