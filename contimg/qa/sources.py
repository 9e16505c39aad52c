"""Source finding on a primary-beam-corrected image with PyBDSF: one row per source.

:func:`find_sources` runs ``bdsf.process_image`` on a FITS image and returns the
PyBDSF *source list* (``srl``: Gaussians of one island grouped into sources) as a
:class:`pyarrow.Table` with the columns of :data:`SCHEMA`; :func:`sample_image`
reads an image (the primary beam, or the pbcor image for its footprint) at sky
positions.

PyBDSF writes a log file ``<image>.pybdsf.log`` and prints its warnings with ANSI
colours. Here it runs in a temporary output directory (nothing is written next to
the image); its log is copied to ``log_dir`` when one is given, its console
output is suppressed, and its warnings are re-emitted through this module's
logger. Objects that exist before the run are frozen from the garbage collector
during it (PyBDSF runs a full collection after each of its steps).

Timing (2 cores, shared): a 512 x 512 image with ~80 sources takes ~1 s, a
2048 x 2048 one with ~1300 sources ~15 s (~11 s without the adaptive rms box).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.wcs import WCS

from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Default large-scale rms box, in synthesized-beam major-axis FWHMs (box side; the step is a quarter).
RMS_BOX_BEAMS = 20.0

_F8 = pa.float64()
SCHEMA = pa.schema([
    pa.field("source_id", pa.int32(), metadata={"doc": "PyBDSF Source_id (0-based)"}),
    pa.field("island_id", pa.int32(), metadata={"doc": "PyBDSF Isl_id"}),
    pa.field("n_gaussians", pa.int32(), metadata={"doc": "Gaussians grouped into this source"}),
    pa.field("code", pa.string(), metadata={"doc": "S single Gaussian, C single Gaussian in an island with "
                                                   "others, M several Gaussians"}),
    pa.field("ra_deg", _F8, metadata={"unit": "deg", "doc": "ICRS RA of the source centroid"}),
    pa.field("dec_deg", _F8, metadata={"unit": "deg", "doc": "ICRS Dec of the source centroid"}),
    pa.field("ra_err_deg", _F8, metadata={"unit": "deg", "doc": "1-sigma error along RA, as an angle on "
                                                                "the sky (i.e. of RA cos Dec)"}),
    pa.field("dec_err_deg", _F8, metadata={"unit": "deg", "doc": "1-sigma error of Dec"}),
    pa.field("total_flux_jy", _F8, metadata={"unit": "Jy"}),
    pa.field("total_flux_err_jy", _F8, metadata={"unit": "Jy"}),
    pa.field("peak_flux_jy_per_beam", _F8, metadata={"unit": "Jy/beam", "doc": "peak of the fitted model"}),
    pa.field("peak_flux_err_jy_per_beam", _F8, metadata={"unit": "Jy/beam"}),
    pa.field("rms_jy_per_beam", _F8, metadata={"unit": "Jy/beam", "doc": "local rms: mean of the background "
                                                                         "rms map over the source's island"}),
    pa.field("snr", _F8, metadata={"doc": "peak_flux_jy_per_beam / rms_jy_per_beam"}),
    pa.field("major_arcsec", _F8, metadata={"unit": "arcsec", "doc": "fitted FWHM, NOT deconvolved"}),
    pa.field("minor_arcsec", _F8, metadata={"unit": "arcsec", "doc": "fitted FWHM, NOT deconvolved"}),
    pa.field("pa_deg", _F8, metadata={"unit": "deg", "doc": "fitted position angle, east of north"}),
    pa.field("major_err_arcsec", _F8, metadata={"unit": "arcsec"}),
    pa.field("minor_err_arcsec", _F8, metadata={"unit": "arcsec"}),
    pa.field("pa_err_deg", _F8, metadata={"unit": "deg"}),
    pa.field("deconv_major_arcsec", _F8, metadata={"unit": "arcsec", "doc": "deconvolved FWHM; 0 when "
                                                                            "unresolved"}),
    pa.field("deconv_minor_arcsec", _F8, metadata={"unit": "arcsec", "doc": "deconvolved FWHM; 0 when "
                                                                            "unresolved"}),
    pa.field("deconv_pa_deg", _F8, metadata={"unit": "deg"}),
    pa.field("pb_response", _F8, metadata={"doc": "primary-beam response at the source position (bilinear); "
                                                  "null without a primary-beam image"}),
])


def read_plane(image_fits) -> tuple[np.ndarray, fits.Header]:
    """The 2-D plane of a FITS image and its header, after dropping degenerate axes.

    Parameters
    ----------
    image_fits : str or Path
        FITS image; the data of the primary HDU, e.g. axes (RA, Dec, FREQ, STOKES)
        with FREQ and STOKES of length 1.

    Returns
    -------
    data : numpy.ndarray
        Shape ``(ny, nx)`` (Dec, RA order as stored), in the image's unit (BUNIT).
    header : astropy.io.fits.Header

    Raises
    ------
    InvalidInputError
        The file is missing or unreadable, is not 2-D after dropping length-1 axes,
        or has no finite pixel.
    """
    path = Path(image_fits)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such image file")
    try:
        with fits.open(path, memmap=False) as hdul:
            data, header = hdul[0].data, hdul[0].header.copy()
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"{path}: not a readable FITS file ({err})") from err
    if data is None:
        raise InvalidInputError(f"{path}: the primary HDU holds no image")
    plane = np.squeeze(data)
    if plane.ndim != 2:
        raise InvalidInputError(f"{path}: image of shape {data.shape} is not 2-D after dropping "
                                "length-1 axes; give one channel and one Stokes plane")
    if not np.isfinite(plane).any():
        raise InvalidInputError(f"{path}: every pixel is NaN or infinite")
    return plane, header


def sample_image(image_fits, ra_deg, dec_deg) -> np.ndarray:
    """Values of a FITS image at sky positions (bilinear interpolation).

    Parameters
    ----------
    image_fits : str or Path
        Any image :func:`read_plane` accepts, e.g. the primary beam (``-pb.fits``).
    ra_deg, dec_deg : array_like
        ICRS positions, degrees.

    Returns
    -------
    numpy.ndarray
        The interpolated values (image unit); NaN outside the image and where any
        of the four surrounding pixels is NaN. ``np.isfinite(sample_image(pbcor,
        ra, dec))`` is therefore the footprint of a pbcor image, e.g. to keep only
        the truth sources a source finder could have found.
    """
    from scipy.ndimage import map_coordinates

    plane, header = read_plane(image_fits)
    ra = np.atleast_1d(np.asarray(ra_deg, dtype=float))
    dec = np.atleast_1d(np.asarray(dec_deg, dtype=float))
    if ra.size == 0:
        return np.empty(0)
    x, y = WCS(header).celestial.world_to_pixel_values(ra, dec)
    return map_coordinates(np.asarray(plane, dtype=float), [np.asarray(y), np.asarray(x)],
                           order=1, mode="constant", cval=np.nan, prefilter=False)


def default_rms_box(header: fits.Header, shape: tuple[int, int], *,
                    beams: float = RMS_BOX_BEAMS) -> tuple[int, int]:
    """The large-scale rms box ``(box, step)``, pixels: ``beams`` beam-major FWHMs, step a quarter.

    For the DSA-110 beam (~57" major) on 8" pixels that is (142, 35): some 100
    independent beams per box, so the rms is good to a few per cent, and still far
    smaller than the primary beam over which a pbcor image's noise changes. The box
    is capped at a quarter of the smaller image side (``shape``, pixels): PyBDSF
    silently falls back to a constant rms for anything larger.
    """
    bmaj_pix = float(header["BMAJ"]) / abs(float(header["CDELT2"]))
    box = min(max(int(round(beams * bmaj_pix)), 20), min(shape) // 4)
    return box, max(box // 4, 1)


def _beam_deg(path: Path, header: fits.Header) -> tuple[float, float, float]:
    try:
        return float(header["BMAJ"]), float(header["BMIN"]), float(header["BPA"])
    except KeyError as err:
        raise InvalidInputError(f"{path}: no restoring beam in the header ({err.args[0]} missing); "
                                "the source finder needs BMAJ, BMIN, BPA in degrees") from err


@contextlib.contextmanager
def _pybdsf_session():
    """Run PyBDSF quietly and without its garbage-collection cost.

    Logging: its messages stay in its log file only (no console handlers, no
    propagation to the root logger). ``bdsf`` (re)installs its handlers in
    ``mylogger.init_logger`` on every run; that function is wrapped for the
    duration of the run, and the handlers are closed after, so the log file can
    be removed.

    Garbage collection: PyBDSF calls ``gc.collect()`` after each of its 16
    operations, each a full pass over every object of the process (0.17 s apiece
    with astropy and pyarrow loaded, 80 % of the time on a small image). The
    objects that exist before the run are frozen (``gc.freeze``) so those passes
    only visit PyBDSF's own, and thawed after.

    numpy's error modes: PyBDSF calls ``numpy.seterr``, which is process-wide
    (``divide='raise'`` when ``bdsf.gaul2srl`` is first imported, ``all='ignore'``
    in its moment analysis), so a later divide by zero anywhere in the worker
    would raise ``FloatingPointError`` or go unreported. The caller's modes are
    restored on exit, failure included. PyBDSF itself runs with every mode
    ``ignore``: the state it leaves itself in after its first fit, so a run does
    not depend on whether it is the process's first (where a divide by zero in
    its early steps raised), and its numpy warnings stay off the console.
    """
    with np.errstate(all="ignore"):  # entered before bdsf is imported: its import-time seterr is undone too
        from bdsf import mylogger

        with _quiet_pybdsf(mylogger):
            yield


@contextlib.contextmanager
def _quiet_pybdsf(mylogger):
    """PyBDSF's log to its file only, and its garbage collections cheap (see :func:`_pybdsf_session`)."""
    original = mylogger.init_logger

    def file_only(logfilename, quiet=False, debug=False):
        original(logfilename, quiet=quiet, debug=debug)
        logger = logging.getLogger("PyBDSF")
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)

    logger = logging.getLogger("PyBDSF")
    propagate = logger.propagate
    logger.propagate = False
    mylogger.init_logger = file_only
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        mylogger.init_logger = original
        logger.propagate = propagate
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


_WARNING_RE = re.compile(r"^\S.*?::\s*(WARNING|ERROR|CRITICAL)\s*:\s?(.*)$")


def _relay_warnings(log_file: Path, image: Path) -> None:
    """Re-emit the WARNING/ERROR records of a PyBDSF log file through this module's logger."""
    if not log_file.exists():
        return
    record = None
    for line in log_file.read_text(errors="replace").splitlines():
        match = _WARNING_RE.match(line)
        if match:
            if record:
                log.warning("PyBDSF on %s: %s", image.name, "\n".join(record))
            record = [match.group(2)]
        elif record is not None and line.startswith(" "):
            record.append(line.strip())
        elif record is not None:
            log.warning("PyBDSF on %s: %s", image.name, "\n".join(record))
            record = None
    if record:
        log.warning("PyBDSF on %s: %s", image.name, "\n".join(record))


def _source_rows(img, pb_fits) -> dict[str, list]:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for src in img.sources:
        (ra, dec), (ra_err, dec_err) = src.posn_sky_centroid, src.posn_sky_centroidE
        size, size_err, deconv = src.size_sky, src.size_skyE, src.deconv_size_sky
        peak, rms = float(src.peak_flux_max), float(src.rms_isl)
        row = dict(
            source_id=int(src.source_id), island_id=int(src.island_id), n_gaussians=int(src.ngaus),
            code=str(src.code), ra_deg=float(ra), dec_deg=float(dec),
            ra_err_deg=float(ra_err), dec_err_deg=float(dec_err),
            total_flux_jy=float(src.total_flux), total_flux_err_jy=float(src.total_fluxE),
            peak_flux_jy_per_beam=peak, peak_flux_err_jy_per_beam=float(src.peak_flux_maxE),
            rms_jy_per_beam=rms, snr=peak / rms if rms > 0 else float("nan"),
            major_arcsec=3600.0 * size[0], minor_arcsec=3600.0 * size[1], pa_deg=float(size[2]),
            major_err_arcsec=3600.0 * size_err[0], minor_err_arcsec=3600.0 * size_err[1],
            pa_err_deg=float(size_err[2]),
            deconv_major_arcsec=3600.0 * deconv[0], deconv_minor_arcsec=3600.0 * deconv[1],
            deconv_pa_deg=float(deconv[2]), pb_response=None,
        )
        for name, value in row.items():
            cols[name].append(value)
    if pb_fits is not None and cols["ra_deg"]:
        cols["pb_response"] = [None if not np.isfinite(v) else float(v)
                               for v in sample_image(pb_fits, cols["ra_deg"], cols["dec_deg"])]
    return cols


def write_parquet(table: pa.Table, path) -> Path:
    """Write a table (with its schema metadata) to Parquet atomically: temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def find_sources(image_fits, *, pb_fits=None, out_parquet=None, thresh_pix: float = 5.0,
                 thresh_isl: float = 3.0, rms_box: tuple[int, int] | None = None,
                 adaptive_rms_box: bool = True, ncores: int | None = 1, log_dir=None,
                 **bdsf_options) -> pa.Table:
    """Find and measure the sources of a primary-beam-corrected image with PyBDSF.

    Parameters
    ----------
    image_fits : str or Path
        The pbcor image: FITS, BUNIT Jy/beam, restoring beam BMAJ/BMIN (deg) and BPA
        (deg east of north) in the header, one frequency and one Stokes plane
        (degenerate axes are fine). NaN pixels (outside the primary-beam cutoff)
        are blanked by PyBDSF and never part of an island.
    pb_fits : str or Path, optional
        Primary-beam image; its value at each source (bilinear) fills ``pb_response``.
    out_parquet : str or Path, optional
        Write the table here as well (atomically).
    thresh_pix : float, optional
        Island peak threshold, in units of the local rms.
    thresh_isl : float, optional
        Island boundary threshold, in units of the local rms.
    rms_box : (int, int), optional
        Large-scale ``(box, step)`` of the background rms/mean maps, pixels. Default
        :func:`default_rms_box` (20 beam FWHMs, at most a quarter of the image,
        step a quarter of the box). The rms map is always 2-D (``rms_map=True``):
        a pbcor image's noise grows as 1 / PB, which PyBDSF's own significance
        test may miss.
    adaptive_rms_box : bool, optional
        Shrink the rms box near bright sources (PyBDSF derives the small box), so
        sidelobes around them raise the local rms instead of making detections.
    ncores : int or None, optional
        Processes PyBDSF may use to fit islands; None means all. One by
        default: a pipeline worker runs several groups at once. (PyBDSF forks a
        small process pool for the rms map whatever this is.)
    log_dir : str or Path, optional
        Keep PyBDSF's log here as ``<image name>.pybdsf.log``; by default it is
        deleted (its warnings are always relayed to this module's logger).
    **bdsf_options
        Any other ``bdsf.process_image`` option (e.g. ``rms_box_bright``).

    Returns
    -------
    pyarrow.Table
        One row per PyBDSF *source* (Gaussians of an island grouped into
        sources, not one row per Gaussian), columns and units in :data:`SCHEMA`;
        sizes are fitted (convolved with the beam) in ``major_arcsec``..., and
        deconvolved in ``deconv_*``. The schema metadata holds ``image``,
        ``pb_image``, ``pybdsf_version``, ``catalog_type`` (``srl``), ``beam_deg``
        (BMAJ, BMIN, BPA in deg, JSON) and the ``pybdsf_options`` passed (JSON).
        Empty when nothing is found.

    Raises
    ------
    InvalidInputError
        Missing or unreadable file, not 2-D after dropping length-1 axes, every
        pixel NaN, no restoring beam in the header, or PyBDSF refusing the image
        (e.g. a constant image: "unphysical rms"); the message names the file.
    """
    path = Path(image_fits).resolve()
    plane, header = read_plane(path)
    beam = _beam_deg(path, header)
    if pb_fits is not None:
        read_plane(pb_fits)  # fail early, naming the file
    options = dict(thresh="hard", thresh_pix=float(thresh_pix), thresh_isl=float(thresh_isl),
                   rms_box=tuple(rms_box) if rms_box else default_rms_box(header, plane.shape),
                   rms_map=True, adaptive_rms_box=bool(adaptive_rms_box), ncores=ncores)
    options.update(bdsf_options)
    del plane

    with tempfile.TemporaryDirectory(prefix="pybdsf-") as outdir, _pybdsf_session():
        import bdsf  # within the session: its first import sets numpy's error modes

        try:
            img = bdsf.process_image(str(path), quiet=True, interactive=False, outdir=outdir, **options)
        except RuntimeError as err:
            raise InvalidInputError(f"{path}: PyBDSF could not process the image ({err})") from err
        finally:
            log_file = Path(outdir) / f"{path.name}.pybdsf.log"
            _relay_warnings(log_file, path)
            if log_dir is not None and log_file.exists():
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log_file, Path(log_dir) / log_file.name)
        table = pa.table(_source_rows(img, pb_fits), schema=SCHEMA)

    table = table.replace_schema_metadata({
        "image": str(path),
        "pb_image": "" if pb_fits is None else str(Path(pb_fits).resolve()),
        "pybdsf_version": bdsf.__version__,
        "catalog_type": "srl",
        "beam_deg": json.dumps(beam),
        "pybdsf_options": json.dumps(options, default=str),
    })
    log.info("%s: %d sources above %.1f sigma (rms box %s)", path.name, table.num_rows,
             thresh_pix, options["rms_box"])
    if out_parquet is not None:
        write_parquet(table, out_parquet)
    return table


def peak_pixels(image_fits, ra_deg, dec_deg, *, radius_pix: float) -> np.ndarray:
    """The largest finite pixel within ``radius_pix`` of each position (NaN where there is none).

    For an unresolved source in Jy/beam this is its flux density, to within the
    pixelisation (< 2 % at 5 pixels across the beam): the estimator that does not
    depend on a fitted size.
    """
    plane, header = read_plane(image_fits)
    x, y = WCS(header).celestial.world_to_pixel_values(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg))
    r = int(np.ceil(radius_pix))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = dx**2 + dy**2 <= radius_pix**2
    out = np.full(len(x), np.nan)
    ny, nx = plane.shape
    for i, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        ys, xs = yi + dy[disk], xi + dx[disk]
        ok = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
        values = plane[ys[ok], xs[ok]]
        values = values[np.isfinite(values)]
        if values.size:
            out[i] = float(values.max())
    return out


def pbcor_sources(table: pa.Table, *, pblimit: float, pbcor_fits=None) -> pa.Table:
    """Sources found on the flat-noise image, with fluxes divided by the primary beam at each
    (``pb_response``), and those where the beam is below ``pblimit`` dropped.

    With ``pbcor_fits``, a column ``peak_pixel_jy_per_beam`` holds the brightest pbcor
    pixel within half a beam minor axis of each source (:func:`peak_pixels`): PyBDSF's
    fitted peak reads ~7 % low in a full DSA-110 image, whose sources it fits with
    Gaussians wider than the restoring beam (the PSF's plateau in the residual).

    PyBDSF's rms map fails on a pbcor image whose blank (NaN) corners fill whole rms boxes
    (a divide by zero in its box statistics on a full-size image), and its thresholds are
    simplest on the flat noise: so sources are found on the image and corrected here.
    """
    pb = np.array(table.column("pb_response").to_pylist(), dtype=float)
    keep = np.isfinite(pb) & (pb >= pblimit)
    out = table.filter(pa.array(keep))
    pb = pb[keep]
    for name in ("total_flux_jy", "total_flux_err_jy", "peak_flux_jy_per_beam", "peak_flux_err_jy_per_beam"):
        i = out.schema.get_field_index(name)
        values = np.array(out.column(name).to_pylist(), dtype=float) / pb
        out = out.set_column(i, out.schema.field(i), pa.array(values))
    if pbcor_fits is not None:
        plane, header = read_plane(pbcor_fits)
        radius = max(1.0, 0.5 * float(header["BMIN"]) / abs(float(header["CDELT2"])))
        peaks = peak_pixels(pbcor_fits, out.column("ra_deg").to_numpy(), out.column("dec_deg").to_numpy(),
                            radius_pix=radius)
        out = out.append_column(pa.field("peak_pixel_jy_per_beam", pa.float64(), metadata={
            "doc": "brightest pbcor pixel within half a beam minor axis of the source, Jy/beam"}), pa.array(peaks))
    return out.replace_schema_metadata({**(table.schema.metadata or {}), b"pbcor": b"fluxes divided by pb_response"})



def image_sources(products: dict, *, pblimit: float, sidelobe_fraction: float | None = None) -> pa.Table:
    """The source table of an image's products: found on the image, sidelobe suspects marked, pbcor fluxes.

    Parameters
    ----------
    products : dict
        Paths by kind: ``image`` (sources are found on its flat noise), ``psf`` (sidelobe
        suspects, :mod:`contimg.qa.sidelobes`), ``pb`` and ``pbcor``.
    pblimit : float
        Sources where the primary beam is below this are dropped.
    sidelobe_fraction : float, optional
        :func:`contimg.qa.sidelobes.flag_sidelobe_suspects`'s ``fraction`` (its default if None).
    """
    from contimg.qa.sidelobes import DEFAULT_FRACTION, flag_sidelobe_suspects

    found = find_sources(products["image"], pb_fits=products["pb"])
    found = flag_sidelobe_suspects(found, products["image"], products["psf"],
                                   fraction=DEFAULT_FRACTION if sidelobe_fraction is None else sidelobe_fraction)
    return pbcor_sources(found, pblimit=pblimit, pbcor_fits=products["pbcor"])
