"""The deployments: what `contimg serve` serves and what prefect.yaml declares agree, and the triggers route.

The routing test applies the deployments to a real Prefect server, emits the
pipeline's events with the functions the flows use, and reads back the flow
runs the server's triggers created (not executed: no worker serves them here).
Every deployment is one pipeline instance's (issue 22): prefect.yaml is read as
``prefect deploy`` reads it, with ``CONTIMG_INSTANCE`` set, and the events of
another instance start nothing.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _settings(base: Path):
    from contimg.config import load_settings

    return load_settings(environ={}, base_dir=base)


@pytest.fixture
def instance_settings(tmp_path, monkeypatch):
    """The settings of one pipeline instance, in the environment too (as ``contimg serve`` and
    ``prefect deploy`` see them)."""
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    return _settings(tmp_path / "data")


def _served(settings):
    """Deployment name without the instance -> the deployment ``contimg serve`` serves for ``settings``."""
    from contimg.config import pipeline_instance
    from deployments.serve import deployments

    return {d.name.removesuffix(f"-{pipeline_instance(settings)}"): d for d in deployments(settings=settings)}


def _declared(*, settings=None, monkeypatch=None):
    """Deployment name without the instance -> its spec in prefect.yaml, with ``{{ $CONTIMG_INSTANCE }}``
    filled in as ``prefect deploy`` fills it (from the environment) when ``settings`` are given."""
    from prefect.utilities.templating import apply_values

    from contimg.config import pipeline_instance

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    instance = pipeline_instance(settings) if settings is not None else None
    if settings is not None:
        monkeypatch.setenv("CONTIMG_INSTANCE", instance)
        spec = apply_values(spec, os.environ, remove_notset=False)  # prefect.cli.deploy's first templating
    suffix = f"-{instance}" if instance else "-{{ $CONTIMG_INSTANCE }}"
    return {d["name"].removesuffix(suffix): d for d in spec["deployments"]}


def _flow_at(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO / entrypoint))


def test_serve_and_prefect_yaml_declare_the_same_deployments(instance_settings, monkeypatch):
    from contimg.config import pipeline_instance

    served, declared = _served(instance_settings), _declared(settings=instance_settings, monkeypatch=monkeypatch)
    instance = pipeline_instance(instance_settings)
    assert set(served) == set(declared)
    assert set(served) >= {"ingest-sweep", "ingest-group", "calibrator-group", "target-group", "wake-waiting",
                           "process-group", "process-converted", "mosaic"}
    for name, dep in served.items():
        spec = declared[name]
        assert dep.name == spec["name"] == f"{name}-{instance}", name
        assert dep.parameters["instance"] == instance, name  # every run knows its instance
        assert _flow_at(spec["entrypoint"]).name == dep.flow_name, name
        assert (spec.get("parameters") or {}) == (dep.parameters or {}), name
        intervals = sorted(s.schedule.interval.total_seconds() for s in dep.schedules or []
                           if getattr(s.schedule, "interval", None))
        crons = sorted(s.schedule.cron for s in dep.schedules or [] if getattr(s.schedule, "cron", None))
        assert intervals == sorted(s["interval"] for s in spec.get("schedules", []) if "interval" in s), name
        assert crons == sorted(s["cron"] for s in spec.get("schedules", []) if "cron" in s), name
        triggers = {t.name: t for t in dep.triggers or []}
        assert set(triggers) == {t["name"] for t in spec.get("triggers", [])}, name
        for t in spec.get("triggers", []):
            mine = triggers[t["name"]]
            assert set(mine.expect) == set(t["expect"]), name
            assert mine.match.root == t["match"], name
            assert mine.match.root["contimg.instance"] == instance, name  # only this instance's events
            assert (mine.parameters or {}) == (t.get("parameters") or {}), name
            assert mine.parameters["instance"] == "{{ event.resource['contimg.instance'] }}", name
        # No run concurrency limit: a group is held by its lease, the load bounded by the casa tag limit.
        assert dep.concurrency_limit is None and "concurrency_limit" not in spec, name


def test_every_parameter_is_one_the_flow_takes_and_every_hand_off_names_a_deployment(instance_settings):
    served = _served(instance_settings)
    flow_deployments = {f"{d.flow_name}/{d.name}" for d in served.values()}
    for name, dep in served.items():
        accepted = set(inspect.signature(_flow_at(_declared()[name]["entrypoint"]).fn).parameters)
        for trigger in dep.triggers or []:
            assert set(trigger.parameters or {}) <= accepted, (name, trigger.name)
        assert set(dep.parameters or {}) <= accepted, name
        for key, value in (dep.parameters or {}).items():
            if key.endswith("_deployment"):
                assert value in flow_deployments, (name, key, value)


def _subject(run) -> str:
    """What a triggered run is about: its group, or the set that woke it."""
    p = run.parameters
    return p.get("ms_or_group_id") or p.get("group_id") or p.get("set_name") or ""


def _wait_for_runs(client, deployment_ids: dict, want: int, timeout_s: float = 60.0) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=list(deployment_ids.values()))))
        # the interval schedules create runs too: keep only the triggered ones
        runs = [r for r in runs if _subject(r).startswith("2031")]
        if len(runs) >= want or time.monotonic() > deadline:
            return runs
        time.sleep(1)


@pytest.mark.slow
def test_the_pipeline_events_start_the_right_deployment_with_the_group_of_their_own_instance(prefect_server,
                                                                                           tmp_path):
    """Two instances (two base directories) deployed on one server: the same events of both start each
    instance's own deployments only, with the group and the instance from the event."""
    from prefect.client.orchestration import get_client

    from contimg.config import pipeline_instance
    from tasks import events

    mine, other = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    ids, by_id = {}, {}
    for settings in (mine, other):
        for name, dep in _served(settings).items():
            ids[(pipeline_instance(settings), name)] = dep.apply()
    by_id = {v: k for k, v in ids.items()}
    try:
        for settings in (mine, other):
            events.emit_group_event(events.GROUP_READY, "2031-01-01T23:55:00", settings=settings)
            events.emit_group_converted("2031-01-01T00:00:00", "/data/a.ms", 62502.0, "calibrator", "J0834+5534",
                                        settings=settings)
            events.emit_group_converted("2031-01-01T00:05:09", "/data/b.ms", 62502.1, "target", None,
                                        settings=settings)
            events.emit_group_converted("2031-01-01T00:10:18", "/data/c.ms", 62502.2, "unknown", None,
                                        settings=settings)
            events.emit_calset_registered("2031-01-01T00:00:00", "2031-01-01T000000_J0834+5534", "active", 62502.0,
                                          settings=settings)
            events.emit_calset_rejected("2031-01-01T00:15:27", "2031-01-01T001527_X", ["GP: 100% flagged"],
                                        settings=settings)
            events.emit_group_event(events.GROUP_IMAGED, "2031-01-01T00:20:36", settings=settings)
        with get_client(sync_client=True) as client:
            runs = _wait_for_runs(client, ids, want=12)
            time.sleep(3)  # a wrong extra run would show up by now
            runs = _wait_for_runs(client, ids, want=12, timeout_s=0)
        for settings in (mine, other):
            instance = pipeline_instance(settings)
            own = [r for r in runs if by_id[r.deployment_id][0] == instance]
            got = sorted((by_id[r.deployment_id][1], _subject(r)) for r in own)
            assert got == [
                ("calibrator-group", "2031-01-01T00:00:00"),
                ("ingest-group", "2031-01-01T23:55:00"),
                ("mosaic", "2031-01-01T00:20:36"),
                ("process-group", "2031-01-01T00:10:18"),
                ("target-group", "2031-01-01T00:05:09"),
                ("wake-waiting", "2031-01-01T000000_J0834+5534"),
            ], instance
            # the event's instance reached every run (the flow refuses another's)
            assert {r.parameters["instance"] for r in own} == {instance}
            wake = next(r for r in own if by_id[r.deployment_id][1] == "wake-waiting")
            assert wake.parameters["target_deployment"] == f"target_group/target-group-{instance}"  # defaults kept
    finally:  # leave the shared server without these deployments and their triggers
        with get_client(sync_client=True) as client:
            for deployment_id in ids.values():
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
                client.delete_deployment(deployment_id)


def test_a_run_of_another_instance_is_refused_before_it_touches_anything(tmp_path):
    from contimg.config import pipeline_instance
    from contimg.errors import InvalidInputError
    from flows._groups import check_instance

    mine, other = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    for s in (mine, other):
        s.ensure_dirs()
    assert pipeline_instance(mine) != pipeline_instance(other)
    assert pipeline_instance(mine) == pipeline_instance(_settings(tmp_path / "x" / ".." / "a"))  # resolved
    check_instance(mine, instance=pipeline_instance(mine), ms_or_group_id="2031-01-01T00:00:00")
    with pytest.raises(InvalidInputError, match=f"this run is for pipeline instance {pipeline_instance(other)}"):
        check_instance(mine, instance=pipeline_instance(other))
    ms = other.products_dir / "ms" / "2031-01-01T00:00:00.ms"
    ms.mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="another instance's MS"):
        check_instance(mine, ms_or_group_id=str(ms))
    check_instance(other, ms_or_group_id=str(ms))


def test_a_group_whose_run_is_already_queued_gets_no_second_run(prefect_server, monkeypatch):
    """The event's run waits for a worker when the sweep comes by: the sweep adds none (a second run
    would only find the lease held, at the price of a worker slot and a Python start-up)."""
    import logging
    from types import SimpleNamespace

    from prefect.client.orchestration import get_client

    import flows._groups as groups
    from flows.ingest_group import ingest_one_group

    deployment_id = ingest_one_group.to_deployment(name="ingest-group-queued-test").apply()
    submitted = []

    def fake_run_deployment(name, *, parameters, timeout, flow_run_name):
        submitted.append(flow_run_name)
        return SimpleNamespace(name=flow_run_name, id=len(submitted))

    monkeypatch.setattr(groups, "run_deployment", fake_run_deployment)
    try:
        with get_client(sync_client=True) as client:
            queued = client.create_flow_run_from_deployment(deployment_id, name="ingest-2031-02-02T00:00:00",
                                                            parameters={"group_id": "2031-02-02T00:00:00"})
        hand_off = groups.HandOff(ingest_one_group, "ingest_one_group/ingest-group-queued-test",
                                  logging.getLogger("test"))
        state, detail, _ = hand_off("ingest-2031-02-02T00:00:00", {"group_id": "2031-02-02T00:00:00"})
        assert state == groups.QUEUED and str(queued.id) in detail and submitted == []
        state, _, _ = hand_off("ingest-2031-02-02T00:05:09", {"group_id": "2031-02-02T00:05:09"})
        assert state == groups.SUBMITTED and submitted == ["ingest-2031-02-02T00:05:09"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
