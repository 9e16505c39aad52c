"""Rank reference antennas from the data.

Criteria, in order of importance:

1. present in every SPW (at least half as much unflagged data in each as the best antenna);
2. unflagged fraction over the whole MS (to 1 %: small differences do not matter);
3. stability of a first, quick gain estimate: the per-integration gain of each
   antenna from DATA against MODEL on the middle SPW (one least-squares step over
   all its baselines: ``g_a(t) = sum_j V_aj conj(M_aj) / sum_j |M_aj|^2``), whose
   phase scatter (rad) plus fractional amplitude scatter over the group is the
   instability (lower is better). A reference antenna with a jumpy phase puts its
   jumps into every other antenna's solutions.

The old pipeline used a fixed outrigger list (DOMAIN.md 5.1) and numbered it by
station while CASA read the numbers as indices; here the choice is by name
(``DSA-NNN``), always.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from contimg import instrument
from contimg.errors import InvalidInputError


@dataclass(frozen=True)
class RefantScore:
    """One antenna's ranking record.

    Attributes
    ----------
    antenna : int
        Antenna number (station - 1).
    name : str
        ``DSA-NNN``.
    unflagged_fraction : float
    spws_present : int
        SPWs in which more than half of its data are unflagged.
    phase_rms_rad : float
        Scatter of its quick gain phase over time, radians (NaN if not estimated).
    amp_rms_frac : float
        Fractional scatter of its quick gain amplitude over time.
    """

    antenna: int
    name: str
    unflagged_fraction: float
    spws_present: int
    phase_rms_rad: float
    amp_rms_frac: float

    def to_dict(self) -> dict:
        return asdict(self)


def rank_refants(ms, *, max_rows: int | None = None) -> list[RefantScore]:
    """Every antenna with data, best reference antenna first.

    Parameters
    ----------
    ms : path-like
        A Measurement Set with MODEL_DATA predicted (the stability criterion
        needs it; with a zero model it is skipped).
    max_rows : int, optional
        Read at most this many rows of the middle SPW (default: all).

    Raises
    ------
    InvalidInputError
        No antenna has unflagged cross-correlations.
    """
    from casacore.tables import table, taql

    path = str(ms)
    with table(path, ack=False) as main:
        with table(f"{path}/SPECTRAL_WINDOW", ack=False) as spw:
            n_spw = spw.nrows()
        stats = taql(
            "select ANTENNA1 as A1, ANTENNA2 as A2, DATA_DESC_ID as D, "
            "ntrue(FLAG) as NF, nelements(FLAG) as NE from $main where ANTENNA1 != ANTENNA2")
        a1, a2 = stats.getcol("A1"), stats.getcol("A2")
        ddid, nf, ne = stats.getcol("D"), stats.getcol("NF").astype(float), stats.getcol("NE").astype(float)
        mid = n_spw // 2
        # a reference selection (no column list): TaQL refuses DATA's 'uncalib' unit in a select list
        sub = main.query(f"ANTENNA1 != ANTENNA2 && DATA_DESC_ID == {mid}", limit=int(max_rows) if max_rows else 0)
        quick = _quick_gains(sub)
    n_ant = int(max(a1.max(), a2.max())) + 1 if a1.size else 0
    flagged = np.zeros((n_ant, n_spw))
    total = np.zeros((n_ant, n_spw))
    for ants in (a1, a2):
        np.add.at(flagged, (ants, ddid), nf)
        np.add.at(total, (ants, ddid), ne)
    return _rank(path, total - flagged, total, quick)


def rank_refants_from_sums(sums) -> list[RefantScore]:
    """The same ranking from an already-read group (:class:`~contimg.calibration.fastsolve.GroupSums`)."""
    n_spw = sums.freqs_hz.shape[0]
    # per row, in chunks of rows: no full-size temporary of the (rows, channels, pols) sums
    good = np.concatenate([(sums.y[i:i + 65536] > 0).sum(axis=(1, 2)) for i in range(0, len(sums.y), 65536)]
                          or [np.zeros(0, dtype=np.int64)]).astype(float)
    per_row = float(np.prod(sums.y.shape[1:]))
    unflagged = np.zeros((sums.n_ant, n_spw))
    total = np.zeros((sums.n_ant, n_spw))
    for ants in (sums.a1, sums.a2):
        np.add.at(unflagged, (ants, sums.spw), good)
        np.add.at(total, (ants, sums.spw), per_row)
    mid = np.flatnonzero(sums.spw == n_spw // 2)
    parts = [mid[i:i + 65536] for i in range(0, len(mid), 65536)] or [mid]
    num = np.concatenate([sums.x[p].sum(axis=(1, 2)) for p in parts]).astype(np.complex128)
    den = np.concatenate([sums.y[p].sum(axis=(1, 2)) for p in parts]).astype(float)
    quick = _quick_gains_rows(sums.time_index[mid], sums.a1[mid], sums.a2[mid], num, den)
    return _rank("the group", unflagged, total, quick)


def _rank(path, unflagged_count: np.ndarray, total: np.ndarray, quick: dict) -> list[RefantScore]:
    with np.errstate(invalid="ignore", divide="ignore"):
        unflagged_spw = unflagged_count / total
        unflagged = unflagged_count.sum(1) / total.sum(1)
    scores = []
    for a in range(len(total)):
        if not total[a].sum() or not unflagged[a] > 0:
            continue
        ph, am = quick.get(a, (np.nan, np.nan))
        # present in an SPW: at least half as much unflagged data there as the best antenna has
        # (absolute fractions depend on edge channels and on how many other antennas are dead)
        present = np.nan_to_num(unflagged_spw[a]) > 0.5 * np.nanmax(np.nan_to_num(unflagged_spw), axis=0)
        scores.append(RefantScore(a, instrument.antenna_name(a), float(unflagged[a]),
                                  int(np.sum(present)), float(ph), float(am)))
    if not scores:
        raise InvalidInputError(f"{path}: every cross-correlation is flagged; no reference antenna possible "
                                "(check the correlator flags and the flagging report)")
    return sorted(scores, key=_sort_key)


def _sort_key(s: RefantScore):
    instability = s.phase_rms_rad + s.amp_rms_frac
    return (-s.spws_present, -round(s.unflagged_fraction, 2), instability if np.isfinite(instability) else np.inf,
            s.antenna)


def _quick_gains(sub) -> dict[int, tuple[float, float]]:
    """Per-antenna (phase scatter rad, fractional amplitude scatter) of one-step gain estimates."""
    if sub.nrows() == 0:
        return {}
    t, a1, a2 = sub.getcol("TIME"), sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2")
    data, model, flag = sub.getcol("DATA"), sub.getcol("MODEL_DATA"), sub.getcol("FLAG")
    w = (~flag).astype(float)
    num_row = (data * np.conj(model) * w).sum(axis=(1, 2))  # (Nrow,)
    den_row = (np.abs(model) ** 2 * w).sum(axis=(1, 2))
    return _quick_gains_rows(np.unique(t, return_inverse=True)[1], a1, a2, num_row, den_row)


def _quick_gains_rows(it, a1, a2, num_row, den_row) -> dict[int, tuple[float, float]]:
    if not np.any(den_row > 0):
        return {}
    n_t = int(it.max()) + 1
    n_ant = int(max(a1.max(), a2.max())) + 1
    num = np.zeros((n_t, n_ant), dtype=complex)
    den = np.zeros((n_t, n_ant))
    # V_ij ~ g_i conj(g_j) M_ij: antenna i's estimate uses V_ij, antenna j's conj(V_ij)
    np.add.at(num, (it, a1), num_row)
    np.add.at(num, (it, a2), np.conj(num_row))
    np.add.at(den, (it, a1), den_row)
    np.add.at(den, (it, a2), den_row)
    out = {}
    for a in range(n_ant):
        ok = den[:, a] > 0
        if ok.sum() < 2:
            continue
        g = num[ok, a] / den[ok, a]
        g = g / np.abs(np.mean(g)) if np.abs(np.mean(g)) > 0 else g
        mean_phase = np.angle(np.mean(g))
        ph = np.angle(g * np.exp(-1j * mean_phase))
        amp = np.abs(g)
        out[a] = (float(np.std(ph)), float(np.std(amp) / max(np.mean(amp), 1e-30)))
    return out
