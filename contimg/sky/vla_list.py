"""Parser for the NRAO VLA calibrator list text (``csource.txt``, DOMAIN.md 4.1).

Layout, one block per calibrator::

    0834+555   J2000  A 08h34m54.9040s    55d34'21.070"   Aug01  4C55.16
    0830+557   B1950  A 08h30m58.3600s    55d44'31.720"
    -----------------------------------------------------
    BAND        A B C D    FLUX(Jy)    UVMIN(kL)  UVMAX(kL)
    =====================================================
     20cm    L  P P P P       8.30
      6cm    C  P P S S       2.00

The J2000 line opens an entry (name, equinox, position code, RA, Dec, then an
optional position reference such as ``Aug01`` and an optional other name); the
B1950 line repeats the position in the old equinox and is skipped; band lines are
``<band>cm <code> <qA> <qB> <qC> <qD> <flux Jy> [uvmin uvmax]``; the
Dec may end in ``"`` or ``''``. Every other line
(titles, rulers, column headers) is ignored.

The calibrator is named by its J2000 designation (``J0834+5534``, truncated
HHMM+DDMM) with the list's own name (``0834+555``) as ``alt_name`` and the
ALT.NAME column (``3C286``) as ``other_name`` when it is a source name rather
than a survey tag (:data:`SURVEY_TAGS`). Entries without a 20 cm flux are left
out and reported: a missing L-band flux is never defaulted (the 1911+161
lesson). The spectral index is the two-point index between the 20 cm and 6 cm
fluxes; without a 6 cm flux it is :data:`DEFAULT_SPECTRAL_INDEX`, and the notes
say it is assumed. The 20 cm quality letters of the C and D configurations
become ``quality_c`` and ``quality_d``.
"""

from __future__ import annotations

import math
import re

from astropy.coordinates import Angle

from contimg.sky.catalog import Calibrator

#: Centre frequency of each VLA band, Hz (DOMAIN.md 4.1).
BAND_FREQ_HZ = {
    "90cm": 0.33e9,
    "20cm": 1.4e9,
    "6cm": 5.0e9,
    "3.7cm": 8.4e9,
    "2cm": 15e9,
    "1.3cm": 22e9,
    "0.7cm": 43e9,
}

#: Spectral index assumed when the list gives no 6 cm flux: the usual value for
#: optically thin synchrotron emission (the simulator's field population uses it
#: too). Such rows say "assumed" in their notes.
DEFAULT_SPECTRAL_INDEX = -0.7

#: ALT.NAME entries that name the survey a position comes from, not the source.
SURVEY_TAGS = frozenset({"JVAS", "CJ1", "CJ2", "VERA", "AW574", "GVAR", "USNO", "VSOP"})

_ENTRY = re.compile(
    r"^\s*(?P<name>\S+)\s+J2000\s+(?:(?P<code>[A-Z?])\s+)?"
    r"(?P<ra>\d{1,2}h\d{1,2}m[\d.]+s)\s+(?P<dec>[+-]?\d{1,2}d\d{1,2}'[\d.]+)(?:\"|'')?\s*(?P<rest>.*)$"
)
_B1950 = re.compile(r"^\s*\S+\s+B1950\s")
_BAND = re.compile(
    r"^\s*(?P<band>\d+(?:\.\d+)?cm)\s+(?P<code>[A-Z])\s+"
    r"(?P<q>[A-Z?]\s+[A-Z?]\s+[A-Z?]\s+[A-Z?])\s*(?P<flux>[\d.]+)?"
)
_POSREF = re.compile(r"^[A-Z][a-z]{2}\d{2}$")


def j2000_designation(ra_deg: float, dec_deg: float) -> str:
    """IAU-style ``JHHMM+DDMM`` name (truncated, not rounded) for a J2000 position in degrees."""
    ra_min = int(math.floor(ra_deg / 15.0 * 60.0 + 1e-9))
    sign = "-" if dec_deg < 0 else "+"
    dec_arcmin = int(math.floor(abs(dec_deg) * 60.0 + 1e-9))
    return f"J{ra_min // 60:02d}{ra_min % 60:02d}{sign}{dec_arcmin // 60:02d}{dec_arcmin % 60:02d}"


def _dec_deg(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    d, rest = text.lstrip("+-").split("d")
    m, s = rest.split("'")
    return sign * (float(d) + float(m) / 60.0 + float(s) / 3600.0)


def spectral_index(s_low_jy: float, s_high_jy: float, *, low_hz: float = BAND_FREQ_HZ["20cm"],
                   high_hz: float = BAND_FREQ_HZ["6cm"]) -> float:
    """Two-point spectral index alpha (S ~ nu**alpha) between two flux densities (Jy) at two frequencies (Hz)."""
    return math.log(s_high_jy / s_low_jy) / math.log(high_hz / low_hz)


def parse_vla_entries(text: str) -> list[dict]:
    """Every J2000 entry of a VLA list text, with its band lines.

    Returns
    -------
    list of dict
        ``vla_name``, ``code`` (position code), ``ra_deg``, ``dec_deg`` (J2000,
        degrees), ``other`` (the ALT.NAME token or None), ``flux`` (band -> Jy,
        bands with a flux only) and ``quality`` (band -> the four A B C D letters).
    """
    entries: list[dict] = []
    current: dict | None = None
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if m:
            rest = [tok for tok in m["rest"].split() if not _POSREF.match(tok)]
            current = {"vla_name": m["name"], "code": m["code"], "ra_deg": float(Angle(m["ra"]).to_value("deg")),
                       "dec_deg": _dec_deg(m["dec"]), "other": rest[0] if rest else None, "flux": {}, "quality": {}}
            entries.append(current)
            continue
        if _B1950.match(line) or current is None:
            continue
        b = _BAND.match(line)
        if b is None:
            continue
        current["quality"][b["band"]] = tuple(b["q"].split())
        if b["flux"] is not None:
            try:
                current["flux"][b["band"]] = float(b["flux"])
            except ValueError:  # a lone "." is not a flux
                pass
    return entries


def _calibrator(entry: dict, s20: float, source: str, default_alpha: float) -> Calibrator:
    """The Calibrator of one entry with a 20 cm flux ``s20`` (Jy)."""
    s6 = entry["flux"].get("6cm")
    notes = [f"VLA calibrator list {source}"]
    if s6 is not None and s6 > 0:
        alpha = spectral_index(s20, s6)
        notes.append(f"spectral index from 20cm {s20:g} Jy / 6cm {s6:g} Jy")
    else:
        alpha = default_alpha
        notes.append(f"spectral index {default_alpha:g} ASSUMED (no 6cm flux)")
    other = entry["other"]
    if other in SURVEY_TAGS:
        notes.append(f"position from {other}")
        other = None
    _qa, _qb, q_c, q_d = entry["quality"]["20cm"]
    return Calibrator(
        name=j2000_designation(entry["ra_deg"], entry["dec_deg"]),
        alt_name=entry["vla_name"],
        ra_deg=entry["ra_deg"],
        dec_deg=entry["dec_deg"],
        flux_jy=s20,
        spectral_index=alpha,
        position_code=entry["code"],
        notes="; ".join(notes),
        quality_c=q_c,
        quality_d=q_d,
        other_name=other,
    )


def parse_vla_calibrator_list(text: str, *, source: str = "<text>",
                              default_spectral_index: float = DEFAULT_SPECTRAL_INDEX,
                              ) -> tuple[list[Calibrator], list[tuple[str, str]]]:
    """Parse VLA calibrator list text.

    Parameters
    ----------
    text : str
        Contents of ``csource.txt`` (or an excerpt in the same layout).
    source : str
        Name used in notes and reasons.
    default_spectral_index : float
        Spectral index given to entries without a 6 cm flux (marked assumed in
        their notes).

    Returns
    -------
    calibrators : list of Calibrator
        Entries with a 20 cm flux, in the list's order.
    skipped : list of (name, reason)
        Entries left out (no 20 cm flux).
    """
    calibrators: list[Calibrator] = []
    skipped: list[tuple[str, str]] = []
    for e in parse_vla_entries(text):
        s20 = e["flux"].get("20cm")
        if s20 is None or not s20 > 0:
            bands = ", ".join(sorted(e["flux"])) or "none"
            skipped.append((e["vla_name"], f"no 20cm flux in {source} (bands with flux: {bands}); not defaulted"))
            continue
        calibrators.append(_calibrator(e, s20, source, default_spectral_index))
    return calibrators, skipped
