"""The visibilities an imager grids: one SPW, averaged channels, bright outside sources subtracted.

A converted group has 16 SPWs of 48 channels and its autocorrelations. Both
imagers grid each SPW in its own pass (WSClean "reorders into 16 parts": 16
gridder calls and their FFTs per major cycle), so the group is rewritten here as
a scratch MS of one SPW over the whole band, with:

* the chosen column (DATA, or CORRECTED_DATA once calibration was applied; a
  CORRECTED_DATA that was never written is an error naming ``--data-column data``,
  never a blank image);
* the bright catalog sources that lie outside the imaged area subtracted (their
  beam-weighted model, :mod:`contimg.calibration.model`, at full resolution,
  before any averaging): uncleaned, their sidelobes draw stripes across the field;
* ``chan_avg`` channels averaged with their weights (flags honoured), within a SPW;
* the cross-correlations only (imagers skip autocorrelations anyway).

The source MS is read once, in row blocks, and never written. The per-time and
per-channel weight sums come out as a by-product: the primary beam averages over
frequency and time with them.
"""

from __future__ import annotations

import logging
import shutil
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from contimg.calibration.model import (
    predict_rows,
    apparent_fluxes,
    direction_cosines,
    read_geometry,
)
from contimg.conversion.ms_layout import INCREMENTAL_COLUMNS, create_ms
from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Data columns by the names the command line uses.
DATA_COLUMNS = {"data": "DATA", "corrected": "CORRECTED_DATA"}
#: Subtables copied as they are (SPECTRAL_WINDOW and DATA_DESCRIPTION are rewritten).
COPIED_SUBTABLES = ("ANTENNA", "FEED", "FIELD", "OBSERVATION", "POLARIZATION", "STATE", "PROCESSOR",
                    "HISTORY", "SOURCE", "POINTING", "FLAG_CMD", "SPECTRAL_WINDOW", "DATA_DESCRIPTION")
#: Baseline-time rows per block (x 16 SPWs x 48 channels x 2 pols x 8 bytes ~ 25 MB read per block).
BLOCK_ROWS = 2048


@dataclass(frozen=True)
class ImagingVisibilities:
    """The scratch MS an imager reads, and what went into it.

    Attributes
    ----------
    ms : Path
        The single-SPW MS (its DATA column holds the visibilities to image).
    source_ms : Path
    column : str
        Column of the source MS that was read (``DATA`` or ``CORRECTED_DATA``).
    chan_avg : int
        Input channels per output channel.
    freqs_hz : numpy.ndarray
        Output channel centres, Hz (ascending).
    chan_width_hz : float
    times_s : numpy.ndarray
        Integration mid times, MJD seconds.
    weights : numpy.ndarray
        (Ntimes, Nchan) sum of the unflagged weights of the cross-correlations
        (both hands), the weighting of the primary beam's average.
    subtracted : list of dict
        Sources subtracted (name, position, flux, peak apparent flux).
    flagged_fraction : float
        Fraction of cross-correlation samples flagged in the output.
    seconds : float
    """

    ms: Path
    source_ms: Path
    column: str
    chan_avg: int
    freqs_hz: np.ndarray
    chan_width_hz: float
    times_s: np.ndarray
    weights: np.ndarray
    subtracted: list = field(default_factory=list)
    flagged_fraction: float = 0.0
    seconds: float = 0.0

    @property
    def bandwidth_hz(self) -> float:
        """Total bandwidth of the output channels, Hz."""
        return float(len(self.freqs_hz) * self.chan_width_hz)


def resolve_column(data_column: str) -> str:
    """MS column of a command-line name (``data``/``corrected``, or the column name itself)."""
    key = data_column.lower()
    if key in DATA_COLUMNS:
        return DATA_COLUMNS[key]
    if data_column.upper() in DATA_COLUMNS.values():
        return data_column.upper()
    raise InvalidInputError(f"unknown data column {data_column!r}; use one of {sorted(DATA_COLUMNS)}")


@numba.njit(cache=True, nogil=True)
def _average_block(vis, flag, weight, k, out_vis, out_w, out_flag, chan0):  # pragma: no cover - compiled
    # Weighted mean of k adjacent channels; flagged samples carry no weight.
    n_rows, n_chan, n_pol = vis.shape
    for r in range(n_rows):
        for oc in range(n_chan // k):
            for p in range(n_pol):
                acc = 0.0 + 0.0j
                wsum = 0.0
                for c in range(oc * k, oc * k + k):
                    if not flag[r, c, p]:
                        w = weight[r, c, p]
                        acc += w * vis[r, c, p]
                        wsum += w
                o = chan0 + oc
                if wsum > 0.0:
                    out_vis[r, o, p] = acc / wsum
                    out_w[r, o, p] = wsum
                    out_flag[r, o, p] = False
                else:
                    out_vis[r, o, p] = 0.0
                    out_w[r, o, p] = 0.0
                    out_flag[r, o, p] = True


def _spw_layout(ms: str, main) -> tuple[np.ndarray, np.ndarray, int]:
    """(ddid -> spw, channel frequencies (Nspw, Nchan), baseline-time rows per SPW block), checked."""
    from casacore.tables import table

    with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
        ddid_to_spw = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"), dtype=np.int64)
    with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as spw:
        freqs = np.asarray(spw.getcol("CHAN_FREQ"), dtype=float)
        widths = np.asarray(spw.getcol("CHAN_WIDTH"), dtype=float)
    n_spw = len(freqs)
    ddid = np.asarray(main.getcol("DATA_DESC_ID"))
    n_rows = len(ddid)
    if n_rows % n_spw:
        raise InvalidInputError(f"{ms}: {n_rows} rows are not {n_spw} equal SPW blocks; "
                                "image an MS written by the contimg converter")
    nblts = n_rows // n_spw
    spw_of_row = ddid_to_spw[ddid]
    if not np.array_equal(spw_of_row, np.repeat(np.arange(n_spw), nblts)):
        raise InvalidInputError(f"{ms}: rows are not ordered by SPW in equal blocks; "
                                "image an MS written by the contimg converter")
    order = np.argsort(freqs[:, 0])
    if not np.array_equal(order, np.arange(n_spw)) or np.any(np.diff(freqs, axis=1) <= 0):
        raise InvalidInputError(f"{ms}: SPWs and channels must ascend in frequency (DOMAIN.md 8)")
    width = float(np.median(widths))
    gaps = freqs[1:, 0] - freqs[:-1, -1]
    if n_spw > 1 and not np.allclose(gaps, width, rtol=1e-3):
        raise InvalidInputError(f"{ms}: SPWs are not contiguous in frequency (gaps {gaps} Hz); "
                                "they cannot be joined into one SPW")
    return ddid_to_spw, freqs, nblts


def _check_blocks_align(ms: str, main, n_spw: int, nblts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every SPW block has the same (TIME, ANTENNA1, ANTENNA2) rows; returns block 0's."""
    ref = [np.asarray(main.getcol(c, 0, nblts)) for c in ("TIME", "ANTENNA1", "ANTENNA2")]
    for s in range(1, n_spw):
        for col, values in zip(("TIME", "ANTENNA1", "ANTENNA2"), ref):
            if not np.array_equal(main.getcol(col, s * nblts, nblts), values):
                raise InvalidInputError(f"{ms}: SPW {s} rows differ from SPW 0 in {col}; "
                                        "image an MS written by the contimg converter")
    return tuple(ref)


def _copy_subtables(source: Path, out: Path, *, freqs_hz: np.ndarray, width_hz: float) -> None:
    """Copy the subtables; one SPW (row 0, rewritten for the output channels) and one DATA_DESCRIPTION."""
    from casacore.tables import table

    for name in COPIED_SUBTABLES:
        src = source / name
        if not (src / "table.dat").exists():
            continue
        shutil.rmtree(out / name, ignore_errors=True)
        with table(str(src), ack=False) as t:
            t.copy(str(out / name), deep=True, valuecopy=True).close()
    with table(str(out / "SPECTRAL_WINDOW"), ack=False, readonly=False) as spw:
        if spw.nrows() > 1:
            spw.removerows(list(range(1, spw.nrows())))
        n = len(freqs_hz)
        spw.putcell("CHAN_FREQ", 0, freqs_hz)
        for col in ("CHAN_WIDTH", "EFFECTIVE_BW", "RESOLUTION"):
            spw.putcell(col, 0, np.full(n, width_hz))
        spw.putcell("NUM_CHAN", 0, n)
        spw.putcell("TOTAL_BANDWIDTH", 0, n * width_hz)
        spw.putcell("REF_FREQUENCY", 0, float(freqs_hz[n // 2]))
        if "NAME" in spw.colnames():
            spw.putcell("NAME", 0, "band")
    with table(str(out / "DATA_DESCRIPTION"), ack=False, readonly=False) as dd:
        if dd.nrows() > 1:
            dd.removerows(list(range(1, dd.nrows())))
        dd.putcell("SPECTRAL_WINDOW_ID", 0, 0)


def write_imaging_ms(ms, out_ms, *, data_column: str = "data", chan_avg: int = 1, subtract=(),
                     dish_diameter_m: float | None = None, block_rows: int = BLOCK_ROWS) -> ImagingVisibilities:
    """Write the visibilities to image into a new single-SPW MS.

    Parameters
    ----------
    ms : path-like
        A group MS from the converter (16 contiguous SPWs in ascending frequency).
    out_ms : path-like
        The MS to write (replaced if it exists; a scratch product).
    data_column : {"data", "corrected"}
        ``corrected`` images the calibrated data; it must have been written by applycal.
    chan_avg : int
        Channels averaged into one (a divisor of the channels per SPW).
    subtract : sequence of contimg.sky.source.Source
        Sources whose beam-weighted model is subtracted before averaging (the
        bright ones outside the imaged area).
    dish_diameter_m : float, optional
        Dish diameter of the model's Airy beam, metres (default the instrument's).
    block_rows : int
        Baseline-time rows per read.

    Returns
    -------
    ImagingVisibilities

    Raises
    ------
    InvalidInputError
        Not a converter MS; non-contiguous SPWs; ``chan_avg`` not a divisor; a
        CORRECTED_DATA that applycal never wrote; every sample flagged.
    """
    from casacore.tables import table

    from contimg import instrument

    started = _time.perf_counter()
    ms = Path(ms).resolve()
    out_ms = Path(out_ms).resolve()
    column = resolve_column(data_column)
    dish = instrument.DISH_DIAMETER_M if dish_diameter_m is None else dish_diameter_m
    if not (ms / "table.dat").exists():
        raise InvalidInputError(f"{ms}: not a Measurement Set (no table.dat)")
    with table(str(ms), ack=False) as main:
        if column not in main.colnames():
            raise InvalidInputError(f"{ms}: no {column} column; use --data-column data")
        ddid_to_spw, freqs, nblts = _spw_layout(str(ms), main)
        n_spw, n_chan = freqs.shape
        if chan_avg < 1 or n_chan % chan_avg:
            raise InvalidInputError(f"channel averaging {chan_avg} does not divide the {n_chan} channels per SPW")
        times, ant1, ant2 = _check_blocks_align(str(ms), main, n_spw, nblts)
        n_pol = main.getcell("DATA", 0).shape[1]
        if column == "CORRECTED_DATA":
            _require_written(ms, main, nblts, n_spw)
        cross = np.flatnonzero(ant1 != ant2)
        if len(cross) == 0:
            raise InvalidInputError(f"{ms}: no cross-correlations to image")
        incremental = {c: np.asarray(main.getcol(c, 0, nblts))[cross] for c in INCREMENTAL_COLUMNS
                       if c in main.colnames()}
        incremental["DATA_DESC_ID"] = np.zeros(len(cross), dtype=np.int32)
        uvw_all = main.getcol("UVW", 0, nblts)
        field_all = np.asarray(main.getcol("FIELD_ID", 0, nblts), dtype=np.int64)

    n_out = n_chan // chan_avg
    width = float(freqs[0, 1] - freqs[0, 0]) if n_chan > 1 else float(np.diff(freqs[:, 0]).mean())
    out_freqs = freqs.reshape(n_spw, n_out, chan_avg).mean(axis=2).ravel()
    out_width = width * chan_avg
    times_s = np.unique(times)
    tidx_all = np.searchsorted(times_s, times).astype(np.int64)

    sources = list(subtract)
    if sources:
        geometry = read_geometry(ms)
        amp = apparent_fluxes(sources, geometry, dish_diameter_m=dish)
        peak = amp.max(axis=(0, 2, 3))
        lmn = direction_cosines(sources, geometry)
        pol_on = np.array([c in (5, 8, 9, 12) for c in geometry.corr_types], dtype=np.bool_)
    if out_ms.exists():
        shutil.rmtree(out_ms)
    out_ms.parent.mkdir(parents=True, exist_ok=True)
    n_rows = len(cross)
    with create_ms(out_ms, n_pol=n_pol, n_chan=n_spw * n_out, n_rows=n_rows, incremental=incremental) as out:
        # only DATA: an imager must never pick up a zero CORRECTED_DATA (WSClean prefers it when present)
        out.removecols(["MODEL_DATA", "CORRECTED_DATA"])
    _copy_subtables(ms, out_ms, freqs_hz=out_freqs, width_hz=out_width)

    weights = np.zeros((len(times_s), n_spw * n_out))
    n_flagged = 0
    nonzero = False
    try:
        with table(str(ms), ack=False) as main, table(str(out_ms), ack=False, readonly=False) as out:
            out.putcol("ANTENNA1", ant1[cross].astype(np.int32))
            out.putcol("ANTENNA2", ant2[cross].astype(np.int32))
            out.putcol("UVW", uvw_all[cross])
            out.putcol("FLAG_ROW", np.zeros(n_rows, dtype=bool))
            model = np.empty((block_rows, n_chan, n_pol), dtype=np.complex64)
            for b0 in range(0, n_rows, block_rows):
                rows = cross[b0:b0 + block_rows]
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                sel = rows - lo
                nb = len(rows)
                o_vis = np.empty((nb, n_spw * n_out, n_pol), dtype=np.complex64)
                o_w = np.empty((nb, n_spw * n_out, n_pol), dtype=np.float32)
                o_flag = np.empty((nb, n_spw * n_out, n_pol), dtype=bool)
                for s in range(n_spw):
                    start = s * nblts + lo
                    vis = main.getcol(column, start, hi - lo)[sel]
                    flag = main.getcol("FLAG", start, hi - lo)[sel]
                    wsp = main.getcol("WEIGHT_SPECTRUM", start, hi - lo)[sel]
                    if not nonzero and np.any(vis[~flag] != 0):
                        nonzero = True
                    if sources:
                        predict_rows(uvw_all[rows], np.full(nb, s, dtype=np.int64), field_all[rows],
                                      tidx_all[rows], lmn, amp, freqs, pol_on, model[:nb])
                        vis -= model[:nb]
                    _average_block(vis, flag, wsp, chan_avg, o_vis, o_w, o_flag, s * n_out)
                out.putcol("DATA", o_vis, b0, nb)
                out.putcol("WEIGHT_SPECTRUM", o_w, b0, nb)
                out.putcol("FLAG", o_flag, b0, nb)
                row_w = np.median(o_w, axis=1).astype(np.float32)
                out.putcol("WEIGHT", row_w, b0, nb)
                with np.errstate(divide="ignore"):
                    out.putcol("SIGMA", np.where(row_w > 0, 1.0 / np.sqrt(row_w), 0.0).astype(np.float32), b0, nb)
                np.add.at(weights, tidx_all[rows], o_w.sum(axis=2))
                n_flagged += int(o_flag.sum())
    except BaseException:
        shutil.rmtree(out_ms, ignore_errors=True)
        raise
    total = n_rows * n_spw * n_out * n_pol
    if not nonzero:
        shutil.rmtree(out_ms, ignore_errors=True)
        hint = ("CORRECTED_DATA was never written (apply calibration first, or image the raw data with "
                "--data-column data)" if column == "CORRECTED_DATA" else "every unflagged sample is zero")
        raise InvalidInputError(f"{ms}: {hint}")
    if n_flagged == total:
        shutil.rmtree(out_ms, ignore_errors=True)
        raise InvalidInputError(f"{ms}: every cross-correlation sample is flagged; nothing to image")
    subtracted = [dict(s.to_dict(), peak_apparent_jy=float(peak[i])) for i, s in enumerate(sources)]
    return ImagingVisibilities(out_ms, ms, column, chan_avg, out_freqs, out_width, times_s, weights,
                               subtracted, n_flagged / total, _time.perf_counter() - started)


def _require_written(ms: Path, main, nblts: int, n_spw: int) -> None:
    """Fail fast when CORRECTED_DATA reads as zeros where DATA does not (applycal never ran).

    A cheap probe (the middle SPW's first rows) before the full pass; the full
    pass checks every row again.
    """
    start = (n_spw // 2) * nblts
    n = min(nblts, 4096)
    corrected = main.getcol("CORRECTED_DATA", start, n)
    if np.any(corrected != 0):
        return
    if np.any(main.getcol("DATA", start, n) != 0):
        raise InvalidInputError(
            f"{ms}: CORRECTED_DATA was never written (it reads as zeros where DATA does not); "
            "apply calibration first (contimg applycal), or image the raw data with --data-column data")
