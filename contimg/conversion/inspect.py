"""Read back what a converted MS contains (for recovery and reporting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from casacore.tables import table, taql


def ms_summary(ms_path: str | Path) -> dict:
    """Time range, phase centre and shape of an MS.

    Returns
    -------
    dict
        ``start_mjd``/``mid_mjd``/``end_mjd`` (MJD days, integration edges),
        ``phase_centre_ra_deg``/``phase_centre_dec_deg`` (first field's phase
        centre, ICRS degrees; not the pointing declination, which is apparent),
        ``n_spw``, ``n_rows``, ``n_fields``.
    """
    path = str(ms_path)
    with table(path, ack=False) as ms:
        t = taql("select gmin(TIME - INTERVAL/2) as t0, gmax(TIME + INTERVAL/2) as t1 from $ms")
        t0, t1 = float(t.getcol("t0")[0]), float(t.getcol("t1")[0])
        n_rows = ms.nrows()
    with table(f"{path}/FIELD", ack=False) as field:
        direction = field.getcol("PHASE_DIR")[0, 0]
        n_fields = field.nrows()
    with table(f"{path}/SPECTRAL_WINDOW", ack=False) as spw:
        n_spw = spw.nrows()
    return {
        "start_mjd": t0 / 86400.0,
        "mid_mjd": 0.5 * (t0 + t1) / 86400.0,
        "end_mjd": t1 / 86400.0,
        "phase_centre_ra_deg": float(np.degrees(direction[0]) % 360.0),
        "phase_centre_dec_deg": float(np.degrees(direction[1])),
        "n_spw": n_spw,
        "n_rows": n_rows,
        "n_fields": n_fields,
    }
