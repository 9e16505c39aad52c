"""The calibrator group's field model: the other bright sources in its beam, found in its own image.

The solves divide the data by a model of the sky. The catalog model (the calibrator and the
catalog's other sources above ``model_min_flux_jy``: :func:`contimg.calibration.model.sources_in_beam`)
misses every field source the catalog lacks, and DSA-110's 2.7 deg beam holds several sources of
0.1-1 Jy around any calibrator. The bandpass and the gain amplitudes absorb what the model misses
(each missing source's fringe, different on every antenna and channel), and every target group
calibrated with the set inherits it as an antenna-based error that self-calibration's one phase per
antenna cannot remove. Measured (benchmarks/RESULTS.md, "The calibrator's field model"): a
simulated group with no corruption at all, calibrated from J0834+5534's group 9 min later whose
five 1 Jy field sources were not in the model, read a 1 Jy source 1.3 deg from J0834+5534 14 % high
(1.014 with the true sky as the calibration model; B and GA each gave half of it).

:func:`calibrate_with_field_model`, one calibrator group:

1. solve with the catalog model, into scratch tables;
2. apply them and image the group once (the quick first pass of the imaging recipe);
3. clean-component islands above ``min_snr`` x the predicted noise and ``min_fraction`` of the
   calibrator's apparent flux that are not fragments of a
   catalog source (within 1.5 beams) are fitted, with the catalog sources, to the visibilities
   through the drifting beam (:func:`contimg.imaging.bright_sources.fit_and_subtract`). Those whose
   fitted drift-averaged apparent flux stays above the threshold are the field sources. What CLEAN
   leaves on the calibrator's rows and columns (its drift, which a constant model cannot follow) is
   not in the visibilities once the calibrator is modelled through the beam: it fits to ~0;
4. solve again with the catalog and field sources; steps 2-4 once more (the setting
   ``calibration_field_model_iterations``): a source the first model lacked is partly absorbed by the
   first solutions and reads faint in the first image. The last solve's tables are the set's.

The flux scale stays the catalog's: the calibrator's own flux is never refitted into the model.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from contimg.errors import ContimgError

log = logging.getLogger(__name__)


def field_sources(ms, solutions, *, catalog_sources, imaging, work_dir, log_dir, min_snr: float,
                  max_sources: int, min_fraction: float = 0.0) -> tuple[list, dict]:
    """The field's bright sources that ``catalog_sources`` lack, from the group imaged with ``solutions``.

    Parameters
    ----------
    ms : path-like
        The calibrator group's MS (its CORRECTED_DATA is written).
    solutions : sequence of contimg.calibration.solve.Solution
        Everything to apply (delay, bandpass, gains), in apply order.
    catalog_sources : sequence of Source
        The catalog model (calibrator first).
    imaging : contimg.imaging.image.ImagingOptions
        The imaging recipe; its quick first pass is used (no self-calibration, no bright-source fit).
    work_dir, log_dir : path-like
        Scratch (the image and its visibilities) and the imager's and applycal's logs.
    min_snr : float
        Threshold, in predicted image noise, on the islands and on the fitted apparent fluxes.
    max_sources : int
        At most this many field sources, brightest (apparent) first.
    min_fraction : float
        ... and at least this fraction of the calibrator's (the first catalog source's) apparent flux in the
        image: what the solutions absorb of a missing source scales with its flux against the model's.

    Returns
    -------
    (list of Source, dict)
        The field sources (intrinsic flux, spectral index and position as fitted) and what was done.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    from contimg.calibration.applycal import ApplyTable, apply_tables
    from contimg.calibration.selfcal import components_from_model
    from contimg.imaging import bright_sources
    from contimg.imaging.image import image_ms
    from contimg.imaging.refine import apparent_in_image, first_pass_overrides, sky_without_artefacts

    work_dir, log_dir = Path(work_dir), Path(log_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    apply_tables(ms, [ApplyTable(Path(s.path), s.kind, s.interp, list(s.spwmap), s.gainfield) for s in solutions],
                 log_path=log_dir / "field_model_applycal.casa.log", work_dir=work_dir)
    quick = dataclasses.replace(imaging, data_column="corrected", selfcal=None, bright_source_snr=None,
                                keep_visibilities=True, deconvolution_channels=None,
                                **first_pass_overrides(imaging, imaging.nsigma))
    image = image_ms(ms, work_dir / "field", options=quick, work_dir=work_dir / "imaging", log_dir=log_dir)
    model_fits, pb_fits = image.products["model"], image.products["pb"]
    pb = np.nan_to_num(fits.getdata(pb_fits).squeeze().astype(float))
    header = fits.getheader(model_fits)
    wcs = WCS(header).celestial
    beam_pix = float(header["BMAJ"]) / abs(float(header["CDELT2"]))
    anchors = [s for s, a in zip(catalog_sources, apparent_in_image(list(catalog_sources), pb, wcs)) if a > 0]
    calibrator_apparent = float(apparent_in_image(list(catalog_sources[:1]), pb, wcs)[0]) if catalog_sources else 0.0
    threshold = max(min_snr * image.predicted_noise_jy, min_fraction * calibrator_apparent)
    islands = components_from_model(model_fits, pb, min_flux_jy=threshold, max_components=300,
                                    pblimit=imaging.pblimit)
    # fraction 0: no island is judged by a row or column here; the visibility fit below is the judge
    candidates = sky_without_artefacts(islands, pb, wcs, beam_pix=beam_pix, anchors=anchors, fraction=0.0)[len(anchors):]
    info = {"threshold_jy": threshold, "islands": len(islands), "candidates": len(candidates), "sources": []}
    if not candidates:
        return [], info
    fitted, _ = bright_sources.fit_and_subtract(image.visibilities_ms, anchors + candidates, subtract=False)
    names = {s.name for s in candidates}
    new = [s for s in fitted if s.name in names]
    apparent = apparent_in_image(new, pb, wcs)
    order = [i for i in np.argsort(-apparent) if apparent[i] >= threshold][:max_sources]
    kept = [dataclasses.replace(new[i], name=f"FIELD{k + 1:02d}") for k, i in enumerate(order)]
    info["sources"] = [{"name": s.name, "ra_deg": s.ra_deg, "dec_deg": s.dec_deg, "flux_jy": s.flux_jy,
                        "apparent_jy": float(apparent[i])} for s, i in zip(kept, order)]
    return kept, info


def calibrate_with_field_model(ms, *, options, imaging, table_prefix, log_dir, qa_dir=None, work_dir,
                               min_snr: float, max_sources: int, min_fraction: float = 0.0, iterations: int = 2):
    """:func:`contimg.calibration.pipeline.calibrate_ms` with the catalog model, then ``iterations`` times more
    with the field sources found in the group's own image, calibrated by the previous solve, added (see the
    module docstring).

    A source the model lacks is partly absorbed by the solutions, so the first image shows it fainter than it
    is (a 2 Jy source 0.8 deg from J0834+5534 read 1.03, 1.63, 1.83 Jy in three passes on 16 antennas;
    tests/test_calibration_field_model.py); the bandpass errors reached the true model's after the second.

    Parameters
    ----------
    ms, options, table_prefix, log_dir, qa_dir
        As :func:`~contimg.calibration.pipeline.calibrate_ms`; ``table_prefix`` receives the final tables.
    imaging : contimg.imaging.image.ImagingOptions
        The imaging recipe (its quick first pass images the group).
    work_dir : path-like
        Scratch for the earlier solves' tables and the images; removed afterwards.
    min_snr, max_sources, min_fraction : float, int, float
        As :func:`field_sources`.
    iterations : int
        Field models made (each followed by a solve); at least 1.

    Returns
    -------
    CalibrationResult
        The last solve's, its ``model["field"]`` saying what was added (``fluxes_by_iteration``: the field
        sources' fitted fluxes, Jy, of each field model). A solve that the QA gate rejects ends it there, and
        is returned with its tables moved to ``table_prefix``: an image made with it would say nothing
        about the field. So does a field model that fails (``model["field"]["error"]`` says why), and one that
        finds nothing the first time (no second solve: it would be the first).
    """
    from contimg.calibration.model import read_geometry, sources_in_beam
    from contimg.calibration.pipeline import calibrate_ms, find_group_calibrator

    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    t0 = time.perf_counter()
    table_prefix, work_dir = Path(table_prefix), Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        result = calibrate_ms(ms, options=options, table_prefix=work_dir / "solve0" / table_prefix.name,
                              log_dir=log_dir)
        cal = find_group_calibrator(ms, result.calibrator, options.catalog)
        catalog = sources_in_beam(cal, read_geometry(ms), catalog=options.catalog,
                                  min_apparent_flux_jy=options.model_min_flux_jy)
        by_iteration = []
        for i in range(1, iterations + 1):
            if not result.passed:
                return _moved(result, table_prefix)
            try:
                found, info = field_sources(ms, list(options.kb_tables) + result.solutions, catalog_sources=catalog,
                                            imaging=imaging, work_dir=work_dir / f"image{i}", log_dir=log_dir,
                                            min_snr=min_snr, max_sources=max_sources, min_fraction=min_fraction)
            except ContimgError as err:
                # the field image failed (a crashed imager, say): the last solve stands, as it would have without
                # the field model, and says why
                log.warning("%s: field model %d of %d failed, keeping the solve before it: %s", Path(ms).name, i,
                            iterations, err)
                return _with_field(_moved(result, table_prefix), {"sources": [], "threshold_jy": float("nan"),
                                                                  "error": f"iteration {i}: {err}"},
                                   started=t0, fluxes_by_iteration=by_iteration)
            by_iteration.append([round(s.flux_jy, 4) for s in found])
            if i == 1 and not found:
                log.info("%s: no field source above %.3g Jy apparent: the catalog model's solve stands",
                         Path(ms).name, info["threshold_jy"])
                return _with_field(_moved(result, table_prefix), info, started=t0, fluxes_by_iteration=by_iteration)
            last = i == iterations
            result = calibrate_ms(ms, options=dataclasses.replace(options, calibrator=result.calibrator,
                                                                  field_sources=tuple(found)),
                                  table_prefix=table_prefix if last else work_dir / f"solve{i}" / table_prefix.name,
                                  log_dir=log_dir, qa_dir=qa_dir if last else None)
        log.info("%s: %d field source(s) above %.3g Jy apparent in the calibration model (fluxes by iteration %s): "
                 "%s", Path(ms).name, len(found), info["threshold_jy"], by_iteration,
                 ", ".join(f"{s['name']} {s['flux_jy']:.3f} Jy" for s in info["sources"]) or "none")
        return _with_field(result, info, started=t0, fluxes_by_iteration=by_iteration)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _with_field(result, field: dict, *, started: float, fluxes_by_iteration: list):
    """``result`` with the field model's record: ``model["field"]`` (with its fluxes by iteration and seconds)
    and ``timings["field_model"]``."""
    field = {**field, "fluxes_by_iteration": fluxes_by_iteration, "seconds": time.perf_counter() - started}
    return dataclasses.replace(result, model={**result.model, "field": field},
                               timings={**result.timings, "field_model": field["seconds"]})


def _moved(result, table_prefix: Path):
    """``result`` with its tables moved from scratch to ``table_prefix`` (the set's names)."""
    table_prefix.parent.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(result, solutions=[
        dataclasses.replace(s, path=Path(shutil.move(str(s.path), str(table_prefix.with_name(Path(s.path).name)))))
        for s in result.solutions])
