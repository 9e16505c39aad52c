"""``contimg caltables``: the registered caltable sets, what applies at a time, retirement.

Examples::

    contimg caltables                          # every set, newest first
    contimg caltables --at 2025-03-01T04:10:00 # what a group at that time gets (or why none)
    contimg caltables --at 60735.17            # the same, as MJD (UTC)
    contimg caltables retire J0834+5534_60735.120000 --reason "RFI storm, bad bandpass"

The catalog directory is the ``catalog_dir`` setting (``CONTIMG_CATALOG_DIR``)
unless ``--catalog-dir`` is given; the lookup uses the settings
``cal_kb_validity_hours`` and ``cal_g_max_gap_hours``. Rules:
``catalog/cal_registry.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math

MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.timezone.utc)


def _add_catalog_dir(p) -> None:
    p.add_argument("--catalog-dir", default=None, help="catalog root (default: the catalog_dir setting)")


def register(subparsers) -> None:
    p = subparsers.add_parser("caltables", help="list caltable sets, show what applies at a time, retire a set")
    p.add_argument("--at", type=at_time, default=None, metavar="TIME",
                   help="show the apply list for this time: ISO UTC (2025-03-01T04:10:00) or MJD")
    p.add_argument("--status", default=None, choices=("active", "rejected", "retired"),
                   help="list only sets with this status")
    p.add_argument("--limit", type=int, default=50, help="sets listed (default 50)")
    _add_catalog_dir(p)
    p.set_defaults(handler=run_list)
    sub = p.add_subparsers(dest="caltables_command", required=False, metavar="ACTION")
    r = sub.add_parser("retire", help="withdraw a set: later lookups skip it (history is kept)")
    r.add_argument("set_name", metavar="SET", help="set name (see `contimg caltables`)")
    r.add_argument("--reason", default="retired by an operator", help="why (recorded with the set)")
    # SUPPRESS: a subparser default would overwrite `contimg caltables --catalog-dir X retire SET`
    r.add_argument("--catalog-dir", default=argparse.SUPPRESS, help="catalog root (default: the catalog_dir setting)")
    r.set_defaults(handler=run_retire)


def parse_time(text: str) -> float:
    """``text`` (ISO UTC, or MJD days) as MJD (UTC).

    Raises
    ------
    ValueError
        Neither a number nor an ISO time.
    """
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"--at {text!r} is not a time; give an MJD or an ISO UTC time (e.g. 2025-03-01T04:10:00)")
        return value
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at {text!r} is neither an MJD nor an ISO UTC time (e.g. 2025-03-01T04:10:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return (t - MJD_EPOCH).total_seconds() / 86400.0


def at_time(text: str) -> float:
    """``--at`` (argparse ``type=``): :func:`parse_time`, a bad value an argparse error (exit status 2)."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--at ")) from None


def iso(mjd: float | None) -> str:
    if mjd is None:
        return "-"
    return (MJD_EPOCH + dt.timedelta(days=mjd)).strftime("%Y-%m-%dT%H:%M:%S")


def _settings_and_dir(args):
    from contimg.config import load_settings

    settings = load_settings()
    root = args.catalog_dir or settings.catalog_dir
    return settings, root


def _qa(s: dict) -> str:
    parts = []
    if s["qa_passed"] is not None:
        parts.append("passed" if s["qa_passed"] else "failed")
    if s["flagged_fraction_max"] is not None:
        parts.append(f"flag<={100 * s['flagged_fraction_max']:.0f}%")
    if s["snr_median_min"] is not None:
        parts.append(f"snr>={s['snr_median_min']:.3g}")
    if s["reason"]:
        parts.append(s["reason"])
    return " ".join(parts) or "-"


def run_list(args) -> int:
    from catalog.cal_registry import list_sets
    from contimg_cli.catalog_cmds import format_table

    settings, root = _settings_and_dir(args)
    at = args.at  # MJD (at_time)
    sets = list_sets(root, at_mjd=at, status=args.status)
    if at is not None:
        status = _show_applylist(root, at, settings)
        print()
    else:
        status = 0
    if not sets:
        what = f" with status {args.status}" if args.status else ""
        print(f"no caltable sets{what} registered in {root}. A calibrator group registers one "
              "(`contimg calibrate MS`); see docs/catalog.md.")
        return _none_applies(status, at)
    shown = sets[: args.limit]
    rows = [{"set": s["set_name"], "status": s["status"], "calibrator": s["calibrator"] or "-",
             "time (UTC)": iso(s["mid_mjd"]), "mjd": f"{s['mid_mjd']:.5f}" if s["mid_mjd"] is not None else "-",
             **({"gap_h": f"{s['gap_hours']:+.2f}"} if "gap_hours" in s else {}),
             "types": ",".join(s["types"]), "refant": s["refant"] or "-", "qa": _qa(s)} for s in shown]
    title = "caltable sets nearest the time" if at is not None else "caltable sets, newest first"
    print(f"{title} ({root}):")
    print(format_table(rows, list(rows[0])))
    if len(sets) > len(shown):
        print(f"({len(sets) - len(shown)} more; use --limit)")
    return _none_applies(status, at)


def _none_applies(status: int, at: float | None) -> int:
    """``status`` 0, or the error line (exit status 1) saying that nothing applies at ``at``."""
    if status:
        from contimg_cli.main import CommandFailed

        raise CommandFailed(f"no caltable set applies at MJD {at:.5f} ({iso(at)} UTC); why: the apply list above")
    return status


def _show_applylist(root, mjd: float, settings) -> int:
    from catalog.cal_registry import active_applylist
    from catalog.errors import NoCalibrationError
    from contimg_cli.catalog_cmds import format_table

    print(f"apply list at MJD {mjd:.5f} ({iso(mjd)} UTC), K/B within {settings.cal_kb_validity_hours:g} h, "
          f"G within {settings.cal_g_max_gap_hours:g} h:")
    try:
        al = active_applylist(root, mjd, kb_max_age_hours=settings.cal_kb_validity_hours,
                              g_max_gap_hours=settings.cal_g_max_gap_hours)
    except NoCalibrationError as exc:
        print(f"  none: {exc}")
        return 1
    rows = [{"order": i, "type": t.type, "set": t.set_name, "interp": t.interp or "-",
             "spwmap": ",".join(map(str, t.spwmap)) or "-", "gainfield": t.gainfield or "-",
             "refant": t.refant or "-", "path": t.path} for i, t in enumerate(al.tables)]
    print(format_table(rows, list(rows[0])))
    gs = ", ".join(f"{g.set_name} ({g.gap_hours:+.2f} h, weight {g.weight:.2f})" for g in al.g_sets)
    how = "interpolated linearly in time (merge each type's two tables)" if al.interpolate_g else "single set"
    print(f"K/B set: {al.kb_set}; G sets: {gs}; {how}")
    for w in al.warnings:
        print(f"warning: {w}")
    return 0


def run_retire(args) -> int:
    from catalog.cal_registry import retire_set
    from catalog.errors import CatalogError
    from contimg.errors import InvalidInputError

    _, root = _settings_and_dir(args)
    try:
        n = retire_set(root, args.set_name, reason=args.reason)
    except CatalogError as exc:  # no such set, or no reason: the input (exit 2)
        raise InvalidInputError(str(exc)) from exc
    if n:
        print(f"retired {args.set_name} ({n} tables): {args.reason}")
    else:
        print(f"{args.set_name} was already retired")
    return 0
