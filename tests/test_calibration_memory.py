"""``calibrate_ms`` under a tiny memory budget: chunked everywhere, the same solutions as in one piece (issue 21).

The fast path's work arrays (DATA's read, the model and the sums, the normal
equations per SPW batch, the StefCal problems) are sized from
``memory_budget_gb``. Here the budget is forced so small that every one of them
is cut into several chunks (one StefCal problem per batch, one SPW per batch),
and the caltables, the flags and MODEL_DATA must equal those of a run with no
limit bit for bit: chunking changes no arithmetic, only what is held at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from casacore.tables import table

from contimg import simulate
from contimg.calibration import fastsolve
from contimg.calibration.pipeline import CalibrationOptions, calibrate_ms
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.simulate.group import transit_start_time
from contimg.sky.catalog import find_calibrator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> Path:
    """A small noisy group with RFI and a dead and a flagged antenna (so flags and the AOFlagger pool matter)."""
    root = tmp_path_factory.mktemp("memory")
    cal = find_calibrator("J0834+5534")
    start = transit_start_time(cal.ra_deg, "2026-11-25", dec_deg=cal.dec_deg, n_times=12)
    sim = simulate.simulate_group(root / "in", start, seed=7, calibrator="J0834+5534", n_channels=16, n_times=12,
                                  n_antennas=16, jitter_s=0.0,
                                  corruptions=simulate.Corruptions(dead_antennas=1, flagged_antennas=1))
    (grp,) = discover_groups(root / "in", settle_s=0)
    return convert_group(sim.group_id, grp.files, products_dir=root / "products", scratch_dir=root / "scratch").ms_path


def _calibrate(ms: Path, dest: Path, budget_gb: float):
    dest.mkdir()
    copy = shutil.copytree(ms, dest / ms.name)
    result = calibrate_ms(copy, options=CalibrationOptions(memory_budget_gb=budget_gb), table_prefix=dest / "cal",
                          log_dir=dest / "logs")
    return copy, result


def _columns(path: Path, names) -> dict:
    with table(str(path), ack=False) as t:
        return {name: t.getcol(name) for name in names if name in t.colnames()}


def test_a_tiny_budget_chunks_everything_and_gives_the_same_solutions(group, tmp_path, monkeypatch):
    calls = {"stefcal": 0, "add": 0}
    stefcal, add = fastsolve.stefcal, fastsolve.SumsBuilder.add

    def counting_stefcal(*a, **k):
        calls["stefcal"] += 1
        return stefcal(*a, **k)

    def counting_add(self, *a, **k):
        calls["add"] += 1
        return add(self, *a, **k)

    monkeypatch.setattr(fastsolve, "stefcal", counting_stefcal)
    monkeypatch.setattr(fastsolve.SumsBuilder, "add", counting_add)

    whole_ms, whole = _calibrate(group, tmp_path / "whole", 0)  # 0: no limit, every solve in one piece
    whole_calls = dict(calls)
    assert whole_calls["stefcal"] == 4  # K, B, GP, GA: one batch each

    calls.update(stefcal=0, add=0)
    monkeypatch.setattr(fastsolve, "MIN_WORK_BYTES", 1)  # nothing left for work: the smallest chunks
    chunked_ms, chunked = _calibrate(group, tmp_path / "chunked", 1e-6)
    with table(str(group), ack=False) as t:
        n_rows, (n_chan, n_pol) = t.nrows(), t.getcell("DATA", 0).shape
        n_spw = t.getcol("DATA_DESC_ID").max() + 1
    assert n_rows > fastsolve.CHUNK_ROWS  # several chunks of rows at the floor of fastsolve.row_chunk
    assert calls["add"] == -(-n_rows // fastsolve.row_chunk(1, n_chan, n_pol)) > 1
    # one StefCal problem per batch: K and B each solve n_spw x n_chan x n_pol problems
    assert calls["stefcal"] > 2 * n_spw * n_chan * n_pol

    assert whole.refant == chunked.refant
    assert [s.kind for s in whole.solutions] == [s.kind for s in chunked.solutions] == ["K", "B", "GP", "GA"]
    for a, b in zip(whole.solutions, chunked.solutions):
        ta = _columns(a.path, ("FPARAM", "CPARAM", "FLAG", "SNR", "TIME", "ANTENNA1", "SPECTRAL_WINDOW_ID"))
        tb = _columns(b.path, ta)
        for name in ta:  # identical to the bit: chunking must not change any arithmetic
            np.testing.assert_array_equal(ta[name], tb[name], err_msg=f"{a.kind} {name}")
        assert not ta["FLAG"].all()
    assert whole.reasons == chunked.reasons
    ma, mb = _columns(whole_ms, ("FLAG", "MODEL_DATA")), _columns(chunked_ms, ("FLAG", "MODEL_DATA"))
    np.testing.assert_array_equal(ma["FLAG"], mb["FLAG"])
    np.testing.assert_array_equal(ma["MODEL_DATA"], mb["MODEL_DATA"])
    assert whole.flagging["steps"][-1]["step"] == "rfi"  # the AOFlagger pool ran


def test_the_budget_sets_the_chunks():
    # a full group: 2.65 M rows x 48 channels x 2 pols hold 3.0 GiB whatever the budget
    resident = fastsolve.group_bytes(2_650_752, 48, 2)
    assert 2.9 * 2**30 < resident < 3.1 * 2**30
    assert fastsolve.work_bytes(None, resident) is None  # no budget: one piece
    assert fastsolve.work_bytes(3.0 * 2**30, resident) == fastsolve.MIN_WORK_BYTES  # below the group's own arrays
    roomy = fastsolve.work_bytes(8.0 * 2**30, resident)
    assert roomy == 8.0 * 2**30 - resident - fastsolve.BASE_BYTES
    assert fastsolve.row_chunk(roomy, 48, 2) == 65536 and fastsolve.row_chunk(1, 48, 2) == fastsolve.CHUNK_ROWS
