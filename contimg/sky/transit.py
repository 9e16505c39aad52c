"""Transit times, hour angles, altitudes and time in the beam for a drift scan.

A source transits when the local apparent sidereal time equals its apparent
right ascension of date (``LST = RA``). The catalog RA is J2000, so it is first
carried to the true equator and equinox of date (astropy ``TETE``, topocentric at
:data:`contimg.instrument.SITE`); using the J2000 RA directly, as the old pipeline
did, puts the transit ~2 minutes (about 9 integrations) late for 0834+555 in
2026, because of precession since 2000.

The telescope does not track: its beam centre stays at hour angle 0 and the
pointing declination, so the angular offset of a source from the beam centre at
hour angle H is ``cos(theta) = sin(d) sin(d0) + cos(d) cos(d0) cos(H)``.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import TETE, AltAz, Angle, SkyCoord
from astropy.time import Time, TimeDelta

from contimg.earth_orientation import use_cached_table
from contimg.instrument import SITE
from contimg.sky.beam import SELECTION_FREQ_HZ, half_power_width_rad
from contimg.sky.units import as_angle, as_time, day_start

#: Sidereal days per solar day (the ratio used by the old pipeline's transit code).
SIDEREAL_PER_SOLAR = 1.002737909350795
#: Length of a sidereal day in SI seconds.
SIDEREAL_DAY_S = 86400.0 / SIDEREAL_PER_SOLAR
#: Earth rotation rate relative to the stars, rad/s.
EARTH_ROTATION_RAD_S = 2.0 * np.pi / SIDEREAL_DAY_S


def apparent_radec(coord: SkyCoord, time: Time, *, location=SITE) -> tuple[np.ndarray, np.ndarray]:
    """Apparent (true equator and equinox of date, topocentric) RA and Dec, radians.

    ``coord`` and ``time`` broadcast against each other.
    """
    use_cached_table()
    app = coord.transform_to(TETE(obstime=time, location=location))
    return app.ra.to_value(u.rad), app.dec.to_value(u.rad)


def hour_angle(coord: SkyCoord, time, *, location=SITE) -> Angle:
    """Hour angle, apparent sidereal time minus apparent RA, wrapped to [-180, 180) deg."""
    time = as_time(time)
    ra_app, _ = apparent_radec(coord, time, location=location)
    last = time.sidereal_time("apparent", longitude=location.lon).to_value(u.rad)
    return Angle((last - ra_app) * u.rad).wrap_at(180 * u.deg)


def next_transit(coord: SkyCoord, after, *, location=SITE, tol_s: float = 1e-3, max_iter: int = 10) -> Time:
    """First upper transit (hour angle 0) at or after ``after``.

    Parameters
    ----------
    coord : astropy.coordinates.SkyCoord
        Source position(s); scalar or 1-d.
    after : astropy.time.Time or str
        Search start (UTC).
    location : astropy.coordinates.EarthLocation
        Observatory (default the DSA-110 site).
    tol_s : float
        Convergence tolerance, seconds.
    max_iter : int
        Iteration limit (converges in 2-3).

    Returns
    -------
    astropy.time.Time
        Transit time(s), UTC, same shape as ``coord``.
    """
    t0 = as_time(after, "after")
    shape = coord.shape
    flat = coord.reshape(-1) if shape else coord.reshape((1,))
    start = t0 + TimeDelta(np.zeros(len(flat)), format="sec")
    ha0 = hour_angle(flat, start, location=location).to_value(u.deg)
    # time until HA reaches 0 (modulo one sidereal day), then Newton-like refinement
    t = start + TimeDelta(((-ha0) % 360.0) / 360.0 * SIDEREAL_DAY_S, format="sec")
    for _ in range(max_iter):
        ha = hour_angle(flat, t, location=location).to_value(u.deg)
        step = -ha / 360.0 * SIDEREAL_DAY_S
        t = t + TimeDelta(step, format="sec")
        early = (t - start).sec < -tol_s
        if np.any(early):  # converged onto the transit just before ``after``
            t = t + TimeDelta(np.where(early, SIDEREAL_DAY_S, 0.0), format="sec")
            continue
        if np.max(np.abs(step)) < tol_s:
            break
    return t.reshape(shape) if shape else t[0]


def transit_time(coord: SkyCoord, date, *, location=SITE) -> Time:
    """First transit on the UTC day of ``date`` (a sidereal day is shorter, so a
    source transiting just after 00:00 UTC transits again just before 24:00).

    Parameters
    ----------
    coord : astropy.coordinates.SkyCoord
        Source position(s).
    date : astropy.time.Time, str or datetime.date
        Any time on the day; only the UTC date is used.
    """
    return next_transit(coord, day_start(date), location=location)


def transits_between(coord: SkyCoord, start, end, *, location=SITE) -> list[Time]:
    """Every transit of one source in [start, end)."""
    t_end = as_time(end, "end")
    out = []
    t = next_transit(coord, start, location=location)
    while t < t_end:
        out.append(t)
        t = next_transit(coord, t + TimeDelta(SIDEREAL_DAY_S / 2, format="sec"), location=location)
    return out


def altitude(coord: SkyCoord, time, *, location=SITE) -> Angle:
    """Geometric altitude (no refraction) of ``coord`` at ``time``."""
    use_cached_table()
    frame = AltAz(obstime=as_time(time), location=location)
    return Angle(coord.transform_to(frame).alt)


def altitude_at_transit(coord: SkyCoord, date, *, location=SITE) -> Angle:
    """Altitude at the first transit on the UTC day of ``date``."""
    return altitude(coord, transit_time(coord, date, location=location), location=location)


def offset_from_meridian_pointing(ha_rad, dec_rad, pointing_dec_rad) -> np.ndarray:
    """Angular distance, radians, of (HA, Dec) from the beam centre at (HA=0, Dec0)."""
    cos_t = np.sin(dec_rad) * np.sin(pointing_dec_rad) + np.cos(dec_rad) * np.cos(pointing_dec_rad) * np.cos(ha_rad)
    return np.arccos(np.clip(cos_t, -1.0, 1.0))


def time_in_half_power_beam(dec, pointing_dec, *, freq=SELECTION_FREQ_HZ * u.Hz, dish_diameter_m: float | None = None) -> u.Quantity:
    """Time a source at ``dec`` spends inside the half-power beam of a meridian pointing.

    Parameters
    ----------
    dec, pointing_dec : astropy.units.Quantity
        Source and pointing declinations (same frame).
    freq : astropy.units.Quantity
        Frequency for the beam width (default 1.4 GHz).
    dish_diameter_m : float, optional
        Default: the DSA-110 dish.

    Returns
    -------
    astropy.units.Quantity
        Duration (minutes); 0 if the source never enters the half-power circle.
        About 18.8 min for a source at the pointing Dec 54.6 deg (HPBW 2.72 deg;
        the seed's 12.6 min omitted the 1/cos(Dec) of the drift rate).
    """
    from contimg.instrument import DISH_DIAMETER_M

    d = as_angle(dec, "dec").to_value(u.rad)
    d0 = as_angle(pointing_dec, "pointing_dec").to_value(u.rad)
    radius = 0.5 * half_power_width_rad(
        u.Quantity(freq).to_value(u.Hz), dish_diameter_m=dish_diameter_m or DISH_DIAMETER_M
    )
    cos_h = (np.cos(radius) - np.sin(d) * np.sin(d0)) / (np.cos(d) * np.cos(d0))
    h_max = np.arccos(np.clip(cos_h, -1.0, 1.0))
    h_max = np.where(cos_h > 1.0, 0.0, h_max)
    return (2.0 * h_max / EARTH_ROTATION_RAD_S * u.s).to(u.min)
