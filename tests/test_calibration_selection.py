"""CASA-style field and antenna selection strings (ids, ranges, lists, name globs, negation)."""

from __future__ import annotations

import numpy as np
import pytest

from contimg.calibration.selection import select_ids
from contimg.errors import InvalidInputError

ANTENNAS = [f"DSA-{i + 1:03d}" for i in range(117)]
FIELDS = [f"meridian_icrs_t{i}" for i in range(24)]


@pytest.mark.parametrize("spec, expected", [
    ("", list(range(117))),
    ("*", list(range(117))),
    ("3", [3]),
    ("0~3", [0, 1, 2, 3]),
    ("1,5,7~8", [1, 5, 7, 8]),
    ("DSA-10?", list(range(99, 109))),  # DSA-100..DSA-109
    ("DSA-104,DSA-105", [103, 104]),
    ("!DSA-001", list(range(1, 117))),
    ("0~9,!3", [0, 1, 2, 4, 5, 6, 7, 8, 9]),
])
def test_antenna_specs(spec, expected):
    assert select_ids(spec, ANTENNAS, what="antenna").tolist() == expected


def test_field_specs_as_the_telescope_team_wrote_them():
    assert select_ids("0~23", FIELDS).tolist() == list(range(24))
    assert select_ids("meridian_icrs_t1?", FIELDS).tolist() == list(range(10, 20))
    assert select_ids("meridian_icrs_t12", FIELDS).tolist() == [12]


@pytest.mark.parametrize("spec", ["200", "5~300", "DSA-999", "!*", "3~1"])
def test_a_selection_of_nothing_is_a_clear_error(spec):
    with pytest.raises(InvalidInputError):
        select_ids(spec, ANTENNAS, what="antenna")


def test_the_fast_solver_honours_the_antenna_selection(tmp_path):
    """Antennas left out of the selection get no solution (flagged), the others are solved."""
    from contimg import simulate
    from contimg.calibration.caltables import read_caltable
    from contimg.calibration.pipeline import CalibrationOptions, calibrate_ms
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.simulate.group import transit_start_time
    from contimg.sky.catalog import find_calibrator

    cal = find_calibrator("J0834+5534")
    start = transit_start_time(cal.ra_deg, "2026-11-25", dec_deg=cal.dec_deg, n_times=6)
    clean = simulate.Corruptions(noise=False, rfi=False, dead_antennas=0, flagged_antennas=0)
    sim = simulate.simulate_group(tmp_path / "in", start, n_channels=8, n_times=6, n_antennas=10, field=None,
                                  calibrator=cal.name, corruptions=clean, jitter_s=0.0)
    (grp,) = discover_groups(tmp_path / "in", settle_s=0)
    ms = convert_group(sim.group_id, grp.files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s").ms_path
    ants = sim.truth()["scale"]["antennas"]
    left_out = ants[-1]
    result = calibrate_ms(ms, log_dir=tmp_path / "logs",
                          options=CalibrationOptions(rfi=False, antenna=f"!DSA-{left_out + 1:03d}"))
    gp = read_caltable(next(s.path for s in result.solutions if s.kind == "GP"))
    solved = ~np.all(gp.flags, axis=(0, 1, 3, 4))
    assert not solved[list(gp.antennas).index(left_out)]
    assert all(solved[list(gp.antennas).index(a)] for a in ants[:-1])
