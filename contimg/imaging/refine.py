"""The imaging passes of a group when it is self-calibrated or has bright sources: :func:`image_and_refine`.

Two ways to a final pass (both end with the bright sources fitted through the drifting beam,
subtracted, the rest deconvolved, and the bright sources restored: :mod:`.bright_sources`):

* **from the previous group's sky model** (``prior``: consecutive groups share most of the
  beam): the model is first checked against this group's data (its brightest sources fitted:
  fluxes within ``prior_max_flux_change``, positions within ``prior_max_shift_beams``), then
  self-calibration solves against it, predicted through this group's drifting beam, and the
  gate compares the visibility residual and the brightest sources' fitted fluxes before and
  after. One imaging pass.
* **image, self-calibrate, image** (no prior, or a prior that does not fit): a quick first
  pass gives the clean components; the gate compares the two images (residual noise, the
  brightest peaks). Two imaging passes.

Either way a gate that fails keeps the transferred gains, with its reasons.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from contimg.calibration import selfcal as sc
from contimg.imaging import bright_sources

log = logging.getLogger(__name__)


def _timed(timings: dict, name: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - self.t

    return _T()


def apparent_in_image(sources, pb: np.ndarray, wcs) -> np.ndarray:
    """Each source's drift-averaged apparent flux (flux x the averaged beam at its pixel; 0 outside the image)."""
    if not sources:
        return np.zeros(0)
    x, y = wcs.all_world2pix([s.ra_deg for s in sources], [s.dec_deg for s in sources], 0)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (ix < pb.shape[1]) & (iy < pb.shape[0])
    out = np.zeros(len(sources))
    for k in np.flatnonzero(inside):
        out[k] = sources[k].flux_jy * pb[iy[k], ix[k]]
    return np.nan_to_num(out)


#: An island on a brighter source's row or column (the snapshot PSF's arms), fainter than this fraction
#: of it, is taken for its deconvolution residual, not a source. The drift of 3C147 near the edge of a
#: full-size group's image (benchmarks/RESULTS.md, Target groups) left islands of 1-2 % of it there.
ARTEFACT_FRACTION = 0.1


def sky_without_artefacts(candidates, pb: np.ndarray, wcs, *, beam_pix: float, anchors=(),
                          fraction: float = ARTEFACT_FRACTION, chain: bool = False) -> list:
    """``anchors`` (sources modelled through the drifting beam), then the ``candidates`` (clean-component
    islands of a first pass) that are neither a fragment of an anchor (within 1.5 beams: the anchor's fit
    holds all its flux) nor on its row or column (within a beam) fainter than ``fraction`` of it (CLEAN's
    residue of its drift), brightest first. Islands are judged against each other only with ``chain``
    (each kept one an anchor for the fainter: the bright sources to fit); otherwise two islands of one
    source cleaned as constant are its flux, better in a self-calibration model than out of it."""
    kept = list(anchors)
    app = apparent_in_image(kept, pb, wcs)
    pix = [wcs.all_world2pix([[s.ra_deg, s.dec_deg]], 0)[0] for s in kept]
    cand_app = apparent_in_image(list(candidates), pb, wcs)
    for k in np.argsort(-cand_app):
        c, a = candidates[k], cand_app[k]
        (x, y), = wcs.all_world2pix([[c.ra_deg, c.dec_deg]], 0)
        if not any(math.hypot(x - kx, y - ky) < 1.5 * beam_pix
                   or (min(abs(x - kx), abs(y - ky)) < beam_pix and a < fraction * ka)
                   for (kx, ky), ka in zip(pix, app)):
            kept.append(c)
            if chain:
                pix.append((x, y))
                app = np.append(app, a)
    return kept


def first_pass_overrides(options, nsigma: float) -> dict:
    """What the quick first pass changes in a recipe whose threshold is ``nsigma``: one spectral term and one
    output channel, no auto-mask, ``first_pass_nsigma`` and ``first_pass_mgain`` (``options``: ImagingOptions).
    The names are fields of both ``CleanParameters`` and ``ImagingOptions``."""
    return dict(nsigma=max(nsigma, options.first_pass_nsigma), auto_mask=None, spectral_terms=1, channels_out=1,
                mgain=options.first_pass_mgain)


def _final(vis, pb, *, run, options, noise_jy, freq_hz, timings, start, bright: dict):
    """Fit and subtract the bright sources (``start``), image the rest, restore them: the final imager result."""
    from contimg.imaging.products import restoring_beam_deg

    fitted = []
    if start:
        with _timed(timings, "bright_sources"):
            fitted, figures = bright_sources.fit_and_subtract(vis.ms, start)
            bright.update(threshold_jy=options.bright_source_snr * noise_jy, **figures)
    with _timed(timings, "imager_final"):
        final = run("final")
        if fitted:
            bmaj, bmin, bpa = restoring_beam_deg(final["files"]["image"])
            bright_sources.restore(final["files"]["image"], final["files"]["model"], fitted, pb,
                                   beam_arcsec=(bmaj * 3600, bmin * 3600, bpa), freq_hz=freq_hz)
    return final, fitted


def image_and_refine(vis, pb: np.ndarray, wcs, *, run, params, options, noise_jy: float, freq_hz: float,
                     table_path, log_dir: Path, timings: dict, model=None, prior=None, known=()
                     ) -> tuple[dict, dict, dict, list]:
    """Image the group with self-calibration and/or bright-source fitting (see the module docstring).

    Parameters
    ----------
    vis : contimg.imaging.visibilities.ImagingVisibilities
        The scratch imaging MS (its DATA is corrected and the bright sources subtracted in place).
    pb : numpy.ndarray
        The averaged primary beam on the image grid.
    wcs : astropy.wcs.WCS
        The image grid's celestial WCS.
    run : callable
        ``run(tag, clean_parameters)`` runs the imager on ``vis`` and returns its result.
    params : CleanParameters
        The full recipe (the final pass's).
    options : contimg.imaging.image.ImagingOptions
    noise_jy : float
        The predicted image noise, Jy/beam.
    freq_hz : float
        The image's frequency.
    table_path : path-like or None
        Where kept self-calibration solutions are written.
    log_dir, timings
    model : sequence of Source, optional
        Self-calibrate against this instead of the first pass's clean components (two passes).
    prior : sequence of Source, optional
        The previous group's sky model: self-calibrate before imaging (one pass) if it fits this group.
    known : sequence of Source
        Catalog sources inside the image: with a prior, those bright enough and not in it (entering the
        beam since the previous group) join the bright-source fit.

    Returns
    -------
    (selfcal, bright, imager, fitted)
        What self-calibration did, what the bright-source fit did, the imager result of the product,
        and the fitted bright sources (for the group's sky model).
    """
    opts = options.selfcal
    bright: dict = {}
    if opts is not None and prior:
        done = _from_prior(vis, pb, wcs, prior=list(prior), known=list(known), options=options, noise_jy=noise_jy,
                           table_path=table_path, log_dir=log_dir, timings=timings)
        if done is not None:
            solution_kept, done, start = done
            final, fitted = _final(vis, pb, run=run, options=options, noise_jy=noise_jy, freq_hz=freq_hz,
                                   timings=timings, start=start, bright=bright)
            return done, bright, final, fitted
        prior_reason = "previous group's model does not fit this group"
    else:
        prior_reason = None

    quick = replace(params, **first_pass_overrides(options, params.nsigma)) if options.first_pass_quick else params
    with _timed(timings, "imager"):
        first = run("", quick)
    files = first["files"]
    beam_pix = _beam_pixels(files["image"])
    spectral_index = opts.spectral_index if opts else -0.7
    thresholds = [t for t in (opts and opts.model_min_snr * noise_jy,
                              options.bright_source_snr and options.bright_source_snr * noise_jy) if t]
    islands = sc.components_from_model(files["model"], pb, min_flux_jy=min(thresholds), max_components=300,
                                       pblimit=options.pblimit, spectral_index=spectral_index)
    start = []
    if options.bright_source_snr:
        # the catalog's positions first; then islands, none a fragment or an arm artefact of a brighter one
        threshold = options.bright_source_snr * noise_jy
        known_bright = [s for s, a in zip(known, apparent_in_image(list(known), pb, wcs)) if a >= threshold]
        start = sky_without_artefacts([c for c, a in zip(islands, apparent_in_image(islands, pb, wcs)) if a >= threshold],
                                      pb, wcs, beam_pix=beam_pix, anchors=known_bright,
                                      chain=True)[:options.bright_source_max]
    done: dict = {}
    solution = None
    comps = []
    if opts is not None:
        with _timed(timings, "selfcal"):
            threshold = opts.model_min_snr * noise_jy
            if model is not None:
                comps = list(model)
            else:
                # the bright sources as fitted here (through the drifting beam), then the other islands; a
                # bright source cleaned as constant leaves islands on its row and column: not sources
                anchors = (bright_sources.fit_and_subtract(vis.ms, start, subtract=False, rounds=1)[0]
                           if start else [])
                above = [c for c, a in zip(islands, apparent_in_image(islands, pb, wcs)) if a >= threshold]
                comps = sky_without_artefacts(above, pb, wcs, beam_pix=beam_pix, anchors=anchors)[:opts.max_components]
            done = {"status": "skipped", "reasons": [], "model": "given" if model is not None else "clean components"}
            if prior_reason:
                done["prior"] = prior_reason
            if not comps:
                done["reasons"] = [f"no clean component island above {1e3 * threshold:.3g} mJy "
                                   f"({opts.model_min_snr:g} x the predicted noise): nothing to self-calibrate on"]
            else:
                solution = sc.solve_selfcal(vis.ms, comps, options=opts)
                done.update(sc.describe(solution))
                if solution.reasons:
                    solution = None
                else:
                    before_selfcal = _data(vis.ms)  # to image again without it if the gate says no
                    sc.apply_to_data(vis.ms, solution)
    if solution is None and not start:
        return done, bright, first, []
    final, fitted = _final(vis, pb, run=run, options=options, noise_jy=noise_jy, freq_hz=freq_hz, timings=timings,
                           start=start, bright=bright)
    if solution is None:
        return done, bright, final, fitted
    brightest = comps[:opts.n_flux_sources]
    before = sc.image_noise_and_peaks(files["image"], files["residual"], pb, brightest, radius_pix=beam_pix)
    after = sc.image_noise_and_peaks(final["files"]["image"], final["files"]["residual"], pb, brightest,
                                     radius_pix=beam_pix)
    reasons, figures = sc.judge(before[0], after[0], before[1], after[1], options=opts)
    done.update(figures, reasons=reasons, gate="images")
    if reasons:
        done["status"] = "rejected"
        if not start:  # the first pass is the product: the transferred gains
            return done, {}, first, []
        # the transferred gains, and the bright sources through the drifting beam: a third pass
        _data(vis.ms, before_selfcal)
        bright = {}
        final, fitted = _final(vis, pb, run=run, options=options, noise_jy=noise_jy, freq_hz=freq_hz,
                               timings=timings, start=start, bright=bright)
        return done, bright, final, fitted
    done["status"] = "applied"
    if table_path is not None:
        done["table"] = str(sc.write_table(vis.ms, solution, table_path, log_path=log_dir / "selfcal.casa.log"))
    return done, bright, final, fitted


def _data(ms, value: np.ndarray | None = None) -> np.ndarray | None:
    """Read the DATA column of ``ms``, or write ``value`` into it."""
    from casacore.tables import table

    with table(str(ms), ack=False, readonly=value is None) as main:
        if value is None:
            return main.getcol("DATA")
        main.putcol("DATA", value)
    return None


def _beam_pixels(fits_path) -> float:
    """The restoring beam's major axis in pixels: how far from a source its peak is looked for."""
    from astropy.io import fits

    h = fits.getheader(fits_path)
    return float(h["BMAJ"]) / abs(float(h["CDELT2"]))


def _from_prior(vis, pb, wcs, *, prior, known, options, noise_jy, table_path, log_dir, timings):
    """Self-calibration against the previous group's model, judged in the visibilities.

    Returns None when the model does not fit this group (the caller images twice instead), else
    ``(kept, what was done, the bright sources' starting values)``.
    """
    opts = options.selfcal
    t = time.perf_counter()
    apparent = apparent_in_image(prior, pb, wcs)
    order = np.argsort(-apparent)
    model = [prior[i] for i in order if apparent[i] >= opts.model_min_snr * noise_jy][:opts.max_components]
    check = model[:opts.n_flux_sources]
    done: dict = {"status": "skipped", "reasons": [], "model": "previous group", "gate": "visibilities"}
    if not check:
        timings["selfcal"] = time.perf_counter() - t
        return None
    # 1. does the previous group's model describe this one? (its brightest sources fitted here)
    fitted_before, fig_before = bright_sources.fit_and_subtract(vis.ms, check, subtract=False, rounds=1)
    flux_before = np.array([f.get("flux_jy", np.nan) if f.get("fitted") else np.nan for f in fig_before["sources"]])
    shift = np.array([f.get("shift_arcsec", np.inf) if f.get("fitted") else np.inf for f in fig_before["sources"]])
    beam_arcsec = _beam_arcsec_of(vis)
    ratio = flux_before / np.array([s.flux_jy for s in check])
    if not (np.nanmedian(np.abs(ratio - 1)) <= opts.prior_max_flux_change
            and np.median(shift) <= opts.prior_max_shift_beams * beam_arcsec):
        log.info("%s: the previous group's model does not fit (flux ratios %s, shifts %s arcsec): two passes",
                 vis.ms, np.round(ratio, 3), np.round(shift, 1))
        timings["selfcal"] = time.perf_counter() - t
        return None
    # 2. solve against it, through this group's drifting beam
    solution = sc.solve_selfcal(vis.ms, model, options=opts)
    done.update(sc.describe(solution))
    kept = False
    if not solution.reasons:
        sc.apply_to_data(vis.ms, solution)
        # 3. the gate: the visibility residual against the model, and the brightest fluxes, before and after
        fitted_after, fig_after = bright_sources.fit_and_subtract(vis.ms, check, subtract=False, rounds=1)
        flux_after = np.array([f.get("flux_jy", np.nan) if f.get("fitted") else np.nan for f in fig_after["sources"]])
        m = solution.metrics
        n = max(m["n_visibilities"], 1)
        reasons, figures = sc.judge(math.sqrt(m["chi2_before"] / n), math.sqrt(m["chi2_after"] / n), flux_before,
                                    flux_after, options=opts, measured_in="visibilities")
        done.update(figures, reasons=reasons)
        if reasons:
            sc.apply_to_data(vis.ms, solution, undo=True)
            done["status"] = "rejected"
        else:
            done["status"] = "applied"
            kept = True
            if table_path is not None:
                done["table"] = str(sc.write_table(vis.ms, solution, table_path, log_path=log_dir / "selfcal.casa.log"))
    timings["selfcal"] = time.perf_counter() - t
    start = []
    if options.bright_source_snr:
        threshold = options.bright_source_snr * noise_jy
        start = [prior[i] for i in order if apparent[i] >= threshold]
        # a catalog source that entered the beam since the previous group is not in its model
        new = [s for s, a in zip(known, apparent_in_image(known, pb, wcs)) if a >= threshold and
               all(_separation_arcsec(s, p) > 60.0 for p in start)]
        start = sorted(start + new, key=lambda s: -s.flux_jy)[:options.bright_source_max]
    return kept, done, start


def _separation_arcsec(a, b) -> float:
    dra = (a.ra_deg - b.ra_deg + 180.0) % 360.0 - 180.0
    return math.hypot(dra * math.cos(math.radians(a.dec_deg)), a.dec_deg - b.dec_deg) * 3600.0


def _beam_arcsec_of(vis) -> float:
    """lambda / B_max of the imaging MS at its highest frequency, arcsec: the scale of a position error."""
    from casacore.tables import taql

    uvw = taql(f"select UVW from '{vis.ms}' where ANTENNA1 != ANTENNA2").getcol("UVW")
    b = float(np.max(np.hypot(uvw[:, 0], uvw[:, 1])))
    return math.degrees(299792458.0 / float(np.max(vis.freqs_hz)) / b) * 3600.0
