"""Synthetic group images, written through the imaging products writer, for mosaic tests and benchmarks.

A drift-scan group's image is centred on the meridian at its mid time, so consecutive
groups' grids are the same SIN grid shifted in RA by the sidereal drift of one group
(309.24 s x 15.041 arcsec/s = 1.292 deg). :func:`write_group_images` writes such groups: each
with its own drift-averaged Airy beam (:func:`contimg.sky.beam.airy_power` averaged along
the group's track at the band centre), its own restoring beam (a few per cent different from
group to group, as the hour angle changes it), its own noise level (flat in the apparent
image, correlated on the beam's scale) and point sources of known flux at fixed sky
positions. Products go through :func:`contimg.imaging.products.write_products`, so they are
the pipeline's files (``-image``, ``-pb``, ``-pbcor``, ``-residual``, ``-model``, ``-psf``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy.interpolate import RectBivariateSpline

from contimg import instrument, naming
from contimg.imaging import products as image_products
from contimg.sky.beam import airy_power

#: Duration of a group (24 integrations), s.
GROUP_S = instrument.INTEGRATIONS_PER_FILE * instrument.INTEGRATION_TIME_S
#: Sidereal rate, deg of RA per second of UTC.
SIDEREAL_DEG_PER_S = 360.0 / 86164.0905
FREQ_HZ = 1405015258.7890625
BANDWIDTH_HZ = 187.5e6


@dataclass(frozen=True)
class SyntheticGroup:
    """What :func:`write_group_images` wrote for one group."""

    group_id: str
    prefix: Path
    ra_deg: float
    dec_deg: float
    noise_jy: float
    beam_arcsec: tuple[float, float, float]


def _wcs(ra_deg: float, dec_deg: float, imsize: int, cell_deg: float) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.cdelt = [-cell_deg, cell_deg]
    w.wcs.crpix = [imsize // 2 + 1, imsize // 2 + 1]
    w.wcs.radesys = "ICRS"
    return w


def drift_beam(wcs: WCS, imsize: int, ra_track_deg: np.ndarray, dec_deg: float, *, coarse: int = 65) -> np.ndarray:
    """The Airy power beam at the band centre averaged along a track of beam centres (RA, Dec), [y, x]."""
    axis = np.linspace(0, imsize - 1, coarse)
    xx, yy = np.meshgrid(axis, axis)
    ra, dec = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    ra, dec = np.radians(ra), np.radians(dec)
    d0 = math.radians(dec_deg)
    total = np.zeros(ra.size)
    for r0 in np.radians(ra_track_deg):
        cos_sep = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ra - r0)
        total += airy_power(np.arccos(np.clip(cos_sep, -1.0, 1.0)), FREQ_HZ)
    total /= len(ra_track_deg)
    spline = RectBivariateSpline(axis, axis, total.reshape(coarse, coarse), kx=3, ky=3)
    return np.clip(spline(np.arange(imsize), np.arange(imsize)), 0.0, 1.0)


def _gaussian(shape, x0, y0, beam_pix: tuple[float, float, float],
              radius: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """A unit-peak elliptical Gaussian stamp at sub-pixel (x0, y0); ``beam_pix`` = (fwhm_maj, fwhm_min) pixels and
    PA (deg east of north; east is -x, north +y)."""
    maj, mn, pa = beam_pix
    ny, nx = shape
    xc, yc = int(round(x0)), int(round(y0))
    ys = slice(max(yc - radius, 0), min(yc + radius + 1, ny))
    xs = slice(max(xc - radius, 0), min(xc + radius + 1, nx))
    yy, xx = np.mgrid[ys, xs]
    east, north = -(xx - x0), yy - y0
    p = math.radians(pa)
    a = east * math.sin(p) + north * math.cos(p)
    b = east * math.cos(p) - north * math.sin(p)
    s = 1.0 / (8 * math.log(2))
    return (ys, xs), np.exp(-0.5 * (a**2 / (maj**2 * s) + b**2 / (mn**2 * s)))


def correlated_noise(shape, sigma: float, beam_pix: tuple[float, float, float], rng) -> np.ndarray:
    """Gaussian noise of rms ``sigma`` smoothed by the restoring beam, as in a restored image."""
    white = rng.standard_normal(shape)
    radius = int(3 * beam_pix[0]) + 1
    _, kernel = _gaussian((2 * radius + 1, 2 * radius + 1), radius, radius, beam_pix, radius)
    from scipy.signal import fftconvolve

    smooth = fftconvolve(white, kernel, mode="same")
    return (smooth * (sigma / smooth.std())).astype(np.float32)


def write_group_images(out_dir, sources, *, start: str = "2026-11-25T08:00:00", n_groups: int = 12,
                       dec_deg: float = 54.6, ra0_deg: float = 120.0, imsize: int = 256, cell_arcsec: float = 90.0,
                       beam_arcsec: tuple[float, float, float] = (420.0, 300.0, 0.0), beam_change: float = 0.03,
                       noise_jy: float = 3e-4, noise_spread: float = 0.15, seed: int = 0,
                       pblimit: float = 0.2) -> list[SyntheticGroup]:
    """Write ``n_groups`` consecutive synthetic group images under ``out_dir`` (naming's image prefixes).

    Parameters
    ----------
    out_dir : path-like
        Products directory: images go to ``naming.image_prefix(out_dir, group_id)``.
    sources : sequence of (ra_deg, dec_deg, flux_jy)
        Point sources (intrinsic flux density, Jy).
    start : str
        Group id of the first group; the others follow every :data:`GROUP_S` seconds.
    dec_deg, ra0_deg : float
        Pointing Dec; RA of the first group's beam centre at its mid time, deg.
    imsize : int
        Pixels on a side.
    cell_arcsec : float
        Pixel size.
    beam_arcsec : (float, float, float)
        Restoring beam (BMAJ, BMIN arcsec; BPA deg) of the middle group; the others' axes change
        linearly by up to ``+-beam_change / 2`` (relative) across the run.
    noise_jy : float
        Noise of the apparent image, Jy/beam; group ``i`` gets ``noise_jy`` times a factor within
        ``1 +- noise_spread`` (seeded).
    seed : int
    pblimit : float
        The pbcor cutoff.

    Returns
    -------
    list of SyntheticGroup
    """
    rng = np.random.default_rng(seed)
    cell = cell_arcsec / 3600.0
    step_deg = GROUP_S * SIDEREAL_DEG_PER_S
    first = naming.parse_group_id(start)
    out = []
    for i in range(n_groups):
        group_id = naming.group_id_from_datetime(first + timedelta(seconds=round(i * GROUP_S)))
        ra_mid = (ra0_deg + i * step_deg) % 360.0
        wcs = _wcs(ra_mid, dec_deg, imsize, cell)
        track = ra_mid + np.linspace(-step_deg / 2, step_deg / 2, 24)
        pb = drift_beam(wcs, imsize, track, dec_deg)
        frac = (i / max(n_groups - 1, 1) - 0.5) * beam_change
        bmaj, bmin, bpa = beam_arcsec[0] * (1 + frac), beam_arcsec[1] * (1 - frac), beam_arcsec[2]
        beam_pix = (bmaj / cell_arcsec, bmin / cell_arcsec, bpa)
        sigma = noise_jy * (1 + noise_spread * rng.uniform(-1, 1))
        residual = correlated_noise((imsize, imsize), sigma, beam_pix, rng)
        model = np.zeros((imsize, imsize), dtype=np.float32)
        restored = np.zeros((imsize, imsize), dtype=np.float64)
        radius = int(4 * beam_pix[0]) + 2
        for ra, dec, flux in sources:
            x, y = (float(v) for v in wcs.all_world2pix(ra, dec, 0))
            if not (0 <= x < imsize and 0 <= y < imsize):
                continue
            apparent = flux * float(pb[min(int(round(y)), imsize - 1), min(int(round(x)), imsize - 1)])
            view, stamp = _gaussian(restored.shape, x, y, beam_pix, radius)
            restored[view] += apparent * stamp
            model[min(int(round(y)), imsize - 1), min(int(round(x)), imsize - 1)] += apparent
        image = (restored + residual).astype(np.float32)
        _, psf = _gaussian((imsize, imsize), imsize // 2, imsize // 2, beam_pix, imsize)
        prefix = naming.image_prefix(out_dir, group_id)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        header = wcs.to_header()
        header["BMAJ"], header["BMIN"], header["BPA"] = bmaj / 3600.0, bmin / 3600.0, bpa
        for key, value in (("CTYPE3", "FREQ"), ("CRVAL3", FREQ_HZ), ("CDELT3", BANDWIDTH_HZ), ("CRPIX3", 1.0),
                           ("CTYPE4", "STOKES"), ("CRVAL4", 1.0), ("CDELT4", 1.0), ("CRPIX4", 1.0)):
            header[key] = value
        raw = {}
        for kind, data in (("image", image), ("residual", residual), ("model", model), ("psf", psf)):
            path = prefix.with_name(f"{prefix.name}-raw-{kind}.fits")
            fits.PrimaryHDU(np.asarray(data, dtype=np.float32).reshape(1, 1, imsize, imsize), header).writeto(
                path, overwrite=True)
            raw[kind] = path
        t_start = Time(naming.parse_group_id(group_id).isoformat(), scale="utc")
        image_products.write_products(raw, prefix, pb=pb, pblimit=pblimit, freq_hz=FREQ_HZ,
                                      bandwidth_hz=BANDWIDTH_HZ, start=t_start, backend="synthetic")
        out.append(SyntheticGroup(group_id, prefix, ra_mid, dec_deg, sigma, (bmaj, bmin, bpa)))
    return out
