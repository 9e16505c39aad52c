""":func:`image_ms`: a group MS to primary-beam-corrected FITS products, with either imager.

Steps (each timed in the result):

1. **grid**: the cell from the baselines, the size covering the averaged beam down
   to the pbcor cutoff (:mod:`.grid`), unless set;
2. **visibilities**: a scratch single-SPW MS of the chosen column, channels averaged
   within the smearing budget, bright catalog sources outside the image subtracted
   (:mod:`.visibilities`);
3. **imager**: WSClean or tclean with the same parameters (:mod:`.backends`);
4. **products**: the averaged DSA-110 beam, pbcor and one header convention
   (:mod:`.primary_beam`, :mod:`.products`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time as _time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.time import Time

from contimg import naming
from contimg.calibration import selfcal as sc
from contimg.calibration.model import read_geometry, sources_in_beam
from contimg.errors import InvalidInputError
from contimg.imaging import grid as gridmod
from contimg.imaging.backends import CleanParameters, default_backend, run_imager
from contimg.imaging.noise import imaging_weights
from contimg.imaging.restoring_beam import restoring_beam
from contimg.imaging.primary_beam import average_primary_beam
from contimg.imaging.refine import image_and_refine
from contimg.imaging.products import write_products
from contimg.imaging.visibilities import write_imaging_ms
from contimg.radiometer import noise_sigma_jy, sefd_jy

log = logging.getLogger(__name__)


#: Where the restoring beam comes from (:class:`ImagingOptions`).
RESTORING_BEAMS = ("weights", "imager")


@dataclass(frozen=True)
class ImagingOptions:
    """How a group is imaged (defaults: the seed's, except the size, derived from the beam).

    Attributes
    ----------
    backend : {"wsclean", "tclean"} or None
        None: WSClean when installed, else tclean.
    data_column : {"corrected", "data"}
    cell_arcsec : float or None
        None: ``lambda / B_max`` over ``pixels_per_beam``.
    imsize : int or None
        None: cover the averaged beam down to ``coverage_level``.
    pixels_per_beam : float
    coverage_level : float
        Primary-beam response the image reaches at its edge (default the pbcor cutoff).
    pblimit : float
        pbcor is blank below this response.
    robust, niter, nsigma, auto_mask, mgain, spectral_terms, channels_out : see
        :class:`contimg.imaging.backends.CleanParameters`
    deconvolution_channels, padding, wgridder_accuracy, baseline_averaging, parallel_gridding : WSClean only, see
        :class:`contimg.imaging.backends.CleanParameters`
    restoring_beam : {"weights", "imager"}
        ``weights``: both imagers restore with the Gaussian fitted to the PSF of the imaging
        weights (:mod:`contimg.imaging.restoring_beam`), the same whichever imager runs;
        ``imager``: each imager fits its own PSF (their fits differ on DSA-110's PSF).
    beam_fitting_box : float
        Width of the box of that fit, in theoretical beams (lambda / B_max).
    chan_avg : int or None
        Channels averaged before gridding; None: the largest within what ``max_smearing_loss``
        leaves after the baseline-dependent time averaging; 1: none.
    max_smearing_loss : float
        Peak loss allowed at the half-power radius from the channel and time averaging
        together (0.05).
    model_min_jy : float
        Catalog sources outside the image whose peak apparent flux (1.4 GHz) reaches this
        are subtracted before imaging; 0 disables it.
    catalog : optional
        Calibrator catalog of those sources (default the shipped VLA list).
    threads : int
    keep_visibilities : bool
        Keep the scratch MS (for debugging and for imaging it again).
    timeout_s : float or None
        Kill the imager after this long.
    sefd_jy : float or None
        System equivalent flux density for the noise prediction, Jy (default: from the
        settings' Tsys and aperture efficiency).
    selfcal : SelfcalOptions or None
        Self-calibrate between a first and a final imaging pass
        (:mod:`contimg.calibration.selfcal`); None: one pass, the gains as applied.
    bright_source_snr : float or None
        Sources whose first-pass clean components reach this many times the predicted noise
        (apparent) are fitted through the drifting beam, subtracted before the final pass and
        restored after it (:mod:`contimg.imaging.bright_sources`); None or 0: cleaned like the rest.
    bright_source_max : int
        At most this many, brightest first.
    first_pass_quick : bool
        When self-calibration or bright sources call for a final pass, the first pass cleans with one
        spectral term down to ``first_pass_nsigma`` (it gives the model and the gate's "before"); the
        final pass uses the full recipe. If no final pass follows (a faint field), the first is the product.
    first_pass_nsigma : float
    first_pass_mgain : float
        WSClean ``-mgain`` of the quick first pass (``mgain`` is the final pass's).
    """

    backend: str | None = None
    data_column: str = "corrected"
    cell_arcsec: float | None = None
    imsize: int | None = None
    pixels_per_beam: float = 3.0
    coverage_level: float = 0.2
    pblimit: float = 0.2
    robust: float = 0.0
    niter: int = 10000
    nsigma: float = 3.0
    auto_mask: float | None = 5.0
    mgain: float = 0.9
    spectral_terms: int = 2
    channels_out: int = 4
    deconvolution_channels: int | None = 2
    padding: float = 1.1
    wgridder_accuracy: float = 3e-3
    baseline_averaging: float | None = 4.0
    parallel_gridding: int = 2
    restoring_beam: str = "weights"
    beam_fitting_box: float = 10.0
    chan_avg: int | None = None
    max_smearing_loss: float = 0.05
    model_min_jy: float = 0.05
    catalog: object = None
    threads: int = 2
    keep_visibilities: bool = False
    timeout_s: float | None = None
    sefd_jy: float | None = None
    selfcal: sc.SelfcalOptions | None = None
    bright_source_snr: float | None = None
    bright_source_max: int = 10
    first_pass_quick: bool = True
    first_pass_nsigma: float = 5.0
    first_pass_mgain: float = 0.95

    def __post_init__(self):
        if self.restoring_beam not in RESTORING_BEAMS:
            raise InvalidInputError(f"restoring_beam must be one of {RESTORING_BEAMS}, got {self.restoring_beam!r}")

    @classmethod
    def from_settings(cls, settings, **overrides) -> "ImagingOptions":
        """Options from :class:`contimg.config.Settings` (``imaging_*``), then ``overrides``."""
        values = dict(
            backend=settings.imaging_backend, cell_arcsec=settings.imaging_cell_arcsec,
            imsize=settings.imaging_size, pixels_per_beam=settings.imaging_pixels_per_beam,
            coverage_level=settings.imaging_coverage_level, pblimit=settings.imaging_pblimit,
            robust=settings.imaging_robust, niter=settings.imaging_niter, nsigma=settings.imaging_nsigma,
            mgain=settings.imaging_mgain, spectral_terms=settings.imaging_spectral_terms,
            channels_out=settings.imaging_channels_out,
            deconvolution_channels=settings.imaging_deconvolution_channels, padding=settings.imaging_padding,
            wgridder_accuracy=settings.imaging_wgridder_accuracy,
            baseline_averaging=settings.imaging_baseline_averaging, restoring_beam=settings.imaging_restoring_beam,
            parallel_gridding=settings.imaging_parallel_gridding,
            beam_fitting_box=settings.imaging_beam_fitting_box,
            chan_avg=settings.imaging_chan_avg, max_smearing_loss=settings.imaging_max_smearing_loss,
            model_min_jy=settings.imaging_model_min_jy, catalog=settings.calibrator_catalog,
            threads=settings.imaging_threads,
            sefd_jy=sefd_jy(tsys_k=settings.tsys_k, aperture_efficiency=settings.aperture_efficiency),
            selfcal=selfcal_options(settings) if settings.selfcal else None,
            bright_source_snr=settings.imaging_bright_source_snr, bright_source_max=settings.imaging_bright_source_max,
            first_pass_quick=settings.imaging_first_pass_quick, first_pass_nsigma=settings.imaging_first_pass_nsigma,
            first_pass_mgain=settings.imaging_first_pass_mgain,
        )
        values.update(overrides)
        return cls(**values)


def selfcal_options(settings) -> sc.SelfcalOptions:
    """:class:`~contimg.calibration.selfcal.SelfcalOptions` from the settings (``selfcal_*``)."""
    return sc.SelfcalOptions(
        model_min_snr=settings.selfcal_model_min_snr, solint_s=settings.selfcal_solint_s,
        target_snr=settings.selfcal_target_snr, amplitude_min_snr=settings.selfcal_amplitude_min_snr,
        min_significance=settings.selfcal_min_significance, max_noise_ratio=settings.selfcal_max_noise_ratio,
        max_flux_change=settings.selfcal_max_flux_change)


@dataclass
class ImageResult:
    """What :func:`image_ms` made and measured."""

    ms: Path
    backend: str
    data_column: str
    products: dict[str, Path]
    grid: gridmod.ImageGrid
    resolution_arcsec: float
    restoring_beam_arcsec: tuple[float, float, float]
    freq_hz: float
    bandwidth_hz: float
    start: Time
    integration_s: float
    chan_avg: int
    smearing_loss: float
    flagged_fraction: float
    predicted_noise_jy: float
    subtracted_sources: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    imager: dict = field(default_factory=dict)
    visibilities_ms: Path | None = None
    #: what self-calibration did (``status`` applied / rejected / skipped, ``reasons``, figures, ``table``);
    #: empty when it was not asked for
    selfcal: dict = field(default_factory=dict)
    #: the bright sources fitted through the drifting beam, subtracted and restored (``threshold_jy``,
    #: ``sources``: name, flux, spectral index, shift); empty when none was
    bright_sources: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-friendly description (for the catalog and artifacts)."""
        return {
            "ms": str(self.ms), "backend": self.backend, "data_column": self.data_column,
            "products": {k: str(v) for k, v in self.products.items()},
            "grid": asdict(self.grid), "resolution_arcsec": self.resolution_arcsec,
            "restoring_beam_arcsec": list(self.restoring_beam_arcsec), "freq_hz": self.freq_hz,
            "bandwidth_hz": self.bandwidth_hz, "start": self.start.isot, "integration_s": self.integration_s,
            "chan_avg": self.chan_avg, "smearing_loss": self.smearing_loss,
            "flagged_fraction": self.flagged_fraction, "predicted_noise_jy": self.predicted_noise_jy,
            "subtracted_sources": self.subtracted_sources,
            "timings": self.timings, "selfcal": self.selfcal, "bright_sources": self.bright_sources,
        }


def _cross_rows(ms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UVW (m), TIME (s) and a baseline key of the first SPW's cross-correlation rows: what the grid
    and the time-smearing budget are planned from."""
    from casacore.tables import taql

    t = taql(f"select UVW, TIME, ANTENNA1, ANTENNA2 from '{ms}' where ANTENNA1 != ANTENNA2 and DATA_DESC_ID == 0")
    return t.getcol("UVW"), t.getcol("TIME"), t.getcol("ANTENNA1").astype(np.int64) * 100000 + t.getcol("ANTENNA2")


def plan_grid(ms, geometry, options: ImagingOptions, *, uvw_m: np.ndarray | None = None
              ) -> tuple[gridmod.ImageGrid, float]:
    """The image grid of ``ms`` (see :mod:`.grid`) and the resolution ``lambda / B_max`` (arcsec) it came from.

    ``uvw_m``: the first SPW's cross-correlation uvw (metres) when the caller has read them already.
    """
    freqs = geometry.chan_freq_hz
    uvw = _cross_rows(ms)[0] if uvw_m is None else uvw_m
    if len(uvw) == 0:
        raise InvalidInputError(f"{ms}: no cross-correlations")
    resolution = gridmod.theoretical_resolution_arcsec(uvw, float(freqs.max()))
    cell = options.cell_arcsec or gridmod.cell_for_beam(resolution, pixels_per_beam=options.pixels_per_beam)
    if options.imsize:
        imsize = int(options.imsize)
    else:
        # the beam centre moves along the meridian: 15 deg/h x cos(dec) on the sky over the group
        span_s = float(geometry.times_s[-1] - geometry.times_s[0]) + _integration_s(geometry)
        drift = math.radians(span_s / 3600.0 * 15.0) * math.cos(geometry.pointing_dec_app_rad)
        radius = gridmod.effective_beam_radius_rad(options.coverage_level, freq_hz=float(freqs.min()),
                                                   drift_rad=drift)
        imsize = gridmod.imsize_for_coverage(radius, cell)
    ra, dec = np.degrees(geometry.phase_dirs_rad[len(geometry.phase_dirs_rad) // 2])
    if len(geometry.phase_dirs_rad) > 1:
        raise InvalidInputError(f"{ms}: {len(geometry.phase_dirs_rad)} fields; imaging needs the converter's "
                                "single meridian field (convert without --field-per-integration)")
    return gridmod.ImageGrid(float(ra) % 360.0, float(dec), float(cell), imsize), resolution


def _uvw_by_baseline(uvw: np.ndarray, times: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """:func:`_cross_rows` as (baselines, times, 3) uvw, metres, each baseline in time order
    (baselines without a row at every time are left out: a sample for the smearing budget)."""
    n_times = len(np.unique(times))
    ids, counts = np.unique(baseline, return_counts=True)
    full = np.isin(baseline, ids[counts == n_times])
    order = np.lexsort((times[full], baseline[full]))
    return uvw[full][order].reshape(-1, n_times, 3)


def _integration_s(geometry) -> float:
    t = geometry.times_s
    return float(np.median(np.diff(t))) if len(t) > 1 else 12.884902


def _outside_image(sources, grid: gridmod.ImageGrid, *, margin: float = 0.02):
    """The sources outside the imaged square shrunk by ``margin`` of its side (the edge is not cleaned well)."""
    if not sources:
        return []
    wcs = grid.wcs().celestial
    x, y = wcs.all_world2pix([s.ra_deg for s in sources], [s.dec_deg for s in sources], 0)
    lo, hi = margin * grid.imsize, (1 - margin) * grid.imsize - 1
    inside = (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi) & np.isfinite(x) & np.isfinite(y)
    return [s for s, i in zip(sources, inside) if not i]


def group_components(model_fits, pb: np.ndarray, fitted, *, min_flux_jy: float, pblimit: float,
                     max_components: int = 300) -> list:
    """The group's sky model: the final model image's component islands above ``min_flux_jy`` (apparent),
    with the fitted bright sources in place of their islands (their fitted flux, spectral index and position)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    islands = sc.components_from_model(model_fits, pb, min_flux_jy=min_flux_jy, max_components=max_components,
                                       pblimit=pblimit)
    if fitted:
        wcs = WCS(fits.getheader(model_fits)).celestial
        fx, fy = wcs.all_world2pix([s.ra_deg for s in fitted], [s.dec_deg for s in fitted], 0)
        ix, iy = (wcs.all_world2pix([s.ra_deg for s in islands], [s.dec_deg for s in islands], 0) if islands
                  else ([], []))
        near = [bool(np.any(np.hypot(np.asarray(fx) - x, np.asarray(fy) - y) < 3)) for x, y in zip(ix, iy)]
        islands = list(fitted) + [s for s, n in zip(islands, near) if not n]
    return islands


def _fit_to_channels(options: ImagingOptions, n_chan: int, name: str) -> tuple[int, int, int | None]:
    """``(spectral_terms, channels_out, deconvolution_channels)`` of ``options``, at most ``n_chan`` each.

    The imaging MS may hold fewer channels than the sub-bands asked for (one SPW averaged to a
    channel or two): WSClean refuses more ``-channels-out`` than channels, and a spectral term
    needs a channel of its own (tclean's ``mtmfs`` too). Logged when anything is lowered.
    """
    channels_out = min(options.channels_out, n_chan)
    terms = min(options.spectral_terms, channels_out)
    deconvolution = options.deconvolution_channels
    if deconvolution is not None:
        deconvolution = min(deconvolution, channels_out)
    if (terms, channels_out, deconvolution) != (options.spectral_terms, options.channels_out,
                                                options.deconvolution_channels):
        log.warning("%s: the imaging MS has %d channel(s) after averaging: imaging with channels_out %d, "
                    "spectral_terms %d, deconvolution_channels %s (asked: %d, %d, %s)", name, n_chan, channels_out,
                    terms, deconvolution, options.channels_out, options.spectral_terms,
                    options.deconvolution_channels)
    return terms, channels_out, deconvolution


def image_ms(ms, prefix, *, options: ImagingOptions = ImagingOptions(), work_dir=None, log_dir=None,
             selfcal_table=None, selfcal_model=None, prior_model=None) -> ImageResult:
    """Image a converted group: FITS ``<prefix>-{image,pbcor,pb,residual,model,psf}.fits``.

    Parameters
    ----------
    ms : path-like
        The group MS (never modified).
    prefix : path-like
        Product prefix (``contimg.naming.image_prefix``); its directory is created.
    options : ImagingOptions
    work_dir : path-like, optional
        Scratch for the imaging MS (default: ``<prefix>.work`` beside the products, removed after).
    log_dir : path-like, optional
        Where the imager's log goes (default: the products' directory).
    selfcal_table : path-like, optional
        With ``options.selfcal``: where the self-calibration solutions are written as a
        CASA table when the gate keeps them (one SPW: apply with spwmap all -> 0).
    selfcal_model : sequence of Source, optional
        The self-calibration model (intrinsic fluxes, ICRS); default: the first pass's
        clean components (:func:`contimg.calibration.selfcal.components_from_model`).
    prior_model : sequence of Source, optional
        The previous group's sky model (its ``components`` product): self-calibrate with it
        before imaging, one pass, if it fits this group (:mod:`contimg.imaging.refine`).

    Returns
    -------
    ImageResult
    """
    t0 = _time.perf_counter()
    timings: dict[str, float] = {}
    ms = Path(ms).resolve()
    prefix = Path(prefix).resolve()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    backend = options.backend or default_backend()
    work = Path(work_dir).resolve() if work_dir else prefix.with_name(prefix.name + ".work")
    logs = Path(log_dir).resolve() if log_dir else prefix.parent
    if not (ms / "table.dat").exists():
        raise InvalidInputError(f"{ms}: not a Measurement Set (no table.dat)")

    geometry = read_geometry(ms)
    rows = _cross_rows(ms)  # one read for the grid and the time-smearing budget
    grid, resolution = plan_grid(ms, geometry, options, uvw_m=rows[0])
    freqs = geometry.chan_freq_hz
    width = float(freqs[0, 1] - freqs[0, 0]) if freqs.shape[1] > 1 else float(np.diff(freqs[:, 0]).mean())
    hp_radius = gridmod.half_power_radius_rad(float(freqs.mean()))
    time_loss = 0.0
    if options.baseline_averaging and backend == "wsclean":
        time_loss = gridmod.baseline_averaging_loss(
            _uvw_by_baseline(*rows), size_wavelengths=options.baseline_averaging, freq_hz=float(freqs.max()),
            integration_s=_integration_s(geometry), radius_rad=hp_radius)
    # the channel averaging gets what the time averaging left of the budget: the peak losses multiply
    channel_budget = 1.0 - (1.0 - options.max_smearing_loss) / (1.0 - time_loss)
    if options.chan_avg is None:
        chan_avg, loss = gridmod.choose_channel_average(width, freqs.shape[1], freq_hz=float(freqs.min()),
                                                        radius_rad=hp_radius, beam_arcsec=resolution,
                                                        max_loss=channel_budget)
    else:
        chan_avg = int(options.chan_avg)
        loss = gridmod.averaging_loss(chan_avg, width, freq_hz=float(freqs.min()), radius_rad=hp_radius,
                                      beam_arcsec=resolution)
    channel_loss, loss = loss, 1.0 - (1.0 - loss) * (1.0 - time_loss)
    outside, catalog_bright = [], []
    if options.model_min_jy > 0:
        catalog_bright = sources_in_beam(None, geometry, catalog=options.catalog,
                                         min_apparent_flux_jy=options.model_min_jy)
        outside = _outside_image(catalog_bright, grid)
    timings["plan"] = _time.perf_counter() - t0
    log.info("%s: %s imaging %d x %d at %.1f\" (lambda/B_max %.1f\"), %d channels averaged, "
             "peak loss at half power %.1f%% (channels %.2f%%, baseline-dependent time averaging %.2f%%), "
             "%d catalog sources outside it subtracted", ms.name, backend, grid.imsize, grid.imsize,
             grid.cell_arcsec, resolution, chan_avg, 100 * loss, 100 * channel_loss, 100 * time_loss, len(outside))

    t = _time.perf_counter()
    vis = write_imaging_ms(ms, work / f"{ms.stem}.imaging.ms", data_column=options.data_column,
                           chan_avg=chan_avg, subtract=outside)
    timings["visibilities"] = _time.perf_counter() - t
    try:
        t = _time.perf_counter()
        if options.sefd_jy is None:
            from contimg.config import Settings

            defaults = Settings()
            sefd = sefd_jy(tsys_k=defaults.tsys_k, aperture_efficiency=defaults.aperture_efficiency)
        else:
            sefd = options.sefd_jy
        # one read of the weights for the noise prediction and the restoring beam (before imaging: the
        # beam is the imagers' input)
        weights = imaging_weights(vis.ms, robust=options.robust, imsize=grid.imsize, cell_arcsec=grid.cell_arcsec)
        predicted = weights.predicted_noise(noise_sigma_jy(sefd, width, _integration_s(geometry)))
        beam = None
        if options.restoring_beam == "weights":
            beam = restoring_beam(weights.u, weights.v, weights.imaging, imsize=grid.imsize,
                                  cell_arcsec=grid.cell_arcsec, resolution_arcsec=resolution,
                                  fitting_box_beams=options.beam_fitting_box)
        del weights
        timings["weights"] = _time.perf_counter() - t
        t = _time.perf_counter()
        terms, channels_out, deconvolution_channels = _fit_to_channels(options, len(vis.freqs_hz), ms.name)
        params = CleanParameters(imsize=grid.imsize, cell_arcsec=grid.cell_arcsec, robust=options.robust,
                                 niter=options.niter, nsigma=options.nsigma, auto_mask=options.auto_mask,
                                 mgain=options.mgain, threads=options.threads,
                                 spectral_terms=terms, channels_out=channels_out,
                                 deconvolution_channels=deconvolution_channels, padding=options.padding,
                                 wgridder_accuracy=options.wgridder_accuracy,
                                 baseline_averaging=options.baseline_averaging,
                                 parallel_gridding=options.parallel_gridding, restoring_beam=beam)

        def run(tag: str = "", clean: CleanParameters = params) -> dict:
            name = f"{prefix.name}.{tag}" if tag else prefix.name
            return run_imager(backend, vis.ms, work / name, clean, log_path=logs / f"{name}.{backend}.log",
                              timeout_s=options.timeout_s)

        pb = average_primary_beam(grid, geometry, vis.weights, vis.freqs_hz)
        timings["primary_beam"] = _time.perf_counter() - t
        selfcal, bright, fitted = {}, {}, []
        freq_hz = float((vis.freqs_hz[0] + vis.freqs_hz[-1]) / 2)
        if options.selfcal is not None or options.bright_source_snr:
            known = [s for s in catalog_bright if s not in outside]
            selfcal, bright, imager, fitted = image_and_refine(
                vis, pb, grid.wcs().celestial, run=run, params=params, options=options, noise_jy=predicted,
                freq_hz=freq_hz, table_path=selfcal_table, log_dir=logs, timings=timings, model=selfcal_model,
                prior=prior_model, known=known)
        else:
            t = _time.perf_counter()
            imager = run()
            timings["imager"] = _time.perf_counter() - t
        t = _time.perf_counter()
        integration = _integration_s(geometry)
        start = Time((geometry.times_s[0] - integration / 2) / 86400.0, format="mjd", scale="utc")
        products = write_products(imager["files"], prefix, pb=pb, pblimit=options.pblimit, freq_hz=freq_hz,
                                  bandwidth_hz=vis.bandwidth_hz, start=start, backend=backend)
        # the group's sky model (clean components and the fitted bright sources): the next group's
        # self-calibration model
        products["components"] = sc.write_components(
            group_components(products["model"], pb, fitted, min_flux_jy=10 * predicted, pblimit=options.pblimit),
            naming.image_product_path(prefix, "components"))
        timings["products"] = _time.perf_counter() - t
    finally:
        if not options.keep_visibilities:
            shutil.rmtree(work, ignore_errors=True)
    from astropy.io import fits

    h = fits.getheader(products["image"])
    restoring = (h["BMAJ"] * 3600.0, h["BMIN"] * 3600.0, h["BPA"])
    timings["total"] = _time.perf_counter() - t0
    return ImageResult(
        ms=ms, backend=backend, data_column=vis.column, products=products, grid=grid, resolution_arcsec=resolution,
        restoring_beam_arcsec=restoring, freq_hz=freq_hz, bandwidth_hz=vis.bandwidth_hz, start=start,
        integration_s=float(len(geometry.times_s) * integration), chan_avg=chan_avg, smearing_loss=loss,
        flagged_fraction=vis.flagged_fraction, predicted_noise_jy=predicted, subtracted_sources=vis.subtracted,
        timings=timings,
        imager={k: v for k, v in imager.items() if k != "files"},
        visibilities_ms=vis.ms if options.keep_visibilities else None, selfcal=selfcal, bright_sources=bright,
    )
