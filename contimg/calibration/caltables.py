"""Read CASA caltables into arrays (python-casacore; no CASA process needed).

A caltable's main table has one row per (time, SPW, antenna) with ``CPARAM``
(complex gains: B, G) or ``FPARAM`` (real: K delays in ns), ``FLAG``, ``SNR``,
each shaped (channels, polarisations). :func:`read_caltable` returns them as
dense arrays indexed ``[time, spw, antenna, channel, pol]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contimg.errors import InvalidInputError


@dataclass(frozen=True)
class CalTable:
    """A caltable's solutions on a dense grid.

    Attributes
    ----------
    path : pathlib.Path
    kind : str
        The table's ``VisCal`` type (``K Jones``, ``B Jones``, ``G Jones``).
    times_s : numpy.ndarray
        (Ntime,) solution times, MJD seconds.
    antennas : numpy.ndarray
        (Nant,) antenna numbers with at least one row.
    values : numpy.ndarray
        (Ntime, Nspw, Nant, Nchan, Npol): complex gains, or delays in ns for K.
        NaN where there is no row.
    flags : numpy.ndarray
        Same shape, bool; True where flagged or absent.
    snr : numpy.ndarray
        Same shape, float (0 where absent).
    freqs_hz : numpy.ndarray
        (Nspw, Nchan) frequencies of the solutions' channels, Hz.
    spws : numpy.ndarray
        SPW ids that have solutions (one, for a table solved with ``combine='spw'``).
    """

    path: Path
    kind: str
    times_s: np.ndarray
    antennas: np.ndarray
    values: np.ndarray
    flags: np.ndarray
    snr: np.ndarray
    freqs_hz: np.ndarray
    spws: np.ndarray

    @property
    def flagged_fraction(self) -> float:
        """Fraction of (time, SPW, antenna, channel, pol) solutions flagged, among antennas present."""
        return float(self.flags.mean()) if self.flags.size else 1.0


def _cluster_times(time: np.ndarray, *, tolerance_s: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(time)
    ts = time[order]
    new = np.concatenate([[True], np.diff(ts) > tolerance_s])
    label_sorted = np.cumsum(new) - 1
    labels = np.empty_like(label_sorted)
    labels[order] = label_sorted
    centres = np.array([ts[label_sorted == i].mean() for i in range(label_sorted[-1] + 1)]) if len(ts) else ts
    return centres, labels


def read_caltable(path, *, time_tolerance_s: float = 3.0) -> CalTable:
    """Read a K, B or G caltable.

    Parameters
    ----------
    path : path-like
    time_tolerance_s : float
        Solution times closer than this (s) are one solution interval.

    Raises
    ------
    InvalidInputError
        The path is not a readable caltable.
    """
    from casacore.tables import table

    path = Path(path)
    try:
        with table(str(path), ack=False) as tb:
            kind = str(tb.getkeyword("VisCal"))
            cols = tb.colnames()
            par = "CPARAM" if "CPARAM" in cols else "FPARAM"
            time = tb.getcol("TIME")
            spw = tb.getcol("SPECTRAL_WINDOW_ID")
            ant = tb.getcol("ANTENNA1")
            values = tb.getcol(par)
            flag = tb.getcol("FLAG")
            snr = tb.getcol("SNR")
        with table(str(path / "SPECTRAL_WINDOW"), ack=False) as sw:
            freqs = [np.asarray(sw.getcell("CHAN_FREQ", i), dtype=float) for i in range(sw.nrows())]
    except RuntimeError as exc:
        raise InvalidInputError(f"{path}: not a readable caltable ({exc})") from exc
    # solution times of one interval differ slightly between SPWs (each SPW's own
    # data centroid): cluster them, so that one interval is one time index
    times, it = _cluster_times(time, tolerance_s=time_tolerance_s)
    ants = np.unique(ant)
    n_spw = len(freqs)
    n_chan, n_pol = values.shape[1:]
    shape = (len(times), n_spw, len(ants), n_chan, n_pol)
    dense = np.full(shape, np.nan + (0j if par == "CPARAM" else 0), dtype=values.dtype)
    dflag = np.ones(shape, dtype=bool)
    dsnr = np.zeros(shape)
    ia = np.searchsorted(ants, ant)
    dense[it, spw, ia] = values
    dflag[it, spw, ia] = flag
    dsnr[it, spw, ia] = snr
    fgrid = np.full((n_spw, n_chan), np.nan)
    for i, f in enumerate(freqs):
        fgrid[i, : min(n_chan, len(f))] = f[:n_chan]
    return CalTable(path, kind, times, ants, dense, dflag, dsnr, fgrid, np.unique(spw))
