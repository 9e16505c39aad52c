"""Model-normalised time averaging: solve ``solint='inf'`` on one row per baseline instead of 24.

CASA spends 80-85 % of a ``solint='inf'`` solve on a full DSA-110 group in its
time-averaging layer (``MsRowAvg``), not in reading or solving
(benchmarks/RESULTS.md, "Calibration"). Because the calibration equation is
``V_ij(t) = G_i conj(G_j) M_ij(t)`` with gains constant over the interval, the
weighted least-squares estimate of ``G_i conj(G_j)`` per baseline, SPW, channel
and polarisation is

    R_ij = sum_t w V conj(M) / sum_t w |M|^2,     weight W_ij = sum_t w |M|^2

whatever the model is (several sources, a beam changing with time). An MS holding
``R`` as DATA, 1 as MODEL_DATA and ``W`` as WEIGHT_SPECTRUM, one row per
baseline and SPW, gives CASA's solvers the same normal equations as the full
group (exactly so for the gains' contribution; CASA's own ``solint='inf'``
averages V and M separately, which loses a little SNR where the model phase
rotates in time). The caltables written are standard ones and apply to the full
MS unchanged: same antennas, SPWs and field.

A table varying within the interval (the per-integration phase ``GP``) is removed
from V first (``V conj(g_i) g_j``), so that the amplitude solve sees coherent data.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from contimg.errors import InvalidInputError

def _gain_jones(gain, times_s: np.ndarray, n_ant: int, n_chan: int) -> np.ndarray:
    """A per-integration gain table as Jones (Ntime, n_ant, Nspw, Nchan, Npol), 0 where flagged or absent."""
    idx = np.abs(gain.times_s[None, :] - times_s[:, None]).argmin(axis=1)
    vals = np.where(gain.flags[idx, :, :, 0, :], 0, gain.values[idx, :, :, 0, :])  # (Nt, Nspw, Na_t, Npol)
    out = np.zeros((len(times_s), n_ant, vals.shape[1], n_chan, vals.shape[-1]), dtype=np.complex128)
    out[:, gain.antennas] = np.moveaxis(vals, 2, 1)[:, :, :, None, :]
    return out


def average_to_ms(sums, ms, out_ms, *, time_indices=None, remove_gains=None) -> dict:
    """Write the model-normalised average of a group (see module docstring) as a one-integration MS.

    Parameters
    ----------
    sums : contimg.calibration.fastsolve.GroupSums
        The group, read once (:func:`~contimg.calibration.fastsolve.read_group`).
    ms : path-like
        The group's MS: the averaged MS copies one integration's rows of it.
    out_ms : path-like
        The averaged MS (replaced if it exists).
    time_indices : sequence of int, optional
        Integrations (indices into the sorted distinct times) to average (default: all).
    remove_gains : CalTable, optional
        A per-integration gain table (``read_caltable`` of a phase solve) removed from V first.

    Returns
    -------
    dict
        ``rows`` of the averaged MS, ``integrations`` averaged, ``seconds``.
    """
    from casacore.tables import table

    from contimg.calibration.fastsolve import accumulate_channels

    started = time.perf_counter()
    out_ms = Path(out_ms)
    use = np.arange(len(sums.times_s)) if time_indices is None else np.asarray(sorted(time_indices))
    if use.size == 0:
        raise InvalidInputError(f"{ms}: no integrations selected to average")
    n_spw, n_chan = sums.freqs_hz.shape
    n_pol = sums.x.shape[-1]
    num = np.zeros((len(sums.baselines), n_spw, n_chan, n_pol), dtype=np.complex128)
    den = np.zeros(num.shape)
    jones = _gain_jones(remove_gains, sums.times_s, sums.n_ant, n_chan) if remove_gains is not None else None
    unit = np.ones((1, 1, 1, 1), dtype=np.complex128)
    for t in use:
        accumulate_channels(sums.x, sums.y, sums.rows_by_time[t], sums.bl_index, sums.spw, sums.a1, sums.a2, sums.spw,
                      jones[t] if jones is not None else unit, jones is not None, num, den)
    mid = float(sums.times_s[use[len(use) // 2]])
    with table(str(ms), ack=False) as main:
        template = main.query(f"TIME == {mid!r}")
        with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
            spw_of = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"))
        t_a1, t_a2 = template.getcol("ANTENNA1"), template.getcol("ANTENNA2")
        t_spw = spw_of[template.getcol("DATA_DESC_ID")]
        if out_ms.exists():
            shutil.rmtree(out_ms)
        template.copy(str(out_ms), deep=True, valuecopy=True)
        template.close()
    # each template row's baseline in the sums (autocorrelations are not there: no weight)
    bl = t_a1.astype(np.int64) * sums.n_ant + t_a2
    pos = np.clip(np.searchsorted(sums.baselines, bl), 0, len(sums.baselines) - 1)
    known = sums.baselines[pos] == bl
    weight = np.where(known[:, None, None], den[pos, t_spw], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(weight > 0, num[pos, t_spw] / np.where(weight > 0, weight, 1), 0.0)
    dt = float(np.median(np.diff(sums.times_s))) if len(sums.times_s) > 1 else 0.0
    span = float(sums.times_s[use[-1]] - sums.times_s[use[0]]) + dt
    with table(str(out_ms), ack=False, readonly=False) as avg:
        avg.putcol("DATA", r.astype(np.complex64))
        avg.putcol("MODEL_DATA", np.ones(r.shape, dtype=np.complex64))
        avg.putcol("WEIGHT_SPECTRUM", weight.astype(np.float32))
        avg.putcol("WEIGHT", weight.mean(axis=1).astype(np.float32))
        flag = weight <= 0
        avg.putcol("FLAG", flag)
        avg.putcol("FLAG_ROW", flag.all(axis=(1, 2)))
        avg.putcol("TIME", np.full(len(bl), float(sums.times_s[use].mean())))
        avg.putcol("INTERVAL", np.full(len(bl), span))
    return {"rows": len(bl), "integrations": int(len(use)), "seconds": time.perf_counter() - started}
