"""Quarantine moves bad input out of the way and never loses a byte of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from contimg import quarantine


def _files(directory: Path, n: int = 3) -> dict[Path, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i in range(n):
        path = directory / f"2026-11-25T08:15:27_sb{i:02d}.hdf5"
        contents[path] = os.urandom(1000 + i)
        path.write_bytes(contents[path])
    return contents


def test_files_are_moved_intact_and_the_reason_recorded(tmp_path):
    contents = _files(tmp_path / "incoming")
    destination = tmp_path / "quarantine" / "2026-11-25" / "2026-11-25T081527"
    moved = quarantine.quarantine_files(contents, destination, reason="sb01 truncated")
    assert set(moved) == set(contents)
    for source, target in moved.items():
        assert not source.exists() and target.read_bytes() == contents[source]
    record = json.loads((destination / quarantine.RECORD_NAME).read_text())
    assert record["entries"][0]["reason"] == "sb01 truncated"
    assert record["entries"][0]["files"] == {str(t): str(s) for s, t in moved.items()}
    # A second bad copy of the same file keeps both.
    again = _files(tmp_path / "incoming", n=1)
    (source,) = again
    second = quarantine.quarantine_files(again, destination, reason="again")
    assert second[source].name.endswith(".hdf5.1") and second[source].read_bytes() == again[source]
    assert len(json.loads((destination / quarantine.RECORD_NAME).read_text())["entries"]) == 2


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second filesystem (/dev/shm)")
def test_across_filesystems_the_original_goes_only_after_a_verified_copy(tmp_path, monkeypatch):
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        contents = _files(Path(shm) / "incoming")
        destination = tmp_path / "quarantine"
        moved = quarantine.quarantine_files(contents, destination, reason="bad")
        for source, target in moved.items():
            assert not source.exists() and target.read_bytes() == contents[source]

        # A copy that does not match its original: the original stays, nothing half-copied is left.
        contents = _files(Path(shm) / "incoming2")
        real_sha256 = quarantine._sha256
        monkeypatch.setattr(quarantine, "_sha256",
                            lambda path: "corrupt" if path.name.endswith("sb01.hdf5.partial") else real_sha256(path))
        with pytest.raises(OSError, match="does not match the original"):
            quarantine.quarantine_files(contents, tmp_path / "q2", reason="bad")
        originals = sorted(contents)
        assert not originals[0].exists() and originals[1].exists() and originals[2].exists()
        assert originals[1].read_bytes() == contents[originals[1]]
        assert sorted(p.name for p in (tmp_path / "q2").iterdir()) == [originals[0].name, quarantine.RECORD_NAME]
        record = json.loads((tmp_path / "q2" / quarantine.RECORD_NAME).read_text())
        assert list(record["entries"][0]["files"].values()) == [str(originals[0])]
