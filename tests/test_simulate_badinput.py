"""Bad-input generators and the ``contimg simulate`` command."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
from pyuvdata import UVData

from contimg import naming
from contimg.errors import InvalidInputError
from contimg.simulate import badinput, group_cadence_s, simulate_group
from contimg.sky.pointing import load_pointing

START = "2026-11-25T08:00:00"


def _read(path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The uvw_array does not match")
        return UVData.from_file(str(path), file_type="uvh5")


@pytest.fixture
def group(tmp_path):
    return simulate_group(tmp_path / "in", START, scale="small", seed=1)


def test_missing_subband(group):
    gone = badinput.drop_subband(group, 7)
    present = sorted(p.name for p in gone.parent.glob("*.hdf5"))
    assert len(present) == 15 and gone.name not in present
    assert all(naming.parse_subband_filename(n)[1] != 7 for n in present)


def test_truncated_file_is_unreadable(group):
    path = group.paths[3]
    size = path.stat().st_size
    badinput.truncate_file(path, fraction=0.6)
    assert path.stat().st_size == int(size * 0.6)
    with pytest.raises(Exception):
        _read(path)


def test_file_still_being_written(group, tmp_path):
    path = group.paths[5]
    original = path.read_bytes()
    aside = tmp_path / "aside.hdf5"
    path.rename(aside)
    growing = badinput.start_growing_copy(aside, path, fraction=0.3)
    assert path.stat().st_size == int(len(original) * 0.3)
    assert time.time() - path.stat().st_mtime < 60
    with pytest.raises(Exception):
        _read(path)
    growing.grow(1000)
    assert path.stat().st_size == int(len(original) * 0.3) + 1000 and not growing.finished
    growing.finish()
    assert growing.finished and path.read_bytes() == original
    assert _read(path).Nfreqs == 4


def test_dec_in_degrees_is_caught(group):
    value = badinput.set_dec_in_degrees(group.paths[0])
    assert value == pytest.approx(54.5734)
    assert _read(group.paths[0]).extra_keywords["phase_center_dec"] == pytest.approx(54.5734)
    with pytest.raises(InvalidInputError, match="DEGREES"):
        load_pointing(group.paths[0])


def test_duplicate_and_late_files(group, tmp_path):
    dup = badinput.duplicate_subband(group.paths[2], offset_s=1)
    stamp, sb = naming.parse_subband_filename(dup)
    assert sb == 2 and dup != group.paths[2] and dup.read_bytes() == group.paths[2].read_bytes()
    assert (naming.parse_group_id(stamp) - naming.parse_group_id(naming.parse_subband_filename(group.paths[2])[0])).total_seconds() == 1
    late = badinput.withhold(group.paths[9], tmp_path / "held")
    assert not group.paths[9].exists()
    before = time.time()
    time.sleep(0.01)
    late.deliver()
    assert group.paths[9].exists() and group.paths[9].stat().st_mtime >= before


def test_straddling_group(tmp_path):
    g = badinput.straddling_group(tmp_path, START, offset_s=45, scale="small")
    t0 = naming.parse_group_id(g.group_id)
    offsets = [(naming.parse_group_id(naming.parse_subband_filename(p)[0]) - t0).total_seconds() for p in g.paths]
    assert offsets[:8] == [0] * 8 and offsets[8:] == [45] * 8
    assert max(offsets) > 30  # outside a 30 s grouping tolerance of sb00
    times = [np.unique(_read(p).time_array) for p in (g.paths[0], g.paths[15])]
    np.testing.assert_array_equal(times[0], times[1])  # the data themselves are one group


def test_cli_simulate_with_calibrator(tmp_path):
    from contimg_cli.main import main

    out = tmp_path / "cli"
    rc = main(["simulate", "--out", str(out), "--start", "2026-11-25T00:00:00", "--groups", "3",
               "--scale", "small", "--calibrator", "J0834+5534", "--seed", "4"])
    assert rc == 0
    truths = sorted(out.glob("*_truth.json"))
    assert len(truths) == 3 and len(list(out.glob("*.hdf5"))) == 48
    ids = [json.loads(t.read_text())["group_id"] for t in truths]
    gaps = np.diff([naming.parse_group_id(i).timestamp() for i in ids])
    assert np.all(gaps == group_cadence_s(6))
    cal = [json.loads(t.read_text())["calibrator"] for t in truths]
    assert [c["in_group"] for c in cal] == [False, True, False]
    assert cal[1]["name"] == "J0834+5534" and cal[1]["nearest_integration"] in (2, 3)
    assert all(json.loads(t.read_text())["seed"] == 4 for t in truths)
