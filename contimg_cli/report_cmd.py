"""``contimg report DATE``: the night report, one static HTML page per observation date (issue 21).

Examples::

    contimg report 2026-11-25                 # <products>/reports/2026-11-25/index.html
    contimg report 2026-11-25 --out /tmp/r    # /tmp/r/index.html

DATE is the UTC date of the groups (their ``obs_date``). The page shows every
group of the date (thumbnail, state, calibration set, flagged fraction, noise
against the thermal prediction, beam, source count), the calibration sets of the
date with their QA, the failures with their reasons, and noise and flagged
fraction against time (PNG plots), all read from the catalog
(``tasks.report``). A date without groups writes a page saying so. The nightly
archive flow writes the same page for every date it archives.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def obs_date(text: str) -> str:
    """An observation date, YYYY-MM-DD (argparse ``type=``)."""
    from contimg import naming

    try:
        return naming.parse_obs_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="the night report: one HTML page of an observation date")
    p.add_argument("date", metavar="DATE", type=obs_date, help="observation date (UTC), YYYY-MM-DD")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="directory of the page (default <products_dir>/reports/DATE)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from contimg.config import load_settings
    from tasks.report import write_night_report

    settings = load_settings()
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is not a directory")
    report = write_night_report(settings, args.date, args.out)
    if report.n_groups == 0:
        print(f"no groups on {args.date}")
    else:
        print(f"{args.date}: {report.n_groups} groups, {report.n_failures} failure(s)")
    print(report.path)
    return 0
