"""Flag detections that may be a brighter source's sidelobe residual rather than a source.

A DSA-110 snapshot's PSF has strong sidelobes along the T-array's east-west row
and north-south column (2-10 % of the peak hundreds of pixels out). Deconvolution
removes a bright source's sidelobes only to a fraction of a per cent of their
height: J0834+5534 (6.3 Jy apparent) leaves residuals of ~1-1.5 mJy 1000 pixels
south of it, on its PSF column, where the sidelobe is 2.5 % of its peak (160 mJy),
and clean then builds 9-14 sigma "sources" there (benchmarks/RESULTS.md, Imaging).
Such a detection is not thrown away, since a real source can sit on a sidelobe
too, but marked as a suspect so a catalog query can leave it out.

The test compares each detection's peak with the strongest sidelobe that a
brighter detection puts at its position: the brighter source's image-plane peak
times the largest |PSF| within half a restoring beam of their offset (the PSF is
taken as the same everywhere in the image, which is true to first order in a
single snapshot). Offsets inside the brighter source's main lobe are skipped: a
close companion is a blending question, not a sidelobe one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from astropy.wcs import WCS

from contimg.errors import InvalidInputError
from contimg.qa.sources import read_plane

#: A detection whose peak is below this fraction of the sidelobe under it is a suspect. In the full
#: simulated group (150 detections) the 4 false detections had 2.0-3.4 %, the lowest real source 8.0 %.
DEFAULT_FRACTION = 0.05

SIDELOBE_FIELDS = (
    pa.field("sidelobe_jy_per_beam", pa.float64(), metadata={
        "doc": "strongest sidelobe of a brighter detection at this position (its image-plane peak x |PSF| at "
               "the offset, max within half a restoring beam), Jy/beam; 0 where none reaches it"}),
    pa.field("sidelobe_suspect", pa.bool_(), metadata={
        "doc": "peak_flux_jy_per_beam (image plane) below the sidelobe fraction of sidelobe_jy_per_beam: "
               "possibly a deconvolution residual of the brighter source, not a source"}),
)


def _psf_plane(psf_fits) -> tuple[np.ndarray, float]:
    psf, header = read_plane(psf_fits)
    return np.abs(np.nan_to_num(psf)), abs(float(header["CDELT2"]))


def sidelobe_levels(x_pix, y_pix, peak_jy, psf: np.ndarray, *, main_lobe_pix: float, radius_pix: float,
                    n_bright: int = 20) -> np.ndarray:
    """The strongest sidelobe of a brighter source at each source's position.

    Parameters
    ----------
    x_pix, y_pix : array_like
        Source positions, image pixels.
    peak_jy : array_like
        Image-plane (not primary-beam-corrected) peaks, Jy/beam: the PSF scales these.
    psf : numpy.ndarray
        |PSF|, 2-D, peak 1 at its brightest pixel, same cell as the image.
    main_lobe_pix : float
        Offsets shorter than this are skipped (the brighter source's main lobe), pixels.
    radius_pix : float
        The sidelobe is the largest |PSF| within this radius of the offset (position errors), pixels.
    n_bright : int, optional
        Only the ``n_bright`` brightest sources cast sidelobes.

    Returns
    -------
    numpy.ndarray
        Jy/beam per source; 0 where no brighter source's PSF (within the PSF image) reaches it.
    """
    x, y, peak = (np.asarray(a, dtype=float) for a in (x_pix, y_pix, peak_jy))
    cy, cx = np.unravel_index(int(np.argmax(psf)), psf.shape)
    r = max(1, int(np.ceil(radius_pix)))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = dx**2 + dy**2 <= radius_pix**2
    dy, dx = dy[disk], dx[disk]
    ny, nx = psf.shape
    levels = np.zeros(x.size)
    for b in np.argsort(-peak)[:n_bright]:
        ox = np.rint(x - x[b]).astype(int)
        oy = np.rint(y - y[b]).astype(int)
        for i in np.flatnonzero((peak < peak[b]) & (np.hypot(ox, oy) >= main_lobe_pix)):
            ys, xs = cy + oy[i] + dy, cx + ox[i] + dx
            inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
            if inside.any():
                levels[i] = max(levels[i], peak[b] * float(psf[ys[inside], xs[inside]].max()))
    return levels


def flag_sidelobe_suspects(sources: pa.Table, image_fits, psf_fits, *, fraction: float = DEFAULT_FRACTION,
                           main_lobe_beams: float = 1.5, n_bright: int = 20) -> pa.Table:
    """Add ``sidelobe_jy_per_beam`` and ``sidelobe_suspect`` to a source table.

    Parameters
    ----------
    sources : pyarrow.Table
        :func:`contimg.qa.sources.find_sources` output, before primary-beam correction
        (``peak_flux_jy_per_beam`` is the image-plane peak).
    image_fits, psf_fits : path-like
        The image the sources were found on (its WCS and restoring beam) and its PSF (same cell).
    fraction : float, optional
        A source whose peak is below this fraction of the sidelobe at its position is a suspect.
    main_lobe_beams : float, optional
        Offsets shorter than this many restoring-beam major axes are not sidelobes.
    n_bright : int, optional
        The brightest sources considered as casting sidelobes.

    Returns
    -------
    pyarrow.Table
        ``sources`` with the two columns of :data:`SIDELOBE_FIELDS` appended.
    """
    if not 0 < fraction < 1:
        raise InvalidInputError(f"the sidelobe fraction must lie in (0, 1), got {fraction}")
    _, header = read_plane(image_fits)
    psf, psf_cell = _psf_plane(psf_fits)
    cell = abs(float(header["CDELT2"]))
    if not np.isclose(cell, psf_cell, rtol=1e-6):
        raise InvalidInputError(f"{psf_fits}: PSF cell {psf_cell * 3600:.3f} arcsec, image {image_fits} "
                                f"{cell * 3600:.3f} arcsec: not the same grid")
    peak = np.array(sources.column("peak_flux_jy_per_beam").to_pylist(), dtype=float)
    if peak.size:
        x, y = WCS(header).celestial.world_to_pixel_values(sources.column("ra_deg").to_numpy(),
                                                           sources.column("dec_deg").to_numpy())
        levels = sidelobe_levels(x, y, peak, psf, main_lobe_pix=main_lobe_beams * float(header["BMAJ"]) / cell,
                                 radius_pix=max(1.0, 0.5 * float(header["BMIN"]) / cell), n_bright=n_bright)
    else:
        levels = np.zeros(0)
    out = sources.append_column(SIDELOBE_FIELDS[0], pa.array(levels))
    return out.append_column(SIDELOBE_FIELDS[1], pa.array(peak < fraction * levels))
