"""``contimg config``: print the effective settings and where each comes from."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="print the effective settings")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from contimg.config import ENV_PREFIX, load_settings

    settings = load_settings()
    for name, value in vars(settings).items():
        key = ENV_PREFIX + name.upper()
        source = "env" if key in os.environ else "default"
        print(f"{name:24s} {str(value):40s} {source:8s} {key}")
    return 0
