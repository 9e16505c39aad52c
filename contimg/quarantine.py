"""Moving a bad group's input files out of the incoming directory, never losing one.

Bad input (an unreadable file, a declination in the wrong unit, a failed
validation gate) is not retried: the ingest flow records the group as failed and
moves its files here, out of the way of the next sweep, for an operator to look
at. Raw data are deleted only where a verified copy exists: on the same
filesystem a file is renamed (atomic, nothing to verify); across filesystems it
is copied under a temporary name, flushed to disk, compared byte for byte with
the original (SHA-256), renamed, and only then removed from incoming. A
``QUARANTINE.json`` beside the files says why, when, and where each came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

#: The record written beside quarantined files.
RECORD_NAME = "QUARANTINE.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _free_name(path: Path) -> Path:
    """``path``, or ``name.1``, ``name.2``... if it is taken (a second bad copy of the same file)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _move_verified(source: Path, target: Path) -> None:
    if os.stat(source).st_dev == os.stat(target.parent).st_dev:
        os.rename(source, target)
        return
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    if _sha256(partial) != _sha256(source):
        partial.unlink()
        raise OSError(f"copy of {source} to {partial} does not match the original; the original is kept")
    os.rename(partial, target)
    source.unlink()


def quarantine_files(files: Iterable[Path], destination: Path, *, reason: str) -> dict[Path, Path]:
    """Move ``files`` into ``destination`` (see module docstring) and record why.

    Parameters
    ----------
    files : iterable of Path
        The files to move; ones already gone are skipped.
    destination : Path
        The group's quarantine directory (``naming.quarantine_dir``), created if needed.
    reason : str
        Why, for the operator: written to ``QUARANTINE.json``.

    Returns
    -------
    dict of Path to Path
        Original path -> quarantined path, for every file moved.

    Raises
    ------
    OSError
        A file could not be moved (it stays where it was; the files moved
        before it stay moved and recorded).
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    record_path = destination / RECORD_NAME
    record = json.loads(record_path.read_text()) if record_path.exists() else {"entries": []}
    moved: dict[Path, Path] = {}
    try:
        for source in map(Path, files):
            if not source.exists():
                continue
            target = _free_name(destination / source.name)
            _move_verified(source, target)
            moved[source] = target
    finally:
        record["entries"].append({
            "reason": reason,
            "quarantined_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {str(target): str(source) for source, target in moved.items()},
        })
        partial = record_path.with_name(f".{RECORD_NAME}.partial")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, record_path)
    return moved
