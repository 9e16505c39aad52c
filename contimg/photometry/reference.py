"""Reference source lists of forced photometry: read one, or build one from detections.

A reference list has ``name``, ``ra_deg``, ``dec_deg`` (ICRS, deg) and optionally
``flux_jy`` (the constant flux density the flux scale normalises to, Jy). Read
from Parquet or CSV by :func:`read_reference`; built from the detections of
earlier images by :func:`from_detections` (one reference per source seen, named
after its first detection so the name never changes as detections accumulate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contimg.errors import InvalidInputError


@dataclass
class Reference:
    """A reference list (arrays of equal length).

    Attributes
    ----------
    name : numpy.ndarray of str
    ra_deg, dec_deg : numpy.ndarray
        ICRS, deg.
    flux_jy : numpy.ndarray
        Constant flux density, Jy; NaN where unknown.
    label : str
        Which list this is (a path, or how it was built): the ``reference`` column of the photometry.
    """

    name: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_jy: np.ndarray
    label: str

    def __len__(self) -> int:
        return len(self.name)

    def select(self, keep) -> "Reference":
        """The references where ``keep`` (a boolean mask or indices) selects."""
        return Reference(self.name[keep], self.ra_deg[keep], self.dec_deg[keep], self.flux_jy[keep], self.label)


def source_name(ra_deg, dec_deg) -> list[str]:
    """IAU-style names ``Jhhmmss.ss+ddmmss.s`` of positions (truncated, not rounded, as the IAU asks)."""
    out = []
    for ra, dec in zip(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)):
        cs = int(math.floor((float(ra) % 360.0) / 15.0 * 360000.0 + 1e-6))  # centiseconds of time
        h, rem = divmod(cs, 360000)
        m, rem = divmod(rem, 6000)
        sign = "-" if dec < 0 else "+"
        ds = int(math.floor(abs(float(dec)) * 36000.0 + 1e-6))  # deciarcseconds
        d, rem2 = divmod(ds, 36000)
        dm, rem2 = divmod(rem2, 600)
        ra_text = f"{h:02d}{m:02d}{rem // 100:02d}.{rem % 100:02d}"
        out.append(f"J{ra_text}{sign}{d:02d}{dm:02d}{rem2 // 10:02d}.{rem2 % 10:d}")
    return out


def read_reference(path) -> Reference:
    """Read a reference list from Parquet (``.parquet``/``.pq``) or CSV (anything else).

    Columns ``name``, ``ra_deg``, ``dec_deg`` (deg) and optional ``flux_jy`` (Jy), any case.

    Raises
    ------
    InvalidInputError
        A missing or unreadable file, a missing column, non-numeric or out-of-range positions,
        or repeated names; the message names the file.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such reference list")
    try:
        table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") else pacsv.read_csv(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InvalidInputError(f"{path}: not a readable reference list ({str(err).splitlines()[0]}); give a "
                                "Parquet or CSV file with columns name, ra_deg, dec_deg[, flux_jy]") from err
    cols = {c.lower(): c for c in table.column_names}
    missing = [c for c in ("name", "ra_deg", "dec_deg") if c not in cols]
    if missing:
        raise InvalidInputError(f"{path}: no column {', '.join(missing)} (has {', '.join(table.column_names)}); "
                                "a reference list has name, ra_deg, dec_deg (deg) and optionally flux_jy (Jy)")

    def numbers(name):
        try:
            return np.asarray(table.column(cols[name]).cast(pa.float64()).to_numpy(zero_copy_only=False), float)
        except (pa.ArrowException, ValueError) as err:
            raise InvalidInputError(f"{path}: column {name} is not numeric ({err})") from err

    ra, dec = numbers("ra_deg"), numbers("dec_deg")
    flux = numbers("flux_jy") if "flux_jy" in cols else np.full(len(ra), np.nan)
    names = np.array([str(n) for n in table.column(cols["name"]).to_pylist()], dtype=object)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
    if bad.any():
        raise InvalidInputError(f"{path}: row {int(np.flatnonzero(bad)[0])} ({names[bad][0]}) has no valid "
                                "position (ra_deg, dec_deg in degrees, |dec| <= 90)")
    uniq, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        raise InvalidInputError(f"{path}: the name {uniq[counts > 1][0]!r} is repeated; names must be unique")
    return Reference(names, ra, dec, flux, str(path.resolve()))


def _unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def from_detections(ra_deg, dec_deg, mjd, flux_jy, *, radius_arcsec: float, label: str, preferred=None,
                    preferred_only: bool = False) -> Reference:
    """One reference per source among detections in several images, earliest detection first.

    Detections are taken in time order; one within ``radius_arcsec`` of an earlier reference joins it,
    otherwise it starts a new reference, named (:func:`source_name`) after its own position: the first
    detection of a source fixes its name, so the name stays the same as later images add detections (a
    light curve is never split by a changing name). The reference's position is its first *preferred*
    detection's (a mosaic's: deeper, so more precise), else its first detection's; its flux the median
    of its detections'.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Detection positions, deg.
    mjd : array_like
        Epoch of each detection's image (orders them).
    flux_jy : array_like
        Flux density of each detection, Jy (NaN allowed).
    radius_arcsec : float
        Detections closer than this are the same source (a fraction of a beam).
    label : str
        :attr:`Reference.label`.
    preferred : array_like of bool, optional
        Detections whose position is preferred (e.g. those in mosaics).
    preferred_only : bool, optional
        Keep only the sources with at least one preferred detection.
    """
    from scipy.spatial import cKDTree

    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    flux = np.asarray(flux_jy, dtype=float)
    pref = np.zeros(ra.size, bool) if preferred is None else np.asarray(preferred, dtype=bool)
    order = np.lexsort((dec, ra, np.asarray(mjd, dtype=float)))
    rank = np.empty(ra.size, int)
    rank[order] = np.arange(ra.size)
    vec = _unit_vectors(ra, dec)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    tree = cKDTree(vec)
    owner = np.full(ra.size, -1)
    firsts: list[int] = []
    for i in order:
        if owner[i] >= 0:
            continue
        owner[i] = len(firsts)
        firsts.append(i)
        for j in tree.query_ball_point(vec[i], chord):
            if owner[j] < 0:
                owner[j] = owner[i]
    names, pos, fluxes = [], [], []
    for k, first in enumerate(firsts):
        members = np.flatnonzero(owner == k)
        best = members[pref[members]]
        if preferred_only and best.size == 0:
            continue
        at = best[np.argmin(rank[best])] if best.size else first
        names.append(source_name(ra[first], dec[first])[0])
        pos.append((ra[at], dec[at]))
        good = flux[members][np.isfinite(flux[members])]
        fluxes.append(float(np.median(good)) if good.size else np.nan)
    pos_a = np.array(pos, dtype=float).reshape(-1, 2)
    return Reference(np.array(names, dtype=object), pos_a[:, 0], pos_a[:, 1], np.array(fluxes, dtype=float), label)


def within(ref: Reference, ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
    """Boolean mask of the references within ``radius_deg`` of a position."""
    c = _unit_vectors(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg))[0]
    cos = _unit_vectors(ref.ra_deg, ref.dec_deg) @ c
    return cos >= math.cos(math.radians(radius_deg))
