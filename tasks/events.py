"""The Prefect events that chain the flows.

``contimg.group.ready``      a group has all its subbands, settled (watcher) -> ingest
``contimg.group.converted``  a validated MS is recorded (ingest) -> calibrator/target flows
``contimg.group.failed``     ingest recorded bad input (for automations / alerts)
``contimg.calset.registered`` a calibrator group's caltable set passed QA and is active
                             (calibrator flow) -> wake the targets waiting for calibration
``contimg.calset.rejected``  a solved set failed the QA gate (payload: its reasons)

Every event's resource is ``contimg.group.<group id>``. Schedules sweep as well, so
a lost event delays a group by one sweep and loses nothing.
"""

from __future__ import annotations

import logging

from prefect.events import emit_event

log = logging.getLogger(__name__)

GROUP_READY = "contimg.group.ready"
GROUP_CONVERTED = "contimg.group.converted"
GROUP_FAILED = "contimg.group.failed"
CALSET_REGISTERED = "contimg.calset.registered"
CALSET_REJECTED = "contimg.calset.rejected"


def group_resource(group_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"contimg.group.{group_id}", "prefect.resource.name": group_id}


def emit_group_event(event: str, group_id: str, **payload) -> None:
    """Emit one group event; never fails the caller (the sweep is the safety net)."""
    try:
        emit_event(event=event, resource=group_resource(group_id),
                   payload={k: str(v) for k, v in payload.items()})
    except Exception:  # noqa: BLE001 - events are best effort
        log.exception("could not emit %s for %s", event, group_id)


def emit_calset_registered(group_id: str, set_name: str, status: str, mid_mjd: float | None) -> None:
    """A set solved on ``group_id`` is active: the waiting targets can be woken."""
    emit_group_event(CALSET_REGISTERED, group_id, set_name=set_name, status=status, mid_mjd=mid_mjd)


def emit_calset_rejected(group_id: str, set_name: str, reasons: list[str] | str) -> None:
    """A set solved on ``group_id`` failed the QA gate (registered ``rejected``)."""
    reason = "; ".join(reasons) if isinstance(reasons, (list, tuple)) else str(reasons)
    emit_group_event(CALSET_REJECTED, group_id, set_name=set_name, status="rejected", reason=reason)
