"""Grouping subband files: tolerance, readiness, growth, timeouts, duplicates."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from contimg import naming
from contimg.conversion.discovery import discover_groups

NOW = 1_800_000_000.0


def _touch(directory, stamp: datetime, subband: int, *, age_s: float = 3600.0):
    path = directory / naming.subband_filename(naming.group_id_from_datetime(stamp), subband)
    path.write_bytes(b"x")
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_jittered_subbands_form_one_ready_group_named_after_sb00(tmp_path):
    t0 = datetime(2026, 11, 25, 8, 0, 0)
    for sb in range(16):
        _touch(tmp_path, t0 + timedelta(seconds=(sb * 7) % 3), sb)  # 0-2 s jitter
    # the next group, 309 s later
    for sb in range(16):
        _touch(tmp_path, t0 + timedelta(seconds=309 + sb % 2), sb)
    (tmp_path / "notes.txt").write_text("not a subband")
    groups = discover_groups(tmp_path, tolerance_s=30, settle_s=10, timeout_s=600, now=NOW)
    assert [g.group_id for g in groups] == ["2026-11-25T08:00:00", "2026-11-25T08:05:09"]
    assert all(g.state == "ready" and len(g.files) == 16 and not g.missing for g in groups)


def test_missing_subband_waits_then_times_out_with_the_missing_list(tmp_path):
    t0 = datetime(2026, 11, 25, 8, 0, 0)
    for sb in range(16):
        if sb != 7:
            _touch(tmp_path, t0, sb, age_s=60)
    (group,) = discover_groups(tmp_path, timeout_s=600, now=NOW)
    assert group.state == "collecting" and group.missing == [7]
    (group,) = discover_groups(tmp_path, timeout_s=30, now=NOW)
    assert group.state == "incomplete" and group.missing == [7]


def test_a_file_still_being_written_holds_the_group(tmp_path):
    t0 = datetime(2026, 11, 25, 8, 0, 0)
    for sb in range(16):
        _touch(tmp_path, t0, sb, age_s=2.0 if sb == 3 else 3600)
    (group,) = discover_groups(tmp_path, settle_s=10, now=NOW)
    assert group.state == "growing" and [p.name for p in group.growing] == [naming.subband_filename("2026-11-25T08:00:00", 3)]


def test_tolerance_is_anchored_to_the_first_file(tmp_path):
    t0 = datetime(2026, 11, 25, 8, 0, 0)
    for sb in range(8):
        _touch(tmp_path, t0, sb)
    for sb in range(8, 16):
        _touch(tmp_path, t0 + timedelta(seconds=45), sb)  # straddles a 30 s tolerance
    groups = discover_groups(tmp_path, tolerance_s=30, timeout_s=0, now=NOW)
    assert len(groups) == 2
    assert groups[0].missing == list(range(8, 16)) and groups[1].missing == list(range(8))
    assert {g.state for g in groups} == {"incomplete"}
    (merged,) = discover_groups(tmp_path, tolerance_s=60, now=NOW)
    assert merged.state == "ready"


def test_duplicate_and_late_files_are_reported_not_used(tmp_path):
    t0 = datetime(2026, 11, 25, 8, 0, 0)
    for sb in range(16):
        _touch(tmp_path, t0, sb)
    late_dup = _touch(tmp_path, t0 + timedelta(seconds=5), 4)
    (group,) = discover_groups(tmp_path, now=NOW)
    assert group.state == "ready" and group.duplicates == [late_dup]
    assert group.files[4].name == naming.subband_filename("2026-11-25T08:00:00", 4)
