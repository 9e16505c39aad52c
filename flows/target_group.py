"""The target flows: a converted group -> calibrated -> imaged, or waiting for calibration.

``target_group`` flags the group as calibrator groups are flagged, once per MS
(:func:`tasks.flagging.task_flag`; a group with more than ``max_flagged_fraction``
of its data flagged ends ``failed``, not imaged), looks up the caltables valid for
the group and applies them (:func:`tasks.calibration.task_apply`), then images it
(:func:`tasks.imaging.task_image`, which records ``images``, ``qa_metrics`` and
``ms_index`` stage ``imaged``) and measures the image at the reference positions
(:func:`tasks.photometry.task_photometry`, table ``photometry``; its failure is
logged, never the group's), holding the group's lease. With no valid set yet,
``apply_group`` records the group ``waiting_for_cal`` and the run ends Completed
with that state: waiting is not a failure. Idempotent: a group whose latest
``ms_index`` stage is ``imaged`` returns at once unless ``force``; one already
``applycal_done`` is only imaged.

``wake_waiting`` is the reaction to ``contimg.calset.registered`` (and a
periodic sweep): it runs ``target_group`` for every group whose latest stage is
``waiting_for_cal`` (or ``calibrated``: the calibrator group itself) and for
which a set is now valid. A waiting group no set covers stays waiting until its
wait ends (:func:`tasks.waiting.wait_ended`: converted data past its time plus a
horizon, or a wall-clock limit); the sweep then records it ``uncalibrated``
without starting a run, and no sweep looks at it again, except the reaction to a
registration whose set covers it, which wakes it like a waiting group (so does
``contimg run target GROUP --force``). By hand the runs are subflows in turn;
with ``target_deployment`` each is submitted to that deployment without waiting
(none for a group whose run is already queued).
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from catalog import query as catalog_query
from catalog.errors import NoCalibrationError as CatalogNoCalibration
from flows._groups import HandOff, check_instance, resolve, settings_for, summary_markdown
from tasks import artifacts, ingest, records, waiting
from tasks.calibration import applylist_at, record_uncalibrated, task_apply
from tasks.flagging import task_flag
from tasks.imaging import task_image
from tasks.photometry import task_photometry

IMAGED = "imaged"
#: Imaged, then moved to the archive by the nightly archive flow: finished as well.
ARCHIVED = "archived"
WAITING = waiting.WAITING
#: Waiting ended with no set covering the group (tasks/waiting.py): terminal, not swept again; a registration
#: whose set covers it, or a run by hand, still wakes it.
UNCALIBRATED = waiting.UNCALIBRATED
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
        # never raises: a failure is logged and recorded, the group stays imaged (the image is the product)
        task_photometry(settings, group_id)
    artifacts.group_summary(settings, group_id, IMAGED)
    latest = records.latest_ms(settings, group_id) or {}
    return {"group_id": group_id, "state": IMAGED, "caltable_set": latest.get("caltable_set"),
            "detail": imaged["products"].get("pbcor", "")}


def _covering_sets(settings, row: dict) -> list[str] | None:
    """The sets a lookup now applies at this group's time, or ``None`` when no set covers it."""
    mjd = waiting.group_time_mjd(row)
    if mjd is None:  # no time at all (never the case for a group id): nothing can be looked up
        return None
    try:
        return applylist_at(settings, mjd).set_names
    except CatalogNoCalibration:
        return None


def _waiting_histories(settings, rows: list[dict]) -> dict[str, list[dict]]:
    """Group id -> its ``ms_index`` rows (``stage``, ``recorded_at``, ``event_id``), for when its wait began."""
    if not rows:
        return {}
    ids = sorted({r["group_id"] for r in rows})
    found = catalog_query.query(
        settings.catalog_dir, "SELECT group_id, stage, recorded_at, event_id FROM ms_index_all WHERE group_id IN "
        f"({', '.join('?' * len(ids))})", ids).to_pylist()
    out: dict[str, list[dict]] = {}
    for r in found:
        out.setdefault(r["group_id"], []).append(r)
    return out


def _end_waiting(settings, row: dict, reason: str, logger) -> tuple[str, str]:
    """Record that a group stopped waiting (under its lease, so never over a run's own record): (state, detail)."""
    group_id = row["group_id"]
    lease = ingest.try_group_lease(settings, group_id)
    if lease is None:  # a run has the group now: it records what it finds, the next sweep decides again
        return ingest.HELD, f"held by {ingest.lease_holder(settings, group_id)}"
    with lease:
        if not record_uncalibrated(settings, group_id, reason):
            return STILL_WAITING, "changed since the sweep looked (a set or a run came)"
    logger.warning("%s is uncalibrated: %s", group_id, reason)
    artifacts.group_summary(settings, group_id, UNCALIBRATED, detail=reason)
    return UNCALIBRATED, reason


@flow(name="wake_waiting", log_prints=True)
def wake_waiting(set_name: str | None = None, *, base_dir: str | None = None,
                 target_deployment: str | None = None, instance: str | None = None) -> dict[str, str]:
    """Run ``target_group`` for every group waiting for calibration that a set now covers; end hopeless waits.

    Waiting means a latest ``ms_index`` stage in :data:`WAKE_STAGES`: targets
    recorded ``waiting_for_cal``, and calibrator groups whose set was solved
    (``calibrated``) but that are not imaged yet, so the registration that
    follows a calibrator group also images that group with its own set. A
    ``waiting_for_cal`` group that no set covers and whose wait has ended
    (:func:`tasks.waiting.wait_ended`) is recorded ``uncalibrated``, with why,
    under its lease and without a target run. With ``set_name`` (a
    registration), ``uncalibrated`` groups whose lookup now uses that set are
    woken as well; without it they are left alone.

    Parameters
    ----------
    set_name : str, optional
        The set whose registration woke us: every waiting group is considered, and the ``uncalibrated``
        groups this set covers. Unset (the periodic sweep): ``uncalibrated`` groups are not considered.
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
        ``submitted``, ``queued``, ``still_waiting`` (no valid set yet: not run) or
        ``uncalibrated`` (its wait ended on this sweep: recorded, not run). A group
        already ``uncalibrated`` that the sweep leaves alone is not listed.
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance)
    latest = catalog_query.latest(settings.catalog_dir, "ms_index")
    # a registration may cover groups whose waiting ended; the periodic sweep (no set) never looks at them again
    stages = WAKE_STAGES + ((UNCALIBRATED,) if set_name else ())
    candidates = [r for r in latest if r["stage"] in stages]
    logger.info("%d group(s) waiting for calibration or imaging%s", len(candidates),
                f" (woken by {set_name})" if set_name else "")
    newest_mjd = waiting.newest_data_mjd(latest)
    now = datetime.now(timezone.utc)
    histories: dict[str, list[dict]] | None = None
    states: dict[str, str] = {}
    details: dict[str, str] = {}
    hand_off = HandOff(target_group, target_deployment, logger)
    for row in candidates:
        group_id = row["group_id"]
        covering = _covering_sets(settings, row)
        if row["stage"] == UNCALIBRATED and (covering is None or set_name not in covering):
            continue  # terminal: only a registration whose set covers it wakes it
        if covering is None:
            states[group_id], details[group_id] = STILL_WAITING, ""
            if row["stage"] != WAITING:
                continue
            if histories is None:  # one read, only when some group is not covered
                histories = _waiting_histories(settings, [r for r in candidates if r["stage"] == WAITING])
            reason = waiting.wait_ended(row, history=histories.get(group_id, []), newest_mjd=newest_mjd, now=now,
                                        horizon_hours=settings.cal_wait_horizon_effective_hours,
                                        max_wait_hours=settings.cal_wait_max_hours)
            if reason is not None:
                states[group_id], details[group_id] = _end_waiting(settings, row, reason, logger)
            continue
        state, detail, result = hand_off(f"target-{group_id}", dict(ms_or_group_id=group_id, base_dir=base_dir))
        states[group_id], details[group_id] = ((result["state"], str(result.get("caltable_set") or ""))
                                               if result else (state, detail))
    if states:
        create_markdown_artifact(key="wake-summary", markdown=summary_markdown(states, details),
                                 description="groups waiting for calibration")
    return states
