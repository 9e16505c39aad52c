"""The ingest flows: incoming subband files -> validated, recorded MSs.

``ingest_group`` is one sweep: discover groups in the incoming directory, record
each group's state, and hand every ready group to its own flow run,
``ingest_one_group``; incomplete or bad groups are left recorded with their
reason. Safe to run at any time, as often as wanted and as many at once as
wanted: converted and failed groups are skipped, unchanged states write
nothing, and a group is worked on by one run at a time, the holder of its lease
(:mod:`contimg.lease`); another run finds it ``held`` and skips it quietly.

By hand (``contimg run ingest``) the group runs are subflows of the sweep, one
after another. Under the deployments (``group_deployment`` set) the sweep
submits each group run to the ``ingest-group`` deployment and returns at once,
so that groups convert side by side on every worker that serves it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from contimg.config import Settings, load_settings
from flows._groups import HandOff, check_instance, summary_markdown
from tasks import ingest, records


def _settings(incoming_dir: str | None, writer: str | None, base_dir: str | None) -> Settings:
    settings = load_settings(
        base_dir=Path(base_dir) if base_dir else None,
        incoming_dir=Path(incoming_dir) if incoming_dir else None,
        writer=writer,
    )
    settings.ensure_dirs()
    return settings


def _convertible(state: str, allow_incomplete: bool) -> bool:
    return state == "ready" or (state == "incomplete" and allow_incomplete)


def _missing(candidate) -> str:
    return "missing " + ", ".join(f"sb{sb:02d}" for sb in candidate.missing)


@flow(name="ingest_one_group", flow_run_name="ingest-{group_id}", log_prints=True)
def ingest_one_group(
    group_id: str,
    incoming_dir: str | None = None,
    *,
    allow_incomplete: bool = False,
    writer: str | None = None,
    base_dir: str | None = None,
    instance: str | None = None,
) -> dict[str, str]:
    """Convert one group, holding its lease; skip it if another run holds it.

    Under the lease the group's files are discovered again and its latest state
    re-read (another run may have finished or quarantined it since the sweep
    looked). A conversion failure fails this run (the group is recorded
    ``failed``, or left ``converting`` for the next sweep after transient
    faults); the lease is released in every case.

    Parameters
    ----------
    group_id : str
        The group (``YYYY-MM-DDTHH:MM:SS``).
    incoming_dir, writer, base_dir
        As for :func:`ingest_group`.
    allow_incomplete : bool
        Also convert the group if it timed out incomplete.
    instance : str, optional
        The pipeline instance the run is for (the deployments and their triggers
        set it); another instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        ``state`` (``converted``, a discovery state, ``failed`` if it already
        was, or ``held``) and ``detail``.
    """
    logger = get_run_logger()
    settings = _settings(incoming_dir, writer, base_dir)
    check_instance(settings, instance=instance)
    lease = ingest.try_group_lease(settings, group_id)
    if lease is None:
        detail = f"held by {ingest.lease_holder(settings, group_id)}"
        logger.info("%s is %s; skipped", group_id, detail)
        return {"state": ingest.HELD, "detail": detail}
    with lease:  # renewed by a heartbeat while we work, released at the end
        candidate = next((c for c in ingest.discover(settings) if c.group_id == group_id), None)
        if candidate is None:
            latest = records.latest_group_state(settings, group_id)
            state = latest["state"] if latest else "absent"
            return {"state": state, "detail": f"no files of the group in {settings.incoming_dir}"}
        state = ingest.record_group_state(settings, candidate, lease)
        if not _convertible(state, allow_incomplete):
            return {"state": state, "detail": _missing(candidate) if state == "incomplete" else ""}
        result = ingest.convert(candidate, settings, allow_incomplete=allow_incomplete, lease=lease)
    path = result["path"] if isinstance(result, dict) else result.ms_path
    return {"state": "converted", "detail": str(path)}


@flow(name="ingest_group", log_prints=True)
def ingest_group(
    incoming_dir: str | None = None,
    *,
    allow_incomplete: bool = False,
    writer: str | None = None,
    base_dir: str | None = None,
    group_deployment: str | None = None,
    instance: str | None = None,
) -> dict[str, str]:
    """Sweep the incoming directory: every ready group to its own flow run.

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
    group_deployment : str, optional
        ``"<flow>/<deployment>"`` of ``ingest_one_group`` to submit each group
        run to, without waiting (the deployments set it). Unset: each group run
        is a subflow of this sweep, run in turn.
    instance : str, optional
        The pipeline instance the run is for (the deployments set it); another
        instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        Group id -> final state of this sweep: a catalog state, ``held``
        (another run has the group) or ``submitted``.
    """
    logger = get_run_logger()
    settings = _settings(incoming_dir, writer, base_dir)
    check_instance(settings, instance=instance)
    candidates = ingest.discover(settings)
    states = ingest.record_group_states(settings, candidates)
    details = {c.group_id: "" for c in candidates}
    hand_off = HandOff(ingest_one_group, group_deployment, logger)
    for candidate in candidates:
        group_id, state = candidate.group_id, states[candidate.group_id]
        if _convertible(state, allow_incomplete) and ingest.lease_is_live(settings, group_id):
            state = states[group_id] = ingest.HELD  # taken since: no run for it (the run would skip it too)
        if state == ingest.HELD:
            details[group_id] = f"held by {ingest.lease_holder(settings, group_id)}"
            continue
        if not _convertible(state, allow_incomplete):
            if state == "incomplete":
                details[group_id] = _missing(candidate)
            continue
        parameters = dict(group_id=group_id, incoming_dir=str(settings.incoming_dir),
                          allow_incomplete=allow_incomplete, writer=writer, base_dir=base_dir)
        state, detail, result = hand_off(f"ingest-{group_id}", parameters)
        states[group_id], details[group_id] = (result["state"], result["detail"]) if result else (state, detail)
    create_markdown_artifact(
        key="ingest-summary", markdown=summary_markdown(states, details), description="groups seen by this sweep"
    )
    logger.info("sweep of %s: %s", settings.incoming_dir, {s: list(states.values()).count(s) for s in set(states.values())})
    return states
