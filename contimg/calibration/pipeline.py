"""Calibrate one calibrator group: flag, model, reference antenna, K, B, G, QA gate.

:func:`calibrate_ms` is what ``contimg calibrate`` and the ``calibrator_group``
flow call. It never registers anything (the registry is the catalog's, one layer
up) and never modifies DATA: flags, MODEL_DATA and the caltables are its only
writes. It returns a :class:`CalibrationResult` with everything the registry
records: the tables in apply order with their apply parameters, the reference
antenna ranking, the flagging report, the model, the QA metrics and the gate's
verdict.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.time import Time

from contimg import instrument
from contimg.calibration import flagging, qa
from contimg.calibration.caltables import read_caltable
from contimg.calibration.model import predict_model, read_geometry, sources_in_beam
from contimg.calibration.refant import rank_refants, rank_refants_from_sums
from contimg.calibration.selection import select_ids, table_names
from contimg.calibration.averaging import average_to_ms
from contimg.calibration.solve import APPLY_INTERP, SolveOptions, Solution, solve_amp_gains, solve_bandpass, solve_delay, \
    solve_gains, solve_phase_gains, solve_short_phase
from contimg.errors import InvalidInputError, NoCalibratorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationOptions:
    """Everything :func:`calibrate_ms` can be told (defaults: the seed's recipe).

    Attributes
    ----------
    calibrator : str, optional
        Calibrator name; default: the one the group's classification finds.
    refant : str, optional
        Reference antenna by name (``DSA-104``) or number; default: ranked from the data.
    field, antenna, uvrange, combine : str
        CASA selections for the solves ('' = all; ids, ``A~B`` ranges, lists, name
        globs, ``!`` to exclude: :mod:`contimg.calibration.selection`; ``uvrange``
        only with ``solver='casa'``; ``combine`` only where set).
    delay_combine : str
        ``combine`` of the delay solve. ``spw`` (default): one delay per antenna and
        pol across the 187.5 MHz band, 16x the lever arm of one subband (full size:
        0.03 ns rms against 1.9 ns per SPW, benchmarks/RESULTS.md); the registry
        records the ``spwmap`` that applies it to every SPW, and the bandpass takes
        what is left within each SPW. '' solves one delay per SPW.
    delay_integrations : int
        Integrations around transit for the delay solve.
    short_phase_solint : str, optional
        Solution interval of the optional second phase solve.
    edge_channels : int
        Channels flagged at each edge of every subband.
    rfi : bool
    rfi_backend : str
        ``auto``, ``aoflagger`` or ``casa``.
    model_min_flux_jy : float
        Other catalog sources enter the model above this peak apparent flux, Jy.
    bandpass_min_snr, gain_min_snr : float
    limits : qa.GateLimits
    casa_timeout_s : float, optional
        Kill a solve's CASA process after this long, s (a hung CASA is a crash).
    average_solves : bool
        Solve K, B and GA on a model-normalised time average of the group
        (:mod:`contimg.calibration.averaging`: one row per baseline, the same
        normal equations, ~20x less CASA time) instead of the full group.
    kb_tables : tuple of Solution
        Delay and bandpass tables in force (from a stronger calibrator): when
        given, only the gains are solved, with these applied, and ``refant``
        must be the one they were solved with.
    catalog : path-like, optional
        Calibrator catalog (default: the shipped one).
    field_sources : tuple of Source
        Field sources the catalog lacks, added to the model after the catalog's
        (:mod:`contimg.calibration.field_model` finds them in the group's own image).
    solver : {"fast", "casa"}
        ``fast`` (default): K, B and G solved in numpy on one read of the group and
        written as standard CASA tables (:mod:`contimg.calibration.fastsolve`, checked
        against CASA's solutions by the tests); ``casa``: CASA ``gaincal``/``bandpass``.
    memory_budget_gb : float, optional
        Peak memory the fast path aims at, GB (GiB); default: the
        ``calibration_memory_budget_gb`` setting; 0: no limit (every step in one
        piece). DATA is held whole (the flagging needs every baseline's full time
        and frequency plane) and becomes the solver's sums in place, with their
        weights: 3 GB on a full group, whatever the budget. The model, the normal
        equations and the StefCal problems are done in chunks that fit in what is
        left (:func:`contimg.calibration.fastsolve.work_bytes`); the solutions are
        the same for any budget.
    """

    calibrator: str | None = None
    refant: str | None = None
    field: str = ""
    antenna: str = ""
    uvrange: str = ""
    combine: str = ""
    delay_combine: str = "spw"
    delay_integrations: int = 8
    short_phase_solint: str | None = None
    edge_channels: int = 1
    rfi: bool = True
    rfi_backend: str = "auto"
    model_min_flux_jy: float = 0.1
    bandpass_min_snr: float = 5.0
    gain_min_snr: float = 3.0
    limits: qa.GateLimits = dc_field(default_factory=qa.GateLimits)
    casa_timeout_s: float | None = None
    average_solves: bool = True
    kb_tables: tuple = ()
    catalog: str | Path | None = None
    field_sources: tuple = ()
    solver: str = "fast"
    memory_budget_gb: float | None = None


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate_ms` did and produced.

    Attributes
    ----------
    ms : pathlib.Path
    calibrator : str
    transit_mjd : float
    mid_mjd : float
    refant : str
    refant_ranking : list of dict
        Best first (:class:`~contimg.calibration.refant.RefantScore` as dicts).
    solutions : list of Solution
        In apply order.
    flagging : dict
        :class:`~contimg.calibration.flagging.FlagReport` as a dict.
    model : dict
        The predicted sources and timing.
    metrics : dict
        Table type -> :func:`~contimg.calibration.qa.table_metrics`.
    reasons : list of str
        Why the QA gate rejected the set ([] = passed).
    timings : dict
        Seconds per step (wall).
    cpu_timings : dict
        CPU seconds per step (this process's threads and its finished children), for
        the steps that record it: on a shared machine the wall time says little alone.
    """

    ms: Path
    calibrator: str
    transit_mjd: float
    mid_mjd: float
    refant: str
    refant_ranking: list[dict]
    solutions: list[Solution]
    flagging: dict
    model: dict
    metrics: dict
    reasons: list[str]
    timings: dict
    cpu_timings: dict = dc_field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons


def table_prefix_for(ms) -> Path:
    """Caltable prefix of an MS: its path with the ``.ms`` extension removed (not ``rstrip``)."""
    from contimg.naming import ms_table_prefix

    return ms_table_prefix(ms)


def _refant_name(spec: str) -> str:
    spec = str(spec).strip()
    if spec.isdigit():
        # a bare number is an antenna number (station - 1), named for CASA so it is never
        # taken for an index or a station
        return instrument.antenna_name(int(spec))
    return spec


def find_group_calibrator(ms: Path, name: str | None, catalog=None):
    from contimg.sky.catalog import find_calibrator
    from contimg.sky.selection import classify_group

    if name:
        return find_calibrator(name, catalog=catalog)
    cls = classify_group(ms, catalog=catalog)
    if not cls.is_calibrator:
        raise NoCalibratorError(
            f"{ms}: no catalog calibrator transits this group inside the primary beam; it is a target group. "
            "Pass --calibrator NAME to calibrate on a named source anyway.")
    return cls.calibrator


def _transit_mjd(cal, geometry) -> float:
    from astropy.coordinates import SkyCoord

    from contimg.sky.transit import next_transit

    t_mid = Time(geometry.times_s[len(geometry.times_s) // 2] / 86400.0, format="mjd", scale="utc")
    coord = SkyCoord(cal.ra_deg * u.deg, cal.dec_deg * u.deg, frame="icrs")
    return float(next_transit(coord, t_mid - 0.5 * u.day).mjd)


def _transit_indices(times_s: np.ndarray, transit_mjd: float, n_integrations: int) -> np.ndarray:
    """Indices of the ``n_integrations`` integrations nearest transit (all if 0 or more than there are)."""
    if n_integrations <= 0 or n_integrations >= len(times_s):
        return np.arange(len(times_s))
    return np.sort(np.argsort(np.abs(times_s - transit_mjd * 86400.0))[:n_integrations])


def transit_timerange(times_s: np.ndarray, transit_mjd: float, n_integrations: int) -> str:
    """CASA timerange of the ``n_integrations`` integrations nearest transit ('' for all)."""
    if n_integrations <= 0 or n_integrations >= len(times_s):
        return ""
    nearest = _transit_indices(times_s, transit_mjd, n_integrations)
    dt = np.median(np.diff(times_s)) if len(times_s) > 1 else instrument.INTEGRATION_TIME_S

    def fmt(sec):
        return Time(sec / 86400.0, format="mjd", scale="utc").strftime("%Y/%m/%d/%H:%M:%S.%f")[:-3]

    return f"{fmt(times_s[nearest[0]] - dt / 2)}~{fmt(times_s[nearest[-1]] + dt / 2)}"


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its reaped children (AOFlagger workers, CASA)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _memory_budget_bytes(options: CalibrationOptions) -> float | None:
    """The fast path's memory budget, bytes (None: no limit)."""
    budget = options.memory_budget_gb
    if budget is None:
        from contimg.config import load_settings

        budget = load_settings().calibration_memory_budget_gb
    return None if budget is None or budget <= 0 else float(budget) * 2**30


#: Rows per chunk of DATA's read (200 MB on a full group, read straight into DATA's array while less
#: than DATA is held, far below the peak of the solves): 0.5-0.6 s for a full group's DATA from the page
#: cache, against 2.1 s for one ``getcol`` of the column and 0.9-1.1 s in chunks of 65536 rows.
READ_ROWS = 262144


def _read_data(ms: Path) -> np.ndarray:
    """The DATA column of ``ms``, (rows, channels, pols) complex64, read in row chunks into one array.

    ``getcol`` of the whole column holds it twice for a moment (casacore's array,
    then numpy's: 4 GB on a full group); each chunk goes straight into its rows.
    """
    from casacore.tables import table

    with table(str(ms), ack=False) as tab:
        n_rows = tab.nrows()
        shape = tab.getcell("DATA", 0).shape
        out = np.empty((n_rows,) + shape, dtype=np.complex64)
        step = READ_ROWS
        for start in range(0, n_rows, step):
            tab.getcolnp("DATA", out[start:start + step], start, min(step, n_rows - start))
    return out


def _solve_fast(ms, sums, opts: SolveOptions, options: CalibrationOptions, ranking, refant: str, transit: float,
                geometry, tables: dict, log_dir: Path, timings: dict, cpu: dict, creating,
                max_bytes: float | None = None) -> list[Solution]:
    from contimg.calibration import fastsolve

    ref_number = int(refant.split("-")[1]) - 1 if refant.startswith("DSA-") else None
    ref_order = ([ref_number] if ref_number is not None else []) + [r.antenna for r in ranking
                                                                    if r.antenna != ref_number]
    min_snr = {"K": opts.delay_min_snr, "B": opts.bandpass_min_snr, "GP": opts.gain_min_snr,
               "GA": opts.gain_min_snr}
    n_spw = geometry.chan_freq_hz.shape[0]
    kb = None
    if options.kb_tables:
        kt = next(s for s in options.kb_tables if s.kind == "K")
        bt = next(s for s in options.kb_tables if s.kind == "B")
        kb = fastsolve.jones_from_tables(kt.path, bt.path, sums.n_ant)
    sols = fastsolve.solve_all(sums, transit_indices=_transit_indices(geometry.times_s, transit,
                                                                      options.delay_integrations),
                               ref_order=ref_order, min_snr=min_snr, solve_kb=kb is None, kb=kb, timings=timings,
                               cpu_timings=cpu, max_bytes=max_bytes)
    t, c = time.perf_counter(), _cpu_s()
    created = creating.result()  # the empty tables, made by CASA while the group was flagged
    paths = fastsolve.write_caltables(ms, sols, {k: tables[k] for k in sols}, log_path=log_dir / "caltables.casa.log",
                                      timeout=options.casa_timeout_s, created=created)
    timings["write_tables"], cpu["write_tables"] = time.perf_counter() - t, _cpu_s() - c
    params = {"solver": "contimg.fastsolve (StefCal on model-normalised sums)", "refant": refant,
              "min_snr": min_snr, "delay_integrations": options.delay_integrations}
    # the fast delay is band-wide: one SPW, mapped onto every SPW
    spwmaps = {"K": [0] * n_spw}
    return [Solution(paths[k], k, APPLY_INTERP[k], spwmaps.get(k, []), "", "fastsolve",
                     dict(params, kind=k, vis=str(ms)), 0.0) for k in sols]


def _solve_casa(ms, opts: SolveOptions, options: CalibrationOptions, geometry, transit: float, tables: dict,
                logs: dict, prefix: Path, timings: dict) -> list[Solution]:
    """K, B, GP, GA with CASA ``gaincal``/``bandpass`` (``solint='inf'`` ones on model-normalised averages)."""
    n_spw = geometry.chan_freq_hz.shape[0]
    work = prefix.with_name(f".{prefix.name}.averaged")
    sums = None
    if options.average_solves:
        from contimg.calibration import fastsolve

        t = time.perf_counter()
        sums = fastsolve.read_group(ms)
        timings["read"] = time.perf_counter() - t
    if options.kb_tables:
        if not options.refant:
            raise ValueError("kb_tables need the refant they were solved with")
        prior = list(options.kb_tables)
        gp = solve_phase_gains(ms, tables["GP"], opts, prior=prior, n_spw=n_spw, log_path=logs["GP"])
        if not options.average_solves:
            return [gp, solve_amp_gains(ms, tables["GA"], opts, prior=prior + [gp], n_spw=n_spw,
                                        log_path=logs["GA"])]
        work.mkdir(exist_ok=True)
        t = time.perf_counter()
        average_to_ms(sums, ms, work / "GA.ms", remove_gains=read_caltable(gp.path))
        timings["average"] = time.perf_counter() - t
        ga = solve_amp_gains(work / "GA.ms", tables["GA"], opts, prior=prior, n_spw=n_spw, log_path=logs["GA"])
        shutil.rmtree(work, ignore_errors=True)
        return [gp, ga]
    if not options.average_solves:
        k = solve_delay(ms, tables["K"], opts, n_spw=n_spw, log_path=logs["K"],
                        timerange=transit_timerange(geometry.times_s, transit, options.delay_integrations))
        b = solve_bandpass(ms, tables["B"], opts, prior=[k], n_spw=n_spw, log_path=logs["B"])
        return [k, b] + solve_gains(ms, tables["GP"], tables["GA"], opts, prior=[k, b], n_spw=n_spw,
                                    log_path_phase=logs["GP"], log_path_amp=logs["GA"])
    work.mkdir(exist_ok=True)
    near = _transit_indices(geometry.times_s, transit, options.delay_integrations)
    t = time.perf_counter()
    average_to_ms(sums, ms, work / "K.ms", time_indices=near)
    average_to_ms(sums, ms, work / "B.ms")
    timings["average"] = time.perf_counter() - t
    k = solve_delay(work / "K.ms", tables["K"], opts, n_spw=n_spw, log_path=logs["K"])
    b = solve_bandpass(work / "B.ms", tables["B"], opts, prior=[k], n_spw=n_spw, log_path=logs["B"])
    gp = solve_phase_gains(ms, tables["GP"], opts, prior=[k, b], n_spw=n_spw, log_path=logs["GP"])
    t = time.perf_counter()
    average_to_ms(sums, ms, work / "GA.ms", remove_gains=read_caltable(gp.path))
    timings["average"] += time.perf_counter() - t
    ga = solve_amp_gains(work / "GA.ms", tables["GA"], opts, prior=[k, b], n_spw=n_spw, log_path=logs["GA"])
    shutil.rmtree(work, ignore_errors=True)
    return [k, b, gp, ga]


def calibrate_ms(ms, *, options: CalibrationOptions = CalibrationOptions(), table_prefix=None,
                 log_dir, qa_dir=None) -> CalibrationResult:
    """Flag, model, rank a reference antenna, solve K, B and G, and judge the set.

    Parameters
    ----------
    ms : path-like
        The calibrator group's MS.
    options : CalibrationOptions
    table_prefix : path-like, optional
        Caltables are ``<prefix>.K``, ``.B``, ``.GP``, ``.GA`` (default: the MS
        path without its extension).
    log_dir : path-like
        CASA logs of every step.
    qa_dir : path-like, optional
        Bandpass plots (none if omitted).

    Raises
    ------
    NoCalibratorError
        No calibrator transits this group (and none was named).
    InvalidInputError
        The MS is unreadable, fully flagged, or a solve found no data.
    CasaError
        A CASA step failed or crashed (its log is named).
    """
    if options.solver not in ("fast", "casa"):
        raise ValueError(f"solver must be 'fast' or 'casa', got {options.solver!r}")
    ms = Path(ms).resolve()
    log_dir = Path(log_dir).resolve()
    prefix = Path(table_prefix).resolve() if table_prefix else table_prefix_for(ms)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    geometry = read_geometry(ms)
    cal = find_group_calibrator(ms, options.calibrator, options.catalog)
    transit = _transit_mjd(cal, geometry)

    fast = options.solver == "fast"
    if fast and options.uvrange:
        raise ValueError("the fast solver has no uvrange selection; use solver='casa' for it")
    tables = {kind: prefix.with_name(f"{prefix.name}.{kind}") for kind in ("K", "B", "GP", "GA", "2G")}
    with ThreadPoolExecutor(1) as background:
        creating = None
        if fast:
            # the empty caltables depend on the MS only: CASA (~4 s to start) makes them
            # while this process reads and flags
            from contimg.calibration import fastsolve

            kinds = ("GP", "GA") if options.kb_tables else ("K", "B", "GP", "GA")
            for kind in kinds:  # before any work, not when the solutions are ready
                if tables[kind].exists():
                    raise FileExistsError(f"{tables[kind]} exists; remove it (or the whole set) to solve again")
            creating = background.submit(lambda: fastsolve.create_caltables(
                ms, kinds, tables, log_path=log_dir / "caltables.casa.log", timeout=options.casa_timeout_s) or kinds)
        try:
            return _calibrate(ms, options, prefix, log_dir, qa_dir, timings, cpu, geometry, cal, transit, tables,
                              creating)
        except BaseException:
            if creating is not None:  # the empty tables of a failed solve are no one's: leave no litter
                wait([creating])
                for kind in kinds:
                    shutil.rmtree(fastsolve.partial_path(tables[kind]), ignore_errors=True)
            raise


def _calibrate(ms, options, prefix, log_dir, qa_dir, timings, cpu, geometry, cal, transit, tables,
               creating) -> CalibrationResult:
    """:func:`calibrate_ms` after its checks (``creating``: the future of the fast solver's empty tables)."""
    fast = options.solver == "fast"
    data = None
    work = None
    pool = None
    try:
        if fast:
            # DATA is read once, here, for the flagging and the solves (2 GB on a full group;
            # reading it twice cost ~10 s); the model is predicted chunk by chunk into MODEL_DATA
            # and into the solver's sums, which are written over DATA's own buffer (issue 21:
            # DATA, the model and the sums side by side peaked at 7 GB)
            t, c = time.perf_counter(), _cpu_s()
            if flagging._resolve_backend(options.rfi, options.rfi_backend) == "aoflagger":
                pool = flagging.rfi_pool()  # started before DATA is read
            data = _read_data(ms)
            timings["read_data"], cpu["read_data"] = time.perf_counter() - t, _cpu_s() - c

        t, c = time.perf_counter(), _cpu_s()
        report = flagging.flag_for_calibration(ms, log_dir=log_dir, edge_channels=options.edge_channels,
                                               rfi=options.rfi, rfi_backend=options.rfi_backend, data=data, pool=pool)
        timings["flag"], cpu["flag"] = time.perf_counter() - t, _cpu_s() - c
        if fast:
            from contimg.calibration.fastsolve import release_memory

            release_memory()  # the flagging's temporaries, before the sums take their 1 GB
    finally:
        if pool is not None:
            pool.terminate()

    t, c = time.perf_counter(), _cpu_s()
    sources = sources_in_beam(cal, geometry, catalog=options.catalog,
                              min_apparent_flux_jy=options.model_min_flux_jy) + list(options.field_sources)
    sums = None
    if fast:
        # one read serves the ranking and every solve: the sums are built from DATA and
        # each chunk of the model as it is predicted ("read": that part of the time)
        from contimg.calibration import fastsolve

        builder = fastsolve.SumsBuilder(
            ms, antennas=select_ids(options.antenna, table_names(ms, "ANTENNA"), what="antenna"),
            fields=select_ids(options.field, table_names(ms, "FIELD"), what="field"), data=data, in_place=True)
        del data  # the builder's now: its buffer becomes the sums
        work = fastsolve.work_bytes(_memory_budget_bytes(options),
                                    fastsolve.group_bytes(builder.n_rows, *builder.shape))
        try:
            model = predict_model(ms, sources, on_chunk=builder.add,
                                  chunk_rows=fastsolve.row_chunk(work, *builder.shape))
            sums = builder.finish()
            fastsolve.release_memory()
        except BaseException:
            builder.close()
            raise
        c_read = builder.seconds  # wall seconds in the sums; their CPU counted with the model's
        timings["model"], cpu["model"] = time.perf_counter() - t - c_read, _cpu_s() - c
        t, c = time.perf_counter(), _cpu_s()
        fastsolve.check_ms_for_fast(sums, ms)
        timings["read"], cpu["read"] = time.perf_counter() - t + c_read, _cpu_s() - c
    else:
        model = predict_model(ms, sources)
        timings["model"], cpu["model"] = time.perf_counter() - t, _cpu_s() - c

    t, c = time.perf_counter(), _cpu_s()
    if fast:
        ranking = rank_refants_from_sums(sums)
    else:
        ranking = rank_refants(ms)
    refant = _refant_name(options.refant) if options.refant else ranking[0].name
    if options.refant and refant not in {r.name for r in ranking}:
        raise InvalidInputError(f"{ms}: reference antenna {refant} has no unflagged data; "
                                f"the best ranked are {', '.join(r.name for r in ranking[:5])}")
    timings["refant"], cpu["refant"] = time.perf_counter() - t, _cpu_s() - c

    opts = SolveOptions(refant=refant, field=options.field, antenna=options.antenna, uvrange=options.uvrange,
                        combine=options.combine, delay_combine=options.delay_combine,
                        delay_integrations=options.delay_integrations,
                        bandpass_min_snr=options.bandpass_min_snr, gain_min_snr=options.gain_min_snr,
                        short_phase_solint=options.short_phase_solint, casa_timeout_s=options.casa_timeout_s)
    n_spw = geometry.chan_freq_hz.shape[0]
    logs = {kind: log_dir / f"solve_{kind}.casa.log" for kind in tables}
    if options.solver == "fast":
        solutions = _solve_fast(ms, sums, opts, options, ranking, refant, transit, geometry, tables, log_dir, timings,
                                cpu, creating, max_bytes=work)
    else:
        solutions = _solve_casa(ms, opts, options, geometry, transit, tables, logs, prefix, timings)
    if options.short_phase_solint:
        solutions.append(solve_short_phase(ms, tables["2G"], opts, prior=list(options.kb_tables) + solutions, n_spw=n_spw,
                                           log_path=logs["2G"]))
    for s in solutions:
        if s.seconds:
            timings[f"solve_{s.kind}"] = s.seconds

    best = max(r.unflagged_fraction for r in ranking)
    with_data = [r.antenna for r in ranking if r.unflagged_fraction > 0.5 * best]
    metrics = {s.kind: qa.table_metrics(read_caltable(s.path), antennas_with_data=with_data) for s in solutions}
    reasons = qa.qa_gate(metrics, options.limits)
    bandpass = next((s for s in solutions if s.kind == "B"), None)
    if qa_dir is not None and bandpass is not None:
        qa.plot_bandpass(bandpass.path, Path(qa_dir) / f"{prefix.name}.B.png")
    return CalibrationResult(ms, cal.name, transit, float(np.mean(geometry.times_s) / 86400.0), refant,
                             [r.to_dict() for r in ranking], solutions, report.to_dict(), model, metrics,
                             reasons, timings, cpu)
