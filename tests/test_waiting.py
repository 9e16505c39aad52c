"""Waiting for calibration ends (issue 22): by data time and by the wall clock, then ``uncalibrated``.

The decision (``tasks.waiting.wait_ended``) is checked on plain rows, without
Prefect; the sweeps on a real catalog, real Prefect flows called directly and
small simulated groups (the fixtures of test_pipeline_flows and test_night).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from tasks.waiting import UNCALIBRATED, WAITING, group_id_mjd, newest_data_mjd, wait_ended, waiting_since

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
GROUP = "2026-12-01T03:00:00"
T = group_id_mjd(GROUP)


def _row(stage=WAITING, **extra):
    return {"group_id": GROUP, "stage": stage, "mid_mjd": T + 150 / 86400, "start_mjd": T, **extra}


def _history(*stages_hours_ago):
    return [{"stage": s, "recorded_at": NOW - timedelta(hours=h), "event_id": f"{i:02d}"}
            for i, (s, h) in enumerate(stages_hours_ago)]


def _ended(row=None, *, history=(), newest_mjd=None, horizon=3.0, max_wait=24.0):
    return wait_ended(row or _row(), history=history, newest_mjd=newest_mjd, now=NOW, horizon_hours=horizon,
                      max_wait_hours=max_wait)


# --- the decision, on rows ---------------------------------------------------

def test_waiting_ends_once_converted_data_pass_the_horizon():
    mid = _row()["mid_mjd"]
    assert _ended(newest_mjd=mid + 2.9 / 24) is None
    assert _ended(newest_mjd=mid + 3.0 / 24) is None  # "past": strictly later
    reason = _ended(newest_mjd=mid + 3.1 / 24)
    assert "2026-12-01T03:02:30 + 3 h (cal_wait_horizon_hours)" in reason and "06:08:30" in reason
    assert _ended(newest_mjd=mid + 30 / 24, horizon=-1) is None  # negative: no data-time rule


def test_waiting_ends_after_the_wall_clock_limit_of_the_current_wait():
    assert _ended(history=_history((WAITING, 23))) is None
    reason = _ended(history=_history((WAITING, 25), (WAITING, 1)))  # found waiting again: the clock runs on
    assert "25 h of waiting since 2026-11-30T11:00:00 (cal_wait_max_hours 24)" in reason
    assert _ended(history=_history((WAITING, 25)), max_wait=-1) is None  # negative: no limit
    # woken by hand after it ended, waiting again: a new wait, a new clock
    again = _history((WAITING, 40), (UNCALIBRATED, 30), (WAITING, 2))
    assert waiting_since(again) == NOW - timedelta(hours=2) and _ended(history=again) is None
    assert waiting_since(_history((WAITING, 3), (UNCALIBRATED, 1))) is None


def test_only_a_waiting_group_ends_and_a_row_without_times_uses_its_group_id():
    assert _ended(_row(UNCALIBRATED), newest_mjd=T + 1) is None
    bare = {"group_id": GROUP, "stage": WAITING, "mid_mjd": None, "start_mjd": None}
    assert "2026-12-01T03:00:00 + 3 h" in _ended(bare, newest_mjd=T + 3.1 / 24)
    assert newest_data_mjd([bare, {"group_id": "2010-05-01T00:00:00"}]) == pytest.approx(T)
    assert newest_data_mjd([]) is None and _ended(newest_mjd=None) is None


def test_status_shows_uncalibrated_groups_with_the_whole_reason(settings, capsys):
    from catalog import status, store
    from contimg_cli.main import main

    why = "no caltable set covers it and converted data reach 2026-12-01T06:08:30, past its time ... " * 2
    store.append(settings.catalog_dir, "ms_index", [
        {"group_id": GROUP, "obs_date": GROUP[:10], "path": "/ms/a.ms", "stage": UNCALIBRATED, "error": why}])
    (row,) = status.summary(settings.catalog_dir)["uncalibrated"]
    assert (row["group_id"], row["reason"]) == (GROUP, why)
    assert main(["status", "--catalog-dir", str(settings.catalog_dir)]) == 0
    out = capsys.readouterr().out
    assert "uncalibrated=1" in out and f"{GROUP}  {why.rstrip()}" in out and "--force" in out


# --- the sweeps, on real flows -------------------------------------------------

def _runs(catalog_dir, group_id) -> dict:
    """How often a group was run: target flow runs in Prefect, applycal stage runs and ms_index rows."""
    from test_night import _flow_runs
    from test_pipeline_flows import _count

    where = f"WHERE group_id = '{group_id}'"
    return {"flow_runs": len(_flow_runs(f"target-{group_id}")),
            "applycal": _count(catalog_dir, f"SELECT count(*) AS n FROM stage_runs_all {where} AND stage = 'applycal'"),
            "ms_index": _count(catalog_dir, f"SELECT count(*) AS n FROM ms_index_all {where}")}


def _stage(catalog_dir, group_id) -> dict:
    from catalog import query

    return query.latest(catalog_dir, "ms_index", group_id=group_id)[0]


def test_waiting_ends_by_data_time_then_only_a_covering_registration_wakes_it(pipeline_env, prefect_server,
                                                                           monkeypatch):
    from catalog import status
    from contimg.config import load_settings
    from flows.calibrator_group import calibrator_group
    from flows.ingest_group import ingest_group
    from flows.process_group import process_converted
    from flows.target_group import target_group, wake_waiting
    from tasks.calibration import applylist_at
    from test_night import _arrive
    from test_pipeline_flows import _simulate

    base = pipeline_env
    catalog_dir, night, incoming = base / "catalog", base / "night", base / "incoming"
    incoming.mkdir(parents=True)
    monkeypatch.setenv("CONTIMG_FLAG_TARGETS", "false")  # flagging is not the point here
    # groups 78 s apart: the calibrator group starts ~39 s after the first target's mid time, the second
    # target ~117 s after it; a horizon of 72 s lies between
    monkeypatch.setenv("CONTIMG_CAL_WAIT_HORIZON_HOURS", "0.02")
    first, cal, last = _simulate(night, date="2026-12-01")  # own date: own group ids on the shared server
    _arrive(night, incoming, [first, cal])
    assert ingest_group() == {first: "converted", cal: "converted"}
    assert target_group(first)["state"] == "waiting_for_cal"

    # converted data reach the calibrator group only: within the horizon, the group keeps waiting
    assert wake_waiting() == {first: "still_waiting"}
    assert _stage(catalog_dir, first)["stage"] == WAITING
    before = _runs(catalog_dir, first)
    assert before == {"flow_runs": 1, "applycal": 1, "ms_index": 2}

    # a group past the horizon is converted: the sweep records the first one uncalibrated, runs nothing
    _arrive(night, incoming, [last])
    assert ingest_group()[last] == "converted"
    assert wake_waiting() == {first: UNCALIBRATED}
    row = _stage(catalog_dir, first)
    assert row["stage"] == UNCALIBRATED and not row["cal_applied"] and row["mid_mjd"] is not None
    assert "+ 0.02 h (cal_wait_horizon_hours)" in row["error"] and "; last lookup: no calibration for MJD" in row["error"]
    assert [r["group_id"] for r in status.summary(catalog_dir)["uncalibrated"]] == [first]
    after = {**before, "ms_index": 3}
    assert _runs(catalog_dir, first) == after

    # no sweep starts a run for it again, not even once a set covers it
    assert wake_waiting() == {}
    out = calibrator_group(cal)
    assert out["state"] == "active", out["reasons"]
    set_name = out["set_name"]
    settings = load_settings()
    assert set_name in applylist_at(settings, row["mid_mjd"]).set_names  # the new set covers it
    assert wake_waiting() == {cal: "imaged"}  # the periodic sweep: the calibrator group, not the uncalibrated one
    assert process_converted() == {last: "imaged"}
    assert _runs(catalog_dir, first) == after

    # the registration of a set that covers it wakes it
    assert wake_waiting(set_name) == {first: "imaged"}
    row = _stage(catalog_dir, first)
    assert row["stage"] == "imaged" and row["caltable_set"] == set_name
    assert _runs(catalog_dir, first)["flow_runs"] == 2


def test_waiting_ends_by_the_wall_clock_and_run_target_force_still_runs_it(pipeline_env, prefect_server,
                                                                          monkeypatch, capsys):
    from contimg_cli.main import main
    from flows.ingest_group import ingest_group
    from flows.process_group import process_converted
    from flows.target_group import target_group, wake_waiting
    from test_pipeline_flows import _simulate

    base = pipeline_env
    catalog_dir = base / "catalog"
    monkeypatch.setenv("CONTIMG_FLAG_TARGETS", "false")
    (group,) = _simulate(base / "incoming", n_groups=1, date="2026-12-02")  # no later data will come
    assert ingest_group() == {group: "converted"}
    assert target_group(group)["state"] == "waiting_for_cal"
    monkeypatch.setenv("CONTIMG_CAL_WAIT_MAX_HOURS", "1")
    assert wake_waiting() == {group: "still_waiting"}

    monkeypatch.setenv("CONTIMG_CAL_WAIT_MAX_HOURS", "0.0001")  # 0.36 s
    time.sleep(0.5)
    assert wake_waiting() == {group: UNCALIBRATED}
    row = _stage(catalog_dir, group)
    assert row["stage"] == UNCALIBRATED and "(cal_wait_max_hours 0.0001)" in row["error"]
    ended = _runs(catalog_dir, group)
    assert ended == {"flow_runs": 1, "applycal": 1, "ms_index": 3}
    assert wake_waiting() == {} and process_converted() == {}
    assert _runs(catalog_dir, group) == ended

    # by hand it always runs: no set yet, so it waits again, on a new clock
    capsys.readouterr()
    assert main(["run", "target", group, "--force"]) == 0
    assert f"{group}  waiting_for_cal" in capsys.readouterr().out
    assert _stage(catalog_dir, group)["stage"] == WAITING
    assert _runs(catalog_dir, group) == {"flow_runs": 2, "applycal": 2, "ms_index": 4}
    monkeypatch.setenv("CONTIMG_CAL_WAIT_MAX_HOURS", "1")
    assert wake_waiting() == {group: "still_waiting"}

    # the case: `contimg applycal` on an MS this catalog never converted (another instance's, an old
    # one) records its times with the wait, so the periodic sweep knows no set covers it and starts no run
    from contimg.config import load_settings
    from contimg.errors import NoCalibrationError
    from tasks.calibration import apply_group

    other = load_settings(base_dir=base.parent / "other")
    other.ensure_dirs()
    ms = _stage(catalog_dir, group)["path"]
    with pytest.raises(NoCalibrationError, match="no calibration for MJD"):
        apply_group(other, ms)
    recorded = _stage(other.catalog_dir, group)
    assert recorded["stage"] == WAITING and recorded["mid_mjd"] == pytest.approx(row["mid_mjd"], abs=1e-5)
    assert wake_waiting(base_dir=str(other.base_dir)) == {group: "still_waiting"}
    assert _runs(catalog_dir, group)["flow_runs"] == 2
