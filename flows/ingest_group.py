"""The ``ingest_group`` flow: incoming subband files -> validated, recorded MSs.

One sweep: discover groups in the incoming directory, record each group's state,
convert every ready group (subbands in parallel inside the writer), and leave
incomplete or bad groups recorded with their reason. Safe to run at any time and
as often as wanted: converted and failed groups are skipped, unchanged states
write nothing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from contimg.config import load_settings
from tasks import ingest


def _summary_markdown(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| group | state | detail |", "|---|---|---|"]
    lines += [f"| {g} | {s} | {d} |" for g, s, d in rows]
    return "\n".join(lines)


@flow(name="ingest_group", log_prints=True)
def ingest_group(
    incoming_dir: str | None = None,
    *,
    allow_incomplete: bool = False,
    writer: str | None = None,
    base_dir: str | None = None,
) -> dict[str, str]:
    """Convert every ready group in the incoming directory.

    Parameters
    ----------
    incoming_dir : str, optional
        Directory to sweep (default: the ``incoming_dir`` setting).
    allow_incomplete : bool
        Also convert groups that timed out incomplete, missing subbands flagged.
    writer : str, optional
        MS writer (default: the ``writer`` setting).
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).

    Returns
    -------
    dict
        Group id -> final state of this sweep.
    """
    logger = get_run_logger()
    settings = load_settings(
        base_dir=Path(base_dir) if base_dir else None,
        incoming_dir=Path(incoming_dir) if incoming_dir else None,
        writer=writer,
    )
    settings.ensure_dirs()
    candidates = ingest.discover(settings)
    states = ingest.record_group_states(settings, candidates)
    details = {c.group_id: "" for c in candidates}
    for candidate in candidates:
        state = states[candidate.group_id]
        convertible = state == "ready" or (state == "incomplete" and allow_incomplete)
        if not convertible:
            if state == "incomplete":
                details[candidate.group_id] = "missing " + ", ".join(f"sb{sb:02d}" for sb in candidate.missing)
            continue
        outcome = ingest.convert(candidate, settings, allow_incomplete=allow_incomplete, return_state=True)
        if outcome.is_completed():
            result = outcome.result()
            states[candidate.group_id] = "converted"
            details[candidate.group_id] = str(result["path"] if isinstance(result, dict) else result.ms_path)
        else:
            states[candidate.group_id] = "failed"
            details[candidate.group_id] = str(outcome.message or "").replace("|", "/")[:300]
            logger.error("group %s failed: %s", candidate.group_id, outcome.message)
    rows = [(g, states[g], details[g]) for g in sorted(states)]
    create_markdown_artifact(
        key="ingest-summary", markdown=_summary_markdown(rows), description="groups seen by this sweep"
    )
    logger.info("sweep of %s: %s", settings.incoming_dir, {s: list(states.values()).count(s) for s in set(states.values())})
    return states
