"""The K, B and G solves: one function each, CASA ``gaincal``/``bandpass`` in a child process.

Defaults follow the telescope team's recipe (``shared/seed``, DOMAIN.md 5.1) with
its three silent defects fixed (DOMAIN.md 8):

* every solve selects **every integration it is given** (by default the whole
  group, or the integrations around transit for the delay); nothing silently
  narrows the selection to the first 12.9 s field;
* the gains have an **amplitude** solve (once per group, after the per-integration
  phase solve), which sets the flux scale;
* each solve returns the ``spwmap`` its table needs at apply time, and the
  registry stores it with the table (identity unless SPWs were combined).

Each function returns a :class:`Solution`: the table, its type, how to apply it
and the exact parameters passed to CASA (recorded in the registry).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contimg.casa import run_casa_task
from contimg.errors import InvalidInputError


@dataclass(frozen=True)
class SolveOptions:
    """Solver parameters (the seed's defaults).

    Attributes
    ----------
    refant : str
        Reference antenna(s), CASA syntax (names: ``DSA-104``).
    field : str
        CASA field selection ('' = all).
    antenna : str
        CASA antenna selection for the solves ('' = all).
    uvrange : str
        CASA uvrange ('' = no cut).
    combine : str
        CASA ``combine`` for the bandpass and gain solves (default: none).
    delay_combine : str
        ``combine`` of the delay solve ('' = one delay per SPW).
    delay_integrations : int
        Integrations around transit used by the delay solve (0: all).
    bandpass_min_snr : float
    gain_min_snr : float
    delay_min_snr : float
    short_phase_solint : str or None
        Solution interval of the optional second, short phase solve (None: off).
    casa_timeout_s : float or None
        Kill a solve's CASA process after this many seconds (``CasaError(crashed=True)``).
    """

    refant: str
    field: str = ""
    antenna: str = ""
    uvrange: str = ""
    combine: str = ""
    delay_combine: str = ""
    delay_integrations: int = 8
    bandpass_min_snr: float = 5.0
    gain_min_snr: float = 3.0
    delay_min_snr: float = 3.0
    short_phase_solint: str | None = None
    casa_timeout_s: float | None = None


@dataclass(frozen=True)
class Solution:
    """One solved caltable and how to apply it.

    Attributes
    ----------
    path : pathlib.Path
    kind : str
        Registry type: ``K``, ``B``, ``GP`` (per-integration phase), ``GA``
        (per-group amplitude), ``2G`` (short phase).
    interp : str
        ``applycal`` interp for this table.
    spwmap : list of int
        ``applycal`` spwmap ([] = identity).
    gainfield : str
    task : str
        CASA task that produced it.
    params : dict
        Every parameter passed to the task.
    seconds : float
    """

    path: Path
    kind: str
    interp: str
    spwmap: list[int] = field(default_factory=list)
    gainfield: str = ""
    task: str = ""
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


#: ``applycal`` interpolation of each table type: K and B hold one solution for the group
#: (B linear across flagged channels); GP is per integration, linear in time; GA one per group.
APPLY_INTERP = {"K": "nearest", "B": "nearest,linearflag", "GP": "linear", "GA": "nearest", "2G": "linear"}


def _prior(tables) -> dict:
    """``gaintable``/``interp``/``spwmap`` of already-solved tables, for on-the-fly application."""
    tables = list(tables)
    return {
        "gaintable": [str(t.path) for t in tables],
        "interp": [t.interp for t in tables],
        "spwmap": [list(t.spwmap) for t in tables],
        "gainfield": [t.gainfield for t in tables],
    }


def _spwmap_for(combine: str, n_spw: int) -> list[int]:
    # a table solved with combine='spw' has one SPW: every SPW must be mapped to it
    # on apply (the telescope team lost exactly this map between solve and apply)
    return [0] * n_spw if "spw" in combine.split(",") else []


def _run(task: str, kind: str, table: Path, *, apply_interp: str, apply_spwmap, log_path,
         timeout: float | None = None, **params) -> Solution:
    table = Path(table)
    if table.exists():
        raise FileExistsError(f"{table} exists; remove it (or the whole set) to solve again")
    # CASA writes under a temporary name that is renamed when the solve succeeded: a crashed
    # or killed solve leaves no half-written table under the real name, and a rerun starts clean
    partial = table.with_name(f".{table.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    started = time.perf_counter()
    params = {"vis": str(params.pop("vis")), "caltable": str(partial), **params}
    run_casa_task(task, log_path=log_path, timeout=timeout, **params)
    if not partial.exists():
        raise InvalidInputError(f"{params['vis']}: {task} ({kind}) wrote no table: "
                                f"{_why_no_table(log_path, params)}; see {log_path}")
    partial.rename(table)
    params["caltable"] = str(table)
    return Solution(table, kind, apply_interp, apply_spwmap, "", task, params, time.perf_counter() - started)


def _why_no_table(log_path, params: dict) -> str:
    path = Path(log_path)
    tail = path.read_text(errors="replace")[-2_000_000:] if path.exists() else ""
    if "Found good" in tail and " in 0 solution intervals" in tail:
        return (f"no solution reached minsnr={params.get('minsnr')}: the calibrator is too faint for the "
                "SNR at this solution interval (or the data are too noisy or badly flagged)")
    return (f"no unflagged data passed the selection (field={params.get('field')!r}, "
            f"timerange={params.get('timerange')!r}, antenna={params.get('antenna')!r})")


def solve_delay(ms, table, opts: SolveOptions, *, n_spw: int, timerange: str = "", log_path) -> Solution:
    """Delay (K): ``gaincal gaintype='K' solint='inf'`` on the integrations around transit.

    Parameters
    ----------
    ms : path-like
    table : path-like
        Caltable to write (must not exist).
    opts : SolveOptions
    n_spw : int
        SPWs in the MS (for the apply spwmap when SPWs are combined).
    timerange : str
        CASA timerange of the integrations around transit ('' = all).
    log_path : path-like
        CASA log of the solve.
    """
    return _run("gaincal", "K", table, apply_interp=APPLY_INTERP["K"], log_path=log_path, timeout=opts.casa_timeout_s,
                apply_spwmap=_spwmap_for(opts.delay_combine, n_spw),
                vis=ms, field=opts.field, antenna=opts.antenna, uvrange=opts.uvrange, timerange=timerange,
                gaintype="K", solint="inf", combine=_join("scan", opts.delay_combine), refant=opts.refant,
                minsnr=opts.delay_min_snr, parang=False)


def solve_bandpass(ms, table, opts: SolveOptions, *, prior, n_spw: int, log_path) -> Solution:
    """Bandpass (B): amplitude and phase, ``solint='inf'`` over the group, normalised.

    Parameters
    ----------
    prior : sequence of Solution
        Tables applied on the fly (the delay).
    """
    return _run("bandpass", "B", table, apply_interp=APPLY_INTERP["B"], log_path=log_path, timeout=opts.casa_timeout_s,
                apply_spwmap=_spwmap_for(opts.combine, n_spw),
                vis=ms, field=opts.field, antenna=opts.antenna, uvrange=opts.uvrange,
                bandtype="B", solint="inf", combine=_join("scan", opts.combine), refant=opts.refant,
                minsnr=opts.bandpass_min_snr, solnorm=True, parang=False, **_prior(prior))


def solve_phase_gains(ms, table, opts: SolveOptions, *, prior, n_spw: int, log_path) -> Solution:
    """Gain phases (GP) on every integration, with the prior tables applied."""
    return _run("gaincal", "GP", table, apply_interp=APPLY_INTERP["GP"], log_path=log_path, timeout=opts.casa_timeout_s,
                apply_spwmap=_spwmap_for(opts.combine, n_spw),
                vis=ms, field=opts.field, antenna=opts.antenna, uvrange=opts.uvrange, gaintype="G",
                refant=opts.refant, minsnr=opts.gain_min_snr, parang=False,
                calmode="p", solint="int", combine=opts.combine, **_prior(prior))


def solve_amp_gains(ms, table, opts: SolveOptions, *, prior, n_spw: int, log_path) -> Solution:
    """Gain amplitudes (GA) once per group (``calmode='a'``, ``solint='inf'``): the flux scale.

    The telescope team's pipeline never solved it, so its bandpass ``solnorm``
    left the scale undetermined. ``ms`` is the group with the phase solutions
    applied (``prior``) or already removed (an averaged MS, :mod:`.averaging`).
    """
    return _run("gaincal", "GA", table, apply_interp=APPLY_INTERP["GA"], log_path=log_path, timeout=opts.casa_timeout_s,
                apply_spwmap=_spwmap_for(opts.combine, n_spw),
                vis=ms, field=opts.field, antenna=opts.antenna, uvrange=opts.uvrange, gaintype="G",
                refant=opts.refant, minsnr=opts.gain_min_snr, parang=False,
                calmode="a", solint="inf", combine=_join("scan", opts.combine), **_prior(prior))


def solve_gains(ms, phase_table, amp_table, opts: SolveOptions, *, prior, n_spw: int,
                log_path_phase, log_path_amp) -> list[Solution]:
    """Gains (G): phase on every integration, then amplitude once per group, both on ``ms``.

    Returns
    -------
    list of Solution
        ``[GP, GA]``.
    """
    phase = solve_phase_gains(ms, phase_table, opts, prior=prior, n_spw=n_spw, log_path=log_path_phase)
    amp = solve_amp_gains(ms, amp_table, opts, prior=list(prior) + [phase], n_spw=n_spw, log_path=log_path_amp)
    return [phase, amp]


def solve_short_phase(ms, table, opts: SolveOptions, *, prior, n_spw: int, log_path) -> Solution:
    """The optional second phase solve on ``opts.short_phase_solint`` with everything before applied."""
    if not opts.short_phase_solint:
        raise ValueError("short_phase_solint is not set")
    return _run("gaincal", "2G", table, apply_interp=APPLY_INTERP["2G"], log_path=log_path, timeout=opts.casa_timeout_s, apply_spwmap=_spwmap_for(opts.combine, n_spw),
                vis=ms, field=opts.field, antenna=opts.antenna, uvrange=opts.uvrange, gaintype="G",
                calmode="p", solint=opts.short_phase_solint, combine=opts.combine, refant=opts.refant,
                minsnr=opts.gain_min_snr, parang=False, **_prior(prior))


def _join(*parts: str) -> str:
    seen: list[str] = []
    for part in parts:
        for item in (p.strip() for p in part.split(",")):
            if item and item not in seen:
                seen.append(item)
    return ",".join(seen)
