"""What each stage writes into the catalog, as plain functions (no Prefect).

The Prefect tasks and the ``contimg`` command line both record through these, so
a group converted by hand and one converted by the flow leave identical rows.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from catalog import query as catalog_query
from catalog import store
from contimg import naming
from contimg.config import Settings
from contimg.conversion.convert import ConversionResult
from contimg.conversion.discovery import GroupCandidate
from tasks.memory import StagePeakMemory

log = logging.getLogger(__name__)

#: Group states after which neither the sweep nor the watcher touches a group again.
FINAL_GROUP_STATES = frozenset({"converted", "failed"})


def _utc(ts: float | None = None) -> datetime:
    return datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)


def flow_run_id() -> str | None:
    """The id of the Prefect flow run we are in, or ``None`` outside one."""
    return _flow_run_id()


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run  # only present under Prefect

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run
        return None


def latest_group_states(settings: Settings) -> dict[str, dict]:
    """The latest ``groups`` row per group id."""
    rows = catalog_query.latest(settings.catalog_dir, "groups")
    return {row["group_id"]: row for row in rows}


def latest_group_state(settings: Settings, group_id: str) -> dict | None:
    """The latest ``groups`` row of one group, or ``None``."""
    rows = catalog_query.latest(settings.catalog_dir, "groups", group_id=group_id,
                                obs_date=naming.group_date(group_id))
    return rows[0] if rows else None


def latest_ms(settings: Settings, group_id: str) -> dict | None:
    """The latest ``ms_index`` row of a group, or ``None``."""
    rows = catalog_query.latest(settings.catalog_dir, "ms_index", group_id=group_id,
                                obs_date=naming.group_date(group_id))
    return rows[0] if rows else None


def group_row(candidate: GroupCandidate, state: str, *, reason: str | None = None,
              quarantine_path: Path | None = None) -> dict:
    """A ``groups`` row describing a candidate in ``state``."""
    return {
        "group_id": candidate.group_id,
        "obs_date": naming.group_date(candidate.group_id),
        "state": state,
        "subbands_present": sorted(candidate.files),
        "subbands_missing": list(candidate.missing),
        "n_present": len(candidate.files),
        "files": [str(p) for _, p in sorted(candidate.files.items())],
        "duplicates": [str(p) for p in candidate.duplicates],
        "first_seen": _utc(candidate.first_seen),
        "reason": reason,
        "quarantine_path": str(quarantine_path) if quarantine_path is not None else None,
    }


def record_group(settings: Settings, candidate: GroupCandidate, state: str, *, reason: str | None = None,
                 previous: dict | None = None, quarantine_path: Path | None = None) -> bool:
    """Append a ``groups`` row unless the latest row already says the same.

    Returns
    -------
    bool
        True when a row was written.
    """
    row = group_row(candidate, state, reason=reason, quarantine_path=quarantine_path)
    if previous is not None and all(
        previous.get(k) == row[k] for k in ("state", "subbands_present", "duplicates", "reason")
    ):
        return False
    store.append(settings.catalog_dir, "groups", [row])
    return True


def ms_row(result: ConversionResult, *, stage: str = "converted") -> dict:
    """An ``ms_index`` row for a converted group."""
    return {
        "group_id": result.group_id,
        "obs_date": naming.group_date(result.group_id),
        "path": str(result.ms_path),
        "stage": stage,
        "writer": result.writer,
        "start_mjd": result.start_mjd,
        "mid_mjd": result.mid_mjd,
        "end_mjd": result.end_mjd,
        "pointing_ra_deg": result.pointing_ra_deg,
        "pointing_dec_deg": result.pointing_dec_deg,
        "subbands_missing": list(result.subbands_missing),
        "cal_applied": False,
    }


#: ``ms_index`` columns that describe the MS itself: a stage that records the MS's new state carries them over.
MS_DESCRIPTION = ("writer", "start_mjd", "mid_mjd", "end_mjd", "pointing_ra_deg", "pointing_dec_deg",
                  "subbands_missing", "is_calibrator", "calibrator")


def next_ms_row(previous: dict | None, group_id: str, ms, **fields) -> dict:
    """An ``ms_index`` row for the MS's next state: ``previous``'s description of the MS, then ``fields``.

    Parameters
    ----------
    previous : dict or None
        The group's latest ``ms_index`` row (:func:`latest_ms`).
    group_id : str
    ms : path-like
        The MS (its path is the row's ``path``).
    **fields
        ``stage``, ``error``, ``caltable_set``... (win over the carried columns).
    """
    previous = previous or {}
    return {**{k: previous.get(k) for k in MS_DESCRIPTION}, "group_id": group_id,
            "obs_date": naming.group_date(group_id), "path": str(ms), **fields}


def flag_metrics(report: dict) -> dict:
    """The ``qa_metrics`` of a flag report (:meth:`contimg.calibration.flagging.FlagReport.to_dict`), by name.

    ``flagged_after_<step>`` (cumulative, all rows), ``added_by_<step>`` and
    ``seconds/<step>`` per step; ``flagged/antNNN`` (antenna number) and
    ``flagged/spwNN`` (cross-correlations); ``flagged_fraction`` (final, all rows),
    ``delivered_flagged_fraction`` (what the data made us flag) and ``rfi_backend``.
    Fractions 0..1, seconds wall-clock. The calibrator and target paths both record these.
    """
    steps = report["steps"]
    out: dict = {f"flagged_after_{s['step']}": s["flagged_fraction"] for s in steps}
    out.update({f"added_by_{s['step']}": s["added_fraction"] for s in steps})
    out.update({f"seconds/{s['step']}": s["seconds"] for s in steps})
    out.update({f"flagged/ant{int(a):03d}": f for a, f in report["per_antenna"].items()})
    out.update({f"flagged/spw{int(s):02d}": f for s, f in report["per_spw"].items()})
    out["flagged_fraction"] = report["flagged_fraction"]
    out["delivered_flagged_fraction"] = report.get("delivered_flagged_fraction", float("nan"))
    out["rfi_backend"] = report["rfi_backend"]
    return out


def record_conversion(settings: Settings, result: ConversionResult, candidate: GroupCandidate | None = None) -> None:
    """Record a converted MS in ``ms_index`` (and its group as converted)."""
    store.append(settings.catalog_dir, "ms_index", [ms_row(result)])
    if candidate is not None:
        store.append(settings.catalog_dir, "groups", [group_row(candidate, "converted")])


@contextmanager
def stage_run(settings: Settings, group_id: str, stage: str) -> Iterator[dict]:
    """Time a stage and record it in ``stage_runs`` (also when it fails).

    Yields a dict the caller may add ``detail`` to, and ``status`` (``skipped``) with a ``reason``
    when the stage had nothing it could do yet (recorded as such, not as a failure).
    """
    started = time.time()
    info: dict = {}
    status, error = "completed", None
    memory = StagePeakMemory()
    try:
        with memory:
            yield info
        status = info.pop("status", status)  # e.g. "skipped": nothing to do yet, not a failure
        error = info.pop("reason", None)
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ended = time.time()
        row = {
            "group_id": group_id,
            "obs_date": naming.group_date(group_id),
            "stage": stage,
            "status": status,
            "started_at": _utc(started),
            "ended_at": _utc(ended),
            "seconds": ended - started,
            "peak_memory_mb": memory.peak_bytes / 2**20,
            "host": socket.gethostname(),
            "user": getpass.getuser(),
            "pid": os.getpid(),
            "flow_run_id": _flow_run_id(),
            "error": error,
        }
        try:
            store.append(settings.catalog_dir, "stage_runs", [row])
        except Exception:  # noqa: BLE001 - never mask the stage's own outcome
            log.exception("could not record stage run %s/%s", group_id, stage)


def existing_ms(settings: Settings, group_id: str) -> Path | None:
    """The group's MS if it exists on disk where naming puts it."""
    path = naming.ms_path(settings.products_dir, group_id)
    return path if path.exists() else None


def qa_rows(subject: str, subject_type: str, group_id: str, stage: str, metrics: dict, *,
             passed: bool | None = None) -> list[dict]:
    """``qa_metrics`` rows of one subject: numbers in ``value``, anything else as JSON in ``value_text``."""
    rows = []
    for name, value in metrics.items():
        row = {"subject": subject, "subject_type": subject_type, "metric": name, "group_id": group_id,
               "obs_date": naming.group_date(group_id), "stage": stage, "passed": passed}
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            row["value_text"] = json.dumps(value) if not isinstance(value, str) else value
        else:
            row["value"] = float(value)
        rows.append(row)
    return rows
