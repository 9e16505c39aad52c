"""Serve every deployment in one process (the single-node embedded default).

The schedules here mirror ``deployments/prefect.yaml``: keep them together.

No deployment has a run concurrency limit: sweeps may overlap, and each group
is converted by one run at a time because its run holds the group's lease
(``contimg.lease``). What bounds the load is the ``casa`` task-tag limit
(``casa_concurrency`` setting, set on the server by :func:`ensure_concurrency_limits`).
"""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.archive import archive
from flows.calibrator_group import calibrator_group
from flows.ingest_group import ingest_group, ingest_one_group
from flows.process_group import process_converted, process_group
from flows.target_group import target_group, wake_waiting
from tasks.events import CALSET_REGISTERED, GROUP_CONVERTED, GROUP_READY, ROLE_LABEL

#: The nightly archive (flows/archive.py), a cron in UTC. Observing never stops (drift scan), so no hour
#: is quiet; 16:00 UTC is 08:00 PST / 09:00 PDT at OVRO, the start of the working day there, so a failed
#: archive is seen by someone awake, and it is 16 h after the end of the UTC date that a night's groups
#: are filed under, so those groups are imaged (finished) by then. 12:00 UTC would be 04:00-05:00 at OVRO.
ARCHIVE_CRON = "0 16 * * *"
#: Seconds between ingest sweeps (one group arrives every ~309 s).
INGEST_SWEEP_INTERVAL_S = 300
#: Seconds between the safety-net sweeps of converted groups whose event was lost or whose run died.
PROCESS_SWEEP_INTERVAL_S = 600
#: Seconds between wake-ups of the groups waiting for calibration without a registration event.
WAKE_INTERVAL_S = 900
#: The per-group deployments the sweeps submit to (``"<flow>/<deployment>"`` is built from these).
INGEST_GROUP_DEPLOYMENT = "ingest-group"
TARGET_GROUP_DEPLOYMENT = "target-group"
PROCESS_GROUP_DEPLOYMENT = "process-group"
#: A converted group's id, from its event (the resource name), for the triggered runs.
GROUP_FROM_EVENT = {"ms_or_group_id": "{{ event.resource.name }}"}


def _on_converted(role: str) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"on-{role}-converted",
        expect={GROUP_CONVERTED},
        match={"prefect.resource.id": "contimg.group.*", ROLE_LABEL: role},
        parameters=GROUP_FROM_EVENT,
    )


def deployments() -> list:
    """The deployments ``contimg serve`` runs (``deployments/prefect.yaml`` declares the same)."""
    return [
        ingest_group.to_deployment(
            name="ingest-sweep",
            interval=INGEST_SWEEP_INTERVAL_S,
            tags=["ingest"],
            parameters={"group_deployment": f"{ingest_one_group.name}/{INGEST_GROUP_DEPLOYMENT}"},
            description="Sweep of the incoming directory every 5 minutes, the safety net under the "
                        "group-ready trigger of ingest-group: each ready group without a run queued goes to a "
                        "run of ingest-group (see flows/ingest_group.py).",
        ),
        ingest_one_group.to_deployment(
            name=INGEST_GROUP_DEPLOYMENT,
            tags=["ingest"],
            description="Convert one group, holding its lease; a run that finds the lease held skips the group "
                        "(see flows/ingest_group.py). Started by the watcher's contimg.group.ready and the sweep.",
            triggers=[
                DeploymentEventTrigger(
                    name="on-group-ready",
                    expect={GROUP_READY},
                    match={"prefect.resource.id": "contimg.group.*"},
                    parameters={"group_id": "{{ event.resource.name }}"},
                )
            ],
        ),
        calibrator_group.to_deployment(
            name="calibrator-group",
            tags=["calibration"],
            description="A converted calibrator group: flag, model, solve, QA gate, register; an active set "
                        "emits contimg.calset.registered (see flows/calibrator_group.py).",
            triggers=[_on_converted("calibrator")],
        ),
        target_group.to_deployment(
            name=TARGET_GROUP_DEPLOYMENT,
            tags=["imaging"],
            description="A converted target group: apply the valid caltables and image it, or leave it "
                        "waiting_for_cal (see flows/target_group.py).",
            triggers=[_on_converted("target")],
        ),
        wake_waiting.to_deployment(
            name="wake-waiting",
            interval=WAKE_INTERVAL_S,
            tags=["imaging"],
            parameters={"target_deployment": f"{target_group.name}/{TARGET_GROUP_DEPLOYMENT}"},
            description="On every registered caltable set (and every 15 min): a target-group run for each "
                        "group a valid set now covers (see flows/target_group.py).",
            triggers=[
                DeploymentEventTrigger(
                    name="on-calset-registered",
                    expect={CALSET_REGISTERED},
                    match={"prefect.resource.id": "contimg.group.*"},
                    parameters={"set_name": "{{ event.payload.set_name }}"},
                )
            ],
        ),
        process_group.to_deployment(
            name=PROCESS_GROUP_DEPLOYMENT,
            tags=["calibration", "imaging"],
            description="Classify a converted group and run its calibrator or target flow; also the route of "
                        "groups converted without a role (see flows/process_group.py).",
            triggers=[_on_converted("unknown")],
        ),
        process_converted.to_deployment(
            name="process-converted",
            interval=PROCESS_SWEEP_INTERVAL_S,
            tags=["calibration", "imaging"],
            parameters={"group_deployment": f"{process_group.name}/{PROCESS_GROUP_DEPLOYMENT}"},
            description="Safety net: a process-group run for every converted group not yet finished (lost "
                        "event, killed run), every 10 minutes.",
        ),
        archive.to_deployment(
            name="archive-nightly",
            schedule=Cron(ARCHIVE_CRON, timezone="UTC"),
            tags=["archive"],
            description="Nightly: finished groups' products to the archive (SHA-256 verified before any delete), "
                        "raw retention, catalog compaction, disk use (see flows/archive.py).",
        ),
    ]


def ensure_concurrency_limits(settings) -> None:
    """Create or update the ``casa`` task-tag limit on the Prefect server (``casa_concurrency``)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="casa", concurrency_limit=settings.casa_concurrency)


def serve_all(*, watch: bool = True) -> None:
    """Block, serving every deployment against the configured Prefect API.

    With ``watch``, a background thread announces ready groups (the event
    trigger of the ingest deployment).
    """
    from contimg.config import load_settings

    settings = load_settings()
    ensure_concurrency_limits(settings)
    stop = None
    if watch:
        from deployments.watcher import watch_in_background

        stop = watch_in_background(settings)
    try:
        serve(*deployments())
    finally:
        if stop is not None:
            stop.set()
