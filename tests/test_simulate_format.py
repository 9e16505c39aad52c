"""Simulated files agree with DOMAIN.md 1 on every item the pipeline depends on."""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.time import Time
from pyuvdata import UVData
from pyuvdata.utils.phasing import calc_uvw

from contimg import instrument, naming
from contimg.simulate import scale_preset, simulate_group
from contimg.simulate.layout import build_template, visibility_chunks

START = "2026-11-25T08:00:00"
UVW_WARNING = "The uvw_array does not match"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    return simulate_group(tmp_path_factory.mktemp("fmt"), START, scale="small", seed=3)


@pytest.fixture(scope="module")
def uvds(group):
    out = []
    for p in group.paths:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=UVW_WARNING)
            out.append(UVData.from_file(str(p), file_type="uvh5"))
    return out


def test_full_pyuvdata_checks_pass(group):
    """Default run_check=True; the only warning is the expected uvw one (meridian-projected
    uvw in a drift file, exactly as in the real files)."""
    for p in group.paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            uvd = UVData.from_file(str(p), file_type="uvh5")
        others = [str(w.message) for w in caught if UVW_WARNING not in str(w.message)]
        assert not others, others
        uvd.check(check_autos=True, strict_uvw_antpos_check=False)


def test_naming(group):
    names = [p.name for p in group.paths]
    assert len(names) == 16
    assert group.group_id == START
    assert names[0] == f"{START}_sb00.hdf5"
    t0 = naming.parse_group_id(group.group_id)
    truth = group.truth()
    for sb, name in enumerate(names):
        stamp, num = naming.parse_subband_filename(name)
        assert num == sb and name.endswith(f"_sb{sb:02d}.hdf5")
        jitter = (naming.parse_group_id(stamp) - t0).total_seconds()
        assert 0 <= jitter <= 2
        assert truth["files"][sb]["jitter_s"] == jitter and truth["files"][sb]["name"] == name
    assert len({naming.parse_subband_filename(n)[0] for n in names}) > 1  # the jitter is real
    assert group.truth_path == naming.truth_path(group.paths[0].parent, group.group_id)


def test_sixteen_subbands_and_frequency_order(uvds):
    assert all(u.Nspws == 1 for u in uvds)
    tops = [u.freq_array.max() for u in uvds]
    assert all(a > b for a, b in zip(tops, tops[1:]))  # sb00 highest
    assert uvds[0].freq_array.max() < 1498.75e6 and uvds[0].freq_array.min() > 1487.0e6
    assert uvds[15].freq_array.min() > 1311.25e6 and uvds[15].freq_array.max() < 1323.0e6
    for sb, u in enumerate(uvds):
        np.testing.assert_array_equal(u.freq_array, instrument.subband_frequencies_hz(sb, n_channels=4))
    band = np.concatenate([u.freq_array[::-1] for u in uvds[::-1]])  # sb15..sb00, ascending
    np.testing.assert_allclose(np.diff(band), instrument.SUBBAND_WIDTH_HZ / 4)


def test_channels_descend_with_negative_width(uvds):
    for u in uvds:
        assert np.all(np.diff(u.freq_array) < 0)
        np.testing.assert_allclose(u.channel_width, -instrument.SUBBAND_WIDTH_HZ / 4)


def test_full_size_header_layout():
    """The real size: 48 x 244140.625 Hz channels, 24 integrations, 6903 baselines with autos."""
    times = (Time(START) + (np.arange(24) + 0.5) * instrument.INTEGRATION_TIME_S * u.s).jd
    uvd = build_template(times_jd=times, antennas=np.arange(117), n_channels=48,
                         pointing_dec_rad=np.radians(54.5734), applied_delays_ns="0", fs_table="x")
    assert uvd.Nfreqs == 48 and uvd.Ntimes == 24 and uvd.Nbls == 6903 and uvd.Nblts == 6903 * 24
    np.testing.assert_allclose(uvd.channel_width, -244140.625)
    assert uvd.freq_array[-1] == pytest.approx(1487.2e6 + 0.0, abs=0.2e6)
    assert scale_preset("full") == {"n_subbands": 16, "n_channels": 48, "n_times": 24, "antennas": None}


def test_integrations_and_times(group, uvds):
    t0 = Time(START, scale="utc")
    expected = (t0 + (np.arange(6) + 0.5) * instrument.INTEGRATION_TIME_S * u.s).jd
    for u_ in uvds:
        assert u_.Ntimes == 6
        np.testing.assert_allclose(np.unique(u_.time_array), expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(u_.integration_time, instrument.INTEGRATION_TIME_S)
        np.testing.assert_array_equal(u_.time_array, uvds[0].time_array)  # identical across subbands
    np.testing.assert_allclose(np.diff(np.unique(uvds[0].time_array)) * 86400, instrument.INTEGRATION_TIME_S, atol=1e-4)


def test_antennas_with_and_without_data(group, uvds):
    tab = instrument.antenna_table()
    truth = group.truth()
    with_data = set(truth["scale"]["antennas"])
    for u_ in uvds:
        tel = u_.telescope
        assert tel.Nants == 117
        assert list(tel.antenna_names) == [f"DSA-{s:03d}" for s in range(1, 118)]
        np.testing.assert_array_equal(tel.antenna_numbers, np.arange(117))
        np.testing.assert_allclose(tel.antenna_positions, tab.itrf_m - instrument.SITE.get_itrs().cartesian.xyz.to_value(u.m), atol=1e-6)
        np.testing.assert_allclose(tel.antenna_diameters, 4.65)
        assert set(np.unique(np.r_[u_.ant_1_array, u_.ant_2_array])) == with_data
        assert u_.Nants_data == len(with_data) < 117
    dead, flagged = truth["corruptions"]["dead_antennas"], truth["corruptions"]["flagged_antennas"]
    assert dead and flagged and not set(dead) & set(flagged)
    u_ = uvds[4]
    for a in dead:
        rows = (u_.ant_1_array == a) | (u_.ant_2_array == a)
        assert np.all(u_.data_array[rows] == 0) and np.all(u_.flag_array[rows])
    for a in flagged:
        rows = (u_.ant_1_array == a) | (u_.ant_2_array == a)
        live = rows & ~np.isin(u_.ant_1_array, dead) & ~np.isin(u_.ant_2_array, dead)
        assert np.all(u_.flag_array[rows]) and np.all(np.abs(u_.data_array[live]) > 0)
    bad = np.isin(u_.ant_1_array, dead + flagged) | np.isin(u_.ant_2_array, dead + flagged)
    assert not u_.flag_array[~bad].any()


def test_baselines_with_real_autos(uvds):
    for u_ in uvds:
        n = u_.Nants_data
        assert u_.Nbls == n * (n + 1) // 2
        assert np.all(u_.ant_1_array <= u_.ant_2_array)
        autos = u_.ant_1_array == u_.ant_2_array
        assert autos.sum() == n * u_.Ntimes
        assert np.all(u_.data_array[autos].imag == 0)
        live = autos & ~u_.flag_array[:, 0, 0]
        assert np.all(u_.data_array[live].real > 5000)  # ~SEFD, 11.6 kJy
        # time-major order: all baselines of the first integration first
        assert np.all(u_.time_array[: u_.Nbls] == u_.time_array[0])


def test_polarizations(uvds):
    for u_ in uvds:
        np.testing.assert_array_equal(u_.polarization_array, [-5, -6])


def test_header_keywords_and_units(group):
    with h5py.File(group.paths[2], "r") as fh:
        extra = fh["Header/extra_keywords"]
        assert set(extra.keys()) == {"phase_center_dec", "ha_phase_center", "phase_center_epoch",
                                     "applied_delays_ns", "fs_table"}
        dec = extra["phase_center_dec"][()]
        assert extra["phase_center_dec"].dtype == np.float64
        assert dec == pytest.approx(np.radians(54.5734), abs=1e-12)  # radians, not degrees
        assert float(extra["ha_phase_center"][()]) == 0.0
        assert extra["phase_center_epoch"][()].decode() == "HADEC"
        delays = extra["applied_delays_ns"][()].decode().split()
        assert len(delays) == 117 and all(d.isdigit() for d in delays)
        assert "dec54.6deg" in extra["fs_table"][()].decode()
        assert fh["Header/phase_type"][()].decode() == "drift"
        assert fh["Header/telescope_name"][()].decode() == "DSA-110"
        assert fh["Data/visdata"].dtype == np.complex64
        assert fh["Data/flags"].dtype == bool
        # float32 uvw (real files) fails pyuvdata's full checks, so it is written as float64
        assert fh["Header/uvw_array"].dtype == np.float64
    from contimg.sky.pointing import load_pointing

    pointing = load_pointing(group.paths[2])  # the sky helper's validator accepts it
    assert pointing.dec.deg == pytest.approx(54.5734, abs=1e-9)


def test_phasing_convention(uvds):
    """Drift (unprojected) catalog; uvw = pyuvdata calc_uvw toward (LST, pointing Dec); lst = astropy LAST."""
    u_ = uvds[5]
    assert len(u_.phase_center_catalog) == 1
    assert next(iter(u_.phase_center_catalog.values()))["cat_type"] == "unprojected"
    lst = Time(u_.time_array, format="jd", scale="utc").sidereal_time(
        "apparent", longitude=instrument.SITE.lon).rad
    np.testing.assert_allclose(u_.lst_array, lst, rtol=0, atol=1e-12)
    dec = np.full(u_.Nblts, np.radians(54.5734))
    expected = calc_uvw(app_ra=u_.lst_array, app_dec=dec, lst_array=u_.lst_array, use_ant_pos=True,
                        antenna_positions=u_.telescope.antenna_positions,
                        antenna_numbers=u_.telescope.antenna_numbers, ant_1_array=u_.ant_1_array,
                        ant_2_array=u_.ant_2_array, telescope_lat=instrument.SITE.lat.rad,
                        telescope_lon=instrument.SITE.lon.rad)
    np.testing.assert_allclose(u_.uvw_array, expected, rtol=0, atol=1e-8)
    # uvw = x_ant2 - x_ant1: an E-W core pair (0, 1) has u > 0 (antenna 1 is east of 0)
    row = np.flatnonzero((u_.ant_1_array == 0) & (u_.ant_2_array == 1))[0]
    assert u_.uvw_array[row, 0] == pytest.approx(5.75, abs=0.05)
    # an Earth-fixed phase centre: uvw is the same in every integration
    n = u_.Nbls
    np.testing.assert_array_equal(u_.uvw_array[:n], u_.uvw_array[-n:])
    assert u_.vis_units == "uncalib"


def test_telescope_location(uvds):
    for u_ in uvds:
        loc = u_.telescope.location
        assert loc.lat.deg == pytest.approx(37.2314, abs=1e-9)
        assert loc.lon.deg == pytest.approx(-118.2817, abs=1e-9)
        assert loc.height.to_value(u.m) == pytest.approx(1222.0, abs=1e-6)
        assert u_.telescope.name == "DSA-110"


def test_group_id_from_start_and_seconds():
    """The group id is the whole second of the start (DOMAIN.md 1.1)."""
    assert naming.group_id_from_datetime(datetime(2026, 11, 25, 8, 0, 0) + timedelta(seconds=0.7)) == START


def test_datasets_are_chunked_like_the_correlator_writes_them(group):
    # DOMAIN.md: 2-4 MB chunks. A full-size subband: 165,672 rows x 48 channels x 2 pols.
    rows, n_chan, n_pol = visibility_chunks((165_672, 48, 2))
    assert (n_chan, n_pol) == (48, 2) and 2e6 <= rows * n_chan * n_pol * 8 <= 4.2e6
    with h5py.File(group.paths[0], "r") as h:
        vis = h["Data"]["visdata"]
        assert vis.chunks == visibility_chunks(vis.shape)
        assert h["Data"]["flags"].chunks == vis.chunks and h["Data"]["flags"].compression == "lzf"
