"""One subband's Measurement Set rows, for the ``direct-subband`` writer's worker threads.

A worker reads a UVH5 subband with h5py, applies to the arrays exactly what
:func:`~contimg.conversion.subband.prepare_subband` makes pyuvdata do (w-term
rephasing, conjugation to ant1 <= ant2, row order, ascending channels), then the
MS convention (conjugate, CASA polarisation order), in one compiled pass over
the data (:func:`ms_rows`: numba, ``nogil``, cached on disk next to this file),
and writes the bulk columns of its spectral-window block (DATA, WEIGHT_SPECTRUM
= nsamples, FLAG, WEIGHT, SIGMA) straight into the MS, block by block, mostly
with ``O_DIRECT`` (:mod:`.column_io`). h5py's reads, the compiled pass and the
writes all run without the GIL, so threads work in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import h5py
import numba
import numpy as np

from contimg.conversion.column_io import RangeWriter, aligned_array
from contimg.conversion.ms_layout import DIRECT_COLUMNS, ColumnFile
from contimg.errors import InvalidInputError

#: Speed of light, m/s (exact, SI).
C_M_S = 299_792_458.0

#: DATA bytes computed per block before its pages are handed to the writer thread.
BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class RowGeometry:
    """The frequency-independent row operations shared by every subband of a group.

    Attributes
    ----------
    time_jd, ant1, ant2 : numpy.ndarray
        Row axis as stored in the files; every subband must match it.
    pols : numpy.ndarray
        AIPS polarisation codes as stored in the files.
    pol_order : numpy.ndarray
        Index order that puts ``pols`` in CASA order.
    delta_w_m : numpy.ndarray
        ``w_new - w_old`` per raw row, metres (all 0 without rephasing).
    conjugated : numpy.ndarray of bool
        Raw rows conjugated to ant1 <= ant2.
    order : numpy.ndarray of int
        Row permutation applied after conjugation.
    """

    time_jd: np.ndarray
    ant1: np.ndarray
    ant2: np.ndarray
    pols: np.ndarray
    pol_order: np.ndarray
    delta_w_m: np.ndarray
    conjugated: np.ndarray
    order: np.ndarray


@dataclass(frozen=True)
class SubbandRows:
    """What a worker hands back for one SPW: its frequency axis, and the columns it could not write.

    Attributes
    ----------
    spw : int
        The spectral window.
    freqs_hz, widths_hz : numpy.ndarray
        Channel frequencies (ascending) and widths (positive), Hz.
    unwritten : dict of str to numpy.ndarray
        Columns of :data:`.ms_layout.DIRECT_COLUMNS` the MS cannot take directly
        (FLAG when a row is not whole bytes), MS row order: the parent puts them.
    """

    spw: int
    freqs_hz: np.ndarray
    widths_hz: np.ndarray
    unwritten: dict[str, np.ndarray]


@dataclass(frozen=True)
class SubbandJob:
    """One subband for a worker: where it comes from and where its rows go.

    Attributes
    ----------
    spw : int
        Spectral window; its rows start at ``spw * Nblts``.
    path : Path
        The subband file (for a stand-in, any file of the group: only its shape is used).
    stand_in : (freqs_hz, widths_hz), optional
        Write a fully flagged, zero-weight stand-in with these channel
        frequencies and widths (Hz) instead of the file's data: a missing subband.
    label : str
        How to name this subband in errors.
    """

    spw: int
    path: Path
    stand_in: tuple[np.ndarray, np.ndarray] | None
    label: str


#: (array name, dataset under Data/, type read into). HDF5 converts on read, so
#: whatever the file stores (nsamples as float16, visibilities as complex128)
#: reaches the compiled pass, which has no float16, in the types it is built for.
_DATASETS = (("vis", "visdata", np.complex64), ("flags", "flags", np.bool_), ("nsamples", "nsamples", np.float32))

#: Arrays reused from one subband to the next by a worker thread. First-touch
#: page faults of fresh 130 MB arrays cost more here than the arithmetic on them.
_local = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (name, tuple(shape), np.dtype(dtype).str)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype=dtype)
    return buffers[key]


def read_rows(path: Path) -> dict[str, np.ndarray]:
    """The row axis, frequencies and data arrays of one subband file, read with h5py.

    The data arrays are (Nblts, Nfreqs, Npols) views of buffers that the next
    call reuses.

    Raises
    ------
    InvalidInputError
        The file is not a readable DSA-110 UVH5 subband (truncated, missing datasets).
    """
    try:
        with h5py.File(path, "r") as h:
            hdr = h["Header"]
            out = {name: np.asarray(hdr[name][()]) for name in
                   ("time_array", "ant_1_array", "ant_2_array", "freq_array", "channel_width", "polarization_array")}
            for name, key, dtype in _DATASETS:
                dset = h["Data"][key]
                if dset.dtype.names:  # integer-valued visibilities stored as a compound type
                    raw = dset[()]
                    out[name] = (raw["r"] + 1j * raw["i"]).astype(np.complex64)
                else:
                    out[name] = _buffer(name, dset.shape, dtype)
                    dset.read_direct(out[name])
    except (OSError, KeyError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as a DSA-110 UVH5 subband: {exc}") from exc
    for name, _, _ in _DATASETS:
        array = out[name]
        out[name] = array.reshape(array.shape[0], array.shape[-2], array.shape[-1])  # drop a legacy spw axis
    out["freq_array"] = out["freq_array"].ravel()
    try:
        out["channel_width"] = np.broadcast_to(out["channel_width"], out["freq_array"].shape)
    except ValueError:
        raise InvalidInputError(f"{path}: Header/channel_width has shape {np.shape(out['channel_width'])}, "
                                f"freq_array {out['freq_array'].shape}") from None
    if out["vis"].shape[1] != out["freq_array"].size:
        raise InvalidInputError(f"{path}: Data/visdata has {out['vis'].shape[1]} channels, "
                                f"Header/freq_array {out['freq_array'].size}")
    return out


@numba.njit(cache=True, nogil=True)
def _ms_rows(vis, flags, nsamples, rows, conjugated, alpha, chans, freqs, uniform, pols, pols_conj,
             start, stop, data, weight_spectrum, flag, weight):  # pragma: no cover - compiled
    """MS rows ``start:stop`` of one subband, in one pass (see :func:`ms_rows` for the arguments).

    Per MS row ``r`` from raw row ``i = rows[r]``: the w-phasor
    ``exp(i alpha_i nu)`` (a geometric series over equally spaced channels,
    in double precision), conjugation (rows not conjugated to ant1 <= ant2 get
    the MS convention's conjugate; conjugated ones cancel it, with XY and YX
    swapped), ascending channels, CASA polarisation order, and the row WEIGHT
    (median over channels, skipping the sort when the channels agree).
    """
    n_chan, n_pol = chans.size, pols.size
    for r in range(start, stop):
        i = rows[r]
        a = alpha[i]
        conj = conjugated[i]
        pol_map = pols_conj if conj else pols
        phasor = np.exp(1j * a * freqs[0])
        step = np.exp(1j * a * (freqs[1] - freqs[0])) if uniform and n_chan > 1 else 1.0 + 0.0j
        for c in range(n_chan):
            if c > 0:
                phasor = phasor * step if uniform else np.exp(1j * a * freqs[c])
            k = chans[c]
            for p in range(n_pol):
                q = pol_map[p]
                value = vis[i, k, q] * phasor
                data[r, c, p] = value if conj else value.conjugate()
                weight_spectrum[r, c, p] = nsamples[i, k, q]
                flag[r, c, p] = flags[i, k, q]
        for p in range(n_pol):
            first = weight_spectrum[r, 0, p]
            same = True
            for c in range(1, n_chan):
                if weight_spectrum[r, c, p] != first:
                    same = False
                    break
            weight[r, p] = first if same else np.median(weight_spectrum[r, :, p])


@dataclass(frozen=True)
class _SubbandMaps:
    """Index maps of one subband for :func:`_ms_rows`."""

    alpha: np.ndarray  # -2 pi delta_w / c per raw row, rad/Hz
    chans: np.ndarray  # raw channel of each output channel (ascending frequency)
    freqs: np.ndarray  # frequency of each output channel, Hz
    uniform: bool  # equally spaced output channels
    pols: np.ndarray  # raw polarisation of each output (CASA-order) polarisation
    pols_conj: np.ndarray  # the same for rows conjugated to ant1 <= ant2 (XY and YX swapped)


def _subband_maps(freqs_hz: np.ndarray, pols_aips: np.ndarray, geometry: RowGeometry) -> _SubbandMaps:
    chans = np.argsort(freqs_hz, kind="stable")
    freqs = np.asarray(freqs_hz, dtype=float)[chans]
    steps = np.diff(freqs)
    # The series is exact to ~1e-12 over a subband only for equal steps (DSA-110's channels are).
    uniform = bool(freqs.size < 2 or np.allclose(steps, steps[0], rtol=1e-9, atol=0))
    swap = np.arange(len(pols_aips))
    codes = list(pols_aips)
    if -7 in codes and -8 in codes:  # conjugation swaps XY and YX
        xy, yx = codes.index(-7), codes.index(-8)
        swap[xy], swap[yx] = yx, xy
    pols = np.asarray(geometry.pol_order, dtype=np.int64)
    alpha = (-2 * np.pi / C_M_S) * np.asarray(geometry.delta_w_m, dtype=float)
    return _SubbandMaps(alpha, chans.astype(np.int64), freqs, uniform, pols, swap[pols])


def ms_rows(vis: np.ndarray, flags: np.ndarray, nsamples: np.ndarray, freqs_hz: np.ndarray,
            pols_aips: np.ndarray, geometry: RowGeometry, *, out: dict[str, np.ndarray] | None = None,
            block_rows: int | None = None, on_block: Callable[[int, int], None] | None = None,
            ) -> dict[str, np.ndarray]:
    """One subband's MS rows from its raw arrays (what the workers write).

    Parameters
    ----------
    vis, flags, nsamples : numpy.ndarray
        (Nblts, Nfreqs, Npols) as stored in the file.
    freqs_hz : numpy.ndarray
        The file's channel frequencies, Hz, in stored order.
    pols_aips : numpy.ndarray
        The file's polarisation codes (AIPS convention).
    geometry : RowGeometry
        The group's row operations.
    out : dict, optional
        DATA, WEIGHT_SPECTRUM, FLAG (Nrows, Nchan, Npol) and WEIGHT (Nrows, Npol)
        arrays to fill (default: new ones).
    block_rows : int, optional
        Fill the rows in blocks of this many (default: all at once)...
    on_block : callable, optional
        ... calling ``on_block(first, last)`` when rows ``first:last`` are final.

    Returns
    -------
    dict of str to numpy.ndarray
        ``out``, MS row order, channels ascending, CASA polarisation order;
        DATA follows the MS convention (conjugate of the UVH5 visibilities).
    """
    n_rows, n_chan, n_pol = geometry.order.size, vis.shape[1], vis.shape[2]
    if out is None:
        out = {"DATA": np.empty((n_rows, n_chan, n_pol), np.complex64),
               "WEIGHT_SPECTRUM": np.empty((n_rows, n_chan, n_pol), np.float32),
               "FLAG": np.empty((n_rows, n_chan, n_pol), bool),
               "WEIGHT": np.empty((n_rows, n_pol), np.float32)}
    maps = _subband_maps(freqs_hz, pols_aips, geometry)
    step = block_rows or n_rows
    for first in range(0, n_rows, step):
        last = min(first + step, n_rows)
        _ms_rows(vis, flags, nsamples, geometry.order, geometry.conjugated, maps.alpha, maps.chans, maps.freqs,
                 maps.uniform, maps.pols, maps.pols_conj, first, last,
                 out["DATA"], out["WEIGHT_SPECTRUM"], out["FLAG"], out["WEIGHT"])
        if on_block is not None:
            on_block(first, last)
    return out


def sigma_from_weight(weight: np.ndarray) -> np.ndarray:
    """SIGMA = WEIGHT^-1/2, and 0 where the weight is 0 (flagged stand-in rows)."""
    sigma = np.zeros_like(weight)
    np.power(weight, -0.5, where=weight > 0, out=sigma)
    return sigma


@dataclass(frozen=True)
class MSTarget:
    """What the workers need once the MS exists: the group's row operations and where the columns go."""

    geometry: RowGeometry
    columns: dict[str, ColumnFile]


def _read_job(job: SubbandJob) -> dict[str, np.ndarray]:
    raw = read_rows(job.path)
    if job.stand_in is not None:
        raw["freq_array"], raw["channel_width"] = job.stand_in
        raw["vis"][:] = 0
        raw["flags"][:] = True
        raw["nsamples"][:] = 0
    return raw


def _check_rows(raw: dict[str, np.ndarray], job: SubbandJob, target: MSTarget) -> None:
    """The subband fits the group's MS: the same rows, polarisations and number of channels."""
    geometry, cell = target.geometry, target.columns["DATA"].cell_shape
    if raw["vis"].shape[1:] != cell:
        raise InvalidInputError(f"{job.label}: {raw['vis'].shape[1]} channels x {raw['vis'].shape[2]} "
                                f"polarisations, but the group's other subbands have {cell[0]} x {cell[1]}")
    if not (np.array_equal(raw["time_array"], geometry.time_jd) and np.array_equal(raw["ant_1_array"], geometry.ant1)
            and np.array_equal(raw["ant_2_array"], geometry.ant2)
            and np.array_equal(raw["polarization_array"], geometry.pols)):
        raise InvalidInputError(f"{job.label}: times, baselines or polarisations differ from the group's other "
                                "subbands; it does not belong to this group")


def _start_subband(raw: dict[str, np.ndarray], job: SubbandJob, geometry: RowGeometry,
                   columns: dict[str, ColumnFile], *, slot: int) -> tuple[list[RangeWriter], dict[str, np.ndarray]]:
    """Compute one subband's rows block by block, handing each block's pages to the writer thread.

    Returns the subband's writers (still writing) and its computed columns.
    ``slot`` picks one of two sets of output buffers, so one subband can be
    computed while the previous one's writes drain.
    """
    n_rows, n_chan, n_pol = geometry.order.size, *raw["vis"].shape[1:]
    start_row = job.spw * n_rows
    shapes = {"DATA": (n_rows, n_chan, n_pol), "WEIGHT_SPECTRUM": (n_rows, n_chan, n_pol),
              "FLAG": (n_rows, n_chan, n_pol), "WEIGHT": (n_rows, n_pol), "SIGMA": (n_rows, n_pol)}
    # On-disk buffers of the direct columns; FLAG is computed as bools and stored as bits.
    disk = {name: aligned_array(f"{name}-{slot}", (n_rows * column.row_bytes,), np.uint8,
                                file_offset=column.offset(start_row)) for name, column in columns.items()}
    out = {}
    for name in shapes:
        if name in columns and not columns[name].bits:
            out[name] = disk[name].view(DIRECT_COLUMNS[name]).reshape(shapes[name])
        else:
            out[name] = _buffer(f"{name}-{slot}", shapes[name], DIRECT_COLUMNS[name])
    writers: list[RangeWriter] = []
    try:
        for name, column in columns.items():
            writers.append(RangeWriter(column.path, column.offset(start_row), disk[name]))

        def write_block(first: int, last: int) -> None:
            out["SIGMA"][first:last] = sigma_from_weight(out["WEIGHT"][first:last])
            for name, writer in zip(columns, writers):
                column = columns[name]
                if column.bits:
                    column.encode(out[name][first:last],
                                  out=disk[name][first * column.row_bytes:last * column.row_bytes])
                writer.flush_upto(last * column.row_bytes)

        ms_rows(raw["vis"], raw["flags"], raw["nsamples"], raw["freq_array"], raw["polarization_array"], geometry,
                out=out, block_rows=max(1, BLOCK_BYTES // (n_chan * n_pol * 8)), on_block=write_block)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return writers, out


def write_subbands(jobs: list[SubbandJob], *, target: MSTarget | Future,
                   stop: threading.Event | None = None) -> list[SubbandRows]:
    """Worker: convert subbands in turn, writing their rows straight into the MS.

    The first subband is read before the MS exists (``target`` may be a Future
    that the caller resolves once it has built it). Each subband is computed in
    blocks of about :data:`BLOCK_BYTES` of DATA whose whole pages go out with
    ``O_DIRECT`` (:mod:`.column_io`) while the next block is computed, and the
    next subband is read while the last writes of the previous one drain: the
    disk and the CPU stay busy together.

    Parameters
    ----------
    jobs : list of SubbandJob
        The subbands, in the order to do them.
    target : MSTarget or Future of MSTarget
        The group's row operations and the MS's directly written columns
        (:func:`.ms_layout.direct_column_files`).
    stop : threading.Event, optional
        When set (another worker failed), no further subband is started.
    """
    results = []
    draining: list[RangeWriter] = []  # the previous subband's writers
    try:
        for index, job in enumerate(jobs):
            if stop is not None and stop.is_set():
                break
            raw = _read_job(job)
            if isinstance(target, Future):
                target = target.result()
            _check_rows(raw, job, target)
            writers, out = _start_subband(raw, job, target.geometry, target.columns, slot=index % 2)
            for writer in draining:
                writer.finish()
            draining = writers
            order = np.argsort(raw["freq_array"], kind="stable")
            unwritten = {name: out[name].copy() for name in out if name not in target.columns}
            results.append(SubbandRows(job.spw, np.asarray(raw["freq_array"], dtype=float)[order],
                                       np.abs(raw["channel_width"][order]), unwritten))
        for writer in draining:
            writer.finish()
        draining = []
    finally:
        for writer in draining:
            writer.abort()
    return results
