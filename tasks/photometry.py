"""Detected sources and forced photometry in the catalog: tables ``sources`` and ``photometry``.

:func:`record_sources` turns an image's PyBDSF source table (the
``<prefix>-sources.parquet`` beside the FITS, which stays) into ``sources`` rows;
``tasks/imaging.py`` calls it when it writes the Parquet, and the mosaic flow for a
mosaic's. :func:`photometer` measures an image at the reference positions
(:func:`contimg.photometry.forced.measure`), normalises its flux scale
(:func:`contimg.photometry.fluxscale.flux_scale`) and records ``photometry`` rows;
:func:`photometer_group` finds a group's pbcor image by its id,
:func:`photometer_mosaic` is the mosaic flow's entry, and :func:`task_photometry`
is the Prefect task the target flow runs after imaging a group: its failure is
logged and recorded in ``stage_runs``, never the group's (the image is the product).

The reference list is the ``photometry_reference`` setting, or by default
(:func:`default_reference`) the pipeline's own detections: those in mosaics that
cover the image, else those in group images, one reference per source (named
after its first detection).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import query as cq
from catalog import store
from contimg import naming
from contimg.config import Settings, absolute_path
from contimg.errors import InvalidInputError
from contimg.photometry.fluxscale import FluxScale, flux_scale
from contimg.photometry.forced import Forced, measure
from contimg.photometry.reference import Reference, from_detections, read_reference, within
from tasks import records

log = logging.getLogger(__name__)

#: Detections closer than this many beam minor axes (FWHM) are one reference source.
DEDUP_BEAMS = 0.5
#: Not recorded: positions with no measurement at all (not on the image, or blank there).
UNMEASURED = ("outside", "blanked")


# --- sources ----------------------------------------------------------------------------


def _values(table: pa.Table, name: str, n: int) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * n


def _finite(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def sources_rows(found: pa.Table, *, image_path, image_kind: str, obs_date: str, group_id: str | None = None,
                 mosaic_id: str | None = None, mid_mjd: float | None = None) -> list[dict]:
    """``sources`` rows of a PyBDSF source table (:func:`contimg.qa.sources.image_sources`'s, pbcor fluxes)."""
    n = found.num_rows
    col = {name: _values(found, name, n) for name in found.column_names}
    for name in ("sidelobe_suspect", "sidelobe_jy_per_beam", "peak_pixel_jy_per_beam", "pb_response"):
        col.setdefault(name, [None] * n)
    rows = []
    for i in range(n):
        pb = _finite(col["pb_response"][i])
        rms = _finite(col["rms_jy_per_beam"][i])
        rows.append({
            "image_path": str(image_path), "source_id": int(col["source_id"][i]), "image_kind": image_kind,
            "group_id": group_id, "mosaic_id": mosaic_id, "mid_mjd": mid_mjd, "obs_date": obs_date,
            "ra_deg": col["ra_deg"][i], "dec_deg": col["dec_deg"][i],
            "ra_err_arcsec": _finite(3600.0 * col["ra_err_deg"][i]),
            "dec_err_arcsec": _finite(3600.0 * col["dec_err_deg"][i]),
            "peak_jy": _finite(col["peak_flux_jy_per_beam"][i]),
            "peak_err_jy": _finite(col["peak_flux_err_jy_per_beam"][i]),
            "peak_pixel_jy": _finite(col["peak_pixel_jy_per_beam"][i]),
            "flux_jy": _finite(col["total_flux_jy"][i]), "flux_err_jy": _finite(col["total_flux_err_jy"][i]),
            # PyBDSF measured the rms on the flat-noise image: divided by pb like the fluxes
            "local_rms_jy": _finite(rms / pb if rms is not None and pb else rms),
            "snr": _finite(col["snr"][i]), "pb_response": pb,
            "suspect": bool(col["sidelobe_suspect"][i]) if col["sidelobe_suspect"][i] is not None else None,
            "sidelobe_jy": _finite(col["sidelobe_jy_per_beam"][i]),
            "code": col["code"][i], "island_id": col["island_id"][i], "n_gaussians": col["n_gaussians"][i],
            **{k: _finite(col[k][i]) for k in ("major_arcsec", "minor_arcsec", "pa_deg", "deconv_major_arcsec",
                                              "deconv_minor_arcsec", "deconv_pa_deg")},
        })
    return rows


def record_sources(settings: Settings, found: pa.Table, **where) -> int:
    """Append an image's source table to ``sources`` (keywords of :func:`sources_rows`); returns the rows."""
    rows = sources_rows(found, **where)
    store.append(settings.catalog_dir, "sources", rows)
    return len(rows)


# --- the reference list -------------------------------------------------------------------


def image_footprint(image_fits) -> tuple[float, float, float, float]:
    """(centre RA, centre Dec, radius to the farthest corner in deg, beam minor FWHM in arcsec) of an image."""
    from astropy.wcs import WCS

    from contimg.qa.sources import read_plane

    plane, header = read_plane(image_fits)
    wcs = WCS(header).celestial
    ny, nx = plane.shape
    ra0, dec0 = (float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2))
    cra, cdec = wcs.pixel_to_world_values(np.array([0, nx - 1, 0, nx - 1]), np.array([0, 0, ny - 1, ny - 1]))
    c0 = np.array([math.cos(math.radians(dec0)) * math.cos(math.radians(ra0)),
                   math.cos(math.radians(dec0)) * math.sin(math.radians(ra0)), math.sin(math.radians(dec0))])
    cr, cd = np.radians(cra), np.radians(cdec)
    corners = np.column_stack([np.cos(cd) * np.cos(cr), np.cos(cd) * np.sin(cr), np.sin(cd)])
    radius = float(np.degrees(np.arccos(np.clip(corners @ c0, -1, 1))).max())
    bmin = 3600.0 * float(header.get("BMIN", header.get("BMAJ", 0.0)))
    return ra0, dec0, radius, bmin


def default_reference(settings: Settings, image_fits) -> Reference | None:
    """The pipeline's own detections covering an image, one reference per source; None when there are none.

    The sources detected in mosaics that cover the image (``sources`` rows with ``image_kind = 'mosaic'``),
    or, when no mosaic detection lies on it, those detected in group images (so photometry works before the
    first mosaic); sidelobe suspects never. Detections of both kinds within ``DEDUP_BEAMS`` beam minor axes
    are one source, named after its earliest detection whatever its kind (a group's, before any mosaic of
    it exists), so the name a light curve is filed under never changes when the first mosaic arrives; its
    position is its first mosaic detection's (deeper), else its first detection's. Its flux (for the flux
    scale) is its forced photometry in mosaics (:func:`mosaic_fluxes`).
    """
    ra0, dec0, radius, bmin = image_footprint(image_fits)
    # RA window of the footprint (the pipeline's detections all share its declination band)
    cos_dec = math.cos(math.radians(min(abs(dec0) + radius, 89.9)))
    half_ra = radius / cos_dec
    sql = ("SELECT ra_deg, dec_deg, mid_mjd, coalesce(peak_pixel_jy, peak_jy) AS flux, image_path, "
           "image_kind = 'mosaic' AS mosaic FROM sources WHERE suspect IS NOT TRUE AND dec_deg BETWEEN ? AND ?")
    params: list = [dec0 - radius, dec0 + radius]
    if half_ra < 180.0:
        sql += " AND (abs(ra_deg - ?) <= ? OR abs(ra_deg - ?) >= ?)"
        params += [ra0, half_ra, ra0, 360.0 - half_ra]
    try:
        found = cq.query(settings.catalog_dir, sql, params)
    except Exception as err:  # noqa: BLE001 - an empty or new catalog: no default reference
        log.info("no default reference (%s)", err)
        return None
    if found.num_rows == 0:
        return None
    col = {n: np.asarray(found.column(n).to_numpy(zero_copy_only=False)) for n in found.column_names}
    ra, dec = col["ra_deg"].astype(float), col["dec_deg"].astype(float)
    probe = Reference(np.array([""] * found.num_rows, dtype=object), ra, dec, np.full(ra.size, np.nan), "")
    on = within(probe, ra0, dec0, radius)
    if not on.any():
        return None
    mosaic = col["mosaic"].astype(bool) & on
    kind = "mosaic" if mosaic.any() else "group"
    n_images = len(set(col["image_path"][mosaic if mosaic.any() else on]))
    ref = from_detections(ra[on], dec[on], np.nan_to_num(col["mid_mjd"][on].astype(float), nan=np.inf),
                          col["flux"][on].astype(float), radius_arcsec=DEDUP_BEAMS * bmin, preferred=mosaic[on],
                          preferred_only=bool(mosaic.any()),
                          label=f"default: {kind} detections ({n_images} image{'s' * (n_images != 1)})")
    ref.flux_jy = mosaic_fluxes(settings, ref.name)
    return ref


def mosaic_fluxes(settings: Settings, names) -> np.ndarray:
    """Each source's flux for the flux scale of the default reference: the median of its unflagged forced
    peaks in mosaics (``photometry``, before their own flux scale), Jy; NaN where it has none.

    The same estimator as the images it scales (a detection's peak pixel or PyBDSF fit would carry their own
    few-per-cent biases into every image). Before the first mosaic is measured there is none, and images are
    not normalised (``no_reference_fluxes``); the first mosaics set the scale of all that follow.
    """
    out = np.full(len(names), np.nan)
    if len(names) == 0:
        return out
    try:
        found = cq.query(settings.catalog_dir,
                         "SELECT source_name, median(peak_jy / flux_scale) AS flux FROM photometry "
                         "WHERE image_kind = 'mosaic' AND len(flags) = 0 AND snr >= 5 AND flux_scale > 0 "
                         "AND list_contains(?, source_name) GROUP BY source_name", [list(map(str, names))])
    except Exception as err:  # noqa: BLE001 - no photometry yet
        log.info("no mosaic photometry for the reference fluxes (%s)", err)
        return out
    flux = dict(zip(found.column("source_name").to_pylist(), found.column("flux").to_pylist()))
    for i, name in enumerate(names):
        if flux.get(str(name)) is not None:
            out[i] = float(flux[str(name)])
    return out


def load_reference(settings: Settings, image_fits, reference=None) -> Reference | None:
    """``reference`` (a path) or the ``photometry_reference`` setting, read; else :func:`default_reference`."""
    path = reference if reference is not None else settings.photometry_reference
    if path is not None and str(path) != "":
        return read_reference(path)
    return default_reference(settings, image_fits)


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Photometry:
    """One image measured: the reference, the forced photometry (scaled), its flux scale and the rows."""

    image_path: Path
    reference: Reference
    forced: Forced
    scale: FluxScale
    rows: list[dict]


def _epoch(header) -> float | None:
    """MJD (UTC) of an image's header: ``MJD-OBS``, else ``DATE-OBS``; None without either."""
    from astropy.time import Time

    if "MJD-OBS" in header:
        return float(header["MJD-OBS"])
    if "DATE-OBS" in header:
        try:
            return float(Time(str(header["DATE-OBS"]), scale="utc").mjd)
        except ValueError:
            return None
    return None


def image_flags(settings: Settings, group_id: str | None) -> list[str]:
    """Flags of a group's latest image that every measurement on it carries (the variability view skips
    them): ``clean_diverged`` when its clean diverged (``qa_metrics``, stage ``image``:
    :func:`contimg.imaging.backends.clean_stop`)."""
    from catalog import query as cq

    if not group_id:
        return []
    try:
        rows = cq.query(settings.catalog_dir, "SELECT value_text FROM qa_metrics WHERE group_id = ? AND stage = "
                        "'image' AND metric = 'clean_diverged' ORDER BY recorded_at DESC LIMIT 1",
                        [group_id]).to_pylist()
    except Exception:  # noqa: BLE001 - no qa_metrics yet (an image made outside the flows)
        return []
    return ["clean_diverged"] if rows and rows[0]["value_text"] == "true" else []


def photometer(settings: Settings, image_fits, *, image_kind: str, group_id: str | None = None,
               mosaic_id: str | None = None, mid_mjd: float | None = None, pb_fits=None, noise_fits=None,
               reference=None, record: bool = True) -> Photometry | None:
    """Forced photometry of one image at the reference positions, flux-scaled, recorded in ``photometry``.

    Parameters
    ----------
    settings : Settings
    image_fits : path-like
        A group's pbcor image or a mosaic.
    image_kind : {"group", "mosaic"}
    group_id, mosaic_id : str, optional
        What the image is of (recorded).
    mid_mjd : float, optional
        Epoch, MJD (UTC); default the header's ``MJD-OBS`` or ``DATE-OBS`` (the start of the data).
    pb_fits, noise_fits : path-like, optional
        The image's primary beam, or a mosaic's noise map (:func:`contimg.photometry.forced.measure`).
    reference : path-like, optional
        Reference list; default the ``photometry_reference`` setting, else :func:`default_reference`.
    record : bool, optional
        Append the rows of the positions on the image (not ``outside`` or ``blanked``) to ``photometry``.

    Returns
    -------
    Photometry or None
        None when there is no reference source at all (nothing is measured).
    """
    from contimg.qa.sources import read_plane

    image_fits = absolute_path(image_fits)  # as the settings' paths: symbolic links kept, like sources.image_path
    _, header = read_plane(image_fits)
    ref = load_reference(settings, image_fits, reference)
    if ref is None or len(ref) == 0:
        return None
    if mid_mjd is None:
        mid_mjd = _epoch(header)
    if group_id:
        obs_date = naming.group_date(group_id)
    elif mid_mjd is not None:
        from astropy.time import Time

        obs_date = Time(mid_mjd, format="mjd", scale="utc").isot[:10]
    elif record:
        raise InvalidInputError(f"{image_fits}: its epoch is unknown (no MJD-OBS or DATE-OBS in the header, not a "
                                "group's image), so its photometry cannot be recorded; measure it without recording "
                                "(contimg photometry --no-record)")
    else:
        obs_date = None
    forced = measure(image_fits, ref.ra_deg, ref.dec_deg, pb_fits=pb_fits, noise_fits=noise_fits)
    names = settings.photometry_flux_scale_sources
    scale = flux_scale(ref.flux_jy, forced.peak_jy, forced.snr, forced.flags,
                       min_snr=settings.photometry_flux_scale_min_snr,
                       min_sources=settings.photometry_flux_scale_min_sources, names=ref.name,
                       use=[n.strip() for n in names.split(",") if n.strip()] if names else None)
    for name in ("peak_jy", "rms_jy"):
        setattr(forced, name, getattr(forced, name) * scale.factor)
    whole_image = image_flags(settings, group_id) if image_kind == "group" else []
    if whole_image:
        log.warning("%s: every measurement flagged %s", image_fits.name, ", ".join(whole_image))
    rows = []
    for i in range(len(ref)):
        if any(f in UNMEASURED for f in forced.flags[i]):
            continue
        rows.append({
            "image_path": str(image_fits), "source_name": str(ref.name[i]), "image_kind": image_kind,
            "group_id": group_id, "mosaic_id": mosaic_id, "mid_mjd": mid_mjd, "obs_date": obs_date,
            "ra_deg": float(ref.ra_deg[i]), "dec_deg": float(ref.dec_deg[i]),
            **{k: _finite(float(getattr(forced, k)[i])) for k in ("peak_jy", "rms_jy", "snr", "pb_response")},
            "flux_scale": scale.factor, "flux_scale_status": scale.status, "flux_scale_n": scale.n_used,
            "reference_flux_jy": _finite(float(ref.flux_jy[i])), "flags": list(forced.flags[i]) + whole_image,
            "reference": ref.label,
        })
    if record and rows:
        store.append(settings.catalog_dir, "photometry", rows)
    log.info("%s: %d of %d reference positions measured (%s); flux scale %.4f (%s, %d references)",
             image_fits.name, len(rows), len(ref), ref.label, scale.factor, scale.status, scale.n_used)
    return Photometry(image_fits, ref, forced, scale, rows)


def group_products(settings: Settings, group_id: str) -> dict[str, Path]:
    """The pbcor image and primary beam of an imaged group (``ms_index.image_name``, else the naming default).

    Raises
    ------
    InvalidInputError
        A malformed group id, or no pbcor image of the group.
    """
    try:
        naming.parse_group_id(group_id)
    except ValueError:
        raise InvalidInputError(f"{group_id!r} is neither a FITS image nor a group id (YYYY-MM-DDTHH:MM:SS)") from None
    latest = records.latest_ms(settings, group_id) or {}
    prefix = Path(latest["image_name"]) if latest.get("image_name") else naming.image_prefix(settings.products_dir,
                                                                                            group_id)
    pbcor = naming.image_product_path(prefix, "pbcor")
    if not pbcor.is_file():
        raise InvalidInputError(f"group {group_id}: no pbcor image at {pbcor} (is the group imaged? "
                                f"`contimg status` lists the groups)")
    pb = naming.image_product_path(prefix, "pb")
    return {"pbcor": pbcor, "pb": pb if pb.is_file() else None, "mid_mjd": latest.get("mid_mjd")}


def photometer_group(settings: Settings, group_id: str, *, reference=None, record: bool = True) -> Photometry | None:
    """:func:`photometer` of a group's pbcor image, found by its id (epoch: the MS's mid time)."""
    found = group_products(settings, group_id)
    return photometer(settings, found["pbcor"], image_kind="group", group_id=group_id, mid_mjd=found["mid_mjd"],
                      pb_fits=found["pb"], reference=reference, record=record)


def photometer_mosaic(settings: Settings, mosaic_fits, *, mosaic_id: str, mid_mjd: float, noise_fits=None,
                      reference=None, record: bool = True) -> Photometry | None:
    """:func:`photometer` of a mosaic (``image_kind = 'mosaic'``), with its noise map when it has one."""
    return photometer(settings, mosaic_fits, image_kind="mosaic", mosaic_id=mosaic_id, mid_mjd=mid_mjd,
                      noise_fits=noise_fits, reference=reference, record=record)


@task(name="photometry", cache_policy=NO_CACHE, retries=0)
def task_photometry(settings: Settings, group_id: str) -> dict:
    """Prefect task: forced photometry of a group's image just made. Never raises: a failure is logged and
    recorded (``stage_runs`` stage ``photometry``), and the group stays imaged.

    Returns
    -------
    dict
        ``status`` (``measured``, ``skipped``: no reference or the setting off, ``failed``), ``n`` rows,
        ``flux_scale``, ``reference`` and ``error``.
    """
    if not settings.photometry:
        return {"status": "skipped", "n": 0, "error": "photometry setting off"}
    try:
        with records.stage_run(settings, group_id, "photometry") as info:
            done = photometer_group(settings, group_id)
            if done is None:
                info["status"], info["reason"] = "skipped", "no reference sources cover the image"
                return {"status": "skipped", "n": 0, "error": info["reason"]}
            info["detail"] = {"n": len(done.rows), "flux_scale": done.scale.factor, "reference": done.reference.label}
            return {"status": "measured", "n": len(done.rows), "flux_scale": done.scale.factor,
                    "reference": done.reference.label}
    except Exception as err:  # noqa: BLE001 - the image is the product: photometry never fails the group
        log.exception("%s: forced photometry failed (the group stays imaged)", group_id)
        return {"status": "failed", "n": 0, "error": f"{type(err).__name__}: {err}"}
