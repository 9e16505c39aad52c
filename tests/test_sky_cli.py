"""``contimg calibrators`` and the altitude/beam plot."""

from __future__ import annotations

import astropy.units as u
import pytest
from astropy.time import Time

from contimg.instrument import INTEGRATION_TIME_S
from contimg.sky.catalog import find_calibrator
from contimg.sky.plots import plot_altitude_tracks
from contimg.sky.transit import transit_time
from contimg_cli.main import main

GROUP_S = 24 * INTEGRATION_TIME_S


def test_cli_ranks_0834_first_and_names_its_transit_group(capsys, tmp_path):
    png = tmp_path / "tracks.png"
    assert main(["calibrators", "--dec", "54.6", "--date", "2026-11-25", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert table[0][1:3] == ["J0834+5534", "PP"], out
    assert "1028 calibrators from vla_calibrators.txt" in out
    # the usable >= 1 Jy calibrators of the strip (the X/C ones, e.g. J0957+5522, are left out)
    ranked = [row[1] for row in table if row[0].isdigit()]
    assert ranked == ["J0834+5534", "J2343+5348", "J2231+5409", "J1944+5448", "J2023+5427"]
    # the group holding the transit on a regular grid from 00:00 UTC, computed here
    transit = transit_time(find_calibrator("J0834+5534").coord, "2026-11-25")
    day = Time("2026-11-25T00:00:00")
    group = day + ((transit - day).sec // GROUP_S) * GROUP_S * u.s
    assert group.isot[:19] in table[0]
    groups = out.split("Predicted calibrator groups")[1]
    assert f"{group.isot[:19]}  J0834+5534" in groups
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_observed_anchor_moves_the_group(capsys):
    assert main(["calibrators", "--dec", "54.6", "--date", "2026-11-25", "--anchor", "2026-11-25T00:02:00"]) == 0
    out = capsys.readouterr().out
    transit = transit_time(find_calibrator("J0834+5534").coord, "2026-11-25")
    anchor = Time("2026-11-25T00:02:00")
    group = anchor + ((transit - anchor).sec // GROUP_S) * GROUP_S * u.s
    assert f"{group.isot[:19]}  J0834+5534" in out


def test_cli_with_no_candidate(capsys):
    # the VLA list stops at Dec -46.3 (the VLA's southern limit)
    assert main(["calibrators", "--dec", "-60", "--date", "2026-11-25"]) == 0
    out = capsys.readouterr().out
    assert "no calibrator in the declination band" in out and "none" in out


def test_plot_refuses_unitless_dec(tmp_path):
    from contimg.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        plot_altitude_tracks([find_calibrator("3C286")], 54.6, "2026-11-25", tmp_path / "x.png")
