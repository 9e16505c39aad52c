"""The ingest_group flow on a real (ephemeral) Prefect server and a real catalog."""

from __future__ import annotations

import json
import os


from contimg import naming, simulate
from contimg.simulate import badinput


SMALL = dict(n_subbands=16, n_channels=4, n_times=4, n_antennas=8)
GOOD = ["2026-11-25T08:00:00", "2026-11-25T08:05:09"]
INCOMPLETE = "2026-11-25T08:10:18"
CORRUPT = "2026-11-25T08:15:27"


def _inventory(directory):
    return sorted((p.name, p.stat().st_size) for p in directory.iterdir())


def _age(directory, seconds=3600):
    # Files older than the settle time and the incomplete-group timeout.
    past = os.path.getmtime(directory) - seconds
    for path in directory.iterdir():
        os.utime(path, (past, past))


def test_sweep_converts_good_groups_and_records_bad_ones_then_changes_nothing(
    tmp_path, monkeypatch, prefect_server
):
    from catalog import query
    from flows.ingest_group import ingest_group

    base = tmp_path / "data"
    incoming = base / "incoming"
    for i, start in enumerate(GOOD + [INCOMPLETE, CORRUPT]):
        simulate.simulate_group(incoming, start, seed=i, jitter_s=0.0, **SMALL)
    (incoming / naming.subband_filename(INCOMPLETE, 7)).unlink()
    victim = badinput.truncate_file(incoming / naming.subband_filename(CORRUPT, 11), fraction=0.01)
    for path in incoming.glob("*_truth.json"):
        path.unlink()
    _age(incoming)
    before = _inventory(incoming)
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(base))
    monkeypatch.setenv("CONTIMG_GROUP_TIMEOUT_S", "600")

    states = ingest_group()
    assert states == {GOOD[0]: "converted", GOOD[1]: "converted", INCOMPLETE: "incomplete", CORRUPT: "failed"}

    catalog_dir = base / "catalog"
    groups = {row["group_id"]: row for row in query.latest(catalog_dir, "groups")}
    assert {g: r["state"] for g, r in groups.items()} == states
    assert groups[INCOMPLETE]["subbands_missing"] == [7] and "sb07" in groups[INCOMPLETE]["reason"]
    assert victim.name in groups[CORRUPT]["reason"]
    ms_rows = {row["group_id"]: row for row in query.latest(catalog_dir, "ms_index")}
    assert set(ms_rows) == set(GOOD)
    for group_id, row in ms_rows.items():
        assert row["stage"] == "converted" and row["writer"] == "direct-subband"
        assert row["path"] == str(naming.ms_path(base / "products", group_id))
        assert os.path.isdir(row["path"])
        assert row["start_mjd"] < row["mid_mjd"] < row["end_mjd"]
    runs = query.query(catalog_dir, "SELECT group_id, status, seconds, flow_run_id FROM stage_runs_all "
                                    "WHERE stage = 'convert' ORDER BY group_id").to_pylist()
    assert [(r["group_id"], r["status"]) for r in runs] == [
        (GOOD[0], "completed"), (GOOD[1], "completed"), (CORRUPT, "failed")]
    assert all(r["seconds"] > 0 and r["flow_run_id"] for r in runs)
    # The bad group's files are moved, intact, to quarantine (never deleted); every other input is untouched.
    quarantined = naming.quarantine_dir(base / "quarantine", CORRUPT)
    bad = [entry for entry in before if entry[0].startswith(CORRUPT)]
    assert len(bad) == 16
    assert _inventory(incoming) == [entry for entry in before if entry not in bad]
    assert [entry for entry in _inventory(quarantined) if entry[0] != "QUARANTINE.json"] == bad
    record = json.loads((quarantined / "QUARANTINE.json").read_text())
    assert victim.name in record["entries"][0]["reason"] and len(record["entries"][0]["files"]) == 16
    assert f"input moved to {quarantined}" in groups[CORRUPT]["reason"]
    assert all(path.startswith(str(quarantined)) for path in groups[CORRUPT]["files"])
    before = _inventory(incoming)

    history = {t: query.query(catalog_dir, f"SELECT count(*) AS n FROM {t}_all").to_pylist()[0]["n"]
               for t in ("groups", "ms_index", "stage_runs")}
    again = ingest_group()
    assert again == {g: s for g, s in states.items() if g != CORRUPT}  # the quarantined group is not seen again
    after = {t: query.query(catalog_dir, f"SELECT count(*) AS n FROM {t}_all").to_pylist()[0]["n"]
             for t in ("groups", "ms_index", "stage_runs")}
    assert after == history, "a second sweep over the same files must record nothing new"
    assert _inventory(incoming) == before

    # A file of the quarantined group that turns up late joins it there instead of lingering in incoming.
    late = incoming / naming.subband_filename(CORRUPT, 3)
    late.write_bytes((quarantined / late.name).read_bytes())
    _age(incoming)
    assert ingest_group() == states  # seen again, still failed, nothing new recorded
    assert _inventory(incoming) == before
    assert {t: query.query(catalog_dir, f"SELECT count(*) AS n FROM {t}_all").to_pylist()[0]["n"]
            for t in ("groups", "ms_index", "stage_runs")} == history
    assert (quarantined / f"{late.name}.1").read_bytes() == (quarantined / late.name).read_bytes()
    assert json.loads((quarantined / "QUARANTINE.json").read_text())["entries"][-1]["reason"] == (
        "arrived after the group was quarantined")


def _events_for(group_ids: set[str], *, wait_s: float = 30.0) -> set[tuple[str, str]]:
    """(event, group id) pairs the Prefect server has received for these groups."""
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()

    async def read():
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={"filter": {"event": {"prefix": ["contimg."]},
                                 "resource": {"id": [f"contimg.group.{g}" for g in group_ids]}},
                      "limit": 50})
            return response.json()["events"]

    deadline = time.monotonic() + wait_s
    while True:
        found = {(e["event"], e["resource"]["prefect.resource.name"]) for e in asyncio.run(read())}
        found = {pair for pair in found if pair[1] in group_ids}
        if time.monotonic() > deadline or len(found) >= 2 * len(group_ids):
            return found
        time.sleep(1)


def test_watcher_announces_ready_groups_once_and_the_flow_emits_converted(tmp_path, monkeypatch, prefect_server):
    from contimg.config import load_settings
    from deployments.watcher import ReadyGroupWatcher
    from flows.ingest_group import ingest_group

    base = tmp_path / "data"
    incoming = base / "incoming"
    good = ["2026-11-26T08:00:00", "2026-11-26T08:05:09"]
    waiting = "2026-11-26T08:10:18"
    for i, start in enumerate(good + [waiting]):
        simulate.simulate_group(incoming, start, seed=i, jitter_s=0.0, **SMALL)
    (incoming / naming.subband_filename(waiting, 2)).unlink()
    _age(incoming, seconds=60)  # settled, but the incomplete group has not timed out
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(base))
    settings = load_settings()

    watcher = ReadyGroupWatcher(settings)
    assert watcher.announce() == good
    assert watcher.announce() == [], "a group is announced once"

    states = ingest_group()
    assert states == {good[0]: "converted", good[1]: "converted", waiting: "collecting"}
    assert ReadyGroupWatcher(settings).announce() == [], "converted groups are not announced again"
    assert _events_for(set(good)) == {(event, g) for g in good
                                      for event in ("contimg.group.ready", "contimg.group.converted")}
