"""Apply a registered caltable set to an MS, and check the result.

``applycal`` receives exactly the registered parameters of each table (path,
interp, spwmap, gainfield): nothing is re-derived at apply time, which is how
the telescope team lost the bandpass ``spwmap`` (DOMAIN.md 8.3).

Two gain sets that bracket a target group are interpolated linearly in time:
CASA interpolates between solutions *of one table*, so each pair of G tables of
the same type is first merged into one table (:func:`merge_gain_tables`), whose
rows are both sets' solutions.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contimg.casa import run_casa_task
from contimg.errors import InvalidInputError


@dataclass(frozen=True)
class ApplyTable:
    """One table to apply.

    Attributes
    ----------
    path : pathlib.Path
    kind : str
        Registry type (K, B, GP, GA, 2G).
    interp : str
    spwmap : list of int
    gainfield : str
    """

    path: Path
    kind: str
    interp: str = "linear"
    spwmap: list[int] = field(default_factory=list)
    gainfield: str = ""


def merge_gain_tables(tables, out) -> Path:
    """One caltable holding the solutions of several tables of the same type (time interpolation).

    Parameters
    ----------
    tables : sequence of path-like
        Tables of one type from different calibrator transits (same SPWs and antennas).
    out : path-like
        The merged table (overwritten).
    """
    from casacore.tables import table

    tables = [Path(t) for t in tables]
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    kinds = set()
    for t in tables:
        with table(str(t), ack=False) as tb:
            kinds.add(str(tb.getkeyword("VisCal")))
    if len(kinds) != 1:
        raise InvalidInputError(f"cannot merge caltables of different types {sorted(kinds)}: {tables}")
    shutil.copytree(tables[0], out)
    with table(str(out), ack=False, readonly=False) as dest:
        for t in tables[1:]:
            with table(str(t), ack=False) as src:
                src.copyrows(dest)
    return out


def apply_tables(ms, tables, *, log_path, work_dir=None, calwt: bool = False, engine: str = "fast") -> dict:
    """Apply the given tables into CORRECTED_DATA (numpy, or CASA ``applycal``).

    Parameters
    ----------
    ms : path-like
    tables : sequence of ApplyTable or sequence of sequences of ApplyTable
        In apply order. An inner sequence of several tables of one type is
        merged (:func:`merge_gain_tables`) into ``work_dir`` and interpolated in time.
    log_path : path-like
    work_dir : path-like, optional
        Where merged tables go (default: next to ``log_path``).
    calwt : bool
        Scale the weights by the gains (off: the weights stay the radiometer
        weights the converter wrote, which imaging's noise prediction uses).
        Only CASA does this.
    engine : {"fast", "casa"}
        ``fast`` (default): :func:`contimg.calibration.fastapply.apply_fast`, CASA's
        result (the tests compare them) at ~1/3 of its time; ``casa``: ``applycal``.

    Returns
    -------
    dict
        ``gaintable``, ``interp``, ``spwmap``, ``gainfield`` as passed, and ``seconds``.
    """
    started = time.perf_counter()
    work_dir = Path(work_dir) if work_dir else Path(log_path).parent
    flat: list[ApplyTable] = []
    for item in tables:
        if isinstance(item, ApplyTable):
            flat.append(item)
            continue
        group = list(item)
        if len(group) == 1:
            flat.append(group[0])
            continue
        merged = merge_gain_tables([t.path for t in group],
                                   work_dir / f"{Path(ms).name}.{group[0].kind}.merged")
        flat.append(ApplyTable(merged, group[0].kind, "linear", list(group[0].spwmap), group[0].gainfield))
    for t in flat:
        if not Path(t.path).exists():
            raise InvalidInputError(f"caltable {t.path} ({t.kind}) does not exist; was it archived or removed? "
                                    "Retire its set with `contimg caltables retire`.")
    if engine == "fast" and not calwt:
        from contimg.calibration.fastapply import apply_fast

        done = apply_fast(ms, flat)
        return {"gaintable": [str(t.path) for t in flat], "interp": [t.interp for t in flat],
                "spwmap": [list(t.spwmap) for t in flat], "gainfield": [t.gainfield for t in flat],
                "engine": "fast", **done}
    params = {
        "vis": str(ms),
        "gaintable": [str(t.path) for t in flat],
        "interp": [t.interp for t in flat],
        "spwmap": [list(t.spwmap) for t in flat],
        "gainfield": [t.gainfield for t in flat],
        "calwt": [calwt] * len(flat),
        "parang": False,
        "flagbackup": False,
        "applymode": "calflagstrict",
    }
    run_casa_task("applycal", log_path=log_path, **params)
    params["seconds"] = time.perf_counter() - started
    params["engine"] = "casa"
    return params


def check_calibrated(ms, *, chunk_rows: int = 16384) -> dict:
    """Compare CORRECTED_DATA and DATA with MODEL_DATA on the unflagged cross-correlations.

    Returns
    -------
    dict
        ``amp_ratio`` (``sum Re(CORRECTED conj(MODEL)) / sum |MODEL|^2``: the flux
        scale, unbiased by noise, weighted to where the model is bright), ``residual_rms_jy``
        (rms of CORRECTED - MODEL), ``raw_residual_rms_jy`` (rms of DATA - MODEL),
        ``scatter_reduction`` (their ratio), ``nonzero_fraction`` of CORRECTED_DATA.
    """
    from casacore.tables import table

    num, den, res2, raw2, n, nonzero, total = 0.0, 0.0, 0.0, 0.0, 0, 0, 0
    with table(str(ms), ack=False) as main:
        n_rows = main.nrows()
        for start in range(0, n_rows, chunk_rows):
            nr = min(chunk_rows, n_rows - start)
            a1, a2 = main.getcol("ANTENNA1", start, nr), main.getcol("ANTENNA2", start, nr)
            cross = a1 != a2
            flag = main.getcol("FLAG", start, nr)[cross]
            model = main.getcol("MODEL_DATA", start, nr)[cross]
            corr = main.getcol("CORRECTED_DATA", start, nr)[cross]
            data = main.getcol("DATA", start, nr)[cross]
            good = ~flag
            total += corr.size
            nonzero += int(np.count_nonzero(corr))
            if not good.any():
                continue
            m = model[good]
            num += float(np.sum((corr[good] * np.conj(m)).real))
            den += float(np.sum(np.abs(m) ** 2))
            res2 += float(np.sum(np.abs(corr[good] - m) ** 2))
            raw2 += float(np.sum(np.abs(data[good] - m) ** 2))
            n += m.size
    if n == 0:
        raise InvalidInputError(f"{ms}: every cross-correlation is flagged; nothing to check")
    amp_ratio = num / den if den > 0 else float("nan")
    res, raw = np.sqrt(res2 / n), np.sqrt(raw2 / n)
    return {"amp_ratio": amp_ratio, "residual_rms_jy": float(res), "raw_residual_rms_jy": float(raw),
            "scatter_reduction": float(raw / res) if res > 0 else float("inf"),
            "nonzero_fraction": nonzero / total if total else 0.0}
