"""Mosaics from the catalog: a window's imaged groups, the missing ones with why, the mosaics row, idempotence,
the flow and ``contimg mosaic``.

An hour of 12 synthetic groups (08:00:00 to 08:56:41, every 309.24 s) written through the products writer,
recorded as the imaging task records them (``ms_index`` stage ``imaged``, ``images`` rows with the noise), except:
group 4 ``failed`` (flagging), group 7 only ``incomplete`` in ingest, group 11 never recorded (an empty slot of
the cadence).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from catalog import query, store
from contimg import naming
from contimg.simulate.images import write_group_images

HOUR = (datetime(2026, 11, 25, 8), datetime(2026, 11, 25, 9))
FAILED, INCOMPLETE, ABSENT = 4, 7, 11
GEOMETRY = dict(imsize=192, cell_arcsec=100.0, beam_arcsec=(800.0, 600.0, 0.0), n_groups=12, noise_jy=3e-4,
                dec_deg=54.6, ra0_deg=120.0)


def _record_imaged(settings, g, stage="imaged"):
    date = naming.group_date(g.group_id)
    ms = str(naming.ms_path(settings.products_dir, g.group_id))
    store.append(settings.catalog_dir, "ms_index", [{"group_id": g.group_id, "obs_date": date, "path": ms,
                                                      "stage": stage, "image_name": str(g.prefix)}])
    store.append(settings.catalog_dir, "images", [
        {"path": str(naming.image_product_path(g.prefix, kind)), "type": kind, "group_id": g.group_id,
         "obs_date": date, "noise_jy": g.noise_jy, "ms_path": ms} for kind in ("image", "pb", "pbcor")])


def _record_hour(settings, groups, *, waiting=None):
    for i, g in enumerate(groups):
        date = naming.group_date(g.group_id)
        if i == ABSENT:
            continue
        if i == INCOMPLETE:
            store.append(settings.catalog_dir, "groups", [{"group_id": g.group_id, "obs_date": date,
                                                            "state": "incomplete", "reason": "sb03 missing"}])
            continue
        if i == FAILED:
            store.append(settings.catalog_dir, "ms_index", [{
                "group_id": g.group_id, "obs_date": date, "path": "x.ms", "stage": "failed",
                "error": "81 % flagged (max_flagged_fraction 0.5)"}])
            continue
        if i == waiting:
            store.append(settings.catalog_dir, "ms_index", [{"group_id": g.group_id, "obs_date": date,
                                                              "path": "x.ms", "stage": "waiting_for_cal"}])
            continue
        _record_imaged(settings, g)


@pytest.fixture(scope="module")
def hour_images(tmp_path_factory):
    return write_group_images(tmp_path_factory.mktemp("hour") / "products", [(125.0, 54.6, 0.1), (127.0, 55.2, 0.05)],
                              **GEOMETRY)


@pytest.fixture
def hour(settings, hour_images):
    _record_hour(settings, hour_images)
    return hour_images


def test_window_lists_the_used_and_the_missing_with_why(settings, hour):
    from tasks.mosaic import window_closed, window_inputs

    inputs = window_inputs(settings, *HOUR)
    used = [g.group_id for g in inputs.used]
    assert used == [g.group_id for i, g in enumerate(hour) if i not in (FAILED, INCOMPLETE, ABSENT)]
    assert inputs.used[0].noise_jy == pytest.approx(hour[0].noise_jy)
    why = dict(inputs.missing)
    assert why[hour[FAILED].group_id].startswith("failed: 81 % flagged")
    assert why[hour[INCOMPLETE].group_id] == "not converted: incomplete (sb03 missing)"
    (slot,) = [g for g, reason in inputs.missing if reason == "no group recorded in this slot of the cadence"]
    # where the slot is: the cadence continued from the first group (its median spacing, in whole seconds)
    assert abs((naming.parse_group_id(slot) - naming.parse_group_id(hour[ABSENT].group_id)).total_seconds()) < 10
    assert len(inputs.missing) == 3 and inputs.n_expected == 12 and not inputs.pending
    assert window_closed(settings, inputs, now=datetime(2026, 11, 25, 9, 40))  # settled
    assert not window_closed(settings, inputs, now=datetime(2026, 11, 25, 9, 5))  # slot 11 may still come


def test_partial_mosaic_is_recorded_once_and_found_by_the_hour(settings, hour):
    from tasks.mosaic import hours_to_mosaic, make_mosaic

    now = datetime(2026, 11, 26)
    assert hours_to_mosaic(settings, now=now) == [HOUR]
    row = make_mosaic(settings, *HOUR)
    assert row["mosaic_id"] == "2026-11-25T080000-9g" and row["status"] == "partial" and not row["skipped"]
    assert len(row["missing"]) == 3 and row["n_expected"] == 12
    where = naming.mosaic_prefix(settings.products_dir, row["mosaic_id"]).parent
    for key in ("image_path", "weight_path", "noise_path", "png_path", "sources_path"):
        assert Path(row[key]).parent == where and Path(row[key]).is_file(), key
    assert row["n_sources"] >= 2
    # its detections are catalog rows (forced photometry's default reference), and it is measured at them
    mosaic_rows = query.query(settings.catalog_dir, "SELECT * FROM sources WHERE image_kind = 'mosaic'").to_pylist()
    assert len(mosaic_rows) == row["n_sources"] and {r["mosaic_id"] for r in mosaic_rows} == {row["mosaic_id"]}
    measured = query.query(settings.catalog_dir, "SELECT * FROM photometry WHERE mosaic_id = ?",
                           [row["mosaic_id"]]).to_pylist()
    assert len(measured) >= 2 and all(r["image_kind"] == "mosaic" and r["mid_mjd"] for r in measured)
    bright = max(measured, key=lambda r: r["snr"])
    assert bright["peak_jy"] == pytest.approx(0.1, rel=0.05)  # the 0.1 Jy source of hour_images
    # "the mosaics of this hour": the query of docs/catalog.md, for the hour holding 08:30
    text = (Path(__file__).resolve().parents[1] / "docs" / "catalog.md").read_text()
    [sql] = [b for b in re.findall(r"```sql\n(.*?)```", text, re.S) if "FROM mosaics" in b]
    found = query.query(settings.catalog_dir, sql.replace("2025-03-01 00:30:00", "2026-11-25 08:30:00")).to_pylist()
    assert [r["mosaic_id"] for r in found] == [row["mosaic_id"]] and found[0]["n_groups"] == 9
    assert found[0]["noise_mjy"] == pytest.approx(found[0]["expected_mjy"], rel=0.3)
    assert not query.query(settings.catalog_dir, sql.replace("2025-03-01 00:30:00", "2026-11-25 09:30:00")).num_rows
    # idempotent: the same groups again are not redone, and the sweep has nothing left
    again = make_mosaic(settings, *HOUR)
    assert again["skipped"] and again["image_path"] == row["image_path"]
    assert query.query(settings.catalog_dir, "SELECT count(*) AS n FROM mosaics_all").to_pylist()[0]["n"] == 1
    assert hours_to_mosaic(settings, now=now) == []


def test_a_window_another_run_is_making_is_refused(settings, hour):
    from contimg import lease
    from tasks.mosaic import MosaicHeldError, make_mosaic

    held = lease.try_acquire(naming.mosaic_lease_path(settings.scratch_dir, "2026-11-25T08:00:00"), 60.0)
    with held, pytest.raises(MosaicHeldError, match="another run is making this window's mosaic"):
        make_mosaic(settings, *HOUR, find_sources=False)
    assert make_mosaic(settings, *HOUR, find_sources=False)["status"] == "partial"  # released: made


def test_no_imaged_group_is_a_clear_error(settings):
    from contimg.errors import InvalidInputError
    from tasks.mosaic import make_mosaic

    with pytest.raises(InvalidInputError, match="no imaged group in"):
        make_mosaic(settings, *HOUR)


def test_cli_prints_used_and_missing_and_errors_without_traceback(settings, hour, monkeypatch, capsys, tmp_path):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    out_dir = tmp_path / "out"
    assert main(["mosaic", "--start", "2026-11-25T08:00", "--end", "2026-11-25T09:00", "--out", str(out_dir),
                 "--no-sources"]) == 0
    text = capsys.readouterr().out
    assert "9 group(s) used of 12 expected" in text
    assert f"missing: {hour[FAILED].group_id}: failed: 81 % flagged" in text
    assert (out_dir / "2026-11-25T080000-9g-image.fits").is_file()
    assert main(["mosaic", "--start", "2026-11-25T10:00", "--end", "2026-11-25T11:00"]) == 2
    err = capsys.readouterr().err
    assert "contimg mosaic: error: no imaged group in [2026-11-25T10:00:00, 2026-11-25T11:00:00)" in err
    assert "Traceback" not in err
    assert main(["mosaic", "--start", "yesterday"]) == 2
    assert "is not a UTC time" in capsys.readouterr().err


def _n_rows(settings, table):
    """Rows of a catalog table (0 when nothing was ever written to it)."""
    try:
        return query.query(settings.catalog_dir, f"SELECT count(*) AS n FROM {table}_all").to_pylist()[0]["n"]
    except Exception:  # noqa: BLE001 - no file of the table yet
        return 0


CLI_HOUR = ["mosaic", "--start", "2026-11-25T08:00", "--end", "2026-11-25T09:00"]


def test_cli_mosaic_out_elsewhere_is_not_recorded_and_the_hour_is_still_made(settings, hour, monkeypatch, capsys,
                                                                             tmp_path):
    """``contimg mosaic --out SCRATCH`` writes the mosaic and its sources but records nothing (no mosaics,
    sources, photometry or stage_runs rows), so the sweep still finds the hour due and the pipeline's mosaic is
    made into the products tree; the command says so, and names the catalog's mosaic of the hour once there is
    one."""
    from contimg_cli.main import main
    from tasks.mosaic import hours_to_mosaic, make_mosaic

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    scratch = tmp_path / "scratch"
    assert main([*CLI_HOUR, "--out", str(scratch)]) == 0
    assert (scratch / "2026-11-25T080000-9g-image.fits").is_file()
    assert (scratch / "2026-11-25T080000-9g-sources.parquet").is_file()
    assert {t: _n_rows(settings, t) for t in ("mosaics", "sources", "photometry", "stage_runs")} == dict.fromkeys(
        ("mosaics", "sources", "photometry", "stage_runs"), 0)
    where = naming.mosaic_prefix(settings.products_dir, "2026-11-25T080000-9g").parent
    out = capsys.readouterr().out
    assert f"not recorded in the catalog: {scratch.resolve()} is not the pipeline's mosaic directory ({where})" in out
    assert "no catalog mosaic covers this window" in out
    # the pipeline's mosaic of the hour is still due, and made where naming puts it
    assert hours_to_mosaic(settings, now=datetime(2026, 11, 26)) == [HOUR]
    row = make_mosaic(settings, *HOUR, find_sources=False)
    assert not row["skipped"] and Path(row["image_path"]).parent == where and Path(row["image_path"]).is_file()
    # another ad-hoc run names it
    assert main([*CLI_HOUR, "--out", str(scratch), "--no-sources"]) == 0
    assert f"the catalog's mosaic covering this window: {row['mosaic_id']} ({row['image_path']})" in capsys.readouterr().out
    assert _n_rows(settings, "mosaics") == 1


def test_an_ad_hoc_mosaic_does_not_take_the_window_lease(settings, hour, tmp_path):
    """The lease is the recorded mosaic's: an ad-hoc run neither waits for it nor keeps the pipeline from it."""
    from contimg import lease
    from tasks.mosaic import make_mosaic

    held = lease.try_acquire(naming.mosaic_lease_path(settings.scratch_dir, "2026-11-25T08:00:00"), 60.0)
    with held:
        row = make_mosaic(settings, *HOUR, out_dir=tmp_path / "scratch", find_sources=False)
    assert not row["recorded"] and Path(row["image_path"]).is_file() and _n_rows(settings, "mosaics") == 0


def test_a_recorded_ad_hoc_mosaic_does_not_stand_for_the_hour(settings, hour, tmp_path):
    """A catalog written before ad-hoc mosaics were left out of it may hold one (its file on disk): the sweep
    still finds the hour due and make_mosaic makes the pipeline's mosaic instead of reporting it made."""
    from tasks.mosaic import _make, hours_to_mosaic, make_mosaic, window_inputs

    inputs = window_inputs(settings, *HOUR)
    old = _make(settings, inputs, "2026-11-25T080000-9g", "2026-11-25T08:00:00", *HOUR,
                prefix=tmp_path / "scratch" / "2026-11-25T080000-9g", record=True, find_sources=False)
    assert Path(old["image_path"]).is_file() and _n_rows(settings, "mosaics") == 1  # as the old code recorded it
    assert hours_to_mosaic(settings, now=datetime(2026, 11, 26)) == [HOUR]
    row = make_mosaic(settings, *HOUR, find_sources=False)
    assert not row["skipped"] and row["image_path"] == str(naming.mosaic_product_path(
        naming.mosaic_prefix(settings.products_dir, row["mosaic_id"]), "image"))
    assert make_mosaic(settings, *HOUR, find_sources=False)["skipped"]
    assert hours_to_mosaic(settings, now=datetime(2026, 11, 26)) == []


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "out-is-the-mosaic-dir"])
def test_cli_mosaic_into_the_mosaic_dir_is_recorded(settings, hour, monkeypatch, capsys, explicit):
    """Without --out (or with naming's own mosaic directory) the mosaic is the hour's product, as before."""
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    where = naming.mosaic_prefix(settings.products_dir, "2026-11-25T080000-9g").parent
    assert main([*CLI_HOUR, "--no-sources", *(["--out", str(where)] if explicit else [])]) == 0
    assert "not recorded" not in capsys.readouterr().out
    (row,) = query.query(settings.catalog_dir, "SELECT * FROM mosaics").to_pylist()
    assert row["mosaic_id"] == "2026-11-25T080000-9g" and Path(row["image_path"]).parent == where


def test_flow_waits_for_a_pending_group_then_makes_the_hour(settings, hour_images, prefect_server):
    """The event path: while a group of the hour waits for calibration the hour is not closed (nothing made);
    once it is imaged, the event of any group of the hour makes the mosaic, and a second event does nothing new."""
    from flows.mosaic import mosaic

    _record_hour(settings, hour_images, waiting=2)
    assert mosaic(group_id=hour_images[0].group_id, base_dir=str(settings.base_dir)) == []
    _record_imaged(settings, hour_images[2])
    rows = mosaic(group_id=hour_images[2].group_id, base_dir=str(settings.base_dir))
    assert [r["mosaic_id"] for r in rows] == ["2026-11-25T080000-9g"] and not rows[0]["skipped"]
    again = mosaic(group_id=hour_images[5].group_id, base_dir=str(settings.base_dir))
    assert [r["skipped"] for r in again] == [True]
    # by hand, a window with nothing imaged: the run fails and says why
    with pytest.raises(RuntimeError, match=r"1 of 1 mosaic\(s\) failed: 2026-11-25T10:00: .*no imaged group"):
        mosaic(start="2026-11-25T10:00", end="2026-11-25T11:00", base_dir=str(settings.base_dir))


def test_windows_times_hours_and_empty_slots():
    from contimg.mosaic.windows import CADENCE_S, cadence_of, empty_slots, hour_window, parse_time

    assert parse_time("2026-11-25T08:00") == parse_time("2026-11-25 08:00:00Z") == datetime(2026, 11, 25, 8)
    with pytest.raises(ValueError, match="is not a UTC time"):
        parse_time("2026-11-25T25:00")
    assert hour_window("2026-11-25T08:59:59") == HOUR
    # 12 groups every 309.24 s with jitter, the 6th absent: one empty slot, there; a gap does not stretch the cadence
    starts = [datetime(2026, 11, 25, 8, 0, 3) + timedelta(seconds=k * CADENCE_S + k % 3)
              for k in range(12) if k != 5]
    ids = [naming.group_id_from_datetime(t) for t in starts]
    assert cadence_of(starts) == pytest.approx(CADENCE_S, abs=1.5)
    (slot,) = empty_slots(ids, *HOUR)
    assert abs((naming.parse_group_id(slot) - datetime(2026, 11, 25, 8, 25, 49)).total_seconds()) < 5
    assert empty_slots(ids[:1] + ids[-1:], *HOUR)  # two groups far apart: the slots between them are empty
    assert empty_slots([], *HOUR) == []
