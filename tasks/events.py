"""The Prefect events that chain the flows.

``contimg.group.ready``      a group has all its subbands, settled (watcher) -> ingest
``contimg.group.converted``  a validated MS is recorded (ingest); resource label ``contimg.role``
                             ``calibrator`` -> calibrator flow, ``target`` -> target flow
``contimg.group.imaged``     a group's image products are recorded (imaging) -> mosaic of its hour
``contimg.group.failed``     ingest recorded bad input (for automations / alerts)
``contimg.calset.registered`` a calibrator group's caltable set passed QA and is active
                             (calibrator flow) -> wake the targets waiting for calibration
``contimg.calset.rejected``  a solved set failed the QA gate (payload: its reasons)

Every event's resource is ``contimg.group.<group id>``, labelled with the pipeline
instance that emitted it (:data:`INSTANCE_LABEL`, :func:`contimg.config.pipeline_instance`,
and its catalog directory, :data:`CATALOG_LABEL`): two instances on one Prefect server
(two base directories on one node) share group ids, and each instance's triggers must
start runs for its own events only. Schedules sweep as well, so a lost event delays a
group by one sweep and loses nothing.
"""

from __future__ import annotations

import logging

from prefect.events import emit_event

from contimg.config import Settings, pipeline_instance

log = logging.getLogger(__name__)

GROUP_READY = "contimg.group.ready"
GROUP_CONVERTED = "contimg.group.converted"
GROUP_FAILED = "contimg.group.failed"
GROUP_IMAGED = "contimg.group.imaged"
CALSET_REGISTERED = "contimg.calset.registered"
CALSET_REJECTED = "contimg.calset.rejected"


#: Resource label of ``contimg.group.converted`` saying what the group is (``calibrator``, ``target``, or
#: ``unknown`` when it could not be classified); the deployments' triggers match on it.
ROLE_LABEL = "contimg.role"
#: Resource label of every event: the pipeline instance (:func:`contimg.config.pipeline_instance`); every
#: deployment's triggers match their own instance's value.
INSTANCE_LABEL = "contimg.instance"
#: Resource label of every event: the instance's catalog directory (for people reading events in the UI).
CATALOG_LABEL = "contimg.catalog"


def group_resource(group_id: str, settings: Settings, **labels: str) -> dict[str, str]:
    """The resource of a group's event: ``contimg.group.<group id>``, labelled with the instance of ``settings``."""
    return {"prefect.resource.id": f"contimg.group.{group_id}", "prefect.resource.name": group_id,
            INSTANCE_LABEL: pipeline_instance(settings), CATALOG_LABEL: str(settings.catalog_dir), **labels}


def emit_group_event(event: str, group_id: str, *, settings: Settings, labels: dict[str, str] | None = None,
                     **payload) -> None:
    """Emit one group event of the pipeline instance of ``settings``; never fails the caller (the sweep is
    the safety net).

    ``labels`` are extra resource labels (what triggers can match); ``payload``
    values are sent as strings.
    """
    try:
        emit_event(event=event, resource=group_resource(group_id, settings, **(labels or {})),
                   payload={k: str(v) for k, v in payload.items()})
    except Exception:  # noqa: BLE001 - events are best effort
        log.exception("could not emit %s for %s", event, group_id)


def emit_group_converted(group_id: str, ms_path, mid_mjd: float, role: str, calibrator: str | None, *,
                         settings: Settings) -> None:
    """A validated MS of ``group_id`` is recorded; ``role`` routes it (:data:`ROLE_LABEL`)."""
    emit_group_event(GROUP_CONVERTED, group_id, settings=settings, labels={ROLE_LABEL: role}, ms_path=ms_path,
                     mid_mjd=mid_mjd, role=role, calibrator=calibrator or "")


def emit_calset_registered(group_id: str, set_name: str, status: str, mid_mjd: float | None, *,
                           settings: Settings) -> None:
    """A set solved on ``group_id`` is active: the waiting targets can be woken."""
    emit_group_event(CALSET_REGISTERED, group_id, settings=settings, set_name=set_name, status=status,
                     mid_mjd=mid_mjd)


def emit_calset_rejected(group_id: str, set_name: str, reasons: list[str] | str, *, settings: Settings) -> None:
    """A set solved on ``group_id`` failed the QA gate (registered ``rejected``)."""
    reason = "; ".join(reasons) if isinstance(reasons, (list, tuple)) else str(reasons)
    emit_group_event(CALSET_REJECTED, group_id, settings=settings, set_name=set_name, status="rejected",
                     reason=reason)
