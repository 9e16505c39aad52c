"""The calibrator flow: a converted calibrator group -> a registered caltable set.

``calibrator_group`` flags, models, solves, QA-gates and registers the group's set
(:func:`tasks.calibration.task_calibrate`), holding the group's lease. A set that
passes becomes ``active`` and the flow emits ``contimg.calset.registered``
(resource ``contimg.group.<gid>``; payload set name, status, mid MJD): the
reaction is :func:`flows.target_group.wake_waiting`. A set that fails the gate is
registered ``rejected`` with its reasons (``cal_registry``, ``ms_index`` stage
``failed``) and the flow emits ``contimg.calset.rejected``; the run itself ends
Completed (bad data is recorded, not retried). Idempotent: an MS that already
has an active set returns it, solves nothing and emits nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from catalog import cal_registry
from flows._groups import check_instance, resolve, settings_for
from tasks import artifacts, events, ingest
from tasks.calibration import active_set_of, task_calibrate

#: What the flow reports when the set exists already (nothing solved, nothing emitted).
ALREADY_ACTIVE = "already_active"


def _mid_mjd(settings, set_name: str) -> float | None:
    for row in cal_registry.list_sets(settings.catalog_dir):
        if row["set_name"] == set_name:
            return row.get("mid_mjd")
    return None


@flow(name="calibrator_group", flow_run_name="calibrate-{ms_or_group_id}", log_prints=True)
def calibrator_group(ms_or_group_id: str, *, base_dir: str | None = None, instance: str | None = None) -> dict:
    """Calibrate one calibrator group and register its set.

    Parameters
    ----------
    ms_or_group_id : str
        A group id (``YYYY-MM-DDTHH:MM:SS``: its recorded MS) or an MS path.
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    instance : str, optional
        The pipeline instance the run is for (the deployment and its trigger set
        it); another instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        ``group_id``, ``state`` (``active``, ``rejected``, ``already_active`` or
        ``held``), ``set_name``, ``mid_mjd`` and ``reasons``.
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance, ms_or_group_id=ms_or_group_id)
    ms, group_id = resolve(settings, ms_or_group_id)
    out = {"group_id": group_id, "set_name": None, "mid_mjd": None, "reasons": []}
    lease = ingest.try_group_lease(settings, group_id)
    if lease is None:
        logger.info("%s is held by %s; skipped", group_id, ingest.lease_holder(settings, group_id))
        return {**out, "state": ingest.HELD}
    with lease:
        if existing := active_set_of(settings, ms):
            logger.info("%s already has the active set %s", group_id, existing)
            return {**out, "state": ALREADY_ACTIVE, "set_name": existing, "mid_mjd": _mid_mjd(settings, existing)}
        registered = task_calibrate(settings, str(ms))
    name, status, reasons = registered["set_name"], registered["status"], registered["reasons"]
    mid_mjd = _mid_mjd(settings, name)
    artifacts.calibration_qa(settings, name)
    artifacts.group_summary(settings, group_id, f"calibration {status}", detail="; ".join(reasons))
    if status == "active":
        logger.info("%s: set %s registered active", group_id, name)
        events.emit_calset_registered(group_id, name, status, mid_mjd, settings=settings)
    else:
        logger.warning("%s: set %s rejected: %s", group_id, name, "; ".join(reasons))
        events.emit_calset_rejected(group_id, name, reasons, settings=settings)
    return {**out, "state": status, "set_name": name, "mid_mjd": mid_mjd, "reasons": list(reasons)}
