"""Entry point of the ``contimg`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys

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
    "simulate_cmd",
    "demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contimg",
        description="DSA-110 continuum imaging pipeline.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING...")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"contimg_cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_level)
    return int(args.handler(args) or 0)
