"""Build the shipped calibrator catalog from ``shared/dsa110/calibrators_known.csv``.

``python -m contimg.sky.catalog_build <calibrators_known.csv> [out.parquet]``
rewrites ``contimg/data/calibrators.parquet`` (committed). The CSV gathers every
calibrator the old repository mentions, with its conflicts; the decisions below
resolve them, each with its reason, and rows left out are recorded in the Parquet
schema metadata (``dropped``, JSON list of ``{name, ra_deg, reason}``):

* 0834+555: the VLA-list position 128.7287, +55.5725 (08h34m54.9s +55d34m21s) is
  kept, named ``J0834+5534`` with ``0834+555`` as the other name. The 128.5813
  row (RA 0.15 deg off) and the 129.4843 row (wrong coordinates in an ops script)
  are dropped. The repository gives 2.3, 2.5 and 5.0 Jy; 5.0 Jy is used (see
  :data:`J0834_FLUX_JY`) and the doubt is written into ``notes``.
* Rows without a position (1911+161, 0702+445) are dropped: no position, and no
  20 cm flux is ever defaulted.
* ``DSA_CAL`` is dropped: it is a synthetic source of the old simulator, not on
  the sky; shipping it would make a fictitious 25 Jy calibrator at Dec 54.6 win
  every selection at the production declination.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from contimg.sky.catalog import Calibrator, packaged_catalog_path, write_parquet

#: Flux density adopted for J0834+5534 at 1.4 GHz, Jy. UNCERTAIN: the old repo
#: says 2.3 Jy (calibration/skymodels.py example), 2.5 Jy (an archived analysis
#: doc) and 5.0 Jy (pointing/monitor.py DEFAULT_CALIBRATORS). 5.0 is the value in
#: operational code ("code over docs") and the closest to the several-Jy
#: (~8 Jy, unverified) L-band flux of 4C+55.16 quoted outside the repo; 2.3/2.5 Jy
#: may be apparent (primary-beam attenuated) values. Replace with the VLA-list
#: 20 cm flux when the full list is dropped in.
J0834_FLUX_JY = 5.0

#: Rows dropped on purpose, keyed by (name, ra_deg as written in the CSV).
_DROP = {
    ("J0834+555", "128.5813"): "RA 0.15 deg from the VLA position of 0834+555; the VLA-position row is kept",
    ("0834+555", "129.4843"): "wrong coordinates (08h37m56s +55d32m31s) in an ops script; the VLA-position row is kept",
    ("DSA_CAL", "180.0"): "synthetic simulator source, not a real calibrator",
}

#: Rows kept with corrections, keyed like ``_DROP``.
_RESOLVE = {
    ("0834+555", "128.7287"): {
        "name": "J0834+5534",
        "alt_name": "0834+555",
        "flux_jy": J0834_FLUX_JY,
        "notes": (
            "VLA-list J2000 position 08h34m54.9s +55d34m21s (4C+55.16), from "
            "test_absurd_0834_pipeline.py and docs/guides/calibration.md. FLUX UNCERTAIN: "
            "repo values conflict, 2.3 Jy (calibration/skymodels.py example), 2.5 Jy "
            "(calibrator-detection-investigation.md), 5.0 Jy (pointing/monitor.py); 5.0 Jy "
            "adopted (operational code; outside sources suggest several Jy, ~8 Jy, unverified). "
            "Replace with the VLA-list 20cm flux."
        ),
    },
}


def build_from_known_csv(csv_path) -> tuple[list[Calibrator], list[dict]]:
    """Resolve ``calibrators_known.csv`` into calibrators and dropped rows.

    Parameters
    ----------
    csv_path : path
        ``shared/dsa110/calibrators_known.csv``.

    Returns
    -------
    calibrators : list of Calibrator
    dropped : list of dict
        ``{"name", "ra_deg", "reason"}`` for every row left out.
    """
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept: list[Calibrator] = []
    dropped: list[dict] = []
    for row in rows:
        key = (row["name"].strip(), row["ra_deg"].strip())
        if key in _DROP:
            dropped.append({"name": key[0], "ra_deg": key[1], "reason": _DROP[key]})
            continue
        if not row["ra_deg"].strip() or not row["dec_deg"].strip():
            reason = "no position in the repository; " + (row.get("notes") or "").strip()
            dropped.append({"name": key[0], "ra_deg": None, "reason": reason})
            continue
        fix = _RESOLVE.get(key, {})
        flux_text = row["flux_1p4ghz_jy"].strip()
        flux = fix.get("flux_jy", float(flux_text) if flux_text else None)
        if flux is None:
            dropped.append({"name": key[0], "ra_deg": key[1], "reason": "no 1.4 GHz flux; never defaulted"})
            continue
        notes = fix.get("notes") or f"{row['notes'].strip()} (from {row['repo_file'].strip()})"
        kept.append(
            Calibrator(
                name=fix.get("name", key[0]),
                alt_name=fix.get("alt_name", row["alt_name"].strip() or None),
                ra_deg=float(row["ra_deg"]),
                dec_deg=float(row["dec_deg"]),
                flux_jy=float(flux),
                spectral_index=None,
                position_code=None,
                notes=notes,
            )
        )
    return kept, dropped


def write_packaged_catalog(csv_path, out_path=None) -> Path:
    """Build from the CSV and write the Parquet file (default: the shipped one)."""
    kept, dropped = build_from_known_csv(csv_path)
    digest = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
    meta = {
        "source": "shared/dsa110/calibrators_known.csv",
        "source_sha256": digest,
        "dropped": json.dumps(dropped),
        "flux_reference_hz": "1.4e9",
    }
    return write_parquet(kept, out_path or packaged_catalog_path(), metadata=meta)


def dropped_rows(path=None) -> list[dict]:
    """Rows left out of a catalog built here, with reasons (from the Parquet metadata)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path or packaged_catalog_path()).metadata or {}
    return json.loads(meta.get(b"dropped", b"[]"))


if __name__ == "__main__":  # pragma: no cover - a build script
    out = write_packaged_catalog(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(f"wrote {out}")
