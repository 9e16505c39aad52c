"""``contimg mosaic --start T --end T [--out DIR]``: the linear mosaic of the imaged groups of a window.

Examples::

    contimg mosaic --start 2026-11-25T08:00 --end 2026-11-25T09:00
    contimg mosaic --start 2026-11-25T08:00                      # mosaic_n_groups groups' worth of time
    contimg mosaic --start 2026-11-25T08:00 --end 2026-11-25T09:00 --out /tmp/m

The groups whose start time is in ``[START, END)`` (UTC) and whose latest stage is
``imaged`` or ``archived`` are combined, each weighted by its own primary beam and
noise (``contimg.mosaic.linear``); the others are listed with why they were not used.
Products go to ``<products>/mosaics/<date>/<window start>-<n>g-{image,weight,noise}.fits``
(and ``-image.png``, ``-sources.parquet``) and the mosaic is recorded in the catalog's
``mosaics`` table (its sources in ``sources``, its forced photometry in ``photometry``). A
mosaic of the same groups already recorded is not made again unless ``--force``.

With ``--out DIR`` other than that directory the mosaic is ad hoc: written, with its sources,
but not recorded, so the pipeline still makes (and records) its own mosaic of the hour; the
command says which recorded mosaic, if any, covers the window.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path


def utc_time(text: str):
    """A UTC time (argparse ``type=``)."""
    from contimg.mosaic.windows import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _runs(ids: list[str], reasons: list[str], used: list[str]):
    """Consecutive missing groups with the same reason and no used group between them, as (first, last, count,
    reason) (an hour without data is one line, not twelve)."""
    out: list[list] = []
    for group_id, why in zip(ids, reasons):
        if out and out[-1][3] == why and not any(out[-1][1] < u < group_id for u in used):
            out[-1][1], out[-1][2] = group_id, out[-1][2] + 1
        else:
            out.append([group_id, group_id, 1, why])
    return [tuple(r) for r in out]


def register(subparsers) -> None:
    p = subparsers.add_parser("mosaic", help="the linear mosaic of the imaged groups of a time window")
    p.add_argument("--start", type=utc_time, required=True, metavar="T",
                   help="window start (UTC, YYYY-MM-DDTHH:MM[:SS]): groups starting at or after it")
    p.add_argument("--end", type=utc_time, default=None, metavar="T",
                   help="window end (UTC): groups starting before it (default: START + mosaic_n_groups x 309.24 s)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the products here (default <products_dir>/mosaics/<date>, recorded in the catalog); "
                        "any other directory holds an ad-hoc mosaic: written, the catalog unchanged")
    p.add_argument("--force", action="store_true", help="make it again even if the same groups' mosaic exists")
    p.add_argument("--no-sources", action="store_true", help="do not run PyBDSF on the mosaic")
    p.set_defaults(handler=run)


def run(args) -> int:
    from contimg.config import load_settings
    from contimg.errors import InvalidInputError
    from contimg.mosaic.windows import CADENCE_S
    from tasks.mosaic import make_mosaic, window_inputs

    settings = load_settings()
    start = args.start
    end = args.end or start + timedelta(seconds=settings.mosaic_n_groups * CADENCE_S)
    if end <= start:
        raise InvalidInputError(f"--end {end:%Y-%m-%dT%H:%M:%S} is not after --start {start:%Y-%m-%dT%H:%M:%S}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is not a directory")
    inputs = window_inputs(settings, start, end)
    row = make_mosaic(settings, start, end, out_dir=args.out, force=args.force,
                      find_sources=False if args.no_sources else None, inputs=inputs)
    print(f"window [{start:%Y-%m-%dT%H:%M:%S}, {end:%Y-%m-%dT%H:%M:%S}) UTC: {len(row['group_ids'])} group(s) "
          f"used of {row['n_expected']} expected")
    print("used: " + ", ".join(row["group_ids"]))
    for first, last, n, why in _runs(row["missing"], row["missing_reason"], row["group_ids"]):
        print(f"missing: {first}: {why}" if n == 1 else f"missing: {first} to {last} ({n} groups): {why}")
    state = "already made (same groups; --force to redo)" if row["skipped"] else row["status"]
    print(f"mosaic {row['mosaic_id']}: {state}; noise at the centre {1e3 * row['noise_center_jy']:.3f} mJy/beam "
          f"(expected from the weights {1e3 * row['noise_expected_jy']:.3f}); beam {row['beam_major_arcsec']:.1f}\" x "
          f"{row['beam_minor_arcsec']:.1f}\" PA {row['beam_pa_deg']:.1f} deg; {row['coverage_deg2']:.1f} deg2")
    for key in ("image_path", "weight_path", "noise_path", "png_path", "sources_path"):
        if row.get(key):
            print(row[key])
    if not row["recorded"]:
        print(_not_recorded(settings, row, start, end, args.out))
    return 0


def _not_recorded(settings, row: dict, start, end, out_dir: Path) -> str:
    """Why an ``--out`` mosaic is not in the catalog, and which recorded mosaic covers its window."""
    from contimg import naming
    from tasks.mosaic import covering_mosaics

    covering = covering_mosaics(settings, start, end)
    named = ", ".join(f"{m['mosaic_id']} ({m['image_path']})" for m in covering)
    where = naming.mosaic_prefix(settings.products_dir, row["mosaic_id"]).parent
    return (f"not recorded in the catalog: {out_dir.resolve()} is not the pipeline's mosaic directory ({where}); "
            + (f"the catalog's mosaic covering this window: {named}" if covering
               else "no catalog mosaic covers this window (the pipeline has not mosaicked it yet)"))
