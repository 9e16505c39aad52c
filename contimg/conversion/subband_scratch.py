"""Subbands converted in other processes or on other machines, through scratch files.

The scale-out form of the ``direct-subband`` writer (:mod:`.writers`). A
subband's heavy work, reading its UVH5 file and computing its MS rows, runs
wherever a task runner places it (a Dask worker on any node that mounts the
group's scratch directory), and the Measurement Set is still created and
written by the one process that converts the group:

1. The converting process computes the group's row geometry once and saves it
   in the group's scratch directory (:func:`save_geometry`, a few MB of .npz):
   workers get paths, never the arrays.
2. Each :class:`ScratchJob` runs :func:`convert_subband` on a worker: the same
   worker function the thread path runs (:func:`.subband_rows.write_subbands`:
   same reads, same compiled pass, same encoding, same ``O_DIRECT`` writes), but
   into sparse scratch files laid out exactly like the MS's column files, at the
   same byte offsets (:func:`scratch_columns`). Only that SPW's block is written;
   the rest of the file is a hole.
3. The converting process creates the MS meanwhile, then copies each SPW's byte
   range from the scratch files into the MS's column files
   (:func:`assemble`, ``copy_file_range``: done by the kernel, by the NFS 4.2
   server without crossing the network, or as reflinks on XFS/Btrfs). The bytes
   are the workers' bytes, so the MS is bit for bit the thread path's.

Each worker writes only its own files and closes them before its task returns,
so with NFS's close-to-open consistency the converting process, which opens them
afterwards, reads what the worker wrote. Concurrent writers never share a page,
unlike writing every SPW into the MS's own files from several machines would
(two SPWs meet inside a page).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from contimg.conversion.ms_layout import DIRECT_COLUMNS, ColumnFile
from contimg.conversion.subband_rows import MSTarget, RowGeometry, SubbandJob, SubbandRows, write_subbands

#: Bytes per ``copy_file_range`` call (and per read of the fallback copy).
COPY_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class ScratchJob:
    """One subband for a worker that may be on another machine.

    Attributes
    ----------
    job : SubbandJob
        The subband and its SPW, as the thread path gets it.
    geometry : Path
        The group's :class:`~.subband_rows.RowGeometry` (:func:`save_geometry`).
    columns : dict of str to ColumnFile
        Scratch files for the SPW's block of each directly written column
        (:func:`scratch_columns`).
    """

    job: SubbandJob
    geometry: Path
    columns: dict[str, ColumnFile]


@dataclass(frozen=True)
class ScratchResult:
    """What a worker hands back: paths and the SPW's small metadata, never the rows.

    Attributes
    ----------
    spw : int
        The spectral window.
    freqs_hz, widths_hz : numpy.ndarray
        Channel frequencies (ascending) and widths (positive), Hz.
    columns : dict of str to ColumnFile
        The scratch files now holding the SPW's block of each column.
    unwritten : dict of str to Path
        ``.npy`` files of the columns the MS cannot take as bytes (FLAG when a row
        is not whole bytes), MS row order: the converting process puts them.
    host : str
        Where the work ran.
    pid : int
        The worker's process id.
    seconds : float
        Wall time of the work, s.
    """

    spw: int
    freqs_hz: np.ndarray
    widths_hz: np.ndarray
    columns: dict[str, ColumnFile]
    unwritten: dict[str, Path]
    host: str
    pid: int
    seconds: float


class SupportsResult(Protocol):
    """A future of :func:`convert_subband` (``concurrent.futures``, Prefect, Dask)."""

    def result(self) -> ScratchResult:
        """Wait for the work; its return value, or its exception raised."""


_GEOMETRY_FIELDS = ("time_jd", "ant1", "ant2", "pols", "pol_order", "delta_w_m", "conjugated", "order")


def save_geometry(rows: RowGeometry, path: Path) -> Path:
    """Write the group's row operations to ``path`` (uncompressed .npz: exact, and read fast)."""
    path = Path(path)
    with open(path, "wb") as handle:  # a file object: np.savez would add ".npz" to a name without it
        np.savez(handle, **{name: np.asarray(getattr(rows, name)) for name in _GEOMETRY_FIELDS})
    return path


def load_geometry(path: Path) -> RowGeometry:
    """The :class:`~.subband_rows.RowGeometry` saved by :func:`save_geometry`."""
    with np.load(path, allow_pickle=False) as saved:
        return RowGeometry(**{name: saved[name] for name in _GEOMETRY_FIELDS})


def scratch_columns(directory: Path, spw: int, *, n_chan: int, n_pol: int) -> dict[str, ColumnFile]:
    """Scratch files for one SPW, one per directly written column, laid out like the MS's.

    The cell shapes and element types are those :func:`.ms_layout.direct_column_files`
    finds in an MS made by :func:`.ms_layout.create_ms` with ``n_chan`` and
    ``n_pol`` (:func:`assemble` checks that they agree); FLAG is left out when a
    row is not whole bytes, as it is there.

    Parameters
    ----------
    directory : Path
        The group's scratch directory for subbands (shared by every worker).
    spw : int
        The spectral window.
    n_chan, n_pol : int
        Channels and polarisations per row.
    """
    out = {}
    for name, dtype in DIRECT_COLUMNS.items():
        cell = (n_pol,) if name in ("WEIGHT", "SIGMA") else (n_chan, n_pol)
        if dtype == np.dtype(bool) and np.prod(cell) % 8:
            continue
        out[name] = ColumnFile(Path(directory) / f"spw{spw:02d}.{name}", dtype, cell)
    return out


def convert_subband(job: ScratchJob) -> ScratchResult:
    """Worker: convert one subband into its scratch files (see the module docstring).

    Safe to run again for the same job (a retry): the files are recreated.

    Parameters
    ----------
    job : ScratchJob
        The subband, the saved geometry and the scratch files.

    Raises
    ------
    InvalidInputError
        The subband is unreadable or does not belong to the group.
    OSError
        A write failed (a full disk), naming the file.
    """
    started = time.perf_counter()
    geometry = load_geometry(job.geometry)
    n_rows = geometry.order.size
    for column in job.columns.values():
        with open(column.path, "wb") as handle:
            handle.truncate(column.offset((job.job.spw + 1) * n_rows))  # sparse up to the SPW's block
    (rows,) = write_subbands([job.job], target=MSTarget(geometry, job.columns))
    unwritten = {}
    for name, values in rows.unwritten.items():
        path = job.geometry.parent / f"spw{rows.spw:02d}.{name}.npy"
        np.save(path, values)
        unwritten[name] = path
    return ScratchResult(rows.spw, rows.freqs_hz, rows.widths_hz, job.columns, unwritten, socket.gethostname(),
                         os.getpid(), time.perf_counter() - started)


def assemble(results: Iterable[ScratchResult], ms_columns: Mapping[str, ColumnFile], n_rows: int
             ) -> list[SubbandRows]:
    """Copy the workers' SPW blocks into the MS's column files; the SPWs as the thread path returns them.

    Parameters
    ----------
    results : iterable of ScratchResult
        One per SPW, from :func:`convert_subband`.
    ms_columns : mapping of str to ColumnFile
        The MS's directly written columns (:func:`.ms_layout.direct_column_files`).
        casacore must hold no modified tile of them.
    n_rows : int
        Rows per SPW.

    Returns
    -------
    list of SubbandRows
        With the unwritten columns loaded, for the caller to ``putcol``.

    Raises
    ------
    RuntimeError
        The scratch files are not laid out like the MS's columns.
    """
    done = []
    for result in results:
        if set(result.columns) != set(ms_columns):
            raise RuntimeError(f"SPW {result.spw}: scratch columns {sorted(result.columns)}, "
                               f"the MS takes {sorted(ms_columns)} directly")
        for name, target in ms_columns.items():
            source = result.columns[name]
            if (source.dtype, source.cell_shape) != (target.dtype, target.cell_shape):
                raise RuntimeError(f"{source.path}: {source.dtype} cells {source.cell_shape}, but "
                                   f"{target.path} has {target.dtype} cells {target.cell_shape}")
            start, stop = target.offset(result.spw * n_rows), target.offset((result.spw + 1) * n_rows)
            copy_range(source.path, target.path, start, stop - start)
            source.path.unlink()  # its disk is needed for the next group sooner than for anything else
        unwritten = {name: np.load(path) for name, path in result.unwritten.items()}
        done.append(SubbandRows(result.spw, result.freqs_hz, result.widths_hz, unwritten))
    return done


def copy_range(source: Path, destination: Path, offset: int, length: int) -> None:
    """Copy bytes ``[offset, offset + length)`` of ``source`` to the same bytes of ``destination``.

    ``copy_file_range`` lets the kernel (or the NFS server, or the filesystem's
    reflinks) move the data; where it is refused (another filesystem, an old
    kernel), a plain read and ``pwrite``.

    Raises
    ------
    OSError
        Naming the files (a full disk, a short source).
    """
    try:
        with open(source, "rb") as src, open(destination, "r+b") as dst:
            done = 0
            while done < length:
                n = min(COPY_CHUNK_BYTES, length - done)
                try:
                    copied = os.copy_file_range(src.fileno(), dst.fileno(), n, offset + done, offset + done)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    copied = _copy_plain(src.fileno(), dst.fileno(), n, offset + done)
                if copied == 0:
                    raise OSError(errno.EIO, f"{source} ends before byte {offset + length}")
                done += copied
    except OSError as exc:
        raise OSError(exc.errno, f"copying bytes {offset}-{offset + length} of {source} to {destination}: "
                                 f"{exc.strerror}") from exc


def _copy_plain(src: int, dst: int, n: int, offset: int) -> int:
    data = os.pread(src, n, offset)
    view = memoryview(data)
    at = offset
    while view:
        written = os.pwrite(dst, view, at)
        view, at = view[written:], at + written
    return len(data)
