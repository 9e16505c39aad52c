"""K, B and G solved in numpy on one read of the group, written as standard CASA caltables.

Why: on a full group CASA's solvers spend their time in bookkeeping, not in
reading or solving (benchmarks/RESULTS.md: 80-85 % in ``MsRowAvg``; even on a
model-normalised average the bandpass takes ~50 s and the per-integration phase
solve ~65 s). Here the group is read once, and every solve is an alternating
least-squares (StefCal; Salvini & Wijnholds 2014) on small dense arrays.

The data: with the model M in MODEL_DATA and the weights w (WEIGHT_SPECTRUM,
FLAG), each row and channel contributes ``X = w V conj(M)`` and ``Y = w |M|^2``;
then for any set of rows the model-normalised visibility is ``R = sum X / sum Y``
(:mod:`.averaging` explains why this keeps the normal equations), and the gains
solve ``R_ij = g_i conj(g_j)``.

* **K** (delay): per channel gains on the integrations around transit, then per
  antenna and pol the delay maximising ``|sum_nu g(nu) exp(-2 pi i tau (nu - nu_K))|``
  across the band (one delay across all SPWs, ``spwmap`` to every SPW), with
  ``nu_K`` the band centre, written as the K table's frequency: CASA applies
  ``exp(2 pi i tau (nu - nu_K))`` with the table's own frequency (checked by
  ``tests/test_fastsolve.py`` through CASA ``applycal``).
* **B**: per channel gains of the whole group with K removed, amplitude
  normalised to a mean of 1 per antenna, pol and SPW (``solnorm``).
* **GP**: per integration and SPW, channels averaged after K and B are removed;
  phase only.
* **GA**: per SPW over the group after K, B and GP are removed; amplitude only.

SNR of a gain: ``|g_i| sqrt(sum_j w_ij |g_j|^2) / sigma``, with ``sigma`` from the
weighted residuals of the fit. Solutions below the minimum SNR, or of antennas
without data, are flagged, as CASA flags them.

Memory (issue 21): ``X`` and ``Y`` are what a group costs (complex64 and float32
per visibility: 3 GiB on a full group); :class:`SumsBuilder` writes ``X`` over the
DATA array the flagging used, chunk by chunk as the model is predicted, and the
solves cut their work arrays (normal equations by SPW batches, StefCal problems
by batches) to ``max_bytes`` (:func:`work_bytes` of ``calibration_memory_budget_gb``).
Every piece is the same arithmetic as the whole, so the solutions do not depend
on the budget (``tests/test_calibration_memory.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from contimg.errors import InvalidInputError

CHUNK_ROWS = 16384


@dataclass(eq=False)
class GroupSums:
    """One read of a group: per row and channel ``X = w V conj(M)`` and ``Y = w |M|^2``.

    Attributes
    ----------
    x : numpy.ndarray
        (Nrow, Nchan, Npol) complex64.
    y : numpy.ndarray
        (Nrow, Nchan, Npol) float32.
    time_index, spw, a1, a2 : numpy.ndarray
        (Nrow,) integration index, SPW, antennas; autocorrelations excluded.
    times_s : numpy.ndarray
        Distinct integration times, MJD s.
    freqs_hz : numpy.ndarray
        (Nspw, Nchan).
    n_ant : int
        Antenna table size.
    """

    x: np.ndarray
    y: np.ndarray
    time_index: np.ndarray
    spw: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    times_s: np.ndarray
    freqs_hz: np.ndarray
    n_ant: int

    def __post_init__(self):
        bl = self.a1.astype(np.int64) * self.n_ant + self.a2
        self.baselines, self.bl_index = np.unique(bl, return_inverse=True)
        order = np.argsort(self.time_index, kind="stable")
        bounds = np.searchsorted(self.time_index[order], np.arange(len(self.times_s) + 1))
        #: rows of each integration: within one, every (baseline, SPW) is unique
        self.rows_by_time = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.times_s))]


class SumsBuilder:
    """:class:`GroupSums` built chunk by chunk: the model's chunks in, as it is predicted.

    ``X = w V conj(M)`` and ``Y = w |M|^2`` are elementwise per row, so each chunk
    of rows (in order, from row 0) is done when its model is: nothing of the model
    is kept. With ``in_place=True``, ``X`` is written into the buffer of the
    ``data`` given, over rows already consumed (cross-correlations packed to the
    front), so the group's resident arrays are DATA's 2 GB (become ``X``) and
    ``Y`` (1 GB) on a full group; the caller must not use ``data`` afterwards.

    Parameters
    ----------
    ms : path-like
    antennas, fields : sequence of int, optional
        Only baselines of these antennas and rows of these fields count (others get
        zero weight): the selection of :func:`contimg.calibration.selection.select_ids`.
    data : numpy.ndarray, optional
        DATA (rows, channels, pols) complex64, when the caller has it in memory;
        read from the MS chunk by chunk otherwise.
    in_place : bool
        Write ``X`` into ``data``'s buffer (it must be C-contiguous complex64).
    """

    def __init__(self, ms, *, antennas=None, fields=None, data: np.ndarray | None = None, in_place: bool = False):
        from casacore.tables import table

        self.ms = str(ms)
        self.main = table(self.ms, ack=False)
        try:
            main = self.main
            self.a1, self.a2 = main.getcol("ANTENNA1"), main.getcol("ANTENNA2")
            deselected = np.zeros(len(self.a1), dtype=bool)
            if antennas is not None:
                deselected |= ~(np.isin(self.a1, antennas) & np.isin(self.a2, antennas))
            if fields is not None:
                deselected |= ~np.isin(main.getcol("FIELD_ID"), fields)
            self.deselected = deselected
            self.cross = np.flatnonzero(self.a1 != self.a2)
            self.t = main.getcol("TIME")
            self.ddid = main.getcol("DATA_DESC_ID")
            with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
                self.spw_of = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"))
            with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as sw:
                self.freqs = np.asarray(sw.getcol("CHAN_FREQ"), dtype=float)
            with table(f"{ms}/ANTENNA", ack=False) as ant:
                self.n_ant = ant.nrows()
            self.n_rows = main.nrows()
            self.shape = main.getcell("DATA", 0).shape
            self.has_ws = "WEIGHT_SPECTRUM" in main.colnames()
        except BaseException:
            self.main.close()
            raise
        if data is not None and data.shape != (self.n_rows,) + self.shape:
            self.main.close()
            raise ValueError(f"data has shape {data.shape}, the MS's columns {(self.n_rows,) + self.shape}")
        self.data = data
        n_cross = len(self.cross)
        if in_place:
            if data is None or data.dtype != np.complex64 or not data.flags.c_contiguous:
                self.main.close()
                raise ValueError("in_place needs data: C-contiguous complex64")
            self.x = data.reshape(-1)[:n_cross * int(np.prod(self.shape))].reshape((n_cross,) + self.shape)
        else:
            self.x = np.empty((n_cross,) + self.shape, dtype=np.complex64)
        self.y = np.empty((n_cross,) + self.shape, dtype=np.float32)
        self.next_row = 0
        self.pos = 0
        self.seconds = 0.0

    def add(self, start: int, model: np.ndarray) -> None:
        """Rows ``start`` to ``start + len(model)`` with their model (the next rows: chunks come in order)."""
        import time

        t0 = time.perf_counter()
        n = len(model)
        if start != self.next_row:
            raise ValueError(f"chunks must come in order: expected row {self.next_row}, got {start}")
        keep = self.a1[start:start + n] != self.a2[start:start + n]
        k = int(keep.sum())
        if k:
            main = self.main
            # a copy (boolean index) before X overwrites these rows of DATA's buffer: rows < start + n only
            v = (main.getcol("DATA", start, n) if self.data is None else self.data[start:start + n])[keep]
            m = model[keep]
            w = (main.getcol("WEIGHT_SPECTRUM", start, n)[keep] if self.has_ws else
                 np.repeat(main.getcol("WEIGHT", start, n)[keep][:, None, :], self.shape[0], axis=1))
            w = np.where(main.getcol("FLAG", start, n)[keep], 0.0, w).astype(np.float32)
            w[self.deselected[start:start + n][keep]] = 0.0
            self.x[self.pos:self.pos + k] = w * v * np.conj(m)
            self.y[self.pos:self.pos + k] = w * (m.real**2 + m.imag**2)
            self.pos += k
        self.next_row = start + n
        self.seconds += time.perf_counter() - t0

    def finish(self) -> GroupSums:
        """The sums, once every row has been added."""
        self.main.close()
        if self.next_row != self.n_rows:
            raise ValueError(f"{self.ms}: {self.next_row} of {self.n_rows} rows added")
        self.data = None
        times = np.unique(self.t)
        cross = self.cross
        sums = GroupSums(self.x, self.y, np.searchsorted(times, self.t[cross]), self.spw_of[self.ddid[cross]],
                         self.a1[cross], self.a2[cross], times, self.freqs, self.n_ant)
        # the row metadata (~80 MB on a full group) is the sums' now; the sums are the caller's
        del self.t, self.a1, self.a2, self.ddid, self.cross, self.deselected, self.x, self.y
        return sums

    def close(self) -> None:
        self.main.close()


def read_group(ms, *, antennas=None, fields=None, chunk_rows: int = CHUNK_ROWS, data: np.ndarray | None = None,
               model: np.ndarray | None = None) -> GroupSums:
    """Read DATA, MODEL_DATA, FLAG and weights once into :class:`GroupSums` (cross-correlations only).

    Parameters
    ----------
    antennas, fields : sequence of int, optional
        Only baselines of these antennas and rows of these fields count (others get
        zero weight): the selection of :func:`contimg.calibration.selection.select_ids`.
    data, model : numpy.ndarray, optional
        DATA and the model (what MODEL_DATA holds), (rows, channels, pols) complex,
        when the caller has them in memory: each saves reading a 2 GB column of a
        full group. Read from the MS otherwise. Neither is modified
        (:class:`SumsBuilder` with ``in_place`` reuses DATA's buffer instead).
    """
    builder = SumsBuilder(ms, antennas=antennas, fields=fields, data=data)
    try:
        if model is not None and model.shape != (builder.n_rows,) + builder.shape:
            raise ValueError(f"model has shape {model.shape}, the MS's columns {(builder.n_rows,) + builder.shape}")
        for start in range(0, builder.n_rows, chunk_rows):
            n = min(chunk_rows, builder.n_rows - start)
            builder.add(start, builder.main.getcol("MODEL_DATA", start, n) if model is None else model[start:start + n])
    except BaseException:
        builder.close()
        raise
    return builder.finish()


# --- memory -------------------------------------------------------------------------------

#: What calibrate_ms holds besides the group's arrays and the work chunks: the interpreter, numba,
#: casacore, astropy, the row metadata (~0.5 GB measured on a full group before DATA is read).
BASE_BYTES = 600 * 2**20
#: The work arrays get at least this much, whatever the budget (a budget below the group's own
#: arrays cannot be met; the chunks then stay small rather than vanish).
MIN_WORK_BYTES = 128 * 2**20


def work_bytes(budget_bytes: float | None, resident_bytes: float) -> float | None:
    """Bytes for the work arrays (chunks) under a memory budget: what the resident arrays leave.

    ``None`` (no budget): no limit, every solve in one piece.
    """
    if budget_bytes is None:
        return None
    return max(float(budget_bytes) - resident_bytes - BASE_BYTES, MIN_WORK_BYTES)


def group_bytes(n_rows: int, n_chan: int, n_pol: int) -> int:
    """Resident bytes of a group being calibrated: DATA (complex64, later ``X`` in place), ``Y`` (float32),
    and the per-row metadata."""
    return n_rows * n_chan * n_pol * (8 + 4) + n_rows * 64


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; nothing elsewhere).

    The solves allocate and free arrays of a few to a few tens of MB in turn; glibc
    serves those from its heap, not from their own mappings (its mmap threshold
    rises to the largest block freed, up to 32 MB), and keeps the freed pages
    resident: the process grew by ~0.4 GB over the solves (issue 21).
    """
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None


def row_chunk(max_bytes: float | None, n_chan: int, n_pol: int) -> int:
    """Rows per chunk of the model and the sums: a quarter of ``max_bytes`` for their temporaries (~64 bytes per
    visibility: the model, DATA's copy, weights, products), :data:`CHUNK_ROWS` to 65536 rows; unlimited: the
    model's default chunk.

    Not below :data:`CHUNK_ROWS` (100 MB of temporaries on a full group): while the
    sums are built their 1 GiB of weights is still filling, so this is not the
    step that sets the peak, and chunks of 4096 rows cost ~2 s more in casacore
    calls on a full group.
    """
    from contimg.calibration.model import CHUNK_ROWS as MODEL_ROWS

    if max_bytes is None:
        return MODEL_ROWS
    return int(min(65536, max(CHUNK_ROWS, 0.25 * max_bytes // (64 * n_chan * n_pol))))


def _stefcal_bytes_per_problem(n_ant: int, n_bl: int) -> int:
    # (n_ant x n_ant) weighted visibilities and weights, plus per-baseline copies (ratio, weights,
    # transposes, residuals)
    return n_ant * n_ant * 24 + n_bl * 120


# --- the solver ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, parallel=True)
def _stefcal_iterate(vw, wmat, g, max_iter, tol):  # pragma: no cover - compiled
    # StefCal's alternating update, each problem on its own until ITS gains change by
    # less than tol (relative to its largest): a numpy loop over all problems at once
    # iterated every problem until the slowest converged, and spent its time in
    # batched (117 x 117) matrix-vector products; this is the same update, ~10x cheaper
    n_p, n_ant = g.shape
    for p in numba.prange(n_p):
        cur = g[p].copy()
        new = np.empty(n_ant, dtype=np.complex128)
        for it in range(max_iter):
            for i in range(n_ant):
                num = 0j
                den = 0.0
                for j in range(n_ant):
                    w = wmat[p, i, j]
                    if w != 0.0:
                        gj = cur[j]
                        num += vw[p, i, j] * gj
                        den += w * (gj.real * gj.real + gj.imag * gj.imag)
                new[i] = num / den if den > 0 else 0j
            change = 0.0
            biggest = 0.0
            for i in range(n_ant):
                if it % 2 == 1:
                    new[i] = 0.5 * (new[i] + cur[i])
                change = max(change, abs(new[i] - cur[i]))
                biggest = max(biggest, abs(new[i]))
                cur[i] = new[i]
            if change / max(biggest, 1e-30) < tol:
                break
        g[p] = cur


def stefcal(vis: np.ndarray, weight: np.ndarray, a1: np.ndarray, a2: np.ndarray, n_ant: int, *,
            ref_order, max_iter: int = 100, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Antenna gains with ``vis_ij ~ g_i conj(g_j)``, for many independent problems at once.

    Parameters
    ----------
    vis, weight : numpy.ndarray
        (Nbaseline, P): P independent problems (channels, pols, times...).
    a1, a2 : numpy.ndarray
        (Nbaseline,) antennas of each baseline (a1 != a2).
    n_ant : int
    ref_order : sequence of int
        Reference antennas, best first: each problem's phase is referred to the
        first of them that has a solution.
    max_iter, tol
        Iterations stop when no gain changes by more than ``tol`` relative to the
        largest (1e-7: far below the noise of any solution).

    Returns
    -------
    gains : (n_ant, P) complex128, 1 where unsolved
    snr : (n_ant, P) float, 0 where unsolved
    refant : (P,) int, the reference used per problem (-1: none)
    """
    n_bl, n_p = vis.shape
    vmat = np.zeros((n_p, n_ant, n_ant), dtype=np.complex128)
    wmat = np.zeros((n_p, n_ant, n_ant))
    vmat[:, a1, a2] = vis.T
    vmat[:, a2, a1] = np.conj(vis.T)
    wmat[:, a1, a2] = weight.T
    wmat[:, a2, a1] = weight.T
    vmat *= wmat  # the weighted visibilities, in place (only they and the weights are iterated on)
    g = np.ones((n_p, n_ant), dtype=np.complex128)
    has = wmat.sum(axis=2) > 0
    g[~has] = 0
    _stefcal_iterate(vmat, wmat, g, max_iter, tol)
    del vmat
    # noise from the weighted residuals, per problem
    model = g[:, a1] * np.conj(g[:, a2])  # (P, Nbl)
    res2 = (weight.T * np.abs(vis.T - model) ** 2).sum(axis=1)
    n_used = (weight.T > 0).sum(axis=1)
    n_par = 2 * has.sum(axis=1) - 1
    dof = np.maximum(2 * n_used - n_par, 1)
    sigma2 = 2 * res2 / dof  # per unit weight, complex
    info = np.matmul(wmat, (np.abs(g) ** 2)[:, :, None])[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.abs(g) * np.sqrt(info / np.maximum(sigma2, 1e-30)[:, None])
    snr = np.where(has & np.isfinite(snr), np.minimum(snr, 1e6), 0.0)
    refant = np.full(n_p, -1)
    for r in ref_order:
        pick = (refant < 0) & has[:, r] & (np.abs(g[:, r]) > 0)
        refant[pick] = r
    rot = np.ones(n_p, dtype=np.complex128)
    ok = refant >= 0
    gr = g[np.arange(n_p)[ok], refant[ok]]
    rot[ok] = np.conj(gr) / np.abs(gr)
    g = g * rot[:, None]
    g = np.where(has, g, 1.0)
    return g.T, snr.T, refant


@numba.njit(cache=True, nogil=True, parallel=True)
def accumulate_channels(x, y, rows, bl, key, a1, a2, spw, jones, use_jones, num, den):  # pragma: no cover - compiled
    # rows of one integration: each (baseline, key) at most once, so the adds do not race
    n_chan, n_pol = x.shape[1], x.shape[2]
    for i in numba.prange(len(rows)):
        r = rows[i]
        b, k, s = bl[r], key[r], spw[r]
        for c in range(n_chan):
            for p in range(n_pol):
                v = complex(x[r, c, p])
                if use_jones:
                    d = jones[a1[r], s, c, p] * np.conj(jones[a2[r], s, c, p])
                    if d == 0:  # no solution for one of the antennas: the visibility does not count
                        continue
                    v = v / d
                num[b, k, c, p] += v
                den[b, k, c, p] += y[r, c, p]


@numba.njit(cache=True, nogil=True, parallel=True)
def _channel_sums(x, y, a1, a2, spw, jones, z, yz):  # pragma: no cover - compiled
    # per row and pol: sum over channels of X / (J_i conj(J_j)), and of Y
    n_chan, n_pol = x.shape[1], x.shape[2]
    for r in numba.prange(x.shape[0]):
        s = spw[r]
        for p in range(n_pol):
            acc = 0j
            wsum = 0.0
            for c in range(n_chan):
                d = jones[a1[r], s, c, p] * np.conj(jones[a2[r], s, c, p])
                if d != 0:
                    acc += complex(x[r, c, p]) / d
                    wsum += y[r, c, p]
            z[r, p] = acc
            yz[r, p] = wsum


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0)


def _stefcal_grid(num, den, a1, a2, n_ant, ref_order, *, max_bytes: float | None = None):
    """stefcal on (Nbl, ...) sums; gains and snr shaped (n_ant, ...).

    The problems are independent: with ``max_bytes`` they are solved in batches
    whose work arrays fit in it (the same solutions, less memory: all 3,072
    channel problems of a full group at once take ~2 GB).
    """
    tail = num.shape[1:]
    n_bl = len(a1)
    num, den = num.reshape(n_bl, -1), den.reshape(n_bl, -1)
    n_p = num.shape[1]
    step = n_p if max_bytes is None else int(max(1, max_bytes // _stefcal_bytes_per_problem(n_ant, n_bl)))
    if step >= n_p:
        g, snr, _ = stefcal(_ratio(num, den), den, a1, a2, n_ant, ref_order=ref_order)
    else:
        g = np.empty((n_ant, n_p), dtype=np.complex128)
        snr = np.empty((n_ant, n_p))
        for p0 in range(0, n_p, step):
            part = slice(p0, min(p0 + step, n_p))
            g[:, part], snr[:, part], _ = stefcal(_ratio(num[:, part], den[:, part]), den[:, part], a1, a2, n_ant,
                                                  ref_order=ref_order)
    return g.reshape((n_ant,) + tail), snr.reshape((n_ant,) + tail)


def solve_channels(sums: GroupSums, times, jones=None, *, ref_order, max_bytes: float | None = None):
    """Per-(SPW, channel, pol) gains over the integrations ``times``, with ``jones`` removed first.

    With ``max_bytes``, SPW by SPW (as many at a time as fit in half of it; the
    normal equations of a full group's 16 SPWs are 250 MB) and the StefCal
    problems in batches that fit in the other half: each SPW's sums and solutions
    are the same either way.

    Returns gains, snr (n_ant, Nspw, Nchan, Npol).
    """
    n_spw, n_chan = sums.freqs_hz.shape
    n_pol = sums.x.shape[-1]
    n_bl = len(sums.baselines)
    use = jones is not None
    j = np.ascontiguousarray(jones, dtype=np.complex128) if use else np.ones((1, 1, 1, 1), dtype=np.complex128)
    a1, a2 = sums.baselines // sums.n_ant, sums.baselines % sums.n_ant
    per_spw = n_bl * n_chan * n_pol * 24  # num (complex128) and den (float64)
    step = n_spw if max_bytes is None else int(min(n_spw, max(1, 0.5 * max_bytes // per_spw)))
    if step >= n_spw:
        num = np.zeros((n_bl, n_spw, n_chan, n_pol), dtype=np.complex128)
        den = np.zeros(num.shape)
        for t in times:
            accumulate_channels(sums.x, sums.y, sums.rows_by_time[t], sums.bl_index, sums.spw, sums.a1, sums.a2,
                                sums.spw, j, use, num, den)
        return _stefcal_grid(num, den, a1, a2, sums.n_ant, ref_order,
                             max_bytes=None if max_bytes is None else 0.5 * max_bytes)
    gains = np.empty((sums.n_ant, n_spw, n_chan, n_pol), dtype=np.complex128)
    snr = np.empty(gains.shape)
    for s0 in range(0, n_spw, step):
        s1 = min(s0 + step, n_spw)
        key = sums.spw - s0  # position in this batch (rows of other SPWs are not passed)
        num = np.zeros((n_bl, s1 - s0, n_chan, n_pol), dtype=np.complex128)
        den = np.zeros(num.shape)
        for t in times:
            rows = sums.rows_by_time[t]
            rows = rows[(sums.spw[rows] >= s0) & (sums.spw[rows] < s1)]
            accumulate_channels(sums.x, sums.y, rows, sums.bl_index, key, sums.a1, sums.a2, sums.spw, j, use, num,
                                den)
        gains[:, s0:s1], snr[:, s0:s1] = _stefcal_grid(num, den, a1, a2, sums.n_ant, ref_order,
                                                       max_bytes=0.5 * max_bytes)
        del num, den  # the next batch's are the same size: they reuse this memory
    return gains, snr


def channel_sums(sums: GroupSums, jones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and pol: ``sum_nu X / (J_i conj(J_j))`` and ``sum_nu Y`` (the data of the gain solves)."""
    z = np.empty((len(sums.a1), sums.x.shape[-1]), dtype=np.complex128)
    yz = np.empty(z.shape)
    _channel_sums(sums.x, sums.y, sums.a1, sums.a2, sums.spw, np.ascontiguousarray(jones, dtype=np.complex128),
                  z, yz)
    return z, yz


def _sum_rows(sums: GroupSums, values: np.ndarray, weights: np.ndarray, key: np.ndarray, n_keys: int):
    """Sum per-row values per (baseline, key) (rows of one integration are unique per (baseline, SPW))."""
    num = np.zeros((len(sums.baselines), n_keys) + values.shape[1:], dtype=np.complex128)
    den = np.zeros(num.shape)
    for rows in sums.rows_by_time:
        idx = (sums.bl_index[rows], key[rows])
        num[idx] += values[rows]
        den[idx] += weights[rows]
    return num, den


# --- the four solves ----------------------------------------------------------------------


def fit_delays(gains: np.ndarray, snr: np.ndarray, freqs_hz: np.ndarray, *, ref_freq_hz: float,
               max_delay_ns: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """One delay per antenna and pol across the band from per-channel gains.

    Parameters
    ----------
    gains, snr : (n_ant, Nspw, Nchan, Npol)
    freqs_hz : (Nspw, Nchan)

    Returns
    -------
    delay_ns, snr : (n_ant, Npol); snr 0 where no channel was solved.
    """
    n_ant, _, _, n_pol = gains.shape
    nu = (freqs_hz.ravel() - ref_freq_hz)  # (Nf,)
    g = gains.reshape(n_ant, -1, n_pol)
    s = snr.reshape(n_ant, -1, n_pol)
    w = s**2
    unit = np.where(s > 0, g / np.where(np.abs(g) > 0, np.abs(g), 1), 0)
    dnu = np.median(np.abs(np.diff(np.sort(freqs_hz.ravel()))))
    # coarse grid at a tenth of 1/bandwidth, then the maximum of the coherent sum on finer grids
    span = nu.max() - nu.min()
    step = 0.1 / span
    grid = np.arange(-max_delay_ns * 1e-9, max_delay_ns * 1e-9 + step, step)
    grid = grid[np.abs(grid) < 0.5 / dnu]
    tau = np.zeros((n_ant, n_pol))
    out_snr = np.zeros((n_ant, n_pol))
    for p in range(n_pol):
        u = unit[:, :, p] * w[:, :, p]  # (n_ant, Nf)
        phasor = np.exp(-2j * np.pi * np.outer(nu, grid))  # (Nf, Ngrid)
        power = np.abs(u @ phasor)
        t0 = grid[np.argmax(power, axis=1)]
        # refine: the coherent sum's maximum on successively finer grids around the peak
        half = step
        for _ in range(4):
            fine = t0[:, None] + np.linspace(-half, half, 41)[None, :]  # (n_ant, 41)
            ph = np.exp(-2j * np.pi * nu[None, :, None] * fine[:, None, :])  # (n_ant, Nf, 41)
            pw = np.abs(np.einsum("af,afk->ak", u, ph))
            t0 = fine[np.arange(len(t0)), np.argmax(pw, axis=1)]
            half = half / 10
        tau[:, p] = t0 * 1e9
        out_snr[:, p] = np.sqrt(w[:, :, p].sum(axis=1))
    return tau, out_snr


def _k_phasor(delay_ns, freqs_hz, ref_freq_hz):
    """CASA's K Jones ``exp(2 pi i tau (nu - nu_K))``: (n_ant, Nspw, Nchan, Npol)."""
    return np.exp(2j * np.pi * delay_ns[:, None, None, :] * 1e-9 * (freqs_hz[None, :, :, None] - ref_freq_hz))


@dataclass(frozen=True)
class FastSolution:
    """Arrays of one solve, ready to be written as a caltable."""

    kind: str
    values: np.ndarray  # (Ntime, n_ant, Nspw_table, Nchan_table, Npol): complex, or float delays (ns)
    snr: np.ndarray
    flags: np.ndarray
    times_s: np.ndarray
    interval_s: float
    refant: int
    spw_freqs: np.ndarray | None = None  # K: (1, 1) band centre


def solve_all(sums: GroupSums, *, transit_indices, ref_order, min_snr: dict, solve_kb: bool = True,
              kb: tuple | None = None, timings: dict | None = None,
              cpu_timings: dict | None = None, max_bytes: float | None = None) -> dict[str, FastSolution]:
    """K, B, GP and GA (or GP and GA against given K/B Jones) on one :class:`GroupSums`.

    Parameters
    ----------
    transit_indices : sequence of int
        Integrations for the delay solve.
    ref_order : sequence of int
        Reference antennas, best first.
    min_snr : dict
        Per type (K, B, GP, GA): solutions below are flagged.
    kb : tuple, optional
        ``(delay_ns (n_ant, Npol), bandpass (n_ant, Nspw, Nchan, Npol), K reference
        frequency Hz)`` of the K/B set in force, with ``solve_kb=False``.
    timings : dict, optional
        Receives the seconds of each solve (``solve_K``...).
    cpu_timings : dict, optional
        Receives the CPU seconds of each solve (this process, all threads).
    max_bytes : float, optional
        Memory for the solves' work arrays (:func:`work_bytes` of the memory
        budget): the normal equations and the StefCal problems are then done in
        pieces that fit (the same solutions). None: each solve in one piece.
    """
    import time

    timings = {} if timings is None else timings
    cpu_timings = {} if cpu_timings is None else cpu_timings
    clock = [time.perf_counter(), time.process_time()]

    def lap(name):
        release_memory()
        now, cpu = time.perf_counter(), time.process_time()
        timings[name] = now - clock[0]
        cpu_timings[name] = cpu - clock[1]
        clock[:] = [now, cpu]

    ref_order = [int(r) for r in ref_order]
    n_spw, n_chan = sums.freqs_hz.shape
    n_pol = sums.x.shape[-1]
    centre = float(0.5 * (sums.freqs_hz.min() + sums.freqs_hz.max()))
    dt = float(np.median(np.diff(sums.times_s))) if len(sums.times_s) > 1 else 12.885
    out: dict[str, FastSolution] = {}
    all_times = range(len(sums.times_s))
    if solve_kb:
        transit_indices = [int(i) for i in transit_indices]
        g, s = solve_channels(sums, transit_indices, ref_order=ref_order, max_bytes=max_bytes)
        delay, ksnr = fit_delays(g, s, sums.freqs_hz, ref_freq_hz=centre)
        kflag = ksnr < min_snr.get("K", 3.0)
        delay = np.where(kflag, 0.0, delay)
        tmid = float(sums.times_s[transit_indices].mean())
        out["K"] = FastSolution("K", delay[None, :, None, None, :], ksnr[None, :, None, None, :],
                                kflag[None, :, None, None, :], np.array([tmid]),
                                dt * len(transit_indices), ref_order[0], np.array([[centre]]))
        lap("solve_K")
        kjones = _k_phasor(delay, sums.freqs_hz, centre)
        g, s = solve_channels(sums, all_times, kjones, ref_order=ref_order, max_bytes=max_bytes)
        bflag = s < min_snr.get("B", 5.0)
        amp = np.where(bflag, np.nan, np.abs(g))
        with np.errstate(invalid="ignore", divide="ignore"):
            # antennas with no solution in an SPW give all-NaN slices: their mean stays NaN, flagged anyway
            count = np.sum(np.isfinite(amp), axis=2, keepdims=True)
            mean = np.nansum(amp, axis=2, keepdims=True) / np.where(count > 0, count, np.nan)
        b = np.where(bflag, 1.0, g / np.where(np.isfinite(mean) & (mean > 0), mean, 1.0))
        out["B"] = FastSolution("B", b[None], s[None], bflag[None], np.array([sums.times_s.mean()]),
                                dt * len(sums.times_s), ref_order[0])
        lap("solve_B")
    else:
        delay, b, k_ref = kb
        kjones = _k_phasor(delay, sums.freqs_hz, k_ref)
    kbj = kjones * b
    # GP: K and B removed, channels summed per (integration, SPW, pol)
    z, yz = channel_sums(sums, kbj)
    a1, a2 = sums.baselines // sums.n_ant, sums.baselines % sums.n_ant
    num, den = _sum_rows(sums, z, yz, sums.time_index * n_spw + sums.spw, len(sums.times_s) * n_spw)
    g, s = _stefcal_grid(num, den, a1, a2, sums.n_ant, ref_order, max_bytes=max_bytes)
    g = g.reshape(sums.n_ant, len(sums.times_s), n_spw, n_pol)
    s = s.reshape(g.shape)
    pflag = s < min_snr.get("GP", 3.0)
    gp = np.where(pflag, 1.0, g / np.where(np.abs(g) > 0, np.abs(g), 1))
    out["GP"] = FastSolution("GP", np.moveaxis(gp, 1, 0)[:, :, :, None, :], np.moveaxis(s, 1, 0)[:, :, :, None, :],
                             np.moveaxis(pflag, 1, 0)[:, :, :, None, :], sums.times_s, dt, ref_order[0])
    lap("solve_GP")

    # GA: K, B and GP removed, whole group per (SPW, pol), amplitude only
    for i in range(0, len(z), CHUNK_ROWS):  # z / (g_i conj(g_j)), in place by chunks: no row-sized temporaries
        part = slice(i, i + CHUNK_ROWS)
        ti, sp = sums.time_index[part], sums.spw[part]
        z[part] /= gp[sums.a1[part], ti, sp] * np.conj(gp[sums.a2[part], ti, sp])
    num, den = _sum_rows(sums, z, yz, sums.spw, n_spw)
    g, s = _stefcal_grid(num, den, a1, a2, sums.n_ant, ref_order, max_bytes=max_bytes)
    aflag = s < min_snr.get("GA", 3.0)
    ga = np.where(aflag, 1.0, np.abs(g)).astype(complex)
    out["GA"] = FastSolution("GA", ga[None, :, :, None, :], s[None, :, :, None, :], aflag[None, :, :, None, :],
                             np.array([sums.times_s.mean()]), dt * len(sums.times_s), ref_order[0])
    lap("solve_GA")
    return out


# --- writing CASA tables ------------------------------------------------------------------

_CASA_TYPES = {"K": ("K Jones", "Float", True), "B": ("B Jones", "Complex", False),
               "GP": ("G Jones", "Complex", True), "GA": ("G Jones", "Complex", True)}


def _create_tables(ms: str, specs: list[tuple[str, str, str, bool]]) -> None:
    import casatools

    cb = casatools.calibrater()
    cb.open(ms, compress=False, addcorr=False, addmodel=False)
    try:
        for path, caltype, partype, single in specs:
            cb.createcaltable(path, partype, caltype, single)
    finally:
        cb.close()


def partial_path(path: Path) -> Path:
    """Where a caltable is made and filled before it is renamed to ``path`` (complete)."""
    return path.with_name(f".{path.name}.partial")


def create_caltables(ms, kinds, paths: dict[str, Path], *, log_path, timeout: float | None = None) -> None:
    """Create the empty CASA caltables of ``kinds`` (K, B, GP, GA) under their temporary names, in one CASA child.

    They depend on the MS only, not on the solutions, so a caller can run this
    while it flags and solves (the CASA child's start-up is ~4 s):
    :func:`write_caltables` with ``created=True`` then fills them.

    Raises
    ------
    FileExistsError
        A table of that name exists already.
    """
    import shutil

    from contimg.casa import run_in_casa

    specs = []
    for kind in kinds:
        path = Path(paths[kind])
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it (or the whole set) to solve again")
        if partial_path(path).exists():
            shutil.rmtree(partial_path(path))
        caltype, partype, single = _CASA_TYPES[kind]
        specs.append((str(partial_path(path)), caltype, partype, single))
    run_in_casa(_create_tables, str(ms), specs, log_path=log_path, timeout=timeout)


def write_caltables(ms, solutions: dict[str, "FastSolution"], paths: dict[str, Path], *, log_path,
                    timeout: float | None = None, created=()) -> dict[str, Path]:
    """Write :class:`FastSolution` s as standard CASA caltables (created by CASA in one child, filled by casacore).

    Each is filled under a temporary name and renamed when complete. ``created``:
    the kinds whose empty tables :func:`create_caltables` made already.
    """
    missing = [kind for kind in solutions if kind not in set(created)]
    if missing:
        create_caltables(ms, missing, paths, log_path=log_path, timeout=timeout)
    out = {}
    for kind, sol in solutions.items():
        partial = partial_path(Path(paths[kind]))
        _fill(partial, sol, float_param=_CASA_TYPES[kind][1] == "Float")
        partial.rename(paths[kind])
        out[kind] = Path(paths[kind])
    return out


def _fill(partial: Path, sol: "FastSolution", *, float_param: bool) -> None:
    from casacore.tables import table

    n_t, n_ant, n_spw, n_chan, n_pol = sol.values.shape
    tt, aa, ss = (a.ravel() for a in np.meshgrid(np.arange(n_t), np.arange(n_ant), np.arange(n_spw), indexing="ij"))
    n = len(tt)
    vals = sol.values[tt, aa, ss]  # (n, nchan, npol)
    with table(str(partial), ack=False, readonly=False) as tb:
        tb.addrows(n)
        tb.putcol("TIME", sol.times_s[tt])
        tb.putcol("FIELD_ID", np.zeros(n, dtype=np.int32))
        tb.putcol("SPECTRAL_WINDOW_ID", ss.astype(np.int32))
        tb.putcol("ANTENNA1", aa.astype(np.int32))
        tb.putcol("ANTENNA2", np.full(n, sol.refant, dtype=np.int32))
        tb.putcol("INTERVAL", np.full(n, sol.interval_s))
        tb.putcol("SCAN_NUMBER", np.ones(n, dtype=np.int32))
        tb.putcol("OBSERVATION_ID", np.zeros(n, dtype=np.int32))
        if float_param:
            tb.putcol("FPARAM", vals.real.astype(np.float32))
        else:
            tb.putcol("CPARAM", vals.astype(np.complex64))
        tb.putcol("PARAMERR", np.zeros(vals.shape, dtype=np.float32))
        tb.putcol("FLAG", sol.flags[tt, aa, ss])
        tb.putcol("SNR", sol.snr[tt, aa, ss].astype(np.float32))
        tb.putcol("WEIGHT", np.ones(vals.shape, dtype=np.float32))
    if sol.spw_freqs is not None:
        # a band-wide delay: CASA applies exp(2 pi i tau (nu - nu_K)) with the table's own frequency
        with table(str(partial / "SPECTRAL_WINDOW"), ack=False, readonly=False) as sw:
            sw.putcell("CHAN_FREQ", 0, np.asarray(sol.spw_freqs[0], dtype=float))
            sw.putcell("REF_FREQUENCY", 0, float(sol.spw_freqs[0, 0]))


def jones_from_tables(k_path, b_path, n_ant: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(delay_ns (n_ant, Npol), bandpass (n_ant, Nspw, Nchan, Npol), K frequency Hz)`` of K and B tables."""
    from contimg.calibration.caltables import read_caltable

    k, b = read_caltable(k_path), read_caltable(b_path)
    if len(k.spws) != 1:
        raise InvalidInputError(f"{k_path}: the fast solver applies a band-wide delay (one SPW); this table has "
                                f"{len(k.spws)}: solve with solver='casa'")
    kspw = int(k.spws[0])
    delay = np.zeros((n_ant, k.values.shape[-1]))
    delay[k.antennas] = np.where(k.flags[0, kspw, :, 0, :], 0.0, np.nan_to_num(k.values[0, kspw, :, 0, :].real))
    band = np.ones((n_ant, b.values.shape[1]) + b.values.shape[3:], dtype=np.complex128)
    band[b.antennas] = np.moveaxis(np.where(b.flags[0], 1.0, np.nan_to_num(b.values[0], nan=1.0)), 1, 0)
    return delay, band, float(k.freqs_hz[kspw, 0])


def check_ms_for_fast(sums: GroupSums, ms) -> None:
    """Refuse data the fast path cannot handle (anything but one field's time axis)."""
    if not any(np.any(sums.y[i:i + 65536] > 0) for i in range(0, len(sums.y), 65536)):  # no full-size temporary
        raise InvalidInputError(f"{ms}: every cross-correlation is flagged or the model is zero; nothing to solve")
