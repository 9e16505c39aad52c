"""Flagging as the pipeline runs it on every group it images: once per MS, recorded, QA-gated.

:func:`flag_group` flags a group's MS with the calibrator groups' own strategy
(:func:`contimg.calibration.flagging.flag_for_calibration` with
:class:`~contimg.calibration.pipeline.CalibrationOptions`' flagging defaults: reset
to the converted flags, zeros and NaN, autocorrelations, subband edges, AOFlagger)
and records the report in ``qa_metrics`` (stage ``flag``, subject the MS; the
metrics of :func:`tasks.records.flag_metrics`, as ``calibrate_group`` writes them)
and the run in ``stage_runs``. The target flow calls its task, :func:`task_flag`,
before applycal.

Once per MS: an MS with a flag report recorded since it was converted (stage
``flag``, or ``calibrate``: a calibrator group that ``calibrate_ms`` flagged) is
not flagged again unless ``force``; so a group woken from ``waiting_for_cal`` keeps
the flags of its first run. Flagging resets to the converted flags, which would
also drop the flags applycal adds, so it must come before applycal, never after.

The QA gate: more than ``max_flagged_fraction`` of the delivered data flagged
(``delivered_flagged_fraction``) and the group is recorded ``failed`` in
``ms_index`` with the fraction and the limit (the ``stage_runs`` row too), not
imaged. The recorded report is judged again with the limit in force on every run,
so raising the limit and running the target flow again images the group without
flagging it again.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import query as cq
from catalog import store
from contimg import naming
from contimg.calibration.flagging import flag_for_calibration
from contimg.calibration.pipeline import CalibrationOptions
from contimg.config import Settings
from tasks import records
from tasks.calibration import group_id_of
from tasks.retry import retry_transient

log = logging.getLogger(__name__)

#: The stages whose ``qa_metrics`` on an MS are a flag report: this module's, and the calibrator's.
FLAG_REPORT_STAGES = ("flag", "calibrate")
#: The metric every flag report has (its first step).
_MARKER = "flagged_after_reset"


def recorded_flagging(settings: Settings, ms, *, group_id: str | None = None) -> dict | None:
    """The flag report recorded for ``ms`` since it was converted, as ``{metric: value}``; None if there is none.

    Parameters
    ----------
    settings : Settings
    ms : path-like
        The MS (the report's subject is its resolved path).
    group_id : str, optional
        Its group (default: from the MS).

    Returns
    -------
    dict or None
        The latest value of each metric of :func:`tasks.records.flag_metrics`
        (text metrics as text), plus ``stage`` (``flag`` or ``calibrate``: whose
        report) and ``recorded_at``. None when no report was recorded, or only
        before the MS's latest conversion (a reconverted MS has new flags).
    """
    ms = Path(ms).resolve()
    group_id = group_id or group_id_of(ms)
    date = naming.group_date(group_id)
    rows = cq.latest(settings.catalog_dir, "qa_metrics", subject=str(ms), obs_date=date)
    rows = [r for r in rows if r.get("stage") in FLAG_REPORT_STAGES and r.get("subject_type") == "ms"]
    marker = next((r for r in rows if r["metric"] == _MARKER), None)
    if marker is None:
        return None
    converted = cq.query(settings.catalog_dir, "SELECT max(recorded_at) AS t FROM ms_index_all WHERE group_id = ? "
                                               "AND obs_date = ? AND stage = 'converted'",
                         [group_id, date]).column("t")[0].as_py()
    if converted is not None and marker["recorded_at"] < converted:
        return None
    # one report's rows are appended together, its marker first: older reports' leftovers are earlier
    out = {r["metric"]: (r["value"] if r["value"] is not None else r["value_text"]) for r in rows
           if r["recorded_at"] >= marker["recorded_at"]}
    return {**out, "stage": marker["stage"], "recorded_at": marker["recorded_at"]}


def _verdict(settings: Settings, delivered: float | None) -> str | None:
    """Why the group fails the flagging QA gate (None: it passes, or the fraction is unknown)."""
    if delivered is None or math.isnan(delivered) or delivered <= settings.max_flagged_fraction:
        return None
    return (f"flagging QA failed: {delivered:.1%} of the delivered data flagged (cross-correlations outside the "
            f"edge channels), above max_flagged_fraction {settings.max_flagged_fraction:.1%}")


def _summary(metrics: dict) -> dict:
    """The few numbers of a flag report a flow and the command line show."""
    def number(name):
        value = metrics.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    return {"flagged_fraction": number("flagged_fraction"),
            "delivered_flagged_fraction": number("delivered_flagged_fraction"),
            "rfi_added_fraction": number("added_by_rfi"), "rfi_backend": metrics.get("rfi_backend")}


def _record_failed(settings: Settings, group_id: str, ms: Path, reason: str) -> None:
    """``ms_index`` stage ``failed`` with ``reason``, unless the latest row says so already (reruns add nothing)."""
    previous = records.latest_ms(settings, group_id)
    if previous and previous.get("stage") == "failed" and previous.get("error") == reason:
        return
    store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(previous, group_id, ms, stage="failed",
                                                                         cal_applied=False, error=reason)])


def flag_group(settings: Settings, ms, *, force: bool = False) -> dict:
    """Flag a group's MS as calibrator groups are flagged, record the report, and judge it.

    Parameters
    ----------
    settings : Settings
        Catalog, products (CASA logs of the fallback RFI backend) and ``max_flagged_fraction``.
    ms : path-like
        The group's Measurement Set (FLAG and FLAG_ROW are rewritten; DATA never).
    force : bool
        Flag again (from the converted flags) although a report is recorded.

    Returns
    -------
    dict
        ``group_id``; ``flagged`` (True: flagged now; False: a recorded report
        was used); ``source`` (``flag`` or ``calibrate``: whose report);
        ``flagged_fraction`` (final, all rows), ``delivered_flagged_fraction``
        (gated), ``rfi_added_fraction`` (all rows), ``rfi_backend``; ``steps``
        (name, flagged fraction after it, seconds; when flagged now);
        ``passed`` and ``reason`` (why not, with the fraction and the limit).

    Raises
    ------
    InvalidInputError
        The MS is missing or unreadable.
    CasaError
        The CASA RFI fallback failed.
    """
    ms = Path(ms).resolve()
    group_id = group_id_of(ms)
    if not force and (recorded := recorded_flagging(settings, ms, group_id=group_id)) is not None:
        out = {"group_id": group_id, "flagged": False, "source": recorded["stage"], **_summary(recorded),
               "steps": []}
        reason = _verdict(settings, out["delivered_flagged_fraction"])
        if reason:
            _record_failed(settings, group_id, ms, reason)
        log.info("%s: flagged already (%s report of %s); not flagged again", group_id, recorded["stage"],
                 recorded["recorded_at"])
        return {**out, "passed": reason is None, "reason": reason}
    # the calibrator groups' own flagging parameters: one definition for both paths
    options = CalibrationOptions()
    logs = naming.casa_log_path(settings.products_dir, group_id, "flag").parent
    with records.stage_run(settings, group_id, "flag") as info:
        report = flag_for_calibration(ms, log_dir=logs, edge_channels=options.edge_channels, rfi=options.rfi,
                                      rfi_backend=options.rfi_backend).to_dict()
        metrics = records.flag_metrics(report)
        reason = _verdict(settings, report["delivered_flagged_fraction"])
        rows = records.qa_rows(str(ms), "ms", group_id, "flag", metrics)
        for row in rows:
            if row["metric"] == "delivered_flagged_fraction":  # the gated metric carries the verdict
                row.update(threshold=settings.max_flagged_fraction, passed=reason is None)
        store.append(settings.catalog_dir, "qa_metrics", rows)
        if reason:
            _record_failed(settings, group_id, ms, reason)
            # bad data is recorded, not raised: a retry would flag the same data the same way
            info.update(status="failed", reason=reason)
    steps = [{"step": s["step"], "flagged_fraction": s["flagged_fraction"], "seconds": s["seconds"]}
             for s in report["steps"]]
    return {"group_id": group_id, "flagged": True, "source": "flag", **_summary(metrics), "steps": steps,
            "passed": reason is None, "reason": reason}


@task(name="flag-group", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_transient, tags=["casa"])
def task_flag(settings: Settings, ms: str, *, force: bool = False) -> dict:
    """Prefect task of :func:`flag_group`; a group over the limit returns ``passed`` False with the reason.

    Failing the QA gate is recorded (``ms_index`` ``failed``) and is not a fault of
    the task, so its run ends Completed, as a rejected calibration's does.
    """
    return flag_group(settings, ms, force=force)
