"""Compare solved caltables with the simulator's injected truth (test and benchmark helper).

Everything is relative to the reference antenna, as the solvers define it, and
per polarisation. The simulator's G (``contimg.simulate.corruptions``: G = g(t)
B(nu) exp(+2 pi i nu tau), in the UVH5 convention V_ij = G_i conj(G_j) V) reaches
the MS conjugated, because MS DATA is the conjugate of the UVH5 visibility
(docs/architecture.md, Conventions): CASA, with V_ij = G_i conj(G_j) V on MS
DATA, solves conj(G). So the true CASA delay is -tau, the true CASA bandpass
conj(B exp(2 pi i nu tau)) and the true CASA gain conj(g). ``test_calibration``
checks that sign on noiseless data.
"""

from __future__ import annotations

import numpy as np

from contimg.calibration.caltables import read_caltable
from contimg.simulate import corruptions as corr
from contimg.simulate.truth import load_truth


def _params(truth):
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in truth["corruptions"]["instrument"].items()}


def good_antennas(truth) -> np.ndarray:
    bad = set(truth["corruptions"]["dead_antennas"]) | set(truth["corruptions"]["flagged_antennas"])
    return np.array([a for a in truth["scale"]["antennas"] if a not in bad])


def delay_errors_ns(k_path, truth, refant: int) -> np.ndarray:
    """Solved minus true per-SPW delay (ns), relative to ``refant``, (Nspw, Nant_good, Npol).

    The true delay of an SPW is the phase slope of the injected delay and bandpass
    phase across that SPW (the two are degenerate within an SPW; what K leaves, B takes).
    """
    k = read_caltable(k_path)
    params = _params(truth)
    ants = good_antennas(truth)
    errs = []
    combined = len(k.spws) == 1 and k.values.shape[1] > 1
    for ispw in k.spws:
        # a K table solved with combine='spw' has one solved SPW: its truth is the slope across the band
        f = np.concatenate([_spw_freqs(truth, s) for s in range(16)]) if combined else _spw_freqs(truth, ispw)
        phase = np.unwrap(np.angle(np.conj(corr.bandpass(params, ants, f) * corr.delay_phasor(params, ants, f))), axis=-1)
        slope = np.polyfit(f - f.mean(), phase.reshape(-1, len(f)).T, 1)[0].reshape(len(ants), 2)
        tau = slope / (2 * np.pi) * 1e9
        ridx = list(ants).index(refant)
        true_rel = tau - tau[ridx]
        ia = np.searchsorted(k.antennas, ants)
        solved = k.values[0, ispw, ia, 0, :].real
        solved_rel = solved - solved[ridx]
        errs.append(solved_rel - true_rel)
    return np.array(errs)


def _spw_freqs(truth, ispw: int) -> np.ndarray:
    from contimg import instrument

    n = truth["scale"]["n_channels"]
    sb = 15 - ispw
    return np.sort(np.asarray(instrument.subband_frequencies_hz(sb, n_channels=n), dtype=float))


def bandpass_errors(b_path, k_path, truth, refant: int):
    """Amplitude (fractional) and phase (deg) errors of K x B against the injected delay x bandpass.

    Shape (Nspw, Nant_good, Nchan, Npol), NaN where flagged. Both sides are divided
    by the reference antenna, and a complex constant per (SPW, antenna, pol) is
    removed: ``solnorm`` removes the amplitude scale, and the per-SPW gains
    absorb a constant phase (and K's reference frequency only shifts that constant).
    """
    b = read_caltable(b_path)
    k = read_caltable(k_path)
    params = _params(truth)
    ants = good_antennas(truth)
    ridx = list(ants).index(refant)
    ib, ik = np.searchsorted(b.antennas, ants), np.searchsorted(k.antennas, ants)
    out_amp, out_ph = [], []
    for s in range(b.values.shape[1]):
        f = b.freqs_hz[s]
        ks = k.spws[0] if len(k.spws) == 1 else s  # combine='spw': one K SPW for all
        tau = k.values[0, ks, ik, 0, :].real  # (Na, Npol) ns
        kphasor = np.exp(2j * np.pi * (f[None, :, None] - f[0]) * tau[:, None, :] * 1e-9)
        solved = b.values[0, s, ib] * kphasor  # (Na, Nchan, Npol)
        flags = b.flags[0, s, ib] | k.flags[0, ks, ik, 0][:, None, :]
        true = np.conj(np.moveaxis(corr.bandpass(params, ants, f) * corr.delay_phasor(params, ants, f), 1, 2))
        ratio = (solved / solved[ridx:ridx + 1]) / (true / true[ridx:ridx + 1])
        ratio = np.where(flags, np.nan, ratio)
        ratio = ratio / np.nanmean(ratio, axis=1, keepdims=True)
        out_amp.append(np.abs(ratio) - 1.0)
        out_ph.append(np.degrees(np.angle(ratio)))
    return np.array(out_amp), np.array(out_ph)


def gain_phase_errors_deg(gp_path, truth, refant: int) -> np.ndarray:
    """Per-integration phase error of GP against the injected g(t), relative to the refant
    and with the mean over time removed per (SPW, antenna, pol) (B holds the time average).

    Shape (Ntime, Nspw, Nant_good, Npol).
    """
    g = read_caltable(gp_path)
    params = _params(truth)
    ants = good_antennas(truth)
    ridx = list(ants).index(refant)
    ig = np.searchsorted(g.antennas, ants)
    unix = g.times_s - 40587.0 * 86400.0
    true = np.conj(corr.time_gains(params, ants, unix))  # (Na, 2, Nt)
    true = np.moveaxis(true / true[ridx:ridx + 1], 2, 0)  # (Nt, Na, 2)
    solved = g.values[:, :, ig, 0, :]  # (Nt, Nspw, Na, 2)
    solved = solved / solved[:, :, ridx:ridx + 1]
    ratio = np.where(g.flags[:, :, ig, 0, :], np.nan, solved / true[:, None])
    ratio = ratio / np.nanmean(ratio, axis=0, keepdims=True)
    return np.degrees(np.angle(ratio))


def apply_true_gains(ms, truth, *, age_s: float = 0.0) -> None:
    """Write CORRECTED_DATA = DATA corrected with the injected gains of ``age_s`` seconds earlier.

    What a target group gets from a calibrator ``age_s`` before it, with perfect solves: the
    static delays and bandpass removed exactly, the gains' drift over ``age_s`` left in. In the
    MS convention the correction is ``DATA / (conj(G_i) G_j)`` (module docstring).
    """
    from casacore.tables import table

    from contimg.simulate.truth import gains_from_truth

    with table(str(ms), readonly=False, ack=False) as t:
        data = t.getcol("DATA")
        a1, a2, tm, dd = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("TIME"), t.getcol("DATA_DESC_ID")
        with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as sw:
            freqs = sw.getcol("CHAN_FREQ")
        with table(f"{ms}/DATA_DESCRIPTION", ack=False) as d:
            spw_of = d.getcol("SPECTRAL_WINDOW_ID")
        times = np.unique(tm)
        g = gains_from_truth(truth, np.arange(117), freqs.ravel(), (times - age_s) / 86400.0 + 2400000.5)
        g = g.reshape(117, len(times), freqs.shape[0], freqs.shape[1], 2)
        it, spw = np.searchsorted(times, tm), spw_of[dd]
        t.putcol("CORRECTED_DATA", (data / (np.conj(g[a1, it, spw]) * g[a2, it, spw])).astype(np.complex64))


def gain_drift_phase(truth, antennas, times_s, *, age_s: float, freq_hz: float) -> np.ndarray:
    """Phase (rad) of the CASA-convention gain that is left after correcting with gains ``age_s``
    old: ``conj(g(t) / g(t - age))``, (Nant, Ntimes, Npol), at one frequency."""
    from contimg.simulate.truth import gains_from_truth

    jd = np.asarray(times_s) / 86400.0 + 2400000.5
    now = gains_from_truth(truth, antennas, [freq_hz], jd)[:, :, 0]
    then = gains_from_truth(truth, antennas, [freq_hz], jd - age_s / 86400.0)[:, :, 0]
    return np.angle(np.conj(now / then))
