"""The DSA-110 primary beam of an image: the Airy pattern averaged over the group's drift and band.

CASA and WSClean have no beam model for this telescope. A drift-scan group's
beam centre moves along the meridian at the pointing declination (0.75 deg on
the sky in a 5-minute group at Dec 55), and the beam narrows by 14 % across the
band, so the beam of an image is the weighted average

    PB(l, m) = sum_{t, nu} W(t, nu) Airy(theta(l, m, t), nu) / sum_{t, nu} W(t, nu)

with ``W`` the unflagged visibility weights per integration and channel (the
weights the imager gridded, summed over baselines) and ``theta`` the distance
from the beam centre at each integration, computed exactly as the calibration
model does (:func:`contimg.calibration.model.beam_offsets_at`). The response is
smooth on the scale of the beam (2.7 deg), so it is evaluated on a coarse grid
and interpolated to the image pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RectBivariateSpline

from contimg import instrument
from contimg.calibration.model import MsGeometry, beam_offsets_at
from contimg.sky.beam import airy_power

#: Points per side of the coarse grid the beam is evaluated on before interpolation.
COARSE_POINTS = 97
#: Frequencies the band is binned into for the average (the beam changes 0.8 % within a bin of 16).
FREQ_BINS = 16


def average_primary_beam(grid, geometry: MsGeometry, weights: np.ndarray, freqs_hz: np.ndarray, *,
                         dish_diameter_m: float = instrument.DISH_DIAMETER_M,
                         coarse_points: int = COARSE_POINTS, freq_bins: int = FREQ_BINS) -> np.ndarray:
    """The weighted time- and frequency-averaged Airy response on an image grid.

    Parameters
    ----------
    grid : contimg.imaging.grid.ImageGrid
        The image (its WCS gives every pixel's sky position).
    geometry : MsGeometry
        Times and pointing of the group (:func:`contimg.calibration.model.read_geometry`).
    weights : numpy.ndarray
        (Ntimes, Nchan) weight sums per integration and channel.
    freqs_hz : numpy.ndarray
        (Nchan,) channel frequencies of ``weights``, Hz.
    dish_diameter_m : float
        Dish diameter, metres.
    coarse_points, freq_bins : int
        Resolution of the evaluation (see the module docstring).

    Returns
    -------
    numpy.ndarray
        (imsize, imsize) response in [0, 1], indexed [y, x] like the FITS image.
    """
    weights = np.asarray(weights, dtype=float)
    freqs_hz = np.asarray(freqs_hz, dtype=float)
    if weights.shape != (len(geometry.times_s), len(freqs_hz)):
        raise ValueError(f"weights {weights.shape} do not match {len(geometry.times_s)} times x {len(freqs_hz)} channels")
    if not np.any(weights > 0):
        raise ValueError("every weight is zero: no beam to average")
    # bin the channels: weight-averaged frequency per bin, summed weight per (time, bin)
    edges = np.linspace(0, len(freqs_hz), min(freq_bins, len(freqs_hz)) + 1).astype(int)
    bin_w = np.stack([weights[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    chan_w = weights.sum(axis=0)
    bin_f = np.array([np.average(freqs_hz[a:b], weights=chan_w[a:b]) if chan_w[a:b].sum() > 0
                      else freqs_hz[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    n = grid.imsize
    axis = np.linspace(0, n - 1, coarse_points)
    xx, yy = np.meshgrid(axis, axis)
    wcs = grid.wcs().celestial
    ra, dec = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    offsets = beam_offsets_at(ra, dec, geometry)  # (Nt, Npix)
    pb = np.zeros(offsets.shape[1])
    for b, f in enumerate(bin_f):
        pb += (bin_w[:, b, None] * airy_power(offsets, f, dish_diameter_m=dish_diameter_m)).sum(axis=0)
    pb /= bin_w.sum()
    spline = RectBivariateSpline(axis, axis, pb.reshape(coarse_points, coarse_points), kx=3, ky=3)
    full = spline(np.arange(n), np.arange(n))  # [y, x]
    return np.clip(full, 0.0, 1.0)


def source_apparent_flux(sources, geometry: MsGeometry, weights: np.ndarray, freqs_hz: np.ndarray, *,
                         dish_diameter_m: float = instrument.DISH_DIAMETER_M,
                         flux_factor: np.ndarray | None = None) -> np.ndarray:
    """What an MFS image of the group shows of each source: ``sum W S(nu) Airy / sum W``, Jy.

    Divided by the beam of :func:`average_primary_beam` at the source, this is the
    flux a primary-beam-corrected image should give (the truth a QA compares with).
    ``flux_factor`` (Ntimes, Nsources), optional: each source's flux at each time is
    ``S(nu)`` times it (the light curve of a simulated variable source).
    """
    from contimg.calibration.model import apparent_fluxes

    g = MsGeometry(geometry.times_s, np.asarray(freqs_hz, dtype=float)[None, :], geometry.phase_dirs_rad,
                   geometry.pointing_dec_app_rad, geometry.n_corr, geometry.corr_types)
    amp = apparent_fluxes(list(sources), g, dish_diameter_m=dish_diameter_m)[:, :, 0, :]  # (Nt, Ns, Nchan)
    if flux_factor is not None:
        amp = amp * np.asarray(flux_factor, dtype=float)[:, :, None]
    w = np.asarray(weights, dtype=float)
    return np.einsum("tsc,tc->s", amp, w) / w.sum()
