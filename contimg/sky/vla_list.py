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
HHMM+DDMM) with the list's own name (``0834+555``) as ``alt_name``. Entries
without a 20 cm flux are left out and reported: a missing L-band flux is never
defaulted (the 1911+161 lesson). The spectral index, when both 20 cm and 6 cm
fluxes are given, is the two-point index between them.
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


def parse_vla_calibrator_list(text: str, *, source: str = "<text>") -> tuple[list[Calibrator], list[tuple[str, str]]]:
    """Parse VLA calibrator list text.

    Parameters
    ----------
    text : str
        Contents of ``csource.txt`` (or an excerpt in the same layout).
    source : str
        Name used in notes and reasons.

    Returns
    -------
    calibrators : list of Calibrator
        Entries with a 20 cm flux.
    skipped : list of (name, reason)
        Entries left out (no 20 cm flux).
    """
    entries: list[dict] = []
    current: dict | None = None
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if m:
            rest = [tok for tok in m["rest"].split() if not _POSREF.match(tok)]
            current = {
                "vla_name": m["name"],
                "code": m["code"],
                "ra_deg": float(Angle(m["ra"]).to_value("deg")),
                "dec_deg": _dec_deg(m["dec"]),
                "other": rest[0] if rest else None,
                "flux": {},
            }
            entries.append(current)
            continue
        if _B1950.match(line) or current is None:
            continue
        b = _BAND.match(line)
        if b and b["flux"] is not None:
            try:
                current["flux"][b["band"]] = float(b["flux"])
            except ValueError:
                pass

    calibrators: list[Calibrator] = []
    skipped: list[tuple[str, str]] = []
    for e in entries:
        s20 = e["flux"].get("20cm")
        if s20 is None or not s20 > 0:
            bands = ", ".join(sorted(e["flux"])) or "none"
            skipped.append((e["vla_name"], f"no 20cm flux in {source} (bands with flux: {bands}); not defaulted"))
            continue
        alpha = None
        notes = f"VLA calibrator list {source}"
        s6 = e["flux"].get("6cm")
        if s6 is not None and s6 > 0:
            alpha = math.log(s6 / s20) / math.log(BAND_FREQ_HZ["6cm"] / BAND_FREQ_HZ["20cm"])
            notes += "; spectral index from 20cm/6cm fluxes"
        if e["other"]:
            notes += f"; also {e['other']}"
        calibrators.append(
            Calibrator(
                name=j2000_designation(e["ra_deg"], e["dec_deg"]),
                alt_name=e["vla_name"],
                ra_deg=e["ra_deg"],
                dec_deg=e["dec_deg"],
                flux_jy=s20,
                spectral_index=alpha,
                position_code=e["code"],
                notes=notes,
            )
        )
    return calibrators, skipped
