"""Calibrator selection for a drift scan: candidates, scores, transit groups, classification.

* :func:`candidates_near_pointing`: catalog calibrators within a declination band
  of the pointing and above a 1.4 GHz flux cut (defaults from settings: +/-1.5 deg,
  1.0 Jy), without those whose VLA 20 cm C or D configuration letter is X
  (unsuitable) or C (confused): DSA-110's baselines (<= 2.7 km) are like the VLA's
  C and D configurations (DOMAIN.md 4.1).
* :func:`score_calibrators`: for a day, each candidate's transit time, primary-beam
  response at transit (offset from the beam centre = |Dec - Dec0| at transit),
  beam-weighted flux, altitude, minutes inside the half-power beam and the
  5-minute group holding the transit; ranked by quality, then weighted flux.

Quality before flux: :attr:`~contimg.sky.catalog.Calibrator.quality_rank` (the
worse of the C and D letters, P < S < W < unknown) sorts first. A P source has
< 3 % amplitude closure errors at those baselines, S 3-10 %, W more; a point
model of an S or W source biases the flux scale by about that much, more than
the 3 % the calibration aims at, whereas the flux cut already ensures the SNR.
* :func:`transit_group_start` / :func:`predict_calibrator_groups`: which group
  (observed starts, or a regular 24 x 12.885 s grid from an anchor) holds each
  transit peak, and the day's list of calibrator groups.
* :func:`classify_group`: a group is a calibrator group when a candidate transits
  inside its time range with a beam response at transit of at least ``min_pb``;
  the result names the calibrator, the integration (field) of peak response and
  the predicted beam-weighted flux.

The beam is evaluated at 1.4 GHz (the catalog's flux frequency) unless ``freq``
is given. ``pointing_epoch`` (``"apparent"`` or ``"J2000"``) says in which frame
the pointing Dec is given; DOMAIN.md leaves the fringe-stopping epoch uncertain,
and it shifts the offset of 0834+555 by ~0.09 deg (PB 0.74 vs 0.69).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord
from astropy.time import Time, TimeDelta

from contimg.config import load_settings
from contimg.errors import InvalidInputError
from contimg.instrument import INTEGRATION_TIME_S, INTEGRATIONS_PER_FILE, SITE
from contimg.sky.beam import SELECTION_FREQ_HZ, airy_power
from contimg.sky.catalog import Calibrator, resolve_catalog
from contimg.sky.pointing import Pointing, load_pointing
from contimg.sky.transit import (
    SIDEREAL_DAY_S,
    altitude,
    apparent_radec,
    hour_angle,
    next_transit,
    offset_from_meridian_pointing,
    time_in_half_power_beam,
    transit_time,
)
from contimg.sky.units import as_angle, as_time, day_start

#: Length of one group: 24 integrations of 12.884902 s = 309.24 s.
GROUP_CADENCE_S = INTEGRATIONS_PER_FILE * INTEGRATION_TIME_S
#: Minimum primary-beam response at transit for a calibrator group.
DEFAULT_MIN_PB = 0.3
_EPOCHS = ("apparent", "J2000")


def _check_epoch(epoch: str) -> str:
    if epoch not in _EPOCHS:
        raise InvalidInputError(f"pointing_epoch must be one of {_EPOCHS}, got {epoch!r}")
    return epoch


def _coords(cals) -> SkyCoord:
    return SkyCoord([c.ra_deg for c in cals] * u.deg, [c.dec_deg for c in cals] * u.deg, frame="icrs")


def _source_dec_rad(coord: SkyCoord, time: Time, epoch: str, location) -> np.ndarray:
    if epoch == "J2000":
        return np.broadcast_to(coord.dec.to_value(u.rad), np.broadcast(coord.dec.value, time.jd).shape)
    return apparent_radec(coord, time, location=location)[1]


def candidates_near_pointing(dec, *, band_deg: float | None = None, min_flux_jy: float | None = None,
                             catalog=None) -> list[Calibrator]:
    """Usable calibrators within ``band_deg`` of the pointing Dec with S(1.4 GHz) >= ``min_flux_jy``.

    Calibrators whose 20 cm C or D configuration letter is X or C are left out
    (:attr:`~contimg.sky.catalog.Calibrator.unsuitable`); letters that are
    unknown (``?``, or a catalog without them) are not.

    Parameters
    ----------
    dec : astropy.units.Quantity
        Pointing declination.
    band_deg : float, optional
        Half-width of the declination band, degrees (default: setting
        ``calibrator_dec_band_deg``, 1.5).
    min_flux_jy : float, optional
        Flux cut at 1.4 GHz, Jy (default: setting ``calibrator_min_flux_jy``, 1.0).
    catalog : path or list of Calibrator, optional
        Default: the shipped catalog.

    Returns
    -------
    list of Calibrator
        Sorted by quality rank (P, S, W, unknown), then distance in Dec, then
        flux (brightest first).
    """
    d0 = as_angle(dec, "dec").to_value(u.deg)
    settings = load_settings() if band_deg is None or min_flux_jy is None else None
    band = settings.calibrator_dec_band_deg if band_deg is None else float(band_deg)
    fmin = settings.calibrator_min_flux_jy if min_flux_jy is None else float(min_flux_jy)
    cals = [c for c in resolve_catalog(catalog)
            if abs(c.dec_deg - d0) <= band and c.flux_jy >= fmin and not c.unsuitable]
    return sorted(cals, key=lambda c: (c.quality_rank, abs(c.dec_deg - d0), -c.flux_jy))


@dataclass(frozen=True)
class CalibratorScore:
    """How useful one calibrator is on one day.

    Attributes
    ----------
    calibrator : Calibrator
    transit : astropy.time.Time
        Upper transit (UTC).
    offset : astropy.coordinates.Angle
        Distance from the beam centre at transit.
    pb_at_transit : float
        Primary-beam power response at transit.
    weighted_flux : astropy.units.Quantity
        Flux density times ``pb_at_transit`` (Jy).
    altitude : astropy.coordinates.Angle
        Altitude at transit.
    time_in_hpbw : astropy.units.Quantity
        Time inside the half-power beam (min).
    group_start : astropy.time.Time or None
        Start of the group holding the transit (None: falls in a gap between
        observed groups).
    peak_integration : int or None
        Integration (field) index 0..23 of the transit inside that group.
    """

    calibrator: Calibrator
    transit: Time
    offset: Angle
    pb_at_transit: float
    weighted_flux: u.Quantity
    altitude: Angle
    time_in_hpbw: u.Quantity
    group_start: Time | None = None
    peak_integration: int | None = None

    @property
    def field_name(self) -> str | None:
        """Old-pipeline field name of the peak integration, ``<name>_t<idx>``."""
        if self.peak_integration is None:
            return None
        return f"{self.calibrator.name}_t{self.peak_integration}"


def transit_group_start(time, *, group_starts=None, anchor=None, cadence_s: float = GROUP_CADENCE_S) -> Time | None:
    """Start of the group containing ``time``.

    Parameters
    ----------
    time : astropy.time.Time
        A time (e.g. a transit).
    group_starts : astropy.time.Time, optional
        Observed group start times (any order). A group covers
        [start, start + cadence_s); a time in a gap gives None.
    anchor : astropy.time.Time, optional
        When no ``group_starts``: start of one group of a regular grid (default:
        00:00:00 UTC of the day of ``time``).
    cadence_s : float
        Group length, seconds (default 309.24).

    Returns
    -------
    astropy.time.Time or None
    """
    t = as_time(time, "time")
    if group_starts is not None:
        starts = as_time(group_starts, "group_starts")
        starts = starts[np.argsort(starts.jd)] if starts.shape else starts.reshape((1,))
        dt = (t - starts).sec
        inside = np.flatnonzero((dt >= 0) & (dt < cadence_s))
        return starts[inside[-1]] if inside.size else None
    a = day_start(t) if anchor is None else as_time(anchor, "anchor")
    n = np.floor((t - a).sec / cadence_s)
    return a + TimeDelta(n * cadence_s, format="sec")


def _integration_index(time: Time, group_start: Time, integration_time_s: float, n_int: int) -> int:
    idx = int(np.floor((time - group_start).sec / integration_time_s))
    return int(np.clip(idx, 0, n_int - 1))


def score_calibrators(dec, date, *, calibrators=None, catalog=None, band_deg: float | None = None,
                      min_flux_jy: float | None = None, freq=SELECTION_FREQ_HZ * u.Hz,
                      pointing_epoch: str = "apparent", group_starts=None, anchor=None,
                      cadence_s: float = GROUP_CADENCE_S, integration_time_s: float = INTEGRATION_TIME_S,
                      dish_diameter_m: float | None = None, location=SITE) -> list[CalibratorScore]:
    """Score calibrators for a pointing Dec on a UTC day, best first.

    Parameters
    ----------
    dec : astropy.units.Quantity
        Pointing declination.
    date : astropy.time.Time, str or datetime.date
        The UTC day; each calibrator's first transit on that day is used.
    calibrators : list of Calibrator, optional
        Default: :func:`candidates_near_pointing` with ``catalog``, ``band_deg``,
        ``min_flux_jy``.
    freq : astropy.units.Quantity
        Frequency of the beam and flux evaluation (default 1.4 GHz).
    pointing_epoch : {"apparent", "J2000"}
        Frame of ``dec`` (see module docstring).
    group_starts, anchor, cadence_s
        Group boundaries, as in :func:`transit_group_start`.
    integration_time_s : float
        Integration length for the peak-integration index, seconds.
    dish_diameter_m : float, optional
        Default: the DSA-110 dish (4.65 m).
    location : astropy.coordinates.EarthLocation
        Default: the DSA-110 site.

    Returns
    -------
    list of CalibratorScore
        Sorted by quality rank (P, S, W, unknown; see module docstring), then
        beam-weighted flux (highest first), then altitude. Explicit
        ``calibrators`` are scored as given, even unsuitable ones.
    """
    from contimg.instrument import DISH_DIAMETER_M

    _check_epoch(pointing_epoch)
    d0 = as_angle(dec, "dec")
    cals = list(calibrators) if calibrators is not None else candidates_near_pointing(
        d0, band_deg=band_deg, min_flux_jy=min_flux_jy, catalog=catalog)
    if not cals:
        return []
    dish = dish_diameter_m or DISH_DIAMETER_M
    freq_hz = u.Quantity(freq).to_value(u.Hz)
    coords = _coords(cals)
    transits = transit_time(coords, date, location=location)
    scores = [
        _score_one(cal, coords[i], transits[i], d0, freq_hz, pointing_epoch, dish, group_starts,
                   anchor, cadence_s, integration_time_s, location)
        for i, cal in enumerate(cals)
    ]
    return sorted(scores, key=_score_key)


def _score_key(s: CalibratorScore) -> tuple:
    """Best first: quality rank, then beam-weighted flux, then altitude."""
    return (s.calibrator.quality_rank, -s.weighted_flux.to_value(u.Jy), -s.altitude.deg)


def _score_one(cal, coord, transit, d0: Angle, freq_hz, epoch, dish, group_starts, anchor, cadence_s,
               integration_time_s, location) -> CalibratorScore:
    dec_src = float(_source_dec_rad(coord, transit, epoch, location))
    offset = float(offset_from_meridian_pointing(0.0, dec_src, d0.to_value(u.rad)))
    pb = float(airy_power(offset, freq_hz, dish_diameter_m=dish))
    start = transit_group_start(transit, group_starts=group_starts, anchor=anchor, cadence_s=cadence_s)
    n_int = max(1, int(round(cadence_s / integration_time_s)))
    peak = None if start is None else _integration_index(transit, start, integration_time_s, n_int)
    return CalibratorScore(
        calibrator=cal,
        transit=transit,
        offset=Angle(offset * u.rad).to(u.deg),
        pb_at_transit=pb,
        weighted_flux=cal.flux_at(freq_hz) * pb * u.Jy,
        altitude=altitude(coord, transit, location=location).to(u.deg),
        time_in_hpbw=time_in_half_power_beam(dec_src * u.rad, d0, freq=freq_hz * u.Hz, dish_diameter_m=dish),
        group_start=start,
        peak_integration=peak,
    )


def predict_calibrator_groups(dec, date, *, min_pb: float = DEFAULT_MIN_PB, **kwargs) -> list[CalibratorScore]:
    """The groups of a UTC day that should hold a calibrator transit, in time order.

    Every transit on the day (a source may transit twice in one UTC day) of
    every candidate with a beam response at transit >= ``min_pb`` whose transit
    falls inside a group. ``kwargs`` are those of :func:`score_calibrators`.
    """
    scores = score_calibrators(dec, date, **kwargs)
    day_end = day_start(date) + TimeDelta(86400.0, format="sec")
    out = []
    for s in scores:
        if s.pb_at_transit < min_pb:
            continue
        out.append(s)
        second = s.transit + TimeDelta(SIDEREAL_DAY_S, format="sec")
        if second < day_end:
            again = next_transit(s.calibrator.coord, second - TimeDelta(600.0, format="sec"),
                                 location=kwargs.get("location", SITE))
            start = transit_group_start(again, group_starts=kwargs.get("group_starts"),
                                        anchor=kwargs.get("anchor"),
                                        cadence_s=kwargs.get("cadence_s", GROUP_CADENCE_S))
            tint = kwargs.get("integration_time_s", INTEGRATION_TIME_S)
            n_int = max(1, int(round(kwargs.get("cadence_s", GROUP_CADENCE_S) / tint)))
            out.append(dataclasses.replace(
                s, transit=again, group_start=start,
                peak_integration=None if start is None else _integration_index(again, start, tint, n_int)))
    out = [s for s in out if s.group_start is not None]
    return sorted(out, key=lambda s: s.transit.jd)


@dataclass(frozen=True)
class GroupClassification:
    """Whether a group is a calibrator group.

    Attributes
    ----------
    kind : str
        ``"calibrator"`` or ``"target"``.
    start, end : astropy.time.Time
        Time range of the group (edges of the first and last integrations).
    dec : astropy.coordinates.Angle
        Pointing declination.
    calibrator : Calibrator or None
    peak_index : int or None
        Integration (field) index of the peak beam-weighted response.
    transit : astropy.time.Time or None
    pb_at_transit : float or None
    pb_at_peak : float or None
        Beam response at the peak integration's mid-time.
    predicted_flux : astropy.units.Quantity or None
        Flux density times the beam response at the peak integration (Jy).
    """

    kind: str
    start: Time
    end: Time
    dec: Angle
    calibrator: Calibrator | None = None
    peak_index: int | None = None
    transit: Time | None = None
    pb_at_transit: float | None = None
    pb_at_peak: float | None = None
    predicted_flux: u.Quantity | None = None

    @property
    def is_calibrator(self) -> bool:
        return self.kind == "calibrator"

    @property
    def field_name(self) -> str | None:
        """``<name>_t<idx>``, the old pipeline's name for the peak field."""
        if self.calibrator is None or self.peak_index is None:
            return None
        return f"{self.calibrator.name}_t{self.peak_index}"


def _explicit_pointing(start, times, dec, integration_time) -> Pointing:
    if dec is None:
        raise InvalidInputError("classify_group needs a UVH5/MS path, a Pointing, or dec= with start= or times=")
    tint = INTEGRATION_TIME_S * u.s if integration_time is None else u.Quantity(integration_time, u.s)
    if times is not None:
        t = as_time(times, "times")
        t = t.reshape((1,)) if not t.shape else t[np.argsort(t.jd)]
    elif start is not None:
        t0 = as_time(start, "start")
        t = t0 + (np.arange(INTEGRATIONS_PER_FILE) + 0.5) * tint
    else:
        raise InvalidInputError("classify_group needs start= or times= with dec=")
    return Pointing(dec=as_angle(dec, "dec"), times=t, integration_time=tint, epoch="apparent")


def classify_group(source=None, *, start=None, times=None, dec=None, integration_time=None,
                   pointing_epoch: str | None = None, catalog=None, calibrators=None,
                   min_pb: float = DEFAULT_MIN_PB, band_deg: float | None = None,
                   min_flux_jy: float | None = None, freq=SELECTION_FREQ_HZ * u.Hz,
                   dish_diameter_m: float | None = None, location=SITE) -> GroupClassification:
    """Classify one group as a calibrator group or a target group.

    Parameters
    ----------
    source : str, pathlib.Path or Pointing, optional
        One subband UVH5 file or the group's MS (read with
        :func:`~contimg.sky.pointing.load_pointing`), or a Pointing. If omitted,
        give ``dec`` and ``times`` (integration mid-times) or ``start`` (24
        integrations of ``integration_time`` from there).
    start : astropy.time.Time, optional
    times : astropy.time.Time, optional
    dec : astropy.units.Quantity, optional
    integration_time : astropy.units.Quantity, optional
        Default 12.884902 s.
    pointing_epoch : {"apparent", "J2000"}, optional
        Frame of the pointing Dec; default: what the file says (explicit values:
        ``"apparent"``).
    catalog, calibrators, band_deg, min_flux_jy
        Candidate selection, as in :func:`score_calibrators`.
    min_pb : float
        Minimum beam response at transit (default 0.3).
    freq : astropy.units.Quantity
        Beam and flux frequency (default 1.4 GHz).

    Returns
    -------
    GroupClassification
        For several qualifying calibrators, the best quality rank, then the
        largest predicted beam-weighted flux.
    """
    from contimg.instrument import DISH_DIAMETER_M

    if isinstance(source, Pointing):
        pointing = source
    elif source is not None:
        pointing = load_pointing(Path(source))
    else:
        pointing = _explicit_pointing(start, times, dec, integration_time)
    epoch = _check_epoch(pointing_epoch or pointing.epoch)
    dish = dish_diameter_m or DISH_DIAMETER_M
    freq_hz = u.Quantity(freq).to_value(u.Hz)
    g_start, g_end = pointing.start, pointing.end
    d0 = pointing.dec.to_value(u.rad)
    target = GroupClassification(kind="target", start=g_start, end=g_end, dec=pointing.dec)

    cals = list(calibrators) if calibrators is not None else candidates_near_pointing(
        pointing.dec, band_deg=band_deg, min_flux_jy=min_flux_jy, catalog=catalog)
    if not cals:
        return target
    coords = _coords(cals)
    transits = next_transit(coords, pointing.mid - TimeDelta(SIDEREAL_DAY_S / 2, format="sec"), location=location)
    inside = (transits >= g_start) & (transits <= g_end)
    best: GroupClassification | None = None
    for i in np.flatnonzero(inside):
        dec_t = float(_source_dec_rad(coords[i], transits[i], epoch, location))
        pb_t = float(airy_power(offset_from_meridian_pointing(0.0, dec_t, d0), freq_hz, dish_diameter_m=dish))
        if pb_t < min_pb:
            continue
        ha = hour_angle(coords[i], pointing.times, location=location).to_value(u.rad)
        dec_i = _source_dec_rad(coords[i], pointing.times, epoch, location)
        pb = airy_power(offset_from_meridian_pointing(ha, dec_i, d0), freq_hz, dish_diameter_m=dish)
        peak = int(np.argmax(pb))
        flux = cals[i].flux_at(freq_hz) * float(pb[peak]) * u.Jy
        if best is None or (cals[i].quality_rank, -flux.value) < (best.calibrator.quality_rank,
                                                                  -best.predicted_flux.value):
            best = GroupClassification(
                kind="calibrator", start=g_start, end=g_end, dec=pointing.dec, calibrator=cals[i],
                peak_index=peak, transit=transits[i], pb_at_transit=pb_t, pb_at_peak=float(pb[peak]),
                predicted_flux=flux)
    return best or target
