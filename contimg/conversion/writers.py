"""UVH5 subbands -> one Measurement Set with 16 spectral windows, ascending frequency.

Two writers, selectable by name and recorded with each MS:

``direct-subband`` (default)
    The row geometry shared by all subbands (phase centres, UVW, w-terms, row
    order) is computed once; worker processes read each subband with h5py and
    apply it to the arrays; the parent streams each result into its
    spectral-window block of one preallocated MS, with MODEL_DATA and
    CORRECTED_DATA written in the same pass. No intermediate per-subband MS, no
    CASA ``concat``: the data are read once and written once.
``pyuvdata``
    The reference: every subband read and combined into one ``UVData`` and written
    with ``UVData.write_ms``, then the imaging columns added.

Both produce the same table: rows in SPW-major blocks (SPW 0 = sb15 = lowest
band), pyuvdata's MS convention (``flip_conj``: DATA is the conjugate of the UVH5
visibilities and UVW is negated, which is CASA-consistent), WEIGHT_SPECTRUM =
nsamples, WEIGHT = median nsamples per row, SIGMA = WEIGHT^-1/2 (0 where the
weight is 0), MODEL_DATA = 1 (CASA's default point model), CORRECTED_DATA = DATA.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import uuid
from collections import deque
from itertools import islice
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from astropy.constants import c as _c
from astropy.time import Time
from casacore import tables
from pyuvdata import UVData
from pyuvdata.utils.io import ms as ms_utils
from pyuvdata.utils.pol import determine_pol_order

from contimg import instrument
from contimg.conversion.ms_layout import create_ms
from contimg.conversion.subband import PhaseCentre, group_geometry, prepare_subband, read_subband
from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

_C_M_S = _c.to_value("m/s")
_IMAGING_COLUMNS = ("MODEL_DATA", "CORRECTED_DATA")


def spw_of_subband(subband: int, n_subbands: int = 16) -> int:
    """Spectral window of a subband in the MS: sb15 -> SPW 0 (ascending frequency)."""
    return n_subbands - 1 - subband


def _stand_in_frequencies(subband: int, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel frequencies and widths of a missing subband, as the file would have them (DOMAIN.md 1.2)."""
    width = instrument.subband_channel_width_hz(n_channels=n_channels)
    return instrument.subband_frequencies_hz(subband, n_channels=n_channels), np.full(n_channels, width)


def _load(path: Path | None, subband: int, dec_rad: float, phase_centre: PhaseCentre | None,
          n_subbands: int, template: Path) -> UVData:
    """Worker: one prepared subband; a fully flagged stand-in when ``path`` is None."""
    if path is None:
        uv = read_subband(template)
        uv.data_array[:] = 0
        uv.flag_array[:] = True
        uv.nsample_array[:] = 0
        uv.freq_array, uv.channel_width = _stand_in_frequencies(subband, uv.Nfreqs)
    else:
        uv = read_subband(path)
    return prepare_subband(uv, dec_rad=dec_rad, phase_centre=phase_centre,
                           spw_id=spw_of_subband(subband, n_subbands))


def _spill_dir(near: Path) -> Path:
    """Where workers hand arrays to the parent: RAM (/dev/shm) when it has room."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 4 * 2**30:
        return shm
    return near


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    """The row axis, frequencies and data arrays of one subband file, read with h5py."""
    try:
        with h5py.File(path, "r") as h:
            hdr = h["Header"]
            out = {name: np.asarray(hdr[name][()]) for name in
                   ("time_array", "ant_1_array", "ant_2_array", "freq_array", "channel_width", "polarization_array")}
            for name, key in (("vis", "visdata"), ("flags", "flags"), ("nsamples", "nsamples")):
                out[name] = np.asarray(h["Data"][key][()])
    except (OSError, KeyError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as a DSA-110 UVH5 subband: {exc}") from exc
    vis = out["vis"]
    if vis.dtype.names:  # integer-valued visibilities stored as a compound type
        vis = (vis["r"] + 1j * vis["i"]).astype(np.complex64)
    for name, array in (("vis", vis), ("flags", out["flags"]), ("nsamples", out["nsamples"])):
        out[name] = array.reshape(array.shape[0], array.shape[-2], array.shape[-1])  # drop a legacy spw axis
    out["freq_array"] = out["freq_array"].ravel()
    out["channel_width"] = np.broadcast_to(out["channel_width"], out["freq_array"].shape)
    return out


def _rows_for_ms(path: Path | None, subband: int, geometry: dict[str, np.ndarray], template: Path,
                 spill: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Path]]:
    """Worker of the direct writer: one subband's MS row arrays, written to ``spill``.

    Applies to the arrays exactly what :func:`~contimg.conversion.subband.prepare_subband`
    makes pyuvdata do (w-term rephasing, conjugation to ant1 <= ant2, row order,
    ascending channels), then the MS convention (conjugate, CASA polarisation
    order) and the row weights. The arrays go to ``.npy`` files (RAM when
    possible) that the parent memory-maps into ``putcol``.

    Returns
    -------
    freqs_hz, widths_hz : numpy.ndarray
        Channel frequencies (ascending) and widths (positive), Hz.
    files : dict
        MS column -> ``.npy`` file.
    """
    raw = _read_rows(path if path is not None else template)
    label = str(path) if path is not None else f"sb{subband:02d} stand-in"
    if path is None:  # missing subband: its real frequencies, no data, all flagged
        raw["freq_array"], raw["channel_width"] = _stand_in_frequencies(subband, raw["freq_array"].size)
        raw["vis"][:] = 0
        raw["flags"][:] = True
        raw["nsamples"][:] = 0
    if not (np.array_equal(raw["time_array"], geometry["time"]) and np.array_equal(raw["ant_1_array"], geometry["ant1"])
            and np.array_equal(raw["ant_2_array"], geometry["ant2"])
            and np.array_equal(raw["polarization_array"], geometry["pols"])):
        raise InvalidInputError(f"{label}: times, baselines or polarisations differ from the group's other "
                                "subbands; it does not belong to this group")
    vis, flags, nsamples, freqs = raw["vis"], raw["flags"], raw["nsamples"], raw["freq_array"]
    if np.any(geometry["delta_w"]):
        # pyuvdata's _apply_w_proj, operation for operation (bit-identical results).
        delta_w_lambda = geometry["delta_w"].reshape(-1, 1) * (1.0 / _C_M_S) * freqs.reshape(1, -1)
        vis *= np.exp((-1j * 2 * np.pi) * delta_w_lambda[:, :, None])
    pols = list(raw["polarization_array"])
    conj = geometry["conjugated"]
    if conj.any():
        vis[conj] = np.conj(vis[conj])
        if -7 in pols and -8 in pols:  # conjugation swaps XY and YX
            xy, yx = pols.index(-7), pols.index(-8)
            for array in (vis, flags, nsamples):
                array[np.ix_(conj, np.arange(array.shape[1]), [xy, yx])] = array[np.ix_(conj, np.arange(array.shape[1]), [yx, xy])]
    order, chan = geometry["order"], np.argsort(freqs, kind="stable")
    pol_order = determine_pol_order(np.asarray(pols), order="CASA")
    select = np.ix_(order, chan, pol_order)
    nsamples = nsamples[select]
    weight, sigma = _row_weights(nsamples)
    arrays = {
        "DATA": np.conj(vis[select]),
        "FLAG": flags[select],
        "WEIGHT_SPECTRUM": nsamples,
        "WEIGHT": weight,
        "SIGMA": sigma,
    }
    stem = f"contimg-{os.getpid()}-sb{subband:02d}-{uuid.uuid4().hex[:8]}"
    files = {}
    for name, array in arrays.items():
        files[name] = spill / f"{stem}-{name}.npy"
        np.save(files[name], array)
    return freqs[chan], np.abs(raw["channel_width"][chan]), files


def _check_same_axes(reference: UVData, other: UVData, label: str) -> None:
    if (
        reference.Nblts != other.Nblts
        or not np.array_equal(reference.time_array, other.time_array)
        or not np.array_equal(reference.ant_1_array, other.ant_1_array)
        or not np.array_equal(reference.ant_2_array, other.ant_2_array)
        or not np.array_equal(reference.polarization_array, other.polarization_array)
    ):
        raise InvalidInputError(
            f"{label}: times, baselines or polarisations differ from the group's other "
            "subbands; it does not belong to this group"
        )


def _set_frequency_metadata(meta: UVData, freqs: list[np.ndarray], widths: list[np.ndarray]) -> None:
    """Give ``meta`` the frequency axis of all SPWs together (for the subtables)."""
    meta.freq_array = np.concatenate(freqs)
    meta.channel_width = np.concatenate(widths)
    meta.flex_spw_id_array = np.repeat(np.arange(len(freqs)), [f.size for f in freqs])
    meta.spw_array = np.arange(len(freqs))
    meta.Nspws = len(freqs)
    meta.Nfreqs = meta.freq_array.size


def _sigma(weight: np.ndarray) -> np.ndarray:
    """SIGMA = WEIGHT^-1/2, and 0 where the weight is 0 (flagged stand-in rows)."""
    sigma = np.zeros_like(weight)
    np.power(weight, -0.5, where=weight > 0, out=sigma)
    return sigma


def _row_weights(nsamples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row WEIGHT (median nsamples over channels, per polarisation) and SIGMA."""
    weight = np.median(nsamples, axis=1)
    return weight, _sigma(weight)


def _write_subtables(path: Path, template: UVData, pol_order) -> None:
    ms_utils.write_ms_antenna(str(path), uvobj=template)
    ms_utils.write_ms_data_description(str(path), uvobj=template)
    ms_utils.write_ms_feed(str(path), uvobj=template)
    ms_utils.write_ms_field(str(path), uvobj=template)
    ms_utils.write_ms_history(str(path), uvobj=template)
    ms_utils.write_ms_observation(str(path), uvobj=template)
    ms_utils.write_ms_pointing(str(path), uvobj=template)
    ms_utils.write_ms_polarization(str(path), pol_order=pol_order, uvobj=template)
    ms_utils.write_ms_source(str(path), uvobj=template)
    ms_utils.write_ms_spectral_window(str(path), uvobj=template)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the caller may be a Prefect worker holding threads and locks.
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))


def _ordered_inputs(files: Mapping[int, Path | None]) -> list[tuple[int, Path | None]]:
    """(subband, path) in SPW order: highest subband number (lowest band) first."""
    return sorted(files.items(), key=lambda item: -item[0])


def write_direct_subband(
    files: Mapping[int, Path | None],
    ms_path: Path,
    *,
    dec_rad: float,
    phase_centre: PhaseCentre | None,
    n_subbands: int = 16,
    workers: int = 2,
) -> Path:
    """Write a group with the ``direct-subband`` writer (see module docstring).

    Parameters
    ----------
    files : mapping of int to path or None
        Subband number -> file; ``None`` marks a missing subband, written fully
        flagged with its real frequencies.
    ms_path : path
        The MS to create (must not exist).
    dec_rad : float
        Pointing declination of the group, radians.
    phase_centre : PhaseCentre or None
        Common phase centre, or ``None`` for one field per integration.
    n_subbands : int
        Subbands in a complete group.
    workers : int
        Worker processes reading subbands in parallel.
    """
    ordered = _ordered_inputs(files)
    template_file = next(p for _, p in ordered if p is not None)
    ms_path = Path(ms_path)
    geometry = group_geometry(template_file, dec_rad=dec_rad, phase_centre=phase_centre)
    shared = {"time": geometry.raw_time, "ant1": geometry.raw_ant1, "ant2": geometry.raw_ant2,
              "pols": geometry.meta.polarization_array,
              "delta_w": geometry.delta_w_m, "conjugated": geometry.conjugated, "order": geometry.order}
    spill = _spill_dir(ms_path.parent)
    meta = geometry.meta
    nblts = meta.Nblts
    ms = _create_main_table(ms_path, meta, n_spw=len(ordered))
    freqs, widths, submitted = [], [], []
    model = None
    with _pool(workers) as pool:

        def submit(item):
            sb, path = item
            future = pool.submit(_rows_for_ms, path, sb, shared, template_file, spill)
            submitted.append(future)
            return future

        # At most workers + 1 subbands in flight: finished results wait in RAM
        # until written, so an unbounded queue could hold the whole group.
        remaining = iter(ordered)
        pending = deque(submit(item) for item in islice(remaining, workers + 1))
        try:
            for spw in range(len(ordered)):
                future = pending.popleft()
                following = next(remaining, None)
                if following is not None:
                    pending.append(submit(following))
                spw_freqs, spw_widths, arrays = future.result()
                freqs.append(spw_freqs)
                widths.append(spw_widths)
                start = spw * nblts
                try:
                    for col, file in arrays.items():
                        array = np.load(file, mmap_mode="r")
                        ms.putcol(col, array, start, nblts)
                        if col == "DATA":
                            ms.putcol("CORRECTED_DATA", array, start, nblts)
                            if model is None:
                                model = np.ones(array.shape, dtype=array.dtype)
                            ms.putcol("MODEL_DATA", model, start, nblts)
                        del array
                finally:
                    for file in arrays.values():
                        file.unlink(missing_ok=True)
        finally:
            for future in pending:
                future.cancel()
            ms.close()
    # After a failure, subbands that finished anyway must not leave arrays in RAM.
    for future in submitted:
        if future.done() and not future.cancelled() and future.exception() is None:
            for file in future.result()[2].values():
                file.unlink(missing_ok=True)
    _set_frequency_metadata(meta, freqs, widths)
    _write_subtables(ms_path, meta, determine_pol_order(meta.polarization_array, order="CASA"))
    return ms_path


def _create_main_table(path: Path, uv: UVData, *, n_spw: int) -> tables.table:
    """The MS skeleton with every row and the per-row metadata written once."""
    ms = create_ms(str(path), n_pol=uv.Npols, n_chan=uv.Nfreqs)
    nblts = uv.Nblts
    ms.addrows(nblts * n_spw)
    times = Time(uv.time_array, format="jd", scale="utc").mjd * 86400.0
    field_ids = np.empty_like(uv.phase_center_id_array)
    for index, cat_id in enumerate(uv.phase_center_catalog):
        field_ids[uv.phase_center_id_array == cat_id] = index
    scan = np.ones(nblts, dtype=int) if uv.scan_number_array is None else uv.scan_number_array
    per_row = {
        "ANTENNA1": uv.ant_1_array,
        "ANTENNA2": uv.ant_2_array,
        "INTERVAL": uv.integration_time,
        "EXPOSURE": uv.integration_time,
        "SCAN_NUMBER": scan,
        "TIME": times,
        "TIME_CENTROID": times,
        "UVW": -uv.uvw_array,  # pyuvdata flip_conj convention
        "FIELD_ID": field_ids,
    }
    for col, values in per_row.items():
        ms.putcol(col, np.concatenate([values] * n_spw))
    ms.putcol("DATA_DESC_ID", np.repeat(np.arange(n_spw), nblts))
    ms.putcolkeyword("DATA", "QuantumUnits", uv.vis_units)
    ms.putkeyword("pyuvdata_flip_conj", True)
    return ms


def write_pyuvdata(
    files: Mapping[int, Path | None],
    ms_path: Path,
    *,
    dec_rad: float,
    phase_centre: PhaseCentre | None,
    n_subbands: int = 16,
    workers: int = 1,
) -> Path:
    """Write a group with the reference ``pyuvdata`` writer (``UVData.write_ms``).

    Parameters are those of :func:`write_direct_subband`; ``workers`` is ignored
    (the reference is serial by design).
    """
    ordered = _ordered_inputs(files)
    template_file = next(p for _, p in ordered if p is not None)
    parts = [_load(path, sb, dec_rad, phase_centre, n_subbands, template_file) for sb, path in ordered]
    for (sb, path), part in zip(ordered[1:], parts[1:]):
        _check_same_axes(parts[0], part, str(path or f"sb{sb:02d} stand-in"))
    uv = parts[0]
    if len(parts) > 1:
        uv.fast_concat(parts[1:], axis="freq", inplace=True, run_check=False)
    del parts
    uv.write_ms(str(ms_path), run_check=False, check_autos=False, fix_autos=False)
    _add_imaging_columns(ms_path)
    # pyuvdata leaves SIGMA undefined where WEIGHT is 0 (a flagged stand-in subband).
    with tables.table(str(ms_path), readonly=False, ack=False) as ms:
        ms.putcol("SIGMA", _sigma(ms.getcol("WEIGHT")))
    return Path(ms_path)


def _add_imaging_columns(ms_path: Path, *, chunk_rows: int = 200_000) -> None:
    """Add MODEL_DATA (= 1) and CORRECTED_DATA (= DATA) initialised in every row.

    CASA solvers fail on uninitialised rows ("TSM: no array in row"), the
    original pipeline's most common calibration failure.
    """
    with tables.table(str(ms_path), readonly=False, ack=False) as ms:
        desc = ms.getcoldesc("DATA")
        dminfo = ms.getdminfo("DATA")
        for col in _IMAGING_COLUMNS:
            if col in ms.colnames():
                continue
            dm = dict(dminfo, NAME=f"Tiled_{col}")
            ms.addcols(tables.maketabdesc(tables.makecoldesc(col, desc)), dm)
        for start in range(0, ms.nrows(), chunk_rows):
            n = min(chunk_rows, ms.nrows() - start)
            data = ms.getcol("DATA", start, n)
            ms.putcol("CORRECTED_DATA", data, start, n)
            ms.putcol("MODEL_DATA", np.ones_like(data), start, n)


#: Writers by the name recorded in the catalog.
WRITERS: dict[str, Callable[..., Path]] = {
    "direct-subband": write_direct_subband,
    "pyuvdata": write_pyuvdata,
}


def get_writer(name: str) -> Callable[..., Path]:
    """The writer called ``name``; a clear error for an unknown one."""
    try:
        return WRITERS[name]
    except KeyError:
        raise ValueError(f"unknown MS writer {name!r}; choose one of {sorted(WRITERS)}") from None
