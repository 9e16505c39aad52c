"""The data of ``contimg status``: one screen saying how the pipeline is doing.

:func:`summary` returns plain Python structures (lists of dicts) so the command
line, a Prefect artifact or a notebook can render them as they like.
"""

from __future__ import annotations

import os

from catalog import query as q
from catalog import schema as sch

FAILURES_SQL = """
WITH runs AS (
    SELECT * FROM stage_runs
    QUALIFY row_number() OVER (PARTITION BY group_id, stage ORDER BY started_at DESC, recorded_at DESC) = 1
)
SELECT recorded_at, group_id, 'groups' AS source, state AS status, reason AS error
    FROM groups WHERE state IN ('failed', 'quarantined')
UNION ALL
SELECT recorded_at, group_id, 'ms_index', stage, error
    FROM ms_index WHERE stage IN ('failed', 'applycal_failed')
UNION ALL
SELECT recorded_at, group_id, 'stage_runs/' || stage, status, error
    FROM runs WHERE status = 'failed'
ORDER BY recorded_at DESC
LIMIT ?
"""

WAITING_SQL = """
SELECT recorded_at, group_id, 'groups' AS source, state AS status, reason AS detail
    FROM groups WHERE state IN ('collecting', 'ready', 'incomplete', 'converting')
UNION ALL
SELECT recorded_at, group_id, 'ms_index', stage, error
    FROM ms_index WHERE stage = 'waiting_for_cal'
ORDER BY recorded_at DESC
LIMIT ?
"""

#: Groups whose wait for calibration ended without a set (terminal until a covering registration or a run by
#: hand): with the reason, in full (``error``: why it ended, then the last lookup's answer).
UNCALIBRATED_SQL = """
SELECT recorded_at, group_id, error AS reason
FROM ms_index WHERE stage = 'uncalibrated'
ORDER BY recorded_at DESC
LIMIT ?
"""

IMAGES_SQL = """
SELECT recorded_at, group_id, path, noise_jy, dynamic_range, beam_major_arcsec, beam_minor_arcsec
FROM images WHERE type IN ('pbcor', 'image', 'fits')
-- one row per group: its pbcor image where there is one (an imager run records image and pbcor together)
QUALIFY row_number() OVER (PARTITION BY group_id ORDER BY type = 'pbcor' DESC, recorded_at DESC) = 1
ORDER BY recorded_at DESC
LIMIT ?
"""

TIMING_SQL = """
SELECT stage, count(*) AS runs, count(*) FILTER (WHERE status = 'failed') AS failed,
       round(median(seconds), 1) AS median_s, round(max(seconds), 1) AS max_s,
       round(max(peak_memory_mb), 0) AS peak_mb
FROM stage_runs GROUP BY stage ORDER BY stage
"""


def _rows(catalog_dir, sql: str, params=None) -> list[dict]:
    return q.query(catalog_dir, sql, params).to_pylist()


def summary(catalog_dir: str | os.PathLike, *, limit: int = 10) -> dict:
    """Everything ``contimg status`` shows.

    Returns
    -------
    dict
        ``groups_by_state`` and ``ms_by_stage`` ({state: count}), ``failures``,
        ``waiting``, ``uncalibrated`` (with ``reason``) and ``latest_images`` (newest
        first, at most ``limit`` each),
        ``stage_timing`` (per stage: runs, failed, median/max seconds, peak MB),
        ``unreadable_files`` ([(path, reason)]).
    """
    groups = {r["state"]: r["n"] for r in _rows(
        catalog_dir, "SELECT state, count(*) AS n FROM groups GROUP BY state ORDER BY state")}
    ms = {r["stage"]: r["n"] for r in _rows(
        catalog_dir, "SELECT stage, count(*) AS n FROM ms_index GROUP BY stage ORDER BY stage")}
    unreadable = []
    for table in sch.TABLES:
        unreadable += q.good_files(catalog_dir, table)[1]
    return {
        "groups_by_state": groups,
        "ms_by_stage": ms,
        "failures": _rows(catalog_dir, FAILURES_SQL, [limit]),
        "waiting": _rows(catalog_dir, WAITING_SQL, [limit]),
        "uncalibrated": _rows(catalog_dir, UNCALIBRATED_SQL, [limit]),
        "latest_images": _rows(catalog_dir, IMAGES_SQL, [limit]),
        "stage_timing": _rows(catalog_dir, TIMING_SQL),
        "unreadable_files": unreadable,
    }
