"""Simulate one DSA-110 group: 16 subband UVH5 files plus the truth sidecar.

:func:`simulate_group` plans the group once (times, LSTs, sky geometry, instrument
parameters, bad antennas, RFI, timestamp jitter), then computes and writes the
subbands one after another, or in a small pool of spawned processes for large
groups (one subband in memory per worker: ~0.4 GB at full size).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Sequence

import astropy.units as u
import h5py
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time

from contimg import instrument, naming
from contimg.sky.units import as_time
from contimg.simulate import corruptions as corr_mod
from contimg.simulate import layout, sky as sky_mod, truth as truth_mod
from contimg.simulate.corruptions import Corruptions
from contimg.simulate.scales import scale_preset
from contimg.simulate.sky import FieldOptions, Source
from contimg.simulate.variables import VariableOptions, truth_record as _variables_truth
from contimg.simulate.visibilities import apparent_amplitudes, predict_sky, source_geometry

DEFAULT_POINTING_DEC_DEG = 54.5734
_JD_UNIX_EPOCH = 2440587.5


@dataclass(frozen=True)
class SimulatedGroup:
    """What :func:`simulate_group` wrote.

    Attributes
    ----------
    group_id : str
        ``YYYY-MM-DDTHH:MM:SS`` of the group start (sb00's file name).
    paths : list of pathlib.Path
        Subband files in subband order.
    truth_path : pathlib.Path
        The JSON truth sidecar.
    subbands : tuple of int
        Subband numbers written, same order as ``paths``.
    """

    group_id: str
    paths: list[Path]
    truth_path: Path
    subbands: tuple[int, ...] = field(default_factory=tuple)

    def truth(self) -> dict:
        """The loaded truth sidecar."""
        return truth_mod.load_truth(self.truth_path)


def group_cadence_s(n_times: int = instrument.INTEGRATIONS_PER_FILE) -> int:
    """Seconds between consecutive simulated group starts (whole seconds >= the group length)."""
    return int(math.ceil(n_times * instrument.INTEGRATION_TIME_S))


def _floor_second(t: Time) -> datetime:
    dt = t.utc.to_datetime()
    return dt.replace(microsecond=0)


def transit_start_time(ra_deg: float, date, *, dec_deg: float = 0.0,
                       n_times: int = instrument.INTEGRATIONS_PER_FILE) -> Time:
    """Start (whole UTC second) of a group whose middle is the source's transit.

    Parameters
    ----------
    ra_deg, dec_deg : float
        ICRS position of the source, degrees (the transit time depends on Dec
        only through aberration and nutation, at the 0.1 s level).
    date : astropy.time.Time, str or datetime
        The first upper transit at or after this time is used.
    n_times : int
        Integrations per group.

    Returns
    -------
    astropy.time.Time
        ``floor(transit - n_times * tau / 2)`` to the second, UTC.
    """
    from contimg.sky.transit import next_transit

    coord = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    transit = next_transit(coord, as_time(date, "date"))
    start = transit - (n_times * instrument.INTEGRATION_TIME_S / 2) * u.s
    return Time(_floor_second(start), scale="utc")


def _select_antennas(n_antennas: int | None, antennas) -> np.ndarray:
    if antennas is not None:
        ants = np.unique(np.asarray(antennas, dtype=int))
        if ants.size == 0 or ants.min() < 0 or ants.max() > 116:
            raise ValueError(f"antennas must be antenna numbers 0..116 (station - 1), got {antennas!r}")
        return ants
    if n_antennas is None or n_antennas >= 117:
        return np.arange(117)
    if n_antennas < 2:
        raise ValueError("at least 2 antennas are needed")
    # spread over the E-W arm, N-S arm and outriggers in table order
    return np.unique(np.round(np.linspace(0, 116, n_antennas)).astype(int))


def _jitters(jitter_s, subbands, rng) -> dict[int, float]:
    if isinstance(jitter_s, (int, float)):
        out = {sb: float(rng.integers(0, int(math.floor(jitter_s)) + 1)) for sb in subbands}
        if 0 in out:
            out[0] = 0.0  # the group id is sb00's timestamp
        return out
    seq = list(jitter_s)
    if len(seq) == instrument.N_SUBBANDS:
        return {sb: float(seq[sb]) for sb in subbands}
    if len(seq) == len(subbands):
        return {sb: float(j) for sb, j in zip(subbands, seq)}
    raise ValueError("jitter_s must be a number or one value per subband")


@dataclass
class _Plan:
    out_dir: Path
    group_id: str
    start_dt: datetime
    subbands: tuple[int, ...]
    n_channels: int
    n_times: int
    antennas: np.ndarray
    template: object
    ant_proj: np.ndarray
    geometry: object
    sources: list
    params: dict
    unix_s: np.ndarray
    sefd: float
    corruptions: Corruptions
    seed: int
    jitter: dict
    rfi: list
    dead: list
    flagged: list
    file_names: dict
    #: (Ntimes, Nsources) offsets from the beam centre at which the primary beam is evaluated: the
    #: geometry's own (the drift), or every integration the group's mid time (``fixed_beam``)
    beam_offset_rad: np.ndarray | None = None
    #: (Ntimes, Nsources) light-curve factor multiplying each source's S PB (None: every source constant)
    flux_factor: np.ndarray | None = None


_PLAN: _Plan | None = None
_BUFFERS: dict = {}


def _buffer(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-process array reused from subband to subband (no page faults on reuse)."""
    buf = _BUFFERS.get(name)
    if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
        buf = np.empty(shape, dtype=dtype)
        _BUFFERS[name] = buf
    return buf


def complex_gaussian(rng: np.random.Generator, out: np.ndarray, sigma: float) -> np.ndarray:
    """Fill complex64 ``out`` with independent N(0, sigma^2) real and imaginary parts.

    Box-Muller in float32 (exact Gaussian; tails truncated beyond 5.8 sigma by the
    24-bit uniforms), ~2x faster than numpy's float32 ziggurat.
    """
    flat = out.reshape(-1)
    u = rng.random((2, flat.size), dtype=np.float32)
    r = np.log1p(-u[0])
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    r *= np.float32(sigma)
    theta = u[1]
    theta *= np.float32(2 * np.pi)
    flat.real = r * np.cos(theta)
    flat.imag = r * np.sin(theta)
    return out


def _set_plan(plan: _Plan) -> None:
    """Worker initializer: the group's plan, for every subband this worker simulates."""
    global _PLAN
    _PLAN = plan


def _simulate_subband(sb: int, plan: _Plan | None = None) -> Path:
    plan = plan or _PLAN
    uvd = plan.template.copy()
    layout.set_subband(uvd, sb, n_channels=plan.n_channels)
    freqs = np.asarray(uvd.freq_array, dtype=float)
    n_t, n_f = plan.n_times, plan.n_channels
    ants = plan.antennas
    n_a = len(ants)
    i1, i2 = np.triu_indices(n_a)
    n_bl = len(i1)
    auto = np.flatnonzero(i1 == i2)

    fluxes = np.array([s.flux_at(freqs) for s in plan.sources]).reshape(len(plan.sources), n_f)
    beam_offset = plan.geometry.offset_rad if plan.beam_offset_rad is None else plan.beam_offset_rad
    amps = apparent_amplitudes(fluxes, beam_offset, freqs)
    if plan.flux_factor is not None:
        amps *= plan.flux_factor[:, :, None]  # variable sources: S(t) = S0 f(t) per integration
    sky = predict_sky(plan.ant_proj, plan.geometry, amps, freqs)  # (Nt, Nf, Nbl)

    corr = plan.corruptions
    gains = corr_mod.antenna_gains(plan.params, ants, freqs, plan.unix_s).astype(np.complex64)  # (Na, Nt, Nf, 2)
    unity = not (corr.delays or corr.bandpass or corr.gains)
    dnu = abs(float(uvd.channel_width[0]))
    tau = instrument.INTEGRATION_TIME_S
    sigma = corr_mod.noise_sigma_jy(plan.sefd, dnu, tau)
    rng = np.random.default_rng([plan.seed, int(plan.unix_s[0]), 100 + sb])
    rfi_cells = [c for c in plan.rfi if c["subband"] == sb]
    rfi_r = {id(c): corr_mod.rfi_voltages(c, 117)[ants] for c in rfi_cells}

    vis = _buffer("vis", (n_t * n_bl, n_f, 2), np.complex64)
    for t in range(n_t):
        block = vis[t * n_bl:(t + 1) * n_bl]
        if corr.noise:
            complex_gaussian(rng, block, sigma)
            block += sky[t].T[:, :, None]
        else:
            block[:] = sky[t].T[:, :, None]
        for c in rfi_cells:
            if c["t_start"] <= t < c["t_stop"]:
                r = rfi_r[id(c)]
                block[:, c["channel"], :] += (c["amplitude_jy"] * r[i1] * np.conj(r[i2]))[:, None].astype(np.complex64)
        # autocorrelations: real total power (SEFD + sky + RFI) with radiometer noise
        power = plan.sefd + block[auto].real.astype(np.float64)  # (Na, Nf, 2)
        if corr.noise:
            power = power + power / np.sqrt(dnu * tau) * rng.standard_normal(power.shape)
        block[auto] = power.astype(np.float32)
        if not unity:
            block *= gains[i1, t] * np.conj(gains[i2, t])
            block.imag[auto] = 0.0

    flags = _buffer("flags", vis.shape, bool)
    flags.fill(False)
    nsamples = _buffer("nsamples", vis.shape, np.float32)
    nsamples.fill(1.0)
    ant1_idx = np.tile(i1, n_t)
    ant2_idx = np.tile(i2, n_t)
    pos = {int(a): k for k, a in enumerate(ants)}
    for a in plan.dead:
        rows = (ant1_idx == pos[a]) | (ant2_idx == pos[a])
        vis[rows] = 0
        flags[rows] = True
    for a in plan.flagged:
        flags[(ant1_idx == pos[a]) | (ant2_idx == pos[a])] = True

    uvd.data_array = vis
    uvd.flag_array = flags
    uvd.nsample_array = nsamples
    path = plan.out_dir / plan.file_names[sb]
    tmp = path.with_name(path.name + ".part")
    uvd.write_uvh5(str(tmp), clobber=True, run_check=False, chunks=layout.visibility_chunks(vis.shape))
    uvd.data_array = uvd.flag_array = uvd.nsample_array = None
    with h5py.File(tmp, "r+") as fh:
        # the real correlator's (pyuvdata 2 style) marker of meridian drift data
        fh["Header"]["phase_type"] = np.bytes_("drift")
    tmp.replace(path)
    return path


def _apparent_flux_cut(sky: list, geometry, field: FieldOptions) -> tuple[list, object, dict]:
    """Drop the field sources whose peak apparent flux is below ``field.min_apparent_flux_jy``.

    Calibrators are kept. Returns the kept sources, their geometry and the
    ``field_population`` record of the truth sidecar.
    """
    is_field = np.array([s.kind == "field" for s in sky], dtype=bool)
    peak = np.zeros(len(sky))
    if is_field.any():
        peak[is_field] = sky_mod.peak_apparent_flux_jy([s for s, f in zip(sky, is_field) if f],
                                                       geometry.offset_rad[:, is_field])
    threshold = float(field.min_apparent_flux_jy)
    drop = is_field & (peak < threshold)
    keep = np.flatnonzero(~drop)
    record = {
        "options": field.to_dict(),
        "min_apparent_flux_jy": threshold,
        "cut_freq_hz": sky_mod.APPARENT_FLUX_FREQ_HZ,
        "n_drawn": int(is_field.sum()),
        "n_simulated": int((is_field & ~drop).sum()),
        "n_dropped": int(drop.sum()),
        "dropped_peak_apparent_flux_jy": float(peak[drop].sum()),
        "simulated_peak_apparent_flux_jy": float(peak[is_field & ~drop].sum()),
        "definition": "field sources within radius_deg of the meridian track, drawn with the sky seed; those "
                      "with max over the integrations of S(cut_freq_hz) * AiryPB(offset, cut_freq_hz) below "
                      "min_apparent_flux_jy are not simulated and not listed in 'sky' (calibrators are never cut)",
    }
    if not drop.any():
        return sky, geometry, record
    return [sky[k] for k in keep], geometry.take(keep), record


def fixed_beam_offsets(sources, times_jd: np.ndarray, pointing_dec_rad: float) -> np.ndarray:
    """Each source's offset from the beam centre at the group's mid time, for every integration.

    The mid time is halfway between the first and last integration mid times (between two
    integrations for an even count). Shape (Ntimes, Nsources), radians.
    """
    times_jd = np.asarray(times_jd, dtype=float)
    mid = np.array([(times_jd[0] + times_jd[-1]) / 2.0])
    geo = source_geometry([s.ra_deg for s in sources], [s.dec_deg for s in sources], mid,
                          layout.apparent_lst_rad(mid), pointing_dec_rad)
    return np.repeat(geo.offset_rad, len(times_jd), axis=0)


def _resolve_scale(scale, n_channels, n_times, n_antennas, antennas, n_subbands):
    preset = scale_preset(scale or "full")
    n_channels = preset["n_channels"] if n_channels is None else n_channels
    n_times = preset["n_times"] if n_times is None else n_times
    if antennas is None and n_antennas is None:
        antennas = preset["antennas"]
    n_subbands = preset["n_subbands"] if n_subbands is None else n_subbands
    return n_channels, n_times, n_antennas, antennas, n_subbands


def simulate_group(
    out_dir,
    start,
    *,
    n_subbands: int | None = None,
    subbands: Sequence[int] | None = None,
    n_channels: int | None = None,
    n_times: int | None = None,
    n_antennas: int | None = None,
    antennas: Sequence[int] | None = None,
    scale: str | None = None,
    pointing_dec_deg: float = DEFAULT_POINTING_DEC_DEG,
    calibrator: str | None = None,
    sources: Sequence[Source] | None = None,
    field: FieldOptions | None = FieldOptions(),
    corruptions: Corruptions = Corruptions(),
    seed: int = 0,
    jitter_s: float | Sequence[float] = 2.0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    fixed_beam: bool = False,
    variables: VariableOptions | None = None,
) -> SimulatedGroup:
    """Simulate one group of DSA-110 subband files and its truth sidecar.

    Parameters
    ----------
    out_dir : path-like
        Directory for the files (created).
    start : astropy.time.Time, str (ISO UTC) or datetime
        UTC start of the first integration; the group id is its whole second.
    n_subbands : int, optional
        Subbands 0..n-1 (default 16). Ignored if ``subbands`` is given.
    subbands : sequence of int, optional
        Explicit subband numbers (e.g. all but one for a missing subband).
    n_channels : int, optional
        Channels per subband (default 48; 4 at scale ``small``).
    n_times : int, optional
        Integrations of 12.885 s (default 24).
    n_antennas : int, optional
        Antennas with data, spread over the array in table order.
    antennas : sequence of int, optional
        Explicit antenna numbers with data (station - 1). The header always
        lists all 117 antennas.
    scale : {"small", "full"}, optional
        Preset for the four sizes above (explicit values win).
    pointing_dec_deg : float
        Pointing declination, degrees (stored in radians in the header).
    calibrator : str, optional
        A calibrator from the shipped list that must be in the sky model even
        if it is outside the field radius; its transit is recorded in the truth.
    sources : sequence of Source, optional
        The exact sky (replaces calibrators and the field population).
    field : FieldOptions or None
        The random field population when ``sources`` is None (None: calibrators
        only). Field sources fainter than ``field.min_apparent_flux_jy`` (peak
        apparent flux in this group, default 3 mJy) are not simulated;
        ``FieldOptions(min_apparent_flux_jy=0)`` keeps them all.
    corruptions : Corruptions
        What to inject (default: everything); ``Corruptions.none()`` for the pure sky.
    seed : int
        Seeds the sky, instrument, bad antennas and (with the start time) the
        noise, RFI and jitter.
    jitter_s : float or sequence of float
        Maximum timestamp jitter of the file names (whole seconds drawn in
        [0, jitter_s]; sb00 has none), or one offset per subband.
    workers : int, optional
        Processes (default: 1 for small groups, 2 for large ones).
    progress : callable, optional
        Called with 1 after each subband is written.
    fixed_beam : bool
        Test only (not a property of the telescope): hold the primary beam fixed during the
        group. Each source's attenuation is the Airy beam at its offset at the group's mid
        time for every integration (still per channel), instead of at each integration's
        offset (the drift through the beam). Positions and phases still drift. Recorded in
        the truth sidecar (``beam``).
    variables : VariableOptions, optional
        Variable sources added to the sky (never cut by the apparent-flux cut): each
        one's ``S PB`` is multiplied by its light curve at every integration's mid
        time. Their parameters and injected fluxes are in the truth sidecar
        (``variables``, :func:`contimg.simulate.variables.truth_record`); without
        them the sidecar has no ``variables`` key and the files are unchanged.

    Returns
    -------
    SimulatedGroup
    """
    n_channels, n_times, n_antennas, antennas, n_subbands = _resolve_scale(
        scale, n_channels, n_times, n_antennas, antennas, n_subbands)
    subbands = tuple(int(s) for s in (range(n_subbands) if subbands is None else subbands))
    if any(not 0 <= s < instrument.N_SUBBANDS for s in subbands):
        raise ValueError(f"subbands must be 0..15, got {subbands}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = as_time(start, "start")
    start_dt = _floor_second(t_start)
    group_id = naming.group_id_from_datetime(start_dt)
    ants = _select_antennas(n_antennas, antennas)
    dec_rad = math.radians(pointing_dec_deg)

    times_jd = layout.integration_times_jd(t_start, n_times)
    lst = layout.apparent_lst_rad(times_jd)
    unix_s = (times_jd - _JD_UNIX_EPOCH) * 86400.0

    # --- sky -------------------------------------------------------------------
    # RA range swept by the meridian during the group (apparent, degrees)
    sweep_deg = n_times * instrument.INTEGRATION_TIME_S * 360.0 / 86164.0905
    ra_lo = math.degrees(lst[0]) - sweep_deg / n_times / 2
    ra_hi = ra_lo + sweep_deg
    cal_src = sky_mod.find_calibrator(calibrator) if calibrator else None
    if sources is None:
        radius = field.radius_deg if field is not None else FieldOptions().radius_deg
        sky = sky_mod.calibrators_near(ra_lo, ra_hi, pointing_dec_deg, radius_deg=radius)
        if field is not None:
            sky += sky_mod.field_population(ra_lo, ra_hi, pointing_dec_deg, seed=seed, options=field)
    else:
        sky = list(sources)
    if cal_src is not None and all(s.name != cal_src.name for s in sky):
        sky.insert(0, cal_src)
    geometry = source_geometry([s.ra_deg for s in sky], [s.dec_deg for s in sky], times_jd, lst, dec_rad)
    field_truth = None
    if sources is None and field is not None:
        sky, geometry, field_truth = _apparent_flux_cut(sky, geometry, field)
    flux_factor = None
    if variables is not None and variables.sources:
        var_sky = [v.source() for v in variables.sources]
        var_geo = source_geometry([s.ra_deg for s in var_sky], [s.dec_deg for s in var_sky], times_jd, lst, dec_rad)
        geometry = type(geometry)(*(np.concatenate([a, b], axis=1) for a, b in (
            (geometry.l, var_geo.l), (geometry.m, var_geo.m), (geometry.n, var_geo.n),
            (geometry.offset_rad, var_geo.offset_rad), (geometry.hour_angle_rad, var_geo.hour_angle_rad))))
        mjd = times_jd - 2400000.5
        flux_factor = np.ones((n_times, len(sky) + len(var_sky)))
        flux_factor[:, len(sky):] = np.stack([v.factor(mjd) for v in variables.sources], axis=1)
        sky = sky + var_sky
    beam_offset = fixed_beam_offsets(sky, times_jd, dec_rad) if fixed_beam and sky else None

    # --- instrument ------------------------------------------------------------
    params = corr_mod.draw_instrument(seed, corruptions)
    sefd, tsys, eta = corr_mod.settings_sefd(corruptions)
    bad_rng = np.random.default_rng([seed, 3])
    dead = corr_mod.choose_bad_antennas(bad_rng, list(ants), corruptions.dead_antennas)
    flagged = corr_mod.choose_bad_antennas(bad_rng, list(ants), corruptions.flagged_antennas, exclude=dead)
    missing = [a for a in dead + flagged if a not in set(ants.tolist())]
    if missing:
        raise ValueError(f"dead/flagged antennas {missing} have no data in this group")
    group_rng = np.random.default_rng([seed, int(unix_s[0]), 2])
    jitter = _jitters(jitter_s, subbands, group_rng)
    rfi = corr_mod.draw_rfi(group_rng, corruptions, subbands, n_channels, n_times)
    file_names = {
        sb: naming.subband_filename(naming.group_id_from_datetime(start_dt + timedelta(seconds=math.floor(jitter[sb]))), sb)
        for sb in subbands
    }
    applied = np.random.default_rng([seed, 4]).integers(0, 3000, 117)
    applied_delays_ns = " ".join(str(int(x)) for x in applied)
    fs_table = layout.fs_table_name(pointing_dec_deg, n_times)

    template = layout.build_template(
        times_jd=times_jd, antennas=ants, n_channels=n_channels, pointing_dec_rad=dec_rad,
        applied_delays_ns=applied_delays_ns, fs_table=fs_table,
        history=f"contimg.simulate seed={seed} group={group_id}",
    )
    plan = _Plan(out_dir, group_id, start_dt, subbands, n_channels, n_times, ants, template,
                 layout.antenna_projection_m(dec_rad)[ants], geometry, sky, params, unix_s, sefd,
                 corruptions, seed, jitter, rfi, dead, flagged, file_names, beam_offset, flux_factor)

    # --- truth (written first so a reader of a partial group can see what is coming)
    calib_truth = None
    if cal_src is not None:
        from contimg.sky.transit import next_transit

        coord = SkyCoord(cal_src.ra_deg * u.deg, cal_src.dec_deg * u.deg, frame="icrs")
        transit = next_transit(coord, Time(times_jd[0], format="jd") - 0.5 * u.day)
        idx = int(np.argmin(np.abs(times_jd - transit.jd)))
        calib_truth = {"name": cal_src.name, "transit_utc": transit.utc.isot, "transit_jd": transit.jd,
                       "nearest_integration": idx,
                       "in_group": bool(times_jd[0] - 0.5 * instrument.INTEGRATION_TIME_S / 86400 <= transit.jd
                                        <= times_jd[-1] + 0.5 * instrument.INTEGRATION_TIME_S / 86400)}
    sigma_native = corr_mod.noise_sigma_jy(sefd, instrument.CHANNEL_WIDTH_HZ, instrument.INTEGRATION_TIME_S)
    dnu = abs(instrument.subband_channel_width_hz(n_channels=n_channels))
    truth = {
        "group_id": group_id,
        "start_utc": t_start.utc.isot,
        "times_jd": times_jd,
        "lst_rad": lst,
        "integration_time_s": instrument.INTEGRATION_TIME_S,
        "pointing_dec_deg": pointing_dec_deg,
        "pointing_dec_rad": dec_rad,
        "site": {"lat_deg": instrument.SITE.lat.deg, "lon_deg": instrument.SITE.lon.deg,
                 "height_m": instrument.SITE.height.to_value(u.m)},
        "seed": seed,
        "scale": {"subbands": list(subbands), "n_channels": n_channels, "n_times": n_times,
                  "antennas": ants, "n_antennas_with_data": len(ants), "channel_width_hz": dnu},
        "conventions": truth_mod.CONVENTIONS,
        "sky": [s.to_dict() for s in sky],
        "field_population": field_truth,
        "calibrator": calib_truth,
        "beam": {"fixed": bool(fixed_beam),
                 "definition": "fixed: every integration's S PB uses each source's beam offset at the group's "
                               "mid time (halfway between the first and last integration mid times; a test "
                               "option, not the telescope); else PB at each integration's own offset (the "
                               "drift through the beam)"},
        "corruptions": {
            "enabled": corruptions.to_dict(),
            "instrument": {k: v for k, v in params.items()},
            "delays_ns": {str(a): params["delay_ns"][a] for a in ants},
            "noise": {"sefd_jy": sefd, "tsys_k": tsys, "aperture_efficiency": eta,
                      "sigma_jy": corr_mod.noise_sigma_jy(sefd, dnu, instrument.INTEGRATION_TIME_S),
                      "sigma_native_channel_jy": sigma_native, "enabled": corruptions.noise,
                      "image_sigma_jy": corr_mod.image_noise_jy(
                          sefd, len(ants) - len(dead) - len(flagged), len(subbands) * instrument.SUBBAND_WIDTH_HZ,
                          n_times * instrument.INTEGRATION_TIME_S),
                      "definition": truth_mod.CONVENTIONS["noise_sigma"]},
            "rfi": rfi,
            "dead_antennas": dead,
            "flagged_antennas": flagged,
        },
        "files": [{"subband": sb, "name": file_names[sb], "timestamp": file_names[sb][:19],
                   "jitter_s": jitter[sb]} for sb in subbands],
        "extra_keywords": template.extra_keywords,
    }
    if variables is not None:
        truth["variables"] = _variables_truth(variables, times_jd)
    tpath = truth_mod.write_truth(naming.truth_path(out_dir, group_id), truth)

    # --- compute and write -------------------------------------------------------
    if workers is None:
        size = len(subbands) * n_times * len(ants) * (len(ants) + 1) // 2 * n_channels * 2 * 8
        workers = 1 if size < 300e6 else min(2, os.cpu_count() or 1)
    paths: dict[int, Path] = {}
    if workers <= 1:
        for sb in subbands:
            paths[sb] = _simulate_subband(sb, plan)
            if progress:
                progress(1)
    else:
        # Spawned, not forked: a fork of a process with threads (a Prefect client's, a test
        # run's servers) copies their locks mid-use, and a forked worker crashed with a
        # segmentation fault in CI. The plan (~20 MB pickled) goes to each worker once.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                 initializer=_set_plan, initargs=(plan,)) as pool:
            futures = {sb: pool.submit(_simulate_subband, sb) for sb in subbands}
            for sb in subbands:
                paths[sb] = futures[sb].result()
                if progress:
                    progress(1)
    return SimulatedGroup(group_id, [paths[sb] for sb in subbands], tpath, subbands)
