"""The calibrator catalog: a :class:`Calibrator` record and :func:`load_calibrators`.

The package ships ``contimg/data/calibrators.parquet``, built by
:mod:`contimg.sky.catalog_build` from the NRAO VLA calibrator list
(``shared/dsa110/vla_calibrators.txt``: every entry with a 20 cm flux), plus the
repo-known calibrators of ``shared/dsa110/calibrators_known.csv`` that the VLA
list lacks; its provenance is in the Parquet schema metadata. Operators can
instead pass another VLA list in its text layout (parsed by
:mod:`contimg.sky.vla_list`), or a Parquet/CSV file with the columns of
:data:`COLUMNS`.

Quality: ``quality_c`` and ``quality_d`` are the VLA list's 20 cm letters for the
C and D configurations, the closest to DSA-110's baselines (<= 2.7 km; DOMAIN.md
4.1). :attr:`Calibrator.unsuitable` (a letter X or C) and
:attr:`Calibrator.quality_rank` (P < S < W < unknown) are what selection uses.

A calibrator without a 1.4 GHz (20 cm) flux density is never loaded: a missing
L-band flux is not defaulted (the old pipeline's 1.0 Jy default selected the
Q-band-only 1911+161).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from contimg.errors import InvalidInputError, NoCalibratorError

log = logging.getLogger(__name__)

#: Reference frequency of ``flux_jy`` (the VLA list's 20 cm band), Hz.
REFERENCE_FREQ_HZ = 1.4e9

#: Columns of the columnar catalog file, in order.
COLUMNS = (
    "name",
    "alt_name",
    "other_name",
    "ra_deg",
    "dec_deg",
    "flux_1p4ghz_jy",
    "spectral_index",
    "position_code",
    "quality_c",
    "quality_d",
    "notes",
)

#: Rank of a VLA quality letter (lower is better): P primary (<3 % amplitude
#: closure errors), S secondary (3-10 %), W worse (>10 %). Any other letter
#: (``?``) or none counts as :data:`UNKNOWN_QUALITY_RANK`.
QUALITY_RANK = {"P": 0, "S": 1, "W": 2}
UNKNOWN_QUALITY_RANK = 3
#: Letters that make a calibrator unusable at DSA-110's baselines: X unsuitable,
#: C confused.
UNSUITABLE_QUALITY = frozenset("XC")

#: File name of the shipped catalog inside ``contimg/data``.
PACKAGED_CATALOG = "calibrators.parquet"


@dataclass(frozen=True)
class Calibrator:
    """One calibrator.

    Attributes
    ----------
    name : str
        Primary name (``J0834+5534``, ``3C286``).
    alt_name : str or None
        Other name (``0834+555``, ``J1331+3030``).
    ra_deg, dec_deg : float
        J2000 (ICRS) position, degrees.
    flux_jy : float
        Flux density at 1.4 GHz, Jy.
    spectral_index : float or None
        alpha in S ~ nu**alpha; None when unknown (treated as flat).
    position_code : str or None
        VLA position quality code (A/B/C/T), None when unknown.
    notes : str
        Provenance and doubts (e.g. an assumed spectral index).
    quality_c, quality_d : str or None
        VLA list 20 cm quality letters for the C and D configurations
        (P, S, W, X, C, ?), None when unknown.
    other_name : str or None
        A third name (``3C286``), None when there is none.
    """

    name: str
    alt_name: str | None
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float | None = None
    position_code: str | None = None
    notes: str = ""
    quality_c: str | None = None
    quality_d: str | None = None
    other_name: str | None = None

    @property
    def unsuitable(self) -> bool:
        """True if the 20 cm C or D letter is X (unsuitable) or C (confused)."""
        return any(q in UNSUITABLE_QUALITY for q in (self.quality_c, self.quality_d) if q)

    @property
    def quality_rank(self) -> int:
        """Selection rank from the C and D letters, lower is better.

        The worse of the two letters (DSA-110's baselines span both
        configurations): 0 P, 1 S, 2 W, 3 unknown; 4 if :attr:`unsuitable`.
        """
        if self.unsuitable:
            return UNKNOWN_QUALITY_RANK + 1
        return max(QUALITY_RANK.get(q or "", UNKNOWN_QUALITY_RANK) for q in (self.quality_c, self.quality_d))

    @property
    def coord(self) -> SkyCoord:
        """ICRS position."""
        return SkyCoord(self.ra_deg * u.deg, self.dec_deg * u.deg, frame="icrs")

    def flux_at(self, freq_hz):
        """Flux density at ``freq_hz`` (Hz, or a frequency Quantity), Jy.

        A power law from the 1.4 GHz value; flat when the spectral index is unknown.
        Returns a float for a scalar frequency, otherwise a numpy array.
        """
        if isinstance(freq_hz, u.Quantity):
            freq_hz = freq_hz.to_value(u.Hz)
        freq = np.asarray(freq_hz, dtype=float)
        alpha = 0.0 if self.spectral_index is None else self.spectral_index
        flux = self.flux_jy * (freq / REFERENCE_FREQ_HZ) ** alpha
        return float(flux) if flux.ndim == 0 else flux

    def matches(self, name: str) -> bool:
        """True if ``name`` is one of this calibrator's names (case and a leading J ignored)."""
        key = name_key(name)
        return any(n is not None and name_key(n) == key for n in (self.name, self.alt_name, self.other_name))


def name_key(name: str) -> str:
    """Comparison form of a source name: upper case, no spaces, no leading ``J`` before a digit.

    So ``J0834+555`` and ``0834+555`` compare equal (the old repo wrote both);
    ``J0834+5534`` (truncated J2000 designation) stays distinct from ``0834+555``.
    """
    key = name.strip().upper().replace(" ", "")
    return key[1:] if key.startswith("J") and key[1:2].isdigit() else key


def _none_if_missing(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


def _from_record(rec: dict, source: str) -> Calibrator | None:
    """A Calibrator from a row dict, or None (logged) when position or flux is missing."""
    name = str(rec.get("name") or "").strip()
    ra = _none_if_missing(rec.get("ra_deg"))
    dec = _none_if_missing(rec.get("dec_deg"))
    flux = _none_if_missing(rec.get("flux_1p4ghz_jy", rec.get("flux_jy")))
    if ra is None or dec is None:
        log.info("%s: %s skipped: no position", source, name)
        return None
    if flux is None:
        log.info("%s: %s skipped: no 1.4 GHz flux (never defaulted)", source, name)
        return None
    alpha = _none_if_missing(rec.get("spectral_index"))
    code = _none_if_missing(rec.get("position_code"))
    text = {k: _none_if_missing(rec.get(k)) for k in ("alt_name", "other_name", "quality_c", "quality_d")}
    try:
        return Calibrator(
            name=name,
            alt_name=None if text["alt_name"] is None else str(text["alt_name"]),
            ra_deg=float(ra),
            dec_deg=float(dec),
            flux_jy=float(flux),
            spectral_index=None if alpha is None else float(alpha),
            position_code=None if code is None else str(code),
            notes=str(_none_if_missing(rec.get("notes")) or ""),
            quality_c=None if text["quality_c"] is None else str(text["quality_c"]).strip(),
            quality_d=None if text["quality_d"] is None else str(text["quality_d"]).strip(),
            other_name=None if text["other_name"] is None else str(text["other_name"]),
        )
    except ValueError as exc:
        raise InvalidInputError(f"{source}: row {name!r} has a non-numeric value: {exc}") from exc


def _check(cal: Calibrator, source: str) -> Calibrator:
    if not (0.0 <= cal.ra_deg < 360.0 and -90.0 <= cal.dec_deg <= 90.0):
        raise InvalidInputError(f"{source}: {cal.name} has an impossible position {cal.ra_deg}, {cal.dec_deg}")
    if not cal.flux_jy > 0:
        raise InvalidInputError(f"{source}: {cal.name} has a non-positive 1.4 GHz flux {cal.flux_jy}")
    return cal


def read_parquet(path) -> list[Calibrator]:
    """Calibrators from a Parquet file with the :data:`COLUMNS`."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [c for c in (_from_record(r, str(path)) for r in rows) if c is not None]


def read_csv(path) -> list[Calibrator]:
    """Calibrators from a CSV file with (at least) name, ra_deg, dec_deg, flux_1p4ghz_jy."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"name", "ra_deg", "dec_deg"} <= set(rows[0]):
        raise InvalidInputError(f"{path}: a calibrator CSV needs columns name, ra_deg, dec_deg, flux_1p4ghz_jy")
    return [c for c in (_from_record(r, str(path)) for r in rows) if c is not None]


def write_parquet(calibrators, path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write calibrators as a Parquet file with the :data:`COLUMNS` (nullable where documented)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            pa.field("name", pa.string(), nullable=False),
            pa.field("alt_name", pa.string()),
            pa.field("other_name", pa.string()),
            pa.field("ra_deg", pa.float64(), nullable=False),
            pa.field("dec_deg", pa.float64(), nullable=False),
            pa.field("flux_1p4ghz_jy", pa.float64(), nullable=False),
            pa.field("spectral_index", pa.float64()),
            pa.field("position_code", pa.string()),
            pa.field("quality_c", pa.string()),
            pa.field("quality_d", pa.string()),
            pa.field("notes", pa.string()),
        ],
        metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()},
    )
    cals = list(calibrators)
    table = pa.table(
        {
            "name": [c.name for c in cals],
            "alt_name": [c.alt_name for c in cals],
            "other_name": [c.other_name for c in cals],
            "ra_deg": [c.ra_deg for c in cals],
            "dec_deg": [c.dec_deg for c in cals],
            "flux_1p4ghz_jy": [c.flux_jy for c in cals],
            "spectral_index": [c.spectral_index for c in cals],
            "position_code": [c.position_code for c in cals],
            "quality_c": [c.quality_c for c in cals],
            "quality_d": [c.quality_d for c in cals],
            "notes": [c.notes for c in cals],
        },
        schema=schema,
    )
    path = Path(path)
    pq.write_table(table, path)
    return path


def packaged_catalog_path() -> Path:
    """Path of the shipped Parquet catalog."""
    return Path(str(resources.files("contimg.data").joinpath(PACKAGED_CATALOG)))


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple[Calibrator, ...]:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        cals = read_parquet(p)
    elif suffix == ".csv":
        cals = read_csv(p)
    else:
        from contimg.sky.vla_list import parse_vla_calibrator_list

        cals, _skipped = parse_vla_calibrator_list(p.read_text(errors="replace"), source=str(p))
    if not cals:
        raise InvalidInputError(f"{p}: no calibrators with a position and a 1.4 GHz flux were found")
    return tuple(_check(c, str(p)) for c in cals)


def load_calibrators(path=None) -> list[Calibrator]:
    """Load a calibrator catalog.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        ``.parquet``/``.pq`` or ``.csv`` with the :data:`COLUMNS`, or any other
        file read as the NRAO VLA calibrator list text (``csource.txt``). Default:
        the catalog shipped in the package. Results are cached per file version.

    Returns
    -------
    list of Calibrator
        Only calibrators with a position and a 1.4 GHz flux density.

    Raises
    ------
    InvalidInputError
        If the file is missing, unreadable or yields no usable calibrator.
    """
    p = packaged_catalog_path() if path is None else Path(path)
    if not p.is_file():
        raise InvalidInputError(f"calibrator catalog {p} does not exist; pass an existing Parquet, CSV or VLA list file")
    st = p.stat()
    return list(_load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size))


def find_calibrator(name: str, *, catalog=None) -> Calibrator:
    """The calibrator called ``name`` (name or alt name; a leading ``J`` is optional).

    Parameters
    ----------
    name : str
        E.g. ``"0834+555"``, ``"J0834+5534"``, ``"3C286"``.
    catalog : list of Calibrator or path, optional
        Default: the shipped catalog.

    Raises
    ------
    NoCalibratorError
        If no calibrator has that name.
    """
    cals = resolve_catalog(catalog)
    for cal in cals:
        if cal.matches(name):
            return cal
    raise NoCalibratorError(f"no calibrator named {name!r} in the catalog ({len(cals)} entries)")


def resolve_catalog(catalog=None) -> list[Calibrator]:
    """A list of calibrators from ``None`` (shipped), a path, or an iterable of Calibrator."""
    if catalog is None or isinstance(catalog, (str, Path)):
        return load_calibrators(catalog)
    cals = list(catalog)
    if not all(isinstance(c, Calibrator) for c in cals):
        raise InvalidInputError("catalog must be a path or a sequence of Calibrator")
    return cals
