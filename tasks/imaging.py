"""Imaging as the pipeline runs it: image a group, measure the image, record every product.

:func:`image_group` (called by ``contimg image`` and the Prefect task
:func:`task_image`) images an MS with :func:`contimg.imaging.image.image_ms`,
measures the products (:mod:`contimg.qa.image_qa`), finds sources with PyBDSF
and, when the simulator's truth sidecar of the group is found, cross-matches
them (:mod:`contimg.qa.crossmatch`). It records one ``images`` row per product,
the sources in ``sources``, the metrics in ``qa_metrics``, the MS as ``imaged`` in
``ms_index`` and the stage in ``stage_runs``.

An image written elsewhere (``contimg image --out DIR`` with a directory other than
naming's) is an operator's ad-hoc product: it is measured but not recorded, so the
catalog keeps naming the pipeline's image of the group (``ms_index.image_name``, the
``images`` rows the mosaic and photometry read) and the group's stage is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import cal_registry, store
from contimg import naming
from contimg.instrument import antenna_name
from contimg.config import Settings
from contimg.imaging.image import ImageResult, ImagingOptions, image_ms
from tasks import records
from tasks.calibration import group_id_of, solve_id_now
from tasks.events import GROUP_IMAGED, emit_group_event
from tasks.retry import retry_transient

log = logging.getLogger(__name__)


@dataclass
class ImagedGroup:
    """What :func:`image_group` made: the imaging result, its metrics, the source tables."""

    group_id: str
    result: ImageResult
    metrics: dict
    thumbnail: Path
    sources: Path | None = None
    crossmatch: Path | None = None
    crossmatch_metrics: dict = field(default_factory=dict)
    #: False for an ad-hoc image (written outside naming's image directory): nothing went to the catalog
    recorded: bool = True


def _source_qa(settings: Settings, group_id: str, ms: Path, result: ImageResult, noise_jy: float,
               prefix: Path, *, mid_mjd: float | None = None, record: bool = True
               ) -> tuple[Path, Path | None, dict]:
    """PyBDSF sources of the image (pbcor fluxes), also as ``sources`` rows unless ``record`` is False (an
    ad-hoc image's sources are not the group's measurements), and their cross-match with the truth when
    there is one."""
    from contimg.qa.crossmatch import crossmatch
    from contimg.qa.sources import image_sources, write_parquet
    from tasks.photometry import record_sources

    products = result.products
    sources_path = naming.image_product_path(prefix, "sources")
    found = image_sources(products, pblimit=settings.imaging_pblimit,
                          sidelobe_fraction=settings.imaging_sidelobe_fraction)
    write_parquet(found, sources_path)
    if record:
        record_sources(settings, found, image_path=products["pbcor"], image_kind="group", group_id=group_id,
                       mid_mjd=mid_mjd, obs_date=naming.group_date(group_id))
    truth = naming.truth_path(settings.incoming_dir, group_id)
    if not truth.exists():
        return sources_path, None, {}
    from contimg.qa.truth_sky import truth_table

    bmaj, bmin, bpa = result.restoring_beam_arcsec
    match = crossmatch(found, truth_table(truth, ms, products, noise_jy=noise_jy), beam_major_arcsec=bmaj,
                       beam_minor_arcsec=bmin, beam_pa_deg=bpa, min_snr=20.0, flux_column="peak_pixel_jy_per_beam")
    match_path = naming.image_product_path(prefix, "crossmatch")
    match.write_parquet(match_path)
    return sources_path, match_path, match.metrics()


def is_pipeline_prefix(settings: Settings, group_id: str, prefix) -> bool:
    """True when ``prefix`` is naming's image prefix of the group: the product the catalog records.

    Anything else (``contimg image --out DIR`` into a scratch directory) is ad hoc and must not replace
    the pipeline's product in the catalog.
    """
    return Path(prefix).resolve() == naming.image_prefix(settings.products_dir, group_id).resolve()


def image_group(settings: Settings, ms, *, options: ImagingOptions | None = None, out_dir=None,
                find_sources: bool | None = None) -> ImagedGroup:
    """Image one group's MS, measure and record it.

    Parameters
    ----------
    settings : Settings
    ms : path-like
    options : ImagingOptions, optional
        Default: from the settings (data column ``corrected``).
    out_dir : path-like, optional
        Products here instead of ``naming.image_dir``. Unless it is that directory, the image is ad hoc:
        measured and written (a self-calibration table too, under ``out_dir``) but nothing is recorded in
        the catalog (no ``images``, ``sources``, ``qa_metrics``, ``ms_index``, ``stage_runs`` or
        ``cal_registry`` rows), so the pipeline's product of the group stays the one the catalog names.
    find_sources : bool, optional
        Run PyBDSF (and the truth cross-match); default the ``imaging_find_sources`` setting.

    Returns
    -------
    ImagedGroup
        ``recorded`` says whether the catalog was written.
    """
    from contimg.qa.image_qa import image_metrics, write_thumbnail

    ms = Path(ms).resolve()
    group_id = group_id_of(ms)
    options = options or ImagingOptions.from_settings(settings)
    stem = naming.group_stem(group_id)
    prefix = (Path(out_dir).resolve() / stem) if out_dir else naming.image_prefix(settings.products_dir, group_id)
    record = is_pipeline_prefix(settings, group_id, prefix)
    # An ad-hoc run keeps everything it writes beside its image, its self-calibration table included.
    root = settings.products_dir if record else prefix.parent
    work = Path(settings.scratch_dir) / "image" / stem
    log_dir = naming.casa_log_path(root, group_id, "image").parent
    previous = records.latest_ms(settings, group_id) or {}
    solve_id = solve_id_now()
    timing = records.stage_run(settings, group_id, "image") if record else contextlib.nullcontext({})
    with timing as info:
        result = image_ms(ms, prefix, options=options, work_dir=work, log_dir=log_dir,
                          selfcal_table=naming.caltable_path(root, group_id, "SC", solve_id),
                          prior_model=previous_sky_model(settings, group_id, ms) if options.selfcal else None)
        metrics = image_metrics(result.products)
        metrics["predicted_noise_jy"] = result.predicted_noise_jy
        metrics["noise_over_predicted"] = metrics["noise_inner_jy"] / result.predicted_noise_jy
        thumbnail = write_thumbnail(result.products, naming.image_product_path(prefix, "png"),
                                    title=f"{group_id} ({result.backend}, {result.data_column})")
        sources = match = None
        match_metrics: dict = {}
        if settings.imaging_find_sources if find_sources is None else find_sources:
            sources, match, match_metrics = _source_qa(settings, group_id, ms, result, metrics["noise_inner_jy"],
                                                       prefix, mid_mjd=previous.get("mid_mjd"), record=record)
        clean = result.imager.get("clean") or {}
        if clean.get("diverged"):
            from contimg.imaging.backends import divergence_warning

            log.warning("%s: %s", group_id, divergence_warning(clean))
        done = ImagedGroup(group_id, result, metrics, thumbnail, sources, match, match_metrics, recorded=record)
        if not record:
            log.info("%s: ad-hoc image %s not recorded (the catalog keeps %s)", group_id, prefix,
                     previous.get("image_name"))
            return done
        _record_image(settings, done, ms=ms, previous=previous, solve_id=solve_id, prefix=prefix)
        info["detail"] = {"backend": result.backend, "timings": result.timings, "noise_jy": metrics["noise_inner_jy"],
                          "selfcal": result.selfcal.get("status")}
    return done


def _record_image(settings: Settings, done: ImagedGroup, *, ms: Path, previous: dict, solve_id: str,
                  prefix: Path) -> None:
    """The catalog rows of the pipeline's image of a group: ``images`` (one per product), ``qa_metrics``,
    the self-calibration set, and ``ms_index`` (stage ``imaged``, ``image_name`` the prefix)."""
    group_id, result, metrics = done.group_id, done.result, done.metrics
    caltable_set = previous.get("caltable_set") if result.data_column == "CORRECTED_DATA" else None
    selfcal_set = _record_selfcal(settings, group_id, ms, result, solve_id)
    if selfcal_set:
        caltable_set = ",".join(s for s in (caltable_set, selfcal_set) if s)
    common = {"ms_path": str(ms), "group_id": group_id, "obs_date": naming.group_date(group_id),
              "caltable_set": caltable_set, "backend": result.backend,
              "beam_major_arcsec": metrics["beam_major_arcsec"], "beam_minor_arcsec": metrics["beam_minor_arcsec"],
              "beam_pa_deg": metrics["beam_pa_deg"], "noise_jy": metrics["noise_inner_jy"],
              "peak_jy": metrics["peak_jy"], "dynamic_range": metrics["dynamic_range"],
              "center_ra_deg": result.grid.ra_deg, "center_dec_deg": result.grid.dec_deg,
              "imsize_x": result.grid.imsize, "imsize_y": result.grid.imsize,
              "cell_arcsec": result.grid.cell_arcsec, "freq_hz": result.freq_hz,
              "bandwidth_hz": result.bandwidth_hz, "integration_s": result.integration_s,
              "data_column": result.data_column, "predicted_noise_jy": result.predicted_noise_jy}
    rows = [{**common, "path": str(path), "type": kind, "pbcor": kind == "pbcor"}
            for kind, path in result.products.items()]
    rows.append({**common, "path": str(done.thumbnail), "type": "png", "pbcor": True})
    for kind, path in (("sources", done.sources), ("crossmatch", done.crossmatch)):
        if path is not None:
            rows.append({**common, "path": str(path), "type": kind, "pbcor": True})
    store.append(settings.catalog_dir, "images", rows)
    subject = str(result.products["pbcor"])
    qa = {**metrics, **{f"imaging/{k}": v for k, v in result.timings.items()},
          "chan_avg": result.chan_avg, "smearing_loss": result.smearing_loss,
          "flagged_fraction": result.flagged_fraction,
          "subtracted_sources": [s["name"] for s in result.subtracted_sources],
          "bright_sources": result.bright_sources.get("sources", [])}
    clean = result.imager.get("clean") or {}
    if clean:
        qa.update({"clean_diverged": clean["diverged"], "clean_stop_peak_jy": clean["stop_peak_jy"],
                   "clean_threshold_jy": clean["threshold_jy"]})
    qa.update({f"truth/{k}": v for k, v in done.crossmatch_metrics.items() if k != "completeness_bins"})
    store.append(settings.catalog_dir, "qa_metrics", records.qa_rows(subject, "image", group_id, "image", qa))
    store.append(settings.catalog_dir, "ms_index", [{
        **{k: previous.get(k) for k in ("writer", "start_mjd", "mid_mjd", "end_mjd", "pointing_ra_deg",
                                         "pointing_dec_deg", "subbands_missing", "is_calibrator", "calibrator",
                                         "cal_applied", "caltable_set")},
        "group_id": group_id, "obs_date": naming.group_date(group_id), "path": str(ms), "stage": "imaged",
        "image_name": str(prefix)}])


def previous_sky_model(settings: Settings, group_id: str, ms: Path) -> list | None:
    """The sky model (``components`` product) of the latest imaged group that started at most
    ``selfcal_prior_max_gap_s`` before this one at the same pointing, or None (the first group after a gap)."""
    from datetime import timedelta

    from catalog import query as cq
    from contimg.calibration.selfcal import read_components
    from contimg.conversion.inspect import ms_summary

    if settings.selfcal_prior_max_gap_s <= 0:
        return None
    start = naming.parse_group_id(group_id)
    earliest = naming.group_id_from_datetime(start - timedelta(seconds=settings.selfcal_prior_max_gap_s))
    try:
        rows = cq.query(settings.catalog_dir, "SELECT group_id, path, center_dec_deg FROM images WHERE type = "
                        "'components' AND group_id < ? AND group_id >= ? ORDER BY group_id DESC, recorded_at DESC",
                        [group_id, earliest]).to_pylist()
    except Exception:  # noqa: BLE001 - no images yet
        return None
    dec = ms_summary(ms)["phase_centre_dec_deg"]
    for row in rows:
        if row["center_dec_deg"] is not None and abs(row["center_dec_deg"] - dec) < 0.1 and Path(row["path"]).exists():
            log.info("%s: self-calibration model from the previous group %s", group_id, row["group_id"])
            return read_components(row["path"])
    return None


def _record_selfcal(settings: Settings, group_id: str, ms: Path, result: ImageResult, solve_id: str) -> str | None:
    """Record what self-calibration did (``qa_metrics`` stage ``selfcal``) and register kept solutions as a
    set of type ``SC`` (its own group only: never transferred). Returns that set's name, or None."""
    done = result.selfcal
    if not done:
        return None
    status = done.get("status")
    store.append(settings.catalog_dir, "qa_metrics",
                 records.qa_rows(str(ms), "ms", group_id, "selfcal", done, passed=status == "applied"))
    if status != "applied" or not done.get("table"):
        log.info("%s: self-calibration %s, the transferred gains stay: %s", group_id, status,
                 "; ".join(done.get("reasons", [])))
        return None
    from contimg.conversion.inspect import ms_summary

    summary = ms_summary(ms)
    name = f"{naming.ms_table_prefix(ms).name}_selfcal_{solve_id}"
    provenance = {k: done.get(k) for k in ("model_sources", "model_flux_jy", "solint_s", "amplitude",
                                           "noise_before_jy", "noise_after_jy", "residual_rms_before",
                                           "residual_rms_after", "significance") if k in done}
    cal_registry.register_set(
        settings.catalog_dir, set_name=name, status="active", obs_date=naming.group_date(group_id),
        mid_mjd=summary["mid_mjd"], source_ms=str(ms), calibrator=None,
        refant=antenna_name(done["refant"]) if done.get("refant", -1) >= 0 else None,
        tables=[{"path": done["table"], "type": "SC", "interp": "linear", "spwmap": [0] * summary["n_spw"],
                 "solver": "contimg.calibration.selfcal", "solver_params": provenance,
                 "snr_median": done.get("snr_median"), "flagged_fraction": 1.0 - done.get("solved_fraction", 0.0),
                 "quality": {k: v for k, v in done.items() if k != "table"},
                 "notes": "self-calibration of this group against its own clean components, on top of "
                          + ("the transferred sets" if result.data_column == "CORRECTED_DATA" else "DATA")}])
    if "noise_before_jy" in done:
        change = f"image noise {1e3 * done['noise_before_jy']:.3g} -> {1e3 * done['noise_after_jy']:.3g} mJy/beam"
    else:  # the one-pass path (the previous group's model) has no image before: the visibilities' residual
        change = (f"visibility residual {done.get('residual_rms_before', float('nan')):.4g} -> "
                  f"{done.get('residual_rms_after', float('nan')):.4g} x the visibility noise")
    log.info("%s: self-calibration kept (%s): %s", group_id, name, change)
    return name


@task(name="image-group", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30,
      retry_condition_fn=retry_transient, tags=["casa"])
def task_image(settings: Settings, ms: str) -> dict:
    """Prefect task of :func:`image_group` (returns the products and the headline metrics)."""
    done = image_group(settings, ms)
    emit_group_event(GROUP_IMAGED, done.group_id, settings=settings, image=done.result.products["pbcor"])
    return {"products": {k: str(v) for k, v in done.result.products.items()},
            "noise_jy": done.metrics["noise_inner_jy"], "beam_arcsec": list(done.result.restoring_beam_arcsec),
            "backend": done.result.backend}

