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

#: Rows read per chunk.
CHUNK_ROWS = 16384


def _gain_lookup(gain, times_s: np.ndarray):
    """Per-integration complex gains of a CalTable at the MS times: (Ntime, Nspw, Nant_max+1, Npol)."""
    idx = np.abs(gain.times_s[None, :] - times_s[:, None]).argmin(axis=1)
    n_ant = int(gain.antennas.max()) + 1
    out = np.ones((len(times_s), gain.values.shape[1], n_ant, gain.values.shape[-1]), dtype=np.complex128)
    ok = np.zeros(out.shape, dtype=bool)
    vals = gain.values[idx, :, :, 0, :]  # first channel (gains are one channel per SPW)
    flg = gain.flags[idx, :, :, 0, :]
    out[:, :, gain.antennas] = np.where(flg, 1.0, vals)
    ok[:, :, gain.antennas] = ~flg
    return out, ok


def average_to_ms(ms, out_ms, *, time_indices=None, remove_gains=None, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write the model-normalised average of ``ms`` (see module docstring) as a one-integration MS.

    Parameters
    ----------
    ms : path-like
        Source MS with MODEL_DATA predicted.
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
    from casacore.tables import table, taql

    started = time.perf_counter()
    out_ms = Path(out_ms)
    with table(str(ms), ack=False) as main:
        times = np.unique(taql("select distinct TIME from $main").getcol("TIME"))
        use = np.arange(len(times)) if time_indices is None else np.asarray(sorted(time_indices))
        if use.size == 0:
            raise InvalidInputError(f"{ms}: no integrations selected to average")
        ddid_all = main.getcol("DATA_DESC_ID")
        a1_all, a2_all = main.getcol("ANTENNA1"), main.getcol("ANTENNA2")
        n_ant = int(max(a1_all.max(), a2_all.max())) + 1
        keys_all = (ddid_all.astype(np.int64) * n_ant + a1_all) * n_ant + a2_all
        keys, inverse = np.unique(keys_all, return_inverse=True)
        shape = main.getcell("DATA", 0).shape
        num = np.zeros((len(keys),) + shape, dtype=np.complex128)
        den = np.zeros((len(keys),) + shape, dtype=np.float64)
        tsum, tcount = 0.0, 0
        selected_times = set(times[use].tolist())
        gains = ok = None
        if remove_gains is not None:
            gains, ok = _gain_lookup(remove_gains, times)
        with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
            ddid_to_spw = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"))
        has_ws = "WEIGHT_SPECTRUM" in main.colnames()
        for start in range(0, main.nrows(), chunk_rows):
            n = min(chunk_rows, main.nrows() - start)
            t = main.getcol("TIME", start, n)
            sel = np.isin(t, list(selected_times))
            if not sel.any():
                continue
            v = main.getcol("DATA", start, n)[sel].astype(np.complex128)
            m = main.getcol("MODEL_DATA", start, n)[sel]
            w = (main.getcol("WEIGHT_SPECTRUM", start, n)[sel] if has_ws else
                 np.repeat(main.getcol("WEIGHT", start, n)[sel][:, None, :], shape[0], axis=1))
            w = np.where(main.getcol("FLAG", start, n)[sel], 0.0, w)
            rows = inverse[start:start + n][sel]
            if gains is not None:
                it = np.searchsorted(times, t[sel])
                spw = ddid_to_spw[ddid_all[start:start + n][sel]]
                i, j = a1_all[start:start + n][sel], a2_all[start:start + n][sel]
                gi, gj = gains[it, spw, i], gains[it, spw, j]  # (Nrow, Npol)
                v = v * (np.conj(gi) * gj)[:, None, :] / (np.abs(gi) * np.abs(gj))[:, None, :]
                w = w * (ok[it, spw, i] & ok[it, spw, j])[:, None, :]
            contrib_num, contrib_den = w * v * np.conj(m), w * np.abs(m) ** 2
            ts = t[sel]
            for tt in np.unique(ts):  # within one integration every (SPW, baseline) row is unique
                k = ts == tt
                num[rows[k]] += contrib_num[k]
                den[rows[k]] += contrib_den[k]
            tsum += float(t[sel].sum())
            tcount += int(sel.sum())
        mid = int(use[len(use) // 2])
        template = main.query(f"TIME == {float(times[mid])!r}")
        if template.nrows() != len(keys):
            raise InvalidInputError(f"{ms}: integration {mid} lacks rows of some baselines/SPWs "
                                    f"({template.nrows()} of {len(keys)}); cannot average onto it")
        tkeys = (template.getcol("DATA_DESC_ID").astype(np.int64) * n_ant
                 + template.getcol("ANTENNA1")) * n_ant + template.getcol("ANTENNA2")
        order = np.searchsorted(keys, tkeys)
        if out_ms.exists():
            shutil.rmtree(out_ms)
        template.copy(str(out_ms), deep=True, valuecopy=True)
        template.close()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / den, 0.0)[order]
    weight = den[order]
    span = (times[use[-1]] - times[use[0]]) + float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    with table(str(out_ms), ack=False, readonly=False) as avg:
        avg.putcol("DATA", r.astype(np.complex64))
        avg.putcol("MODEL_DATA", np.ones(r.shape, dtype=np.complex64))
        avg.putcol("WEIGHT_SPECTRUM", weight.astype(np.float32))
        avg.putcol("WEIGHT", weight.mean(axis=1).astype(np.float32))
        flag = weight <= 0
        avg.putcol("FLAG", flag)
        avg.putcol("FLAG_ROW", flag.all(axis=(1, 2)))
        avg.putcol("TIME", np.full(len(order), tsum / max(tcount, 1)))
        avg.putcol("INTERVAL", np.full(len(order), span))
    return {"rows": len(order), "integrations": int(len(use)), "seconds": time.perf_counter() - started}
