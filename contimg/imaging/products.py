"""FITS products of an image: one header convention for both imagers, the beam, pbcor.

Every product (:data:`KINDS`) gets the same header keys whichever imager made
it: BUNIT, BMAJ/BMIN/BPA (deg), a SIN projection in ICRS, the band's centre
frequency and width on the FREQ axis, DATE-OBS/MJD-OBS (start of the group),
TELESCOP and OBSGEO-X/Y/Z, so astropy's WCS reads them without warnings and
CASA's ``importfits`` reads them back. ``pb`` is the averaged Airy beam
(:mod:`.primary_beam`) and ``pbcor = image / pb``, blank (NaN) where the beam is
below the cutoff.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from contimg import instrument, naming

#: Products in the order they are listed.
KINDS = ("image", "pbcor", "pb", "residual", "model", "psf")
_BUNIT = {"image": "Jy/beam", "pbcor": "Jy/beam", "residual": "Jy/beam", "psf": "Jy/beam",
          "model": "Jy/pixel", "pb": ""}
#: Backend-specific keys that say nothing a reader needs, or that astropy warns about.
_DROP = ("OBSERVER", "WSCENVIS", "WSCFIELD", "WSCIMGWG", "WSCNORMF", "WSCNVIS", "WSCVDATE", "WSCVERSI")


def product_path(prefix, kind: str) -> Path:
    """``<prefix>-<kind>.fits`` (:func:`contimg.naming.image_product_path`) for a FITS product kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown image product {kind!r}; known: {KINDS}")
    return naming.image_product_path(Path(prefix), kind)


def standard_header(header: fits.Header, *, kind: str, beam_deg: tuple[float, float, float],
                    freq_hz: float, bandwidth_hz: float, start: Time, backend: str) -> fits.Header:
    """``header`` with the keys every product carries (see the module docstring)."""
    h = header.copy()
    for key in _DROP:
        h.remove(key, ignore_missing=True, remove_all=True)
    h.remove("EQUINOX", ignore_missing=True)
    x, y, z = (float(v.to_value("m")) for v in instrument.SITE.geocentric)
    # the geodetic triple too, as WCSLIB derives it from X/Y/Z (it differs from astropy's by 3 m in
    # height, and WCSLIB warns about any other value, or fills it in with a warning when it is absent)
    lon, lat, height = _wcslib_geodetic(x, y, z)
    bmaj, bmin, bpa = (float(v) for v in beam_deg)
    # Every key with its own comment: a key set without one keeps the imager's, which may not fit
    # beside the new value (WSClean's ORIGIN, "W-stacking imager written by Andre Offringa", made
    # astropy warn "Card is too long, comment will be truncated" for each product written).
    cards = {
        "BUNIT": (_BUNIT[kind], "brightness unit"),
        "BTYPE": ("Beam" if kind == "pb" else "Intensity", "primary beam, or sky brightness"),
        "BMAJ": (bmaj, "restoring beam major axis FWHM, deg"),
        "BMIN": (bmin, "restoring beam minor axis FWHM, deg"),
        "BPA": (bpa, "restoring beam position angle, deg"),
        "RADESYS": ("ICRS", "celestial reference frame"),
        "CTYPE3": ("FREQ", "frequency axis: the imaged band"),
        "CRVAL3": (float(freq_hz), "band centre, Hz"),
        "CDELT3": (float(bandwidth_hz), "bandwidth imaged, Hz"),
        "CRPIX3": (1.0, "reference pixel"),
        "CUNIT3": ("Hz", "frequency unit"),
        "SPECSYS": ("TOPOCENT", "frequencies in the observatory frame"),
        "RESTFRQ": (float(freq_hz), "band centre, Hz"),
        "DATE-OBS": (start.utc.isot, "start of the group (UTC)"),
        "MJD-OBS": (float(start.utc.mjd), "start of the group, MJD (UTC)"),
        "TIMESYS": ("UTC", "time scale of DATE-OBS and MJD-OBS"),
        "TELESCOP": (instrument.TELESCOPE_NAME_MS, "telescope"),
        "INSTRUME": (instrument.TELESCOPE_NAME_MS, "instrument"),
        "OBSGEO-X": (x, "observatory geocentric X, m"),
        "OBSGEO-Y": (y, "observatory geocentric Y, m"),
        "OBSGEO-Z": (z, "observatory geocentric Z, m"),
        "OBSGEO-L": (lon, "observatory longitude, deg (WCSLIB)"),
        "OBSGEO-B": (lat, "observatory latitude, deg (WCSLIB)"),
        "OBSGEO-H": (height, "observatory height, m (WCSLIB)"),
        "ORIGIN": (f"dsa110-contimg ({backend})", "pipeline (imager)"),
        "PRODUCT": (kind, "dsa110-contimg image product"),
    }
    for key, (value, comment) in cards.items():
        h[key] = (value, comment)
    return h


def _wcslib_geodetic(x: float, y: float, z: float) -> tuple[float, float, float]:
    """(lon deg, lat deg, height m) of a geocentric position, as WCSLIB's ``obsfix`` computes them."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.Header({"NAXIS": 2, "CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN",
                          "OBSGEO-X": x, "OBSGEO-Y": y, "OBSGEO-Z": z})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        geo = WCS(header).wcs.obsgeo
    return float(geo[3]), float(geo[4]), float(geo[5])


def restoring_beam_deg(image_fits) -> tuple[float, float, float]:
    """(BMAJ, BMIN, BPA) of an imager's restored image, degrees."""
    h = fits.getheader(image_fits)
    try:
        return float(h["BMAJ"]), float(h["BMIN"]), float(h["BPA"])
    except KeyError as exc:
        raise ValueError(f"{image_fits}: no restoring beam in the header ({exc})") from None


def write_products(raw: dict, prefix, *, pb: np.ndarray, pblimit: float, freq_hz: float, bandwidth_hz: float,
                   start: Time, backend: str) -> dict[str, Path]:
    """Standardise an imager's FITS files into ``<prefix>-<kind>.fits`` and add ``pb`` and ``pbcor``.

    Parameters
    ----------
    raw : dict
        {kind: path} of the imager's ``image``, ``residual``, ``model``, ``psf`` (replaced in place when
        they already have the final names).
    prefix : path-like
    pb : numpy.ndarray
        (ny, nx) primary beam on the image grid.
    pblimit : float
        pbcor is blank where ``pb < pblimit``.
    freq_hz, bandwidth_hz : float
        Centre and width of the imaged band, Hz.
    start : astropy.time.Time
        Start of the group (DATE-OBS).
    backend : str

    Returns
    -------
    dict
        {kind: Path} for every kind in :data:`KINDS`.
    """
    beam = restoring_beam_deg(raw["image"])
    out: dict[str, Path] = {}
    image_data = None
    image_header = None
    for kind in ("image", "residual", "model", "psf"):
        with fits.open(raw[kind]) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
            header = standard_header(hdul[0].header, kind=kind, beam_deg=beam, freq_hz=freq_hz,
                                     bandwidth_hz=bandwidth_hz, start=start, backend=backend)
        if data.shape[-2:] != pb.shape:
            raise ValueError(f"{raw[kind]}: image {data.shape[-2:]} does not match the beam grid {pb.shape}")
        path = product_path(prefix, kind)
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        if Path(raw[kind]).resolve() != path.resolve():
            Path(raw[kind]).unlink(missing_ok=True)
        out[kind] = path
        if kind == "image":
            image_data, image_header = data, header
    pb4 = pb.astype(np.float32).reshape(image_data.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        pbcor = np.where(pb4 >= pblimit, image_data / pb4, np.nan).astype(np.float32)
    for kind, data in (("pb", pb4), ("pbcor", pbcor)):
        header = standard_header(image_header, kind=kind, beam_deg=beam, freq_hz=freq_hz,
                                 bandwidth_hz=bandwidth_hz, start=start, backend=backend)
        if kind == "pbcor":
            header["PBLIMIT"] = (float(pblimit), "pbcor is blank where pb is below this")
        path = product_path(prefix, kind)
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        out[kind] = path
    return {kind: out[kind] for kind in KINDS}
