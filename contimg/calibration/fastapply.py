"""Apply K, B and G tables in numpy: CASA ``applycal``'s result at the cost of a copy.

CASA's ``applycal`` takes ~4x a plain copy of DATA on a full group
(benchmarks/RESULTS.md). The Jones terms of this pipeline are few and small
(per antenna: one delay, a bandpass, a gain per integration), so the corrected
data are ``DATA / (G_i conj(G_j))`` with ``G`` gathered per row from arrays of a
few MB. The CASA semantics reproduced (and checked against ``applycal`` by
``tests/test_calibration.py``):

* K: ``exp(2 pi i tau (nu - nu_K))``, ``nu_K`` the K table's frequency of the
  mapped SPW, through the registered ``spwmap``;
* ``nearest`` and ``linear`` in time: linear interpolates amplitude and phase
  separately between the two unflagged solutions around a time (phase the short
  way), and takes the nearest one outside their span; flagged solutions are skipped;
* ``calflagstrict``: a visibility whose antennas lack an unflagged solution in
  any table is flagged (and its CORRECTED_DATA left at DATA);
* weights are not changed (``calwt=False``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numba
import numpy as np

from contimg.calibration.caltables import read_caltable

CHUNK_ROWS = 16384


def _interp_time(values: np.ndarray, flags: np.ndarray, sol_times: np.ndarray, times: np.ndarray,
                 linear: bool) -> tuple[np.ndarray, np.ndarray]:
    """Solutions at ``times`` per antenna/SPW/chan/pol: (Ntime_out, Nspw, Nant, Nchan, Npol) values and flags."""
    n_out = len(times)
    shape = (n_out,) + values.shape[1:]
    if len(sol_times) == 1:  # one solution (K, B, a group's GA): nothing to interpolate
        return (np.broadcast_to(np.where(flags[0], 1, values[0]), shape).copy(),
                np.broadcast_to(flags[0], shape).copy())
    out = np.ones(shape, dtype=values.dtype)
    bad = np.ones(shape, dtype=bool)
    v = values.reshape(len(sol_times), -1)
    f = flags.reshape(len(sol_times), -1)
    o = out.reshape(n_out, -1)
    b = bad.reshape(n_out, -1)
    for col in range(v.shape[1]):
        good = ~f[:, col]
        if not good.any():
            continue
        ts, vs = sol_times[good], v[good, col]
        b[:, col] = False
        if not linear or len(ts) == 1:
            o[:, col] = vs[np.abs(ts[None, :] - times[:, None]).argmin(axis=1)]
            continue
        hi = np.clip(np.searchsorted(ts, times), 1, len(ts) - 1)
        lo = hi - 1
        w = np.clip((times - ts[lo]) / (ts[hi] - ts[lo]), 0.0, 1.0)
        if np.iscomplexobj(vs):
            a = (1 - w) * np.abs(vs[lo]) + w * np.abs(vs[hi])
            dphi = np.angle(vs[hi] * np.conj(vs[lo]))
            o[:, col] = a * np.exp(1j * (np.angle(vs[lo]) + w * dphi))
        else:
            o[:, col] = (1 - w) * vs[lo] + w * vs[hi]
    return out, bad


def _jones(table, times_s: np.ndarray, freqs_hz: np.ndarray, n_ant: int) -> tuple[np.ndarray, np.ndarray]:
    """One table's Jones at the MS times: (Ntime, n_ant, Nspw, Nchan, Npol) complex, and its flags."""
    cal = read_caltable(table.path)
    linear = table.interp.split(",")[0].strip() == "linear"
    n_spw, n_chan = freqs_hz.shape
    spwmap = list(table.spwmap) or list(range(n_spw))
    vals, bad = _interp_time(cal.values, cal.flags, cal.times_s, times_s, linear)  # (Nt, Nspw_t, Na_t, Nc_t, Np)
    n_pol = vals.shape[-1]
    jones = np.ones((len(times_s), n_ant, n_spw, n_chan, n_pol), dtype=np.complex128)
    jflag = np.ones(jones.shape, dtype=bool)
    for spw in range(n_spw):
        src = spwmap[spw]
        v = vals[:, src]  # (Nt, Na_t, Nc_t, Np)
        fl = bad[:, src]
        if cal.kind.startswith("K"):
            nu_k = cal.freqs_hz[src, 0]
            v = np.exp(2j * np.pi * v.real[:, :, :1, :] * 1e-9 * (freqs_hz[spw][None, None, :, None] - nu_k))
            fl = np.broadcast_to(fl[:, :, :1, :], v.shape)
        elif v.shape[2] == 1:
            v = np.broadcast_to(v, v.shape[:2] + (n_chan, n_pol))
            fl = np.broadcast_to(fl, v.shape)
        jones[:, cal.antennas, spw] = v
        jflag[:, cal.antennas, spw] = fl
    return jones, jflag


@numba.njit(cache=True, nogil=True, parallel=True)
def _apply_rows(data, flag, it, a1, a2, spw, jones, jflag, corrected, newflag) -> int:  # pragma: no cover - jit
    """``corrected = data / (G_i conj(G_j))`` and ``newflag = flag | no solution``, per row in one pass
    (numpy's version made ten temporaries of the chunk); returns the visibilities newly flagged."""
    n_rows, n_chan, n_pol = data.shape
    jp = jones.shape[4]
    newly = 0
    for r in numba.prange(n_rows):
        t, i, j, s = it[r], a1[r], a2[r], spw[r]
        for c in range(n_chan):
            for p in range(n_pol):
                q = p if jp > 1 else 0
                denom = jones[t, i, s, c, q] * np.conj(jones[t, j, s, c, q])
                ok = not (jflag[t, i, s, c, q] or jflag[t, j, s, c, q]) and abs(denom) > 0
                corrected[r, c, p] = data[r, c, p] / denom if ok else data[r, c, p]
                nf = flag[r, c, p] or not ok
                newflag[r, c, p] = nf
                if nf and not flag[r, c, p]:
                    newly += 1
    return newly


def apply_fast(ms, tables, *, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write ``DATA / (G_i conj(G_j))`` into CORRECTED_DATA and OR the solution flags into FLAG.

    Parameters
    ----------
    ms : path-like
    tables : sequence of ApplyTable
        In apply order, each with its registered interp and spwmap (merged
        tables for interpolation between sets are single tables here).

    Returns
    -------
    dict
        ``seconds`` and ``flagged_by_solutions`` (fraction of visibilities newly flagged).
    """
    from casacore.tables import table, taql

    started = time.perf_counter()
    path = str(ms)
    with table(path, ack=False, readonly=False) as main:
        times = np.unique(taql("select distinct TIME from $main").getcol("TIME"))
        with table(f"{path}/SPECTRAL_WINDOW", ack=False) as sw:
            freqs = np.asarray(sw.getcol("CHAN_FREQ"), dtype=float)
        with table(f"{path}/ANTENNA", ack=False) as ant:
            n_ant = ant.nrows()
        with table(f"{path}/DATA_DESCRIPTION", ack=False) as dd:
            spw_of = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"))
        total = None
        total_flag = None
        for t in tables:
            j, f = _jones(t, times, freqs, n_ant)
            total = j if total is None else total * j
            total_flag = f if total_flag is None else (total_flag | f)
        newly, count = 0, 0
        for start in range(0, main.nrows(), chunk_rows):
            n = min(chunk_rows, main.nrows() - start)
            it = np.searchsorted(times, main.getcol("TIME", start, n))
            spw = spw_of[main.getcol("DATA_DESC_ID", start, n)]
            a1, a2 = main.getcol("ANTENNA1", start, n), main.getcol("ANTENNA2", start, n)
            data = main.getcol("DATA", start, n)
            flag = main.getcol("FLAG", start, n)
            corrected = np.empty(data.shape, dtype=np.complex64)
            newflag = np.empty(flag.shape, dtype=bool)
            newly += _apply_rows(data, flag, it, a1, a2, spw, total, total_flag, corrected, newflag)
            main.putcol("CORRECTED_DATA", corrected, start, n)
            count += flag.size
            main.putcol("FLAG", newflag, start, n)
            main.putcol("FLAG_ROW", newflag.all(axis=(1, 2)), start, n)
    return {"seconds": time.perf_counter() - started, "flagged_by_solutions": newly / max(count, 1)}
