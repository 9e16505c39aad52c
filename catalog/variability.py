"""Light curves and variability candidates read from the catalog's ``photometry`` table.

Plain reads through :func:`catalog.query.query` (the ``photometry`` view: the
latest row per image and source; the ``variability_at`` macro of ``views.sql``).
The metrics are defined in :mod:`contimg.variability` and docs/catalog.md.
"""

from __future__ import annotations

import math
import os

from catalog import query

#: Columns of a light curve, in order.
LIGHTCURVE_COLUMNS = ("mid_mjd", "peak_jy", "rms_jy", "snr", "pb_response", "flux_scale", "flags", "image_kind",
                      "group_id", "mosaic_id", "image_path")


def source_names(catalog_dir: str | os.PathLike) -> list[dict]:
    """Every source of the ``photometry`` table with its latest reference position.

    Returns
    -------
    list of dict
        ``source_name``, ``ra_deg``, ``dec_deg``, ``n_rows``, sorted by name.
    """
    sql = ("SELECT source_name, arg_max(ra_deg, mid_mjd) AS ra_deg, arg_max(dec_deg, mid_mjd) AS dec_deg, "
           "count(*) AS n_rows FROM photometry GROUP BY source_name ORDER BY source_name")
    return query.query(catalog_dir, sql).to_pylist()


def nearest_source(catalog_dir: str | os.PathLike, ra_deg: float, dec_deg: float) -> tuple[dict, float] | None:
    """The ``photometry`` source nearest to (``ra_deg``, ``dec_deg``) (ICRS, degrees) and its distance, arcsec.

    None when the table has no source with a position.
    """
    best, best_sep = None, math.inf
    ra0, dec0 = math.radians(ra_deg), math.radians(dec_deg)
    for src in source_names(catalog_dir):
        if src["ra_deg"] is None or src["dec_deg"] is None:
            continue
        ra, dec = math.radians(src["ra_deg"]), math.radians(src["dec_deg"])
        # haversine: accurate at arcsecond separations
        h = math.sin((dec - dec0) / 2) ** 2 + math.cos(dec) * math.cos(dec0) * math.sin((ra - ra0) / 2) ** 2
        sep = math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0
        if sep < best_sep:
            best, best_sep = src, sep
    return None if best is None else (best, best_sep)


def light_curve(catalog_dir: str | os.PathLike, source_name: str, *, start_mjd: float | None = None,
                end_mjd: float | None = None, image_kind: str | None = "group") -> list[dict]:
    """The epochs of one source, oldest first: its latest ``photometry`` row per image.

    Parameters
    ----------
    catalog_dir : path-like
    source_name : str
    start_mjd, end_mjd : float, optional
        Only epochs with ``start_mjd <= mid_mjd <= end_mjd`` (MJD, UTC).
    image_kind : {"group", "mosaic"} or None
        Only images of this kind (None: both).

    Returns
    -------
    list of dict
        :data:`LIGHTCURVE_COLUMNS`, flagged rows included (``flags`` non-empty).
    """
    where, params = ["source_name = ?"], [source_name]
    if start_mjd is not None:
        where.append("mid_mjd >= ?")
        params.append(float(start_mjd))
    if end_mjd is not None:
        where.append("mid_mjd <= ?")
        params.append(float(end_mjd))
    if image_kind is not None:
        where.append("image_kind = ?")
        params.append(image_kind)
    sql = (f"SELECT {', '.join(LIGHTCURVE_COLUMNS)} FROM photometry WHERE {' AND '.join(where)} "
           "ORDER BY mid_mjd, image_path")
    return query.query(catalog_dir, sql, params).to_pylist()


def variability(catalog_dir: str | os.PathLike, *, eta_min: float, v_min: float, min_epochs: int,
                min_snr: float, source_name: str | None = None, candidates_only: bool = False,
                start_mjd: float | None = None, end_mjd: float | None = None) -> list[dict]:
    """Rows of the ``variability`` view at these thresholds (``variability_at``), most significant first.

    Parameters
    ----------
    eta_min, v_min, min_epochs, min_snr
        The thresholds of ``is_candidate`` (:class:`contimg.variability.VariabilityThresholds`).
    source_name : str, optional
        Only this source.
    candidates_only : bool
        Only rows with ``is_candidate``.
    start_mjd, end_mjd : float, optional
        The metrics of the epochs in this range only (MJD, UTC; e.g. one night).
    """
    where = []
    params = [float(eta_min), float(v_min), int(min_epochs), float(min_snr),
              0.0 if start_mjd is None else float(start_mjd), 1e6 if end_mjd is None else float(end_mjd)]
    if source_name is not None:
        where.append("source_name = ?")
        params.append(source_name)
    if candidates_only:
        where.append("is_candidate")
    sql = ("SELECT * FROM variability_at(eta_min := ?, v_min := ?, min_epochs := ?, min_snr := ?, "
           "start_mjd := ?, end_mjd := ?)"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY eta DESC NULLS LAST, source_name")
    return query.query(catalog_dir, sql, params).to_pylist()
