"""Per-subband work as Prefect tasks, and the task runner that places them.

With the setting ``task_runner = "default"`` a group's subbands are converted by
worker threads inside the converting process, as they always were
(:func:`contimg.conversion.writers.write_direct_subband`): no Prefect task per
subband, no scratch copies. With ``"dask"``, each subband is one run of
:func:`convert_subband` submitted to prefect-dask's ``DaskTaskRunner``: on the
cluster at ``dask_address`` (workers on several nodes that share the scratch
filesystem), or on a local cluster of ``dask_workers`` processes started for
the conversion. The workers write scratch files in the group's scratch
directory and return paths; the converting process, which holds the group's
lease, creates the MS and copies the blocks in
(:mod:`contimg.conversion.subband_scratch`), so the MS is bit for bit the one
the default runner writes.

The per-subband tasks are submitted from inside the convert task (the
``convert-group`` task of :mod:`tasks.ingest`), to a runner entered for that one
conversion: the flows keep their own task runner, and the lease, the CASA
gate and the recording stay in the flow's process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

from contimg.config import Settings
from contimg.conversion import subband_scratch
from contimg.conversion.subband_scratch import ScratchJob, ScratchResult
from tasks.retry import retry_transient

if TYPE_CHECKING:
    from contimg.conversion.convert import ConversionResult

#: Values of the ``task_runner`` setting.
TASK_RUNNERS = ("default", "dask")


@task(
    name="convert-subband",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    task_run_name="convert-spw{job.job.spw:02d}",
)
def convert_subband(job: ScratchJob) -> ScratchResult:
    """Convert one subband into its scratch files (on whichever worker the runner picks).

    Bad input (:class:`~contimg.errors.InvalidInputError`) is raised to the
    converting process unretried, which fails or quarantines the group as for
    the default runner; an ``OSError`` (a full scratch disk) is retried.
    """
    return subband_scratch.convert_subband(job)


def subband_task_runner(settings: Settings) -> TaskRunner | None:
    """The task runner for per-subband work that ``settings`` ask for; ``None`` for the default threads.

    Parameters
    ----------
    settings : Settings
        ``task_runner``, ``dask_address``, ``dask_workers``.

    Returns
    -------
    prefect_dask.DaskTaskRunner or None
        Attached to ``dask_address``, or starting a local cluster of
        ``dask_workers`` single-threaded processes (processes: the compiled
        pass releases the GIL, but pyuvdata's metadata reads and the task
        engine do not). Not started: enter it.

    Raises
    ------
    ValueError
        An unknown ``task_runner``.
    """
    if settings.task_runner not in TASK_RUNNERS:
        raise ValueError(f"task_runner={settings.task_runner!r}; choose one of {TASK_RUNNERS}")
    if settings.task_runner == "default":
        return None
    from prefect_dask import DaskTaskRunner  # here: it imports distributed, which the default path never needs

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                         "processes": True})


@contextmanager
def subbands_on(runner: TaskRunner | None) -> Iterator[Callable[[ScratchJob], PrefectFuture] | None]:
    """Start ``runner`` and give the ``submit_subband`` callable that puts :func:`convert_subband` on it.

    ``None`` (the default runner) gives ``None``: the writer's own threads. The
    runner (a local Dask cluster) stops when the block ends.
    """
    if runner is None:
        yield None
        return
    def submit(job: ScratchJob) -> PrefectFuture:
        # Submitted outside the calling task's run context: prefect-dask ships the context to the
        # worker, and the convert task's parameters (its held lease: a heartbeat thread) cannot be
        # pickled. The enclosing flow run's context stays, so the subband runs and their logs belong to it.
        token = TaskRunContext.__var__.set(None)
        try:
            return runner.submit(convert_subband, parameters={"job": job})
        finally:
            TaskRunContext.__var__.reset(token)

    with runner:
        yield submit


def convert_with_runner(settings: Settings, group_id: str, files: Mapping[int, Path], **kwargs: Any
                        ) -> "ConversionResult":
    """:func:`contimg.conversion.convert.convert_group`, its subbands on the runner ``settings`` ask for.

    ``kwargs`` are those of ``convert_group``; with ``task_runner = "default"``,
    or the ``pyuvdata`` reference writer (serial by design), this is exactly
    ``convert_group(group_id, files, **kwargs)``.
    """
    # Imported here: Dask workers import this module to run convert_subband, and the
    # converter's imports (pyuvdata, casacore, astropy) would add seconds to each worker's start.
    from contimg.conversion.convert import convert_group

    runner = subband_task_runner(settings) if kwargs.get("writer", "direct-subband") == "direct-subband" else None
    with subbands_on(runner) as submit:
        if submit is None:
            return convert_group(group_id, files, **kwargs)
        return convert_group(group_id, files, submit_subband=submit, **kwargs)
