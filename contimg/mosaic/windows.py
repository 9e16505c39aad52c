"""Mosaic windows: which group start times a mosaic covers, and which slots of the cadence are empty.

A window is a half-open interval ``[start, end)`` of group start times (UTC). The
pipeline's default windows are clock hours: every group belongs to exactly one, and
"the mosaics of this hour" is one query. At the correlator's cadence (24 integrations of
12.885 s = 309.24 s) an hour holds 11 or 12 group starts, DOMAIN.md's "12 MS per hour".
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

from contimg import instrument, naming

#: Start-to-start time of consecutive groups, s.
CADENCE_S = instrument.INTEGRATIONS_PER_FILE * instrument.INTEGRATION_TIME_S


def parse_time(text: str) -> datetime:
    """A UTC time ``YYYY-MM-DDTHH:MM[:SS]`` (``T`` or a space; a trailing ``Z`` allowed), naive UTC.

    Raises
    ------
    ValueError
        Anything else, with the accepted forms in the message.
    """
    raw = str(text).strip().rstrip("Zz").replace(" ", "T")
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H", "%Y-%m-%d"):
        try:
            return datetime.strptime(raw, fmt)
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a UTC time: give YYYY-MM-DDTHH:MM[:SS] (e.g. 2026-11-25T08:00)")


def hour_window(group_id: str) -> tuple[datetime, datetime]:
    """The clock hour ``[HH:00, HH+1:00)`` (UTC) a group's start falls in."""
    start = naming.parse_group_id(group_id).replace(minute=0, second=0, microsecond=0)
    return start, start + timedelta(hours=1)


def window_ids(start: datetime, end: datetime) -> tuple[str, str]:
    """The window's bounds as group ids (group ids sort as times: ``start_id <= id < end_id``)."""
    return naming.group_id_from_datetime(start), naming.group_id_from_datetime(end)


def to_mjd(when: datetime) -> float:
    """MJD (UTC) of a naive-UTC datetime."""
    epoch = datetime(1858, 11, 17)
    return (when.replace(tzinfo=None) - epoch).total_seconds() / 86400.0


def cadence_of(times: list[datetime]) -> float:
    """The start-to-start time of groups, s: the median spacing of ``times`` (sorted), at most :data:`CADENCE_S`
    (a gap does not lengthen it; the simulator's small groups are shorter than the telescope's)."""
    spacings = [(b - a).total_seconds() for a, b in zip(times, times[1:]) if b > a]
    return min(float(np.median(spacings)), CADENCE_S) if spacings else CADENCE_S


def empty_slots(group_ids: list[str], start: datetime, end: datetime, *, cadence_s: float | None = None) -> list[str]:
    """Start times (group ids) of the cadence's slots in ``[start, end)`` that no known group fills.

    The slots are the known groups' cadence (``cadence_s``, default :func:`cadence_of` the known groups)
    continued through the window from the first known group; a slot is filled by a group within half a
    cadence of it (start times jitter by seconds). With no known group there are no slots to speak of.
    """
    times = sorted(naming.parse_group_id(g) for g in group_ids)
    if not times:
        return []
    cadence_s = cadence_s or cadence_of(times)
    anchor = times[0]
    k0 = math.ceil((start - anchor).total_seconds() / cadence_s - 1e-9)
    k1 = math.ceil((end - anchor).total_seconds() / cadence_s - 1e-9)
    out = []
    for k in range(k0, k1):
        slot = anchor + timedelta(seconds=k * cadence_s)
        if not any(abs((t - slot).total_seconds()) < cadence_s / 2 for t in times):
            out.append(naming.group_id_from_datetime(slot))
    return out


def utc_now() -> datetime:
    """Now, naive UTC (as the windows are)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
