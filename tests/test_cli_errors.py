"""Bad command-line input ends in one line on stderr, not a traceback (issue 14, defect 2), and every
command's line reads ``contimg <command>: error: ...`` (issue 21, defect 4: convert, applycal and
caltables printed ``error: ...``)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from contimg_cli.main import build_parser, main

CONTIMG = Path(sys.executable).parent / "contimg"
CLI_DIR = Path(__file__).resolve().parents[1] / "contimg_cli"


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"contimg {command}: error: "), lines[0]
    assert "error:" not in captured.out, captured.out
    return lines[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def _leaf_commands(parser=None, path=()) -> list[tuple[str, ...]]:
    """Every command a user can run: ``("config",)``, ``("run", "target")``, ``("caltables",)`` and
    ``("caltables", "retire")`` (a parser whose action is optional is a command itself)."""
    parser = parser or build_parser()
    subs = _subparsers(parser)
    required = any(a.required for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [] if (subs and required) or not path else [path]
    for name, sub in subs.items():
        out += _leaf_commands(sub, (*path, name))
    return out


def _command_of(argv: list[str]) -> str:
    """The sub-command path in ``argv`` (``caltables retire``, ``run target``), options skipped."""
    parser, words = build_parser(), []
    for token in argv:
        subs = _subparsers(parser)
        if token in subs:
            parser = subs[token]
            words.append(token)
    return " ".join(words)


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


#: A failing run of every command: (argv, CONTIMG_* settings, exit status, words of the error line).
#: ``{tmp}`` is a fresh directory holding ``empty/`` (a directory without groups, not an MS) and
#: ``afile`` (an empty file). The first ones are issue 21's cases.
FAILURES = [
    (["convert", "{tmp}/empty"], {}, 2, "{tmp}/empty holds 0 matching groups (none); name one with --group"),
    (["convert", "{tmp}/empty", "--group", "2026-11-25T08:00:00"], {}, 2, "holds 0 matching groups"),
    (["convert", "{tmp}/afile"], {}, 2, "holds 0 matching groups"),
    (["applycal", "{tmp}/empty"], {}, 2, "{tmp}/empty is not a Measurement Set (no table.dat)"),
    (["applycal", "{tmp}/nope.ms"], {}, 2, "is not a Measurement Set"),
    (["applycal", "{tmp}/empty", "--at", "yesterday"], {}, 2,
     "argument --at: 'yesterday' is neither an MJD nor an ISO UTC time"),
    (["caltables", "--at", "yesterday"], {}, 2, "argument --at: 'yesterday' is neither an MJD nor an ISO UTC time"),
    (["caltables", "--at", "2026-13-45"], {}, 2, "argument --at: '2026-13-45' is neither"),
    (["caltables", "--at", "nan"], {}, 2, "argument --at: 'nan' is not a time"),
    (["caltables", "--at", "2026-11-25T08:00:00"], {}, 1, "no caltable set applies at MJD"),
    (["caltables", "retire", "X"], {}, 2, "no caltable set named 'X'"),
    (["caltables", "--status", "active", "retire", "X", "--reason", ""], {}, 2, "give a reason"),
    (["config"], {"CONTIMG_IMAGING_SIZE": "abc"}, 2, "CONTIMG_IMAGING_SIZE='abc'"),
    (["calibrate", "{tmp}/nope.ms"], {}, 2, "is not a Measurement Set"),
    (["flag", "{tmp}/empty"], {}, 2, "is not a Measurement Set"),
    (["image", "{tmp}/nope.ms"], {}, 2, "is not a Measurement Set"),
    (["selfcal", "{tmp}/nope.ms"], {}, 2, "is not a Measurement Set"),
    (["qa", "{tmp}/afile"], {}, 2, "is neither a Measurement Set"),
    (["run", "ingest", "{tmp}/nowhere"], {}, 2, "{tmp}/nowhere is not a directory"),
    (["run", "calibrate", "2026-11-25T08:00:00"], {}, 2, "no MS at"),
    (["run", "target", "{tmp}/nope.ms"], {}, 2, "no MS at"),
    (["run", "group", "nope"], {}, 2, "no MS at"),
    (["run", "wake"], {"CONTIMG_IMAGING_SIZE": "abc"}, 2, "CONTIMG_IMAGING_SIZE='abc'"),
    (["run", "archive"], {"CONTIMG_IMAGING_SIZE": "abc"}, 2, "CONTIMG_IMAGING_SIZE='abc'"),
    (["run", "wake"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, 1,
     "no Prefect server answers at http://127.0.0.1:9/api (PREFECT_API_URL)"),
    (["serve", "--port", "9"], {"server_exits": True}, 1, "the Prefect server exited during start-up"),
    (["calibrators", "--dec", "54.6", "--date", "2026-11-25", "--catalog", "{tmp}/none.csv"], {}, 2,
     "calibrator catalog {tmp}/none.csv does not exist"),
    (["query", "SELECT * FROM nope"], {}, 2, "catalog query failed"),
    (["status"], {"CONTIMG_IMAGING_SIZE": "abc"}, 2, "CONTIMG_IMAGING_SIZE='abc'"),
    (["catalog", "compact", "--table", "nope"], {}, 1, "unknown catalog table 'nope'"),
    (["catalog", "check"], {"junk": "groups"}, 1, "1 unreadable file(s)"),
    (["simulate", "--out", "{tmp}/sim", "--start", "2026-11-25T08:00:00", "--calibrator", "NOPE"], {}, 1,
     "no calibrator named 'NOPE'"),
    (["demo", "--groups", "1", "--workdir", "{tmp}/demo"], {}, 2, "a night needs at least 2 groups"),
    (["restore", "2026-11-25T08:00:00"], {}, 2, "2026-11-25T08:00:00: no such group in the catalog"),
    (["report", "2026-02-30"], {}, 2, "argument DATE: '2026-02-30' is not a date (YYYY-MM-DD)"),
    (["photometry", "{tmp}/nope.fits"], {}, 2, "{tmp}/nope.fits: no such image file"),
    (["photometry", "2026-11-25T08:00:00"], {}, 2, "group 2026-11-25T08:00:00: no pbcor image"),
    (["lightcurve", "J0834+5534"], {}, 2, "has no photometry yet"),
    (["mosaic", "--start", "2026-11-25T08:00", "--end", "2026-11-25T09:00"], {}, 2,
     "no imaged group in [2026-11-25T08:00:00, 2026-11-25T09:00:00): the catalog has no group in it"),
]


class _DeadServer:
    """A ``prefect server start`` that exited at once (``subprocess.Popen`` for ``contimg serve``)."""

    def __init__(self, *args, **kwargs):
        pass

    def poll(self) -> int:
        return 1


@pytest.mark.parametrize("argv, env, status, words", FAILURES, ids=[" ".join(f[0][:3]) for f in FAILURES])
def test_every_command_fails_in_one_line_with_its_prefix(argv, env, status, words, tmp_path, capsys, monkeypatch):
    """The line is ``contimg <command>: error: ...``, the command as typed (with its action)."""
    for key in [k for k in os.environ if k.startswith("CONTIMG_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for key, value in env.items():
        if key == "junk":  # an unreadable catalog file
            part = tmp_path / "data" / "catalog" / value / "obs_date=2026-11-25" / "part-x.parquet"
            part.parent.mkdir(parents=True)
            part.write_bytes(b"junk")
        elif key == "server_exits":  # contimg serve: no server on the port, and the one it starts dies
            from contimg_cli import serve_cmd

            monkeypatch.setattr(serve_cmd, "server_healthy", lambda url: False)
            monkeypatch.setattr(serve_cmd.subprocess, "Popen", _DeadServer)
        else:
            monkeypatch.setenv(key, value)
    sigterm = signal.getsignal(signal.SIGTERM)  # contimg serve installs its own
    try:
        rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    line = _one_line_error(capsys, _command_of(argv))
    assert rc == status, line
    assert words.replace("{tmp}", str(tmp_path)) in line


def test_every_command_has_a_failing_case_above():
    assert set(_leaf_commands()) <= {tuple(_command_of(argv).split()) for argv, *_ in FAILURES}


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_refuses_a_bad_option_in_one_line(command, capsys):
    assert main([*command, "--no-such-option"]) == 2
    line = _one_line_error(capsys, " ".join(command))
    assert line.endswith(f"(see contimg {' '.join(command)} --help)")


def test_no_command_prints_its_own_error_line():
    """The line is written by contimg_cli.main only; a handler raises (exit status from the exception)."""
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "main.py":
            continue
        text = path.read_text()
        assert not re.search(r"print\(\s*f?[\"'][^\"']*error:", text), f"{path.name} prints an error line itself"
        assert not re.search(r"return [\"']error:", text), path.name


@pytest.mark.parametrize("argv, words", [
    (["convert", "empty"], "contimg convert: error: empty holds 0 matching groups (none); name one with --group"),
    (["applycal", "empty"], "contimg applycal: error: empty is not a Measurement Set (no table.dat)"),
    (["caltables", "--at", "tomorrow"],
     "contimg caltables: error: argument --at: 'tomorrow' is neither an MJD nor an ISO UTC time"),
])
def test_issue_21_cases_as_a_new_user(argv, words, tmp_path):
    """From an empty directory, default settings, no CONTIMG_* variables: the console script."""
    cwd = tmp_path / "new"
    (cwd / "empty").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTIMG_", "PREFECT_"))}
    env["HOME"] = str(tmp_path)
    run = subprocess.run([str(CONTIMG), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(words), line


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
