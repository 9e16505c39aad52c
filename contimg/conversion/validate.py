"""The gate an MS passes before calibration may touch it.

CASA itself opens the MS (``msmetadata``), the structure is what the input
promised (SPWs, channels, antennas, rows, polarisations), MODEL_DATA and
CORRECTED_DATA hold an array in every row, and a short ``gaincal`` solve (two
integrations of the middle SPW) succeeds. Everything runs in a CASA child process; a failure raises
:class:`~contimg.errors.InvalidInputError` naming what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contimg.casa import run_in_casa
from contimg.errors import InvalidInputError


@dataclass(frozen=True)
class ExpectedShape:
    """What the converted MS must contain."""

    n_spw: int
    n_chan_per_spw: int
    n_antennas: int
    n_rows: int
    n_pol: int = 2


def _inspect(ms: str, refant: str, caltable: str) -> dict:
    """Child-side: read the structure with msmetadata and run a smoke gaincal."""
    import casatools
    from casatasks import gaincal

    md = casatools.msmetadata()
    md.open(ms)
    try:
        info = {
            "n_spw": int(md.nspw()),
            "n_chan": [int(md.nchan(i)) for i in range(md.nspw())],
            "n_antennas": int(md.nantennas()),
            "n_rows": int(md.nrows()),
            "n_pol": int(md.ncorrforpol(0)),
            "telescope": md.observatorynames()[0],
            "antenna_names": list(md.antennanames()),
            "chan_freqs_ascending": all(
                bool((md.chanfreqs(i)[1:] > md.chanfreqs(i)[:-1]).all()) for i in range(md.nspw())
            ),
        }
        ref_freqs = [float(md.chanfreqs(i)[0]) for i in range(md.nspw())]
        info["spws_ascending"] = ref_freqs == sorted(ref_freqs)
        smoke_spw = info["n_spw"] // 2
        times = sorted(md.timesforspws(smoke_spw))
    finally:
        md.close()
    tb = casatools.table()
    tb.open(ms)
    last = tb.nrows() - 1
    info["imaging_columns_preallocated"] = all(
        col in tb.colnames() and tb.iscelldefined(col, 0) and tb.iscelldefined(col, last)
        for col in ("MODEL_DATA", "CORRECTED_DATA"))
    tb.close()
    # A phase-only solve on two integrations of the middle SPW, one solution:
    # proves the solver can select, read the data, weights and flags, and solve,
    # while reading 1/200 of a group (the whole SPW took 14 s, the whole band
    # longer than the conversion). MODEL_DATA is zero until the calibration
    # stage predicts the sky, so the smoke solve uses a 1 Jy point model.
    middle = len(times) // 2
    window = times[max(middle - 1, 0)], times[middle]
    quanta = casatools.quanta()
    timerange = "~".join(quanta.time(quanta.quantity(t + pad, "s"), form=["ymd"], prec=9)[0]
                         for t, pad in zip(window, (-1.0, 1.0)))
    info["smoke_selection"] = {"spw": smoke_spw, "timerange": timerange}
    gaincal(vis=ms, caltable=caltable, solint="inf", combine="scan", gaintype="G", smodel=[1, 0, 0, 0],
            calmode="p", refant=refant, minsnr=0.0, spw=str(smoke_spw), timerange=timerange, uvrange="")
    tb.open(caltable)
    info["smoke_solutions"] = int(tb.nrows())
    tb.close()
    return info


def validate_ms(
    ms_path: str | Path,
    expected: ExpectedShape,
    *,
    refant: str,
    log_path: str | Path,
    workdir: str | Path,
) -> dict:
    """Check a freshly written MS; return what CASA reported.

    Parameters
    ----------
    ms_path : path
        The MS to check.
    expected : ExpectedShape
        The structure the input promised.
    refant : str
        Reference antenna *name* for the smoke solve (``DSA-NNN``).
    log_path : path
        CASA log of the check.
    workdir : path
        Where the throw-away smoke caltable is written.

    Raises
    ------
    InvalidInputError
        The MS does not open, has the wrong structure, or the smoke solve fails.
    """
    from contimg.errors import CasaError

    caltable = Path(workdir) / "validate_smoke.G"
    try:
        info = run_in_casa(_inspect, str(ms_path), refant, str(caltable), log_path=log_path)
    except CasaError as exc:
        raise InvalidInputError(f"{ms_path}: failed the CASA validation gate: {exc}") from exc
    problems = []
    if info["n_spw"] != expected.n_spw:
        problems.append(f"{info['n_spw']} spectral windows, expected {expected.n_spw}")
    if set(info["n_chan"]) != {expected.n_chan_per_spw}:
        problems.append(f"channels per SPW {sorted(set(info['n_chan']))}, expected {expected.n_chan_per_spw}")
    if info["n_antennas"] != expected.n_antennas:
        problems.append(f"{info['n_antennas']} antennas, expected {expected.n_antennas}")
    if info["n_rows"] != expected.n_rows:
        problems.append(f"{info['n_rows']} rows, expected {expected.n_rows}")
    if info["n_pol"] != expected.n_pol:
        problems.append(f"{info['n_pol']} polarisations, expected {expected.n_pol}")
    if not (info["chan_freqs_ascending"] and info["spws_ascending"]):
        problems.append("frequencies are not ascending across and within SPWs")
    if not info["imaging_columns_preallocated"]:
        problems.append("MODEL_DATA/CORRECTED_DATA missing or without an array in every row")
    if info["smoke_solutions"] == 0:
        problems.append("the smoke gaincal produced no solutions")
    if problems:
        raise InvalidInputError(f"{ms_path}: failed the validation gate: " + "; ".join(problems))
    return info
