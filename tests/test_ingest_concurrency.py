"""Sweeps at once: one run per group (its lease), many groups at once, nothing converted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contimg import naming, simulate

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["2026-11-25T08:00:00", "2026-11-25T08:05:00", "2026-11-25T08:10:00"]

_SWEEP = """
import json, os, sys, time
from pathlib import Path

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
from flows.ingest_group import ingest_group  # every import done before the start line

ready.touch()
while not go.exists():
    time.sleep(0.005)
started = time.time()
states = ingest_group()
print("RESULT " + json.dumps({"pid": os.getpid(), "states": states, "started": started, "ended": time.time()}),
      flush=True)
"""


def _simulate(incoming, starts):
    for i, start in enumerate(starts):
        simulate.simulate_group(incoming, start, scale="small", seed=i)
    for path in incoming.glob("*_truth.json"):
        path.unlink()
    past = time.time() - 3600  # settled
    for path in incoming.iterdir():
        os.utime(path, (past, past))


def _count(catalog_dir, sql):
    from catalog import query

    return query.query(catalog_dir, sql).to_pylist()


def _files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())


def test_two_sweeps_in_two_processes_convert_each_group_exactly_once(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    from catalog import query

    base = tmp_path / "data"
    _simulate(base / "incoming", GROUPS)
    env = {**os.environ, "CONTIMG_BASE_DIR": str(base), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    go = tmp_path / "go"
    procs, logs = [], []
    for name in ("a", "b"):
        out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
        procs.append(subprocess.Popen([sys.executable, "-c", _SWEEP, str(tmp_path / f"{name}.ready"), str(go)],
                                      env=env, stdout=out, stderr=err))
        logs.append((out, err))
    try:
        deadline = time.monotonic() + 180
        while not all((tmp_path / f"{n}.ready").exists() for n in "ab"):
            assert time.monotonic() < deadline, "the sweeps did not start"
            assert all(p.poll() is None for p in procs), (tmp_path / "a.err").read_text()[-3000:]
            time.sleep(0.05)
        go.touch()
        started = time.monotonic()
        for p in procs:
            p.wait(timeout=600)
        wall = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for out, err in logs:
            out.close()
            err.close()
    errs = {n: (tmp_path / f"{n}.err").read_text() for n in "ab"}
    assert [p.returncode for p in procs] == [0, 0], {n: e[-3000:] for n, e in errs.items()}
    results = [json.loads(line.removeprefix("RESULT "))
               for n in "ab" for line in (tmp_path / f"{n}.out").read_text().splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 2

    catalog_dir = base / "catalog"
    # Each group converted exactly once: one MS, one converting and one converted row, one convert stage run.
    ms_rows = query.history(catalog_dir, "ms_index")
    assert sorted((r["group_id"], r["stage"]) for r in ms_rows) == [(g, "converted") for g in GROUPS]
    assert {r["group_id"]: r["state"] for r in query.latest(catalog_dir, "groups")} == {g: "converted" for g in GROUPS}
    states = _count(catalog_dir, "SELECT group_id, state, count(*) AS n FROM groups_all GROUP BY ALL ORDER BY ALL")
    by_state = {(r["group_id"], r["state"]): r["n"] for r in states}
    assert not [k for k in by_state if k[1] == "failed"], states
    assert all(by_state[(g, "converting")] == 1 and by_state[(g, "converted")] == 1 for g in GROUPS), states
    runs = _count(catalog_dir, "SELECT group_id, status, pid, started_at, ended_at FROM stage_runs_all "
                               "WHERE stage = 'convert' ORDER BY started_at")
    assert sorted((r["group_id"], r["status"]) for r in runs) == [(g, "completed") for g in GROUPS]
    products = sorted(p.name for p in (base / "products" / "ms").rglob("*.ms"))
    assert products == sorted(naming.ms_path(base / "products", g).name for g in GROUPS)
    assert not [p for p in (base / "products" / "ms").rglob(".*partial*")]
    # Both sweeps worked, side by side; each group was converted or found held/converted by the other.
    assert {r["pid"] for r in runs} == {r["pid"] for r in results}, runs
    for result in results:
        assert set(result["states"]) == set(GROUPS)
        assert set(result["states"].values()) <= {"converted", "held"}, result
    # Scratch: nobody removed anyone's directory, nothing is left over, inputs are where they were.
    for err in errs.values():
        assert "removing leftover scratch directory" not in err
        assert "taking over the stale lease" not in err
    assert _files_under(base / "scratch") == []
    assert len(list((base / "incoming").glob("*.hdf5"))) == 16 * len(GROUPS)

    t0 = min(r["started"] for r in results)
    print(f"\ntwo sweeps, {len(GROUPS)} groups: wall {wall:.1f} s; sweeps "
          + ", ".join(f"pid {r['pid']} {r['started'] - t0:.2f}-{r['ended'] - t0:.1f} s {r['states']}"
                      for r in results))
    for r in runs:
        print(f"  {r['group_id']} converted by pid {r['pid']} "
              f"{r['started_at'].timestamp() - t0:.1f}-{r['ended_at'].timestamp() - t0:.1f} s")


def test_a_held_group_is_skipped_untouched_and_resumed_once_the_dead_runs_lease_expires(tmp_path, monkeypatch,
                                                                                        prefect_server):
    from catalog import query
    from contimg import lease as leases
    from contimg.config import load_settings
    from contimg.conversion.discovery import discover_groups
    from flows.ingest_group import ingest_group
    from tasks import records

    (group,) = GROUPS[:1]
    base = tmp_path / "data"
    _simulate(base / "incoming", [group])
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(base))
    settings = load_settings()
    settings.ensure_dirs()
    (candidate,) = discover_groups(settings.incoming_dir, settle_s=0)
    # Another run, on another node, is converting the group: its lease, its scratch, its "converting" row.
    lease_file = naming.group_lease_path(settings.scratch_dir, group)
    now = time.time()
    theirs = leases.LeaseInfo(host="node-7", pid=4242, flow_run_id="their-run", token="t0", acquired_at=now,
                              renewed_at=now, expires_at=now + 600, lease_seconds=900)
    lease_file.parent.mkdir(parents=True)
    lease_file.write_text(theirs.to_json())
    work = naming.convert_workdir(settings.scratch_dir, group) / "half.ms"
    work.mkdir(parents=True)
    (work / "table.f0").write_bytes(b"their work in progress")
    records.record_group(settings, candidate, "converting")
    before = query.history(settings.catalog_dir, "groups")

    assert ingest_group() == {group: "held"}
    assert query.history(settings.catalog_dir, "groups") == before, "nothing recorded of a held group"
    assert (work / "table.f0").read_bytes() == b"their work in progress", "their scratch is untouched"
    assert lease_file.read_text() == theirs.to_json()
    assert not query.history(settings.catalog_dir, "stage_runs")

    # That run died: its lease expires, and the next sweep takes the group over and finishes it.
    lease_file.write_text(leases.LeaseInfo(**{**theirs.__dict__, "expires_at": time.time() - 1}).to_json())
    assert ingest_group() == {group: "converted"}
    (row,) = query.latest(settings.catalog_dir, "ms_index")
    assert row["group_id"] == group and Path(row["path"]).is_dir()
    assert [r["state"] for r in query.history(settings.catalog_dir, "groups")][-1] == "converted"
    assert not lease_file.exists() and _files_under(settings.scratch_dir) == []


def test_under_a_deployment_the_sweep_submits_one_run_per_ready_group(tmp_path, monkeypatch, prefect_server):
    from types import SimpleNamespace

    from contimg import lease as leases
    from contimg.config import load_settings
    import flows._groups
    from flows import ingest_group as module

    base = tmp_path / "data"
    _simulate(base / "incoming", GROUPS)
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(base))
    settings = load_settings()
    held = leases.try_acquire(naming.group_lease_path(settings.scratch_dir, GROUPS[1]), 60)
    submitted = []

    def fake_run_deployment(name, *, parameters, timeout, flow_run_name):
        assert timeout == 0, "the sweep must not wait for group runs"
        submitted.append((name, parameters))
        return SimpleNamespace(name=flow_run_name, id=len(submitted))

    monkeypatch.setattr(flows._groups, "run_deployment", fake_run_deployment)
    try:
        states = module.ingest_group(group_deployment="ingest_one_group/ingest-group")
    finally:
        held.release()
    assert states == {GROUPS[0]: "submitted", GROUPS[1]: "held", GROUPS[2]: "submitted"}
    assert [(n, p["group_id"]) for n, p in submitted] == [("ingest_one_group/ingest-group", g)
                                                         for g in (GROUPS[0], GROUPS[2])]
    assert submitted[0][1]["incoming_dir"] == str(base / "incoming")
    json.dumps(submitted)  # parameters a deployment run can carry


def test_serve_sets_the_casa_tag_limit_from_the_settings(prefect_server):
    from prefect.client.orchestration import get_client

    from contimg.config import load_settings
    from deployments.serve import ensure_concurrency_limits

    try:
        for n in (3, 2):  # created, then updated
            ensure_concurrency_limits(load_settings(environ={}, casa_concurrency=n))
            with get_client(sync_client=True) as client:
                assert client.read_concurrency_limit_by_tag("casa").concurrency_limit == n
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("casa")
