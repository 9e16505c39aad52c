"""UVH5 subbands -> one Measurement Set with 16 spectral windows, ascending frequency.

Two writers, selectable by name and recorded with each MS:

``direct-subband`` (default)
    The row geometry shared by all subbands (phase centres, UVW, w-terms, row
    order) is computed once; the caller's thread creates the whole MS with every
    row and writes the per-row columns; worker threads read the subbands with
    h5py, apply the geometry in one compiled pass per subband and write the
    bulk columns (DATA, WEIGHT_SPECTRUM, FLAG, WEIGHT, SIGMA) of each
    spectral-window block straight into the tiled column files, mostly with
    ``O_DIRECT`` (:mod:`.ms_layout`, :mod:`.subband_rows`, :mod:`.column_io`).
    No intermediate per-subband MS, no CASA ``concat``: the data are read once
    and written once. With ``submit_subband`` (scale-out, e.g. Dask workers on
    other nodes), the same worker function runs elsewhere, into scratch files
    that this process copies into the MS (:mod:`.subband_scratch`): the same bytes.
``pyuvdata``
    The reference: every subband read and combined into one ``UVData`` and written
    with ``UVData.write_ms``, then the imaging columns added.

Both produce the same table: rows in SPW-major blocks (SPW 0 = sb15 = lowest
band), pyuvdata's MS convention (``flip_conj``: DATA is the conjugate of the UVH5
visibilities and UVW is negated, which is CASA-consistent), WEIGHT_SPECTRUM =
nsamples, WEIGHT = median nsamples per row, SIGMA = WEIGHT^-1/2 (0 where the
weight is 0), MODEL_DATA and CORRECTED_DATA preallocated in every row and zero
until calibration writes them (:mod:`.ms_layout`).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from astropy.time import Time
from casacore import tables
from pyuvdata import UVData
from pyuvdata.utils.io import ms as ms_utils
from pyuvdata.utils.pol import determine_pol_order

from contimg import instrument
from contimg.conversion.ms_layout import (
    INCREMENTAL_COLUMNS,
    ColumnFile,
    array_column,
    create_ms,
    direct_column_files,
)
from contimg.conversion.subband import PhaseCentre, group_geometry, prepare_subband, read_subband
from contimg.conversion.subband_scratch import (
    ScratchJob,
    SupportsResult,
    assemble,
    save_geometry,
    scratch_columns,
)
from contimg.conversion.subband_rows import (
    MSTarget,
    RowGeometry,
    SubbandJob,
    SubbandRows,
    sigma_from_weight,
    write_subbands,
)
from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

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
    submit_subband: Callable[[ScratchJob], SupportsResult] | None = None,
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
        Worker threads converting and writing subbands in parallel (without
        ``submit_subband``).
    submit_subband : callable, optional
        Scale-out: ``submit_subband(job)`` starts
        :func:`.subband_scratch.convert_subband` on ``job`` somewhere that sees
        ``ms_path``'s directory (a Dask worker on another node) and returns a
        future whose ``result()`` is its return value. Each subband is converted
        there into scratch files beside the MS, which this process copies into
        the MS: the same bytes as the worker threads write (see
        :mod:`.subband_scratch`). Default: worker threads in this process.
    """
    ordered = _ordered_inputs(files)
    template_file = next(p for _, p in ordered if p is not None)
    ms_path = Path(ms_path)
    n_chan = _channels(template_file)
    jobs = [SubbandJob(spw, path if path is not None else template_file,
                       None if path is not None else _stand_in_frequencies(sb, n_chan),
                       str(path) if path is not None else f"sb{sb:02d} stand-in")
            for spw, (sb, path) in enumerate(ordered)]
    if submit_subband is not None:
        return _write_scattered(jobs, template_file, ms_path, submit_subband, dec_rad=dec_rad,
                                phase_centre=phase_centre)
    # Threads, not processes: h5py's reads, the compiled pass and the writes
    # release the GIL, and threads need no spawn, imports or copies of the
    # geometry (~1.5 s of CPU per group on two cores). One task per worker, SPWs
    # dealt round-robin; each reads its first subband while this thread builds
    # the geometry and the MS, then its next while the last writes drain.
    target: Future[MSTarget] = Future()
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
        futures = [pool.submit(write_subbands, jobs[w::workers], target=target, stop=stop) for w in range(workers)]
        try:
            meta, pol_order, rows = _row_geometry(template_file, dec_rad=dec_rad, phase_centre=phase_centre)
            done = _write_main_table(meta, rows, ms_path, len(ordered),
                                     on_created=lambda columns: target.set_result(MSTarget(rows, columns)),
                                     collect=lambda columns: [part for f in futures for part in f.result()])
        except BaseException as exc:
            stop.set()  # workers stop before their next subband; their writes end before we return
            if not target.done():
                target.set_exception(exc)
            pool.shutdown(cancel_futures=True)
            raise
    _set_frequency_metadata(meta, [part.freqs_hz for part in done], [part.widths_hz for part in done])
    _write_subtables(ms_path, meta, pol_order)
    return ms_path


def _channels(path: Path) -> int:
    try:
        with h5py.File(path, "r") as h:
            return int(h["Header/Nfreqs"][()])
    except (OSError, KeyError) as exc:
        raise InvalidInputError(f"{path}: cannot read Nfreqs: {exc}") from exc


def _row_geometry(template_file: Path, *, dec_rad: float, phase_centre: PhaseCentre | None
                  ) -> tuple[UVData, list, RowGeometry]:
    """The group's metadata, CASA polarisation order and row operations, from one file's metadata."""
    geometry = group_geometry(template_file, dec_rad=dec_rad, phase_centre=phase_centre)
    meta = geometry.meta
    pol_order = determine_pol_order(meta.polarization_array, order="CASA")
    rows = RowGeometry(geometry.raw_time, geometry.raw_ant1, geometry.raw_ant2, meta.polarization_array,
                       np.asarray(pol_order), geometry.delta_w_m, geometry.conjugated, geometry.order)
    return meta, pol_order, rows


def _write_main_table(meta: UVData, rows: RowGeometry, ms_path: Path, n_spw: int, *,
                      on_created: Callable[[dict[str, ColumnFile]], None],
                      collect: Callable[[dict[str, ColumnFile]], list[SubbandRows]]) -> list[SubbandRows]:
    """Create the MS and write its per-row columns; the SPWs' bulk columns come from the workers.

    ``on_created(columns)`` hands the directly written column files to the
    workers as soon as the MS exists; ``collect(columns)``, called once the
    per-row columns are written, waits for every SPW's block to be in those
    files and returns the SPWs (whose unwritten columns are put here).
    """
    nblts = meta.Nblts
    per_row = _row_columns(meta, n_spw=n_spw)
    incremental = {col: per_row.pop(col) for col in list(per_row) if col in INCREMENTAL_COLUMNS}
    with create_ms(ms_path, n_pol=meta.Npols, n_chan=meta.Nfreqs, n_rows=nblts * n_spw,
                   incremental=incremental) as ms:
        columns = direct_column_files(ms)
        on_created(columns)
        for col, values in per_row.items():
            ms.putcol(col, values)
        ms.putcolkeyword("DATA", "QuantumUnits", meta.vis_units)
        ms.putkeyword("pyuvdata_flip_conj", True)
        done = sorted(collect(columns), key=lambda part: part.spw)
        for part in done:
            for col, values in part.unwritten.items():
                ms.putcol(col, values, part.spw * nblts, nblts)
    return done


def _write_scattered(jobs: list[SubbandJob], template_file: Path, ms_path: Path,
                     submit: Callable[[ScratchJob], SupportsResult], *, dec_rad: float,
                     phase_centre: PhaseCentre | None) -> Path:
    """:func:`write_direct_subband` with each subband converted by ``submit`` (:mod:`.subband_scratch`)."""
    meta, pol_order, rows = _row_geometry(template_file, dec_rad=dec_rad, phase_centre=phase_centre)
    scratch = ms_path.parent / f"{ms_path.stem}.subbands"
    scratch.mkdir()
    geometry = save_geometry(rows, scratch / "geometry.npz")
    futures = []
    try:
        for job in jobs:
            futures.append(submit(ScratchJob(job, geometry, scratch_columns(scratch, job.spw, n_chan=meta.Nfreqs,
                                                                            n_pol=meta.Npols))))
        # The MS is created while the workers convert; the blocks are copied in as they finish, in SPW order.
        done = _write_main_table(meta, rows, ms_path, len(jobs), on_created=lambda columns: None,
                                 collect=lambda columns: assemble((f.result() for f in futures), columns,
                                                                  meta.Nblts))
    except BaseException:
        # Every submitted subband must have stopped before the scratch directory goes: a
        # retry of this group recreates the same paths, which a late worker would overwrite.
        for future in futures:
            try:
                future.result()
            except BaseException:  # noqa: BLE001 - the first error is the one being raised
                pass
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _set_frequency_metadata(meta, [part.freqs_hz for part in done], [part.widths_hz for part in done])
    _write_subtables(ms_path, meta, pol_order)
    return ms_path


def _row_columns(uv: UVData, *, n_spw: int) -> dict[str, np.ndarray]:
    """The per-row columns of every SPW block (the same rows repeated per SPW), in MS storage types."""
    nblts = uv.Nblts
    times = Time(uv.time_array, format="jd", scale="utc").mjd * 86400.0
    field_ids = np.empty(nblts, dtype=np.int32)
    for index, cat_id in enumerate(uv.phase_center_catalog):
        field_ids[uv.phase_center_id_array == cat_id] = index
    scan = np.ones(nblts, dtype=np.int32) if uv.scan_number_array is None else uv.scan_number_array
    per_block = {
        "ANTENNA1": uv.ant_1_array.astype(np.int32),
        "ANTENNA2": uv.ant_2_array.astype(np.int32),
        "INTERVAL": uv.integration_time,
        "EXPOSURE": uv.integration_time,
        "SCAN_NUMBER": np.asarray(scan, dtype=np.int32),
        "TIME": times,
        "TIME_CENTROID": times,
        "UVW": -uv.uvw_array,  # pyuvdata flip_conj convention
        "FIELD_ID": field_ids,
    }
    columns = {col: np.tile(values, (n_spw, 1) if values.ndim == 2 else n_spw) for col, values in per_block.items()}
    columns["DATA_DESC_ID"] = np.repeat(np.arange(n_spw, dtype=np.int32), nblts)
    return columns


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
        ms.putcol("SIGMA", sigma_from_weight(ms.getcol("WEIGHT")))
    return Path(ms_path)


def _add_imaging_columns(ms_path: Path) -> None:
    """Add MODEL_DATA and CORRECTED_DATA, preallocated (zero) in every row, as the direct writer lays them out.

    CASA solvers fail on a column with rows that hold no array ("TSM: no array
    in row"), the original pipeline's most common calibration failure; a
    fixed-shape tiled column has an array in every row from the start.
    """
    with tables.table(str(ms_path), readonly=False, ack=False) as ms:
        n_chan, n_pol = ms.getcell("DATA", 0).shape
        for col in _IMAGING_COLUMNS:
            if col not in ms.colnames():
                ms.addcols(*array_column(col, n_pol=n_pol, n_chan=n_chan))


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
