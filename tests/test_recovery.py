"""A killed or failed conversion is recovered by a rerun; only transient faults are retried."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from casacore.tables import table

from contimg import naming, simulate
from contimg.simulate import badinput
from contimg.config import load_settings
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.errors import CasaError, IncompleteGroupError, InvalidInputError, NoCalibrationError
from tasks.retry import is_transient

START = "2026-11-25T09:00:00"
SMALL = dict(n_subbands=16, n_channels=4, n_times=4, n_antennas=8, jitter_s=0.0)


@pytest.fixture(scope="module")
def incoming(tmp_path_factory):
    out = tmp_path_factory.mktemp("incoming")
    simulate.simulate_group(out, START, seed=5, **SMALL)
    return out


def _group(directory):
    (group,) = discover_groups(directory, settle_s=0)
    return group


def test_leftover_scratch_of_a_killed_conversion_is_replaced(incoming, tmp_path):
    scratch = tmp_path / "scratch"
    half = naming.convert_workdir(scratch, START) / "2026-11-25T090000.ms"
    half.mkdir(parents=True)
    (half / "table.f0").write_bytes(b"half written")
    result = convert_group(START, _group(incoming).files, products_dir=tmp_path / "p", scratch_dir=scratch)
    with table(str(result.ms_path), ack=False) as ms:
        assert ms.nrows() > 0
    assert not naming.convert_workdir(scratch, START).exists(), "scratch is cleaned after success"


def test_an_ms_in_place_but_unrecorded_is_recorded_not_rewritten(incoming, tmp_path, prefect_server):
    """A worker killed between the final rename and the catalog write: the rerun records the MS."""
    from catalog import query
    from tasks.ingest import convert

    settings = load_settings(environ={}, base_dir=tmp_path / "data")
    settings.ensure_dirs()
    group = _group(incoming)
    result = convert_group(START, group.files, products_dir=settings.products_dir, scratch_dir=settings.scratch_dir)
    before = result.ms_path.stat().st_mtime_ns
    recovered = convert.fn(group, settings)  # the task's function, without a Prefect run
    assert recovered.ms_path == result.ms_path
    assert result.ms_path.stat().st_mtime_ns == before, "the MS must not be rewritten"
    (row,) = query.latest(settings.catalog_dir, "ms_index", group_id=START)
    assert row["stage"] == "converted" and row["path"] == str(result.ms_path)
    assert row["start_mjd"] == pytest.approx(result.start_mjd, abs=1e-7)
    assert row["mid_mjd"] == pytest.approx(result.mid_mjd, abs=1e-7)
    assert row["pointing_dec_deg"] == pytest.approx(result.pointing_dec_deg, abs=1e-6)
    # and a third call finds it recorded and does nothing
    assert convert.fn(group, settings)["path"] == str(result.ms_path)
    assert len(query.history(settings.catalog_dir, "ms_index", group_id=START)) == 1


def test_a_failed_conversion_leaves_nothing_in_products(incoming, tmp_path):
    bad = tmp_path / "in"
    shutil.copytree(incoming, bad)
    badinput.truncate_file(bad / naming.subband_filename(START, 9), fraction=0.01)
    with pytest.raises(InvalidInputError):
        convert_group(START, _group(bad).files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s")
    assert not (tmp_path / "p" / "ms").exists() or not any((tmp_path / "p" / "ms").rglob("*.ms"))


def test_a_disk_that_fills_mid_write_is_a_transient_failure_and_a_rerun_recovers(incoming, tmp_path, monkeypatch):
    from contimg.conversion import column_io

    files = _group(incoming).files
    before = {sb: path.stat().st_size for sb, path in files.items()}
    real_pwrite_all, calls = column_io._pwrite_all, []

    def fills_up(fd, buffer, offset):
        calls.append(offset)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_pwrite_all(fd, buffer, offset)

    with monkeypatch.context() as patch:
        patch.setattr(column_io, "_pwrite_all", fills_up)
        with pytest.raises(OSError, match="No space left on device") as info:
            convert_group(START, files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s", validate=False)
    assert info.value.errno == errno.ENOSPC and "_TSM0" in str(info.value), "says which file"
    assert is_transient(info.value)
    assert {sb: path.stat().st_size for sb, path in files.items()} == before, "inputs untouched"
    assert not any((tmp_path / "p").rglob("*.ms")), "nothing half-written in products"
    result = convert_group(START, files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s", validate=False)
    with table(str(result.ms_path), ack=False) as ms:
        assert ms.nrows() > 0 and ms.getcol("DATA").any()


_BROKEN_GEOMETRY = """
import sys
from pathlib import Path
from contimg.conversion import writers
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.errors import InvalidInputError

def broken_geometry(*args, **kwargs):
    raise InvalidInputError("header says nonsense")

writers.group_geometry = broken_geometry
incoming, out = map(Path, sys.argv[1:3])
(group,) = discover_groups(incoming, settle_s=0)
try:
    convert_group(group.group_id, group.files, products_dir=out / "p", scratch_dir=out / "s", validate=False)
except InvalidInputError as exc:
    print("raised:", exc)
"""


def test_a_failure_while_building_the_ms_releases_the_waiting_workers(incoming, tmp_path):
    """Workers read their first subband before the MS exists; a failure building it must not leave them waiting.

    Run in a child process: a regression would hang its worker threads, and the
    timeout turns that into a failure here instead of a hung test session.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _BROKEN_GEOMETRY, str(incoming), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "raised: header says nonsense" in done.stdout
    assert not any((tmp_path / "p").rglob("*.ms"))


@pytest.mark.parametrize(
    "exc, transient",
    [
        (CasaError("segfault", crashed=True), True),
        (CasaError("gaincal raised: bad refant"), False),
        (InvalidInputError("truncated"), False),
        (IncompleteGroupError("g", [3]), False),
        (NoCalibrationError("none"), False),
        (OSError("EIO"), True),
        (TimeoutError("nfs"), True),
        (FileExistsError("x"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_faults_are_retried(exc, transient):
    assert is_transient(exc) is transient


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second filesystem (/dev/shm)")
def test_moving_the_ms_across_filesystems_keeps_it_sparse(incoming, tmp_path):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        result = convert_group(START, _group(incoming).files, products_dir=tmp_path / "p",
                               scratch_dir=Path(shm) / "scratch", validate=False)
    files = [p for p in result.ms_path.rglob("*") if p.is_file()]
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    apparent = sum(p.stat().st_size for p in files)
    assert allocated < 0.8 * apparent  # the zero imaging columns stayed holes
    with table(str(result.ms_path), ack=False) as ms:
        assert ms.getcol("DATA").any() and not ms.getcol("CORRECTED_DATA").any()


def test_a_fault_that_is_neither_bad_input_nor_transient_fails_the_group_once(incoming, tmp_path, prefect_server,
                                                                               monkeypatch):
    """A bug must not make every sweep convert the group again; its files stay where they are."""
    from catalog import query
    from tasks import ingest

    settings = load_settings(environ={}, base_dir=tmp_path / "data")
    settings.ensure_dirs()
    group = _group(incoming)

    def buggy(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr("contimg.conversion.convert.convert_group", buggy)  # what tasks.subbands calls
    with pytest.raises(ValueError, match="a bug"):
        ingest.convert.fn(group, settings)
    (row,) = query.latest(settings.catalog_dir, "groups", group_id=START)
    assert row["state"] == "failed" and "ValueError: a bug" in row["reason"]
    assert all(path.exists() for path in group.files.values())
    assert ingest.record_group_states.fn(settings, [group]) == {START: "failed"}  # the next sweep skips it


def test_a_transient_fault_leaves_the_group_for_the_next_sweep(incoming, tmp_path, prefect_server, monkeypatch):
    from catalog import query
    from tasks import ingest

    settings = load_settings(environ={}, base_dir=tmp_path / "data")
    settings.ensure_dirs()
    group = _group(incoming)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("contimg.conversion.convert.convert_group", disk_full)  # what tasks.subbands calls
    with pytest.raises(OSError):
        ingest.convert.fn(group, settings)
    (row,) = query.latest(settings.catalog_dir, "groups", group_id=START)
    assert row["state"] == "converting"
    monkeypatch.undo()
    assert ingest.record_group_states.fn(settings, [group]) == {START: "ready"}
