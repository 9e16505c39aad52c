"""Variable sources in the simulator: the visibilities carry the injected light curve, the truth records it."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.time import Time
from pyuvdata import UVData

from contimg import instrument
from contimg.simulate import Corruptions, Source, simulate_group
from contimg.simulate.scales import SMALL_ANTENNAS
from contimg.simulate.variables import (Constant, Drift, Flare, ScatteringDip, VariableOptions, VariableSource,
                                        night_variables)

START = "2026-11-25T08:00:00"
DEC0 = 54.5734
N_TIMES = 6


def _mid_lst_deg() -> float:
    t = Time(START) + N_TIMES / 2 * instrument.INTEGRATION_TIME_S * u.s
    return t.sidereal_time("apparent", longitude=instrument.SITE.lon).deg


def _cross_amplitudes(path) -> np.ndarray:
    """|V| of the XX cross-correlations, (Ntimes, Nbls_cross, Nfreqs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The uvw_array does not match")
        uvd = UVData.from_file(str(path), file_type="uvh5")
    cross = (uvd.ant_1_array != uvd.ant_2_array)[:uvd.Nbls]
    return np.abs(uvd.data_array[:, :, 0]).reshape(uvd.Ntimes, uvd.Nbls, -1)[:, cross]


def test_light_curves_have_their_stated_shape():
    t0 = 61000.0
    flare = Flare(peak_mjd=t0, rise_s=60.0, decay_s=300.0, amplitude=2.0)
    s = np.array([-120.0, -60.0, -30.0, 0.0, 300.0]) / 86400.0 + t0
    assert flare.factor(s) == pytest.approx([1.0, 1.0, 2.0, 3.0, 1.0 + 2.0 / np.e])
    dip = ScatteringDip(centre_mjd=t0, fwhm_s=600.0, depth=0.6)
    assert dip.factor(t0 + np.array([0.0, 300.0, 1e5]) / 86400.0) == pytest.approx([0.4, 0.7, 1.0])
    drift = Drift(ref_mjd=t0, slope_per_hour=0.5)
    assert drift.factor(t0 + np.array([-1.0, 0.0, 1.0, -3.0]) / 24.0) == pytest.approx([0.5, 1.0, 1.5, 0.0])
    assert Constant().factor(s) == pytest.approx(np.ones(5))


def test_visibilities_carry_the_injected_light_curve(tmp_path):
    """A flare alone near the phase centre, no noise, beam held fixed: |V(t)| / |V_constant(t)| = f(t)."""
    ra, dec = _mid_lst_deg() - 0.3, DEC0  # precession moves the ICRS position ~0.3 deg from the apparent one
    t_mid = Time(START) + N_TIMES / 2 * instrument.INTEGRATION_TIME_S * u.s
    # a flare peaking inside the group: the six integrations see the rise and the decay
    curve = Flare(peak_mjd=t_mid.mjd, rise_s=25.0, decay_s=20.0, amplitude=1.5)
    var = VariableSource("V1", ra, dec, 2.0, curve)
    kw = dict(subbands=[4], n_channels=4, n_times=N_TIMES, antennas=SMALL_ANTENNAS[:6],
              corruptions=Corruptions.none(), jitter_s=0, fixed_beam=True)
    varied = simulate_group(tmp_path / "var", START, sources=[], variables=VariableOptions((var,)), **kw)
    steady = simulate_group(tmp_path / "const", START, sources=[var.source()], **kw)
    ratio = (_cross_amplitudes(varied.paths[0]) / _cross_amplitudes(steady.paths[0])).reshape(N_TIMES, -1)

    truth = varied.truth()["variables"]
    (rec,) = truth["sources"]
    factor = np.asarray(rec["factor"])
    assert np.ptp(factor) > 0.5  # the curve really varies inside the group
    assert factor == pytest.approx(curve.factor(np.asarray(truth["times_mjd"])))
    assert np.asarray(rec["injected_flux_jy"]) == pytest.approx(2.0 * factor)
    assert np.abs(ratio - factor[:, None]).max() < 1e-3
    assert truth["times_mjd"] == pytest.approx(np.asarray(varied.truth()["times_jd"]) - 2400000.5)
    assert rec["injected_flux_jy_mid"] == pytest.approx(2.0 * curve.factor(np.array([truth["mid_mjd"]]))[0])
    assert rec["curve"] == {"kind": "flare", "peak_mjd": curve.peak_mjd, "rise_s": 25.0, "decay_s": 20.0,
                            "amplitude": 1.5}
    # the sky lists the variable at its quiescent flux, marked as one
    assert [(s["name"], s["flux_jy"], s["kind"]) for s in varied.truth()["sky"]] == [("V1", 2.0, "variable")]
    assert "variables" not in steady.truth()  # off: the sidecar is as before


def test_constant_variable_equals_plain_source_and_is_added_to_the_field(tmp_path):
    """A Constant curve leaves the visibilities as a plain source's; variables join the random field."""
    ra = _mid_lst_deg() - 0.3
    src = Source("C1", ra, DEC0 + 0.5, 1.0, -0.7)
    var = VariableSource("C1", ra, DEC0 + 0.5, 1.0, Constant(), spectral_index=-0.7)
    kw = dict(subbands=[9], n_channels=4, n_times=4, antennas=SMALL_ANTENNAS[:5],
              corruptions=Corruptions.none(), jitter_s=0)
    a = simulate_group(tmp_path / "a", START, sources=[src], **kw)
    b = simulate_group(tmp_path / "b", START, sources=[], variables=VariableOptions((var,)), **kw)
    assert np.array_equal(_cross_amplitudes(a.paths[0]), _cross_amplitudes(b.paths[0]))

    night = night_variables(Time(START).mjd, Time(START).mjd + 30 / 1440, ra_deg=ra, dec_deg=DEC0)
    with_field = simulate_group(tmp_path / "f", START, variables=night, **kw)
    names = [s["name"] for s in with_field.truth()["sky"]]
    assert any(n.startswith("SIM") and not n.startswith("SIMVAR") for n in names)  # the random field is there
    assert names[-5:] == [v.name for v in night.sources]
    assert [r["curve"]["kind"] for r in with_field.truth()["variables"]["sources"]] == \
        ["flare", "ese_dip", "drift", "constant", "constant"]


def test_night_variables_vary_inside_the_night():
    start = 61000.0
    end = start + 24 * 78 / 86400
    night = night_variables(start, end, ra_deg=128.7, dec_deg=DEC0)
    mids = start + (np.arange(24) + 0.5) * 78 / 86400
    by_name = {v.name: v.factor(mids) for v in night.sources}
    assert by_name["SIMVAR_FLARE"].max() > 2.5 and by_name["SIMVAR_FLARE"][0] == 1.0
    assert by_name["SIMVAR_DIP"].min() < 0.5 and by_name["SIMVAR_DIP"][[0, -1]].min() > 0.9
    assert by_name["SIMVAR_DRIFT"][-1] - by_name["SIMVAR_DRIFT"][0] > 0.7
    assert np.all(by_name["SIMVAR_CONST1"] == 1.0)
    # all within 1 deg of the pointing track and away from J0834+5534 (128.73, +55.57)
    for v in night.sources:
        assert -0.9 < v.dec_deg - DEC0 < 0 and abs(v.ra_deg - 128.7) * np.cos(np.radians(DEC0)) < 0.5
    with pytest.raises(ValueError, match="after"):
        night_variables(end, start, ra_deg=0.0, dec_deg=0.0)


def test_image_truth_follows_the_light_curve(tmp_path):
    """The QA truth table's expected flux of a variable is S PB weighted by its light curve per integration."""
    import math

    from contimg.calibration.model import MsGeometry
    from contimg.imaging.primary_beam import source_apparent_flux
    from contimg.qa.truth_sky import _light_curves

    t_mid = Time(START) + N_TIMES / 2 * instrument.INTEGRATION_TIME_S * u.s
    var = VariableSource("V1", _mid_lst_deg() - 0.3, DEC0 + 0.5, 1.0,
                         Flare(peak_mjd=t_mid.mjd, rise_s=25.0, decay_s=20.0, amplitude=1.5))
    group = simulate_group(tmp_path, START, subbands=[4], n_channels=2, n_times=N_TIMES, antennas=SMALL_ANTENNAS[:3],
                           sources=[Source("C1", _mid_lst_deg(), DEC0, 1.0)], variables=VariableOptions((var,)),
                           corruptions=Corruptions.none(), jitter_s=0)
    truth = group.truth()
    sources = [Source(s["name"], s["ra_deg"], s["dec_deg"], s["flux_jy"]) for s in truth["sky"]]
    times_mjd = np.asarray(truth["times_jd"]) - 2400000.5
    factor = _light_curves(truth, sources, times_mjd)
    assert factor[:, 0] == pytest.approx(np.ones(N_TIMES))  # the constant source
    assert factor[:, 1] == pytest.approx(truth["variables"]["sources"][0]["factor"])
    assert _light_curves({k: v for k, v in truth.items() if k != "variables"}, sources, times_mjd) is None
    geometry = MsGeometry(times_mjd * 86400.0, np.array([[1.4e9]]), np.radians([[_mid_lst_deg(), DEC0]]),
                          math.radians(DEC0), 2, (9, 12))
    steady = source_apparent_flux(sources, geometry, np.ones((N_TIMES, 1)), np.array([1.4e9]))
    varied = source_apparent_flux(sources, geometry, np.ones((N_TIMES, 1)), np.array([1.4e9]), flux_factor=factor)
    assert varied[0] == steady[0] and varied[1] > 1.2 * steady[1]  # the flare brightens the group's mean
