"""Writing a contiguous byte range of a column file, mostly past the page cache.

The direct writer's workers put a full group's DATA and WEIGHT_SPECTRUM, 3 GB,
straight into the MS's column files (:mod:`.ms_layout`), and nothing reads them
back until the validation gate and calibration. Through the page cache, every new
page costs the kernel an allocation and a copy: 0.3 s of CPU per GB when free
memory is warm, up to 2.6 s per GB on this VM when it is not (its free memory
goes back to the host), on two cores that are busy converting. ``O_DIRECT``
writes go from the worker's buffer to the device: 0.03 s of CPU per GB
(1.4 GB/s here), so the cores convert instead of filling the page cache.

``O_DIRECT`` needs the file offset, the length and the buffer address aligned to
the device's block; :data:`ALIGN` (one page) suits every Linux filesystem that
offers it. A range rarely starts and ends on a page boundary, so:

* its whole pages go out with ``O_DIRECT``, block by block as the caller marks
  them final, from a background thread while the caller computes the next block;
* the partial pages at either end, which it shares with the neighbouring range
  (another worker's spectral window), go through the page cache when the range
  is closed. No page is ever written both ways, or with ``O_DIRECT`` by two
  writers.

Where ``O_DIRECT`` is refused (tmpfs) or the buffer is not aligned like the file
offset, every byte goes through the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: Alignment of ``O_DIRECT`` offsets, lengths and buffer addresses, bytes.
ALIGN = 4096

#: Per calling thread: its writer thread, and its reusable buffers (the converter runs several).
_local = threading.local()


def _thread() -> ThreadPoolExecutor:
    if getattr(_local, "writer", None) is None:
        _local.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="column-io")
    return _local.writer


def aligned_array(name: str, shape: tuple[int, ...], dtype, *, file_offset: int) -> np.ndarray:
    """An array whose address is aligned like ``file_offset`` (mod :data:`ALIGN`), reused per ``name``.

    The memory is an anonymous mapping kept for the life of the calling thread
    and reused by its next call with the same ``name`` (first-touch page faults
    of a fresh 130 MB array cost more on this VM than the arithmetic done in it).

    Parameters
    ----------
    name : str
        Which reusable buffer; a larger request replaces it.
    shape, dtype
        Of the array.
    file_offset : int
        Byte offset in the file where the array's first byte will be written.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    arenas = _local.__dict__.setdefault("arenas", {})
    arena = arenas.get(name)
    if arena is None or len(arena) < nbytes + ALIGN:
        arena = arenas[name] = mmap.mmap(-1, nbytes + ALIGN)  # the old one goes with its last array
    phase = file_offset % ALIGN
    return np.frombuffer(arena, dtype=np.uint8, count=nbytes, offset=phase).view(dtype).reshape(shape)


def _pwrite_all(fd: int, buffer: memoryview, offset: int) -> None:
    while buffer:
        written = os.pwrite(fd, buffer, offset)
        buffer, offset = buffer[written:], offset + written


class RangeWriter:
    """Writes ``buffer`` to bytes ``[offset, offset + buffer.nbytes)`` of an existing file.

    Mark bytes final with :meth:`flush_upto` as they are computed, then
    :meth:`finish` (write the rest, wait, raise the first error of any write) or
    :meth:`abort`; the buffer must not change until then. As a context manager,
    leaving the block finishes (or aborts, on an exception).

    Parameters
    ----------
    path : Path
        The file (it is not created or truncated).
    offset : int
        Where ``buffer``'s first byte goes, bytes.
    buffer : numpy.ndarray
        C-contiguous; :func:`aligned_array` makes one that can go out with ``O_DIRECT``.
    """

    def __init__(self, path: Path, offset: int, buffer: np.ndarray):
        if not buffer.flags.c_contiguous:
            raise ValueError(f"{path}: the buffer of a RangeWriter must be C-contiguous (it is written as it fills)")
        self.path = Path(path)
        self.offset = int(offset)
        self.bytes = memoryview(buffer.reshape(-1).view(np.uint8))
        self.end = self.offset + len(self.bytes)
        self.direct_bytes = 0  # written with O_DIRECT (for tests and curiosity)
        self._fd = os.open(self.path, os.O_WRONLY)
        self._direct_fd = -1
        address = np.frombuffer(self.bytes, np.uint8).ctypes.data
        if (address - self.offset) % ALIGN == 0:
            try:
                self._direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    os.close(self._fd)
                    raise
        # Whole pages inside the range: [first page boundary, last page boundary).
        self._direct_start = -(-self.offset // ALIGN) * ALIGN
        self._direct_end = max(self._direct_start, self.end // ALIGN * ALIGN)
        self._next = self._direct_start  # first whole-page byte not yet submitted
        self._pending: list[Future] = []

    def __enter__(self) -> "RangeWriter":
        return self

    def flush_upto(self, n_bytes: int) -> None:
        """The first ``n_bytes`` of the buffer are final: write their whole pages in the background."""
        stop = min(self._direct_end, (self.offset + n_bytes) // ALIGN * ALIGN)
        if stop > self._next:
            self._pending.append(_thread().submit(self._write, self._next, stop, direct=True))
            self._next = stop

    def _write(self, start: int, stop: int, *, direct: bool) -> None:
        chunk = self.bytes[start - self.offset:stop - self.offset]
        try:
            if direct and self._direct_fd >= 0:
                try:
                    _pwrite_all(self._direct_fd, chunk, start)
                    self.direct_bytes += stop - start
                    return
                except OSError as exc:  # refused after all (e.g. a stricter alignment): use the page cache
                    if exc.errno != errno.EINVAL:
                        raise
            _pwrite_all(self._fd, chunk, start)
        except OSError as exc:  # say where (a full disk, an I/O error)
            raise OSError(exc.errno, f"writing bytes {start}-{stop} of {self.path}: {exc.strerror}") from exc

    def _wait(self) -> BaseException | None:
        """Wait for every submitted write; the first error, if any."""
        first = None
        for future in self._pending:
            try:
                future.result()
            except BaseException as error:  # noqa: BLE001 - reported by the caller once all writes have ended
                first = first or error
        self._pending = []
        return first

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._fd = self._direct_fd = -1

    def finish(self) -> None:
        """Write what is left (the partial pages at the ends through the page cache), wait, close; raise any error."""
        if self._fd < 0:
            return
        try:
            self.flush_upto(len(self.bytes))
            error = self._wait()
            if error is not None:
                raise error
            self._write(self.offset, min(self._direct_start, self.end), direct=False)
            self._write(max(self._direct_end, self._direct_start, self.offset), self.end, direct=False)
        finally:
            self._close()

    def abort(self) -> None:
        """Wait for the writes already submitted (the buffer must outlive them) and close, writing nothing more."""
        if self._fd < 0:
            return
        try:
            self._wait()
        finally:
            self._close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
