"""Bad command-line input ends in one line on stderr, not a traceback (issue 14, defect 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contimg_cli.main import main

CONTIMG = Path(sys.executable).parent / "contimg"


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"contimg {command}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, status, words", [
    (["calibrators", "--dec", "200", "--date", "2026-11-25"], 2, "argument --dec: '200' is not a declination"),
    (["calibrators", "--dec", "north", "--date", "2026-11-25"], 2, "not a declination"),
    (["calibrators", "--dec", "54.6", "--date", "tomorrow"], 2, "argument --date: 'tomorrow' is not a UTC time"),
    (["calibrators", "--dec", "54.6", "--date", "2026-11-25", "--catalog", "/nonexistent.csv"], 2,
     "calibrator catalog /nonexistent.csv does not exist"),
    (["simulate", "--out", "x", "--start", "yesterday", "--scale", "small"], 2,
     "argument --start: 'yesterday' is not a UTC time"),
    (["simulate", "--out", "x", "--start", "2026-11-25T08:00:00", "--groups", "0"], 2, "argument --groups"),
    (["simulate", "--out", "x", "--start", "2026-11-25T08:00:00", "--dec", "-91"], 2, "argument --dec"),
    (["simulate", "--out", "x", "--start", "2026-11-25T08:00:00", "--scale", "small", "--calibrator", "NOPE"], 1,
     "no calibrator named 'NOPE'"),
    (["query", "SELEC"], 2, "catalog query failed: Parser Error"),
    (["query", "SELECT * FROM groups", "--format", "parquet"], 2, "--format parquet needs --output FILE"),
    (["catalog", "compact", "--table", "nope"], 1, "unknown catalog table 'nope'"),
])
def test_bad_input_is_one_line_on_stderr_with_nonzero_status(argv, status, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    command = " ".join(argv[:2]) if argv[0] == "catalog" else argv[0]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors exit from parse_args
        rc = exc.code
    assert rc == status
    assert words in _one_line_error(capsys, command)


def test_console_script_prints_one_line_and_debug_prints_the_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONTIMG_BASE_DIR": str(tmp_path / "data")}
    argv = ["calibrators", "--dec", "54.6", "--date", "2026-11-25", "--catalog", str(tmp_path / "none.csv")]
    plain = subprocess.run([str(CONTIMG), *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"contimg calibrators: error: calibrator catalog {tmp_path / 'none.csv'} does not exist; "
        "pass an existing Parquet, CSV or VLA list file"]
    debug = subprocess.run([str(CONTIMG), "--log-level", "DEBUG", *argv], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "InvalidInputError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()

    bad = subprocess.run([str(CONTIMG), "calibrators", "--dec", "200", "--date", "2026-11-25"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "contimg calibrators: error: argument --dec: '200' is not a declination in degrees (-90 to 90) "
        "(see contimg calibrators --help)"]


def test_argument_types_accept_good_values():
    from contimg_cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["calibrators", "--dec", "-90", "--date", "2026-11-25", "--anchor", "2026-11-25T00:02:00"])
    assert (args.dec, args.date, args.anchor) == (-90.0, "2026-11-25", "2026-11-25T00:02:00")
    args = parser.parse_args(["simulate", "--out", "x", "--start", "2026-11-25 08:00:00", "--dec", "54.6",
                              "--groups", "3", "--min-apparent-flux-mjy", "0"])
    assert (args.start, args.dec, args.groups, args.min_apparent_flux_mjy) == ("2026-11-25 08:00:00", 54.6, 3, 0.0)
