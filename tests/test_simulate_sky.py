"""The simulated sky: the apparent-flux cut of the field population, checked against
an independent computation, and the fast apparent-place evaluation."""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
import pytest
from pyuvdata.utils.phasing import transform_icrs_to_app

from contimg import instrument
from contimg.simulate import (
    Corruptions,
    FieldOptions,
    simulate_group,
    transit_start_time,
)
from contimg.simulate.corruptions import image_noise_jy, noise_sigma_jy, sefd_jy
from contimg.simulate.scales import SMALL_ANTENNAS
from contimg.simulate.sky import calibrators_near, field_population, find_calibrator
from contimg.sky.catalog import load_calibrators as load_catalog
from contimg.simulate.visibilities import apparent_radec_rad
from contimg.sky.beam import airy_power

START = "2026-11-25T08:00:00"
DEC0 = 54.5734
#: Bottom edge of the DSA-110 band (DOMAIN.md 1.2: lowest channel centre 1311.3873291015625 MHz,
#: channels 244.140625 kHz wide), 1311.265 MHz
NU_LOW_HZ = 1311.3873291015625e6 - 244140.625 / 2
_LOC = (instrument.SITE.lat.rad, instrument.SITE.lon.rad, instrument.SITE.height.to_value(u.m))
#: Small, fast groups: 2 subbands at the top of the band (the cut uses the band bottom
#: whichever subbands are written), 4 channels, 6 integrations, 12 antennas.
_SMALL = {"subbands": [0, 1], "n_channels": 4, "n_times": 6, "antennas": SMALL_ANTENNAS,
          "corruptions": Corruptions.none(), "jitter_s": 0, "seed": 3}


def _independent_peak_apparent_flux(truth: dict, sky: list[dict]) -> np.ndarray:
    """max over integrations of S(nu_low) * Airy PB(theta, nu_low), with theta from
    pyuvdata's *astropy* apparent place (the simulator uses erfa) and the haversine."""
    times = np.asarray(truth["times_jd"])
    lst = np.asarray(truth["lst_rad"])
    d0 = math.radians(truth["pointing_dec_deg"])
    peaks = []
    for s in sky:
        a, d = transform_icrs_to_app(time_array=times, ra=np.full(len(times), math.radians(s["ra_deg"])),
                                     dec=np.full(len(times), math.radians(s["dec_deg"])),
                                     telescope_loc=_LOC, astrometry_library="astropy")
        hav = np.sin((d - d0) / 2) ** 2 + np.cos(d) * np.cos(d0) * np.sin((a - lst) / 2) ** 2
        theta = 2 * np.arcsin(np.sqrt(hav))
        flux = s["flux_jy"] * (NU_LOW_HZ / s["ref_freq_hz"]) ** s["spectral_index"]
        peaks.append(float(np.max(flux * airy_power(theta, NU_LOW_HZ, dish_diameter_m=4.65))))
    return np.array(peaks)


@pytest.fixture(scope="module")
def full_and_cut(tmp_path_factory):
    """The same group with the full field population (cut 0) and with the default cut."""
    full = simulate_group(tmp_path_factory.mktemp("full"), START, field=FieldOptions(min_apparent_flux_jy=0.0),
                          **_SMALL)
    cut = simulate_group(tmp_path_factory.mktemp("cut"), START, **_SMALL)
    return full.truth(), cut.truth()


def test_threshold_zero_keeps_the_full_population(full_and_cut):
    """Cut 0: exactly the sources field_population draws (same seed, same tiles), none dropped."""
    full, _ = full_and_cut
    lst, n_t = full["lst_rad"], full["scale"]["n_times"]
    sweep = n_t * instrument.INTEGRATION_TIME_S * 360.0 / 86164.0905
    ra_lo = math.degrees(lst[0]) - sweep / n_t / 2
    drawn = field_population(ra_lo, ra_lo + sweep, DEC0, seed=_SMALL["seed"], options=FieldOptions())
    simulated = [s for s in full["sky"] if s["kind"] == "field"]
    assert [s["name"] for s in simulated] == [s.name for s in drawn]
    assert [s["flux_jy"] for s in simulated] == [s.flux_jy for s in drawn]
    assert len(drawn) > 300  # a real population, not a trivial one
    record = full["field_population"]
    assert record["min_apparent_flux_jy"] == 0.0
    assert record["n_drawn"] == record["n_simulated"] == len(drawn)
    assert record["n_dropped"] == 0 and record["dropped_peak_apparent_flux_jy"] == 0.0


def test_cut_drops_exactly_the_sources_below_the_threshold(full_and_cut):
    """Default cut: the kept field sources are those whose independently computed peak
    apparent flux at 1311.27 MHz is >= 3 mJy; the truth records the dropped count and flux."""
    full, cut = full_and_cut
    threshold = FieldOptions().min_apparent_flux_jy
    assert threshold == pytest.approx(0.003)
    field = [s for s in full["sky"] if s["kind"] == "field"]
    peak = _independent_peak_apparent_flux(full, field)
    # no source so close to the threshold that the two astrometry back ends could disagree
    assert np.min(np.abs(peak - threshold)) > 1e-6 * threshold
    expected_kept = [s["name"] for s, p in zip(field, peak) if p >= threshold]
    kept = [s["name"] for s in cut["sky"] if s["kind"] == "field"]
    assert kept == expected_kept
    assert 0 < len(kept) < len(field)
    # the kept sources are the same sources (positions, fluxes), not new draws
    by_name = {s["name"]: s for s in field}
    assert all(s == by_name[s["name"]] for s in cut["sky"] if s["kind"] == "field")
    record = cut["field_population"]
    dropped = peak < threshold
    assert record["min_apparent_flux_jy"] == threshold
    assert record["cut_freq_hz"] == NU_LOW_HZ
    assert record["n_drawn"] == len(field)
    assert record["n_dropped"] == int(dropped.sum())
    assert record["n_simulated"] == len(kept)
    assert record["dropped_peak_apparent_flux_jy"] == pytest.approx(peak[dropped].sum(), rel=1e-6)
    assert record["simulated_peak_apparent_flux_jy"] == pytest.approx(peak[~dropped].sum(), rel=1e-6)
    assert record["options"]["min_apparent_flux_jy"] == threshold


def test_calibrators_are_never_cut(tmp_path):
    """A field cut above every source's flux drops the whole field but no calibrator, even one
    far outside the beam (requested) or attenuated by it (near the track)."""
    cal = find_calibrator("J0834+5534")
    start = transit_start_time(cal.ra_deg, "2026-11-25T00:00:00", dec_deg=cal.dec_deg, n_times=6)
    huge = FieldOptions(min_apparent_flux_jy=1e3)
    group = simulate_group(tmp_path / "transit", start, calibrator="J0834+5534", field=huge, **_SMALL)
    truth = group.truth()
    assert [s["name"] for s in truth["sky"] if s["kind"] == "calibrator"][:1] == [cal.name]
    assert not [s for s in truth["sky"] if s["kind"] == "field"]
    assert truth["field_population"]["n_simulated"] == 0
    assert truth["field_population"]["n_dropped"] == truth["field_population"]["n_drawn"] > 0
    # ~8 hours from transit: apparent flux far below the default cut, simulated because it was asked for
    away = simulate_group(tmp_path / "away", "2026-11-25T20:00:00", calibrator="J0834+5534", **_SMALL)
    sky = away.truth()["sky"]
    assert sky[0]["name"] == cal.name and sky[0]["kind"] == "calibrator"
    assert _independent_peak_apparent_flux(away.truth(), sky[:1])[0] < 0.01 * FieldOptions().min_apparent_flux_jy


def test_simulated_calibrators_are_the_shipped_catalog_at_its_fluxes_and_spectral_indices():
    """The whole day's track at Dec 54.6: the 25 VLA calibrators within 1.5 deg (DOMAIN.md 4.1),
    unsuitable ones included (they are on the sky), each with the catalog's flux and index."""
    # two half-day tracks (the track distance assumes a group's short RA sweep, < 180 deg)
    halves = [calibrators_near(lo, lo + 180.0, 54.6, radius_deg=1.5) for lo in (0.0, 180.0)]
    strip = halves[0] + halves[1]
    catalog = {c.name: c for c in load_catalog() if abs(c.dec_deg - 54.6) <= 1.5}
    assert len(strip) == len(catalog) == 25
    assert all(s.kind == "calibrator" and s.ref_freq_hz == 1.4e9 for s in strip)
    assert {s.name: (s.flux_jy, s.spectral_index) for s in strip} == \
        {c.name: (c.flux_jy, c.spectral_index) for c in catalog.values()}
    assert any(catalog[s.name].unsuitable for s in strip)  # e.g. J0957+5522 (X X), 2.6 Jy
    for half in halves:
        seps = [abs(s.dec_deg - 54.6) for s in half]
        assert seps == sorted(seps)  # nearest the track first
    j0834 = find_calibrator("0834+555")
    assert (j0834.name, j0834.flux_jy) == ("J0834+5534", 8.8)
    assert j0834.spectral_index == pytest.approx(math.log(5.6 / 8.8) / math.log(5.0 / 1.4), rel=1e-12)
    assert float(j0834.flux_at(5.0e9)) == pytest.approx(5.6)
    assert find_calibrator("3C286").name == "J1331+3030"


def test_a_group_at_0834_transit_holds_the_real_calibrators_near_it(tmp_path):
    """No field population: the sky is the catalog's calibrators within the field radius of the
    track, J0834+5534 first (nearest), J0824+5552 (1.2 Jy, X X: not a calibrator candidate) too."""
    cal = find_calibrator("J0834+5534")
    start = transit_start_time(cal.ra_deg, "2026-11-25T00:00:00", dec_deg=cal.dec_deg, n_times=6)
    truth = simulate_group(tmp_path, start, field=None, **_SMALL).truth()
    sky = {s["name"]: s for s in truth["sky"]}
    assert truth["sky"][0]["name"] == "J0834+5534" and all(s["kind"] == "calibrator" for s in truth["sky"])
    assert (sky["J0834+5534"]["flux_jy"], sky["J0834+5534"]["spectral_index"]) == (8.8, cal.spectral_index)
    near = find_calibrator("J0824+5552")
    assert (sky["J0824+5552"]["flux_jy"], sky["J0824+5552"]["spectral_index"]) == (1.2, near.spectral_index)
    n_t = truth["scale"]["n_times"]
    sweep = n_t * instrument.INTEGRATION_TIME_S * 360.0 / 86164.0905
    ra_lo = math.degrees(truth["lst_rad"][0]) - sweep / n_t / 2
    expected = calibrators_near(ra_lo, ra_lo + sweep, truth["pointing_dec_deg"], radius_deg=FieldOptions().radius_deg)
    assert [s["name"] for s in truth["sky"]] == [s.name for s in expected]


def test_negative_threshold_is_rejected():
    with pytest.raises(ValueError, match="min_apparent_flux_jy"):
        FieldOptions(min_apparent_flux_jy=-1e-3)


def test_default_threshold_is_about_ten_sigma_of_a_five_minute_image():
    """The documented justification: 3 mJy vs the natural-weighting Stokes I noise of one
    full-band group (radiometer equation with the simulator's SEFD, channel width, integration)."""
    sefd = sefd_jy(tsys_k=50.0, aperture_efficiency=0.7)
    n_ant, n_t = 117, instrument.INTEGRATIONS_PER_FILE
    n_vis = n_ant * (n_ant - 1) // 2 * instrument.N_SUBBANDS * instrument.CHANNELS_PER_SUBBAND * n_t * 2
    sigma_vis = noise_sigma_jy(sefd, instrument.CHANNEL_WIDTH_HZ, instrument.INTEGRATION_TIME_S)
    sigma_img = image_noise_jy(sefd, n_ant, instrument.N_SUBBANDS * instrument.SUBBAND_WIDTH_HZ,
                               n_t * instrument.INTEGRATION_TIME_S)
    assert sigma_img == pytest.approx(sigma_vis / math.sqrt(n_vis), rel=1e-12)
    assert sigma_img == pytest.approx(0.29e-3, abs=0.01e-3)
    assert FieldOptions().min_apparent_flux_jy / sigma_img == pytest.approx(10.2, abs=0.2)


def test_truth_records_the_image_noise(full_and_cut):
    full, _ = full_and_cut
    noise = full["corruptions"]["noise"]
    n_ant = len(SMALL_ANTENNAS)
    expected = noise["sefd_jy"] / math.sqrt(2 * n_ant * (n_ant - 1) * 2 * instrument.SUBBAND_WIDTH_HZ
                                            * 6 * instrument.INTEGRATION_TIME_S)
    assert noise["image_sigma_jy"] == pytest.approx(expected, rel=1e-12)


def test_apparent_place_is_bit_identical_to_pyuvdata():
    """apco13 once per time + atciq/atioq per source == pyuvdata's per-element atco13."""
    times = 2461004.5 + np.array([0.0, 0.01, 0.37])
    ra = np.array([0.0, 45.3, 128.7, 200.0, 359.99])
    dec = np.array([54.57, -30.0, 55.4, 89.5, 0.0])
    app_ra, app_dec = apparent_radec_rad(ra, dec, times)
    ref_ra, ref_dec = transform_icrs_to_app(time_array=np.repeat(times, len(ra)), ra=np.radians(np.tile(ra, len(times))),
                                            dec=np.radians(np.tile(dec, len(times))), telescope_loc=_LOC,
                                            astrometry_library="erfa")
    assert np.array_equal(app_ra, ref_ra.reshape(len(times), -1))
    assert np.array_equal(app_dec, ref_dec.reshape(len(times), -1))


def test_cli_threshold_option():
    from contimg_cli.main import build_parser
    from contimg_cli.simulate_cmd import field_options

    parser = build_parser()
    args = parser.parse_args(["simulate", "--out", "x", "--start", START])
    assert field_options(args.min_apparent_flux_mjy) == FieldOptions()
    args = parser.parse_args(["simulate", "--out", "x", "--start", START, "--min-apparent-flux-mjy", "0"])
    assert field_options(args.min_apparent_flux_mjy) == FieldOptions(min_apparent_flux_jy=0.0)
    args = parser.parse_args(["simulate", "--out", "x", "--start", START, "--min-apparent-flux-mjy", "5"])
    assert field_options(args.min_apparent_flux_mjy).min_apparent_flux_jy == pytest.approx(0.005)
    with pytest.raises(SystemExit):
        field_options(-1.0)
