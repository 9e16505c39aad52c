"""A night of small groups through the flows, out of order and with faults, on a real Prefect server.

Groups arrive as the stream can deliver them: two targets before the calibrator
transit, then the calibrator group with two more targets, one of which has a
truncated subband file. A CASA child of the calibration is killed mid-run, and a
target flow run is killed (SIGKILL, with its imager) half way through its group
and the group is then resumed by the safety-net sweep. The night must end with
every good target imaged with the right set, the bad group quarantined with its
reason, nothing stuck, nothing duplicated, and Prefect's run states telling the
same story as the catalog.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from test_pipeline_flows import _count, _simulate


def _night_files(night: Path) -> dict[str, dict[int, Path]]:
    """Group id -> subband -> file, grouped as ingest groups them (their timestamps differ by seconds)."""
    from contimg.conversion.discovery import discover_groups

    return {c.group_id: dict(c.files) for c in discover_groups(night, settle_s=0)}


def _arrive(night: Path, incoming: Path, group_ids: list[str], *, truncate: Path | None = None) -> None:
    """Copy the groups' files (and truth sidecars) into the incoming directory; ``truncate`` is cut in half."""
    files = _night_files(night)
    for group_id in group_ids:
        for path in [*files[group_id].values(), *night.glob(f"{group_id}_truth.json")]:
            shutil.copy2(path, incoming / path.name)
            if path == truncate:
                with open(incoming / path.name, "r+b") as f:
                    f.truncate(path.stat().st_size // 2)


class CasaChildKiller:
    """Kills (SIGKILL) the first CASA child process of this process that appears while armed."""

    def __init__(self, after_s: float = 1.0):
        self.after_s, self.killed = after_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set() and not self.killed:
            for child in me.children(recursive=True):
                try:
                    if "contimg._casa_child" in " ".join(child.cmdline()):
                        time.sleep(self.after_s)  # mid-run: CASA is loaded and at work
                        child.kill()
                        self.killed.append(child.pid)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def _flow_runs(name_prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name_prefix)))


def _kill_target_run_mid_group(group_id: str, catalog_dir: Path) -> None:
    """``contimg run target GROUP`` in its own process, killed (SIGKILL, with its children) just after
    its calibration was applied and recorded: imaging under way, the group half done."""
    from prefect.settings import PREFECT_API_URL

    from catalog import query

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    contimg = Path(sys.executable).parent / "contimg"
    run = subprocess.Popen([str(contimg), "run", "target", group_id], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, stage = time.monotonic() + 300, None
        while stage != "applycal_done" and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = query.query(catalog_dir, "SELECT stage FROM ms_index WHERE group_id = ?", [group_id]).to_pylist()
            stage = rows[0]["stage"] if rows else None
        time.sleep(0.5)
        assert stage == "applycal_done" and run.poll() is None, "the target run ended before it could be killed"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)


@pytest.mark.slow
def test_a_night_out_of_order_with_faults_ends_with_every_target_imaged_once(pipeline_env, prefect_server,
                                                                            monkeypatch):
    from catalog import cal_registry, query
    from contimg import naming
    from contimg.config import load_settings
    from flows.calibrator_group import calibrator_group
    from flows.ingest_group import ingest_group
    from flows.process_group import process_converted
    from flows.target_group import wake_waiting
    from tasks.calibration import task_calibrate

    base = pipeline_env
    settings = load_settings()
    catalog_dir = base / "catalog"
    night, incoming = base / "night", base / "incoming"
    incoming.mkdir(parents=True)
    groups = _simulate(night, n_groups=5, date="2026-11-29")  # not test_pipeline_flows' groups
    early, cal, late, bad = groups[:2], groups[2], groups[3], groups[4]
    bad_file = _night_files(night)[bad][5]
    monkeypatch.setattr(task_calibrate, "retry_delay_seconds", 0)  # the retry itself is the point, not its wait

    # Two targets arrive before the calibrator: converted, then waiting (not failed).
    _arrive(night, incoming, early)
    assert ingest_group() == {g: "converted" for g in early}
    assert process_converted() == {g: "waiting_for_cal" for g in early}

    # The calibrator group and two targets arrive, one with a truncated subband: bad input, quarantined.
    _arrive(night, incoming, [cal, late, bad], truncate=bad_file)
    swept = ingest_group()
    assert {g: swept[g] for g in (cal, late, bad)} == {cal: "converted", late: "converted", bad: "failed"}
    (row,) = query.query(catalog_dir, "SELECT state, reason, quarantine_path FROM groups WHERE group_id = ?",
                         [bad]).to_pylist()
    assert row["state"] in ("failed", "quarantined") and bad_file.name in row["reason"]
    assert len(list(Path(row["quarantine_path"]).glob("*.hdf5"))) == 16  # kept, all of them
    assert not any((incoming / p.name).exists() for p in _night_files(night)[bad].values())

    # Calibration with a CASA child killed mid-run: the task retries and the set is registered once.
    with CasaChildKiller() as killer:
        out = calibrator_group(cal)
    assert killer.killed, "no CASA child was killed: the test proved nothing"
    assert out["state"] == "active", out["reasons"]
    set_name = out["set_name"]
    assert [s["set_name"] for s in cal_registry.list_sets(catalog_dir, status="active")] == [set_name]
    runs = query.query(catalog_dir, "SELECT status, error FROM stage_runs WHERE group_id = ? AND stage = "
                                    "'calibrate' ORDER BY started_at", [cal]).to_pylist()
    assert [r["status"] for r in runs] == ["failed", "completed"] and "crashed" in runs[0]["error"]

    # A target run killed half way through its group (its imager with it); the sweeps resume it.
    _kill_target_run_mid_group(early[0], catalog_dir)
    assert naming.group_lease_path(settings.scratch_dir, early[0]).exists()  # the dead run's lease is left
    assert process_converted() == {cal: "imaged", late: "imaged", early[0]: "imaged"}
    assert wake_waiting(set_name) == {early[1]: "imaged"}

    # Every good group imaged once, with the one set; the bad one failed with its reason.
    ms = {r["group_id"]: r for r in query.latest(catalog_dir, "ms_index")}
    assert {g: (ms[g]["stage"], ms[g]["caltable_set"]) for g in [*early, cal, late]} == {
        g: ("imaged", set_name) for g in [*early, cal, late]}
    assert bad not in ms or ms[bad]["stage"] == "failed"
    # nothing stuck: no lease, no group half-way, nothing for the sweeps to do
    assert not list((settings.scratch_dir / "leases").glob("*.lease"))
    assert process_converted() == {} and wake_waiting() == {}
    # nothing duplicated: one imaged row per group, one row per product, no stray products on disk
    assert _count(catalog_dir, "SELECT count(*) AS n FROM (SELECT group_id FROM ms_index_all WHERE stage = "
                               "'imaged' GROUP BY group_id HAVING count(*) > 1)") == 0
    assert _count(catalog_dir, "SELECT count(*) AS n FROM (SELECT path FROM images_all GROUP BY path "
                               "HAVING count(*) > 1)") == 0
    recorded = {r["path"] for r in query.query(catalog_dir, "SELECT path FROM images").to_pylist()}
    image_dirs = {Path(p).parent for p in recorded}
    on_disk = {str(p) for d in image_dirs for p in d.iterdir() if p.is_file()}
    assert on_disk <= recorded, f"unrecorded files among the products: {sorted(on_disk - recorded)}"

    # Prefect tells the same story: nothing running, the killed run Crashed, each group's last target run Completed.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        running = [r.name for r in client.read_flow_runs() if any(g in r.name for g in groups)
                   and r.state.type.value in ("RUNNING", "PENDING")]
    assert running == []
    killed = [r for r in _flow_runs(f"target-{early[0]}") if r.state.type.value == "CRASHED"]
    assert len(killed) == 1 and "resumed the group" in (killed[0].state.message or "")
    for g in [*early, cal, late]:
        last = max(_flow_runs(f"target-{g}"), key=lambda r: r.created)
        assert last.state.is_completed(), (g, last.state)
