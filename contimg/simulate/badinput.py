"""Bad-input generators for the converter's robustness tests.

Each function damages or rearranges files of a simulated group the way the real
system does: a subband that never arrives, a file cut short, a file still being
written, a header with the declination in degrees, the same subband written
twice, a subband arriving late, and a group whose timestamps straddle the
grouping tolerance.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np

from contimg import naming


def drop_subband(group, subband: int) -> Path:
    """Delete one subband file of a :class:`~contimg.simulate.SimulatedGroup`; returns its path."""
    path = group.paths[list(group.subbands).index(subband)]
    path.unlink()
    return path


def truncate_file(path, *, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes (an interrupted copy); returns the path."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * fraction))
    return path


@dataclass
class GrowingFile:
    """A file being written: the first part is on disk, :meth:`finish` writes the rest.

    Attributes
    ----------
    path : pathlib.Path
        The partially written file (recent mtime).
    """

    path: Path
    _rest: bytes

    @property
    def finished(self) -> bool:
        return not self._rest

    def grow(self, nbytes: int) -> None:
        """Append the next ``nbytes`` (the writer makes progress)."""
        chunk, self._rest = self._rest[:nbytes], self._rest[nbytes:]
        with open(self.path, "ab") as fh:
            fh.write(chunk)

    def finish(self) -> Path:
        """Write everything that is left; the file is then byte-identical to the source."""
        self.grow(len(self._rest))
        return self.path


def start_growing_copy(source, dest, *, fraction: float = 0.3) -> GrowingFile:
    """Write the first ``fraction`` of ``source`` to ``dest`` and return a handle to finish it.

    Parameters
    ----------
    source : path-like
        A complete file (e.g. a simulated subband, moved aside first).
    dest : path-like
        Where the growing file appears (typically the original name).
    fraction : float
        Part written now.
    """
    data = Path(source).read_bytes()
    cut = int(len(data) * fraction)
    dest = Path(dest)
    dest.write_bytes(data[:cut])
    return GrowingFile(dest, data[cut:])


def set_dec_in_degrees(path) -> float:
    """Rewrite ``extra_keywords/phase_center_dec`` in degrees (the unit bug); returns the value."""
    with h5py.File(path, "r+") as fh:
        extra = fh["Header"]["extra_keywords"]
        value = float(np.degrees(extra["phase_center_dec"][()]))
        del extra["phase_center_dec"]
        extra["phase_center_dec"] = value
    return value


def _shifted_name(path: Path, offset_s: float) -> str:
    stamp, sb = naming.parse_subband_filename(path)
    when = naming.parse_group_id(stamp) + timedelta(seconds=offset_s)
    return naming.subband_filename(naming.group_id_from_datetime(when), sb)


def duplicate_subband(path, *, offset_s: float = 1.0, dest_dir=None) -> Path:
    """Copy a subband file under a timestamp ``offset_s`` later (the same subband twice).

    Returns the new path (in ``dest_dir``, default the same directory).
    """
    path = Path(path)
    dest = Path(dest_dir or path.parent) / _shifted_name(path, offset_s)
    shutil.copy2(path, dest)
    os.utime(dest)
    return dest


@dataclass
class LateFile:
    """A subband held back; :meth:`deliver` puts it in place with a fresh mtime."""

    held: Path
    final: Path

    def deliver(self) -> Path:
        shutil.move(self.held, self.final)
        now = time.time()
        os.utime(self.final, (now, now))
        return self.final


def withhold(path, holding_dir) -> LateFile:
    """Move a subband out of the incoming directory until :meth:`LateFile.deliver`."""
    path = Path(path)
    holding = Path(holding_dir)
    holding.mkdir(parents=True, exist_ok=True)
    held = holding / path.name
    shutil.move(path, held)
    return LateFile(held, path)


def straddling_group(out_dir, start, *, offset_s: float = 45.0, late_subbands=range(8, 16), **kwargs):
    """Simulate a group whose later subbands are stamped ``offset_s`` after the group id.

    With the default 45 s and a 30 s grouping tolerance, sb08..sb15 fall outside
    the tolerance window of sb00's timestamp. Keyword arguments go to
    :func:`contimg.simulate.simulate_group`; returns its :class:`SimulatedGroup`.
    """
    from contimg.simulate.group import simulate_group

    late = set(late_subbands)
    jitter = [offset_s if sb in late else 0.0 for sb in range(16)]
    return simulate_group(out_dir, start, jitter_s=jitter, **kwargs)
