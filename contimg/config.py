"""Pipeline settings: documented defaults, overridable by ``CONTIMG_*`` variables.

Precedence, lowest first: the defaults below, environment variables
(``CONTIMG_<FIELD>`` upper-cased, e.g. ``CONTIMG_IMAGING_SIZE=2048``), then keyword
overrides (what the CLI flags pass). Settings are a frozen dataclass so a run's
configuration can be logged and compared but never mutated mid-run.

Data directories all default under one base directory (``CONTIMG_BASE_DIR``,
default ``./contimg-data``) so one variable moves a whole installation.

Every path setting is made absolute (``~`` expanded, relative paths resolved
against the working directory) when the settings are made: a relative path would
otherwise mean something else in a CASA child process, which runs in its log's
directory, or in a catalog row read from elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "CONTIMG_"


@dataclass(frozen=True)
class Settings:
    """All tunable knobs of the pipeline.

    Attributes are grouped by stage; units are in the names or stated here.
    Path attributes are always absolute: a relative one is resolved against the
    working directory when the settings are made.
    """

    # --- directories ---------------------------------------------------------
    base_dir: Path = Path("contimg-data")
    """Root under which the data directories default (``./contimg-data``: under the
    working directory at the time the settings are loaded)."""
    incoming_dir: Path | None = None
    """Where the correlator drops subband UVH5 files (default base/incoming)."""
    scratch_dir: Path | None = None
    """Fast disk for conversions in progress (default base/scratch)."""
    products_dir: Path | None = None
    """Measurement Sets, caltables, images (default base/products)."""
    archive_dir: Path | None = None
    """Long-term storage (default base/archive)."""
    catalog_dir: Path | None = None
    """Parquet product catalog (default base/catalog)."""
    quarantine_dir: Path | None = None
    """Bad inputs are moved here, never deleted (default base/quarantine)."""

    # --- instrument ----------------------------------------------------------
    expected_subbands: int = 16
    # Verified instrument facts (dish 4.65 m, names, bands) live in
    # contimg/instrument.py; only the uncertain ones are settings.
    tsys_k: float = 50.0
    """System temperature. UNCERTAIN: placeholder awaiting measurement (DOMAIN.md 9)."""
    aperture_efficiency: float = 0.7
    """UNCERTAIN: assumed, not measured (DOMAIN.md 9)."""

    # --- ingest --------------------------------------------------------------
    group_tolerance_s: float = 30.0
    """Subbands whose timestamps are within this of the group's first file join it.
    The seed used 30 s; the old code default was 60 s (DOMAIN.md 2)."""
    group_timeout_s: float = 600.0
    """A group still incomplete this long after its first file is reported incomplete."""
    file_settle_s: float = 10.0
    """A file whose size or mtime changed within this many seconds is still being written."""
    writer: str = "direct-subband"
    """MS writer: ``direct-subband`` (default) or ``pyuvdata`` (reference)."""
    convert_workers: int = 2
    """Worker threads that convert and write subbands in parallel (direct-subband writer)."""
    task_runner: str = "default"
    """Where per-subband conversion runs: ``default`` (worker threads in the converting process) or
    ``dask`` (one Prefect task per subband on a Dask cluster through prefect-dask's ``DaskTaskRunner``,
    through scratch files in the group's scratch directory, which every Dask worker must see). Per node."""
    dask_address: str | None = None
    """With ``task_runner = dask``: the scheduler to attach to (``tcp://host:8786``), whose workers may be on
    other nodes sharing the scratch filesystem; unset: a local cluster of ``dask_workers`` processes, started
    for each conversion."""
    dask_workers: int = 2
    """Worker processes (one thread each) of the local Dask cluster when ``dask_address`` is unset."""

    # --- calibration ---------------------------------------------------------
    bandpass_min_snr: float = 5.0
    gain_min_snr: float = 3.0
    calibration_memory_budget_gb: float = 3.5
    """Peak memory ``calibrate_ms`` aims at, GiB (issue 21). DATA and the solver's sums made from it in place
    are held whatever the budget (3 GiB on a full group, plus ~0.6 GiB of interpreter and libraries); DATA's
    read, the model, the normal equations and the StefCal problems are done in chunks that fit in what is
    left, with the same solutions to the bit. At 3.5 a full group peaks at ~3.6 GiB; 0: no limit."""
    cal_kb_validity_hours: float = 24.0
    """Delay (K) and bandpass (B) tables from a calibrator stay valid this long, in hours,
    either side of their set's time, until superseded by a newer passing set
    (``catalog.cal_registry.active_applylist``)."""
    refant: str | None = None
    """Reference antenna for every solve (name DSA-NNN or antenna number); default: ranked from the data."""
    cal_kb_min_flux_jy: float = 5.0
    """A calibrator at least this bright (catalog flux at 1.4 GHz, Jy) solves its own delay and
    bandpass; a fainter one solves gains only, against the K/B set in force (one bandpass
    under every gain set of the day, so that gain sets can be interpolated)."""
    calibrator_catalog: Path | None = None
    """Calibrator catalog (Parquet/CSV, or the VLA list text); default: the shipped one."""
    calibration_field_model_snr: float | None = 20.0
    """Solve each calibrator group twice: the second time with the field sources the catalog lacks added to
    the model, found in its own image above this many times the predicted noise and fitted through the
    drifting beam (:mod:`contimg.calibration.field_model`); 0: the catalog model only. Without them a
    target group 9 min from J0834+5534's read a 1 Jy source 14 % high with no corruption simulated at all
    (1.01 with them); the cost is one quick image and one solve more per iteration, per calibrator group."""
    calibration_field_model_min_fraction: float = 0.02
    """... and at least this fraction of the calibrator's apparent flux. What the solutions absorb of a missing
    source scales with its flux against the model's: the medium demo night's 1 Jy sources (15 % of J0834+5534's
    apparent flux) put 14 % on a target source; on a full-size J0834+5534 group whose uncatalogued sources were
    at most 1.2 % of it, 20 of them (10-100 mJy, 20-sigma threshold) added to the model changed no solution
    (bandpass error 1.93 % rms either way) and cost 309 s more. With nothing above the threshold the first
    solve stands (one quick image more, no second solve)."""
    calibration_field_model_max: int = 20
    """At most this many field sources (brightest apparent first) join the calibration model."""
    calibration_field_model_iterations: int = 2
    """Field models made, each followed by a solve. A source the model lacks is partly absorbed by the
    solutions, so it reads faint in the first image: on 16 antennas a 2 Jy source read 1.03 Jy, then 1.63,
    and the bandpass errors were the true model's (0.0416 against 0.0410, 0.0619 without) after two."""
    cal_g_max_gap_hours: float = 3.0
    """Gain (G) sets: a time bracketed by two G sets at most twice this apart gets both
    (interpolated); otherwise the nearest set within this many hours, with a warning;
    otherwise the group waits for the next calibrator transit (``NoCalibrationError``)."""
    # waiting for calibration ends (tasks/waiting.py): then the group is ms_index ``uncalibrated``
    cal_wait_horizon_hours: float | None = None
    """A group no set covers stops waiting once a group that starts more than this many hours after its mid
    time has been converted (data time); unset: ``cal_g_max_gap_hours``, beyond which a later gain set
    cannot cover it. Negative: waiting does not end by data time."""
    cal_wait_max_hours: float = 24.0
    """... or this many hours (wall clock) after it was first recorded waiting, when no data come to end
    it (the correlator down, an old MS processed by hand). Negative: no wall-clock limit."""
    calibrator_dec_band_deg: float = 1.5
    calibrator_min_flux_jy: float = 1.0

    # --- flagging ------------------------------------------------------------
    flag_targets: bool = True
    """Flag every group the target flow images, before applycal, as calibrator groups are flagged (reset to
    the converted flags, zeros and NaN, autocorrelations, subband edges, AOFlagger:
    :func:`contimg.calibration.flagging.flag_for_calibration`), once per MS. False: images carry the RFI."""
    max_flagged_fraction: float = 0.5
    """A group is not imaged (``ms_index`` ``failed``) when flagging flags more than this fraction of its data:
    of the cross-correlations outside the subband edge channels that the correlator delivered unflagged
    (the flag report's ``delivered_flagged_fraction``, 0..1). The seed's criterion: < 50 % flagged. The
    autocorrelations and edge channels (flagged whatever the data; half the band of a 4-channel test group)
    and the correlator's flags (3 of the small preset's 12 antennas: 45 % of its baselines) do not count."""

    # --- imaging -------------------------------------------------------------
    imaging_backend: str | None = None
    """``wsclean`` or ``tclean``; unset: WSClean when installed, else tclean."""
    imaging_size: int | None = None
    """Pixels on a side; unset: cover the averaged primary beam down to ``imaging_coverage_level``
    (the seed's 1024 at ~8" covers 2.3 deg, too little: the calibrator 1 deg north leaves stripes)."""
    imaging_cell_arcsec: float | None = None
    """Pixel size; unset: lambda / B_max over ``imaging_pixels_per_beam``."""
    imaging_pixels_per_beam: float = 3.0
    imaging_coverage_level: float = 0.2
    """Primary-beam response at the image edge when the size is derived."""
    imaging_robust: float = 0.0
    imaging_niter: int = 10000
    """Clean components at most (the seed's settings value; its image_ms default of 1000 stopped a full group
    with 15-sigma residuals left, the noise 1.28x the prediction instead of 1.12x). Cleaning ends at
    ``imaging_nsigma`` first."""
    imaging_nsigma: float = 3.0
    """Clean down to this many times the measured noise (WSClean auto-threshold, tclean nsigma)."""
    imaging_pblimit: float = 0.2
    imaging_chan_avg: int | None = None
    """Channels averaged before gridding; unset: the most that ``imaging_max_smearing_loss`` allows; 1: none."""
    imaging_max_smearing_loss: float = 0.05
    """Peak loss from channel and baseline-dependent time averaging together allowed at the half-power radius."""
    imaging_model_min_jy: float = 0.05
    """Catalog sources outside the image this bright (peak apparent, 1.4 GHz) are subtracted before
    imaging; 0 disables."""
    imaging_spectral_terms: int = 2
    """Terms of each clean component's spectrum (WSClean ``-fit-spectral-pol``, tclean ``mtmfs`` nterms); 1: flat.
    J0834+5534 (6.3 Jy apparent, 1 deg north) alone, noise-free, 2048 px: one term left a residual floor of
    2.7 mJy (1585 pixels above 5 sigma of the thermal noise, on its row and column); two terms over 4
    sub-bands, 0.88 mJy (none). The beam makes its apparent spectral index ~-1.1 over the 13 % band."""
    imaging_channels_out: int = 4
    """WSClean sub-band images cleaned jointly when ``imaging_spectral_terms`` > 1 (2: floor 0.92 mJy)."""
    imaging_restoring_beam: str = "weights"
    """``weights``: both imagers restore with the Gaussian fitted to the PSF of the imaging weights
    (:mod:`contimg.imaging.restoring_beam`); ``imager``: each fits its own PSF. On the full group at 1024 px
    their own fits differed (WSClean 55.9" x 12.7" PA 110, tclean 50.8" x 22.9" PA -2) and so did their source
    peaks (tclean / WSClean 1.03 +- 4 %); with one beam, 0.99 +- 1.5 %."""
    imaging_beam_fitting_box: float = 10.0
    """Width of the box of that Gaussian fit, in theoretical beams (lambda / B_max; WSClean's default)."""
    imaging_mgain: float = 0.9
    """Major-cycle gain (WSClean ``-mgain``). 0.95 (the default until stop 27) put 1 Jy sources at the beam
    edge of a 39-antenna group 12-14 % low in a converged clean, beside an 8.8 Jy source fitted and subtracted
    (its first minor loop cleaned to 5 % of the peak on a PSF that sources drifting through the beam edge do
    not have); 0.9, 0.85 and 0.8 put them within 3 % (tests/test_faint_beside_bright.py, benchmarks/RESULTS.md,
    "Variability on a simulated night"). 0.9 instead of 0.8 took 5 major cycles instead of 7 with the same
    residual floor (0.89 mJy) in the experiment above; 0.95 took 4 on the full group."""
    imaging_deconvolution_channels: int | None = 2
    """WSClean ``-deconvolution-channels``: the minor cycles fit the spectral terms to this many of the
    ``imaging_channels_out`` sub-bands (the residuals and products keep all of them); unset: all. 2 of 4 saved
    13 % of WSClean's CPU on the full benchmark group with the same truth metrics (benchmarks/RESULTS.md, Imaging)."""
    imaging_padding: float = 1.1
    """WSClean ``-padding``, the gridded image over the output image (WSClean's default 1.2). 1.0 saved 13 % of
    WSClean's CPU on the full benchmark group with the same truth metrics, but with mgain 0.95 it left a 63 mJy
    residual at the edge of a small test image (1.1 deg, a 5 Jy source 0.1 deg inside its edge); 1.05, 1.1 and
    1.2 left 2.1, 1.9 and 2.0 mJy there."""
    imaging_wgridder_accuracy: float = 3e-3
    """WSClean w-gridder accuracy: 3e-3 saved 16 % of WSClean's CPU against 1e-3 with the same truth metrics
    (1e-4, WSClean's default, cost 25 % more than 1e-3 for the same noise-free floor)."""
    imaging_baseline_averaging: float | None = 4.0
    """WSClean baseline-dependent time averaging, the uv-track length averaged, wavelengths; unset: off. 4 leaves
    47 % of the visibilities (22 % less WSClean CPU) for a 0.2 % peak loss at the half-power radius, which
    comes out of ``imaging_max_smearing_loss`` before the channel averaging is chosen."""
    imaging_parallel_gridding: int = 2
    """WSClean ``-parallel-gridding``: sub-band images gridded at the same time. 2 took WSClean from 103 to 83 s
    wall on the full benchmark group (quiet machine; CPU 148 -> 142 s), the same images, the same peak memory."""
    imaging_threads: int = 2
    imaging_find_sources: bool = True
    """Run PyBDSF on every image (and the truth cross-match where the simulator left a sidecar)."""
    imaging_sidelobe_fraction: float = 0.05
    """A detection whose peak is below this fraction of a brighter detection's PSF sidelobe at its position is
    marked ``sidelobe_suspect`` (:mod:`contimg.qa.sidelobes`). In the full simulated group the 4 false
    detections (J0834+5534's N-S sidelobe, 1000 px south) had 2.0-3.4 %, the lowest real source 8.0 %."""

    imaging_bright_source_snr: float | None = 50.0
    """Sources whose first-pass clean components reach this many times the predicted noise (apparent flux)
    are fitted through the drifting beam (flux, spectral index, position), subtracted from the visibilities
    before the final imaging pass and restored into it afterwards (:mod:`contimg.imaging.bright_sources`);
    unset or 0: cleaned like every other source (CLEAN models a constant sky: the drift of a bright source
    through the beam during a group is left on the PSF's row and column). 50, not 300 (until stop 27): a
    cleaned source's unfollowed drift leaves sidelobes of ~1 % of it on its neighbours, which put 1 Jy
    sources at a 39-antenna group's beam edge 3-4 % high (tests/test_faint_beside_bright.py), and on a full
    calibrator group fitting down to 50 sigma halved the reduced chi2 of the sources above 50 sigma (42 -> 22)
    at no measurable cost: the fit takes 5-10 s more, the final clean less (benchmarks/RESULTS.md,
    "Variability on a simulated night"). The noise and the
    sidelobes both fall as one over the antennas, so the threshold in sigma holds for any array."""
    imaging_bright_source_max: int = 10
    """At most this many bright sources are fitted and subtracted, brightest first."""
    imaging_first_pass_quick: bool = True
    """When self-calibration or bright sources call for a final imaging pass, the first pass cleans with one
    spectral term down to ``imaging_first_pass_nsigma`` x the noise: it only gives the model and the gate's
    "before". A faint field that needs no final pass keeps the first pass as its product."""
    imaging_first_pass_nsigma: float = 5.0
    imaging_first_pass_mgain: float = 0.95
    """WSClean ``-mgain`` of that quick first pass (``imaging_mgain`` is the final pass's). Its clean components
    are the self-calibration model: on a 39-antenna group with 40-min-old gains, a first pass at 0.95 (final
    0.9) gave phase solutions 1.6 deg rms from the truth and source fluxes 1.012 +- 0.009 of the true gains'
    image; both passes at 0.9, 4.7 deg and 0.999 +- 0.023 (tests/test_selfcal.py; why is not understood). It
    is also the faster."""

    # --- forced photometry (contimg.photometry, tasks/photometry.py) --------
    photometry: bool = True
    """Measure every group image at the reference positions after it is imaged (table ``photometry``); a
    failure is logged and recorded in ``stage_runs``, never the group's."""
    photometry_reference: Path | None = None
    """Reference list (Parquet or CSV: name, ra_deg, dec_deg[, flux_jy]); unset: the pipeline's own detections
    (table ``sources``) in mosaics covering the image, else in group images, one per source within half a beam."""
    photometry_flux_scale_sources: str | None = None
    """Comma-separated reference names the flux scale is normalised to; unset: every reference with a flux
    measured at ``photometry_flux_scale_min_snr`` or more in the image."""
    photometry_flux_scale_min_snr: float = 50.0
    """Without named references, those measured at least this significant set an image's flux scale."""
    photometry_flux_scale_min_sources: int = 5
    """An image's flux scale is the median over at least this many references, else 1.0 (not normalised)."""

    # --- self-calibration (contimg.calibration.selfcal) ----------------------
    selfcal: bool = True
    """Self-calibrate every imaged group between a first and a final imaging pass, against the first pass's
    clean components predicted through the drifting beam, kept only if the gate passes."""
    selfcal_model_min_snr: float = 10.0
    """Clean-component islands enter the self-calibration model above this many times the predicted noise."""
    selfcal_solint_s: float | None = None
    """Phase solution interval, s; unset: the shortest whole number of integrations reaching
    ``selfcal_target_snr``."""
    selfcal_target_snr: float = 10.0
    """Median SNR per phase solution the automatic interval aims for (10: 0.1 rad of phase noise)."""
    selfcal_amplitude_min_snr: float = 1000.0
    """Amplitudes (one per antenna and pol over the group, mean 1) are solved only when their median SNR
    reaches this. At target fields' SNR (100-200) they biased peaks by +3.6 %: measured, so off in practice."""
    selfcal_min_significance: float = 5.0
    """The chi2 drop must exceed what fitting noise gives by this many standard deviations (else: skipped)."""
    selfcal_max_noise_ratio: float = 1.0
    """Keep the solutions only if the residual noise after / before is at most this ..."""
    selfcal_max_flux_change: float = 0.10
    """... and the median fractional change of the brightest model sources' peaks is at most this."""
    selfcal_prior_max_gap_s: float = 400.0
    """A group that starts at most this long after an imaged group at the same pointing self-calibrates
    against that group's sky model before imaging (one imaging pass; consecutive groups share most of the
    beam), if the model fits its data; otherwise, and after a gap, image -> self-calibrate -> image. 0: never."""

    # --- mosaics (issue 20) ----------------------------------------------------
    mosaic_n_groups: int = 12
    """Groups of a full mosaic (DOMAIN.md: "12 MS per hour"). Windows are clock hours (UTC): a group belongs
    to the hour its start time falls in, so every group is in exactly one hourly mosaic; at the 309.24-s cadence
    an hour holds 11 or 12 group starts (3600 / 309.24 = 11.6). ``contimg mosaic --start T`` without ``--end``
    spans this many groups."""
    mosaic_settle_s: float = 1800.0
    """An hour's window counts as closed (no more groups will come) this long after its end, or as soon as a
    group starting after it is recorded; the hourly sweep mosaics closed windows only."""
    mosaic_lookback_hours: float = 24.0
    """The hourly sweep looks for windows not yet mosaicked this far back."""
    mosaic_interpolation: str = "bilinear"
    """``reproject_interp`` order of the mosaic: ``bilinear`` (peaks 1.3 % low at the pipeline's 8 x 14 pixels per
    beam, integrated fluxes kept; 12 full-size groups in 157 s under load) or ``bicubic`` (peaks 0.3 % low, +23 %
    CPU). benchmarks/RESULTS.md, "Mosaic"."""
    mosaic_find_sources: bool = True
    """Run PyBDSF on each mosaic (``-sources.parquet``: the default photometry reference)."""

    # --- catalog / orchestration --------------------------------------------
    casa_concurrency: int = 1
    """CASA child processes allowed at once (Prefect concurrency limit ``casa``)."""
    lease_seconds: float = 900.0
    """A run holds a group through a lease file (``<scratch>/leases/<stem>.lease``) that expires this
    many seconds after its last renewal: the lease of a killed run is taken over after at most this
    long (at once when its owner is a process gone from this same machine)."""
    lease_heartbeat_s: float | None = None
    """Seconds between renewals of a held lease; unset: a third of ``lease_seconds``."""

    # --- Prefect server (issue 22) -------------------------------------------
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    """The node's Prefect server, the address of ``contimg serve``. A command that runs a flow uses it when it
    answers; otherwise an ephemeral server on a database of the command's own, never a second server on a
    live server's database (``PREFECT_API_URL`` in the environment wins over this)."""

    # --- products over HTTP (issue 21) ---------------------------------------
    products_http_host: str = "127.0.0.1"
    """Address ``contimg serve`` serves the products and archive directories on, read-only, beside the Prefect
    UI (:mod:`contimg_cli.products_http`); ``0.0.0.0``: every interface (then set ``products_base_url``)."""
    products_http_port: int = 4201
    """Port of that server."""
    products_base_url: str | None = None
    """Where browsers reach that server: artifacts and reports link ``<base>/products/<path under products_dir>``
    and ``<base>/archive/<path under archive_dir>`` (:func:`contimg.naming.product_url`). Unset:
    ``http://<products_http_host>:<products_http_port>`` (127.0.0.1 for a wildcard host). Behind a reverse
    proxy, its public URL (e.g. ``https://ops.example.org/contimg``)."""

    # --- archive -------------------------------------------------------------
    archive_raw_retention_days: float = 7.0
    """Raw subband files of a finished group are deleted from where ingest found them this many days
    after the group's observation, and only once its MS and an archived copy of the files verify
    (SHA-256). A few days let an operator reconvert from the fast disk; negative: never delete."""

    # --- variability (contimg.variability, the catalog's variability view) -----
    # A source is a candidate when all four hold, over its good group epochs (no photometry flags).
    # Measured on synthetic forced photometry of the demo's night (24 small groups, 5.9 mJy/beam,
    # the simulator's field population and night_variables; tests/test_variability.py, 10 nights):
    # of 171 constant sources, those with V >= 0.1 had eta <= 3.8 and those with eta >= 5 had V <= 0.075
    # with a 5 % per-epoch systematic error that rms_jy does not carry (2.2 and none with no such error);
    # the injected flare, dip and drift (1 Jy quiescent) had eta >= 2400, 590 and 150 and V >= 0.36, 0.23
    # and 0.17 (at 32 mJy/beam of image noise instead of 5.9: eta >= 89, 19 and 6.0, all still flagged).
    # At an 8 % systematic error 5 of the 171 constants pass both: the thresholds hold while it stays <= 5 %.
    variability_eta_min: float = 5.0
    """eta (the reduced chi-square against a constant, VAST's eta_peak) at least this. chi2(9)/9 > 5 has
    probability 1e-6 for a constant source with right errors at the fewest epochs allowed."""
    variability_v_min: float = 0.1
    """Modulation index V (sample std / mean) at least this: a bright constant source's eta grows with
    systematic errors (1 + (f SNR)^2 for a fractional error f), its V stays ~f."""
    variability_min_epochs: int = 10
    """Good group epochs at least this."""
    variability_min_snr: float = 5.0
    """Largest SNR over the epochs at least this (the source is seen at least once)."""

    @property
    def lease_heartbeat_interval_s(self) -> float:
        """The effective heartbeat (``lease_heartbeat_s``, or a third of ``lease_seconds``)."""
        return self.lease_heartbeat_s if self.lease_heartbeat_s else self.lease_seconds / 3

    @property
    def cal_wait_horizon_effective_hours(self) -> float:
        """The effective data-time horizon of waiting (``cal_wait_horizon_hours``, or ``cal_g_max_gap_hours``)."""
        return self.cal_g_max_gap_hours if self.cal_wait_horizon_hours is None else self.cal_wait_horizon_hours

    def __post_init__(self) -> None:
        # Every path absolute, against the working directory of now; then derive
        # directories that were not given explicitly from base_dir.
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, absolute_path(value))
        for name, sub in _DIR_DEFAULTS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.base_dir / sub)

    def replace(self, **changes: typing.Any) -> "Settings":
        """Return a copy with ``changes`` applied (directories re-derived)."""
        return load_settings(environ={}, _base=self, **changes)

    def data_dirs(self) -> dict[str, Path]:
        """Every data directory, keyed by setting name."""
        return {name: getattr(self, name) for name in _DIR_DEFAULTS}

    def ensure_dirs(self) -> None:
        """Create every data directory (idempotent)."""
        for path in self.data_dirs().values():
            path.mkdir(parents=True, exist_ok=True)


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory.

    ``..`` components are normalised; symbolic links are kept (not resolved).
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


#: Settings that hold a path (made absolute by ``Settings.__post_init__``).
_PATH_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if "Path" in str(f.type))

_DIR_DEFAULTS = {
    "incoming_dir": "incoming",
    "scratch_dir": "scratch",
    "products_dir": "products",
    "archive_dir": "archive",
    "catalog_dir": "catalog",
    "quarantine_dir": "quarantine",
}


def _coerce(value: str, annotation: typing.Any) -> typing.Any:
    text = str(annotation)
    if "Path" in text:
        return Path(value)
    if "bool" in text:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if "int" in text and "float" not in text:
        return int(value)
    if "float" in text:
        return float(value)
    return value


def load_settings(
    *,
    environ: typing.Mapping[str, str] | None = None,
    _base: Settings | None = None,
    **overrides: typing.Any,
) -> Settings:
    """Build settings from defaults, the environment and explicit overrides.

    Parameters
    ----------
    environ : mapping, optional
        Environment to read ``CONTIMG_*`` variables from (default ``os.environ``).
    **overrides
        Field values that win over the environment (CLI flags). ``None`` values
        are ignored so that unset CLI options fall through.

    Raises
    ------
    ValueError
        For an unknown setting name or a value that cannot be parsed.
    """
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(Settings)
    values: dict[str, typing.Any] = {}
    if _base is not None:
        values = {f.name: getattr(_base, f.name) for f in dataclasses.fields(Settings)}
        # Directories derived from the old base must be re-derived from a new one.
        if "base_dir" in overrides:
            for name in _DIR_DEFAULTS:
                if getattr(_base, name) == _base.base_dir / _DIR_DEFAULTS[name]:
                    values[name] = None
    for f in dataclasses.fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env and env[key] != "":
            try:
                values[f.name] = _coerce(env[key], hints[f.name])
            except ValueError as exc:
                raise ValueError(f"{key}={env[key]!r} is not a valid {hints[f.name]}") from exc
    names = {f.name for f in dataclasses.fields(Settings)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown setting {key!r}; known: {sorted(names)}")
        if value is not None:
            values[key] = value
    return Settings(**values)


def pipeline_instance(settings: Settings) -> str:
    """The pipeline instance these settings belong to: an id of their resolved catalog directory.

    ``<name>-<8 hex digits>``: the name of the directory holding the catalog (the
    base directory, by default) for people, and a SHA-256 prefix of the catalog
    directory's real path (symbolic links resolved) so that two base directories
    never share an id, and every node that mounts the catalog at the same path
    agrees on it. Events carry it (label ``contimg.instance``), each deployment's
    triggers match only their own, and flows refuse another instance's runs
    (issue 22: one pipeline's events started another's flows).

    Returns
    -------
    str
        E.g. ``contimg-data-1f3a9c2e``.
    """
    catalog = Path(os.path.realpath(settings.catalog_dir))
    digest = hashlib.sha256(str(catalog).encode()).hexdigest()[:8]
    name = catalog.parent.name if catalog.name == "catalog" else catalog.name
    # deployment names and trigger matches: no '/', and no glob characters
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "root"
    return f"{name}-{digest}"
