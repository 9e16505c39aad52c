"""The restoring beam, fitted by us to the dirty beam of the weights both imagers use.

Each imager fits its own Gaussian to its own PSF, and for a DSA-110 snapshot the
fit is ill-posed: the T-array's PSF has a 27" x 15" main lobe, a 0.5 sidelobe
26" north and south of it and a 0.2-0.3 plateau east-west, so the fits depend on
each imager's fitting region. On the same full group at 1024 px WSClean fitted
55.9" x 12.7" at PA 110 deg and tclean 50.8" x 22.9" at PA -2 deg. Clean
components of a source spread over a few pixels, so restored peaks depend on the
beam: tclean's sources read 3.1 +- 3 % brighter than WSClean's. Restored with one
beam, the same two images agree to -1.0 +- 1.5 % (benchmarks/RESULTS.md, Imaging).

So the beam is computed here, before imaging, from the visibilities' (u, v) and
the Briggs imaging weights of :mod:`contimg.imaging.noise` (the definition both
imagers use), and passed to both (WSClean ``-beam-shape``, tclean
``restoringbeam``). The fit follows WSClean's own recipe, which suits the
restored fluxes (a main-lobe-only fit, 33" x 18", read point sources 4 % low on
the full group): a least-squares Gaussian of peak 1 over a box of
``fitting_box_beams`` theoretical beams (lambda / B_max) around the PSF's peak.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft, optimize

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def psf_centre(u: np.ndarray, v: np.ndarray, w: np.ndarray, *, imsize: int, cell_arcsec: float,
               half_pix: int) -> np.ndarray:
    """The dirty beam's central ``(2 half_pix + 1)`` pixels square, peak 1.

    Parameters
    ----------
    u, v : numpy.ndarray
        Sample coordinates, wavelengths (u towards east, v towards north).
    w : numpy.ndarray
        Imaging weights of the samples (e.g. :func:`contimg.imaging.noise.briggs_weights`).
    imsize : int
        Pixels on a side of the image; the uv grid has as many cells of ``1 / (imsize cell)``.
    cell_arcsec : float
        Pixel size, arcsec.
    half_pix : int
        Half-width of the cutout, pixels (< imsize / 2).

    Returns
    -------
    numpy.ndarray
        ``[dy + half_pix, dx + half_pix]`` is the PSF ``dy`` pixels north and ``dx`` pixels
        west (image x, RA decreasing) of its peak: the orientation of an image array.
    """
    du = 1.0 / (imsize * math.radians(cell_arcsec / 3600.0))
    half = imsize // 2
    iu = np.rint(u / du).astype(np.int64)
    iv = np.rint(v / du).astype(np.int64)
    inside = (np.abs(iu) < half) & (np.abs(iv) < half) & (w > 0)
    iu, iv, wk = iu[inside], iv[inside], w[inside]
    # the sample and its conjugate at (-u, -v): the grid is real and even, so its transform is
    # real: PSF(dy, dx) = sum W cos 2 pi (iv dy - iu dx) / N, i.e. the FFT at (-dy, dx)
    grid = np.bincount((iv % imsize) * imsize + (iu % imsize), weights=wk, minlength=imsize * imsize)
    grid += np.bincount((-iv % imsize) * imsize + (-iu % imsize), weights=wk, minlength=imsize * imsize)
    spectrum = fft.rfft2(grid.reshape(imsize, imsize), workers=-1).real  # kx in [0, N/2]
    dy = np.arange(-half_pix, half_pix + 1)
    dx = np.arange(-half_pix, half_pix + 1)
    # a real even grid's transform is even: F(ky, -kx) = F(-ky, kx)
    rows = np.where(dx[None, :] >= 0, (-dy[:, None]) % imsize, dy[:, None] % imsize)
    out = spectrum[rows, np.abs(dx)[None, :]]
    return out / out[half_pix, half_pix]


def fit_beam(psf: np.ndarray, cell_arcsec: float, *, box_pix: float) -> tuple[float, float, float]:
    """Least-squares Gaussian (peak 1, centred) to a PSF's ``box_pix``-wide central box.

    Parameters
    ----------
    psf : numpy.ndarray
        Odd-sized PSF cutout, peak 1 at its centre, image orientation (:func:`psf_centre`).
    cell_arcsec : float
    box_pix : float
        Width of the fitted box, pixels (at most the cutout).

    Returns
    -------
    (float, float, float)
        FWHM major and minor axes, arcsec; position angle of the major axis, deg east of
        north, in [-90, 90).
    """
    c = psf.shape[0] // 2
    half = min(c, max(2, int(round(box_pix / 2))))
    sub = psf[c - half:c + half + 1, c - half:c + half + 1]
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    east, north = -x, y

    def residual(q):
        s_major, s_minor, theta = q
        along = east * math.sin(theta) + north * math.cos(theta)
        across = east * math.cos(theta) - north * math.sin(theta)
        return (np.exp(-0.5 * ((along / s_major) ** 2 + (across / s_minor) ** 2)) - sub).ravel()

    # start from the half-power region's extent; try four angles (the PSF's arms make local minima)
    s0 = max(1.0, math.sqrt(float((sub >= 0.5).sum()) / math.pi) / 1.18)
    best = min((optimize.least_squares(residual, [1.5 * s0, s0, math.radians(a)]) for a in (0, 45, 90, 135)),
               key=lambda r: r.cost)
    s_a, s_b, theta = best.x
    major, minor = abs(s_a), abs(s_b)
    if minor > major:
        major, minor, theta = minor, major, theta + math.pi / 2
    pa = (math.degrees(theta) + 90.0) % 180.0 - 90.0
    return major * _FWHM_PER_SIGMA * cell_arcsec, minor * _FWHM_PER_SIGMA * cell_arcsec, pa


def restoring_beam(u: np.ndarray, v: np.ndarray, w: np.ndarray, *, imsize: int, cell_arcsec: float,
                   resolution_arcsec: float, fitting_box_beams: float = 10.0) -> tuple[float, float, float]:
    """The restoring beam for samples ``(u, v)`` with imaging weights ``w``.

    Parameters
    ----------
    u, v : numpy.ndarray
        Wavelengths.
    w : numpy.ndarray
        Imaging weights.
    imsize : int
    cell_arcsec : float
    resolution_arcsec : float
        The theoretical beam, lambda / B_max, arcsec.
    fitting_box_beams : float, optional
        Width of the fitted box in theoretical beams (WSClean's ``-beam-fitting-size``, 10).

    Returns
    -------
    (float, float, float)
        Major and minor FWHM (arcsec) and position angle (deg east of north).
    """
    box_pix = fitting_box_beams * resolution_arcsec / cell_arcsec
    half = min(imsize // 2 - 1, int(math.ceil(box_pix / 2)) + 1)
    return fit_beam(psf_centre(u, v, w, imsize=imsize, cell_arcsec=cell_arcsec, half_pix=half), cell_arcsec,
                    box_pix=box_pix)
