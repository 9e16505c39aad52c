"""Image QA: noise, peak, dynamic range, beam and pbcor checks of an image's FITS products, and a thumbnail.

:func:`image_metrics` reads the products that :func:`contimg.imaging.image.image_ms`
writes (``<prefix>-{image,residual,pb,pbcor}.fits``, see
:mod:`contimg.imaging.products`) and returns plain numbers (JSON-ready) for the
QA tables; :func:`write_thumbnail` draws one product as a PNG with RA/Dec axes,
the restoring beam and the primary-beam 0.5 contour.

Conventions
-----------
* Noise is robust: ``1.4826 x median(|x - median(x)|)`` of the finite pixels of
  the *residual* image (the clean model's sources are not in it), over the whole
  image and inside ``pb > pb_threshold``. The dynamic range is the image peak
  over the inner noise.
* Pixels: 0-based numpy indices, ``x`` along RA (FITS axis 1, column), ``y``
  along Dec (FITS axis 2, row).
* Beam position angle (BPA): degrees from north through east. In these images
  east is to the left (``CDELT1 < 0``), so BPA = 0 is along +y and BPA = 90 along
  -x; :func:`beam_angle_pixel_deg` does the conversion from any WCS pixel matrix.
* Images are read memory-mapped and converted once to native float32. On a
  3648 x 3648 image (2 cores, files in the page cache) :func:`image_metrics`
  takes ~0.7 s and :func:`write_thumbnail` ~1.4 s (+1 s for the first import
  of matplotlib).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.482602218505602
#: Products :func:`image_metrics` reads.
METRIC_KINDS = ("image", "residual", "pb", "pbcor")


# --- reading ------------------------------------------------------------------------


def _product(products: dict, kind: str) -> Path:
    if kind not in products or products[kind] is None:
        raise InvalidInputError(f"image QA needs the {kind!r} product; got only {sorted(products)}")
    path = Path(products[kind])
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such {kind} image file")
    return path


def _read_plane(products: dict, kind: str) -> tuple[np.ndarray, fits.Header, Path]:
    """(ny, nx) native float32 plane of one product, its header and path (:func:`contimg.qa.sources.read_plane`)."""
    from contimg.qa.sources import read_plane

    path = _product(products, kind)
    plane, header = read_plane(path)
    return plane.astype(np.float32), header, path


def _beam_deg(header: fits.Header, path: Path) -> tuple[float, float, float]:
    try:
        beam = tuple(float(header[key]) for key in ("BMAJ", "BMIN", "BPA"))
    except (KeyError, ValueError, TypeError):
        raise InvalidInputError(f"{path}: no restoring beam (BMAJ/BMIN/BPA) in the header") from None
    if not (beam[0] > 0 and beam[1] > 0 and all(math.isfinite(b) for b in beam)):
        raise InvalidInputError(f"{path}: invalid restoring beam BMAJ={beam[0]} BMIN={beam[1]} BPA={beam[2]}")
    return beam


def _celestial_wcs(header: fits.Header):
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # OBSGEO-L/B/H filled in from X/Y/Z
        return WCS(header).celestial


def robust_sigma(values: np.ndarray) -> float:
    """Robust standard deviation, ``1.4826 x`` the median absolute deviation about the median.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape; non-finite values are ignored.

    Returns
    -------
    float
        In the unit of ``values``; NaN when no value is finite.
    """
    x = np.asarray(values).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    med = np.median(x)
    np.subtract(x, med, out=x)
    np.abs(x, out=x)
    return float(MAD_TO_SIGMA * np.median(x))


# --- metrics ------------------------------------------------------------------------


def image_metrics(products: dict[str, Path], *, pb_threshold: float = 0.5) -> dict:
    """Noise, peak, dynamic range, beam, grid and a pbcor check of one image's products.

    Parameters
    ----------
    products : dict of str to path-like
        ``{kind: path}`` as returned by :func:`contimg.imaging.image.image_ms`;
        ``image``, ``residual``, ``pb`` and ``pbcor`` are read.
    pb_threshold : float, optional
        ``noise_inner_jy`` uses the residual pixels where ``pb > pb_threshold``.

    Returns
    -------
    dict
        Plain Python numbers:

        ``noise_jy``, ``noise_inner_jy`` : float
            Robust rms (Jy/beam) of the residual, all finite pixels and inside
            ``pb > pb_threshold`` (NaN when no pixel is).
        ``n_inner_pixels`` : int
        ``peak_jy`` : float
            Maximum of the image (Jy/beam).
        ``peak_x``, ``peak_y`` : int
            Its pixel (0-based, x along RA).
        ``peak_ra_deg``, ``peak_dec_deg`` : float
            Its ICRS position, degrees.
        ``dynamic_range`` : float
            ``peak_jy / noise_inner_jy``.
        ``beam_major_arcsec``, ``beam_minor_arcsec`` : float
            Restoring beam FWHMs, arcsec.
        ``beam_pa_deg`` : float
            Its position angle, degrees north through east.
        ``cell_arcsec`` : float
            Pixel size (mean of the two axes), arcsec.
        ``pixels_per_beam_minor`` : float
            ``beam_minor_arcsec / cell_arcsec``.
        ``imsize_x``, ``imsize_y`` : int
        ``ra_deg``, ``dec_deg`` : float
            Image centre (CRVAL1/2), degrees.
        ``freq_hz``, ``bandwidth_hz`` : float
            CRVAL3 and CDELT3 of the image, Hz.
        ``pblimit`` : float
            The pbcor cutoff: the pbcor header's PBLIMIT (when absent, the
            smallest pb where pbcor is finite, with a warning).
        ``pbcor_max_abs_diff`` : float
            ``max |pbcor - image / pb|`` where ``pb >= pblimit`` and both are
            finite, relative to ``peak_jy`` (float32 rounding: ~1e-7).
        ``pbcor_blank_ok`` : bool
            pbcor is NaN wherever ``pb < pblimit`` and finite wherever
            ``pb >= pblimit`` and the image is finite.

    Raises
    ------
    InvalidInputError
        A product is missing or unreadable, the grids differ, the image header
        has no restoring beam, or the image has no finite pixel.
    """
    image, header, image_path = _read_plane(products, "image")
    beam = _beam_deg(header, image_path)
    residual, _, residual_path = _read_plane(products, "residual")
    pb, _, pb_path = _read_plane(products, "pb")
    pbcor, pbcor_header, pbcor_path = _read_plane(products, "pbcor")
    for plane, path in ((residual, residual_path), (pb, pb_path), (pbcor, pbcor_path)):
        if plane.shape != image.shape:
            raise InvalidInputError(f"{path}: shape {plane.shape} differs from the image's {image.shape} "
                                    f"({image_path})")
    if not np.isfinite(image).any():
        raise InvalidInputError(f"{image_path}: every pixel is NaN or infinite")

    noise = robust_sigma(residual)
    inner = pb > pb_threshold
    n_inner = int(np.count_nonzero(inner & np.isfinite(residual)))
    noise_inner = robust_sigma(residual[inner])

    peak_index = int(np.nanargmax(image))
    peak_y, peak_x = np.unravel_index(peak_index, image.shape)
    peak = float(image.flat[peak_index])
    wcs = _celestial_wcs(header)
    peak_ra, peak_dec = (float(v) for v in wcs.pixel_to_world_values(peak_x, peak_y))
    cell_arcsec = float(np.mean(np.abs(np.diag(wcs.pixel_scale_matrix)))) * 3600.0

    pblimit, max_diff, blank_ok = _pbcor_check(image, pb, pbcor, pbcor_header, pbcor_path)
    dynamic_range = peak / noise_inner if noise_inner > 0 else math.nan
    return {
        "noise_jy": noise,
        "noise_inner_jy": noise_inner,
        "n_inner_pixels": n_inner,
        "pb_threshold": float(pb_threshold),
        "peak_jy": peak,
        "peak_x": int(peak_x),
        "peak_y": int(peak_y),
        "peak_ra_deg": peak_ra,
        "peak_dec_deg": peak_dec,
        "dynamic_range": float(dynamic_range),
        "beam_major_arcsec": beam[0] * 3600.0,
        "beam_minor_arcsec": beam[1] * 3600.0,
        "beam_pa_deg": beam[2],
        "cell_arcsec": cell_arcsec,
        "pixels_per_beam_minor": beam[1] * 3600.0 / cell_arcsec,
        "imsize_x": int(image.shape[1]),
        "imsize_y": int(image.shape[0]),
        "ra_deg": float(header["CRVAL1"]),
        "dec_deg": float(header["CRVAL2"]),
        "freq_hz": float(header.get("CRVAL3", math.nan)),
        "bandwidth_hz": float(abs(header.get("CDELT3", math.nan))),
        "pblimit": pblimit,
        "pbcor_max_abs_diff": max_diff,
        "pbcor_blank_ok": blank_ok,
    }


def _pbcor_check(image, pb, pbcor, pbcor_header, pbcor_path) -> tuple[float, float, bool]:
    """(pblimit, max |pbcor - image/pb| / peak where pb >= pblimit, pbcor blank exactly below it)."""
    if "PBLIMIT" in pbcor_header:
        pblimit = float(pbcor_header["PBLIMIT"])
    else:
        finite_pb = pb[np.isfinite(pbcor)]
        pblimit = float(finite_pb.min()) if finite_pb.size else math.inf
        log.warning("%s: no PBLIMIT in the header; taking the smallest pb with a finite pbcor, %.4g",
                    pbcor_path, pblimit)
    above = pb >= pblimit
    pbcor_finite = np.isfinite(pbcor)
    blank_ok = not bool(np.any(pbcor_finite & ~above))
    blank_ok &= not bool(np.any(above & np.isfinite(image) & ~pbcor_finite))
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(pbcor[above] - image[above] / pb[above])
    diff = diff[np.isfinite(diff)]
    peak = float(np.nanmax(image))
    max_diff = float(diff.max()) / abs(peak) if diff.size and peak != 0 else math.nan
    return pblimit, max_diff, blank_ok


# --- thumbnail ----------------------------------------------------------------------


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over ``factor x factor`` blocks of a 2-D array.

    Parameters
    ----------
    data : numpy.ndarray
        Shape (ny, nx); padded with NaN to a multiple of ``factor``.
    factor : int
        Block side, pixels (1 returns a copy).

    Returns
    -------
    numpy.ndarray
        Shape (ceil(ny / factor), ceil(nx / factor)), float32; NaN for a block
        with no finite pixel. Output pixel ``j`` is centred on input pixel
        ``factor * j + (factor - 1) / 2`` (as ``wcs[::factor, ::factor]`` says).
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"block factor must be >= 1, got {factor}")
    ny, nx = data.shape
    my, mx = -(-ny // factor), -(-nx // factor)
    padded = np.full((my * factor, mx * factor), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data
    blocks = padded.reshape(my, factor, mx, factor)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = finite.sum(axis=(1, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def block_peak(data: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware signed peak over ``factor x factor`` blocks: the value of largest ``|x|`` in each block.

    A mean over the block dilutes a source a pixel or a beam across by up to ``factor**2`` (it vanishes
    into the noise of a large mosaic's thumbnail); the block's extreme keeps every source at its peak,
    and a negative artefact stays negative.

    Parameters
    ----------
    data : numpy.ndarray
        Shape (ny, nx); padded with NaN to a multiple of ``factor``.
    factor : int
        Block side, pixels (1 returns a float32 copy).

    Returns
    -------
    numpy.ndarray
        Shape (ceil(ny / factor), ceil(nx / factor)), float32, in the unit of ``data``; NaN for a block
        with no finite pixel. Pixel centres as :func:`block_mean`.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"block factor must be >= 1, got {factor}")
    ny, nx = data.shape
    my, mx = -(-ny // factor), -(-nx // factor)
    out = np.empty((my, mx), dtype=np.float32)
    rows = max(1, 2**22 // (factor * mx * factor))  # block rows per strip: ~16 MB of copies, not the image's size
    for j0 in range(0, my, rows):
        j1 = min(j0 + rows, my)
        strip = np.full(((j1 - j0) * factor, mx * factor), np.nan, dtype=np.float32)
        part = data[j0 * factor:j1 * factor]
        strip[:part.shape[0], :nx] = part
        blocks = strip.reshape(j1 - j0, factor, mx, factor).transpose(0, 2, 1, 3).reshape(j1 - j0, mx, -1)
        magnitude = np.where(np.isfinite(blocks), np.abs(blocks), np.float32(-1.0))  # a blank never wins
        pick = np.argmax(magnitude, axis=2)[..., None]
        found = np.take_along_axis(magnitude, pick, axis=2)[..., 0] >= 0
        out[j0:j1] = np.where(found, np.take_along_axis(blocks, pick, axis=2)[..., 0], np.nan)
    return out


#: ``reduce="peak"`` thumbnails: a block shows its peak when that is at least this many sigma, else its mean.
PEAK_SIGMA = 5.0


def _reduce(data: np.ndarray, factor: int, how: str, *, sigma: float) -> np.ndarray:
    """``data`` reduced by ``factor``: the :func:`block_mean` (``how`` "mean"), or ("peak") the
    :func:`block_peak` of blocks whose peak is at least ``PEAK_SIGMA * sigma`` (``sigma`` in the unit of
    ``data``) and the mean of the others. The noise alone would show its block extremes, +-2 to 3 sigma
    from 36 pixels, a speckle that hides the sources; its mean keeps it quiet."""
    mean = block_mean(data, factor)
    if how != "peak" or factor == 1:
        return mean
    peak = block_peak(data, factor)
    return np.where(np.abs(peak) >= PEAK_SIGMA * sigma, peak, mean)


def _block_extent(shape: tuple[int, int], factor: int) -> tuple[float, float, float, float]:
    """``imshow`` extent, in full-resolution pixel coordinates, of an array reduced by ``factor`` (padded)."""
    ny, nx = shape
    return (-0.5, factor * -(-nx // factor) - 0.5, -0.5, factor * -(-ny // factor) - 0.5)


def beam_angle_pixel_deg(bpa_deg: float, pixel_scale_matrix=None) -> float:
    """Matplotlib ``Ellipse`` angle of a beam's major axis in pixel space.

    Parameters
    ----------
    bpa_deg : float
        Beam position angle, degrees from north through east (FITS BPA).
    pixel_scale_matrix : array_like, optional
        2 x 2 matrix from pixel offsets (x, y) to intermediate world offsets
        (east, north), e.g. ``WCS(header).celestial.pixel_scale_matrix``.
        Default ``diag(-1, 1)``: east to the left (CDELT1 < 0), north up.

    Returns
    -------
    float
        Degrees counter-clockwise from the +x pixel axis, for an ``Ellipse``
        whose ``width`` is the major axis: 90 for BPA = 0 (along +y), 180 for
        BPA = 90 with east left (along -x). Valid for square pixels.
    """
    matrix = np.diag([-1.0, 1.0]) if pixel_scale_matrix is None else np.asarray(pixel_scale_matrix, float)
    bpa = math.radians(bpa_deg)
    dx, dy = np.linalg.solve(matrix, [math.sin(bpa), math.cos(bpa)])
    return math.degrees(math.atan2(dy, dx))


def _colorbar_ticks(vmin: float, vmax: float, sigma: float) -> list[float]:
    """vmin, 0, and 1-2-5 x 10^k steps from ~3 sigma up to vmax (all in the drawn unit)."""
    ticks = [0.0]
    if vmin < 0:
        step = 10.0 ** math.floor(math.log10(-vmin))
        ticks.insert(0, -math.floor(-vmin / step) * step)
    lowest = 3.0 * sigma
    for k in range(math.floor(math.log10(lowest)), math.ceil(math.log10(vmax)) + 1):
        for m in (1.0, 10.0 ** 0.5) if vmax / lowest < 1e3 else (1.0,):
            value = float(f"{m * 10.0 ** k:.1g}")
            if lowest <= value <= vmax:
                ticks.append(value)
    return ticks


def write_thumbnail(products: dict[str, Path], out_png, *, kind: str = "pbcor", max_pixels: int = 1024,
                    title: str | None = None, cmap: str = "inferno", dpi: int = 120, reduce: str = "mean",
                    figsize: tuple[float, float] = (8.0, 7.0)) -> Path:
    """PNG of one product with RA/Dec axes, colour bar (mJy/beam), restoring beam and pb 0.5 contour.

    Parameters
    ----------
    products : dict of str to path-like
        ``{kind: path}``; ``kind`` is drawn. ``residual`` (noise for the stretch;
        else the drawn image's own robust rms) and ``pb`` (the 0.5 contour) are
        used when present.
    out_png : path-like
        Written (parent directories created).
    kind : str, optional
        The product to draw.
    max_pixels : int, optional
        The drawn array is reduced by whole blocks (NaN-aware) to at most this many
        pixels per side.
    title : str, optional
        Default: file name, frequency (MHz), beam (arcsec, deg) and noise
        (uJy/beam).
    cmap : str, optional
        Matplotlib colour map ("inferno", "gray", ...); blank pixels are grey.
    dpi : int, optional
    reduce : {"mean", "peak"}, optional
        How blocks are reduced: their mean (:func:`block_mean`), or ("peak") their
        signed peak (:func:`block_peak`) where it is at least ``PEAK_SIGMA`` sigma and
        their mean elsewhere, with blocks also large enough that the drawn array is no
        larger than the axes on the PNG, so that every source a pixel or a beam
        across shows (the mosaic's: sparse point sources on a large grid).
    figsize : (float, float), optional
        Figure width and height, inches.

    Returns
    -------
    pathlib.Path
        ``out_png``.

    Notes
    -----
    The stretch runs from ``-3 sigma`` to ``max(20 sigma, 0.5 peak)`` through an
    asinh, linear within ``+-2 sigma``, so the noise, faint sources and the bright
    one all show; sigma is always the full-resolution image's. When the restoring
    beam would be smaller than 4 % of the image side it is drawn magnified and
    labelled with the factor. Matplotlib draws the array with nearest-neighbour
    resampling: an array larger than the axes loses whole rows and columns, which
    ``reduce="peak"`` avoids.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import AsinhNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    from matplotlib.ticker import NullLocator

    if reduce not in ("mean", "peak"):
        raise ValueError(f"reduce must be 'mean' or 'peak', got {reduce!r}")
    data, header, path = _read_plane(products, kind)
    bmaj, bmin, bpa = _beam_deg(header, path)
    if not np.isfinite(data).any():
        raise InvalidInputError(f"{path}: every pixel is NaN or infinite")
    if products.get("residual") is not None:
        residual, _, _ = _read_plane(products, "residual")
        sigma = robust_sigma(residual)
        del residual
    else:
        sigma = robust_sigma(data)
    peak = float(np.nanmax(data))
    wcs = _celestial_wcs(header)
    ny, nx = data.shape
    factor = max(1, -(-max(data.shape) // int(max_pixels)))

    sigma_mjy = 1e3 * sigma if sigma > 0 else max(abs(1e3 * peak) * 1e-3, 1e-9)
    vmin = -3.0 * sigma_mjy
    vmax = max(20.0 * sigma_mjy, 0.5 * 1e3 * peak)
    norm = AsinhNorm(linear_width=2.0 * sigma_mjy, vmin=vmin, vmax=vmax)
    colours = colormaps[cmap].with_extremes(bad="0.75")

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    # Axes in full-resolution pixels: the drawn array's block size can change after the layout is known.
    ax = fig.add_subplot(projection=wcs)
    # A placeholder until the block size is known (it depends on the laid-out axes for "peak").
    shown = ax.imshow(np.full((1, 1), np.nan, np.float32), origin="lower", cmap=colours, norm=norm,
                      interpolation="nearest", extent=_block_extent(data.shape, 1))
    ax.coords[0].set_format_unit("hourangle")
    ax.coords[0].set_major_formatter("hh:mm")
    ax.coords[1].set_major_formatter("dd:mm")
    ax.coords[0].set_axislabel("RA (ICRS)")
    ax.coords[1].set_axislabel("Dec (ICRS)")
    ax.coords.grid(color="white", alpha=0.25, linestyle=":")
    bar = fig.colorbar(shown, ax=ax, shrink=0.85, pad=0.02, ticks=_colorbar_ticks(vmin, vmax, sigma_mjy))
    bar.set_label("mJy/beam")
    bar.ax.yaxis.set_major_formatter("{x:g}")
    bar.ax.yaxis.set_minor_locator(NullLocator())

    cell = float(np.mean(np.abs(np.diag(wcs.pixel_scale_matrix))))  # deg per image pixel
    major_px, minor_px = bmaj / cell, bmin / cell
    magnify = 1.0
    if major_px < 0.04 * max(nx, ny):
        magnify = float(math.ceil(0.04 * max(nx, ny) / major_px))
    width, height = major_px * magnify, minor_px * magnify
    centre = (0.04 * nx + width / 2, 0.04 * ny + width / 2)
    angle = beam_angle_pixel_deg(bpa, wcs.pixel_scale_matrix)
    ax.add_patch(Ellipse(centre, width, height, angle=angle, facecolor="none", edgecolor="white",
                         linewidth=1.2))
    label = "beam" if magnify == 1 else f"beam x{magnify:g}"
    ax.text(centre[0] + width / 2 + 0.01 * nx, centre[1], label, color="white", fontsize=8, va="center")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)

    if title is None:
        freq = header.get("CRVAL3")
        freq_text = f"{float(freq) / 1e6:.1f} MHz" if freq is not None else "? MHz"
        title = (f"{path.name}   {freq_text}\n"
                 f"beam {bmaj * 3600:.1f}\" x {bmin * 3600:.1f}\" PA {bpa:.1f} deg   "
                 f"noise {sigma * 1e6:.0f} uJy/beam   peak {peak * 1e3:.1f} mJy/beam")
    ax.set_title(title, fontsize=10)
    if reduce == "peak":
        factor = _fit_to_axes(fig, ax, data.shape, factor)
    shown.set_data(_reduce(data, factor, reduce, sigma=sigma_mjy / 1e3) * 1e3)  # mJy/beam
    shown.set_extent(_block_extent(data.shape, factor))
    del data
    if products.get("pb") is not None:
        pb, _, _ = _read_plane(products, "pb")
        pb_small = block_mean(pb, factor)
        if np.nanmax(pb_small) > 0.5 > np.nanmin(pb_small):
            ax.contour(pb_small, levels=[0.5], colors="cyan", linewidths=0.8, linestyles="--", origin="lower",
                       extent=_block_extent(pb.shape, factor))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _fit_to_axes(fig, ax, shape: tuple[int, int], factor: int) -> int:
    """The least block size, at least ``factor``, that draws a ``shape`` image in no more pixels than the laid-out
    axes hold on the saved PNG (so the nearest-neighbour resampling skips no drawn pixel)."""
    fig.draw_without_rendering()
    box = ax.get_window_extent()  # display pixels at the figure's dpi, as savefig(dpi=fig.dpi) writes
    ny, nx = shape
    return max(factor, math.ceil(nx / max(box.width, 1.0)), math.ceil(ny / max(box.height, 1.0)))
