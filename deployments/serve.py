"""Serve every deployment in one process (the single-node embedded default).

The schedules here mirror ``deployments/prefect.yaml``: keep them together.
"""

from __future__ import annotations

from prefect import serve

from flows.ingest_group import ingest_group

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
            description="Periodic sweep of the incoming directory (see flows/ingest_group.py).",
        ),
    ]


def serve_all() -> None:
    """Block, serving every deployment against the configured Prefect API."""
    serve(*deployments())
