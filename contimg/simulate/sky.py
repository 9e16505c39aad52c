"""The simulated sky: calibrators from the shipped list plus a random field population.

Field population: sources are drawn per 1-degree RA tile of a declination strip
around the pointing, each tile from its own seed ``(seed, tile)``, so consecutive
groups of one run see the same sky as it drifts through the beam. Counts are
Euclidean, ``N(>S) = density (S / S_min)^-1.5`` between ``flux_min_jy`` and
``flux_max_jy`` (default 16 per square degree above 5 mJy, close to NVSS at
1.4 GHz); spectral indices are normal around -0.7. All fluxes are at 1.4 GHz and
positions ICRS.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

REFERENCE_FREQ_HZ = 1.4e9


@dataclass(frozen=True)
class Source:
    """A point source.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float
        ICRS position, degrees.
    flux_jy : float
        Stokes I flux density at ``ref_freq_hz``, Jy (XX = YY = I).
    spectral_index : float
        alpha in S ~ nu**alpha.
    ref_freq_hz : float
    kind : str
        ``calibrator`` or ``field``.
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = 0.0
    ref_freq_hz: float = REFERENCE_FREQ_HZ
    kind: str = "field"

    def flux_at(self, freq_hz) -> np.ndarray:
        """Flux density at ``freq_hz`` (Hz), Jy."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / self.ref_freq_hz) ** self.spectral_index

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FieldOptions:
    """Random field population (see module docstring).

    Attributes
    ----------
    density_per_deg2 : float
        Sources per square degree brighter than ``flux_min_jy``.
    flux_min_jy, flux_max_jy : float
        Flux range at 1.4 GHz, Jy.
    count_slope : float
        Slope of the integral counts, N(>S) ~ S**-count_slope (1.5 = Euclidean).
    radius_deg : float
        Sources are kept within this distance of the meridian track of the
        pointing during the group (3.5 deg: the first null of the Airy beam at
        the bottom of the band).
    alpha_mean, alpha_std : float
        Spectral index distribution.
    """

    density_per_deg2: float = 16.0
    flux_min_jy: float = 0.005
    flux_max_jy: float = 1.0
    count_slope: float = 1.5
    radius_deg: float = 3.5
    alpha_mean: float = -0.7
    alpha_std: float = 0.2


_TILE_DEG = 1.0


def draw_fluxes(rng: np.random.Generator, n: int, *, flux_min_jy: float, flux_max_jy: float,
                count_slope: float = 1.5) -> np.ndarray:
    """Fluxes (Jy) from N(>S) ~ S^-slope truncated to [min, max] (inverse-CDF sampling)."""
    q = 1.0 - (flux_min_jy / flux_max_jy) ** count_slope
    return flux_min_jy * (1.0 - rng.random(n) * q) ** (-1.0 / count_slope)


def _tile_sources(seed: int, tile: int, dec_lo: float, dec_hi: float, opts: FieldOptions) -> list[Source]:
    rng = np.random.default_rng([seed, 7919, tile % 360, int(round(dec_lo * 1000)) + 100_000])
    ra0 = (tile % 360) * _TILE_DEG
    area = _TILE_DEG * math.degrees(math.sin(math.radians(dec_hi)) - math.sin(math.radians(dec_lo)))
    n = rng.poisson(opts.density_per_deg2 * area)
    ra = ra0 + rng.random(n) * _TILE_DEG
    dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi)), n)))
    flux = draw_fluxes(rng, n, flux_min_jy=opts.flux_min_jy, flux_max_jy=opts.flux_max_jy,
                       count_slope=opts.count_slope)
    alpha = rng.normal(opts.alpha_mean, opts.alpha_std, n)
    return [
        Source(f"SIM{tile % 360:03d}.{k:04d}", float(ra[k]), float(dec[k]), float(flux[k]), float(alpha[k]))
        for k in range(n)
    ]


def _min_separation_from_track_deg(ra_deg, dec_deg, ra_lo_deg, ra_hi_deg, dec0_deg) -> np.ndarray:
    """Smallest angular distance (deg) from each source to the arc Dec=dec0, RA in [lo, hi]."""
    ra = np.asarray(ra_deg, dtype=float)
    dra_lo = (ra - ra_lo_deg + 180.0) % 360.0 - 180.0
    width = ra_hi_deg - ra_lo_deg
    # nearest RA on the track (small-angle approximation is fine for a selection cut)
    nearest = np.clip(dra_lo, 0.0, width) + ra_lo_deg
    d, d0 = np.radians(dec_deg), math.radians(dec0_deg)
    cos_sep = np.sin(d) * math.sin(d0) + np.cos(d) * math.cos(d0) * np.cos(np.radians(ra - nearest))
    return np.degrees(np.arccos(np.clip(cos_sep, -1.0, 1.0)))


def field_population(ra_lo_deg: float, ra_hi_deg: float, pointing_dec_deg: float, *, seed: int,
                     options: FieldOptions = FieldOptions()) -> list[Source]:
    """Field sources within ``options.radius_deg`` of the meridian track RA in [lo, hi].

    Parameters
    ----------
    ra_lo_deg, ra_hi_deg : float
        Apparent sidereal time at the start and end of the group, degrees (the
        RA range swept by the meridian; ``hi`` may exceed 360).
    pointing_dec_deg : float
        Pointing declination, degrees.
    seed : int
        Sky seed; the same seed gives the same sources in every group.
    options : FieldOptions

    Returns
    -------
    list of Source
    """
    r = options.radius_deg
    dec_lo, dec_hi = pointing_dec_deg - r, min(pointing_dec_deg + r, 89.9)
    half_ra = r / max(math.cos(math.radians(max(abs(dec_lo), abs(dec_hi)))), 1e-3)
    t0 = math.floor((ra_lo_deg - half_ra) / _TILE_DEG)
    t1 = math.floor((ra_hi_deg + half_ra) / _TILE_DEG)
    sources: list[Source] = []
    for tile in range(t0, t1 + 1):
        sources.extend(_tile_sources(seed, tile, dec_lo, dec_hi, options))
    if not sources:
        return []
    sep = _min_separation_from_track_deg([s.ra_deg for s in sources], [s.dec_deg for s in sources],
                                         ra_lo_deg, ra_hi_deg, pointing_dec_deg)
    return [s for s, d in zip(sources, sep) if d <= r]


def load_calibrators() -> list[Source]:
    """The shipped calibrator list (:func:`contimg.sky.catalog.load_calibrators`) as sources.

    J0834+5534's 1.4 GHz flux is 5.0 Jy in that list (the repo conflicts: 2.3,
    2.5 or 5.0 Jy; see the catalog's notes). Unknown spectral indices are flat.
    """
    from contimg.sky.catalog import load_calibrators as _load

    return [
        Source(c.name, float(c.ra_deg), float(c.dec_deg), float(c.flux_jy),
               0.0 if c.spectral_index is None else float(c.spectral_index), REFERENCE_FREQ_HZ, "calibrator")
        for c in _load()
    ]


def find_calibrator(name: str) -> Source:
    """The calibrator called ``name`` (name or alternative name, e.g. ``0834+555``)."""
    from contimg.sky.catalog import find_calibrator as _find

    cal = _find(name)
    return next(s for s in load_calibrators() if s.name == cal.name)


def calibrators_near(ra_lo_deg: float, ra_hi_deg: float, pointing_dec_deg: float, *,
                     radius_deg: float) -> list[Source]:
    """Calibrators within ``radius_deg`` of the meridian track during the group."""
    cals = load_calibrators()
    if not cals:
        return []
    sep = _min_separation_from_track_deg([c.ra_deg for c in cals], [c.dec_deg for c in cals],
                                         ra_lo_deg, ra_hi_deg, pointing_dec_deg)
    return [c for c, d in zip(cals, sep) if d <= radius_deg]
