"""When a group stops waiting for calibration: one decision, pure on catalog rows (no Prefect, no I/O).

A target group with no valid caltable set is recorded ``waiting_for_cal``; a
registration that covers it wakes it. Waiting must end, or a group that no set
can ever cover (an MS from 2010, a night whose calibrator was never solved) is
looked at forever. :func:`wait_ended` says when, for the sweep
(:func:`flows.target_group.wake_waiting`), which then records the group
``uncalibrated``: terminal, not swept again, but still woken by a later
registration that covers it and by ``contimg run target GROUP --force``.

Waiting ends, whichever comes first:

* **data time**: a group that starts more than the horizon after this group's
  mid time has been converted (``ms_index`` has it). The horizon is the
  ``cal_wait_horizon_hours`` setting; unset, ``cal_g_max_gap_hours``: a gain set
  from later data cannot cover a group that no earlier set covers (the nearest set
  must be within it; of two bracketing sets, the earlier is then more than it before
  the group, so the later must be less than it after). A set that covers the group
  after all (its calibrator solved late, a K/B set from a later strong calibrator)
  still wakes it when registered.
* **wall clock**: ``cal_wait_max_hours`` since the group was first recorded
  waiting (its current wait: a run that finds it waiting again does not restart
  the clock; one after it left waiting does). This ends the wait when no new
  data arrive (the correlator down, an old MS processed by hand).

A negative setting switches its rule off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

WAITING = "waiting_for_cal"
#: Waiting ended without a set: terminal for the sweeps (ms_index stage).
UNCALIBRATED = "uncalibrated"

#: Unix epoch as MJD, to turn a group id (its first subband's UTC time) into MJD.
_MJD_UNIX_EPOCH = 40587.0


def group_id_mjd(group_id: str) -> float | None:
    """A group id's time (``YYYY-MM-DDTHH:MM:SS``, UTC) as MJD, or ``None`` when it is not one."""
    try:
        t = datetime.strptime(group_id, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None
    return _MJD_UNIX_EPOCH + t.timestamp() / 86400.0


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def group_time_mjd(row: Mapping) -> float | None:
    """The time a set must cover for an ``ms_index`` row: its mid time (else start, else its group id), MJD."""
    for key in ("mid_mjd", "start_mjd"):
        if (value := _finite(row.get(key))) is not None:
            return value
    return group_id_mjd(row.get("group_id", ""))


def group_start_mjd(row: Mapping) -> float | None:
    """When an ``ms_index`` row's data start: ``start_mjd`` (else its group id, else its mid time), MJD."""
    if (value := _finite(row.get("start_mjd"))) is not None:
        return value
    found = group_id_mjd(row.get("group_id", ""))
    return found if found is not None else _finite(row.get("mid_mjd"))


def newest_data_mjd(rows: Iterable[Mapping]) -> float | None:
    """How far converted data reach: the latest start among ``ms_index`` rows (any stage), MJD."""
    starts = [t for t in (group_start_mjd(r) for r in rows) if t is not None]
    return max(starts) if starts else None


def waiting_since(history: Iterable[Mapping]) -> datetime | None:
    """When the group's current wait began: the first of its latest unbroken run of ``waiting_for_cal`` rows.

    Parameters
    ----------
    history : iterable of mapping
        The group's ``ms_index`` rows (any order), each with ``stage`` and ``recorded_at``.

    Returns
    -------
    datetime or None
        ``recorded_at`` of that first row; ``None`` when the latest row is not waiting.
    """
    since = None
    for row in sorted(history, key=lambda r: (r["recorded_at"], r.get("event_id") or "")):
        if row["stage"] != WAITING:
            since = None
        elif since is None:
            since = row["recorded_at"]
    return since


def _iso(mjd: float) -> str:
    seconds = (mjd - _MJD_UNIX_EPOCH) * 86400.0
    return datetime.fromtimestamp(round(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def wait_ended(row: Mapping, *, history: Iterable[Mapping], newest_mjd: float | None, now: datetime,
               horizon_hours: float, max_wait_hours: float) -> str | None:
    """Why a group waiting for calibration stops waiting, or ``None`` while it still may be covered.

    Call it only for a group that no active set covers now (the sweep looks that
    up first): this decides on the catalog rows alone.

    Parameters
    ----------
    row : mapping
        The group's latest ``ms_index`` row (stage ``waiting_for_cal``).
    history : iterable of mapping
        The group's ``ms_index`` rows (``stage``, ``recorded_at``): when its wait began.
    newest_mjd : float or None
        How far converted data reach (:func:`newest_data_mjd` over the latest ``ms_index`` rows), MJD.
    now : datetime
        The time of the decision (timezone-aware, UTC).
    horizon_hours : float
        Data time past the group's time after which no set can cover it, hours; negative: no such rule.
    max_wait_hours : float
        Wall-clock limit since the group was first recorded waiting, hours; negative: no limit.

    Returns
    -------
    str or None
        One line for the record and ``contimg status``; ``None``: keep waiting.
    """
    if row.get("stage") != WAITING:
        return None
    t = group_time_mjd(row)
    if horizon_hours >= 0 and t is not None and newest_mjd is not None and newest_mjd > t + horizon_hours / 24.0:
        return (f"no caltable set covers it and converted data reach {_iso(newest_mjd)}, past its time "
                f"{_iso(t)} + {horizon_hours:g} h (cal_wait_horizon_hours)")
    since = waiting_since(history)
    if max_wait_hours >= 0 and since is not None:
        waited_h = (now - since).total_seconds() / 3600.0
        if waited_h > max_wait_hours:
            return (f"no caltable set covers it after {waited_h:.3g} h of waiting since "
                    f"{since.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S} (cal_wait_max_hours {max_wait_hours:g})")
    return None
