"""Per-subband conversion on a Dask cluster (prefect-dask): the same MS as the default runner, bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from casacore.tables import table
from prefect_dask import DaskTaskRunner

from contimg import naming, simulate
from contimg.config import load_settings
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.errors import InvalidInputError
from tasks.subbands import subband_task_runner, subbands_on

START = "2026-11-25T08:00:00"

#: Main-table columns that must be the same bytes whichever runner converted the group.
COMPARED = ("DATA", "FLAG", "UVW", "WEIGHT", "SIGMA", "WEIGHT_SPECTRUM", "TIME", "ANTENNA1", "ANTENNA2",
            "DATA_DESC_ID", "FIELD_ID", "MODEL_DATA", "CORRECTED_DATA")


def test_the_task_runner_setting_picks_the_runner():
    assert subband_task_runner(load_settings(environ={})) is None
    local = load_settings(environ={"CONTIMG_TASK_RUNNER": "dask"})
    assert subband_task_runner(local) == DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    attached = local.replace(dask_address="tcp://10.0.0.1:8786")
    assert subband_task_runner(attached) == DaskTaskRunner(address="tcp://10.0.0.1:8786")
    with pytest.raises(ValueError, match="task_runner"):
        subband_task_runner(local.replace(task_runner="ray"))


def _group(directory: Path) -> tuple[str, dict[int, Path]]:
    (group,) = discover_groups(directory, settle_s=0)
    return group.group_id, group.files


def _same_ms(a: Path, b: Path) -> None:
    with table(str(a), ack=False) as ta, table(str(b), ack=False) as tb:
        assert ta.nrows() == tb.nrows()
        for col in COMPARED:
            x, y = ta.getcol(col), tb.getcol(col)
            assert x.dtype == y.dtype and x.shape == y.shape, col
            assert x.tobytes() == y.tobytes(), f"{col} differs"
    with table(f"{a}/SPECTRAL_WINDOW", ack=False) as ta, table(f"{b}/SPECTRAL_WINDOW", ack=False) as tb:
        for col in ("CHAN_FREQ", "CHAN_WIDTH"):
            assert ta.getcol(col).tobytes() == tb.getcol(col).tobytes(), col


def test_a_local_two_worker_dask_cluster_writes_the_same_ms_as_the_default_runner(tmp_path, prefect_server):
    """Both DSA-110 layouts of FLAG (whole bytes per row, written by the workers; 5 x 2 bits, put by the
    converting process), a missing subband (flagged stand-in), and bad input raised as bad input."""
    whole, odd, bad = tmp_path / "whole", tmp_path / "odd", tmp_path / "bad"
    simulate.simulate_group(whole, START, seed=3, n_subbands=16, n_channels=4, n_times=4, n_antennas=8)
    # The other two groups have 4 subbands: each subband is a task run (~0.2 s of Prefect bookkeeping here).
    simulate.simulate_group(odd, START, seed=4, n_subbands=4, n_channels=5, n_times=2, n_antennas=6, jitter_s=0.0)
    rng = np.random.default_rng(8)
    for path in sorted(odd.glob("*.hdf5"))[::3]:  # flags that differ from one subband to the next
        with h5py.File(path, "r+") as h:
            h["Data/flags"][...] = h["Data/flags"][()] | (rng.random(h["Data/flags"].shape) < 0.2)
    _group(odd)[1][2].unlink()
    simulate.simulate_group(bad, START, seed=5, n_subbands=4, n_channels=4, n_times=2, n_antennas=6)
    with h5py.File(_group(bad)[1][1], "r+") as h:  # its header reads, its data do not: found by a worker
        del h["Data/nsamples"]
    cases = {"whole": (whole, {}), "odd": (odd, {"allow_incomplete": True, "expected_subbands": 4})}

    default = {}
    for name, (directory, kwargs) in cases.items():
        gid, files = _group(directory)
        default[name] = convert_group(gid, files, products_dir=tmp_path / "default" / name, scratch_dir=tmp_path / "s1",
                                      validate=False, **kwargs).ms_path

    futures = []
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    with subbands_on(runner) as submit:
        def tracked(job):
            futures.append(submit(job))
            return futures[-1]

        dask = {}
        for name, (directory, kwargs) in cases.items():
            gid, files = _group(directory)
            dask[name] = convert_group(gid, files, products_dir=tmp_path / "dask" / name, scratch_dir=tmp_path / "s2",
                                       validate=False, submit_subband=tracked, **kwargs).ms_path
        workers = {(result.host, result.pid) for result in (future.result() for future in futures)}
        gid, files = _group(bad)
        with pytest.raises(InvalidInputError, match="cannot be read"):
            convert_group(gid, files, products_dir=tmp_path / "dask", scratch_dir=tmp_path / "s2", validate=False,
                          expected_subbands=4, submit_subband=tracked)

    assert len(futures) == 16 + 4 + 4
    assert len(workers) == 2 and os.getpid() not in {pid for _, pid in workers}  # really elsewhere
    for name in cases:
        _same_ms(default[name], dask[name])
    with table(str(dask["odd"]), ack=False) as ms:
        assert ms.getcol("FLAG").mean() > 0.05
    # Nothing left behind: the scratch files went with the group's scratch directory.
    for group_dir in (whole, odd, bad):
        assert not naming.convert_workdir(tmp_path / "s2", _group(group_dir)[0]).exists()


def test_the_convert_task_puts_the_subbands_on_dask_when_the_setting_says_so(settings, prefect_server):
    """The pipeline's own path, as ``ingest_one_group`` takes it: in a flow, holding the group's lease,
    ``tasks.ingest.convert`` with ``task_runner = dask`` (a local cluster of one worker, started for the
    conversion), then the CASA gate and the catalog row. One ``convert-spw`` task run per SPW, in the flow
    run, without the convert task's ``casa`` tag (the convert task holds that concurrency slot)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId, TaskRunFilterName

    from tasks import records
    from tasks.ingest import convert, try_group_lease

    simulate.simulate_group(settings.incoming_dir, START, seed=3, n_subbands=16, n_channels=4, n_times=4,
                            n_antennas=8, jitter_s=0.0)
    (candidate,) = discover_groups(settings.incoming_dir, settle_s=0)

    @flow(name="convert-on-dask")
    def convert_held(candidate, settings):
        with try_group_lease(settings, candidate.group_id) as lease:
            return convert(candidate, settings, lease=lease)

    state = convert_held(candidate, settings.replace(task_runner="dask", dask_workers=1), return_state=True)

    result = state.result()
    assert records.latest_ms(settings, candidate.group_id)["stage"] == "converted"
    assert result.validation  # the CASA gate ran on the assembled MS
    reference = convert_group(candidate.group_id, candidate.files, products_dir=settings.base_dir / "reference",
                              scratch_dir=settings.base_dir / "reference-scratch", validate=False)
    _same_ms(reference.ms_path, result.ms_path)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="convert-spw"),
            flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert sorted(run.name for run in runs) == [f"convert-spw{spw:02d}" for spw in range(16)]
    for run in runs:
        assert run.state.is_completed() and "casa" not in run.tags
