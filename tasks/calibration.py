"""Calibration as the pipeline runs it: solve + register, look up + apply, each recorded.

Plain functions (:func:`calibrate_group`, :func:`apply_group`) that the ``contimg``
command line calls, and their Prefect task wrappers for the flows. Every call
records what it did: ``cal_registry`` (the set, active or rejected with its
reasons), ``qa_metrics`` (per table and per step), ``ms_index`` (the MS's stage)
and ``stage_runs`` (timing, memory).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import cal_registry, store
from catalog import query as cq
from catalog.errors import NoCalibrationError as CatalogNoCalibration
from contimg import naming
from contimg.calibration.applycal import ApplyTable, apply_tables, check_calibrated
from contimg.calibration.pipeline import CalibrationOptions, CalibrationResult, calibrate_ms
from contimg.calibration.solve import Solution
from contimg.config import Settings
from contimg.conversion.inspect import ms_summary
from contimg.errors import NoCalibrationError
from tasks import records, waiting
from tasks.retry import retry_transient

log = logging.getLogger(__name__)


def group_id_of(ms) -> str:
    """The group id of an MS: from its name (``<stem>.ms``) or, for other names, its start time."""
    gid = naming.group_id_from_stem(naming.ms_table_prefix(ms).name)
    if gid:
        return gid
    from astropy.time import Time

    start = Time(ms_summary(ms)["start_mjd"], format="mjd", scale="utc")
    return start.strftime(naming.GROUP_ID_FORMAT)


def set_name_for(ms, mid_mjd: float, solve_id: str) -> str:
    """A set name unique per solve: ``<ms stem>_<mid MJD>_<solve id>``."""
    return f"{naming.ms_table_prefix(ms).name}_{mid_mjd:.6f}_{solve_id}"


def solve_id_now() -> str:
    """A solve's id: its UTC start, to the second (``20261202T070812``)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def active_set_of(settings: Settings, ms) -> str | None:
    """The active set solved from ``ms`` whose tables all exist, if any (a rerun returns it); the group's
    own self-calibration (type ``SC``) is not a calibrator solve."""
    for row in cal_registry.list_sets(settings.catalog_dir, status="active"):
        if row.get("source_ms") == str(Path(ms).resolve()) and not set(row["types"]) <= cal_registry.SELFCAL_TYPES:
            tables = cq.query(settings.catalog_dir, "SELECT DISTINCT table_path FROM cal_registry WHERE set_name = ?",
                              [row["set_name"]]).column("table_path").to_pylist()
            if tables and all(Path(t).exists() for t in tables):
                return row["set_name"]
    return None


@dataclass(frozen=True)
class Registered:
    """A solved set as registered: its name, verdict and the full result (None when the
    MS already had an active set and nothing was solved)."""

    set_name: str
    status: str
    result: CalibrationResult | None


def calibrate_group(settings: Settings, ms, *, options: CalibrationOptions | None = None,
                    force: bool = False) -> Registered:
    """Calibrate a calibrator group's MS and register the set (active or rejected).

    Idempotent: an MS that already has an active set (tables present) returns it
    unless ``force``. Every solve has its own id, so the caltables of earlier
    solves (rejected ones included) are never overwritten. Caltables go to
    ``naming.caltable_prefix`` of the group and solve, logs to its log
    directory, the bandpass plot to its QA directory.
    """
    ms = Path(ms).resolve()
    group_id = group_id_of(ms)
    if not force and (existing := active_set_of(settings, ms)):
        return Registered(existing, "active", None)
    solve_id = solve_id_now()
    options = options or CalibrationOptions(bandpass_min_snr=settings.bandpass_min_snr,
                                            gain_min_snr=settings.gain_min_snr, refant=settings.refant)
    if options.catalog is None and settings.calibrator_catalog is not None:
        options = dataclasses.replace(options, catalog=settings.calibrator_catalog)
    logs = naming.casa_log_path(settings.products_dir, group_id, "calibrate").parent
    with records.stage_run(settings, group_id, "calibrate") as info:
        options, kb_set = _gains_only_if_faint(settings, ms, options)
        prefix = naming.caltable_prefix(settings.products_dir, group_id, solve_id)
        qa_dir = naming.qa_dir(settings.products_dir, group_id)
        if settings.calibration_field_model_snr:
            from contimg.calibration.field_model import calibrate_with_field_model
            from contimg.imaging.image import ImagingOptions

            result = calibrate_with_field_model(
                ms, options=options, imaging=ImagingOptions.from_settings(settings), table_prefix=prefix,
                log_dir=logs, qa_dir=qa_dir, work_dir=naming.field_model_work_dir(settings.products_dir, group_id,
                                                                                  solve_id),
                min_snr=settings.calibration_field_model_snr, max_sources=settings.calibration_field_model_max,
                min_fraction=settings.calibration_field_model_min_fraction,
                iterations=settings.calibration_field_model_iterations)
        else:
            result = calibrate_ms(ms, options=options, table_prefix=prefix, log_dir=logs, qa_dir=qa_dir)
        name = set_name_for(ms, result.mid_mjd, solve_id)
        status = "active" if result.passed else "rejected"
        tables = [{
            "path": str(s.path), "type": s.kind, "interp": s.interp, "spwmap": list(s.spwmap),
            "gainfield": s.gainfield, "solver": f"casatasks.{s.task}", "solver_params": s.params,
            "snr_median": result.metrics[s.kind]["snr_median"],
            "flagged_fraction": result.metrics[s.kind]["flagged_fraction"],
            "quality": result.metrics[s.kind],
        } for s in result.solutions]
        cal_registry.register_set(
            settings.catalog_dir, set_name=name, tables=tables, status=status,
            reason="; ".join(result.reasons) or None, obs_date=naming.group_date(group_id),
            mid_mjd=result.mid_mjd, calibrator=result.calibrator, transit_mjd=result.transit_mjd,
            refant=result.refant, refant_ranking=result.refant_ranking[:10], source_ms=str(ms), kb_set=kb_set,
            kb_validity_hours=settings.cal_kb_validity_hours, g_max_gap_hours=settings.cal_g_max_gap_hours)
        rows = []
        for kind, metrics in result.metrics.items():
            rows += records.qa_rows(f"{name}/{kind}", "caltable", group_id, "calibrate", metrics,
                                    passed=result.passed)
        rows += records.qa_rows(str(ms), "ms", group_id, "calibrate", records.flag_metrics(result.flagging))
        rows += records.qa_rows(name, "caltable_set", group_id, "calibrate",
                                {"passed": result.passed, "reasons": result.reasons, "refant": result.refant,
                                 **{f"seconds/{k}": v for k, v in result.timings.items()},
                                 **_field_metrics(result.model.get("field"))}, passed=result.passed)
        store.append(settings.catalog_dir, "qa_metrics", rows)
        store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(
            records.latest_ms(settings, group_id), group_id, ms,
            stage="calibrated" if result.passed else "failed", is_calibrator=True,
            calibrator=result.calibrator, caltable_set=name,
            error=None if result.passed else "calibration rejected: " + "; ".join(result.reasons))])
        info["detail"] = {"set": name, "status": status, "kb_set": kb_set}
    return Registered(name, status, result)


def _field_metrics(field: dict | None) -> dict:
    """The field model's record for ``qa_metrics`` (none when it was not made)."""
    if field is None:
        return {}
    return {"field_sources": len(field["sources"]), "field_model_threshold_jy": field["threshold_jy"],
            "field_model_sources": field["sources"], "field_model_fluxes_by_iteration": field["fluxes_by_iteration"],
            **({"field_model_error": field["error"]} if "error" in field else {})}


def _gains_only_if_faint(settings: Settings, ms: Path, options: CalibrationOptions):
    """Options that solve gains only, against the K/B set in force, when the calibrator is faint.

    A calibrator of at least ``cal_kb_min_flux_jy`` (or any, when no K/B set is in
    force) solves its own delay and bandpass. Returns ``(options, kb_set name or None)``.
    """
    from contimg.calibration.pipeline import find_group_calibrator

    if options.kb_tables:
        return options, None
    cal = find_group_calibrator(ms, options.calibrator, options.catalog)
    if cal.flux_jy >= settings.cal_kb_min_flux_jy:
        return options, None
    found = cal_registry.active_kb_set(settings.catalog_dir, ms_summary(ms)["mid_mjd"],
                                       kb_max_age_hours=settings.cal_kb_validity_hours)
    if found is None:
        log.info("%s: %s (%.2f Jy) is below %.1f Jy but no K/B set is in force: solving K and B on it",
                 ms, cal.name, cal.flux_jy, settings.cal_kb_min_flux_jy)
        return options, None
    name, refant, kb = found
    prior = tuple(Solution(Path(t.path), t.type, t.interp, list(t.spwmap), t.gainfield) for t in kb)
    return dataclasses.replace(options, kb_tables=prior, refant=refant, calibrator=cal.name), name


#: The ``ms_index`` times of an MS, MJD.
MJD_COLUMNS = ("start_mjd", "mid_mjd", "end_mjd")


def applylist_at(settings: Settings, mjd: float):
    """:func:`catalog.cal_registry.active_applylist` at ``mjd`` under the settings' validity rules.

    Raises
    ------
    catalog.errors.NoCalibrationError
        No set is valid at ``mjd``.
    """
    return cal_registry.active_applylist(settings.catalog_dir, mjd, kb_max_age_hours=settings.cal_kb_validity_hours,
                                         g_max_gap_hours=settings.cal_g_max_gap_hours)


def apply_group(settings: Settings, ms, *, at_mjd: float | None = None) -> dict:
    """Apply the set that is valid for the MS (or for ``at_mjd``) and record the result.

    Raises
    ------
    NoCalibrationError
        No valid set: the MS is recorded ``waiting_for_cal`` and waits for a registration.
    """
    ms = Path(ms).resolve()
    group_id = group_id_of(ms)
    base = records.next_ms_row(records.latest_ms(settings, group_id), group_id, ms)
    summary = ms_summary(ms) if at_mjd is None or base.get("mid_mjd") is None else {}
    # an MS never converted here (``contimg applycal`` on any MS) has no times recorded: without them the
    # sweeps could not tell which set would cover it, nor when its waiting ends
    base.update({k: v for k, v in summary.items() if k in MJD_COLUMNS and base.get(k) is None})
    mjd = at_mjd if at_mjd is not None else summary["mid_mjd"]
    logs = naming.casa_log_path(settings.products_dir, group_id, "applycal")
    waiting = None
    with records.stage_run(settings, group_id, "applycal") as info:
        try:
            applylist = applylist_at(settings, mjd)
        except CatalogNoCalibration as exc:
            store.append(settings.catalog_dir, "ms_index", [{**base, "stage": "waiting_for_cal",
                                                              "cal_applied": False, "error": str(exc)}])
            # waiting is not a failure of the stage: recorded as skipped, with why
            info.update(status="skipped", reason=f"waiting_for_cal: {exc}")
            waiting = exc
        else:
            groups: dict[str, list[ApplyTable]] = {}
            for t in applylist.tables:
                groups.setdefault(t.type, []).append(ApplyTable(Path(t.path), t.type, t.interp, list(t.spwmap),
                                                                t.gainfield))
            # two bracketing G sets: each type's pair becomes one merged table, interpolated in time
            ordered = [g if applylist.interpolate_g and len(g) > 1 else g[0] for g in groups.values()]
            applied = apply_tables(ms, ordered, log_path=logs, work_dir=logs.parent)
            check = check_calibrated(ms)
            sets = ",".join(applylist.set_names)
            store.append(settings.catalog_dir, "ms_index", [{**base, "stage": "applycal_done", "cal_applied": True,
                                                              "caltable_set": sets}])
            metrics = {**check, "seconds": applied["seconds"], "interpolated_g": applylist.interpolate_g,
                       "warnings": applylist.warnings, "applied": applied["gaintable"]}
            store.append(settings.catalog_dir, "qa_metrics",
                         records.qa_rows(str(ms), "ms", group_id, "applycal", metrics))
            info["detail"] = {"sets": sets, "warnings": applylist.warnings}
    if waiting is not None:
        raise NoCalibrationError(f"{ms}: {waiting}") from waiting
    for w in applylist.warnings:
        log.warning("%s: %s", group_id, w)
    return {"sets": applylist.set_names, "warnings": applylist.warnings, "check": check,
            "interpolated_g": applylist.interpolate_g, "gaintable": applied["gaintable"]}


def record_uncalibrated(settings: Settings, group_id: str, reason: str) -> bool:
    """Record that a group stopped waiting for calibration (``ms_index`` ``uncalibrated``), with why.

    Call it holding the group's lease. Nothing is written unless the group's
    latest stage is still ``waiting_for_cal`` and no set covers it now: the check
    and the record are one step under the lease, so a registration or a run that
    came since the sweep looked is never overwritten.

    Parameters
    ----------
    settings : Settings
        Where the catalog is, and the validity rules of the lookup.
    group_id : str
        The group (``YYYY-MM-DDTHH:MM:SS``).
    reason : str
        Why its waiting ended (:func:`tasks.waiting.wait_ended`).

    Returns
    -------
    bool
        True when the row was written.
    """
    latest = records.latest_ms(settings, group_id)
    if not latest or latest["stage"] != waiting.WAITING:
        return False
    mjd = waiting.group_time_mjd(latest)
    if mjd is not None:
        try:
            applylist_at(settings, mjd)
        except CatalogNoCalibration:
            pass
        else:
            return False
    last_lookup = f"; last lookup: {latest['error']}" if latest.get("error") else ""
    store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(
        latest, group_id, latest["path"], stage=waiting.UNCALIBRATED, cal_applied=False,
        error=f"{reason}{last_lookup}")])
    return True


@task(name="calibrate-group", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_transient, tags=["casa"])
def task_calibrate(settings: Settings, ms: str) -> dict:
    """Prefect task of :func:`calibrate_group` (returns the set name and status)."""
    registered = calibrate_group(settings, ms)
    reasons = registered.result.reasons if registered.result else []
    return {"set_name": registered.set_name, "status": registered.status, "reasons": reasons}


@task(name="apply-calibration", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_transient, tags=["casa"])
def task_apply(settings: Settings, ms: str) -> dict:
    """Prefect task of :func:`apply_group`; a group without a valid set returns ``{"waiting_for_cal": why}``.

    Waiting is recorded (``ms_index`` stage ``waiting_for_cal``) and is not a failure,
    so the task run ends Completed: the UI shows red only for what went wrong.
    """
    try:
        return apply_group(settings, ms)
    except NoCalibrationError as exc:
        return {"waiting_for_cal": str(exc)}
