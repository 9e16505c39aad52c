"""Primary beam width, transit times, altitude and time in beam against independent truth."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import AltAz, HADec, SkyCoord
from astropy.time import Time

from contimg.instrument import DISH_DIAMETER_M, SITE
from contimg.sky.beam import airy_power, half_power_width, half_power_width_rad, primary_beam_response
from contimg.sky.transit import (
    altitude_at_transit,
    hour_angle,
    next_transit,
    time_in_half_power_beam,
    transit_time,
    transits_between,
)
from contimg.sky.units import as_angle

C = 299_792_458.0
# sources spread in RA and Dec, including the production calibrator and one far south
SOURCES = SkyCoord([128.7287, 202.7845, 24.4220, 85.6505, 300.0, 359.9] * u.deg,
                   [55.5725, 30.5092, 33.1597, 49.8520, -30.0, 54.6] * u.deg)


@pytest.mark.parametrize("freq_hz", [1.311e9, 1.4e9, 1.405e9, 1.499e9])
def test_half_power_width_is_1p02_lambda_over_d_within_1_percent(freq_hz):
    lam_over_d = C / freq_hz / DISH_DIAMETER_M
    width = half_power_width_rad(freq_hz)
    assert abs(width / (1.02 * lam_over_d) - 1) < 0.01
    # exact Airy: (2 J1(x)/x)^2 = 1/2 at x = 1.6163399561 (tabulated), x = pi D sin(theta) / lambda
    exact = 2 * np.arcsin(1.6163399561 / np.pi * lam_over_d)
    assert width == pytest.approx(exact, rel=1e-6)
    assert width / lam_over_d == pytest.approx(1.029, abs=0.001)  # 1.029 lambda/D, 0.9% above 1.02


def test_beam_at_1p4_ghz_matches_domain_numbers():
    assert half_power_width(1.4 * u.GHz).deg == pytest.approx(2.72, abs=0.01)  # DOMAIN.md 4.4
    assert primary_beam_response(1.0 * u.deg, freq=1.405 * u.GHz) == pytest.approx(0.69, abs=0.01)
    assert airy_power(0.0, 1.4e9) == 1.0
    # the response falls monotonically out to the first null
    theta = np.linspace(0, np.radians(3.0), 200)
    assert np.all(np.diff(airy_power(theta, 1.4e9)) < 0)


def _astropy_ha_seconds(coord, time):
    """Hour angle from astropy's HADec frame (CIRS/ERA path), in seconds of time."""
    ha = coord.transform_to(HADec(obstime=time, location=SITE)).ha.wrap_at(180 * u.deg)
    return ha.to_value(u.hourangle) * 3600.0


def test_transit_is_when_astropy_hour_angle_is_zero_to_1s():
    t = transit_time(SOURCES, "2026-11-25")
    ha_s = _astropy_ha_seconds(SOURCES, t)
    assert np.all(np.abs(ha_s) < 1.0 / 1.0027), ha_s  # 1 s of time ~ 1.0027 s of hour angle
    day = Time("2026-11-25T00:00:00", scale="utc")
    assert np.all((t - day).sec >= 0) and np.all((t - day).sec < 86400)
    # and the HA is really crossing zero there (negative before, positive after)
    assert np.all(_astropy_ha_seconds(SOURCES, t - 30 * u.s) < 0)
    assert np.all(_astropy_ha_seconds(SOURCES, t + 30 * u.s) > 0)


def test_catalog_ra_equal_to_lst_is_not_the_transit():
    """The old pipeline's J2000 RA = LST puts 0834+555 ~2 min late in 2026 (precession)."""
    c = SOURCES[0]
    t = transit_time(c, "2026-11-25")
    naive = (t.sidereal_time("apparent", SITE.lon) - c.ra).wrap_at(180 * u.deg)
    assert abs(naive.to_value(u.hourangle) * 3600) > 100


def test_next_transit_and_transits_between():
    c = SOURCES[0]
    first = transit_time(c, "2026-11-25")
    again = next_transit(c, first + 1 * u.s)
    assert (again - first).sec == pytest.approx(86164.09, abs=0.5)  # one sidereal day
    assert abs((next_transit(c, first) - first).sec) < 1e-2
    before = next_transit(c, first - 10 * u.s)
    assert abs((before - first).sec) < 1e-2
    ts = transits_between(c, "2026-11-25", "2026-11-28")
    assert len(ts) == 3 and abs((ts[0] - first).sec) < 1e-2
    assert abs(hour_angle(c, first).to_value(u.arcsec)) < 1.0


def test_altitude_at_transit_is_90_minus_lat_minus_dec():
    t = transit_time(SOURCES, "2026-11-25")
    app = SOURCES.transform_to(HADec(obstime=t, location=SITE))
    expected = 90.0 - np.abs(SITE.lat.deg - app.dec.deg)
    alt = altitude_at_transit(SOURCES, "2026-11-25")
    np.testing.assert_allclose(alt.deg, expected, atol=2e-3)
    # and it is the maximum altitude (an independent AltAz evaluation either side)
    for dt in (-600, 600):
        side = SOURCES.transform_to(AltAz(obstime=t + dt * u.s, location=SITE)).alt.deg
        assert np.all(side < alt.deg)


def test_time_in_half_power_beam_by_brute_force():
    dec0 = 54.6 * u.deg
    for dec in (54.6, 55.5725, 53.5) * u.deg:
        # sample the source track every 0.5 s and count samples above half power
        ha = np.radians(np.arange(-10, 10, 0.5 / 240.0 * 1.0027379))  # 0.5 s of time steps
        src = SkyCoord(ha * u.rad, np.full(ha.size, dec.value) * u.deg)
        sep = src.separation(SkyCoord(0 * u.rad, dec0))
        inside = airy_power(sep.to_value(u.rad), 1.4e9) >= 0.5
        assert time_in_half_power_beam(dec, dec0).to_value(u.s) == pytest.approx(inside.sum() * 0.5, abs=1.0)
    assert time_in_half_power_beam(58 * u.deg, dec0) == 0 * u.min
    # at the pointing Dec: HPBW / (15 deg/h cos Dec), ~18.7 min (not the seed's 12.6 min)
    assert time_in_half_power_beam(dec0, dec0).to_value(u.min) == pytest.approx(18.7, abs=0.1)


def test_bare_numbers_are_refused_for_angles():
    from contimg.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="no unit"):
        as_angle(54.6, "dec")
    with pytest.raises(InvalidInputError, match="angle"):
        as_angle(3 * u.s, "dec")
