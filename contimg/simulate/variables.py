"""Variable sources for the simulator: point sources whose flux follows a light curve.

A variable source has ``S(t, nu) = S0 (nu / nu0)^alpha f(t)``: its spectrum is
fixed and the light curve ``f(t)`` (dimensionless, ``f = 1`` when quiescent)
multiplies it at each integration's mid time (:func:`contimg.simulate.simulate_group`
scales the source's ``S PB`` per integration; phases and the beam drift are as
for any source). Light curves, times in MJD (UTC) and durations in seconds:

* :class:`Flare`: quiescent, then a linear rise over ``rise_s`` to
  ``1 + amplitude`` at ``peak_mjd``, then an exponential decay with e-folding
  time ``decay_s`` (fast rise, exponential decay);
* :class:`ScatteringDip`: an extreme scattering event seen as a smooth symmetric
  dip, ``f = 1 - depth exp(-(t - t0)^2 / (2 sigma^2))`` with
  ``sigma = fwhm_s / 2.3548`` (the Gaussian form; the caustic shoulders of the
  classic "U" are not modelled);
* :class:`Drift`: a slow linear drift ``f = 1 + slope (t - t0)`` (``slope_per_hour``),
  clipped at 0;
* :class:`Constant`: ``f = 1``, for control sources with a truth record.

:func:`night_variables` places one of each (flare, dip, drift) and two constant
controls so that a night of consecutive groups sees them: they transit close to
the night's middle, 0.3-0.8 deg south of the pointing (J0834+5534, the demo's
calibrator, is 1 deg north), and their time scales are fractions of the part of
the night they spend in the main beam (at most 30 minutes: a source at fixed RA
drifts through the ~2.7 deg primary beam FWHM at Dec 55 in about 20 minutes).

Nothing here runs unless :class:`VariableOptions` is passed to
``simulate_group(variables=...)``: the default simulation is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from contimg.sky.source import REFERENCE_FREQ_HZ, Source

_DAY_S = 86400.0
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Flare:
    """Fast rise, exponential decay.

    Attributes
    ----------
    peak_mjd : float
        Time of the peak, MJD (UTC).
    rise_s : float
        Linear rise from quiescence to the peak, seconds (> 0).
    decay_s : float
        e-folding time of the decay after the peak, seconds (> 0).
    amplitude : float
        Peak excess over quiescence, in units of the quiescent flux (``f = 1 + amplitude`` at the peak).
    """

    peak_mjd: float
    rise_s: float
    decay_s: float
    amplitude: float
    kind: str = field(default="flare", init=False)

    def factor(self, mjd) -> np.ndarray:
        dt_s = (np.asarray(mjd, dtype=float) - self.peak_mjd) * _DAY_S
        rise = np.clip(1.0 + dt_s / self.rise_s, 0.0, 1.0)
        decay = np.exp(-np.maximum(dt_s, 0.0) / self.decay_s)
        return 1.0 + self.amplitude * np.where(dt_s <= 0.0, rise, decay)


@dataclass(frozen=True)
class ScatteringDip:
    """Extreme scattering event: a Gaussian dip.

    Attributes
    ----------
    centre_mjd : float
        Time of the deepest point, MJD (UTC).
    fwhm_s : float
        Full width at half depth, seconds.
    depth : float
        Fractional depth, 0..1 (``f = 1 - depth`` at the centre).
    """

    centre_mjd: float
    fwhm_s: float
    depth: float
    kind: str = field(default="ese_dip", init=False)

    def factor(self, mjd) -> np.ndarray:
        dt_s = (np.asarray(mjd, dtype=float) - self.centre_mjd) * _DAY_S
        sigma = self.fwhm_s / _FWHM_PER_SIGMA
        return 1.0 - self.depth * np.exp(-0.5 * (dt_s / sigma) ** 2)


@dataclass(frozen=True)
class Drift:
    """Slow linear drift, clipped at zero flux.

    Attributes
    ----------
    ref_mjd : float
        Time at which ``f = 1``, MJD (UTC).
    slope_per_hour : float
        Fractional change per hour.
    """

    ref_mjd: float
    slope_per_hour: float
    kind: str = field(default="drift", init=False)

    def factor(self, mjd) -> np.ndarray:
        dt_h = (np.asarray(mjd, dtype=float) - self.ref_mjd) * 24.0
        return np.maximum(1.0 + self.slope_per_hour * dt_h, 0.0)


@dataclass(frozen=True)
class Constant:
    """No variability (``f = 1``): a control source with a truth record."""

    kind: str = field(default="constant", init=False)

    def factor(self, mjd) -> np.ndarray:
        return np.ones_like(np.asarray(mjd, dtype=float))


@dataclass(frozen=True)
class VariableSource:
    """A point source with a light curve.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float
        ICRS position, degrees.
    flux_jy : float
        Quiescent Stokes I flux density at ``ref_freq_hz``, Jy.
    curve : Flare, ScatteringDip, Drift or Constant
    spectral_index : float
    ref_freq_hz : float
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    curve: Flare | ScatteringDip | Drift | Constant
    spectral_index: float = 0.0
    ref_freq_hz: float = REFERENCE_FREQ_HZ

    def source(self) -> Source:
        """The quiescent source (kind ``variable``) that the simulator scales by :meth:`factor`."""
        return Source(self.name, self.ra_deg, self.dec_deg, self.flux_jy, self.spectral_index,
                      self.ref_freq_hz, "variable")

    def factor(self, mjd) -> np.ndarray:
        """Light curve ``f(t)`` at ``mjd`` (UTC), dimensionless."""
        return np.asarray(self.curve.factor(mjd), dtype=float)

    def flux_jy_at(self, mjd) -> np.ndarray:
        """Flux density at ``ref_freq_hz`` at ``mjd`` (UTC), Jy."""
        return self.flux_jy * self.factor(mjd)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "curve"}
        out["curve"] = {"kind": self.curve.kind, **{k: v for k, v in asdict(self.curve).items() if k != "kind"}}
        return out


@dataclass(frozen=True)
class VariableOptions:
    """Variable sources to add to a simulated group (``simulate_group(variables=...)``).

    They are added to whatever sky the group has (calibrators and field, or an
    explicit ``sources`` list), never removed by the apparent-flux cut.

    Attributes
    ----------
    sources : tuple of VariableSource
    """

    sources: tuple[VariableSource, ...] = ()

    def to_dict(self) -> dict:
        return {"sources": [v.to_dict() for v in self.sources]}


def truth_record(variables: VariableOptions, times_jd: np.ndarray) -> dict:
    """The ``variables`` entry of the truth sidecar of one group.

    Parameters
    ----------
    variables : VariableOptions
    times_jd : numpy.ndarray
        Integration mid times of the group, JD (UTC).

    Returns
    -------
    dict
        ``mid_mjd`` (halfway between the first and last integration mid times),
        ``times_mjd`` and per source its parameters (``flux_jy``: quiescent),
        plus ``factor`` and ``injected_flux_jy`` (at ``ref_freq_hz``) at every
        integration and ``factor_mid``/``injected_flux_jy_mid`` at ``mid_mjd``.
    """
    mjd = np.asarray(times_jd, dtype=float) - 2400000.5
    mid = float((mjd[0] + mjd[-1]) / 2.0)
    rows = []
    for v in variables.sources:
        f = v.factor(mjd)
        f_mid = float(v.factor(np.array([mid]))[0])
        rows.append({**v.to_dict(), "factor": f, "injected_flux_jy": v.flux_jy * f,
                     "factor_mid": f_mid, "injected_flux_jy_mid": v.flux_jy * f_mid})
    return {
        "mid_mjd": mid,
        "times_mjd": mjd,
        "sources": rows,
        "definition": "S(t, nu) = flux_jy (nu / ref_freq_hz)^spectral_index factor(t) (flux_jy: quiescent); "
                      "factor and injected_flux_jy (at ref_freq_hz) at each integration mid time (times_mjd, "
                      "UTC), factor_mid and injected_flux_jy_mid at mid_mjd; the simulator multiplies the source's S PB by factor per "
                      "integration (curves: contimg/simulate/variables.py)",
    }


def night_variables(start_mjd: float, end_mjd: float, *, ra_deg: float, dec_deg: float,
                    flux_jy: float = 1.0) -> VariableOptions:
    """A flare, an extreme scattering event dip, a drift and two constant controls for a night.

    Parameters
    ----------
    start_mjd, end_mjd : float
        The night's first group start and last group end, MJD (UTC).
    ra_deg : float
        RA on the meridian at the night's middle, degrees (ICRS): the sources
        transit within a few minutes of it.
    dec_deg : float
        Pointing declination, degrees.
    flux_jy : float
        Quiescent flux of each source, Jy. The default, 1 Jy, is ~130 sigma of a
        small group's thermal image noise at the beam centre (7.8 mJy/beam, the
        imager's prediction) and ~25 sigma where the primary beam falls to 0.2
        (the image's edge, reached near the ends of a 30-minute night); on a
        synthetic night with 32 mJy/beam of image noise (what a CLEANed small
        group of the demo field showed), 0.5 Jy left the drift undetected in 10
        nights out of 10 and the dip in 2 (tests/test_variability.py).

    Returns
    -------
    VariableOptions
        Names ``SIMVAR_FLARE``, ``SIMVAR_DIP``, ``SIMVAR_DRIFT``, ``SIMVAR_CONST1``, ``SIMVAR_CONST2``.

    Notes
    -----
    Times are fractions of the *visible window*: the middle
    ``min(end - start, 30 min)`` of the night, the part during which sources
    transiting at its middle stay in the main beam. In it (w = its length):
    flare peak at 0.3 w (rise 0.03 w, decay e-folding 0.15 w, amplitude 2);
    dip centre at 0.65 w (FWHM 0.2 w, depth 0.6); drift from 0.6 to 1.4 of
    the quiescent flux across w. Positions: 0.3-0.8 deg south of the pointing,
    within 0.5 deg of RA of each other, so none is near J0834+5534 (1 deg north
    of the demo pointing).
    """
    if not end_mjd > start_mjd:
        raise ValueError(f"end_mjd {end_mjd!r} must be after start_mjd {start_mjd!r}")
    mid = (start_mjd + end_mjd) / 2.0
    w_days = min(end_mjd - start_mjd, 30.0 / 1440.0)
    w_s = w_days * _DAY_S
    t0 = mid - w_days / 2.0
    cos_dec = max(math.cos(math.radians(dec_deg)), 1e-3)

    def at(d_ra_deg: float, d_dec_deg: float) -> tuple[float, float]:
        return (ra_deg + d_ra_deg / cos_dec) % 360.0, dec_deg + d_dec_deg

    return VariableOptions((
        VariableSource("SIMVAR_FLARE", *at(0.25, -0.5), flux_jy,
                       Flare(peak_mjd=t0 + 0.3 * w_days, rise_s=0.03 * w_s, decay_s=0.15 * w_s, amplitude=2.0)),
        VariableSource("SIMVAR_DIP", *at(-0.25, -0.3), flux_jy,
                       ScatteringDip(centre_mjd=t0 + 0.65 * w_days, fwhm_s=0.2 * w_s, depth=0.6)),
        VariableSource("SIMVAR_DRIFT", *at(0.0, -0.8), flux_jy,
                       Drift(ref_mjd=mid, slope_per_hour=0.8 / (w_days * 24.0))),
        VariableSource("SIMVAR_CONST1", *at(0.4, -0.7), flux_jy, Constant()),
        VariableSource("SIMVAR_CONST2", *at(-0.4, -0.6), flux_jy, Constant()),
    ))
