"""Self-calibration of a group against a sky model predicted through the drifting beam.

Transferred gains are 20-120 min old on a target group: the simulated (and real)
gain phases wander with 30-120 min periods, so they are off by ~0.3 rad per
baseline, which decorrelates every source by ~5 % and leaves the phase errors as
the noise floor near bright sources. Self-calibration solves those gains again on
the group itself, against a model of its own sky.

The model is a list of point sources (positions and intrinsic fluxes: the
primary-beam-corrected clean components of a first image, :func:`components_from_model`)
predicted on the MS's own uvw with the Airy beam at every integration and channel
(:func:`contimg.calibration.model.predict_model`): a source drifts by ~1 deg of
the 2.7 deg beam during a group, so its apparent flux changes by 10 % at the
centre and by several times at the edge; a model with one flux per source would
put that change into the gains.

The solve (:func:`solve_selfcal`) is StefCal (:func:`contimg.calibration.fastsolve.stefcal`)
on the model-normalised visibilities, channels summed:

* **phase**, per antenna and polarisation, over a solution interval chosen from
  the signal: the shortest whole number of integrations whose median solution
  SNR reaches ``target_snr`` (a trial solve per integration gives the SNR of one);
* **amplitude** (optional), per antenna and polarisation over the whole group,
  only when its median SNR reaches ``amplitude_min_snr`` (the model flux allows
  it), normalised to a mean of 1 so the flux scale stays the calibrator's.

Before anything is applied the fit must be *significant*: fitting ``P`` real
parameters to pure noise lowers ``chi2 = sum w |V - g_i conj(g_j) M|^2`` by
``P sigma^2 / 2`` on average; a drop that is not ``min_significance`` standard
deviations above that (a faint field, a model that explains nothing) is
skipped, and the transferred gains stay. After imaging with the solutions,
:func:`judge` keeps them only if the residual noise did not rise and the
brightest sources' peaks did not move by more than ``max_flux_change``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contimg.errors import InvalidInputError
from contimg.sky.source import Source


@dataclass(frozen=True)
class SelfcalOptions:
    """How a group is self-calibrated (defaults: the pipeline's).

    Attributes
    ----------
    model_min_snr : float
        Clean components enter the model above this many times the predicted image
        noise (apparent flux of the component island, Jy).
    max_components : int
        At most this many model sources, brightest first.
    spectral_index : float
        Spectral index given to the model sources (the clean components' own band
        average is at the band centre; the beam's slope is predicted, not this).
    solint_s : float or None
        Phase solution interval, s; None: chosen from the SNR (``target_snr``).
    target_snr : float
        Median SNR per phase solution the automatic interval aims for (10: 0.1 rad).
    min_snr : float
        Solutions below this SNR are not applied (that antenna keeps its transferred gains).
    amplitude_min_snr : float
        Solve amplitudes (one per antenna and pol over the group) only if their median
        SNR reaches this; ``inf`` never. Default 1000: in practice only a field with a
        source of tens of Jy. At the SNR of target fields (100-200 per antenna) they
        raised every peak by 3.6 % (full-size target 20 min after 3C147: flux 1.036
        with amplitudes, 1.006 without; benchmarks/RESULTS.md).
    min_significance : float
        The chi2 drop must exceed what fitting noise gives by this many standard deviations.
    max_noise_ratio : float
        Keep the solutions only if the residual noise after / before is at most this.
    max_flux_change : float
        ... and the median fractional change of the brightest sources' peaks is at most this.
    n_flux_sources : int
        How many of the brightest model sources that check uses.
    prior_max_flux_change, prior_max_shift_beams : float
        The previous group's model is used (one imaging pass) only if its brightest sources, fitted to
        this group's data, have fluxes within this fraction (median) and positions within this many
        beams (lambda / B_max, median) of the model's.
    """

    model_min_snr: float = 10.0
    max_components: int = 100
    spectral_index: float = -0.7
    solint_s: float | None = None
    target_snr: float = 10.0
    min_snr: float = 3.0
    amplitude_min_snr: float = 1000.0
    min_significance: float = 5.0
    max_noise_ratio: float = 1.0
    max_flux_change: float = 0.10
    n_flux_sources: int = 5
    prior_max_flux_change: float = 0.2
    prior_max_shift_beams: float = 0.25


@dataclass
class SelfcalSolution:
    """What :func:`solve_selfcal` found.

    Attributes
    ----------
    gains : numpy.ndarray
        (n_bins, n_ant, n_pol) complex: phase x amplitude; 1 where unsolved.
    snr : numpy.ndarray
        (n_bins, n_ant, n_pol) phase-solution SNR.
    flags : numpy.ndarray
        (n_bins, n_ant, n_pol) True where not applied.
    bin_of_time : numpy.ndarray
        (n_times,) solution bin of each integration.
    times_s : numpy.ndarray
        Mid time of each bin, MJD s.
    solint_s : float
    amplitude : bool
        Amplitudes were solved.
    reasons : list of str
        Why the solutions should not be applied ([]: significant).
    refant : int
        The reference antenna of the first problem (the phases of each are referred
        to the first antenna of the reference order that has a solution).
    metrics : dict
    """

    gains: np.ndarray
    snr: np.ndarray
    flags: np.ndarray
    bin_of_time: np.ndarray
    times_s: np.ndarray
    solint_s: float
    amplitude: bool
    reasons: list[str]
    refant: int = -1
    metrics: dict = field(default_factory=dict)


def components_from_model(model_fits, pb: np.ndarray, *, min_flux_jy: float, max_components: int,
                          pblimit: float = 0.2, spectral_index: float = -0.7) -> list[Source]:
    """Point sources from a clean-component image: one per island of components.

    Parameters
    ----------
    model_fits : path-like
        The imager's model image (apparent Jy per pixel, the band average).
    pb : numpy.ndarray
        The averaged primary beam on the same grid (2-D).
    min_flux_jy : float
        Islands whose summed apparent flux is below this are left out, Jy.
    max_components : int
        The brightest this many islands.
    pblimit : float
        Islands where the beam is below this are left out.
    spectral_index : float

    Returns
    -------
    list of Source
        Flux-weighted centroid (ICRS degrees) and intrinsic flux (apparent / beam),
        brightest first.
    """
    from astropy.io import fits
    from astropy.wcs import WCS
    from scipy import ndimage

    with fits.open(model_fits) as hdul:
        header = hdul[0].header
        plane = np.asarray(hdul[0].data, dtype=float).reshape(hdul[0].data.shape[-2:])
    if plane.shape != pb.shape:
        raise InvalidInputError(f"{model_fits}: model {plane.shape} and beam {pb.shape} differ")
    plane = np.where(np.isfinite(plane), plane, 0.0)
    # clean components of one source scatter over a few pixels of its PSF core: a 1-pixel dilation joins them
    islands, n = ndimage.label(ndimage.binary_dilation(plane != 0), structure=np.ones((3, 3)))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    flux = ndimage.sum(plane, islands, index)
    weight = np.abs(plane)
    wsum = ndimage.sum(weight, islands, index)
    yy, xx = np.indices(plane.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = ndimage.sum(weight * yy, islands, index) / wsum
        cx = ndimage.sum(weight * xx, islands, index) / wsum
    ok = (flux >= min_flux_jy) & np.isfinite(cx) & np.isfinite(cy)
    iy, ix = np.clip(np.round(cy).astype(int), 0, plane.shape[0] - 1), np.clip(np.round(cx).astype(int), 0,
                                                                              plane.shape[1] - 1)
    beam = pb[iy, ix]
    ok &= np.isfinite(beam) & (beam >= pblimit)
    order = [i for i in np.argsort(-flux) if ok[i]][:max_components]
    if not order:
        return []
    wcs = WCS(header).celestial
    ra, dec = wcs.all_pix2world(cx[order], cy[order], 0)
    return [Source(f"cc{k:03d}", float(ra[k]) % 360.0, float(dec[k]), float(flux[i] / beam[i]), spectral_index)
            for k, i in enumerate(order)]


def _read(ms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DATA, weights (0 where flagged), ANTENNA1/2 and TIME of ``ms``."""
    from casacore.tables import table

    with table(str(ms), ack=False) as main:
        data = main.getcol("DATA")
        flag = main.getcol("FLAG")
        w = (main.getcol("WEIGHT_SPECTRUM") if "WEIGHT_SPECTRUM" in main.colnames() else
             np.repeat(main.getcol("WEIGHT")[:, None, :], data.shape[1], axis=1))
        w = np.where(flag, 0.0, w).astype(np.float32)
        return data, w, main.getcol("ANTENNA1"), main.getcol("ANTENNA2"), main.getcol("TIME")


def _chi2(data, model, w, a1, a2, gains_rows=None) -> float:
    """``sum w |V - G_i conj(G_j) M|^2`` over cross-correlations (gains per row and pol, or none)."""
    cross = a1 != a2
    m = model[cross] if gains_rows is None else model[cross] * gains_rows[cross][:, None, :]
    r = data[cross] - m
    return float(np.sum(w[cross] * (r.real ** 2 + r.imag ** 2)))


def _row_gains(gains: np.ndarray, bins: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """(rows, n_pol) ``g_i conj(g_j)`` of each row from per-bin gains (n_bins, n_ant, n_pol)."""
    return gains[bins, a1] * np.conj(gains[bins, a2])


def _solve_bins(z, yz, bl_index, key, n_keys, a1b, a2b, n_ant, ref_order):
    """StefCal per (key, pol) on channel-summed sums; gains and snr (n_keys, n_ant, n_pol)."""
    from contimg.calibration.fastsolve import _stefcal_grid

    num = np.zeros((int(bl_index.max()) + 1, n_keys, z.shape[1]), dtype=np.complex128)
    den = np.zeros(num.shape)
    np.add.at(num, (bl_index, key), z)
    np.add.at(den, (bl_index, key), yz)
    g, s = _stefcal_grid(num, den, a1b, a2b, n_ant, ref_order)  # (n_ant, n_keys, n_pol)
    return np.moveaxis(g, 0, 1), np.moveaxis(s, 0, 1)


def solve_selfcal(ms, sources, *, options: SelfcalOptions = SelfcalOptions(), ref_order=None) -> SelfcalSolution:
    """Solve self-calibration gains of ``ms`` (its DATA) against ``sources`` through the drifting beam.

    Parameters
    ----------
    ms : path-like
        The MS to solve on (the imaging MS: DATA holds the visibilities with the
        transferred calibration applied). Not modified.
    sources : sequence of Source
        The sky model (intrinsic fluxes, ICRS positions).
    options : SelfcalOptions
    ref_order : sequence of int, optional
        Reference antennas, best first (default: antennas by data weight).

    Returns
    -------
    SelfcalSolution
        With ``reasons`` non-empty when the fit is not significant.
    """
    from contimg.calibration.model import predict_model

    started = time.perf_counter()
    sources = list(sources)
    if not sources:
        raise InvalidInputError(f"{ms}: self-calibration needs a model with at least one source")
    data, w, a1, a2, t = _read(ms)
    model = np.empty(data.shape, dtype=np.complex64)
    predict_model(ms, sources, column=None, out=model)
    times = np.unique(t)
    tidx = np.searchsorted(times, t)
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 12.885
    cross = a1 != a2
    n_ant = int(max(a1.max(), a2.max())) + 1
    # channel-summed model-normalised sums per row: z = sum w V conj(M), yz = sum w |M|^2
    x = (w * data * np.conj(model))[cross].sum(axis=1)
    y = (w * (model.real ** 2 + model.imag ** 2))[cross].sum(axis=1)
    ca1, ca2, ct = a1[cross], a2[cross], tidx[cross]
    bl = ca1.astype(np.int64) * n_ant + ca2
    baselines, bl_index = np.unique(bl, return_inverse=True)
    a1b, a2b = baselines // n_ant, baselines % n_ant
    if ref_order is None:
        per_ant = np.bincount(ca1, weights=y.sum(axis=1), minlength=n_ant) + np.bincount(
            ca2, weights=y.sum(axis=1), minlength=n_ant)
        ref_order = list(np.argsort(-per_ant))
    ref_order = [int(r) for r in ref_order]

    # the interval: a trial solve per integration gives the SNR of one; SNR grows as sqrt(integrations)
    _, snr1 = _solve_bins(x, y, bl_index, ct, len(times), a1b, a2b, n_ant, ref_order)
    solved = snr1[snr1 > 0]
    snr_one = float(np.median(solved)) if solved.size else 0.0
    if options.solint_s is not None:
        n_int = max(1, int(round(options.solint_s / dt)))
    elif snr_one > 0:
        n_int = int(math.ceil((options.target_snr / snr_one) ** 2))
    else:
        n_int = len(times)
    n_int = min(max(n_int, 1), len(times))
    n_bins = int(math.ceil(len(times) / n_int))
    bin_of_time = np.minimum(np.arange(len(times)) // n_int, n_bins - 1)
    g, snr = _solve_bins(x, y, bl_index, bin_of_time[ct], n_bins, a1b, a2b, n_ant, ref_order)
    flags = snr < options.min_snr
    phase = np.where(flags, 1.0, g / np.where(np.abs(g) > 0, np.abs(g), 1.0))

    # amplitude over the group with the phases removed, when the model is bright enough
    gains = phase
    amplitude = False
    amp_snr = 0.0
    n_amp = 0
    if math.isfinite(options.amplitude_min_snr):
        rg = _row_gains(phase, bin_of_time[ct], ca1, ca2)
        ga, sa = _solve_bins(x / rg, y, bl_index, np.zeros(len(ct), dtype=np.int64), 1, a1b, a2b, n_ant,
                             ref_order)
        good = (sa[0] >= options.min_snr) & (np.abs(ga[0]) > 0)
        amp_snr = float(np.median(sa[0][sa[0] > 0])) if np.any(sa[0] > 0) else 0.0
        if amp_snr >= options.amplitude_min_snr and good.any():
            amp = np.where(good, np.abs(ga[0]), np.nan)
            amp = amp / np.nanmean(amp)  # the calibrator's flux scale stays
            gains = phase * np.where(good, amp, 1.0)[None]
            amplitude = True
            n_amp = int(good.sum()) - 1  # less one: the mean is fixed

    # significance: fitting P real parameters to noise lowers chi2 by P sigma^2 / 2 on average
    chi2_before = _chi2(data, model, w, a1, a2)
    rows_g = _row_gains(gains, bin_of_time[tidx], a1, a2)
    chi2_after = _chi2(data, model, w, a1, a2, rows_g)
    n_vis = int(np.count_nonzero(w[cross]))
    n_solved = int(np.count_nonzero(~flags))
    # one phase per (bin, pol) is the reference's, fixed
    n_par = max(n_solved - n_bins * g.shape[2], 1) + n_amp
    sigma2 = 2.0 * chi2_after / max(2 * n_vis - n_par, 1)  # per unit weight, complex
    drop = (chi2_before - chi2_after) / (sigma2 / 2.0) if sigma2 > 0 else 0.0
    significance = (drop - n_par) / math.sqrt(2.0 * n_par)
    reasons = []
    if not solved.size or n_solved == 0:
        reasons.append(f"no phase solution reaches SNR {options.min_snr:g} over the whole group "
                       f"(model of {len(sources)} source(s), {sum(s.flux_jy for s in sources):.3g} Jy)")
    elif significance < options.min_significance:
        reasons.append(f"no significant improvement (the gains applied are already as good, or the model "
                       f"explains too little): chi2 fell by {drop:.0f} sigma^2/2 for {n_par} parameters, "
                       f"{significance:.1f} sd from what fitting noise gives (need {options.min_significance:g})")
    has_data = np.bincount(np.concatenate([ca1, ca2]), weights=np.concatenate([y.sum(axis=1)] * 2),
                           minlength=n_ant) > 0
    phases = np.angle(gains[~flags]) if n_solved else np.zeros(1)
    metrics = {
        "model_sources": len(sources), "model_flux_jy": float(sum(s.flux_jy for s in sources)),
        "solint_s": n_int * dt, "solint_integrations": n_int, "n_bins": n_bins,
        "snr_per_integration": snr_one, "snr_median": float(np.median(snr[snr > 0])) if np.any(snr > 0) else 0.0,
        "solved_fraction": float(np.mean(~flags[:, has_data])) if has_data.any() else 0.0,
        "amplitude": amplitude, "amplitude_snr": amp_snr,
        "phase_rms_deg": float(np.degrees(np.sqrt(np.mean(phases ** 2)))),
        "amplitude_rms": float(np.nanstd(np.abs(gains[0]))) if amplitude else 0.0,
        "chi2_before": chi2_before, "chi2_after": chi2_after, "n_parameters": n_par, "n_visibilities": n_vis,
        "significance": float(significance), "refant": ref_order[0], "seconds": time.perf_counter() - started,
    }
    mids = np.array([times[bin_of_time == b].mean() for b in range(n_bins)])
    return SelfcalSolution(gains, snr, flags, bin_of_time, mids, n_int * dt, amplitude, reasons, ref_order[0], metrics)


def apply_to_data(ms, solution: SelfcalSolution, *, chunk_rows: int = 65536, undo: bool = False) -> None:
    """Correct DATA of ``ms`` in place: ``V / (g_i conj(g_j))`` (unsolved antennas keep their data);
    ``undo``: multiply instead (back to the data before the correction)."""
    from casacore.tables import table

    with table(str(ms), ack=False, readonly=False) as main:
        times = np.unique(main.getcol("TIME"))
        if len(times) != len(solution.bin_of_time):
            raise InvalidInputError(f"{ms}: {len(times)} integrations, the solution {len(solution.bin_of_time)}")
        for start in range(0, main.nrows(), chunk_rows):
            n = min(chunk_rows, main.nrows() - start)
            bins = solution.bin_of_time[np.searchsorted(times, main.getcol("TIME", start, n))]
            g = _row_gains(solution.gains, bins, main.getcol("ANTENNA1", start, n), main.getcol("ANTENNA2", start, n))
            data = main.getcol("DATA", start, n)
            main.putcol("DATA", (data * g[:, None, :] if undo else data / g[:, None, :]).astype(np.complex64),
                        start, n)


def image_noise_and_peaks(image_fits, residual_fits, pb: np.ndarray, sources, *, radius_pix: float,
                          inner_pb: float = 0.5) -> tuple[float, np.ndarray]:
    """The residual's robust noise where the beam exceeds ``inner_pb`` (Jy/beam) and the image's
    peak within ``radius_pix`` of each source (apparent Jy/beam): what :func:`judge` compares."""
    from astropy.io import fits
    from astropy.wcs import WCS

    def plane(path):
        with fits.open(path) as hdul:
            return np.asarray(hdul[0].data, dtype=float).reshape(hdul[0].data.shape[-2:]), hdul[0].header

    res, _ = plane(residual_fits)
    img, header = plane(image_fits)
    inner = res[np.isfinite(res) & (pb > inner_pb)]
    noise = float(1.4826 * np.median(np.abs(inner - np.median(inner)))) if inner.size else float("nan")
    x, y = WCS(header).celestial.all_world2pix([s.ra_deg for s in sources], [s.dec_deg for s in sources], 0)
    r = int(math.ceil(radius_pix))
    peaks = []
    for xi, yi in zip(x, y):
        xi, yi = int(round(xi)), int(round(yi))
        box = img[max(yi - r, 0):yi + r + 1, max(xi - r, 0):xi + r + 1]
        peaks.append(float(np.nanmax(box)) if box.size else float("nan"))
    return noise, np.array(peaks)


def judge(noise_before: float, noise_after: float, peaks_before: np.ndarray, peaks_after: np.ndarray, *,
          options: SelfcalOptions = SelfcalOptions(), measured_in: str = "image") -> tuple[list[str], dict]:
    """The self-calibration gate: reasons to keep the transferred gains ([]: keep the new ones), and its figures.

    ``measured_in`` says what the noises are: ``"image"``, the residual images' noise (Jy/beam;
    figures ``noise_before_jy``, ``noise_after_jy``), or ``"visibilities"``, the weighted rms of the
    visibility residual against the model, sqrt(chi2 / n), in units of one visibility's noise
    (figures ``residual_rms_before``, ``residual_rms_after``; the one-pass path has no image before).
    """
    ratio = noise_after / noise_before if noise_before > 0 else float("inf")
    in_image = measured_in == "image"
    ok = np.isfinite(peaks_before) & np.isfinite(peaks_after) & (peaks_before > 0)
    change = np.abs(peaks_after[ok] / peaks_before[ok] - 1.0)
    flux_change = float(np.median(change)) if change.size else 0.0
    reasons = []
    if not ratio <= options.max_noise_ratio:
        what = (f"residual noise rose: {1e3 * noise_before:.3g} -> {1e3 * noise_after:.3g} mJy/beam" if in_image else
                f"visibility residual rose: {noise_before:.4g} -> {noise_after:.4g} x the visibility noise")
        reasons.append(f"{what} (x{ratio:.3f}, at most x{options.max_noise_ratio:g})")
    if flux_change > options.max_flux_change:
        reasons.append(f"the brightest sources' peaks moved by {100 * flux_change:.1f} % (median of "
                       f"{int(ok.sum())}; at most {100 * options.max_flux_change:g} %)")
    names = ("noise_before_jy", "noise_after_jy") if in_image else ("residual_rms_before", "residual_rms_after")
    figures = {names[0]: noise_before, names[1]: noise_after, "noise_ratio": ratio,
               "flux_change_median": flux_change,
               "peak_ratios": [float(v) for v in (peaks_after[ok] / peaks_before[ok])]}
    return reasons, figures


def write_table(ms, solution: SelfcalSolution, path, *, log_path, timeout: float | None = None) -> Path:
    """Write the solutions as a CASA G Jones table (one SPW, one channel: apply it with spwmap all -> 0)."""
    from contimg.calibration.fastsolve import FastSolution, write_caltables

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n_bins, n_ant, n_pol = solution.gains.shape
    shape = (n_bins, n_ant, 1, 1, n_pol)
    sol = FastSolution("GP", solution.gains.reshape(shape), solution.snr.reshape(shape),
                       solution.flags.reshape(shape), solution.times_s, solution.solint_s, solution.refant)
    return write_caltables(ms, {"GP": sol}, {"GP": Path(path)}, log_path=log_path, timeout=timeout)["GP"]


def describe(solution: SelfcalSolution) -> dict:
    """The solution's figures as plain types (for the catalog)."""
    return {**solution.metrics, "reasons": list(solution.reasons)}



_COMPONENT_COLUMNS = ("name", "ra_deg", "dec_deg", "flux_jy", "spectral_index", "ref_freq_hz")


def write_components(sources, path) -> Path:
    """A sky model (point sources, intrinsic fluxes) as Parquet: what the next group self-calibrates with."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: [getattr(s, c) for s in sources] for c in _COMPONENT_COLUMNS},
                     schema=pa.schema([("name", pa.string())] + [(c, pa.float64()) for c in _COMPONENT_COLUMNS[1:]]))
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    partial.rename(path)
    return path


def read_components(path) -> list[Source]:
    """The sky model written by :func:`write_components`."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=list(_COMPONENT_COLUMNS)).to_pylist()
    return [Source(r["name"], r["ra_deg"], r["dec_deg"], r["flux_jy"], r["spectral_index"], r["ref_freq_hz"])
            for r in rows]
