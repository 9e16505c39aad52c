"""``contimg flag MS``: flag a group's MS as the pipeline does before applycal, recorded."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "flag", help="flag a group's MS as calibrator groups are flagged (reset, zeros, autocorrelations, "
                     "edges, RFI) and record the report",
        description="Flag one MS with the calibrator groups' strategy: back to the converted flags, zeros and "
        "NaN, autocorrelations, subband edge channels, AOFlagger (CASA tfcrop + rflag without it). The report "
        "goes to qa_metrics (stage flag); a group with more than max_flagged_fraction of its delivered data "
        "flagged is recorded failed. An MS flagged already (by this or by its calibration) is left alone "
        "unless --force.")
    p.add_argument("ms", type=Path, help="the group's Measurement Set")
    p.add_argument("--force", action="store_true", help="flag again, from the converted flags")
    p.set_defaults(handler=run)


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{value:.1%}"


def run(args) -> int:
    from contimg.config import load_settings
    from contimg.errors import InvalidInputError
    from contimg_cli.main import CommandFailed
    from tasks.flagging import flag_group

    if not (args.ms / "table.dat").exists():
        raise InvalidInputError(f"{args.ms} is not a Measurement Set (no table.dat)")
    settings = load_settings()
    settings.ensure_dirs()
    out = flag_group(settings, args.ms, force=args.force)
    if out["flagged"]:
        print("  ".join(f"{s['step']} {_pct(s['flagged_fraction'])} ({s['seconds']:.1f} s)" for s in out["steps"]))
    else:
        print(f"{args.ms} was flagged already (by {out['source']}); --force flags it again")
    print(f"flagged {_pct(out['flagged_fraction'])} in all, RFI ({out['rfi_backend']}) added "
          f"{_pct(out['rfi_added_fraction'])}, delivered data flagged {_pct(out['delivered_flagged_fraction'])} "
          f"(limit {settings.max_flagged_fraction:.0%})")
    if not out["passed"]:
        raise CommandFailed(f"{args.ms}: {out['reason']}")
    return 0
