"""The simulated sky: calibrators from the shipped list plus a random field population.

Calibrators: every source of the shipped catalog
(:func:`contimg.sky.catalog.load_calibrators`, the NRAO VLA calibrator list)
within the field radius of the group's meridian track, at its 20 cm flux with
its spectral index (20/6 cm, or the catalog's assumed default), so a simulated
group holds the real calibrators of its strip at their real fluxes (at Dec 54.6:
J0834+5534 8.8 Jy, J0957+5522 2.6 Jy, ...). Their quality letters do not matter
here: a source unsuitable for calibration is still on the sky.

Field population: sources are drawn per 1-degree RA tile of a declination strip
around the pointing, each tile from its own seed ``(seed, tile)``, so consecutive
groups of one run see the same sky as it drifts through the beam. Counts are
Euclidean, ``N(>S) = density (S / S_min)^-1.5`` between ``flux_min_jy`` and
``flux_max_jy`` (default 16 per square degree above 5 mJy, close to NVSS at
1.4 GHz); spectral indices are normal around -0.7. All fluxes are at 1.4 GHz and
positions ICRS.

Apparent-flux cut: the field population is drawn in full (the per-tile random
draws do not depend on any cut), then, per group, field sources whose peak
apparent flux ``max_t S(nu_low) PB(theta_s(t), nu_low)`` is below
``FieldOptions.min_apparent_flux_jy`` are not simulated. ``nu_low`` is the bottom
edge of the DSA-110 band (1311.27 MHz, :data:`APPARENT_FLUX_FREQ_HZ`), where the
Airy beam is widest and, for the usual negative spectral indices, ``S PB`` inside
the main lobe is largest; ``theta_s(t)`` is the source's offset from the meridian
phase centre at the integration mid times of the group. Like ``radius_deg`` (the
first null at the band bottom), the cut ignores first-sidelobe responses at the
top of the band (at most 1.75 % of S). The default, 3 mJy, keeps every field
source that a single 5-minute full-band image shows at about 10 sigma or more
(natural-weighting Stokes I thermal noise 0.29-0.30 mJy for 117-114 antennas,
:func:`contimg.simulate.corruptions.image_noise_jy`) and drops the many fainter
ones, which are what makes a full-size group slow (the sky sum costs the same
for every source). Calibrators are never cut.
``FieldOptions(min_apparent_flux_jy=0)`` simulates the full population. The truth
sidecar records the threshold, the number of dropped sources and their summed
peak apparent flux (``field_population``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from contimg import instrument
from contimg.sky.beam import airy_power
from contimg.sky.source import Source

#: Frequency at which the apparent-flux cut is evaluated: the bottom edge of the
#: DSA-110 band (1311.27 MHz), Hz, whichever subbands a group writes.
APPARENT_FLUX_FREQ_HZ = instrument.BAND_LOW_EDGE_HZ


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
    min_apparent_flux_jy : float
        Field sources whose peak apparent flux in the group, ``max_t S PB`` at
        the bottom of the band (1311.27 MHz, :func:`peak_apparent_flux_jy`), is
        below this value, Jy, are not simulated (calibrators always are).
        Default 0.003 Jy: about 10 sigma of a 5-minute full-band Stokes I image
        (natural weighting, 114-117 antennas: 0.29-0.30 mJy); it keeps ~200 of
        the ~670 sources of a default group and drops ~0.35 Jy of summed peak
        apparent flux spread over ~470 sources (benchmarks/RESULTS.md,
        Simulator). 0 simulates the full population.
    """

    density_per_deg2: float = 16.0
    flux_min_jy: float = 0.005
    flux_max_jy: float = 1.0
    count_slope: float = 1.5
    radius_deg: float = 3.5
    alpha_mean: float = -0.7
    alpha_std: float = 0.2
    min_apparent_flux_jy: float = 0.003

    def __post_init__(self):
        if not self.min_apparent_flux_jy >= 0:
            raise ValueError(f"min_apparent_flux_jy must be >= 0 Jy, got {self.min_apparent_flux_jy!r}")

    def to_dict(self) -> dict:
        return asdict(self)


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


def peak_apparent_flux_jy(sources, offset_rad, *, freq_hz: float = APPARENT_FLUX_FREQ_HZ,
                          dish_diameter_m: float = instrument.DISH_DIAMETER_M) -> np.ndarray:
    """Peak beam-attenuated flux of each source over a group, Jy.

    Parameters
    ----------
    sources : sequence of Source
    offset_rad : numpy.ndarray
        (Ntimes, Nsources) offsets from the beam centre at the integration mid
        times, radians (:attr:`contimg.simulate.visibilities.SourceGeometry.offset_rad`).
    freq_hz : float
        Frequency of the flux and of the Airy beam, Hz (default: the bottom edge
        of the band, 1311.27 MHz).
    dish_diameter_m : float
        Dish diameter, metres.

    Returns
    -------
    numpy.ndarray
        (Nsources,) ``max_t S(freq) PB(offset(t), freq)``, Jy.
    """
    offset = np.asarray(offset_rad, dtype=float)
    if len(sources) == 0:
        return np.zeros(0)
    flux = np.array([float(s.flux_at(freq_hz)) for s in sources])
    pb = airy_power(offset, freq_hz, dish_diameter_m=dish_diameter_m)  # (Ntimes, Nsources)
    return flux * pb.max(axis=0)


def load_calibrators() -> list[Source]:
    """Every calibrator of the shipped catalog as a source, in the catalog's order.

    Fluxes are the catalog's 1.4 GHz (VLA 20 cm) values, with its spectral
    indices (e.g. J0834+5534: 8.8 Jy, alpha = ln(5.6/8.8)/ln(5/1.4) = -0.355).
    A spectral index missing from the catalog (only in hand-made catalogs) is
    flat, as in :meth:`contimg.sky.catalog.Calibrator.flux_at`.
    """
    from contimg.sky.catalog import load_calibrators as _load

    return [Source.from_calibrator(c) for c in _load()]


def find_calibrator(name: str) -> Source:
    """The calibrator called ``name`` (any of its names, e.g. ``0834+555``, ``3C286``)."""
    from contimg.sky.catalog import find_calibrator as _find

    return Source.from_calibrator(_find(name))


def calibrators_near(ra_lo_deg: float, ra_hi_deg: float, pointing_dec_deg: float, *,
                     radius_deg: float) -> list[Source]:
    """Calibrators within ``radius_deg`` of the meridian track during the group, nearest first.

    Parameters
    ----------
    ra_lo_deg, ra_hi_deg : float
        RA range swept by the meridian during the group, degrees.
    pointing_dec_deg : float
        Pointing declination, degrees.
    radius_deg : float
        Distance from the track, degrees.

    Returns
    -------
    list of Source
        Sorted by distance from the track, nearest first (ties: catalog order).
    """
    cals = load_calibrators()
    if not cals:
        return []
    sep = _min_separation_from_track_deg([c.ra_deg for c in cals], [c.dec_deg for c in cals],
                                         ra_lo_deg, ra_hi_deg, pointing_dec_deg)
    order = np.argsort(sep, kind="stable")
    return [cals[i] for i in order if sep[i] <= radius_deg]
