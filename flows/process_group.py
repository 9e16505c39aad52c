"""The reaction to ``contimg.group.converted``: route a converted group to its flow.

``process_group`` classifies the group (:func:`contimg.sky.selection.classify_group`
on its MS: does a calibrator transit inside the primary beam?). A calibrator
group runs :func:`flows.calibrator_group.calibrator_group` and then, when its
set is active, :func:`flows.target_group.target_group` as well (its field is
imaged like any other, with its own set); a target group runs ``target_group``
(imaged, or left ``waiting_for_cal``). Both are subflows and idempotent.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from catalog import query as catalog_query
from contimg.sky.selection import classify_group
from flows._groups import HandOff, check_instance, resolve, settings_for
from flows.calibrator_group import ALREADY_ACTIVE, calibrator_group
from flows.target_group import target_group


@flow(name="process_group", flow_run_name="process-{ms_or_group_id}", log_prints=True)
def process_group(ms_or_group_id: str, *, base_dir: str | None = None, instance: str | None = None) -> dict:
    """Calibrate a calibrator group, or apply and image a target group.

    Parameters
    ----------
    ms_or_group_id : str
        A group id (its recorded MS) or an MS path.
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    instance : str, optional
        The pipeline instance the run is for (the deployment and its trigger set
        it); another instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        ``group_id``, ``kind`` (``calibrator`` or ``target``), ``calibration``
        (the calibrator flow's result, calibrator groups only) and ``target``
        (the target flow's result, when it ran).
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance, ms_or_group_id=ms_or_group_id)
    ms, group_id = resolve(settings, ms_or_group_id)
    found = classify_group(ms)
    out: dict = {"group_id": group_id, "kind": found.kind, "calibration": None, "target": None}
    if found.kind == "calibrator":
        logger.info("%s: calibrator group (%s)", group_id, found.calibrator.name)
        out["calibration"] = calibrator_group(ms_or_group_id, base_dir=base_dir)
        if out["calibration"]["state"] not in ("active", ALREADY_ACTIVE):
            return out
    out["target"] = target_group(ms_or_group_id, base_dir=base_dir)
    return out


#: Latest ms_index stages of a group the converted-group route has not finished (failed and waiting excluded:
#: bad input is not retried, waiting groups are woken by a registration).
UNFINISHED_STAGES = ("converted", "calibrated", "applycal_done")


@flow(name="process_converted", log_prints=True)
def process_converted(*, base_dir: str | None = None, group_deployment: str | None = None,
                      instance: str | None = None) -> dict[str, str]:
    """The periodic safety net of ``contimg.group.converted``: ``process_group`` for every unfinished group.

    A group whose latest ``ms_index`` stage is ``converted``, ``calibrated`` (a
    calibrator group not yet imaged) or ``applycal_done`` (imaging never ran) is
    routed again; so a lost event, or a run killed half way, delays a group by one
    sweep.

    Parameters
    ----------
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    group_deployment : str, optional
        ``"<flow>/<deployment>"`` of ``process_group`` to submit each group to,
        without waiting. Unset: subflows, in turn.
    instance : str, optional
        The pipeline instance the run is for (the deployment sets it); another
        instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        Group id -> ``submitted``, ``failed``, or the state the route ended in (the
        target flow's, else the calibrator flow's).
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance)
    rows = [r for r in catalog_query.latest(settings.catalog_dir, "ms_index") if r["stage"] in UNFINISHED_STAGES]
    hand_off = HandOff(process_group, group_deployment, logger)
    states: dict[str, str] = {}
    for row in rows:
        group_id = row["group_id"]
        state, _, result = hand_off(f"process-{group_id}", dict(ms_or_group_id=group_id, base_dir=base_dir))
        states[group_id] = (result["target"] or result["calibration"] or {}).get("state", "?") if result else state
    logger.info("%d unfinished group(s): %s", len(states), states)
    return states
