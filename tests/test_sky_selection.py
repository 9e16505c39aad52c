"""Calibrator selection, transit groups and group classification (UVH5/MS via pyuvdata).

The expected transit and peak integration come from astropy's HADec frame with a
root finder, independent of contimg.sky.transit (TETE + apparent sidereal time).
"""

from __future__ import annotations


import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.coordinates import ICRS, HADec, SkyCoord
from astropy.time import Time
from scipy.optimize import brentq

from contimg.errors import InvalidInputError
from contimg.instrument import INTEGRATION_TIME_S, SITE
from contimg.sky.catalog import Calibrator, find_calibrator, load_calibrators
from contimg.sky.pointing import load_pointing, validate_declination
from contimg.sky.selection import (
    GROUP_CADENCE_S,
    candidates_near_pointing,
    classify_group,
    predict_calibrator_groups,
    score_calibrators,
    transit_group_start,
)

DEC0 = 54.6 * u.deg
DAY = "2026-11-25"


def _true_transit(coord, near: Time) -> Time:
    """HA = 0 from astropy's HADec frame, by bisection within +/-1 h of ``near``."""
    def ha(sec):
        t = near + sec * u.s
        return coord.transform_to(HADec(obstime=t, location=SITE)).ha.wrap_at(180 * u.deg).deg

    return near + brentq(ha, -3600, 3600, xtol=1e-3) * u.s


def _uvh5(path, times_jd, *, dec_value, fs_table="fringestopping_table_dec54.6deg_96ant.npz", epoch="HADEC"):
    """A real (small) UVH5 file written by pyuvdata, with DSA-110 extra_keywords."""
    from pyuvdata import Telescope, UVData

    tel = Telescope.new(
        name="DSA-110", location=SITE, instrument="dsa",
        antenna_positions={0: np.zeros(3), 1: np.array([5.75, 0, 0]), 2: np.array([0, 8.66, 0])},
        antname_format="DSA-{0:03d}", mount_type="alt-az", antenna_diameters=np.full(3, 4.65),
        feeds=["x", "y"], x_orientation="east", update_from_known=False)
    uvd = UVData.new(freq_array=np.linspace(1.40e9, 1.41e9, 4), polarization_array=[-5, -6], telescope=tel,
                     times=np.asarray(times_jd), antpairs=[(0, 1), (0, 2), (1, 2)], do_blt_outer=True,
                     integration_time=INTEGRATION_TIME_S, empty=True)
    keywords = {"phase_center_dec": dec_value, "ha_phase_center": 0.0, "phase_center_epoch": epoch,
                "applied_delays_ns": "0 0 0"}
    if fs_table is not None:
        keywords["fs_table"] = fs_table
    uvd.extra_keywords = keywords
    uvd.write_uvh5(str(path), clobber=True)
    return uvd


def _group_around(transit: Time, peak: int, frac: float = 0.3) -> Time:
    """Group start such that ``transit`` falls in integration ``peak``."""
    return transit - (peak + frac) * INTEGRATION_TIME_S * u.s


# --- candidates and scores -------------------------------------------------------

def test_candidates_near_pointing_band_flux_cut_and_quality():
    """Of the 25 VLA calibrators within 1.5 deg of Dec 54.6, 12 have S >= 1 Jy; 7 of those have
    an X or C letter in the C or D configuration (e.g. J0957+5522 2.6 Jy: X X, J0655+5408 3.6 Jy:
    X P) and are left out. The rest: P before S, then by distance in Dec."""
    cands = candidates_near_pointing(DEC0)
    assert [c.name for c in cands] == ["J0834+5534", "J2023+5427", "J1944+5448", "J2231+5409", "J2343+5348"]
    assert [c.quality_rank for c in cands] == [0, 1, 1, 1, 1]
    strip = [c for c in load_calibrators() if abs(c.dec_deg - 54.6) <= 1.5 and c.flux_jy >= 1.0]
    assert len(strip) == 12
    assert {c.name for c in strip if c.unsuitable} == {"J0655+5408", "J0824+5552", "J0957+5522", "J1313+5458",
                                                       "J1349+5341", "J1429+5406", "J2031+5455"}
    wide = candidates_near_pointing(DEC0, band_deg=5.0)
    ranks = [c.quality_rank for c in wide]
    assert ranks == sorted(ranks) and not any(c.unsuitable for c in wide)
    assert [c.name for c in wide if c.quality_rank == 0][:3] == ["J0834+5534", "J0359+5057", "J0542+4951"]
    assert [c.name for c in candidates_near_pointing(DEC0, min_flux_jy=6.0)] == ["J0834+5534"]
    assert candidates_near_pointing(DEC0, min_flux_jy=9.0) == []
    assert candidates_near_pointing(49.85 * u.deg, band_deg=0.1)[0].matches("3C147")
    with pytest.raises(InvalidInputError, match="no unit"):
        candidates_near_pointing(54.6)


def test_selection_prefers_p_over_s_over_w_then_flux():
    """Same place in the beam: a P source beats a brighter S, an S a brighter W; equal letters go by flux."""
    d = 54.6
    cals = [Calibrator("W", None, 100.0, d, 9.0, quality_c="W", quality_d="W"),
            Calibrator("S", None, 101.0, d, 5.0, quality_c="S", quality_d="P"),
            Calibrator("P1", None, 102.0, d, 1.0, quality_c="P", quality_d="P"),
            Calibrator("P2", None, 103.0, d, 2.0, quality_c="P", quality_d="P"),
            Calibrator("BAD", None, 104.0, d, 50.0, quality_c="C", quality_d="P")]
    assert [c.name for c in candidates_near_pointing(DEC0, catalog=cals)] == ["P2", "P1", "S", "W"]
    scores = score_calibrators(DEC0, DAY, calibrators=cals)
    assert [s.calibrator.name for s in scores] == ["P2", "P1", "S", "W", "BAD"]  # explicit: scored as given


def test_score_calibrators_ranks_by_beam_weighted_flux():
    # 2.9 deg off, near the first null (3.2 deg); same quality letters as J0834+5534
    bright_far = Calibrator("FAR", None, 128.0, 57.6, 50.0, quality_c="P", quality_d="P")
    scores = score_calibrators(DEC0, DAY, calibrators=[bright_far, find_calibrator("0834+555")])
    assert [s.calibrator.name for s in scores] == ["J0834+5534", "FAR"]
    s = scores[0]
    # offset at transit = |apparent Dec - Dec0|
    app = s.calibrator.coord.transform_to(HADec(obstime=s.transit, location=SITE))
    assert s.offset.deg == pytest.approx(abs(app.dec.deg - 54.6), abs=1e-3)
    assert 0.7 < s.pb_at_transit < 0.8
    assert s.weighted_flux.to_value(u.Jy) == pytest.approx(8.8 * s.pb_at_transit)
    assert scores[1].weighted_flux < s.weighted_flux
    assert abs((s.transit - _true_transit(s.calibrator.coord, s.transit)).sec) < 1.0
    assert s.group_start <= s.transit < s.group_start + GROUP_CADENCE_S * u.s
    assert s.field_name == f"J0834+5534_t{s.peak_integration}"
    # J2000 pointing frame: offset = |Dec_J2000 - Dec0|, the VLA list's +55d34'21.07098"
    j2000 = score_calibrators(DEC0, DAY, calibrators=[s.calibrator], pointing_epoch="J2000")[0]
    assert j2000.offset.deg == pytest.approx(55 + 34 / 60 + 21.07098 / 3600 - 54.6, abs=1e-9)


def test_transit_groups_regular_grid_and_observed_starts():
    anchor = Time("2026-11-25T00:00:00")
    t = anchor + (10 * GROUP_CADENCE_S + 100.0) * u.s
    assert abs((transit_group_start(t) - (anchor + 10 * GROUP_CADENCE_S * u.s)).sec) < 1e-3
    shifted = Time("2026-11-25T00:02:00")
    assert abs((transit_group_start(t, anchor=shifted) - (shifted + 9 * GROUP_CADENCE_S * u.s)).sec) < 1e-3
    starts = Time(["2026-11-25T00:51:00", "2026-11-25T00:56:10", "2026-11-25T01:10:00"])
    assert transit_group_start(Time("2026-11-25T00:57:00"), group_starts=starts).isot == "2026-11-25T00:56:10.000"
    assert transit_group_start(Time("2026-11-25T01:05:00"), group_starts=starts) is None  # a gap


def test_predicted_calibrator_groups_for_a_day():
    """The five usable >= 1 Jy calibrators of the strip all transit inside PB >= 0.3, in time order;
    J2023+5427 transits just after 00:00 and again just before 24:00 UTC."""
    groups = predict_calibrator_groups(DEC0, DAY)
    assert [g.calibrator.name for g in groups] == ["J2023+5427", "J2231+5409", "J2343+5348", "J0834+5534",
                                                   "J1944+5448", "J2023+5427"]
    g = groups[3]
    expected_start = transit_group_start(g.transit)
    assert g.group_start.isot == expected_start.isot
    assert g.peak_integration == int((g.transit - g.group_start).sec // INTEGRATION_TIME_S)
    # a source transiting just after 00:00 UTC transits twice in that UTC day
    meridian = SkyCoord(0 * u.deg, 54.6 * u.deg, frame=HADec(obstime=Time("2026-11-25T00:01:00"), location=SITE))
    icrs = meridian.transform_to(ICRS())
    early = Calibrator("EARLY", None, icrs.ra.deg, icrs.dec.deg, 2.0)
    twice = predict_calibrator_groups(DEC0, DAY, calibrators=[early])
    assert len(twice) == 2 and (twice[1].transit - twice[0].transit).sec == pytest.approx(86164.09, abs=1)


# --- classification ----------------------------------------------------------------

def test_classify_group_with_explicit_times_finds_transit_and_peak_integration():
    cal = find_calibrator("J0834+5534")
    truth = _true_transit(cal.coord, Time("2026-11-25T12:12:00"))
    start = _group_around(truth, 7)
    result = classify_group(start=start, dec=DEC0)
    assert result.kind == "calibrator" and result.calibrator.name == "J0834+5534"
    assert result.peak_index == 7 and result.field_name == "J0834+5534_t7"
    assert abs((result.transit - truth).sec) < 1.0
    # predicted flux = S x PB at the peak integration; PB there is within 1e-4 of transit
    assert result.predicted_flux.to_value(u.Jy) == pytest.approx(8.8 * result.pb_at_peak)
    assert result.pb_at_peak == pytest.approx(result.pb_at_transit, abs=1e-3)
    # the group before and the group after are targets
    assert classify_group(start=start - GROUP_CADENCE_S * u.s, dec=DEC0).kind == "target"
    assert classify_group(start=start + GROUP_CADENCE_S * u.s, dec=DEC0).kind == "target"
    # explicit integration mid-times give the same answer
    times = start + (np.arange(24) + 0.5) * INTEGRATION_TIME_S * u.s
    assert classify_group(times=times, dec=DEC0).peak_index == 7


def test_classify_group_beam_threshold():
    cal = find_calibrator("J0834+5534")
    start = _group_around(_true_transit(cal.coord, Time("2026-11-25T12:12:00")), 12)
    assert classify_group(start=start, dec=DEC0, min_pb=0.8).kind == "target"  # PB at transit ~0.76
    # pointing 2 deg away: same transit, but PB ~0.3 -> 0.1 at the higher threshold
    assert classify_group(start=start, dec=53.5 * u.deg, band_deg=3.0).kind == "target"
    assert classify_group(start=start, dec=53.5 * u.deg, band_deg=3.0, min_pb=0.1).kind == "calibrator"


def test_classify_group_from_a_uvh5_file(tmp_path):
    cal = find_calibrator("J0834+5534")
    truth = _true_transit(cal.coord, Time("2026-11-25T12:12:00"))
    start = _group_around(truth, 16, frac=0.6)
    times = start + (np.arange(24) + 0.5) * INTEGRATION_TIME_S * u.s
    path = tmp_path / f"{start.isot[:19]}_sb00.hdf5"
    _uvh5(path, times.jd, dec_value=np.radians(54.6))
    pointing = load_pointing(path)
    assert pointing.dec.deg == pytest.approx(54.6, abs=1e-9)
    assert abs((pointing.start - start).sec) < 1e-3 and abs((pointing.end - (start + GROUP_CADENCE_S * u.s)).sec) < 1e-3
    result = classify_group(path)
    assert result.kind == "calibrator" and result.peak_index == 16
    assert result.calibrator.name == "J0834+5534"


def test_degrees_where_radians_are_expected_are_rejected(tmp_path):
    times = Time("2026-11-25T12:00:00") + (np.arange(24) + 0.5) * INTEGRATION_TIME_S * u.s
    bad = tmp_path / "2026-11-25T12:00:00_sb00.hdf5"
    _uvh5(bad, times.jd, dec_value=54.6)  # degrees written into a radians keyword
    with pytest.raises(InvalidInputError, match=r"not radians.*DEGREES.*fs_table says 54.6 deg"):
        load_pointing(bad)
    with pytest.raises(InvalidInputError, match="not radians"):
        classify_group(bad)
    # a small Dec in degrees passes the |dec| <= pi/2 test; fs_table catches it
    sneaky = tmp_path / "2026-11-25T12:00:00_sb01.hdf5"
    _uvh5(sneaky, times.jd, dec_value=1.2, fs_table="fringestopping_table_dec1.2deg_96ant.npz")
    with pytest.raises(InvalidInputError, match="looks like degrees"):
        load_pointing(sneaky)
    # the same check on its own
    assert validate_declination(0.9529497715889039).deg == pytest.approx(54.6)
    with pytest.raises(InvalidInputError, match="not radians"):
        validate_declination(54.5734)
    with pytest.raises(InvalidInputError, match="disagrees"):
        validate_declination(np.radians(16.27), fs_table="fringestopping_table_dec54.6deg_96ant.npz")
    with pytest.raises(InvalidInputError, match="not a number"):
        validate_declination("north")
    # a file without the keyword is an error, not a guess
    missing = tmp_path / "2026-11-25T12:00:00_sb02.hdf5"
    _uvh5(missing, times.jd, dec_value=0.95)
    with h5py.File(missing, "a") as fh:
        del fh["Header/extra_keywords/phase_center_dec"]
    with pytest.raises(InvalidInputError, match="phase_center_dec is missing"):
        load_pointing(missing)


def test_load_pointing_from_a_measurement_set(tmp_path):
    times = Time("2026-11-25T12:00:00") + (np.arange(24) + 0.5) * INTEGRATION_TIME_S * u.s
    uvd = _uvh5(tmp_path / "x.hdf5", times.jd, dec_value=np.radians(54.6))
    uvd.phase(ra=np.radians(128.0), dec=np.radians(54.6), cat_name="meridian", cat_type="sidereal")
    ms = tmp_path / "x.ms"
    uvd.write_ms(str(ms), clobber=True)
    pointing = load_pointing(ms)
    assert pointing.dec.deg == pytest.approx(54.6, abs=1e-9)
    assert pointing.epoch == "J2000"
    assert len(pointing.times) == 24
    assert abs((pointing.start - times[0]).sec + INTEGRATION_TIME_S / 2) < 1e-3


def test_simulated_calibrator_group_is_classified(tmp_path):
    """End to end with the simulator: a group simulated around 0834+555's transit."""
    from contimg.simulate import simulate_group

    cal = find_calibrator("J0834+5534")
    truth = _true_transit(cal.coord, Time("2026-11-25T12:12:00"))
    start = _group_around(truth, 9)
    simulate_group(tmp_path, Time(start.isot[:19]))
    files = sorted(tmp_path.rglob("*_sb00.hdf5"))
    assert files, "the simulator wrote no sb00 file"
    result = classify_group(files[0])
    assert result.kind == "calibrator" and result.calibrator.name == "J0834+5534"
    assert result.peak_index == int((truth - load_pointing(files[0]).start).sec // INTEGRATION_TIME_S)
