"""The two imagers behind one call: WSClean (the Debian package) and CASA ``tclean``.

Both image the DATA column of the single-SPW scratch MS
(:mod:`contimg.imaging.visibilities`) with the same parameters: Stokes I,
multi-frequency synthesis over the band, Briggs weighting, clean to ``niter``
components or ``nsigma`` times the measured noise, and w-terms (WSClean's
w-gridder; tclean's ``widefield`` gridder with automatic w-planes).

With ``spectral_terms`` > 1 the clean components carry a spectrum: WSClean
images ``channels_out`` sub-bands, cleans them jointly and fits a polynomial of
``spectral_terms`` terms to each component (``-join-channels -fit-spectral-pol``);
tclean runs multi-term MFS (``deconvolver='mtmfs'``, ``nterms``). Both hand back
the band-averaged (MFS, Taylor-0) images. A single term cannot model a bright
source whose apparent spectrum is steep (an Airy beam 1 deg off axis over a 13 %
band): its residual is the source times the spectral PSF, features at 0.1 % of
it along the PSF's rows and columns (docs/architecture.md, Imaging).

Each writes FITS files ``<prefix>-<kind>.fits`` for kind in :data:`RAW_KINDS`;
primary-beam correction is ours (:mod:`contimg.imaging.products`), the same for both.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time as _time
from dataclasses import dataclass
from pathlib import Path

from contimg.errors import CasaError, ContimgError, InvalidInputError

log = logging.getLogger(__name__)

BACKENDS = ("wsclean", "tclean")
#: Products every backend writes.
RAW_KINDS = ("image", "residual", "model", "psf")


class ImagingError(ContimgError):
    """An imager failed; the message names the log."""


@dataclass(frozen=True)
class CleanParameters:
    """What both imagers are asked to do.

    Attributes
    ----------
    imsize : int
        Pixels on a side.
    cell_arcsec : float
    robust : float
        Briggs robustness.
    niter : int
        Maximum clean components.
    nsigma : float
        Stop cleaning at this many times the measured residual noise
        (WSClean ``-auto-threshold``, tclean ``nsigma``).
    auto_mask : float or None
        WSClean ``-auto-mask`` level (sigma); tclean cleans without a mask.
    mgain : float
        Major-cycle gain (WSClean ``-mgain``; tclean ``cyclefactor`` is left at its default).
    threads : int
        Threads for WSClean.
    spectral_terms : int
        Terms of each clean component's spectrum (1: flat, Hogbom MFS; 2: a slope;
        WSClean ``-fit-spectral-pol``, tclean ``mtmfs`` ``nterms``).
    channels_out : int
        WSClean sub-band images cleaned jointly when ``spectral_terms`` > 1 (at least
        ``spectral_terms``; tclean's multi-term MFS needs none).
    deconvolution_channels : int or None
        WSClean only: fit the spectral polynomial to this many sub-bands (of
        ``channels_out``) during the minor cycles (``-deconvolution-channels``); None, or
        ``channels_out`` or more: all. Ignored without joined sub-bands.
    padding : float
        WSClean only: the gridded image is this factor larger than the output (``-padding``),
        so that aliased sources fall outside it.
    wgridder_accuracy : float
        WSClean only: the w-gridder's target accuracy (``-wgridder-accuracy``).
    baseline_averaging : float or None
        WSClean only: baseline-dependent time averaging to this uv-track length,
        wavelengths (``-baseline-averaging``); None: off.
    parallel_gridding : int
        WSClean only: sub-band images gridded at the same time (``-parallel-gridding``); 1: one
        after the other.
    restoring_beam : (float, float, float) or None
        Restore with this Gaussian: FWHM major and minor (arcsec), position angle (deg east
        of north) (WSClean ``-beam-shape``, tclean ``restoringbeam``); None: each imager fits
        its own PSF.
    """

    imsize: int
    cell_arcsec: float
    robust: float = 0.0
    niter: int = 10000
    nsigma: float = 3.0
    auto_mask: float | None = 5.0
    mgain: float = 0.95
    threads: int = 2
    spectral_terms: int = 1
    channels_out: int = 1
    deconvolution_channels: int | None = None
    padding: float = 1.2
    wgridder_accuracy: float = 1e-3
    baseline_averaging: float | None = None
    parallel_gridding: int = 1
    restoring_beam: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.spectral_terms < 1:
            raise InvalidInputError(f"spectral_terms must be >= 1, got {self.spectral_terms}")
        if self.spectral_terms > 1 and self.channels_out < self.spectral_terms:
            raise InvalidInputError(f"{self.spectral_terms} spectral terms need at least as many output channels, "
                                    f"got channels_out={self.channels_out}")
        if self.joined and self.deconvolution_channels is not None and \
                self.deconvolution_channels < self.spectral_terms:
            raise InvalidInputError(f"{self.spectral_terms} spectral terms need at least as many deconvolution "
                                    f"channels, got deconvolution_channels={self.deconvolution_channels}")
        if self.padding < 1.0:
            raise InvalidInputError(f"padding must be >= 1, got {self.padding}")

    @property
    def joined(self) -> bool:
        """WSClean images several sub-bands and writes the band's ``-MFS-`` products."""
        return self.spectral_terms > 1 and self.channels_out > 1


def wsclean_path() -> str | None:
    """The ``wsclean`` executable on PATH, or None."""
    return shutil.which("wsclean")


def default_backend() -> str:
    """``wsclean`` when installed, else ``tclean``."""
    return "wsclean" if wsclean_path() else "tclean"


def run_imager(backend: str, vis, prefix, params: CleanParameters, *, log_path, timeout_s: float | None = None) -> dict:
    """Image ``vis`` into ``<prefix>-{image,residual,model,psf}.fits``.

    Parameters
    ----------
    backend : {"wsclean", "tclean"}
    vis : path-like
        A single-SPW MS whose DATA column is imaged.
    prefix : path-like
        Output prefix (its directory is created).
    params : CleanParameters
    log_path : path-like
        The imager's log.
    timeout_s : float, optional
        Kill the imager after this many seconds.

    Returns
    -------
    dict
        ``backend``, ``seconds``, ``command`` (WSClean) or ``params`` (tclean), and
        ``files`` {kind: Path}.
    """
    prefix = Path(prefix).resolve()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    if backend == "wsclean":
        out = _run_wsclean(Path(vis).resolve(), prefix, params, log_path=Path(log_path).resolve(), timeout_s=timeout_s)
    elif backend == "tclean":
        out = _run_tclean(Path(vis).resolve(), prefix, params, log_path=Path(log_path).resolve(), timeout_s=timeout_s)
    else:
        raise InvalidInputError(f"unknown imaging backend {backend!r}; use one of {BACKENDS}")
    files = raw_products(backend, prefix, params)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ImagingError(f"{backend} finished without writing {missing}; see {log_path}")
    out["files"] = files
    return out


def raw_products(backend: str, prefix, params: CleanParameters) -> dict[str, Path]:
    """The imager's band-averaged products {kind: path}: WSClean's ``-MFS-`` ones when it joined sub-bands."""
    infix = "-MFS" if backend == "wsclean" and params.joined else ""
    return {kind: Path(f"{prefix}{infix}-{kind}.fits") for kind in RAW_KINDS}


def wsclean_command(vis: Path, prefix: Path, params: CleanParameters) -> list[str]:
    """The WSClean command line for ``params``."""
    cmd = [wsclean_path() or "wsclean", "-j", str(params.threads),
           "-size", str(params.imsize), str(params.imsize), "-scale", f"{params.cell_arcsec}asec",
           "-weight", "briggs", str(params.robust), "-pol", "I", "-data-column", "DATA",
           "-niter", str(params.niter), "-mgain", str(params.mgain), "-auto-threshold", str(params.nsigma),
           "-use-wgridder", "-wgridder-accuracy", f"{params.wgridder_accuracy:g}", "-padding", f"{params.padding:g}",
           "-no-update-model-required", "-no-dirty", "-log-time",
           "-temp-dir", str(prefix.parent), "-name", str(prefix)]
    if params.auto_mask:
        cmd[-2:-2] = ["-auto-mask", str(params.auto_mask)]
    if params.baseline_averaging:
        cmd[-2:-2] = ["-baseline-averaging", f"{params.baseline_averaging:g}"]
    if params.parallel_gridding > 1:
        cmd[-2:-2] = ["-parallel-gridding", str(params.parallel_gridding)]
    if params.restoring_beam is not None:
        cmd[-2:-2] = ["-beam-shape", *(f"{x:.4f}" for x in params.restoring_beam)]
    if params.joined:
        cmd[-2:-2] = ["-channels-out", str(params.channels_out), "-join-channels",
                      "-fit-spectral-pol", str(params.spectral_terms)]
        if params.deconvolution_channels and params.deconvolution_channels < params.channels_out:
            cmd[-2:-2] = ["-deconvolution-channels", str(params.deconvolution_channels)]
    return cmd + [str(vis)]


def _run_wsclean(vis: Path, prefix: Path, params: CleanParameters, *, log_path: Path, timeout_s) -> dict:
    if wsclean_path() is None:
        raise ImagingError("wsclean is not installed (apt-get install wsclean); use --backend tclean")
    cmd = wsclean_command(vis, prefix, params)
    started = _time.perf_counter()
    with open(log_path, "w") as logf:
        logf.write(" ".join(cmd) + "\n")
        logf.flush()
        try:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  cwd=prefix.parent, env=dict(os.environ, OMP_NUM_THREADS=str(params.threads)))
        except subprocess.TimeoutExpired as exc:
            raise CasaError(f"wsclean on {vis} timed out after {timeout_s} s", log_path=log_path,
                            crashed=True) from exc
    if proc.returncode != 0:
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-15:])
        # a signal (negative code) is a crash worth a retry; an error exit is not
        raise (CasaError(f"wsclean on {vis} was killed (signal {-proc.returncode})", log_path=log_path,
                         log_tail=tail, crashed=True) if proc.returncode < 0 else
               ImagingError(f"wsclean on {vis} failed (exit {proc.returncode}); see {log_path}:\n{tail}"))
    return {"backend": "wsclean", "command": cmd, "seconds": _time.perf_counter() - started,
            "clean": clean_stop(Path(log_path).read_text(errors="replace"))}


#: A clean whose last minor loop stopped on a residual peak this many times the deepest threshold it had
#: cleaned to has diverged (converged runs stop within ~1.6x, also at the iteration limit; the divergences
#: seen on sparse-array groups stopped at 2.2-37x, with source fluxes off by up to 40 %, or raised their
#: major-cycle threshold from 8 to 131 mJy before stopping on 256 mJy).
CLEAN_DIVERGED_RATIO = 2.0

_UNITS_JY = {"Jy": 1.0, "mJy": 1e-3, "µJy": 1e-6, "uJy": 1e-6, "nJy": 1e-9}
_STOP = re.compile(r"Stopped on peak (-?[\d.eE+-]+) (\S*Jy), because (.+?)\.?\s*$", re.MULTILINE)
_THRESHOLD = re.compile(r"(?:global threshold of|Next major iteration at:) (-?[\d.eE+-]+) (\S*Jy)")


def clean_stop(log_text: str) -> dict:
    """How WSClean's last minor loop ended, from its log, and whether the clean diverged.

    Returns
    -------
    dict
        ``stop_peak_jy`` (the residual peak it stopped on, Jy), ``threshold_jy`` (the deepest threshold
        any minor loop cleaned to, Jy), ``reason`` (WSClean's words) and ``diverged``: the last peak is
        over :data:`CLEAN_DIVERGED_RATIO` times that threshold (the residual grew instead of shrinking,
        within the last minor loop or from one major cycle to the next). Empty when the log has no clean.
    """
    stops = _STOP.findall(log_text)
    if not stops:
        return {}
    value, unit, reason = stops[-1]
    peak = float(value) * _UNITS_JY.get(unit, 1.0)
    thresholds = [float(v) * _UNITS_JY.get(u, 1.0) for v, u in _THRESHOLD.findall(log_text)]
    threshold = min((t for t in thresholds if t > 0), default=float("nan"))
    diverged = threshold > 0 and abs(peak) > CLEAN_DIVERGED_RATIO * threshold
    return {"stop_peak_jy": peak, "threshold_jy": threshold, "reason": reason, "diverged": bool(diverged)}


def divergence_warning(clean: dict) -> str:
    """One line for the log and the command line about a diverged clean (:func:`clean_stop`)."""
    return (f"the clean diverged: it stopped on a residual peak of {1e3 * clean['stop_peak_jy']:.1f} mJy, over "
            f"{CLEAN_DIVERGED_RATIO:g}x the deepest threshold it reached ({1e3 * clean['threshold_jy']:.1f} mJy); "
            "fluxes in this image may be wrong")


def _run_tclean(vis: Path, prefix: Path, params: CleanParameters, *, log_path: Path, timeout_s) -> dict:
    from contimg.casa import run_in_casa

    started = _time.perf_counter()
    tparams = tclean_parameters(vis, prefix, params)
    run_in_casa("contimg.imaging.backends:tclean_to_fits", tparams, str(prefix), log_path=log_path,
                timeout=timeout_s)
    return {"backend": "tclean", "params": tparams, "seconds": _time.perf_counter() - started}


def tclean_parameters(vis: Path, prefix: Path, params: CleanParameters) -> dict:
    """The ``tclean`` parameters matching :func:`wsclean_command`."""
    return {
        "vis": str(vis), "imagename": f"{prefix}.casa", "datacolumn": "data",
        "imsize": [params.imsize, params.imsize], "cell": f"{params.cell_arcsec}arcsec",
        "stokes": "I", "specmode": "mfs", "gridder": "widefield", "wprojplanes": -1,
        "deconvolver": "mtmfs" if params.spectral_terms > 1 else "hogbom",
        "nterms": max(params.spectral_terms, 1), "weighting": "briggs", "robust": params.robust,
        "niter": params.niter, "nsigma": params.nsigma, "gain": 0.1,
        # no beam model for DSA-110 in CASA: no pb mask, no pb normalisation (ours is applied after)
        "pblimit": -1e-4,
        "restoringbeam": ("common" if params.restoring_beam is None else
                          [f"{params.restoring_beam[0]:.4f}arcsec", f"{params.restoring_beam[1]:.4f}arcsec",
                           f"{params.restoring_beam[2]:.4f}deg"]), "savemodel": "none", "interactive": False,
    }


def tclean_to_fits(tparams: dict, prefix: str) -> None:  # pragma: no cover - runs in the CASA child
    """Run tclean, then export its images as ``<prefix>-<kind>.fits`` (in the CASA child)."""
    from casatasks import exportfits, tclean

    import glob

    tclean(**tparams)
    name = tparams["imagename"]
    # multi-term MFS writes Taylor-term images (.image.tt0, .tt1, .alpha ...): the band's are the tt0 ones
    tt0 = ".tt0" if tparams["deconvolver"] == "mtmfs" else ""
    for kind in RAW_KINDS:
        exportfits(imagename=f"{name}.{kind}{tt0}", fitsimage=f"{prefix}-{kind}.fits", overwrite=True,
                   dropdeg=False, velocity=False, history=False)
    for path in glob.glob(glob.escape(name) + ".*"):
        shutil.rmtree(path, ignore_errors=True)
