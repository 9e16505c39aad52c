"""Build the shipped calibrator catalog from the NRAO VLA calibrator list.

``python -m contimg.sky.catalog_build <vla_calibrators.txt> <calibrators_known.csv> [out.parquet]``
rewrites ``contimg/data/calibrators.parquet`` (committed) from
``shared/dsa110/vla_calibrators.txt`` (the NRAO list, DOMAIN.md 4.1) and
``shared/dsa110/calibrators_known.csv`` (every calibrator the old repository
mentions, with its conflicts). The rules, also written into the Parquet metadata
(``rules``):

* Every VLA entry with a 20 cm flux is a row, named by its J2000 designation,
  with the 20 cm flux, the 20/6 cm spectral index (or
  :data:`~contimg.sky.vla_list.DEFAULT_SPECTRAL_INDEX`, marked assumed in the
  notes) and the 20 cm C and D configuration quality letters. Entries without a
  20 cm flux are left out (counted in ``vla_skipped_no_20cm``), never defaulted.
* A repo-known row is kept only where the VLA list lacks the source: it is the
  same source when a name matches (name, alternative or other name, a leading J
  ignored: ``0834+555`` = ``J0834+555``, ``3C286`` = ``J1331+3030``) or when it
  lies within :data:`MATCH_RADIUS_ARCSEC` of a VLA position. The VLA values win;
  the repo's differing flux or position is recorded in that VLA row's notes.
* Repo-known rows without a position or a 1.4 GHz flux, and synthetic sources
  (``DSA_CAL``, the old simulator's 25 Jy source at Dec 54.6 that would win every
  selection), are left out.

Rows left out of the known list are in the metadata (``dropped``, a JSON list of
``{name, ra_deg, reason}``), with the source file name, its sha256, the counts
and the build date.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
from pathlib import Path

from contimg.sky.catalog import Calibrator, name_key, packaged_catalog_path, write_parquet
from contimg.sky.vla_list import DEFAULT_SPECTRAL_INDEX, parse_vla_calibrator_list

#: A repo-known row within this distance of a VLA position is that VLA source,
#: arcsec. The repo's good positions agree with the VLA list to < 1 arcsec; its
#: wrong ones are off by 0.15 deg or more, and are caught by name instead.
MATCH_RADIUS_ARCSEC = 5.0

#: Repo-known rows that are not real sources, with the reason.
SYNTHETIC = {"DSA_CAL": "synthetic simulator source, not a real calibrator"}

#: The build rules, as stored in the Parquet metadata.
RULES = (
    "rows: every VLA list entry with a 20 cm flux; entries without one are skipped, never defaulted",
    "flux_1p4ghz_jy: the VLA 20 cm flux",
    "spectral_index: ln(S6/S20)/ln(5.0/1.4) from the 6 cm and 20 cm fluxes; "
    f"{DEFAULT_SPECTRAL_INDEX} assumed (said in notes) without a 6 cm flux",
    "quality_c, quality_d: the VLA 20 cm quality letters of configurations C and D",
    f"known list: a row is kept only if no VLA entry matches it by name variant or within "
    f"{MATCH_RADIUS_ARCSEC:g} arcsec; rows without position or 1.4 GHz flux and synthetic rows are dropped",
)


def _sep_arcsec(ra1, dec1, ra2, dec2) -> float:
    """Great-circle distance between two positions given in degrees, arcsec (haversine)."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    hav = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(min(1.0, hav)))) * 3600.0


def _float_or_none(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def _match_vla(row: dict, vla: list[Calibrator], by_name: dict[str, int]) -> int | None:
    """Index of the VLA calibrator that is this repo-known row, or None."""
    for name in (row["name"], row["alt_name"]):
        if name and name_key(name) in by_name:
            return by_name[name_key(name)]
    ra, dec = _float_or_none(row["ra_deg"]), _float_or_none(row["dec_deg"])
    if ra is None or dec is None:
        return None
    # the list holds ~1000 rows: a linear scan is fast enough for a build script
    for i, c in enumerate(vla):
        if abs(c.dec_deg - dec) * 3600.0 <= MATCH_RADIUS_ARCSEC and \
                _sep_arcsec(ra, dec, c.ra_deg, c.dec_deg) <= MATCH_RADIUS_ARCSEC:
            return i
    return None


def _repo_note(row: dict, cal: Calibrator) -> str:
    """What the repo said about a source that the VLA list has, for that row's notes."""
    parts = [f"repo-known as {row['name'].strip()} ({row['repo_file'].strip()})"]
    ra, dec = _float_or_none(row["ra_deg"]), _float_or_none(row["dec_deg"])
    if ra is not None and dec is not None:
        off = _sep_arcsec(ra, dec, cal.ra_deg, cal.dec_deg)
        if off > MATCH_RADIUS_ARCSEC:
            parts.append(f"at {ra}, {dec} ({off / 3600.0:.2f} deg from the VLA position)")
    flux = _float_or_none(row["flux_1p4ghz_jy"])
    if flux is not None and not math.isclose(flux, cal.flux_jy, rel_tol=1e-3):
        parts.append(f"with {flux:g} Jy at 1.4 GHz")
    return " ".join(parts) + "; VLA values used"


def _known_calibrator(row: dict) -> Calibrator:
    """A repo-known row the VLA list lacks (position and flux present)."""
    note = f"{row['notes'].strip()} (from {row['repo_file'].strip()}); spectral index " \
           f"{DEFAULT_SPECTRAL_INDEX:g} ASSUMED; not in the VLA list"
    return Calibrator(name=row["name"].strip(), alt_name=row["alt_name"].strip() or None,
                      ra_deg=float(row["ra_deg"]), dec_deg=float(row["dec_deg"]),
                      flux_jy=float(row["flux_1p4ghz_jy"]), spectral_index=DEFAULT_SPECTRAL_INDEX,
                      notes=note)


def _drop_reason(row: dict) -> str | None:
    """Why a repo-known row the VLA list lacks is left out, or None to keep it."""
    name = row["name"].strip()
    if name in SYNTHETIC:
        return SYNTHETIC[name]
    if _float_or_none(row["ra_deg"]) is None or _float_or_none(row["dec_deg"]) is None:
        return "no position in the repository; " + (row.get("notes") or "").strip()
    if _float_or_none(row["flux_1p4ghz_jy"]) is None:
        return "no 1.4 GHz flux; never defaulted"
    return None


def merge_known(vla: list[Calibrator], known_rows: list[dict]) -> tuple[list[Calibrator], list[Calibrator], list[dict]]:
    """Merge repo-known rows into the VLA calibrators.

    Parameters
    ----------
    vla : list of Calibrator
        From :func:`~contimg.sky.vla_list.parse_vla_calibrator_list`.
    known_rows : list of dict
        Rows of ``calibrators_known.csv``.

    Returns
    -------
    vla : list of Calibrator
        The VLA calibrators, with what the repo said about them in their notes
        (and its name as ``other_name`` where they had none and it is new).
    kept : list of Calibrator
        Repo-known calibrators the VLA list lacks.
    dropped : list of dict
        ``{"name", "ra_deg", "reason"}`` for every known row left out.
    """
    vla = list(vla)
    by_name = {name_key(n): i for i, c in enumerate(vla) for n in (c.name, c.alt_name, c.other_name) if n}
    kept: list[Calibrator] = []
    dropped: list[dict] = []
    for row in known_rows:
        name, ra_text = row["name"].strip(), row["ra_deg"].strip() or None
        i = _match_vla(row, vla, by_name)
        if i is not None:
            cal = vla[i]
            other = cal.other_name or (name if not cal.matches(name) else None)
            vla[i] = dataclasses.replace(cal, notes=f"{cal.notes}; {_repo_note(row, cal)}", other_name=other)
            by_name.setdefault(name_key(name), i)
            dropped.append({"name": name, "ra_deg": ra_text, "reason": f"in the VLA list as {cal.name}"})
            continue
        reason = _drop_reason(row)
        if reason is None:
            kept.append(_known_calibrator(row))
        else:
            dropped.append({"name": name, "ra_deg": ra_text, "reason": reason})
    return vla, kept, dropped


def build_catalog(vla_path, known_csv_path) -> tuple[list[Calibrator], dict]:
    """The shipped catalog's rows and their provenance.

    Parameters
    ----------
    vla_path : path
        ``shared/dsa110/vla_calibrators.txt``.
    known_csv_path : path
        ``shared/dsa110/calibrators_known.csv``.

    Returns
    -------
    calibrators : list of Calibrator
        VLA rows in the list's order (by RA), then the kept repo-known rows.
    provenance : dict
        Counts, the dropped known rows and the skipped VLA entries (see
        :func:`provenance_metadata`).
    """
    vla_path = Path(vla_path)
    cals, skipped = parse_vla_calibrator_list(vla_path.read_text(errors="replace"), source=vla_path.name)
    with open(known_csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cals, kept, dropped = merge_known(cals, rows)
    prov = {"n_vla": len(cals), "n_known_kept": len(kept), "vla_skipped_no_20cm": len(skipped),
            "known_rows": len(rows), "dropped": dropped}
    return cals + kept, prov


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance_metadata(vla_path, known_csv_path, prov: dict, *, build_date: str | None = None) -> dict[str, str]:
    """The Parquet schema metadata of a built catalog (all values strings)."""
    date = build_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    return {
        "source": Path(vla_path).name,
        "source_sha256": _sha256(vla_path),
        "source_description": "NRAO VLA calibrator list (csource.txt layout), shared/dsa110/vla_calibrators.txt",
        "known_source": Path(known_csv_path).name,
        "known_source_sha256": _sha256(known_csv_path),
        "count": str(prov["n_vla"] + prov["n_known_kept"]),
        "count_vla": str(prov["n_vla"]),
        "count_known_kept": str(prov["n_known_kept"]),
        "vla_skipped_no_20cm": str(prov["vla_skipped_no_20cm"]),
        "build_date": date,
        "rules": json.dumps(list(RULES)),
        "default_spectral_index": str(DEFAULT_SPECTRAL_INDEX),
        "flux_reference_hz": "1.4e9",
        "dropped": json.dumps(prov["dropped"]),
    }


def write_packaged_catalog(vla_path, known_csv_path, out_path=None, *, build_date: str | None = None) -> Path:
    """Build the catalog and write it as Parquet (default: the shipped file).

    Parameters
    ----------
    vla_path, known_csv_path : path
        As in :func:`build_catalog`.
    out_path : path, optional
        Default: ``contimg/data/calibrators.parquet``.
    build_date : str, optional
        ISO date recorded as ``build_date`` (default: today, UTC).
    """
    cals, prov = build_catalog(vla_path, known_csv_path)
    meta = provenance_metadata(vla_path, known_csv_path, prov, build_date=build_date)
    return write_parquet(cals, out_path or packaged_catalog_path(), metadata=meta)


def catalog_metadata(path=None) -> dict[str, str]:
    """The provenance metadata of a catalog built here (default: the shipped one)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path or packaged_catalog_path()).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def dropped_rows(path=None) -> list[dict]:
    """Known-list rows left out of a catalog built here, with reasons (from the Parquet metadata)."""
    return json.loads(catalog_metadata(path).get("dropped", "[]"))


if __name__ == "__main__":  # pragma: no cover - a build script
    if len(sys.argv) < 3:
        sys.exit("usage: python -m contimg.sky.catalog_build VLA_LIST KNOWN_CSV [OUT.parquet]")
    out = write_packaged_catalog(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    print(f"wrote {out}")
