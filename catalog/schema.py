"""The typed schema of every catalog table, in one place.

Each table is a list of :class:`Column` (name, Arrow type, whether a row must give
it, the values it may take) plus its *key*: the columns that identify one thing
whose latest row is its current state (``<table>`` view) while every row is kept
as history (``<table>_all`` view).

Every row of every table also carries the common columns :data:`COMMON`:
``event_id`` (uuid4 hex string, unique per row), ``recorded_at`` (UTC timestamp),
``schema_version``, ``code_version`` and the partition key ``obs_date``
(``YYYY-MM-DD``, the observation date, not the date of writing). ``append`` fills
``event_id``, ``recorded_at`` and the versions when the row does not give them.

Evolution: columns may be added (bump the table's version in :data:`VERSIONS`),
never renamed or retyped; readers use ``union_by_name`` so old files read with the
new columns as NULL.

Times are ``timestamp[us, UTC]``; give timezone-aware ``datetime`` objects.
MJD columns are UTC MJD days (float64); angles are degrees; sizes in the names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
STR = pa.string()
F64 = pa.float64()
I32 = pa.int32()
I64 = pa.int64()
BOOL = pa.bool_()
LIST_I32 = pa.list_(pa.int32())
LIST_STR = pa.list_(pa.string())


@dataclass(frozen=True)
class Column:
    """One column of a catalog table.

    Attributes
    ----------
    name : str
        Column name (never renamed once released).
    type : pyarrow.DataType
        Arrow type (never changed once released).
    required : bool
        A row must give a non-null value.
    allowed : frozenset of str, optional
        The only values a string column may take.
    doc : str
        Meaning and unit.
    """

    name: str
    type: pa.DataType
    required: bool = False
    allowed: frozenset[str] | None = None
    doc: str = ""


def _c(name, type_, doc="", *, required=False, allowed=None) -> Column:
    return Column(name, type_, required, frozenset(allowed) if allowed else None, doc)


GROUP_STATES = ("collecting", "growing", "ready", "incomplete", "converting", "converted", "failed", "quarantined")
MS_STAGES = (
    "converted", "calibrated", "applycal_done", "applycal_failed", "imaged", "archived", "failed",
    "waiting_for_cal", "uncalibrated",
)
CAL_TABLE_TYPES = ("K", "KCROSS", "B", "BP", "BA", "G", "GA", "GP", "2G", "T", "FLUX", "SC")
#: ``active``: passed its QA gate and in force; ``rejected``: failed it (never applied);
#: ``retired``: withdrawn by an operator or a later finding (never applied again);
#: ``deprecated``: the version-1 word for retired (still readable, treated as retired).
CAL_STATUS = ("active", "rejected", "retired", "deprecated")
IMAGE_TYPES = ("image", "pb", "pbcor", "residual", "model", "psf", "fits", "png", "sources", "crossmatch", "components")
QA_SUBJECTS = ("group", "ms", "caltable_set", "caltable", "image", "antenna")
RUN_STATUS = ("running", "completed", "failed", "skipped")
#: What an archived product is: the MS, an ``images`` type, a caltable, a group's QA or CASA log
#: directory, a raw subband file.
ARCHIVE_KINDS = ("ms", *IMAGE_TYPES, "caltable", "qa", "logs", "raw")
#: ``verified``: the archived copy matches the source (SHA-256), the source is still in place;
#: ``source_removed``: the same, and the source was deleted; ``failed``: the copy did not verify
#: (the source was kept).
ARCHIVE_STATUS = ("verified", "source_removed", "failed")
#: What a ``sources``/``photometry`` row's image is: one group's image, or a mosaic of several.
IMAGE_KINDS = ("group", "mosaic")
#: ``photometry.flux_scale_status`` (:mod:`contimg.photometry.fluxscale`).
FLUX_SCALE_STATUS = ("applied", "too_few_references", "no_reference_fluxes")
#: ``complete``: every group of the window that the pipeline knows was used; ``partial``: some were not
#: (listed in ``missing`` with ``missing_reason``).
MOSAIC_STATUS = ("complete", "partial")

#: Columns every table has.
COMMON = [
    _c("event_id", STR, "uuid4 hex of this row; filled when absent", required=True),
    _c("recorded_at", TIMESTAMP, "when the row was written (UTC); filled when absent", required=True),
    _c("schema_version", I32, "version of this table's schema the row was written with"),
    _c("code_version", STR, "version of the code that wrote the row"),
    _c("obs_date", STR, "observation date YYYY-MM-DD (partition key)", required=True),
]

TABLES: dict[str, list[Column]] = {
    "groups": [
        _c("group_id", STR, "group id: timestamp of its first subband, YYYY-MM-DDTHH:MM:SS", required=True),
        _c("state", STR, "ingest state", required=True, allowed=GROUP_STATES),
        _c("subbands_present", LIST_I32, "subband numbers present (0..15)"),
        _c("subbands_missing", LIST_I32, "subband numbers absent"),
        _c("n_present", I32, "number of distinct subbands present"),
        _c("n_expected", I32, "number of subbands expected (16)"),
        _c("files", LIST_STR, "subband file paths, in subband order"),
        _c("duplicates", LIST_STR, "extra files claiming a subband already present"),
        _c("first_seen", TIMESTAMP, "earliest file modification time"),
        _c("last_seen", TIMESTAMP, "latest file modification time"),
        _c("reason", STR, "why the group is in this state (incomplete, failed, quarantined)"),
        _c("quarantine_path", STR, "where bad input was moved"),
    ],
    "ms_index": [
        _c("group_id", STR, "group the MS was converted from", required=True),
        _c("path", STR, "Measurement Set path", required=True),
        _c("stage", STR, "processing stage of the MS", required=True, allowed=MS_STAGES),
        _c("writer", STR, "MS writer used (direct-subband, pyuvdata)"),
        _c("start_mjd", F64, "first integration, MJD (UTC)"),
        _c("mid_mjd", F64, "mid time, MJD (UTC)"),
        _c("end_mjd", F64, "last integration, MJD (UTC)"),
        _c("pointing_ra_deg", F64, "phase-centre RA at mid time, deg"),
        _c("pointing_dec_deg", F64, "pointing declination, deg"),
        _c("subbands_missing", LIST_I32, "subbands absent (flagged) in the MS"),
        _c("is_calibrator", BOOL, "a bright calibrator transits in the group"),
        _c("calibrator", STR, "calibrator name when is_calibrator"),
        _c("cal_applied", BOOL, "calibration applied to CORRECTED_DATA"),
        _c("caltable_set", STR, "cal_registry set names applied, comma-separated, K/B set first"),
        _c("image_name", STR, "image product path prefix"),
        _c("error", STR, "error message of a failed stage; why the group waits for calibration "
           "(waiting_for_cal) or stopped waiting (uncalibrated)"),
    ],
    "cal_registry": [
        _c("set_name", STR, "caltable set name", required=True),
        _c("table_path", STR, "caltable path", required=True),
        _c("table_type", STR, "K, B/BP, G...", required=True, allowed=CAL_TABLE_TYPES),
        _c("apply_order", I32, "position in the apply list (0 first)", required=True),
        _c("valid_start_mjd", F64, "validity window start, MJD (UTC)", required=True),
        _c("valid_end_mjd", F64, "validity window end, MJD (UTC)", required=True),
        _c("status", STR, "active, rejected, retired (deprecated: old word for retired)", required=True, allowed=CAL_STATUS),
        _c("interp", STR, "applycal interp, e.g. 'linear' or 'nearest,linearflag'"),
        _c("spwmap", LIST_I32, "applycal spwmap (empty: identity)"),
        _c("gainfield", STR, "applycal gainfield"),
        _c("refant", STR, "reference antenna(s), CASA syntax"),
        _c("calibrator", STR, "calibrator source name"),
        _c("transit_mjd", F64, "calibrator transit, MJD (UTC)"),
        _c("source_ms", STR, "MS the tables were solved from"),
        _c("solver", STR, "solver task and version"),
        _c("solver_params", STR, "solver parameters, JSON"),
        _c("snr_median", F64, "median solution SNR"),
        _c("flagged_fraction", F64, "fraction of solutions flagged, 0..1"),
        _c("quality", STR, "further quality metrics, JSON"),
        _c("notes", STR, "free text (e.g. why deprecated)"),
        # --- version 2: the registry (catalog/cal_registry.py) ---
        _c("mid_mjd", F64, "time the set's solutions refer to (mid time of the source MS), MJD (UTC); "
           "the set's time for lookups"),
        _c("registered_at", TIMESTAMP, "when the set was first registered (UTC); kept by retirement rows"),
        _c("qa_passed", BOOL, "the set passed its QA gate (decided by the solver)"),
        _c("reason", STR, "why the set was rejected or retired"),
        _c("refant_ranking", STR, "reference antenna ranking, JSON (best first)"),
        _c("kb_set", STR, "set whose K/B tables the G tables were solved with (itself when it has K/B)"),
    ],
    "images": [
        _c("path", STR, "image product path", required=True),
        _c("type", STR, "product type", required=True, allowed=IMAGE_TYPES),
        _c("ms_path", STR, "MS imaged"),
        _c("group_id", STR, "group imaged"),
        _c("caltable_set", STR, "cal_registry set_name applied before imaging"),
        _c("backend", STR, "imager (wsclean, tclean)"),
        _c("beam_major_arcsec", F64, "restoring beam major axis FWHM, arcsec"),
        _c("beam_minor_arcsec", F64, "restoring beam minor axis FWHM, arcsec"),
        _c("beam_pa_deg", F64, "restoring beam position angle, deg"),
        _c("noise_jy", F64, "image RMS noise, Jy/beam"),
        _c("peak_jy", F64, "peak brightness, Jy/beam"),
        _c("dynamic_range", F64, "peak / noise"),
        _c("center_ra_deg", F64, "image centre RA, deg"),
        _c("center_dec_deg", F64, "image centre Dec, deg"),
        _c("imsize_x", I32, "pixels along x"),
        _c("imsize_y", I32, "pixels along y"),
        _c("cell_arcsec", F64, "pixel size, arcsec"),
        _c("freq_hz", F64, "reference frequency, Hz"),
        _c("bandwidth_hz", F64, "bandwidth, Hz"),
        _c("integration_s", F64, "integration time, s"),
        _c("pbcor", BOOL, "primary-beam corrected"),
        _c("archived_path", STR, "where the product was archived"),
        # --- version 2: imaging (contimg/imaging, tasks/imaging.py) ---
        _c("data_column", STR, "MS column imaged (DATA or CORRECTED_DATA)"),
        _c("predicted_noise_jy", F64, "thermal noise expected from the visibility and imaging weights, Jy/beam"),
    ],
    "qa_metrics": [
        _c("subject", STR, "what is measured: group id, MS/image path, set name...", required=True),
        _c("subject_type", STR, "kind of subject", required=True, allowed=QA_SUBJECTS),
        _c("metric", STR, "metric name; per-part metrics put the part in it, e.g. 'bp_snr/ant012'",
           required=True),
        _c("value", F64, "numeric value"),
        _c("value_text", STR, "non-numeric value"),
        _c("unit", STR, "unit of value"),
        _c("group_id", STR, "group the subject belongs to"),
        _c("stage", STR, "stage that measured it"),
        _c("passed", BOOL, "meets its threshold"),
        _c("threshold", F64, "threshold applied"),
    ],
    "stage_runs": [
        _c("group_id", STR, "group processed", required=True),
        _c("stage", STR, "stage name (convert, calibrate, applycal, image, archive...)", required=True),
        _c("status", STR, "outcome", required=True, allowed=RUN_STATUS),
        _c("started_at", TIMESTAMP, "start (UTC)", required=True),
        _c("ended_at", TIMESTAMP, "end (UTC)"),
        _c("seconds", F64, "wall-clock duration, s"),
        _c("peak_memory_mb", F64, "peak resident memory of the stage (process high-water mark reset at its start, plus sampled child processes), MB"),
        _c("host", STR, "host name"),
        _c("user", STR, "user name"),
        _c("pid", I64, "process id"),
        _c("flow_run_id", STR, "Prefect flow run id"),
        _c("task_run_id", STR, "Prefect task run id"),
        _c("error", STR, "error of a failed run: type and message"),
        _c("detail", STR, "further detail, JSON"),
    ],
    "archived": [
        _c("source_path", STR, "where the product was (its path in the other tables)", required=True),
        _c("archive_path", STR, "where its verified copy is", required=True),
        _c("kind", STR, "what the product is", required=True, allowed=ARCHIVE_KINDS),
        _c("status", STR, "verified (source kept), source_removed, failed", required=True, allowed=ARCHIVE_STATUS),
        _c("group_id", STR, "group the product belongs to", required=True),
        _c("sha256", STR, "SHA-256 of a file; of a directory: SHA-256 of its sha256sum-format manifest"),
        _c("manifest_path", STR, "the group's sha256sum file (paths relative to the archive root)"),
        _c("n_files", I64, "files in the product"),
        _c("bytes", I64, "apparent size of the product (holes of sparse files included), bytes"),
        _c("keep_source", BOOL, "the source stays where it is (caltables; raw files until their retention)"),
        _c("copied", BOOL, "this run wrote the copy (false: a matching copy was already there)"),
        _c("seconds", F64, "copy and verification wall-clock time, s"),
        _c("host", STR, "host that copied"),
        _c("error", STR, "why the copy failed verification"),
    ],
    "disk_usage": [
        _c("area", STR, "data directory setting measured (products_dir, archive_dir, scratch_dir...)", required=True),
        _c("kind", STR, "top-level directory in it (ms, images, caltables, qa, logs, raw...; '.' for files at its top)",
           required=True),
        _c("path", STR, "directory measured"),
        _c("bytes", I64, "bytes allocated on disk (sparse files count their data only)"),
        _c("apparent_bytes", I64, "sum of file sizes, bytes"),
        _c("n_files", I64, "number of files"),
        _c("fs_total_bytes", I64, "size of the filesystem holding the area, bytes"),
        _c("fs_free_bytes", I64, "free space on it (available to this user), bytes"),
        _c("measured_at", TIMESTAMP, "when it was measured (UTC)"),
    ],
    "sources": [
        _c("image_path", STR, "the image the source was found in (its pbcor FITS)", required=True),
        _c("source_id", I32, "PyBDSF Source_id in that image (0-based)", required=True),
        _c("image_kind", STR, "group or mosaic", required=True, allowed=IMAGE_KINDS),
        _c("group_id", STR, "group imaged (group images)"),
        _c("mosaic_id", STR, "mosaic (mosaics)"),
        _c("mid_mjd", F64, "mid time of the image's data, MJD (UTC)"),
        _c("ra_deg", F64, "ICRS RA of the source centroid, deg"),
        _c("dec_deg", F64, "ICRS Dec of the source centroid, deg"),
        _c("ra_err_arcsec", F64, "1-sigma error along RA (of RA cos Dec), arcsec"),
        _c("dec_err_arcsec", F64, "1-sigma error of Dec, arcsec"),
        _c("peak_jy", F64, "fitted peak brightness, primary-beam corrected, Jy/beam"),
        _c("peak_err_jy", F64, "its 1-sigma error, Jy/beam"),
        _c("peak_pixel_jy", F64, "brightest pbcor pixel within half a beam minor axis, Jy/beam"),
        _c("flux_jy", F64, "integrated flux density, primary-beam corrected, Jy"),
        _c("flux_err_jy", F64, "its 1-sigma error, Jy"),
        _c("local_rms_jy", F64, "local rms (PyBDSF's rms map over the island) divided by pb_response, Jy/beam"),
        _c("snr", F64, "peak over local rms (the same before and after primary-beam correction)"),
        _c("pb_response", F64, "primary-beam response at the source, 0..1 (null for a mosaic)"),
        _c("suspect", BOOL, "sidelobe suspect: fainter than a fraction of a brighter source's PSF sidelobe there"),
        _c("sidelobe_jy", F64, "the brighter sources' PSF sidelobe level at the source, Jy/beam (image units)"),
        _c("code", STR, "PyBDSF code: S single Gaussian, C single in an island with others, M several"),
        _c("island_id", I32, "PyBDSF Isl_id"),
        _c("n_gaussians", I32, "Gaussians grouped into the source"),
        _c("major_arcsec", F64, "fitted FWHM major axis (not deconvolved), arcsec"),
        _c("minor_arcsec", F64, "fitted FWHM minor axis (not deconvolved), arcsec"),
        _c("pa_deg", F64, "fitted position angle, deg east of north"),
        _c("deconv_major_arcsec", F64, "deconvolved FWHM major axis, arcsec (0: unresolved)"),
        _c("deconv_minor_arcsec", F64, "deconvolved FWHM minor axis, arcsec (0: unresolved)"),
        _c("deconv_pa_deg", F64, "deconvolved position angle, deg east of north"),
    ],
    "photometry": [
        _c("image_path", STR, "the image measured (a group's pbcor FITS, or a mosaic)", required=True),
        _c("source_name", STR, "reference source name, e.g. J083412.34+553401.2", required=True),
        _c("image_kind", STR, "group or mosaic", required=True, allowed=IMAGE_KINDS),
        _c("group_id", STR, "group imaged (group images)"),
        _c("mosaic_id", STR, "mosaic (mosaics)"),
        _c("mid_mjd", F64, "epoch: mid time of the image's data, MJD (UTC)"),
        _c("ra_deg", F64, "reference position, ICRS RA, deg"),
        _c("dec_deg", F64, "reference position, ICRS Dec, deg"),
        _c("peak_jy", F64, "primary-beam-corrected peak brightness at the position (the image interpolated there), "
           "flux scale applied, Jy/beam"),
        _c("rms_jy", F64, "local rms at the position, primary-beam corrected, flux scale applied, Jy/beam: the "
           "1-sigma error of peak_jy"),
        _c("snr", F64, "peak_jy / rms_jy"),
        _c("pb_response", F64, "primary-beam response at the position, 0..1 (null without a primary beam)"),
        _c("flux_scale", F64, "factor applied to this image's peak_jy and rms_jy (1.0: not normalised)"),
        _c("flux_scale_status", STR, "applied, too_few_references, no_reference_fluxes", allowed=FLUX_SCALE_STATUS),
        _c("flux_scale_n", I32, "references the flux scale's median is over"),
        _c("reference_flux_jy", F64, "the reference list's flux density of the source, Jy (null: none)"),
        _c("flags", LIST_STR, "empty when good; outside, blanked, low_pb, edge, near_bright, blended"),
        _c("reference", STR, "the reference list: its path, or how the default one was made"),
    ],
    "mosaics": [
        _c("mosaic_id", STR, "window start stem and groups combined, e.g. 2026-11-25T080000-12g", required=True),
        _c("start_mjd", F64, "window start, MJD (UTC); groups starting at or after it", required=True),
        _c("end_mjd", F64, "window end, MJD (UTC); groups starting before it", required=True),
        _c("group_ids", LIST_STR, "groups combined, in time order", required=True),
        _c("n_expected", I32, "groups of the window the pipeline knows (ingested or converted)"),
        _c("missing", LIST_STR, "groups of the window not combined"),
        _c("missing_reason", LIST_STR, "why each of `missing` was not (same order): its stage or ingest state"),
        _c("noise_center_jy", F64, "robust rms (1.4826 MAD) of the mosaic in its central box, Jy/beam"),
        _c("noise_expected_jy", F64, "median of 1/sqrt(weight) in that box, Jy/beam"),
        _c("beam_major_arcsec", F64, "restoring beam written: median of the groups' BMAJ, arcsec"),
        _c("beam_minor_arcsec", F64, "median of the groups' BMIN, arcsec"),
        _c("beam_pa_deg", F64, "median of the groups' BPA, deg"),
        _c("beam_major_spread_arcsec", F64, "largest minus smallest BMAJ of the groups, arcsec"),
        _c("ra_center_deg", F64, "grid centre RA, deg"),
        _c("dec_center_deg", F64, "grid centre Dec, deg"),
        _c("coverage_deg2", F64, "sky area with weight > 0, deg^2"),
        _c("imsize_x", I32, "pixels along x"),
        _c("imsize_y", I32, "pixels along y"),
        _c("cell_arcsec", F64, "pixel size, arcsec"),
        _c("image_path", STR, "mosaic image (Jy/beam, primary-beam corrected)"),
        _c("weight_path", STR, "weight map sum pb^2 / sigma^2"),
        _c("noise_path", STR, "noise map 1/sqrt(weight), Jy/beam"),
        _c("png_path", STR, "thumbnail of the image"),
        _c("sources_path", STR, "PyBDSF source table of the image (Parquet)"),
        _c("n_sources", I32, "sources found in the image"),
        _c("tool", STR, "what combined the groups (library, version, function)"),
        _c("seconds", F64, "wall-clock time to make it, s"),
        _c("status", STR, "complete or partial", required=True, allowed=MOSAIC_STATUS),
    ],
}

#: The key of each table: its latest row per key is the current state.
#: ``ms_index`` is keyed by group: one MS per group (the MS path is derived from the
#: group id by ``contimg.naming``). ``stage_runs`` is pure history (key event_id).
KEYS: dict[str, tuple[str, ...]] = {
    "groups": ("group_id",),
    "ms_index": ("group_id",),
    "cal_registry": ("set_name", "table_path"),
    "images": ("path",),
    "qa_metrics": ("subject", "metric"),
    "stage_runs": ("event_id",),
    "archived": ("source_path",),
    "disk_usage": ("area", "kind"),
    "sources": ("image_path", "source_id"),
    "photometry": ("image_path", "source_name"),
    "mosaics": ("mosaic_id",),
}

#: Schema version per table; bump when adding a column.
VERSIONS: dict[str, int] = {name: 1 for name in TABLES} | {"cal_registry": 2, "images": 2}


def columns(table: str) -> list[Column]:
    """All columns of ``table``: its own, then the common ones."""
    try:
        own = TABLES[table]
    except KeyError:
        raise KeyError(f"unknown catalog table {table!r}; tables: {', '.join(TABLES)}") from None
    return own + COMMON


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of ``table`` (what every file written now contains)."""
    # All nullable in Parquet: "required" is enforced by validation, and a nullable
    # field never conflicts when files of different versions are unified.
    fields = [pa.field(c.name, c.type, metadata={"doc": c.doc}) for c in columns(table)]
    return pa.schema(fields, metadata={"catalog_table": table, "schema_version": str(VERSIONS[table])})


SCHEMAS: dict[str, pa.Schema] = {name: arrow_schema(name) for name in TABLES}
