"""Find subband files in a directory and group them into observations.

Rules (DOMAIN.md 2, with the seed's 30 s tolerance as the default setting):

* A file belongs to a group when its timestamp is within ``tolerance_s`` of the
  group's *first* file (anchor, not a sliding window: a slow trickle of files
  cannot chain two observations together).
* The group id is sb00's timestamp when sb00 is present, else the earliest.
* A group is ``ready`` when all subbands are present and none is still being
  written (size or mtime changed within ``settle_s``); ``growing`` while any is;
  ``collecting`` while subbands are missing and the group is younger than
  ``timeout_s``; ``incomplete`` after that, with the missing subbands named.
  Nothing is dropped and nothing waits forever.
* A second file for a subband already in the group is a *duplicate*: the
  earliest-timestamped file is used and the others are reported, never deleted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from contimg import naming


@dataclass(frozen=True)
class SubbandFile:
    """One correlator file as found on disk."""

    path: Path
    timestamp: datetime
    subband: int
    size: int
    mtime: float


@dataclass
class GroupCandidate:
    """A set of subband files that belong together, and what state they are in."""

    group_id: str
    files: dict[int, Path] = field(default_factory=dict)
    duplicates: list[Path] = field(default_factory=list)
    growing: list[Path] = field(default_factory=list)
    state: str = "collecting"
    missing: list[int] = field(default_factory=list)
    first_seen: float = 0.0
    """Earliest mtime among the group's files (Unix seconds)."""

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"


def scan_directory(directory: str | Path) -> list[SubbandFile]:
    """Every subband file directly under ``directory`` (other files are ignored)."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            parsed = naming.parse_subband_filename(entry.name)
            if parsed is None or not entry.is_file():
                continue
            stamp, subband = parsed
            stat = entry.stat()
            found.append(
                SubbandFile(
                    path=Path(entry.path),
                    timestamp=naming.parse_group_id(stamp),
                    subband=subband,
                    size=stat.st_size,
                    mtime=stat.st_mtime,
                )
            )
    return found


def group_files(
    files: list[SubbandFile],
    *,
    tolerance_s: float = 30.0,
    settle_s: float = 10.0,
    timeout_s: float = 600.0,
    expected_subbands: int = 16,
    now: float | None = None,
) -> list[GroupCandidate]:
    """Cluster files into groups and decide each group's state.

    Parameters
    ----------
    files : list of SubbandFile
        As returned by :func:`scan_directory`.
    tolerance_s : float
        Maximum distance in seconds between a file's timestamp and its group's first.
    settle_s : float
        A file modified less than this many seconds ago is still being written.
    timeout_s : float
        Seconds after a group's first file at which missing subbands make it
        ``incomplete`` rather than ``collecting``.
    expected_subbands : int
        Subbands in a complete group.
    now : float, optional
        Current Unix time (for tests).

    Returns
    -------
    list of GroupCandidate
        Ordered by time.
    """
    now = time.time() if now is None else now
    clusters: list[list[SubbandFile]] = []
    for f in sorted(files, key=lambda f: (f.timestamp, f.subband, str(f.path))):
        if clusters and (f.timestamp - clusters[-1][0].timestamp).total_seconds() <= tolerance_s:
            clusters[-1].append(f)
        else:
            clusters.append([f])

    groups = []
    for members in clusters:
        chosen: dict[int, SubbandFile] = {}
        duplicates = []
        for f in members:  # time order: the earliest file of a subband wins
            if f.subband in chosen:
                duplicates.append(f.path)
            else:
                chosen[f.subband] = f
        anchor = chosen.get(0, members[0])
        group = GroupCandidate(
            group_id=naming.group_id_from_datetime(anchor.timestamp),
            files={sb: f.path for sb, f in sorted(chosen.items())},
            duplicates=duplicates,
            growing=[f.path for f in chosen.values() if now - f.mtime < settle_s],
            missing=[sb for sb in range(expected_subbands) if sb not in chosen],
            first_seen=min(f.mtime for f in members),
        )
        if group.growing:
            group.state = "growing"
        elif not group.missing:
            group.state = "ready"
        elif now - group.first_seen >= timeout_s:
            group.state = "incomplete"
        else:
            group.state = "collecting"
        groups.append(group)
    return groups


def discover_groups(directory: str | Path, **kwargs) -> list[GroupCandidate]:
    """:func:`scan_directory` then :func:`group_files` (keyword arguments pass through)."""
    return group_files(scan_directory(directory), **kwargs)
