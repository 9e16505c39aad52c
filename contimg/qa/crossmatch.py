"""Cross-match of a source list against the true sky: positions, fluxes, completeness, false detections.

The truth is a plain table (this module knows nothing of the simulator): columns
``name``, ``ra_deg``, ``dec_deg``, ``expected_flux_jy`` (the flux density the
pbcor image should show, Jy) and optionally ``expected_snr`` (expected peak /
image noise). With a simulated group the caller builds it from the truth sidecar,
for example::

    import json

    import numpy as np
    from contimg.simulate.truth import load_truth
    from contimg.qa.sources import find_sources, sample_image
    from contimg.qa.crossmatch import crossmatch

    found = find_sources(pbcor_fits, pb_fits=pb_fits)
    side = load_truth(truth_json)
    sky = side["sky"]
    ra = np.array([s["ra_deg"] for s in sky]); dec = np.array([s["dec_deg"] for s in sky])
    # expected_flux(s): the band average of S(nu) PB(theta, nu) over the imaged
    # channels, divided by the PB the image was corrected with (caller's choice).
    flux = np.array([expected_flux(s) for s in sky])
    keep = np.isfinite(sample_image(pbcor_fits, ra, dec))   # inside the pb cutoff
    sigma = side["corruptions"]["noise"]["image_sigma_jy"]  # or the measured image rms
    pb = sample_image(pb_fits, ra, dec)                     # pbcor noise is sigma / PB
    truth = {"name": np.array([s["name"] for s in sky])[keep], "ra_deg": ra[keep],
             "dec_deg": dec[keep], "expected_flux_jy": flux[keep],
             "expected_snr": (flux * pb / sigma)[keep]}
    bmaj, bmin, bpa = json.loads(found.schema.metadata[b"beam_deg"])
    result = crossmatch(found, truth, beam_major_arcsec=3600 * bmaj,
                        beam_minor_arcsec=3600 * bmin, beam_pa_deg=bpa)
    result.write_parquet(qa_dir / "crossmatch.parquet")

The truth should hold every injected source in the footprint, also those below
the detection threshold: a detection of a faint true source is not false.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

#: Edges of the expected-SNR bins of the completeness (the last bin is open).
SNR_BIN_EDGES = (5.0, 10.0, 20.0, 50.0, math.inf)
_MAD_TO_SIGMA = 1.482602218505602


@dataclass(frozen=True)
class CompletenessBin:
    """Truth sources with ``snr_min <= expected_snr < snr_max`` and how many were found."""

    snr_min: float
    snr_max: float
    n_truth: int
    n_matched: int

    @property
    def completeness(self) -> float:
        """Fraction found; NaN for an empty bin."""
        return self.n_matched / self.n_truth if self.n_truth else math.nan


@dataclass(frozen=True)
class CrossMatch:
    """Result of :func:`crossmatch`.

    Attributes
    ----------
    table : pyarrow.Table
        One row per truth source (input order), then one per unmatched
        detection. ``status`` is ``matched``, ``missed`` or ``false``. Truth
        columns keep their names, except ``truth_ra_deg``/``truth_dec_deg``;
        every detected column is prefixed ``det_``. Per match: ``d_ra_arcsec``
        (detected - true, along RA: of RA cos Dec), ``d_dec_arcsec``,
        ``offset_arcsec``, ``offset_beams`` (offset over the beam FWHM along the
        offset's direction, or over the geometric-mean FWHM without a beam PA)
        and ``flux_ratio`` (detected ``flux_column`` over ``expected_flux_jy``).
    n_truth, n_detected, n_matched : int
    match_radius_beams : float
    min_snr : float
        Matches with SNR >= this enter the position and flux statistics; the
        SNR is ``expected_snr`` when the truth has it (no Eddington bias), else
        the detected ``snr``.
    n_stats : int
        Matches entering those statistics.
    median_d_ra_arcsec, median_d_dec_arcsec : float
        Systematic position offset, arcsec.
    median_offset_arcsec, median_offset_beams, p90_offset_beams : float
        Total offset, arcsec and beams.
    flux_ratio_median, flux_ratio_scatter : float
        Median of ``flux_ratio``; 1.4826 x its median absolute deviation.
    completeness_bins : tuple of CompletenessBin
        By expected SNR; empty without ``expected_snr``.
    completeness_above_10sigma : float
        Fraction of truth sources with expected SNR >= 10 that were found (NaN
        without ``expected_snr`` or without such sources).
    false_min_snr : float
    n_false : int
        Detections with ``snr >= false_min_snr`` that match no truth source.
    false_fraction : float
        ``n_false`` over the detections with ``snr >= false_min_snr``.
    n_suspect, n_false_suspect : int
        Of the detections with ``snr >= false_min_snr``: those marked ``sidelobe_suspect``
        (:mod:`contimg.qa.sidelobes`), and those of them that are false (0 without the column).
    false_fraction_unsuspected : float
        False detections over detections with ``snr >= false_min_snr``, both counted
        without the suspects: what a catalog query that leaves suspects out gets.
    """

    table: pa.Table = field(repr=False)
    n_truth: int
    n_detected: int
    n_matched: int
    match_radius_beams: float
    min_snr: float
    n_stats: int
    median_d_ra_arcsec: float
    median_d_dec_arcsec: float
    median_offset_arcsec: float
    median_offset_beams: float
    p90_offset_beams: float
    flux_ratio_median: float
    flux_ratio_scatter: float
    completeness_bins: tuple[CompletenessBin, ...]
    completeness_above_10sigma: float
    false_min_snr: float
    n_false: int
    false_fraction: float
    n_suspect: int = 0
    n_false_suspect: int = 0
    false_fraction_unsuspected: float = math.nan

    def metrics(self) -> dict:
        """The scalar metrics and the completeness bins as a JSON-able dict (NaN and the open bin's inf become None)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("table", "completeness_bins")}
        out["completeness_bins"] = [dict(asdict(b), completeness=b.completeness)
                                    for b in self.completeness_bins]
        return _nan_to_none(out)

    def write_parquet(self, path) -> Path:
        """Write :attr:`table` to Parquet, :meth:`metrics` as JSON in its ``crossmatch_metrics`` metadata."""
        from contimg.qa.sources import write_parquet

        meta = dict(self.table.schema.metadata or {})
        meta[b"crossmatch_metrics"] = json.dumps(self.metrics()).encode()
        return write_parquet(self.table.replace_schema_metadata(meta), path)


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _as_table(data, what: str, required: tuple[str, ...]) -> pa.Table:
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas
        table = pa.Table.from_pandas(data, preserve_index=False)
    else:
        table = pa.table({str(k): np.asarray(v) for k, v in dict(data).items()})
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}; it has {table.column_names}")
    return table


def _f8(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)


def _beam_fwhm_along(pa_offset_rad: np.ndarray, bmaj: float, bmin: float, bpa_deg: float | None) -> np.ndarray:
    """FWHM (units of bmaj) of the beam ellipse along directions at position angle ``pa_offset_rad``."""
    if bpa_deg is None:
        return np.full(np.shape(pa_offset_rad), math.sqrt(bmaj * bmin))
    psi = pa_offset_rad - math.radians(bpa_deg)
    return bmaj * bmin / np.hypot(bmin * np.cos(psi), bmaj * np.sin(psi))


def _pairs(det_ra, det_dec, tru_ra, tru_dec, radius_arcsec):
    """All (truth, detection) pairs closer than ``radius_arcsec``, and their offsets (arcsec)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    if len(det_ra) == 0 or len(tru_ra) == 0:
        empty = np.empty(0)
        return empty.astype(int), empty.astype(int), empty, empty
    det = SkyCoord(det_ra * u.deg, det_dec * u.deg)
    tru = SkyCoord(tru_ra * u.deg, tru_dec * u.deg)
    idet, it, _, _ = tru.search_around_sky(det, radius_arcsec * u.arcsec)
    dra, ddec = tru[it].spherical_offsets_to(det[idet])
    return np.asarray(it), np.asarray(idet), dra.to_value(u.arcsec), ddec.to_value(u.arcsec)


def _one_to_one(order_key: np.ndarray, it: np.ndarray, idet: np.ndarray) -> np.ndarray:
    """Indices into the pairs that form a one-to-one match, closest pairs first."""
    used_t, used_d, keep = set(), set(), []
    for k in np.argsort(order_key, kind="stable"):
        if it[k] in used_t or idet[k] in used_d:
            continue
        used_t.add(it[k])
        used_d.add(idet[k])
        keep.append(k)
    return np.asarray(keep, dtype=int)


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if x.size else math.nan


def crossmatch(detected, truth, *, beam_major_arcsec: float, beam_minor_arcsec: float,
               beam_pa_deg: float | None = None, match_radius_beams: float = 0.5,
               min_snr: float = 10.0, false_min_snr: float = 5.0,
               snr_bin_edges=SNR_BIN_EDGES, flux_column: str = "total_flux_jy") -> CrossMatch:
    """Match detections to true sources one-to-one and measure positions, fluxes and completeness.

    Every (truth, detection) pair closer than ``match_radius_beams`` (in beams,
    see ``offset_beams`` in :class:`CrossMatch`) is a candidate
    (``SkyCoord.search_around_sky``); candidates are taken closest first, each
    truth source and each detection at most once. This is nearest-neighbour
    matching that, unlike ``match_to_catalog_sky`` alone, lets a detection that
    loses its nearest truth source to a closer detection still take its next one.

    Parameters
    ----------
    detected : pyarrow.Table, pandas.DataFrame or mapping of arrays
        Columns ``ra_deg``, ``dec_deg`` (deg), ``total_flux_jy`` (Jy), ``snr``;
        e.g. :func:`contimg.qa.sources.find_sources`.
    truth : pyarrow.Table, pandas.DataFrame or mapping of arrays
        Columns ``name``, ``ra_deg``, ``dec_deg`` (deg), ``expected_flux_jy`` (Jy)
        and optionally ``expected_snr``.
    beam_major_arcsec, beam_minor_arcsec : float
        Synthesized-beam FWHM, arcsec.
    flux_column : str
        Detected flux compared with ``expected_flux_jy``: ``total_flux_jy`` (default), or
        ``peak_flux_jy_per_beam`` for point sources (a free-size Gaussian fit's total flux
        reads high at SNR < 50: +20-70 % at SNR 20-30 in a full DSA-110 image, where the
        peak is within 2 %).
    beam_pa_deg : float, optional
        Beam position angle, deg east of north. Given, offsets are in units of
        the beam FWHM along the offset's direction (the match region is the beam
        ellipse scaled by ``match_radius_beams``); else of the geometric-mean
        FWHM sqrt(major x minor) (a circle).
    match_radius_beams : float, optional
        Largest offset of a match, beams. 0.5: about 4 sigma of the position
        error at SNR 5 (sigma ~ 0.6 FWHM / SNR per axis), and a region of
        ~0.2 beam areas, so chance coincidences are rare at any density a
        continuum image resolves.
    min_snr : float, optional
        Matches at or above this SNR enter the position and flux statistics.
    false_min_snr : float, optional
        Detections at or above this detected SNR count for the false-detection
        fraction.
    snr_bin_edges : sequence of float, optional
        Edges of the expected-SNR bins of the completeness (``inf`` allowed).

    Returns
    -------
    CrossMatch
    """
    det = _as_table(detected, "detected", ("ra_deg", "dec_deg", flux_column, "snr"))
    tru = _as_table(truth, "truth", ("name", "ra_deg", "dec_deg", "expected_flux_jy"))
    bmaj, bmin = float(beam_major_arcsec), float(beam_minor_arcsec)
    if not (bmaj > 0 and bmin > 0):
        raise ValueError(f"beam FWHMs must be positive arcsec, got {bmaj!r} x {bmin!r}")
    n_t, n_d = tru.num_rows, det.num_rows

    # candidate pairs: the beam major axis bounds the ellipse in every direction
    reach = match_radius_beams * (bmaj if beam_pa_deg is not None else math.sqrt(bmaj * bmin))
    it, idet, dra, ddec = _pairs(_f8(det, "ra_deg"), _f8(det, "dec_deg"),
                                 _f8(tru, "ra_deg"), _f8(tru, "dec_deg"), reach)
    offset = np.hypot(dra, ddec)
    beams = offset / _beam_fwhm_along(np.arctan2(dra, ddec), bmaj, bmin, beam_pa_deg)
    close = beams <= match_radius_beams
    it, idet, dra, ddec, offset, beams = (a[close] for a in (it, idet, dra, ddec, offset, beams))
    keep = _one_to_one(beams, it, idet)
    it, idet, dra, ddec, offset, beams = (a[keep] for a in (it, idet, dra, ddec, offset, beams))

    # per-truth arrays (NaN / -1 where missed)
    det_of_truth = np.full(n_t, -1)
    det_of_truth[it] = idet
    per_t = {name: np.full(n_t, np.nan) for name in ("d_ra", "d_dec", "off", "beams")}
    for name, values in zip(per_t, (dra, ddec, offset, beams)):
        per_t[name][it] = values
    matched = det_of_truth >= 0
    false_det = np.setdiff1d(np.arange(n_d), idet)

    det_flux, det_snr = _f8(det, flux_column), _f8(det, "snr")
    exp_flux = _f8(tru, "expected_flux_jy")
    ratio = np.full(n_t, np.nan)
    ratio[matched] = det_flux[det_of_truth[matched]] / exp_flux[matched]
    has_snr = "expected_snr" in tru.column_names
    if has_snr:
        snr_t = _f8(tru, "expected_snr")
    else:
        snr_t = np.full(n_t, np.nan)
        snr_t[matched] = det_snr[det_of_truth[matched]]
    stats = matched & (snr_t >= min_snr)

    # the table: truth rows, then false detections
    rows_t = np.concatenate([np.arange(n_t), np.full(false_det.size, -1)])
    rows_d = np.concatenate([det_of_truth, false_det])
    take_t = pa.array(np.where(rows_t >= 0, rows_t, 0), mask=rows_t < 0)
    take_d = pa.array(np.where(rows_d >= 0, rows_d, 0), mask=rows_d < 0)
    out = {("truth_" + c if c in ("ra_deg", "dec_deg") else c): tru[c].take(take_t) for c in tru.column_names}
    out.update({"det_" + c: det[c].take(take_d) for c in det.column_names})
    status = np.where(rows_t < 0, "false", np.where(rows_d >= 0, "matched", "missed"))
    out["status"] = pa.array(status)
    pad = np.full(false_det.size, np.nan)
    for name, values in (("d_ra_arcsec", per_t["d_ra"]), ("d_dec_arcsec", per_t["d_dec"]),
                         ("offset_arcsec", per_t["off"]), ("offset_beams", per_t["beams"]),
                         ("flux_ratio", ratio)):
        full = np.concatenate([values, pad])
        out[name] = pa.array(full, mask=~np.isfinite(full))
    table = pa.table(out)

    # metrics
    bins = []
    if has_snr:
        edges = [float(e) for e in snr_bin_edges]
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (snr_t >= lo) & (snr_t < hi)
            bins.append(CompletenessBin(lo, hi, int(inside.sum()), int((inside & matched).sum())))
    bright = snr_t >= 10.0 if has_snr else np.zeros(n_t, bool)
    sel_false = det_snr >= false_min_snr
    is_false = np.isin(np.arange(n_d), false_det)
    n_false = int((sel_false & is_false).sum())
    suspect = (np.array(det.column("sidelobe_suspect").to_pylist(), dtype=bool)
               if "sidelobe_suspect" in det.column_names else np.zeros(n_d, bool))
    kept = sel_false & ~suspect
    r = ratio[stats]
    med_r = _median(r)
    return CrossMatch(
        table=table, n_truth=n_t, n_detected=n_d, n_matched=int(matched.sum()),
        match_radius_beams=float(match_radius_beams), min_snr=float(min_snr), n_stats=int(stats.sum()),
        median_d_ra_arcsec=_median(per_t["d_ra"][stats]), median_d_dec_arcsec=_median(per_t["d_dec"][stats]),
        median_offset_arcsec=_median(per_t["off"][stats]), median_offset_beams=_median(per_t["beams"][stats]),
        p90_offset_beams=float(np.percentile(per_t["beams"][stats], 90)) if stats.any() else math.nan,
        flux_ratio_median=med_r,
        flux_ratio_scatter=_MAD_TO_SIGMA * _median(np.abs(r - med_r)) if r.size else math.nan,
        completeness_bins=tuple(bins),
        completeness_above_10sigma=float(matched[bright].mean()) if bright.any() else math.nan,
        false_min_snr=float(false_min_snr), n_false=n_false,
        false_fraction=n_false / int(sel_false.sum()) if sel_false.any() else math.nan,
        n_suspect=int((sel_false & suspect).sum()), n_false_suspect=int((sel_false & suspect & is_false).sum()),
        false_fraction_unsuspected=int((kept & is_false).sum()) / int(kept.sum()) if kept.any() else math.nan,
    )
