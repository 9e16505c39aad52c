"""Serve every deployment in one process (the single-node embedded default).

The schedules here mirror ``deployments/prefect.yaml``: keep them together.
"""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger

from flows.ingest_group import ingest_group
from tasks.events import GROUP_READY

#: Seconds between ingest sweeps (one group arrives every ~309 s).
INGEST_SWEEP_INTERVAL_S = 300


def deployments() -> list:
    """The deployments ``contimg serve`` runs."""
    return [
        ingest_group.to_deployment(
            name="ingest-sweep",
            interval=INGEST_SWEEP_INTERVAL_S,
            concurrency_limit=1,
            tags=["ingest"],
            description="Sweep of the incoming directory, on every ready group and every 5 minutes "
                        "(see flows/ingest_group.py).",
            triggers=[
                DeploymentEventTrigger(
                    name="on-group-ready",
                    expect={GROUP_READY},
                    match={"prefect.resource.id": "contimg.group.*"},
                )
            ],
        ),
    ]


def serve_all(*, watch: bool = True) -> None:
    """Block, serving every deployment against the configured Prefect API.

    With ``watch``, a background thread announces ready groups (the event
    trigger of the ingest deployment).
    """
    stop = None
    if watch:
        from contimg.config import load_settings
        from deployments.watcher import watch_in_background

        stop = watch_in_background(load_settings())
    try:
        serve(*deployments())
    finally:
        if stop is not None:
            stop.set()
