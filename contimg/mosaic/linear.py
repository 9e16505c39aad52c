"""A primary-beam-weighted linear mosaic of group images on a common grid.

Each group ``i`` brings its flat-noise (apparent) image ``I_i``, its own drift-averaged
primary beam ``pb_i`` (the imager's ``-pb.fits``, :mod:`contimg.imaging.primary_beam`) and
its noise ``sigma_i`` (Jy/beam, flat across the apparent image). The pbcor image
``I_i / pb_i`` has noise ``sigma_i / pb_i``; weighting each by its inverse variance gives
the minimum-variance sky estimate

    I_mos = sum_i (pb_i I_i / sigma_i^2) / W,      W = sum_i pb_i^2 / sigma_i^2,

with noise ``1 / sqrt(W)`` (the noise map). Only pixels with ``pb_i >= pblimit`` contribute,
so the grid spans the union of the groups' ``pb >= pblimit`` areas; the image and noise map are blank where
the effective beam ``sqrt(W) x median(sigma_i)`` is below ``pblimit`` (noise above a single group's at
``pb = pblimit``: the mosaic's own pbcor cutoff), the weight map is kept whole.

The grid: a SIN projection (the groups' own) centred on the mean RA of the groups'
centres at their mean Dec, north up, with the groups' pixel size; its extent is the union
of the groups' ``pb >= pblimit`` boxes (``reproject.mosaicking.find_optimal_celestial_wcs``).
An hour of drift at Dec 50 spans ~9 deg of great circle; with the 5.4-deg group images the
farthest pixel is ~6 deg from the centre, where SIN's radial scale is cos(6 deg) = 0.995.

Tool: ``reproject.mosaicking.reproject_and_coadd`` with ``reproject_interp`` (bilinear).
Each group goes in as one stack of two planes ``[pb I / sigma^2, pb^2 / sigma^2]`` (zero
where ``pb < pblimit``) reprojected in one call, so both planes share the coordinate
transformation (most of the cost), summed over groups (``combine_function="sum"``): plane 0
is the numerator, plane 1 is ``W``. The alternative, reproject's own weighted ``"mean"`` of
the pbcor images with ``pb^2 / sigma^2`` as ``input_weights``, reprojects data and weights
separately (twice the transformations) for the same result; the two and the interpolation
orders are measured in ``benchmarks/mosaic.py`` (benchmarks/RESULTS.md, "Mosaic").

Restoring beam: the groups' beams differ with hour angle by a few per cent. The mosaic's
header carries the median BMAJ, BMIN and BPA of its groups and the spread (``BMAJLO``,
``BMAJHI``... in the header and :attr:`MosaicResult.beam_spread_deg`); a linear mosaic's
point-source response is the weighted mix of the groups' beams, so peak fluxes of a source
whose groups' beams differ by ``d`` are uncertain by about ``d / 2``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from contimg.errors import InvalidInputError
from contimg.imaging import products as image_products
from contimg.qa.image_qa import robust_sigma
from contimg.qa.sources import read_plane as qa_read_plane

log = logging.getLogger(__name__)

#: Reprojection functions of ``reproject`` by name; ``interp`` (bilinear) is the pipeline's.
REPROJECT_FUNCTIONS = ("interp", "adaptive", "exact")
#: Mosaic products (FITS) by kind.
FITS_KINDS = ("image", "weight", "noise")


@dataclass(frozen=True)
class GroupImage:
    """One group's image products and noise.

    Attributes
    ----------
    group_id : str
    image : Path
        The flat-noise (apparent) image, ``<prefix>-image.fits``.
    pb : Path
        The group's own drift-averaged primary beam, ``<prefix>-pb.fits``.
    noise_jy : float or None
        Noise of ``image``, Jy/beam (the catalog's ``images.noise_jy``); None: measured
        (:func:`measure_noise`).
    """

    group_id: str
    image: Path
    pb: Path
    noise_jy: float | None = None


@dataclass
class MosaicResult:
    """What :func:`linear_mosaic` wrote and measured."""

    paths: dict[str, Path]
    group_ids: list[str]
    noises_jy: list[float]
    beam_deg: tuple[float, float, float]
    beam_spread_deg: dict[str, tuple[float, float]]
    ra_center_deg: float
    dec_center_deg: float
    shape: tuple[int, int]
    cell_deg: float
    coverage_deg2: float
    noise_center_jy: float
    noise_expected_jy: float
    tool: str
    timings: dict[str, float] = field(default_factory=dict)


def read_plane(path) -> tuple[np.ndarray, fits.Header, WCS]:
    """The 2-D float32 plane, header and celestial WCS of a FITS image (:func:`contimg.qa.sources.read_plane`)."""
    plane, header = qa_read_plane(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return np.asarray(plane, dtype=np.float32), header, wcs


def measure_noise(image, pb, *, pb_threshold: float = 0.5) -> float:
    """Robust rms (1.4826 MAD) of a flat-noise image where its beam is above ``pb_threshold``, Jy/beam.

    Used when the catalog has no noise for a group; the median absolute deviation ignores the
    few pixels the sources occupy.
    """
    data, _, _ = read_plane(image)
    beam, _, _ = read_plane(pb)
    return robust_sigma(data[beam > pb_threshold])


def _common_pixel(cells: list[float]) -> float:
    """The mosaic's pixel: the groups' (their median: the imager derives it from each group's longest
    baseline, so a group with an outrigger flagged may differ slightly; reproject resamples it)."""
    cell = float(np.median(cells))
    if max(cells) - min(cells) > 1e-3 * cell:
        log.info("the groups' pixels differ (%.3f-%.3f arcsec); the mosaic's is their median %.3f arcsec",
                 3600 * min(cells), 3600 * max(cells), 3600 * cell)
    return cell


def mosaic_grid(groups: list[GroupImage], *, pblimit: float) -> tuple[WCS, tuple[int, int], float]:
    """The common grid of the groups (see the module docstring).

    Returns
    -------
    wcs : astropy.wcs.WCS
        2-D celestial, SIN, ICRS.
    shape : (int, int)
        (ny, nx).
    cell_deg : float
        Pixel size, deg (the groups').
    """
    from astropy.coordinates import SkyCoord
    from reproject.mosaicking import find_optimal_celestial_wcs

    cutouts, cells, ras, decs = [], [], [], []
    for g in groups:
        beam, _, wcs = read_plane(g.pb)
        ys, xs = np.nonzero(beam >= pblimit)
        if ys.size == 0:
            raise InvalidInputError(f"{g.pb}: no pixel has pb >= {pblimit}")
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cutouts.append(((int(y1 - y0), int(x1 - x0)), wcs[y0:y1, x0:x1]))
        cells.append(float(np.mean(np.abs(wcs.wcs.cdelt))))
        ras.append(math.radians(float(wcs.wcs.crval[0])))
        decs.append(float(wcs.wcs.crval[1]))
    cell = _common_pixel(cells)
    # circular mean: an hour at RA 23:30 must not be centred at 12h
    ra0 = math.degrees(math.atan2(np.mean(np.sin(ras)), np.mean(np.cos(ras)))) % 360.0
    reference = SkyCoord(ra0, float(np.mean(decs)), unit="deg", frame="icrs")
    wcs, shape = find_optimal_celestial_wcs(cutouts, frame="icrs", projection="SIN", resolution=cell * u.deg,
                                            reference=reference)
    return wcs, tuple(int(n) for n in shape), cell


class _Stacks:
    """The groups' ``[pb I / sigma^2, pb^2 / sigma^2]`` stacks, read one at a time as reproject asks for them
    (12 full-size groups held at once would be 1.4 GB)."""

    def __init__(self, groups: list[GroupImage], noises: list[float], pblimit: float):
        self.groups, self.noises, self.pblimit = groups, noises, pblimit

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        g = self.groups[i]
        image, _, wcs = read_plane(g.image)
        beam, _, _ = read_plane(g.pb)
        if image.shape != beam.shape:
            raise InvalidInputError(f"{g.image}: shape {image.shape} differs from its beam's {beam.shape}")
        inv_var = np.float32(1.0 / self.noises[i] ** 2)
        keep = (beam >= self.pblimit) & np.isfinite(image)
        stack = np.zeros((2, *image.shape), dtype=np.float32)
        np.multiply(beam, image, out=stack[0], where=keep)
        stack[0] *= inv_var
        np.multiply(beam, beam, out=stack[1], where=keep)
        stack[1] *= inv_var
        return stack, wcs


@contextlib.contextmanager
def _quiet(name: str):
    """A library's logger at WARNING for a while (reproject logs each step of each image at INFO)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reproject_function(name: str):
    import reproject

    if name not in REPROJECT_FUNCTIONS:
        raise ValueError(f"unknown reprojection {name!r}; known: {REPROJECT_FUNCTIONS}")
    return getattr(reproject, f"reproject_{name}")


def coadd(groups: list[GroupImage], noises: list[float], wcs: WCS, shape: tuple[int, int], *, pblimit: float,
          reprojection: str = "interp", **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic and its weight map ``W`` on ``(wcs, shape)`` (module docstring), with ``reproject_and_coadd``.

    Parameters
    ----------
    groups, noises : list
        The groups and their noises, Jy/beam.
    wcs, shape
        The output grid (:func:`mosaic_grid`).
    pblimit : float
        Pixels of a group with ``pb < pblimit`` do not contribute.
    reprojection : str
        ``interp`` (default; bilinear unless ``order=`` is given), ``adaptive`` or ``exact``.
    **kwargs
        Passed to the reprojection function (``order``, ``parallel``...).

    Returns
    -------
    image : numpy.ndarray
        (ny, nx) float32 mosaic, Jy/beam; NaN where ``W == 0``.
    weight : numpy.ndarray
        (ny, nx) float32 ``W``, (Jy/beam)^-2.
    """
    from reproject.mosaicking import reproject_and_coadd

    function = _reproject_function(reprojection)
    if reprojection == "interp":
        kwargs.setdefault("order", "bilinear")
        # No round trip (pixel -> sky -> pixel and back) to find pixels whose transformation is not invertible:
        # SIN to SIN within a few degrees of both centres always is, and the check costs 40 % of the time
        # (10 s -> 17 s a full-size group, measured).
        kwargs.setdefault("roundtrip_coords", False)
    with _quiet("reproject") if not log.isEnabledFor(logging.DEBUG) else contextlib.nullcontext():
        summed, _ = reproject_and_coadd(_Stacks(groups, noises, pblimit), wcs, shape_out=(2, *shape),
                                        reproject_function=function, combine_function="sum", **kwargs)
    numerator, weight = summed[0], summed[1]
    # bicubic interpolation rings at a group's pblimit edge (W < 0 by ~0.5 % of its peak there): no coverage
    np.maximum(weight, 0.0, out=weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        image = np.where(weight > 0, numerator / weight, np.nan).astype(np.float32)
    return image, np.asarray(weight, dtype=np.float32)


def _beam(groups: list[GroupImage]) -> tuple[tuple[float, float, float], dict[str, tuple[float, float]]]:
    beams = np.array([image_products.restoring_beam_deg(g.image) for g in groups])
    median = tuple(float(v) for v in np.median(beams, axis=0))
    spread = {k: (float(beams[:, i].min()), float(beams[:, i].max())) for i, k in enumerate(("bmaj", "bmin", "bpa"))}
    return median, spread


def _header(wcs: WCS, template: fits.Header, *, kind: str, beam, spread, groups, start: Time, tool: str,
            pblimit: float) -> fits.Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        h = wcs.to_header()
    # the groups' FREQ and STOKES axes, as their products carry them (PyBDSF reads the frequency there)
    for key in ("CTYPE4", "CRVAL4", "CDELT4", "CRPIX4", "CUNIT4"):
        if key in template:
            h[key] = template[key]
    h = image_products.standard_header(h, kind="image", beam_deg=beam, freq_hz=float(template["CRVAL3"]),
                                       bandwidth_hz=float(template["CDELT3"]), start=start, backend=tool)
    h["BUNIT"] = {"image": "Jy/beam", "weight": "beam2/Jy2", "noise": "Jy/beam"}[kind]
    h["BTYPE"] = ("Intensity" if kind != "weight" else "Weight", "sky brightness, or the sum of pb^2 / sigma^2")
    h["PRODUCT"] = (f"mosaic-{kind}", "dsa110-contimg mosaic product")
    h["PBLIMIT"] = (float(pblimit), "pb cut of the groups and of sqrt(W) x sigma")
    h["NGROUPS"] = (len(groups), "group images combined")
    for i, g in enumerate(groups):
        h[f"GROUP{i + 1:03d}"] = (g.group_id, "group image combined")
    for key, (lo, hi) in spread.items():
        scale = 1.0 if key == "bpa" else 3600.0
        unit = "deg" if key == "bpa" else "arcsec"
        h[f"{key.upper()}LO"] = (lo * scale, f"smallest group {key.upper()}, {unit}")
        h[f"{key.upper()}HI"] = (hi * scale, f"largest group {key.upper()}, {unit}")
    h["COMMENT"] = "BMAJ/BMIN/BPA: the median of the groups' restoring beams (spread: *LO, *HI)"
    return h


def _write_fits(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    """Atomic: a temporary name in the same directory, then rename (a crash leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fits.PrimaryHDU(data.reshape(1, 1, *data.shape), header).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path


#: The mosaic PNG: at most this many drawn pixels a side, at this resolution (dots per inch).
PNG_MAX_PIXELS = 2048
PNG_DPI = 120


def png_figsize(shape: tuple[int, int], *, dpi: int = PNG_DPI, max_width_in: float = 20.0) -> tuple[float, float]:
    """Figure (width, height) in inches for a mosaic of ``shape`` (ny, nx) pixels.

    Wide enough that a mosaic up to ~``max_width_in * dpi`` pixels across is drawn at full resolution
    (at least 8 in), and as tall as its aspect needs: a clock hour's mosaic is ~3 times wider than tall,
    which the default square figure drew in a third of its height.
    """
    ny, nx = shape
    margin_w, margin_h = 3.5, 1.6  # Dec labels and colour bar; title and RA axis, inches
    width = min(max(min(nx, PNG_MAX_PIXELS) / dpi + margin_w, 8.0), max_width_in)
    height = (width - margin_w) * ny / nx + margin_h
    return width, float(min(max(height, 4.0), width))


def centre_noise(image: np.ndarray, weight: np.ndarray, *, box_fraction: float = 0.25) -> tuple[float, float]:
    """(measured, expected) noise in a central box of the mosaic, Jy/beam.

    Measured: the robust rms (1.4826 MAD) of the mosaic's pixels. Expected: the median of
    ``1 / sqrt(W)``, the single-group noise divided by the square root of the effective
    overlap ``sum_i pb_i^2 sigma^2 / sigma_i^2`` the weights give. The box is ``box_fraction``
    of the smaller side, centred on the grid's centre (on the deepest pixel when the centre is not covered).
    """
    ny, nx = image.shape
    half = max(int(box_fraction * min(ny, nx)) // 2, 4)
    cy, cx = ny // 2, nx // 2
    if not weight[cy, cx] > 0:  # a window with a gap in the middle: the deepest point instead
        cy, cx = np.unravel_index(int(np.argmax(weight)), weight.shape)
    region = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
    w = weight[region]
    good = w > 0
    if not good.any():
        return math.nan, math.nan
    return robust_sigma(image[region][good]), float(np.median(1.0 / np.sqrt(w[good])))


def linear_mosaic(groups: list[GroupImage], paths: dict[str, Path], *, pblimit: float = 0.2,
                  reprojection: str = "interp", title: str | None = None, **kwargs) -> MosaicResult:
    """Make and write the linear mosaic of ``groups`` (module docstring).

    Parameters
    ----------
    groups : list of GroupImage
        In time order; at least one.
    paths : dict
        Output path per kind: ``image``, ``weight``, ``noise`` (FITS) and ``png``
        (:func:`contimg.naming.mosaic_product_path`). Each is written atomically.
    pblimit : float
        A group contributes where its ``pb >= pblimit`` (the imaging setting).
    reprojection : str
        ``interp`` (bilinear, the default), ``adaptive`` or ``exact``.
    title : str, optional
        PNG title.
    **kwargs
        Passed to the reprojection function.

    Returns
    -------
    MosaicResult
    """
    from contimg.qa.image_qa import write_thumbnail

    if not groups:
        raise InvalidInputError("no group images to mosaic")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    noises = [float(g.noise_jy) if g.noise_jy and g.noise_jy > 0 and math.isfinite(g.noise_jy)
              else measure_noise(g.image, g.pb) for g in groups]
    timings["noise"] = time.perf_counter() - t0
    if reprojection == "interp":
        kwargs.setdefault("order", "bilinear")
    t = time.perf_counter()
    wcs, shape, cell = mosaic_grid(groups, pblimit=pblimit)
    timings["grid"] = time.perf_counter() - t
    t = time.perf_counter()
    image, weight = coadd(groups, noises, wcs, shape, pblimit=pblimit, reprojection=reprojection, **kwargs)
    timings["coadd"] = time.perf_counter() - t
    t = time.perf_counter()
    # The mosaic's own pbcor cutoff: blank where the effective beam sqrt(W) x (median group noise) is below
    # pblimit, i.e. where the noise exceeds a single group's at pb = pblimit. It leaves out the slivers where
    # only the far edge of one group reaches (on which PyBDSF's rms boxes fail: too few pixels).
    covered = weight >= (pblimit / float(np.median(noises))) ** 2
    image[~covered] = np.nan
    with np.errstate(divide="ignore"):
        noise = np.where(covered, 1.0 / np.sqrt(weight), np.nan).astype(np.float32)
    beam, spread = _beam(groups)
    template = fits.getheader(groups[0].image)
    start = Time(float(template["MJD-OBS"]), format="mjd", scale="utc")
    import reproject

    tool = f"reproject {reproject.__version__} reproject_and_coadd ({reprojection}" + (
        f", {kwargs['order']})" if "order" in kwargs else ")")
    out: dict[str, Path] = {}
    for kind, data in (("image", image), ("weight", weight), ("noise", noise)):
        header = _header(wcs, template, kind=kind, beam=beam, spread=spread, groups=groups, start=start,
                         tool="reproject", pblimit=pblimit)
        out[kind] = _write_fits(Path(paths[kind]), data, header)
    timings["write"] = time.perf_counter() - t
    measured, expected = centre_noise(image, weight)
    ra_c, dec_c = (float(v) for v in wcs.wcs.crval)
    coverage = float(np.count_nonzero(covered)) * cell**2
    if "png" in paths:
        t = time.perf_counter()
        png = Path(paths["png"])
        tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp.png")
        # Block peaks, no larger than the axes: a point source a pixel or a beam across must not fall
        # between the drawn pixels (it did with block means on the 8 x 7 in default figure).
        write_thumbnail({"pbcor": out["image"]}, tmp, kind="pbcor", max_pixels=PNG_MAX_PIXELS, title=title,
                        reduce="peak", figsize=png_figsize(shape), dpi=PNG_DPI)
        os.replace(tmp, png)
        out["png"] = png
        timings["png"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return MosaicResult(paths=out, group_ids=[g.group_id for g in groups], noises_jy=noises, beam_deg=beam,
                        beam_spread_deg=spread, ra_center_deg=ra_c, dec_center_deg=dec_c, shape=shape, cell_deg=cell,
                        coverage_deg2=coverage, noise_center_jy=measured, noise_expected_jy=expected, tool=tool,
                        timings=timings)
