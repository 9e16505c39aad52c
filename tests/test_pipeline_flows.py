"""The calibrator and target flows on a real (ephemeral) Prefect server, a real catalog and three
small simulated groups, J0834+5534 transiting the middle one."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

CALIBRATOR = "J0834+5534"
DEC_DEG = 54.5734
DATE = "2026-11-27"


def _simulate(incoming, n_groups=3, *, date=DATE):
    """``n_groups`` small groups, the calibrator transiting the middle one, on ``date`` (the group ids
    are the events' resources on the session's shared server: tests that emit events use their own date)."""
    from astropy.time import Time, TimeDelta

    from contimg.simulate import group_cadence_s, scale_preset, simulate_group, transit_start_time
    from contimg.sky.catalog import find_calibrator

    preset = scale_preset("small")
    cal = find_calibrator(CALIBRATOR)
    middle = transit_start_time(cal.ra_deg, date, dec_deg=cal.dec_deg, n_times=preset["n_times"])
    cadence = group_cadence_s(preset["n_times"])
    first = Time(middle) - TimeDelta(cadence * (n_groups // 2), format="sec")
    return [simulate_group(incoming, first + TimeDelta(cadence * i, format="sec"), pointing_dec_deg=DEC_DEG,
                           seed=0, **preset).group_id for i in range(n_groups)]


def _events(group_ids, prefix, *, want, wait_s=30.0):
    """(event, group id, payload) the Prefect server has received for these groups."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()

    async def read():
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={"filter": {"event": {"prefix": [prefix]},
                                 "resource": {"id": [f"contimg.group.{g}" for g in group_ids]}},
                      "limit": 50})
            return response.json()["events"]

    deadline = time.monotonic() + wait_s
    while True:
        found = [(e["event"], e["resource"]["prefect.resource.name"], e["payload"]) for e in asyncio.run(read())]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _count(catalog_dir, sql):
    from catalog import query

    return query.query(catalog_dir, sql).to_pylist()[0]["n"]


def test_targets_wait_for_the_calibrator_then_are_woken_and_imaged_once(pipeline_env, prefect_server, monkeypatch):
    from catalog import cal_registry, query
    from contimg.sky.selection import classify_group
    from flows.calibrator_group import calibrator_group
    from flows.ingest_group import ingest_group
    from flows.process_group import process_converted, process_group
    from flows.target_group import target_group, wake_waiting

    base = pipeline_env
    catalog_dir = base / "catalog"
    groups = _simulate(base / "incoming")
    assert ingest_group() == {g: "converted" for g in groups}
    kinds = [classify_group(sorted((base / "incoming").glob(f"{g}_sb*.hdf5"))[0]).kind for g in groups]
    assert kinds == ["target", "calibrator", "target"]
    targets, cal = [groups[0], groups[2]], groups[1]

    # Before any calibration: the target waits, and waiting is not a failure.
    state = target_group(targets[0], return_state=True)
    assert state.is_completed()
    assert state.result()["state"] == "waiting_for_cal"
    assert target_group(targets[1])["state"] == "waiting_for_cal"
    ms = {r["group_id"]: r for r in query.latest(catalog_dir, "ms_index")}
    assert {g: ms[g]["stage"] for g in targets} == {g: "waiting_for_cal" for g in targets}
    assert _count(catalog_dir, "SELECT count(*) AS n FROM ms_index_all WHERE stage = 'failed'") == 0
    assert _count(catalog_dir, "SELECT count(*) AS n FROM stage_runs WHERE status = 'failed'") == 0
    assert _count(catalog_dir, "SELECT count(*) AS n FROM images_all") == 0
    # with no set registered, waking runs nothing and records nothing
    rows = _count(catalog_dir, "SELECT count(*) AS n FROM ms_index_all")
    assert wake_waiting() == {g: "still_waiting" for g in targets}
    assert _count(catalog_dir, "SELECT count(*) AS n FROM ms_index_all") == rows

    # A set that fails the QA gate is registered rejected, says why, and wakes nobody.
    monkeypatch.setenv("CONTIMG_GAIN_MIN_SNR", "1e9")
    rejected = calibrator_group(cal, return_state=True)
    assert rejected.is_completed()
    rejected = rejected.result()
    # (solutions below the SNR limit are flagged: the gate sees them all flagged)
    assert rejected["state"] == "rejected" and any(r.startswith("GP: 100% of solutions flagged")
                                                   for r in rejected["reasons"])
    (event,) = _events([cal], "contimg.calset.", want=1)
    assert event[:2] == ("contimg.calset.rejected", cal) and event[2]["set_name"] == rejected["set_name"]
    assert event[2]["reason"] == "; ".join(rejected["reasons"])
    assert wake_waiting() == {g: "still_waiting" for g in targets}
    assert cal_registry.list_sets(catalog_dir, status="active") == []
    monkeypatch.delenv("CONTIMG_GAIN_MIN_SNR")

    # The calibrator group registers an active set and says so.
    out = calibrator_group(cal)
    assert out["state"] == "active", out["reasons"]
    set_name = out["set_name"]
    assert set_name.startswith(cal.replace(":", "")) and out["mid_mjd"] == pytest.approx(ms[cal]["mid_mjd"], abs=1e-3)
    (event,) = [e for e in _events([cal], "contimg.calset.registered", want=1)]
    assert event[2]["set_name"] == set_name and event[2]["status"] == "active"
    assert float(event[2]["mid_mjd"]) == pytest.approx(out["mid_mjd"])
    assert calibrator_group(cal)["state"] == "already_active"  # rerun: nothing solved, nothing emitted

    # The converted-group route: the calibrator group, calibrated but never imaged, is the one unfinished
    # group of the safety-net sweep (the targets wait for a registration), and is imaged with its own set.
    assert process_converted() == {cal: "imaged"}
    ms = {r["group_id"]: r for r in query.latest(catalog_dir, "ms_index")}
    assert ms[cal]["stage"] == "imaged" and ms[cal]["caltable_set"] == set_name
    assert _count(catalog_dir, f"SELECT count(*) AS n FROM images_all WHERE group_id = '{cal}'") > 0
    assert process_converted() == {}

    # The reaction to the registration: every waiting target is applied the registered set and imaged.
    assert wake_waiting(set_name) == {g: "imaged" for g in targets}
    ms = {r["group_id"]: r for r in query.latest(catalog_dir, "ms_index")}
    for g in targets:
        assert ms[g]["stage"] == "imaged" and ms[g]["cal_applied"] and ms[g]["caltable_set"] == set_name
    # every imaged group flagged once, before applycal: the targets on their first (waiting) run, not again
    # when woken; the calibrator group by its calibration (its report, stage calibrate, counts)
    flag_runs = query.query(catalog_dir, "SELECT group_id, count(*) AS n FROM stage_runs_all WHERE stage = 'flag' "
                                         "GROUP BY group_id").to_pylist()
    assert {r["group_id"]: r["n"] for r in flag_runs} == {g: 1 for g in targets}
    images = query.query(catalog_dir, "SELECT group_id, type, caltable_set FROM images_all").to_pylist()
    assert {r["group_id"] for r in images} == {*targets, cal}
    # forced photometry ran after each imaging: skipped, no reference yet (source finding is off here)
    photometry = query.query(catalog_dir, "SELECT group_id, status, error FROM stage_runs_all "
                                          "WHERE stage = 'photometry'").to_pylist()
    assert {r["group_id"]: (r["status"], r["error"]) for r in photometry} == {
        g: ("skipped", "no reference sources cover the image") for g in (*targets, cal)}
    assert {r["caltable_set"] for r in images} == {set_name}
    assert {r["type"] for r in images} >= {"image", "pbcor", "pb", "png"}

    # What an operator reads in the UI: a summary per group, the set's QA table, links to the products.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.artifacts import artifact_key

    def latest_artifact(key):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return max(found, key=lambda a: a.created)

    summary = latest_artifact(artifact_key("group", targets[0])).data
    assert f"# Group {targets[0]}: imaged" in summary and f"| calibration set | {set_name} |" in summary
    assert "| applycal | completed |" in summary and "mJy/beam" in summary and "-pbcor.fits](http://" in summary
    assert "| flag | completed |" in summary and "## Flagging" in summary and "(limit 50 %)" in summary
    qa_table = latest_artifact(artifact_key("calset", set_name)).data
    assert {row["type"] for row in json.loads(qa_table)} >= {"K", "B"}
    link = latest_artifact(artifact_key("pbcor", targets[0]))
    assert link.type == "markdown" or link.type == "link"
    # products over HTTP (issue 21): /products/<path under products_dir> (served in tests/test_products_http.py)
    target_path = base / "products" / link.data.rsplit("/products/", 1)[1].rstrip(")")
    assert target_path.name.endswith("-pbcor.fits") and target_path.exists()

    # Reruns change nothing: no duplicate images, no new rows, nothing left waiting.
    counts = {t: _count(catalog_dir, f"SELECT count(*) AS n FROM {t}_all") for t in ("ms_index", "images")}
    again = target_group(targets[0])
    assert again["state"] == "imaged" and again["detail"] == "already imaged" and again["caltable_set"] == set_name
    routed = process_group(targets[0])
    assert routed["kind"] == "target" and routed["target"]["detail"] == "already imaged"
    assert wake_waiting() == {} and process_converted() == {}
    assert {t: _count(catalog_dir, f"SELECT count(*) AS n FROM {t}_all") for t in ("ms_index", "images")} == counts


def test_run_target_of_a_group_never_converted_is_one_line_and_records_nothing(settings, monkeypatch, capsys,
                                                                               prefect_server):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    assert main(["run", "target", "2026-01-01T00:00:00"]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "2026-01-01T00:00:00: no MS at" in err and "Traceback" not in err
    assert main(["run", "wake"]) == 0
    assert "no group is waiting for calibration" in capsys.readouterr().out
    assert not any((settings.catalog_dir / t).exists() and any((settings.catalog_dir / t).rglob("part-*.parquet"))
                   for t in ("ms_index", "stage_runs"))
