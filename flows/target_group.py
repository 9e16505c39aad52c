"""The target flows: a converted group -> calibrated -> imaged, or waiting for calibration.

``target_group`` flags the group as calibrator groups are flagged, once per MS
(:func:`tasks.flagging.task_flag`; a group with more than ``max_flagged_fraction``
of its data flagged ends ``failed``, not imaged), looks up the caltables valid for
the group and applies them (:func:`tasks.calibration.task_apply`), then images it
(:func:`tasks.imaging.task_image`, which records ``images``, ``qa_metrics`` and
``ms_index`` stage ``imaged``), holding the group's lease. With no valid set yet,
``apply_group`` records the group ``waiting_for_cal`` and the run ends Completed
with that state: waiting is not a failure. Idempotent: a group whose latest
``ms_index`` stage is ``imaged`` returns at once unless ``force``; one already
``applycal_done`` is only imaged.

``wake_waiting`` is the reaction to ``contimg.calset.registered``: it runs
``target_group`` for every group whose latest stage is ``waiting_for_cal`` (or
``calibrated``: the calibrator group itself) and for which a set is now valid
(the others are left alone, nothing recorded). By hand the runs are subflows in
turn; with ``target_deployment`` each is submitted to that deployment without
waiting (none for a group whose run is already queued).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from catalog import query as catalog_query
from catalog.errors import NoCalibrationError as CatalogNoCalibration
from flows._groups import HandOff, check_instance, resolve, settings_for, summary_markdown
from tasks import artifacts, ingest, records
from tasks.calibration import applylist_at, task_apply
from tasks.flagging import task_flag
from tasks.imaging import task_image

IMAGED = "imaged"
#: Imaged, then moved to the archive by the nightly archive flow: finished as well.
ARCHIVED = "archived"
WAITING = "waiting_for_cal"
#: Flagged more than ``max_flagged_fraction``: recorded ``failed`` (ms_index), not imaged, not swept again.
FAILED = "failed"
#: Latest ms_index stages a registration wakes: targets waiting for a set, and calibrator groups solved
#: but not yet applied and imaged (the calibrator group of the new set among them).
WAKE_STAGES = (WAITING, "calibrated")
#: What wake_waiting reports for a group still without a valid set.
STILL_WAITING = "still_waiting"


@flow(name="target_group", flow_run_name="target-{ms_or_group_id}", log_prints=True)
def target_group(ms_or_group_id: str, *, force: bool = False, base_dir: str | None = None,
                 instance: str | None = None) -> dict:
    """Apply the valid caltables to one group and image it, or leave it waiting for calibration.

    Parameters
    ----------
    ms_or_group_id : str
        A group id (``YYYY-MM-DDTHH:MM:SS``: its recorded MS) or an MS path.
    force : bool
        Flag, apply and image again even if the group is already flagged or imaged.
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    instance : str, optional
        The pipeline instance the run is for (the deployments and triggers set it); another instance's run
        is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        ``group_id``, ``state`` (``imaged``, ``waiting_for_cal``, ``failed``: too much flagged, or ``held``),
        ``caltable_set`` (the applied set(s), comma-separated) and ``detail``.
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance, ms_or_group_id=ms_or_group_id)
    ms, group_id = resolve(settings, ms_or_group_id)

    def done(latest: dict) -> dict | None:
        if latest.get("stage") in (IMAGED, ARCHIVED) and not force:
            logger.info("%s is already imaged (%s); nothing to do", group_id, latest.get("image_name"))
            return {"group_id": group_id, "state": IMAGED, "caltable_set": latest.get("caltable_set"),
                    "detail": "already imaged"}
        return None

    if (out := done(records.latest_ms(settings, group_id) or {})) is not None:
        return out
    lease = ingest.try_group_lease(settings, group_id)
    if lease is None:
        holder = ingest.lease_holder(settings, group_id)
        logger.info("%s is held by %s; skipped", group_id, holder)
        return {"group_id": group_id, "state": ingest.HELD, "caltable_set": None, "detail": f"held by {holder}"}
    with lease:
        latest = records.latest_ms(settings, group_id) or {}  # another run may have finished it meanwhile
        if (out := done(latest)) is not None:
            return out
        if latest.get("stage") == "applycal_done" and latest.get("cal_applied") and not force:
            logger.info("%s: %s already applied; imaging", group_id, latest.get("caltable_set"))
        else:
            # flagging resets to the converted flags, so it comes before applycal (whose flags it would drop)
            flagged = task_flag(settings, str(ms), force=force) if settings.flag_targets else {"passed": True}
            if not flagged["passed"]:
                logger.warning("%s is not imaged: %s", group_id, flagged["reason"])
                artifacts.group_summary(settings, group_id, FAILED, detail=flagged["reason"])
                return {"group_id": group_id, "state": FAILED, "caltable_set": None, "detail": flagged["reason"]}
            applied = task_apply(settings, str(ms))
            if WAITING in applied:
                logger.info("%s waits for calibration: %s", group_id, applied[WAITING])
                artifacts.group_summary(settings, group_id, WAITING, detail=applied[WAITING])
                return {"group_id": group_id, "state": WAITING, "caltable_set": None, "detail": applied[WAITING]}
        imaged = task_image(settings, str(ms))
    artifacts.group_summary(settings, group_id, IMAGED)
    latest = records.latest_ms(settings, group_id) or {}
    return {"group_id": group_id, "state": IMAGED, "caltable_set": latest.get("caltable_set"),
            "detail": imaged["products"].get("pbcor", "")}


def _has_calibration(settings, row: dict) -> bool:
    """Is a set valid for this waiting group now? (Unknown time: let target_group find out.)"""
    if row.get("mid_mjd") is None:
        return True
    try:
        applylist_at(settings, row["mid_mjd"])
    except CatalogNoCalibration:
        return False
    return True


@flow(name="wake_waiting", log_prints=True)
def wake_waiting(set_name: str | None = None, *, base_dir: str | None = None,
                 target_deployment: str | None = None, instance: str | None = None) -> dict[str, str]:
    """Run ``target_group`` for every group waiting for calibration that a set now covers.

    Waiting means a latest ``ms_index`` stage in :data:`WAKE_STAGES`: targets
    recorded ``waiting_for_cal``, and calibrator groups whose set was solved
    (``calibrated``) but that are not imaged yet, so the registration that
    follows a calibrator group also images that group with its own set.

    Parameters
    ----------
    set_name : str, optional
        The set whose registration woke us (logged only; every waiting group is considered).
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    instance : str, optional
        The pipeline instance the run is for (the deployments and triggers set it); another instance's run
        is refused (:func:`flows._groups.check_instance`).
    target_deployment : str, optional
        ``"<flow>/<deployment>"`` of ``target_group`` to submit each group run to,
        without waiting. Unset: each run is a subflow of this one, in turn.

    Returns
    -------
    dict
        Group id -> ``imaged``, ``waiting_for_cal``, ``held``, ``failed``,
        ``submitted`` or ``still_waiting`` (no valid set yet: not run).
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance)
    waiting = [r for r in catalog_query.latest(settings.catalog_dir, "ms_index") if r["stage"] in WAKE_STAGES]
    logger.info("%d group(s) waiting for calibration or imaging%s", len(waiting), f" (woken by {set_name})" if set_name else "")
    states: dict[str, str] = {}
    details: dict[str, str] = {}
    hand_off = HandOff(target_group, target_deployment, logger)
    for row in waiting:
        group_id = row["group_id"]
        details[group_id] = ""
        if not _has_calibration(settings, row):
            states[group_id] = STILL_WAITING
            continue
        state, detail, result = hand_off(f"target-{group_id}", dict(ms_or_group_id=group_id, base_dir=base_dir))
        states[group_id], details[group_id] = ((result["state"], str(result.get("caltable_set") or ""))
                                               if result else (state, detail))
    if states:
        create_markdown_artifact(key="wake-summary", markdown=summary_markdown(states, details),
                                 description="groups waiting for calibration")
    return states
