"""Fast QA plots of a Measurement Set: amplitude against time and frequency, UV coverage, antennas.

:func:`ms_summary` reduces one visibility column in a single pass, one data
description (SPW) at a time, reading chunks of rows with python-casacore, so
memory holds one SPW's amplitudes, twice (a full DSA-110 group: 162,864
cross-correlation rows x 48 channels in float32, 31 MB), never the column
(2 GB of DATA). :func:`plot_ms` draws
four PNGs from that summary with matplotlib's Agg canvas (no pyplot state, no
display, no CASA task).

Conventions
-----------
* Amplitude: the mean of the amplitudes of the unflagged parallel hands,
  ``(|XX| + |YY|) / 2`` (or RR, LL): Stokes-I-like, and it does not cancel on
  uncalibrated data, whose two hands have unrelated phases. A visibility with
  both hands flagged (FLAG, or FLAG_ROW) is missing (NaN), as is a non-finite one.
* Autocorrelations are skipped.
* Every median ignores missing values; a median over nothing is NaN.
* An all-zero column raises :class:`~contimg.errors.InvalidInputError` (the
  converter leaves MODEL_DATA and CORRECTED_DATA zero until they are written);
  an all-flagged one is plotted, and the titles say so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
#: Rows per read: 12 of the converter's DATA tiles (1,365 rows), ~12 MB of complex64 at 48 x 2.
CHUNK_ROWS = 16_380
#: Rows scattered in runs shorter than this on average are read through one row selection.
MIN_RUN_ROWS = 256
#: casacore Stokes codes of the parallel hands.
PARALLEL_HANDS = {5: "RR", 8: "LL", 9: "XX", 12: "YY"}
#: Short names accepted for the visibility columns.
COLUMN_ALIASES = {"data": "DATA", "corrected": "CORRECTED_DATA", "model": "MODEL_DATA"}
#: Keys of :func:`plot_ms`'s result, also the file name suffixes.
PLOT_KINDS = ("amp_time", "amp_freq", "uv", "antenna_freq")
_MJD_EPOCH = datetime(1858, 11, 17)


@dataclass(frozen=True, eq=False)
class MSSummary:
    """The reductions of one visibility column that the QA plots show.

    Attributes
    ----------
    ms : pathlib.Path
        The Measurement Set.
    column : str
        The column reduced (``DATA``, ``CORRECTED_DATA``, ...).
    unit : str
        Its unit: the column's ``QuantumUnits`` keyword (the converter writes
        ``uncalib`` on DATA), else ``uncalib`` for DATA and ``Jy`` for others.
    times_mjd_s : ndarray, shape (Ntime,)
        Integration centres (MS ``TIME``), MJD seconds UTC, ascending.
    spw_ids : ndarray of int, shape (Nspw,)
        The SPWs with data, in ascending frequency.
    spw_centre_hz : ndarray, shape (Nspw,)
        Mean channel frequency of each SPW, Hz.
    time_amp : ndarray, shape (Ntime, Nspw)
        Median amplitude over baselines and channels per integration and SPW.
    freq_hz : ndarray, shape (Nchan,)
        Every channel of those SPWs (``CHAN_FREQ``), Hz, ascending.
    chan_spw : ndarray of int, shape (Nchan,)
        The SPW of each channel.
    freq_amp : ndarray, shape (Nchan,)
        Median amplitude over rows (baselines and integrations) per channel.
    antenna_ids : ndarray of int, shape (Nant,)
        Antennas in a cross-correlation row (flagged or not), ascending.
    antenna_names : ndarray of str, shape (Nant,)
        Their ``NAME`` in the ANTENNA table.
    antenna_amp : ndarray, shape (Nant, Nchan)
        Median amplitude per antenna and channel over the rows of every
        baseline containing that antenna; NaN where all are flagged.
    u_klambda, v_klambda : ndarray, shape (Nuv,)
        Baseline coordinates of each (integration, baseline) with unflagged
        data, in kilolambda at ``ref_freq_hz`` (one half-plane: the plot adds
        (-u, -v)).
    ref_freq_hz : float
        Band centre, Hz: the middle of the channel frequency range.
    flagged_fraction : float
        Fraction of the cross-correlation visibilities (row x channel) that
        are missing.
    n_rows : int
        Cross-correlation rows reduced.
    seconds : float
        Wall time of the reduction, s.
    """

    ms: Path
    column: str
    unit: str
    times_mjd_s: np.ndarray
    spw_ids: np.ndarray
    spw_centre_hz: np.ndarray
    time_amp: np.ndarray
    freq_hz: np.ndarray
    chan_spw: np.ndarray
    freq_amp: np.ndarray
    antenna_ids: np.ndarray
    antenna_names: np.ndarray
    antenna_amp: np.ndarray
    u_klambda: np.ndarray
    v_klambda: np.ndarray
    ref_freq_hz: float
    flagged_fraction: float
    n_rows: int
    seconds: float

    @property
    def all_flagged(self) -> bool:
        """True when no cross-correlation visibility is left."""
        return self.flagged_fraction >= 1.0


def column_name(column: str) -> str:
    """The MS column of a name or alias (``data``, ``corrected``, ``model``, any case)."""
    key = str(column).strip()
    return COLUMN_ALIASES.get(key.lower(), key.upper())


def ms_summary(ms, *, column: str = "DATA", chunk_rows: int = CHUNK_ROWS) -> MSSummary:
    """Reduce one visibility column of a Measurement Set for the QA plots.

    Reads ``column``, FLAG and FLAG_ROW one data description at a time in
    chunks of ``chunk_rows`` rows (contiguous runs with ``getcol(startrow,
    nrow)``, scattered rows through a row selection), and UVW of one row per
    (integration, baseline) with data.

    Parameters
    ----------
    ms : path-like
        The Measurement Set (opened read-only).
    column : str
        Visibility column or alias (``data``, ``corrected``, ``model``).
    chunk_rows : int
        Rows per read.

    Returns
    -------
    MSSummary

    Raises
    ------
    InvalidInputError
        The MS or the column is missing, unreadable, has no cross-correlations
        or parallel hands, or every unflagged value of the column is zero.
    """
    from casacore.tables import table

    t_start = time.perf_counter()
    path = Path(ms)
    col = column_name(column)
    if not (path / "table.dat").exists():
        raise InvalidInputError(f"{path}: not a Measurement Set (no table.dat)")
    with table(str(path), ack=False) as main:
        if col not in main.colnames():
            have = ", ".join(c for c in main.colnames() if c.endswith("DATA"))
            raise InvalidInputError(f"{path}: no column {col} (visibility columns: {have or 'none'})")
        meta = _read_metadata(path, main, col)
        red = _reduce(path, main, col, meta, chunk_rows)
    if red["n_valid"] and not red["n_nonzero"]:
        raise InvalidInputError(_all_zero_message(path, col))
    uv = _uv_klambda(path, meta, red["row_has_data"], red["ref_freq_hz"])
    n_vis = red["n_vis"]
    seconds = time.perf_counter() - t_start
    summary = MSSummary(
        ms=path, column=col, unit=meta["unit"], times_mjd_s=meta["times"],
        spw_ids=red["spw_ids"], spw_centre_hz=red["spw_centre_hz"], time_amp=red["time_amp"],
        freq_hz=red["freq_hz"], chan_spw=red["chan_spw"], freq_amp=red["freq_amp"],
        antenna_ids=meta["ants"], antenna_names=meta["ant_names"], antenna_amp=red["antenna_amp"],
        u_klambda=uv[:, 0], v_klambda=uv[:, 1], ref_freq_hz=red["ref_freq_hz"],
        flagged_fraction=float(1.0 - red["n_valid"] / n_vis) if n_vis else 1.0,
        n_rows=int(meta["cross"].sum()), seconds=seconds)
    log.info("%s %s: %d rows x %d channels reduced in %.1f s (%.1f%% flagged)", path.name, col,
             summary.n_rows, len(summary.freq_hz), seconds, 100 * summary.flagged_fraction)
    return summary


def plot_ms(ms, out_dir, *, column: str = "DATA", prefix: str | None = None,
            chunk_rows: int = CHUNK_ROWS) -> dict[str, Path]:
    """Write the four QA plots of one visibility column of a Measurement Set.

    Parameters
    ----------
    ms : path-like
        The Measurement Set (read-only).
    out_dir : path-like
        Directory for the PNGs (created).
    column : str
        Visibility column or alias (``data``, ``corrected``, ``model``).
    prefix : str, optional
        File name prefix (default ``<MS stem>_<column, lower case>``).
    chunk_rows : int
        Rows per read.

    Returns
    -------
    dict of str to pathlib.Path
        ``amp_time`` (median amplitude per integration and SPW against UTC),
        ``amp_freq`` (median amplitude per channel against frequency, MHz),
        ``uv`` (UV coverage in kilolambda at the band centre) and
        ``antenna_freq`` (antenna x frequency heat map): each
        ``<out_dir>/<prefix>_<key>.png``.

    Raises
    ------
    InvalidInputError
        As :func:`ms_summary`.
    """
    return plot_summary(ms_summary(ms, column=column, chunk_rows=chunk_rows), out_dir, prefix=prefix)


def plot_summary(summary: MSSummary, out_dir, *, prefix: str | None = None, dpi: int = 100) -> dict[str, Path]:
    """Draw the four QA plots of an :class:`MSSummary` (see :func:`plot_ms`).

    Parameters
    ----------
    summary : MSSummary
    out_dir : path-like
        Directory for the PNGs (created).
    prefix : str, optional
        File name prefix (default ``<MS stem>_<column, lower case>``).
    dpi : int
        Resolution of the PNGs, dots per inch.

    Returns
    -------
    dict of str to pathlib.Path
        The PNG of each of :data:`PLOT_KINDS`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f"{summary.ms.stem}_{summary.column.lower()}"
    draw = {"amp_time": _plot_amp_time, "amp_freq": _plot_amp_freq, "uv": _plot_uv,
            "antenna_freq": _plot_antenna_freq}
    paths = {}
    for kind in PLOT_KINDS:
        fig = draw[kind](summary)
        paths[kind] = out / f"{prefix}_{kind}.png"
        fig.savefig(paths[kind], dpi=dpi)
    return paths


# --- reading and reducing ------------------------------------------------------------


def _read_metadata(path: Path, main, col: str) -> dict:
    """Row metadata and the sub-tables the reduction needs."""
    from casacore.tables import table

    a1 = main.getcol("ANTENNA1")
    a2 = main.getcol("ANTENNA2")
    cross = a1 != a2
    if not cross.any():
        raise InvalidInputError(f"{path}: no cross-correlation rows to plot")
    times_all = main.getcol("TIME")
    times = np.unique(times_all[cross])
    ddid = main.getcol("DATA_DESC_ID")
    ants = np.unique(np.concatenate([a1[cross], a2[cross]]))
    with table(f"{path}/DATA_DESCRIPTION", ack=False) as dd:
        dd_spw = dd.getcol("SPECTRAL_WINDOW_ID")
        dd_pol = dd.getcol("POLARIZATION_ID")
    with table(f"{path}/SPECTRAL_WINDOW", ack=False) as spw:
        chan_freq = [np.asarray(spw.getcell("CHAN_FREQ", i), dtype=float) for i in range(spw.nrows())]
    with table(f"{path}/POLARIZATION", ack=False) as pol:
        corr_types = [np.asarray(pol.getcell("CORR_TYPE", i)) for i in range(pol.nrows())]
    with table(f"{path}/ANTENNA", ack=False) as ant:
        names = np.asarray(ant.getcol("NAME"))
    unit = main.getcolkeywords(col).get("QuantumUnits") or ("uncalib" if col == "DATA" else "Jy")
    return {"a1": a1, "a2": a2, "cross": cross, "times": times,
            "tidx": np.searchsorted(times, times_all), "ddid": ddid, "ants": ants,
            "ant_names": np.asarray([names[a] if a < len(names) else f"ant{a}" for a in ants]),
            "dd_spw": dd_spw, "dd_pol": dd_pol, "chan_freq": chan_freq, "corr_types": corr_types,
            "unit": str(unit[0] if isinstance(unit, (list, tuple)) else unit)}


def _reduce(path: Path, main, col: str, meta: dict, chunk_rows: int) -> dict:
    """One pass over the column, one data description at a time."""
    a1, a2, cross, tidx, ddid_col = meta["a1"], meta["a2"], meta["cross"], meta["tidx"], meta["ddid"]
    ddids = np.unique(ddid_col[cross])
    spws = meta["dd_spw"][ddids]
    if len(np.unique(spws)) != len(spws):
        raise InvalidInputError(f"{path}: several data descriptions share one SPW; not supported")
    # one frequency axis: every channel of the SPWs with data, ascending
    freqs = [meta["chan_freq"][s] for s in spws]
    all_freq = np.concatenate(freqs)
    order = np.argsort(all_freq, kind="stable")
    position = np.empty(len(all_freq), dtype=int)
    position[order] = np.arange(len(all_freq))
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in freqs])])
    spw_rank = np.argsort([f.mean() for f in freqs], kind="stable")
    spw_col = np.empty(len(ddids), dtype=int)
    spw_col[spw_rank] = np.arange(len(ddids))

    ant_index = np.full(int(max(a1.max(), a2.max())) + 1, -1)
    ant_index[meta["ants"]] = np.arange(len(meta["ants"]))
    n_time, n_chan, n_ant = len(meta["times"]), len(all_freq), len(meta["ants"])
    time_amp = np.full((n_time, len(ddids)), np.nan)
    freq_amp = np.full(n_chan, np.nan)
    antenna_amp = np.full((n_ant, n_chan), np.nan)
    row_has_data = np.zeros(len(a1), dtype=bool)
    n_vis = n_valid = n_nonzero = 0

    def read(k: int) -> tuple[np.ndarray, np.ndarray]:
        dd, spw = ddids[k], spws[k]
        corr = meta["corr_types"][meta["dd_pol"][dd]]
        hands = np.flatnonzero(np.isin(corr, list(PARALLEL_HANDS)))
        if len(hands) == 0:
            raise InvalidInputError(f"{path}: SPW {spw} has no parallel-hand correlation (CORR_TYPE {corr.tolist()})")
        rows = np.flatnonzero(ddid_col == dd)
        amp = _read_amplitudes(path, main, col, rows, cross, hands, len(freqs[k]), chunk_rows)  # (Ncross, Nchan)
        return amp, rows[cross[rows]]

    def medians(k: int, amp: np.ndarray, keep_rows: np.ndarray) -> None:
        chans = position[offsets[k]:offsets[k + 1]]
        t_med, a_med, c_med = _spw_medians(amp, tidx[keep_rows], ant_index[a1[keep_rows]],
                                           ant_index[a2[keep_rows]], n_time, n_ant)
        time_amp[:, spw_col[k]] = t_med
        antenna_amp[:, chans] = a_med
        freq_amp[chans] = c_med

    deferred = []  # SPWs read as all zero: their medians only matter if another SPW is not
    for k in range(len(ddids)):
        amp, keep_rows = read(k)
        valid = ~np.isnan(amp)
        nonzero = int(np.count_nonzero(amp > 0))
        n_vis += amp.size
        n_valid += int(np.count_nonzero(valid))
        n_nonzero += nonzero
        row_has_data[keep_rows] = valid.any(axis=1)
        del valid
        if nonzero:
            medians(k, amp, keep_rows)
        else:
            deferred.append(k)
        del amp
    if n_nonzero:  # else the column is unwritten (an error) or all flagged (every median NaN)
        for k in deferred:
            medians(k, *read(k))

    freq_hz = all_freq[order]
    return {"spw_ids": spws[spw_rank], "spw_centre_hz": np.array([freqs[i].mean() for i in spw_rank]),
            "time_amp": time_amp, "freq_hz": freq_hz,
            "chan_spw": np.repeat(spws, [len(f) for f in freqs])[order],
            "freq_amp": freq_amp, "antenna_amp": antenna_amp, "row_has_data": row_has_data,
            "ref_freq_hz": float(0.5 * (freq_hz[0] + freq_hz[-1])),
            "n_vis": n_vis, "n_valid": n_valid, "n_nonzero": n_nonzero}


def _spw_medians(amp: np.ndarray, time_index: np.ndarray, ant1: np.ndarray, ant2: np.ndarray,
                 n_time: int, n_ant: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The medians of one SPW's amplitudes ``amp`` (Nrow, Nchan, float32 >= 0 or NaN).

    Returns the median per integration over rows and channels (Ntime,), per
    antenna over the rows of its baselines (Nant, Nchan), and per channel over
    all rows (Nchan,); ``time_index``, ``ant1``, ``ant2`` index each row's
    integration and antennas.
    """
    n_row, n_chan = amp.shape
    t_med = np.full(n_time, np.nan)
    by_time = np.argsort(time_index, kind="stable")
    t_sorted = time_index[by_time]
    bounds = np.flatnonzero(np.diff(t_sorted)) + 1
    in_order = bool(np.all(by_time == np.arange(n_row)))
    for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [n_row]])):
        block = amp[s:e] if in_order else amp[by_time[s:e]]
        t_med[t_sorted[s]] = _nanmedian_last(block.ravel())  # partitions a copy
    a_med = np.full((n_ant, n_chan), np.nan)
    ant_of = np.concatenate([ant1, ant2])
    by_ant = np.argsort(ant_of, kind="stable")
    row_of = np.concatenate([np.arange(n_row), np.arange(n_row)])[by_ant]
    edges = np.searchsorted(ant_of[by_ant], np.arange(n_ant + 1))
    for i in np.flatnonzero(np.diff(edges)):
        # whole rows gathered (fast in this layout), then channels along the last axis
        block = np.ascontiguousarray(amp[row_of[edges[i]:edges[i + 1]]].T)
        a_med[i] = _nanmedian_last(block, overwrite=True)
    c_med = _nanmedian_last(np.ascontiguousarray(amp.T), overwrite=True)
    return t_med, a_med, c_med


def _read_amplitudes(path: Path, main, col: str, rows: np.ndarray, cross: np.ndarray, hands: np.ndarray,
                     n_chan: int, chunk_rows: int) -> np.ndarray:
    """Amplitudes (Ncross, Nchan) float32 of the cross-correlation rows among ``rows``, NaN where missing."""
    out = np.empty((int(cross[rows].sum()), n_chan), dtype=np.float32)
    filled = 0
    for tab, start, n, global_rows in _row_chunks(main, rows, chunk_rows):
        try:
            data = tab.getcol(col, start, n)
            flag = tab.getcol("FLAG", start, n)
            flag_row = tab.getcol("FLAG_ROW", start, n)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"{path}: cannot read {col} rows {global_rows[0]}..{global_rows[-1]}: {exc}") from exc
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = _mean_parallel_hands(data, flag, flag_row, hands)
        mean = mean[cross[global_rows]]
        out[filled:filled + len(mean)] = mean
        filled += len(mean)
    return out


def _mean_parallel_hands(data: np.ndarray, flag: np.ndarray, flag_row: np.ndarray,
                         hands: np.ndarray) -> np.ndarray:
    """Mean amplitude of the unflagged parallel hands, (Nrow, Nchan) float32, NaN where none."""
    if len(hands) < data.shape[-1]:
        data, flag = data[..., hands], flag[..., hands]
    good = ~flag
    if flag_row.any():
        good &= ~flag_row[:, None, None]
    amp = np.abs(data)
    if amp.shape[-1] == 2:  # the usual case, without the temporaries of a reduction
        mean = np.where(good[..., 0], amp[..., 0], np.float32(0)) + np.where(good[..., 1], amp[..., 1], np.float32(0))
        mean /= good[..., 0].astype(np.float32) + good[..., 1]
    else:
        mean = np.where(good, amp, np.float32(0)).sum(axis=-1) / good.sum(axis=-1, dtype=np.float32)
    mean[~np.isfinite(mean)] = np.nan  # nothing unflagged (0 / 0), or a non-finite value
    return mean


def _row_chunks(main, rows: np.ndarray, chunk_rows: int):
    """(table, startrow, nrow, global rows) covering ``rows`` (ascending).

    Contiguous runs (the converter writes each SPW as one) are read from the
    table itself; rows scattered in short runs through one row selection.
    """
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    if len(rows) / len(starts) >= MIN_RUN_ROWS:
        for s, e in zip(starts, stops):
            for b in range(s, e, chunk_rows):
                n = min(chunk_rows, e - b)
                yield main, int(rows[b]), n, rows[b:b + n]
        return
    sub = main.selectrows(rows)
    try:
        for b in range(0, len(rows), chunk_rows):
            n = min(chunk_rows, len(rows) - b)
            yield sub, b, n, rows[b:b + n]
    finally:
        sub.close()


def _nanmedian_last(a: np.ndarray, *, overwrite: bool = False) -> np.ndarray | float:
    """Median along the last axis of float32 values >= 0 or NaN, ignoring NaN (NaN where all are).

    One partition at the ranks of the medians: the k-th element is the k-th
    smallest valid value while k < the valid count. Rows with different
    numbers of NaN first get half their NaN replaced by 0 (below every value,
    the rest stay above), which puts every row's median at the same one to
    three ranks. Values >= 0 order like their bit patterns read as uint32
    (every NaN after +inf), and an integer partition is ~40 % faster than
    numpy's NaN-aware float one. ``overwrite`` lets ``a`` be modified.
    """
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], np.nan) if a.ndim > 1 else float("nan")
    if a.dtype != np.float32:
        a, overwrite = a.astype(np.float32), True
    n = np.count_nonzero(~np.isnan(a), axis=-1)
    lo, hi = np.maximum((n - 1) // 2, 0), n // 2
    if np.ndim(n) and len(np.unique(n)) > 1:
        if not overwrite:
            a, overwrite = a.copy(), True
        shift = (a.shape[-1] - n) // 2
        missing = np.isnan(a)
        a[missing & (np.cumsum(missing, axis=-1) <= shift[..., None])] = 0
        lo, hi = lo + shift, hi + shift
    hi = np.minimum(hi, a.shape[-1] - 1)
    ranks = np.unique(np.concatenate([np.ravel(lo), np.ravel(hi)]))
    bits = a.view(np.uint32)
    if overwrite:
        bits.partition(ranks, axis=-1)
        p = bits
    else:
        p = np.partition(bits, ranks, axis=-1)
    p = p.view(np.float32)
    med = 0.5 * (np.take_along_axis(p, np.asarray(lo)[..., None], -1)[..., 0].astype(float)
                 + np.take_along_axis(p, np.asarray(hi)[..., None], -1)[..., 0])
    if np.ndim(med) == 0:
        return float(med) if n > 0 else float("nan")
    return np.where(n > 0, med, np.nan)


def _uv_klambda(path: Path, meta: dict, row_has_data: np.ndarray, ref_freq_hz: float) -> np.ndarray:
    """(u, v) in kilolambda of one row per (integration, baseline) with data, (Nuv, 2)."""
    from casacore.tables import table

    rows = np.flatnonzero(row_has_data)
    if len(rows) == 0:
        return np.zeros((0, 2))
    n = int(max(meta["a1"].max(), meta["a2"].max())) + 1
    key = (meta["tidx"][rows].astype(np.int64) * n + meta["a1"][rows]) * n + meta["a2"][rows]
    _, first = np.unique(key, return_index=True)
    rows = np.sort(rows[first])
    with table(str(path), ack=False) as main:
        if rows[-1] - rows[0] + 1 == len(rows):
            uvw = main.getcol("UVW", int(rows[0]), len(rows))
        else:
            with main.selectrows(rows) as sub:
                uvw = sub.getcol("UVW")
    return uvw[:, :2] * (ref_freq_hz / C_M_S / 1e3)


def _all_zero_message(path: Path, col: str) -> str:
    text = f"{path}: every unflagged value of {col} is zero"
    if col == "CORRECTED_DATA":
        return (text + ": the MS is not calibrated yet (the converter leaves CORRECTED_DATA zero until "
                "applycal writes it). Run `contimg applycal` first, or plot the raw data with --column DATA")
    if col == "MODEL_DATA":
        return text + ": no model has been predicted into it. Plot the raw data with --column DATA"
    return text + ": nothing was written into it"


# --- plots -----------------------------------------------------------------------------


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _title(summary: MSSummary, what: str) -> str:
    state = "ALL DATA FLAGGED" if summary.all_flagged else f"{summary.flagged_fraction:.1%} flagged"
    return f"{summary.ms.name}  {summary.column}: {what}\n({state}; cross-correlations, mean of parallel hands)"


def _amp_label(summary: MSSummary, what: str = "median amplitude") -> str:
    unit = "uncalibrated" if summary.unit == "uncalib" else summary.unit
    return f"{what} ({unit})"


def _no_data(ax, summary: MSSummary) -> None:
    if summary.all_flagged:
        ax.text(0.5, 0.5, "all data flagged", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="0.4")


def _utc(times_mjd_s: np.ndarray) -> list[datetime]:
    return [_MJD_EPOCH + timedelta(seconds=float(t)) for t in times_mjd_s]


def _plot_amp_time(summary: MSSummary):
    import matplotlib.dates as mdates
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = _figure(10, 5)
    ax = fig.add_subplot()
    when = _utc(summary.times_mjd_s)
    mhz = summary.spw_centre_hz / 1e6
    norm = Normalize(mhz.min() - 1e-3, mhz.max() + 1e-3)
    cmap = colormaps["viridis"]
    for j in range(len(mhz)):
        ax.plot(when, summary.time_amp[:, j], "-o", ms=2.5, lw=1, color=cmap(norm(mhz[j])))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="SPW centre frequency (MHz)")
    pad = timedelta(seconds=0.5 * float(np.median(np.diff(summary.times_mjd_s))) if len(when) > 1 else 10.0)
    ax.set_xlim(when[0] - pad, when[-1] + pad)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel(f"time (UTC, {when[0]:%Y-%m-%d})")
    ax.set_ylabel(_amp_label(summary))
    ax.set_title(_title(summary, "median amplitude per integration and SPW"), fontsize=10)
    ax.grid(alpha=0.3)
    _no_data(ax, summary)
    return fig


def _plot_amp_freq(summary: MSSummary):
    fig = _figure(12, 4.5)
    ax = fig.add_subplot()
    mhz = summary.freq_hz / 1e6
    for j, spw in enumerate(summary.spw_ids):
        sel = summary.chan_spw == spw
        ax.plot(mhz[sel], summary.freq_amp[sel], "-", lw=1, marker=".", ms=2, color=f"C{j % 2}")
    ax.set_xlim(mhz[0], mhz[-1])
    ax.set_xlabel("frequency (MHz)")
    ax.set_ylabel(_amp_label(summary))
    ax.set_title(_title(summary, f"median amplitude per channel, {len(summary.spw_ids)} SPWs "
                                 "(alternating colours)"), fontsize=10)
    ax.grid(alpha=0.3)
    _no_data(ax, summary)
    return fig


def _plot_uv(summary: MSSummary):
    fig = _figure(7.5, 8)
    ax = fig.add_subplot()
    u, v = summary.u_klambda, summary.v_klambda
    ms = 1.0 if len(u) < 20_000 else 0.4
    ax.plot(u, v, ls="", marker=".", ms=ms, mew=0, color="C0", label="(u, v)")
    ax.plot(-u, -v, ls="", marker=".", ms=ms, mew=0, color="C1", label="(-u, -v)")
    lim = 1.05 * max(float(np.abs(u).max()), float(np.abs(v).max())) if len(u) else 1.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("u (kilolambda)")
    ax.set_ylabel("v (kilolambda)")
    ax.legend(loc="upper right", markerscale=10 / ms, fontsize=8)
    ax.set_title(_title(summary, f"UV coverage at {summary.ref_freq_hz / 1e6:.1f} MHz, "
                                 f"{len(u)} baseline-integrations"), fontsize=10)
    ax.grid(alpha=0.3)
    _no_data(ax, summary)
    return fig


def _plot_antenna_freq(summary: MSSummary):
    from matplotlib import colormaps

    n_ant = len(summary.antenna_ids)
    fig = _figure(12, max(4.0, 0.11 * n_ant + 1.8))
    ax = fig.add_subplot()
    edges, values = _frequency_cells(summary.freq_hz / 1e6, summary.antenna_amp)
    finite = values[np.isfinite(values)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = colormaps["viridis"].with_extremes(bad="0.8")
    mesh = ax.pcolormesh(edges, np.arange(n_ant + 1) - 0.5, np.ma.masked_invalid(values), cmap=cmap,
                         vmin=vmin, vmax=vmax, rasterized=True)
    ax.set_ylim(n_ant - 0.5, -0.5)
    ax.set_yticks(np.arange(n_ant), summary.antenna_names, fontsize=5.5 if n_ant > 40 else 8)
    ax.set_xlabel("frequency (MHz)")
    ax.set_ylabel("antenna")
    fig.colorbar(mesh, ax=ax, label=_amp_label(summary), fraction=0.04, pad=0.01)
    ax.set_title(_title(summary, "median amplitude of each antenna's baselines (grey: flagged)"), fontsize=10)
    _no_data(ax, summary)
    return fig


def _frequency_cells(mhz: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges (MHz) for ``values`` (..., Nchan) with NaN columns filling gaps in frequency."""
    if len(mhz) == 1:
        return np.array([mhz[0] - 0.5, mhz[0] + 0.5]), values
    step = np.diff(mhz)
    width = float(np.median(step))
    gaps = np.flatnonzero(step > 1.5 * width)
    if len(gaps):
        mhz = np.insert(mhz, gaps + 1, mhz[gaps] + 0.5 * step[gaps])
        values = np.insert(values, gaps + 1, np.nan, axis=-1)
        step = np.diff(mhz)
    edges = np.concatenate([[mhz[0] - step[0] / 2], mhz[:-1] + step / 2, [mhz[-1] + step[-1] / 2]])
    return edges, values
