"""Prefect tasks of the ingest stage: thin wrappers over contimg.conversion.

Each task records what happened in the catalog (through :mod:`tasks.records`),
retries only transient faults, and is idempotent: a group whose MS is recorded
and present is returned as is.

Everything that writes a group's state, converts it or moves its files does so
holding the group's lease (:mod:`contimg.lease`, ``naming.group_lease_path``),
after re-reading the group's latest state under it. A group whose lease another
run holds is ``held``: skipped, with nothing recorded and nothing touched.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from contimg import lease as leases
from contimg import naming
from contimg.config import Settings
from contimg.conversion.convert import ConversionResult
from contimg.conversion.discovery import GroupCandidate, discover_groups
from contimg.conversion.inspect import ms_summary
from contimg.errors import IncompleteGroupError, InvalidInputError
from contimg.quarantine import quarantine_files
from contimg.sky.pointing import load_pointing
from contimg.sky.selection import classify_group
from tasks import events, records, subbands
from tasks.retry import is_transient, retry_transient

log = logging.getLogger(__name__)

#: What a sweep reports for a group whose lease another run holds (not a catalog state: nothing is recorded).
HELD = "held"


def lease_path(settings: Settings, group_id: str) -> Path:
    """The group's lease file."""
    return naming.group_lease_path(settings.scratch_dir, group_id)


def try_group_lease(settings: Settings, group_id: str) -> leases.Lease | None:
    """Take the group's lease (taking over a stale one), or ``None`` when another run holds it.

    Enter the returned lease (``with lease:``) to heartbeat it while working and
    release it at the end.
    """
    path = lease_path(settings, group_id)
    abandoned = leases.read_lease(path) if leases.is_stale(path, settings.lease_seconds) else None
    mine = records.flow_run_id()
    lease = leases.try_acquire(path, settings.lease_seconds, heartbeat_s=settings.lease_heartbeat_interval_s,
                               flow_run_id=mine)
    if lease is not None and abandoned is not None and abandoned.flow_run_id not in (None, mine):
        _crash_abandoned_run(abandoned.flow_run_id,
                             f"its process ({abandoned.describe()}) died or stalled holding the lease of {group_id}; "
                             f"flow run {mine or '(outside Prefect)'} resumed the group")
    return lease


def _crash_abandoned_run(flow_run_id: str, message: str) -> None:
    """Mark the flow run whose lease we took over Crashed, if Prefect still shows it running.

    A run killed with SIGKILL (or whose node died) cannot report its own end, and
    would stay Running in the UI for ever while the catalog shows its group done
    by another run. Best effort: a failure is logged, never raised.
    """
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                log.warning("flow run %s (%s) marked Crashed: %s", run.name, flow_run_id, message)
    except Exception:  # noqa: BLE001 - bookkeeping of someone else's run must not stop ours
        log.exception("could not mark the abandoned flow run %s crashed", flow_run_id)


def lease_is_live(settings: Settings, group_id: str) -> bool:
    """A look (no lease taken): does another run hold the group's lease right now?"""
    return leases.is_stale(lease_path(settings, group_id), settings.lease_seconds) is False


def lease_holder(settings: Settings, group_id: str) -> str:
    """Who holds the group's lease, for logs and summaries."""
    info = leases.read_lease(lease_path(settings, group_id))
    return info.describe() if info else "another run (lease file unreadable or just released)"


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
    them, so rerunning the flow writes nothing new. Every write is made holding
    the group's lease, after re-reading its state; a group whose lease another
    run holds is :data:`HELD`, and nothing of it is recorded or touched.
    """
    latest = records.latest_group_states(settings)
    effective = {}
    for candidate in candidates:
        previous = latest.get(candidate.group_id)
        if previous and previous["state"] in records.FINAL_GROUP_STATES and not _has_latecomers(settings, candidate,
                                                                                                previous):
            effective[candidate.group_id] = previous["state"]  # final: nothing to write, no lease needed
            continue
        lease = try_group_lease(settings, candidate.group_id)
        if lease is None:
            effective[candidate.group_id] = HELD
            continue
        with lease:
            effective[candidate.group_id] = record_group_state(settings, candidate, lease)
    return effective


def record_group_state(settings: Settings, candidate: GroupCandidate, lease: leases.Lease) -> str:
    """Holding the group's lease: re-read its latest row, record the discovery state if it changed.

    Returns the effective state (a final state is kept, and late files of a
    quarantined group join it).
    """
    lease.ensure_held()
    previous = records.latest_group_state(settings, candidate.group_id)
    if previous and previous["state"] in records.FINAL_GROUP_STATES:
        _quarantine_latecomers(settings, candidate, previous)
        return previous["state"]
    reason = None
    if candidate.state == "incomplete":
        reason = "missing " + ", ".join(f"sb{sb:02d}" for sb in candidate.missing)
    records.record_group(settings, candidate, candidate.state, reason=reason, previous=previous)
    return candidate.state


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


def _has_latecomers(settings: Settings, candidate: GroupCandidate, previous: dict) -> bool:
    return previous["state"] == "failed" and naming.quarantine_dir(settings.quarantine_dir,
                                                                   candidate.group_id).is_dir()


def _quarantine_latecomers(settings: Settings, candidate: GroupCandidate, previous: dict) -> None:
    """Files of a group already quarantined that arrived since: they join it, so nothing lingers in incoming."""
    if _has_latecomers(settings, candidate, previous):
        _quarantine(settings, candidate, "arrived after the group was quarantined")


def _quarantine(settings: Settings, candidate: GroupCandidate,
                reason: str) -> tuple[GroupCandidate, str, Path | None]:
    """Move a bad group's files to quarantine: the candidate with their new paths, the reason to
    record, and the quarantine directory (``None`` when the move failed).

    A failed move is logged and noted in the reason, never raised: the
    conversion's own error is what the operator needs to see first.
    """
    destination = naming.quarantine_dir(settings.quarantine_dir, candidate.group_id)
    try:
        moved = quarantine_files([*candidate.files.values(), *candidate.duplicates], destination, reason=reason)
    except OSError as exc:
        log.error("could not quarantine %s in %s: %s", candidate.group_id, destination, exc)
        return candidate, f"{reason} [input left in place: quarantine failed: {exc}]", None
    log.warning("%s: %d file(s) moved to %s: %s", candidate.group_id, len(moved), destination, reason)
    files = {sb: moved.get(path, path) for sb, path in candidate.files.items()}
    duplicates = [moved.get(path, path) for path in candidate.duplicates]
    return (dataclasses.replace(candidate, files=files, duplicates=duplicates),
            f"{reason} [input moved to {destination}]", destination)


@task(
    name="convert-group",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    tags=["casa"],
    task_run_name="convert-{candidate.group_id}",
)
def convert(candidate: GroupCandidate, settings: Settings, *, allow_incomplete: bool = False,
            lease: leases.Lease | None = None) -> ConversionResult | dict:
    """Convert one group to a validated MS and record it, holding the group's lease.

    Bad input (unreadable file, wrong declination unit, failed validation gate)
    marks the group ``failed`` with the reason, moves its files to the
    quarantine directory (never deleting one without a verified copy:
    :mod:`contimg.quarantine`) and re-raises. Missing subbands without
    ``allow_incomplete``, and any other fault that is not transient, mark it
    failed and leave the files in place. Transient faults are retried, and a
    group they leave ``converting`` is tried again by the next sweep.

    ``lease`` is the group's lease held by the calling flow; without one the
    task takes it for its own duration, raising
    :class:`~contimg.lease.LeaseHeldError` (recording nothing) when another run
    holds it. A lease lost mid-way raises :class:`~contimg.lease.LeaseLostError`
    and records no failure: the group is the new holder's.
    """
    held = nullcontext(lease) if lease is not None else leases.hold(
        lease_path(settings, candidate.group_id), settings.lease_seconds,
        heartbeat_s=settings.lease_heartbeat_interval_s, flow_run_id=records.flow_run_id())
    with held as lease:
        lease.ensure_held()
        return _convert_holding(candidate, settings, allow_incomplete, lease)


def _convert_holding(candidate: GroupCandidate, settings: Settings, allow_incomplete: bool,
                     lease: leases.Lease) -> ConversionResult | dict:
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
                result = subbands.convert_with_runner(  # task_runner setting: threads or Dask
                    settings,
                    candidate.group_id,
                    candidate.files,
                    products_dir=settings.products_dir,
                    scratch_dir=settings.scratch_dir,
                    writer=settings.writer,
                    expected_subbands=settings.expected_subbands,
                    allow_incomplete=allow_incomplete,
                    workers=settings.convert_workers,
                    lease=lease,
                )
        except Exception as exc:
            if is_transient(exc):
                raise  # retried here, and by the next sweep once these retries are spent
            if isinstance(exc, leases.LeaseLostError):
                raise  # the group is another run's now: record nothing of it
            failed, reason, quarantined = candidate, str(exc), None
            if isinstance(exc, InvalidInputError):
                failed, reason, quarantined = _quarantine(settings, candidate, reason)
            elif not isinstance(exc, IncompleteGroupError):
                # Neither bad input nor transient (a bug, a CASA task that raised): every
                # sweep would fail the same way. Final, with the files left in place.
                reason = f"{type(exc).__name__}: {exc} [not retried; input left in place]"
            records.record_group(settings, failed, "failed", reason=reason, quarantine_path=quarantined)
            events.emit_group_event(events.GROUP_FAILED, candidate.group_id, settings=settings, reason=reason)
            raise
    lease.ensure_held()
    records.record_conversion(settings, result, candidate)
    role, calibrator = group_role(result.ms_path)
    events.emit_group_converted(candidate.group_id, result.ms_path, result.mid_mjd, role, calibrator,
                                settings=settings)
    return result


def group_role(ms_path: Path) -> tuple[str, str | None]:
    """``(role, calibrator name)`` of a converted group: ``calibrator`` or ``target``.

    A group that cannot be classified is ``unknown``, logged and not failed: the
    periodic ``process_converted`` sweep classifies it again.
    """
    try:
        found = classify_group(ms_path)
    except Exception:  # noqa: BLE001 - routing must not fail a recorded conversion
        log.exception("could not classify %s; it is routed by the next process_converted sweep", ms_path)
        return "unknown", None
    return found.kind, found.calibrator.name if found.calibrator is not None else None
