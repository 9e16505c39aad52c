"""The nightly archive: finished groups' products to the archive, raw retention, catalog upkeep.

``archive`` takes every group with archive work left
(:func:`tasks.archive.candidate_groups`), holds its lease (a group held by
another run is skipped, ``held``: the next night archives it) and runs
:func:`tasks.archive.task_archive_group`: copies verified by SHA-256 (the MS lean,
without MODEL_DATA and CORRECTED_DATA, its kept columns checked against the source), recorded,
then the moved sources deleted, then raw retention. A group whose copy fails
verification is ``failed`` and keeps every file; the others go on. Then the
catalog is compacted, the disk use of every data directory is recorded
(``disk_usage``) and the night report of each date the run took groups of is
written, with its ``report-<date>`` artifact (:mod:`tasks.report`; a report that
fails is logged, never fails the archive), and the variability candidates with their
light-curve plots, as the ``variability-candidates`` artifact (:mod:`tasks.variability`;
logged, never fatal). Run by hand: ``contimg run archive``; served nightly
(``deployments/``).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from contimg import naming
from flows._groups import check_instance, settings_for
from tasks import ingest
from tasks.archive import candidate_groups, task_archive_group, task_compact, task_disk_usage
from tasks.report import reports_after_archive
from tasks.variability import candidates_artifact

FAILED = "failed"


@flow(name="archive", log_prints=True)
def archive(*, base_dir: str | None = None, compact: bool = True, instance: str | None = None) -> dict:
    """Archive every finished group, apply raw retention, compact the catalog, record disk use.

    Parameters
    ----------
    base_dir : str, optional
        Base data directory (default: the ``base_dir`` setting).
    compact : bool
        Compact the catalog after archiving.
    instance : str, optional
        The pipeline instance the run is for (the deployment sets it); another
        instance's run is refused (:func:`flows._groups.check_instance`).

    Returns
    -------
    dict
        ``groups``: group id -> ``{"state": archived | not_finished | held | failed, "detail": str}``;
        ``compaction``: partitions and files merged; ``disk_usage``: the rows recorded; ``reports``: date ->
        the night report's page (or ``failed: <error>``); ``variability_candidates``: how many (None: not
        written, logged).
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance)
    groups: dict[str, dict] = {}
    for group_id in candidate_groups(settings):
        lease = ingest.try_group_lease(settings, group_id)
        if lease is None:
            groups[group_id] = {"state": ingest.HELD, "detail": f"held by {ingest.lease_holder(settings, group_id)}"}
            continue
        with lease:
            outcome = task_archive_group(settings, group_id, lease=lease, return_state=True)
        if outcome.is_completed():
            done = outcome.result()
            groups[group_id] = {"state": done.state, "detail": done.line()}
        else:
            groups[group_id] = {"state": FAILED, "detail": str(outcome.message or "")}
            logger.error("group %s: %s", group_id, outcome.message)
    report = task_compact(settings) if compact else None
    usage = task_disk_usage(settings)
    reports = reports_after_archive(settings, {naming.group_date(g) for g in groups})  # logged, never raised
    candidates = candidates_artifact(settings)  # logged, never raised
    compaction = ({"partitions": report.partitions, "files_in": report.files_in, "rows_out": report.rows_out,
                   "skipped": len(report.skipped)} if report is not None else None)
    lines = ["| group | state | detail |", "|---|---|---|"]
    lines += [f"| {g} | {o['state']} | {o['detail'].replace('|', '/')[:300]} |" for g, o in sorted(groups.items())]
    lines += ["", "| area | kind | GB on disk | files |", "|---|---|---|---|"]
    lines += [f"| {r['area']} | {r['kind']} | {r['bytes'] / 1e9:.2f} | {r['n_files']} |" for r in usage]
    create_markdown_artifact(key="archive-summary", markdown="\n".join(lines), description="nightly archive")
    return {"groups": groups, "compaction": compaction, "disk_usage": usage, "reports": reports,
            "variability_candidates": None if candidates is None else len(candidates.rows)}
