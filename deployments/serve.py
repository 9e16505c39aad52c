"""Serve every deployment in one process (the single-node embedded default).

The schedules here mirror ``deployments/prefect.yaml``: keep them together.

Every deployment belongs to one pipeline instance (:func:`contimg.config.pipeline_instance`
of the settings it is served with): its name ends in the instance, its ``instance``
parameter is the instance, and its triggers match only events of that instance (label
``contimg.instance``) and pass the event's instance on, so that two base directories
served on one Prefect server never start each other's runs (issue 22).

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
from flows.mosaic import mosaic
from flows.process_group import process_converted, process_group
from flows.target_group import target_group, wake_waiting
from contimg.config import Settings, load_settings, pipeline_instance
from tasks.events import CALSET_REGISTERED, GROUP_CONVERTED, GROUP_IMAGED, GROUP_READY, INSTANCE_LABEL, ROLE_LABEL

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
#: Seconds between sweeps for closed hours not yet mosaicked (the safety net under contimg.group.imaged).
MOSAIC_SWEEP_INTERVAL_S = 3600
#: The per-group deployments the sweeps submit to (``"<flow>/<deployment>"`` is built from these).
INGEST_GROUP_DEPLOYMENT = "ingest-group"
TARGET_GROUP_DEPLOYMENT = "target-group"
PROCESS_GROUP_DEPLOYMENT = "process-group"
#: The event's instance, passed to every triggered run: the flow refuses it if it is not its own.
INSTANCE_FROM_EVENT = {"instance": "{{ event.resource['" + INSTANCE_LABEL + "'] }}"}
#: A converted group's id, from its event (the resource name), for the triggered runs.
GROUP_FROM_EVENT = {"ms_or_group_id": "{{ event.resource.name }}", **INSTANCE_FROM_EVENT}


def deployment_name(name: str, instance: str) -> str:
    """The name of deployment ``name`` of pipeline ``instance`` (``target-group-contimg-data-1f3a9c2e``)."""
    return f"{name}-{instance}"


def _events_of(instance: str) -> dict[str, str]:
    """The match of a trigger on this instance's group events."""
    return {"prefect.resource.id": "contimg.group.*", INSTANCE_LABEL: instance}


def _on_converted(role: str, instance: str) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"on-{role}-converted",
        expect={GROUP_CONVERTED},
        match={**_events_of(instance), ROLE_LABEL: role},
        parameters=GROUP_FROM_EVENT,
    )


def deployments(*, settings: Settings | None = None) -> list:
    """The deployments ``contimg serve`` runs (``deployments/prefect.yaml`` declares the same).

    Parameters
    ----------
    settings : Settings, optional
        The settings they are served with (default: :func:`contimg.config.load_settings`); their
        instance names the deployments and is what the triggers match.
    """
    instance = pipeline_instance(settings or load_settings())
    own = {"instance": instance}

    def name(base: str) -> str:
        return deployment_name(base, instance)

    return [
        ingest_group.to_deployment(
            name=name("ingest-sweep"),
            interval=INGEST_SWEEP_INTERVAL_S,
            tags=["ingest"],
            parameters={"group_deployment": f"{ingest_one_group.name}/{name(INGEST_GROUP_DEPLOYMENT)}", **own},
            description="Sweep of the incoming directory every 5 minutes, the safety net under the "
                        "group-ready trigger of ingest-group: each ready group without a run queued goes to a "
                        "run of ingest-group (see flows/ingest_group.py).",
        ),
        ingest_one_group.to_deployment(
            name=name(INGEST_GROUP_DEPLOYMENT),
            tags=["ingest"],
            parameters=own,
            description="Convert one group, holding its lease; a run that finds the lease held skips the group "
                        "(see flows/ingest_group.py). Started by the watcher's contimg.group.ready and the sweep.",
            triggers=[
                DeploymentEventTrigger(
                    name="on-group-ready",
                    expect={GROUP_READY},
                    match=_events_of(instance),
                    parameters={"group_id": "{{ event.resource.name }}", **INSTANCE_FROM_EVENT},
                )
            ],
        ),
        calibrator_group.to_deployment(
            name=name("calibrator-group"),
            tags=["calibration"],
            parameters=own,
            description="A converted calibrator group: flag, model, solve, QA gate, register; an active set "
                        "emits contimg.calset.registered (see flows/calibrator_group.py).",
            triggers=[_on_converted("calibrator", instance)],
        ),
        target_group.to_deployment(
            name=name(TARGET_GROUP_DEPLOYMENT),
            tags=["imaging"],
            parameters=own,
            description="A converted target group: apply the valid caltables and image it, or leave it "
                        "waiting_for_cal (see flows/target_group.py).",
            triggers=[_on_converted("target", instance)],
        ),
        wake_waiting.to_deployment(
            name=name("wake-waiting"),
            interval=WAKE_INTERVAL_S,
            tags=["imaging"],
            parameters={"target_deployment": f"{target_group.name}/{name(TARGET_GROUP_DEPLOYMENT)}", **own},
            description="On every registered caltable set (and every 15 min): a target-group run for each "
                        "group a valid set now covers (see flows/target_group.py).",
            triggers=[
                DeploymentEventTrigger(
                    name="on-calset-registered",
                    expect={CALSET_REGISTERED},
                    match=_events_of(instance),
                    parameters={"set_name": "{{ event.payload.set_name }}", **INSTANCE_FROM_EVENT},
                )
            ],
        ),
        process_group.to_deployment(
            name=name(PROCESS_GROUP_DEPLOYMENT),
            tags=["calibration", "imaging"],
            parameters=own,
            description="Classify a converted group and run its calibrator or target flow; also the route of "
                        "groups converted without a role (see flows/process_group.py).",
            triggers=[_on_converted("unknown", instance)],
        ),
        process_converted.to_deployment(
            name=name("process-converted"),
            interval=PROCESS_SWEEP_INTERVAL_S,
            tags=["calibration", "imaging"],
            parameters={"group_deployment": f"{process_group.name}/{name(PROCESS_GROUP_DEPLOYMENT)}", **own},
            description="Safety net: a process-group run for every converted group not yet finished (lost "
                        "event, killed run), every 10 minutes.",
        ),
        mosaic.to_deployment(
            name=name("mosaic"),
            interval=MOSAIC_SWEEP_INTERVAL_S,
            tags=["mosaic"],
            parameters=own,
            description="On every imaged group: the mosaic of its hour once the hour is closed; and hourly, every "
                        "closed hour of the last day not yet mosaicked (see flows/mosaic.py).",
            triggers=[
                DeploymentEventTrigger(
                    name="on-group-imaged",
                    expect={GROUP_IMAGED},
                    match=_events_of(instance),
                    parameters={"group_id": "{{ event.resource.name }}", **INSTANCE_FROM_EVENT},
                )
            ],
        ),
        archive.to_deployment(
            name=name("archive-nightly"),
            schedule=Cron(ARCHIVE_CRON, timezone="UTC"),
            tags=["archive"],
            parameters=own,
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
    settings = load_settings()
    ensure_concurrency_limits(settings)
    stop = None
    if watch:
        from deployments.watcher import watch_in_background

        stop = watch_in_background(settings)
    try:
        serve(*deployments(settings=settings))
    finally:
        if stop is not None:
            stop.set()
