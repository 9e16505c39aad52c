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

from flows.ingest_group import ingest_group, ingest_one_group
from tasks.events import GROUP_READY

#: Seconds between ingest sweeps (one group arrives every ~309 s).
INGEST_SWEEP_INTERVAL_S = 300
#: The deployment that converts one group; the sweep submits a run of it per ready group.
INGEST_GROUP_DEPLOYMENT = "ingest-group"


def deployments() -> list:
    """The deployments ``contimg serve`` runs."""
    return [
        ingest_group.to_deployment(
            name="ingest-sweep",
            interval=INGEST_SWEEP_INTERVAL_S,
            tags=["ingest"],
            parameters={"group_deployment": f"{ingest_one_group.name}/{INGEST_GROUP_DEPLOYMENT}"},
            description="Sweep of the incoming directory, on every ready group and every 5 minutes; "
                        "each ready group goes to a run of ingest-group (see flows/ingest_group.py).",
            triggers=[
                DeploymentEventTrigger(
                    name="on-group-ready",
                    expect={GROUP_READY},
                    match={"prefect.resource.id": "contimg.group.*"},
                )
            ],
        ),
        ingest_one_group.to_deployment(
            name=INGEST_GROUP_DEPLOYMENT,
            tags=["ingest"],
            description="Convert one group, holding its lease; a run that finds the lease held skips the group "
                        "(see flows/ingest_group.py).",
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
