"""Prefect tasks of the ingest stage: thin wrappers over contimg.conversion.

Each task records what happened in the catalog (through :mod:`tasks.records`),
retries only transient faults, and is idempotent: a group whose MS is recorded
and present is returned as is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from contimg import naming
from contimg.config import Settings
from contimg.conversion.convert import ConversionResult, convert_group
from contimg.conversion.discovery import GroupCandidate, discover_groups
from contimg.conversion.inspect import ms_summary
from contimg.errors import IncompleteGroupError, InvalidInputError
from contimg.quarantine import quarantine_files
from contimg.sky.pointing import load_pointing
from tasks import events, records
from tasks.retry import is_transient, retry_transient

log = logging.getLogger(__name__)

@task(name="discover-groups", cache_policy=NO_CACHE)
def discover(settings: Settings) -> list[GroupCandidate]:
    """Group the subband files in the incoming directory."""
    return discover_groups(
        settings.incoming_dir,
        tolerance_s=settings.group_tolerance_s,
        settle_s=settings.file_settle_s,
        timeout_s=settings.group_timeout_s,
        expected_subbands=settings.expected_subbands,
    )


@task(name="record-group-states", cache_policy=NO_CACHE)
def record_group_states(settings: Settings, candidates: list[GroupCandidate]) -> dict[str, str]:
    """Record each group's discovery state when it changed; return the effective states.

    Groups already converted or failed keep that state: a sweep never downgrades
    them, so rerunning the flow writes nothing new.
    """
    latest = records.latest_group_states(settings)
    effective = {}
    for candidate in candidates:
        previous = latest.get(candidate.group_id)
        if previous and previous["state"] in records.FINAL_GROUP_STATES:
            effective[candidate.group_id] = previous["state"]
            _quarantine_latecomers(settings, candidate, previous)
            continue
        reason = None
        if candidate.state == "incomplete":
            reason = "missing " + ", ".join(f"sb{sb:02d}" for sb in candidate.missing)
        records.record_group(settings, candidate, candidate.state, reason=reason, previous=previous)
        effective[candidate.group_id] = candidate.state
    return effective


def _recover_unrecorded(settings: Settings, candidate: GroupCandidate, ms_path: Path, writer: str) -> ConversionResult:
    """An MS moved into place (so it passed the gate) whose recording was lost."""
    summary = ms_summary(ms_path)
    pointing = load_pointing(next(iter(candidate.files.values())))
    log.warning("%s exists but was not recorded (killed worker?); recording it", ms_path)
    return ConversionResult(
        group_id=candidate.group_id, ms_path=ms_path, writer=writer,
        subbands_present=sorted(candidate.files), subbands_missing=list(candidate.missing),
        start_mjd=summary["start_mjd"], mid_mjd=summary["mid_mjd"], end_mjd=summary["end_mjd"],
        pointing_ra_deg=summary["phase_centre_ra_deg"], pointing_dec_deg=float(pointing.dec.deg),
        seconds=0.0,
    )


def _quarantine_latecomers(settings: Settings, candidate: GroupCandidate, previous: dict) -> None:
    """Files of a group already quarantined that arrived since: they join it, so nothing lingers in incoming."""
    if previous["state"] == "failed" and naming.quarantine_dir(settings.quarantine_dir, candidate.group_id).is_dir():
        _quarantine(settings, candidate, "arrived after the group was quarantined")


def _quarantine(settings: Settings, candidate: GroupCandidate, reason: str) -> tuple[GroupCandidate, str]:
    """Move a bad group's files to quarantine; the candidate with their new paths, and the reason to record.

    A failed move is logged and noted in the reason, never raised: the
    conversion's own error is what the operator needs to see first.
    """
    destination = naming.quarantine_dir(settings.quarantine_dir, candidate.group_id)
    try:
        moved = quarantine_files([*candidate.files.values(), *candidate.duplicates], destination, reason=reason)
    except OSError as exc:
        log.error("could not quarantine %s in %s: %s", candidate.group_id, destination, exc)
        return candidate, f"{reason} [input left in place: quarantine failed: {exc}]"
    log.warning("%s: %d file(s) moved to %s: %s", candidate.group_id, len(moved), destination, reason)
    files = {sb: moved.get(path, path) for sb, path in candidate.files.items()}
    duplicates = [moved.get(path, path) for path in candidate.duplicates]
    return (dataclasses.replace(candidate, files=files, duplicates=duplicates),
            f"{reason} [input moved to {destination}]")


@task(
    name="convert-group",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    tags=["casa"],
    task_run_name="convert-{candidate.group_id}",
)
def convert(candidate: GroupCandidate, settings: Settings, *, allow_incomplete: bool = False) -> ConversionResult | dict:
    """Convert one group to a validated MS and record it.

    Bad input (unreadable file, wrong declination unit, failed validation gate)
    marks the group ``failed`` with the reason, moves its files to the
    quarantine directory (never deleting one without a verified copy:
    :mod:`contimg.quarantine`) and re-raises. Missing subbands without
    ``allow_incomplete``, and any other fault that is not transient, mark it
    failed and leave the files in place. Transient faults are retried, and a
    group they leave ``converting`` is tried again by the next sweep.
    """
    recorded = records.latest_ms(settings, candidate.group_id)
    if recorded and recorded["stage"] != "failed" and Path(recorded["path"]).exists():
        log.info("%s already converted: %s", candidate.group_id, recorded["path"])
        return recorded
    with records.stage_run(settings, candidate.group_id, "convert"):
        records.record_group(settings, candidate, "converting")
        existing = records.existing_ms(settings, candidate.group_id)
        try:
            if existing is not None:
                result = _recover_unrecorded(settings, candidate, existing, settings.writer)
            else:
                result = convert_group(
                    candidate.group_id,
                    candidate.files,
                    products_dir=settings.products_dir,
                    scratch_dir=settings.scratch_dir,
                    writer=settings.writer,
                    expected_subbands=settings.expected_subbands,
                    allow_incomplete=allow_incomplete,
                    workers=settings.convert_workers,
                )
        except Exception as exc:
            if is_transient(exc):
                raise  # retried here, and by the next sweep once these retries are spent
            failed, reason = candidate, str(exc)
            if isinstance(exc, InvalidInputError):
                failed, reason = _quarantine(settings, candidate, reason)
            elif not isinstance(exc, IncompleteGroupError):
                # Neither bad input nor transient (a bug, a CASA task that raised): every
                # sweep would fail the same way. Final, with the files left in place.
                reason = f"{type(exc).__name__}: {exc} [not retried; input left in place]"
            records.record_group(settings, failed, "failed", reason=reason)
            events.emit_group_event(events.GROUP_FAILED, candidate.group_id, reason=reason)
            raise
    records.record_conversion(settings, result, candidate)
    events.emit_group_event(events.GROUP_CONVERTED, candidate.group_id, ms_path=result.ms_path,
                            mid_mjd=result.mid_mjd)
    return result
