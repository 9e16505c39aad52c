"""Entry point of the ``contimg`` console script.

Errors end in one line on stderr, ``contimg <command>: error: <message>``, and
a non-zero exit status: 2 for bad input (a bad option value, an invalid or
missing input file, an SQL query that is not a valid read-only one), 1 for a
failure of the work itself (a CASA call, the catalog, no calibration...). The
traceback is printed as well when the log level is DEBUG (``--log-level DEBUG``
or ``CONTIMG_LOG_LEVEL=DEBUG``). Anything else (a bug) keeps its traceback.

That line is written here and only here (:func:`main`, and :class:`Parser` for
argparse's errors): a command's handler never prints an error of its own, it
raises (:class:`~contimg.errors.InvalidInputError` for bad input, another
:class:`~contimg.errors.ContimgError` for a failure, or ``SystemExit("message")``),
so every command's error reads the same. A command whose work ran but failed
(a rejected caltable set, a group over the flagging limit...) prints its report
on stdout, then raises :class:`CommandFailed` with the one-line reason.
``<command>`` is the sub-command as typed, with its action (``contimg caltables
retire``, ``contimg run target``).

A command that runs flows (registered with ``set_defaults(uses_prefect=True)``)
runs inside :func:`contimg_cli.prefect_server.prefect_server`: the node's Prefect
server when one answers, else an ephemeral one on a database of the command's own;
its first line says which (issue 22).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
import traceback

from catalog.errors import CatalogError
from catalog.errors import NoCalibrationError as CatalogNoCalibrationError
from contimg.errors import ContimgError, InvalidInputError
from contimg.logs import setup_logging

#: Sub-command modules in ``contimg_cli``; each defines ``register(subparsers)``.
COMMAND_MODULES = [
    "config_cmd",
    "convert_cmd",
    "run_cmd",
    "serve_cmd",
    "calibrators_cmd",
    "catalog_cmds",
    "caltables_cmd",
    "calibrate_cmd",
    "flag_cmd",
    "image_cmd",
    "simulate_cmd",
    "demo_cmd",
    "qa_cmd",
    "restore_cmd",
    "report_cmd",
    "photometry_cmd",
    "lightcurve_cmd",
    "mosaic_cmd",
]

#: Exit status 2: the input is wrong (``catalog.query.QueryError`` and
#: ``catalog.errors.SchemaError`` are ValueErrors).
BAD_INPUT = (InvalidInputError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
             argparse.ArgumentTypeError)
#: Exit status 1: the work failed.
FAILURES = (ContimgError, CatalogError, CatalogNoCalibrationError, OSError)


class CommandFailed(ContimgError):
    """The command ran and printed its report, and the outcome is a failure (exit status 1)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (usage is in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unrecognized argument is the sub-command's error (``contimg image: ...``)."""
        args, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = getattr(self, "commands", {}).get(getattr(args, "command_name", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="contimg",
        description="DSA-110 continuum imaging pipeline.",
    )
    parser.add_argument("--log-level", default=None,
                        help="DEBUG (also prints tracebacks of errors), INFO (default), WARNING...")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"contimg_cli.{name}").register(subparsers)
    parser.commands = _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Give every sub-command's parser the default ``command_name``, its ``prog``; return them by it.

    The deepest sub-command parsed sets it last, so ``args.command_name`` is
    ``contimg caltables retire`` or ``contimg run target``: the name argparse's own
    errors print (:class:`Parser`), used for the handler's errors too.
    """
    commands = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                sub.set_defaults(command_name=sub.prog)
                commands[sub.prog] = sub
                commands.update(_name_commands(sub))
    return commands


def main(argv: list[str] | None = None) -> int:
    """Run one ``contimg`` command; return its exit status (errors as one line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0), or a bad argument: Parser.error printed its one line (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    setup_logging(args.log_level)
    command = _command_name(args)
    try:
        if not getattr(args, "uses_prefect", False):
            return int(args.handler(args) or 0)
        from contimg_cli.prefect_server import prefect_server

        with prefect_server():  # chosen here, once, for every command that runs flows
            return int(args.handler(args) or 0)
    except BAD_INPUT as exc:
        return _report(command, exc, status=2)
    except FAILURES as exc:
        return _report(command, exc, status=1)
    except SystemExit as exc:  # a handler's ``raise SystemExit("message")``
        if isinstance(exc.code, str):
            return _report(command, exc, status=2)
        raise
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def _command_name(args) -> str:
    """``contimg <command>`` (and its action, e.g. ``contimg catalog compact``, ``contimg run target``)."""
    return getattr(args, "command_name", None) or f"contimg {args.command}"


def _report(command: str, exc: BaseException, *, status: int) -> int:
    """Print ``exc`` as one line (after its traceback at DEBUG level) and return ``status``."""
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) \
            and exc.filename and str(exc.filename) not in message:
        message += f": {exc.filename}"
    if getattr(exc, "log_path", None):
        message += f" (log: {exc.log_path})"
    if not debug and not isinstance(exc, (ContimgError, CatalogError, CatalogNoCalibrationError, SystemExit)):
        message += " (--log-level DEBUG shows the traceback)"
    print(f"{command}: error: {message}", file=sys.stderr)
    return status


# --- argument types shared by the command modules (argparse ``type=``) ------------------------

def declination_deg(text: str) -> float:
    """A declination in degrees, -90 to 90."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -90.0 <= value <= 90.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a declination in degrees (-90 to 90)")
    return value


def utc_time(text: str) -> str:
    """A UTC time or date astropy can parse (e.g. 2026-11-25T08:00:00 or 2026-11-25); returned as given."""
    from astropy.time import Time

    try:
        Time(text, scale="utc")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UTC time; give an ISO time such as 2026-11-25T08:00:00 (or a date, 2026-11-25)"
        ) from None
    return text


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value
