"""``contimg convert GROUP_OR_DIR``: convert one group by hand and record it."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a group (a subband file, or a directory and --group) to a validated MS",
        description="Convert one group to an MS, validate it, and record it in ms_index "
        "exactly as the ingest flow does.",
    )
    p.add_argument("source", help="a subband file of the group, or a directory holding subband files")
    p.add_argument("--group", help="group id (YYYY-MM-DDTHH:MM:SS) when SOURCE is a directory holding several")
    p.add_argument("--writer", choices=["direct-subband", "pyuvdata"], default=None)
    p.add_argument("--out", type=Path, default=None, help="output MS path (default: products/ms/<date>/<stem>.ms)")
    p.add_argument("--allow-incomplete", action="store_true", help="convert with missing subbands flagged")
    p.add_argument("--field-per-integration", action="store_true", help="one field per integration")
    p.add_argument("--no-record", action="store_true", help="do not record in the catalog")
    p.set_defaults(handler=run)


def run(args) -> int:
    from contimg import lease as leases
    from contimg import naming
    from contimg.config import load_settings
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.errors import InvalidInputError

    settings = load_settings(writer=args.writer)
    source = Path(args.source)
    directory = source if source.is_dir() else source.parent
    groups = discover_groups(
        directory, tolerance_s=settings.group_tolerance_s, settle_s=0.0, timeout_s=0.0,
        expected_subbands=settings.expected_subbands,
    )
    if not source.is_dir():
        groups = [g for g in groups if source.resolve() in {p.resolve() for p in g.files.values()}]
    if args.group:
        groups = [g for g in groups if g.group_id == args.group]
    if len(groups) != 1:
        ids = ", ".join(g.group_id for g in groups) or "none"
        raise InvalidInputError(f"{source} holds {len(groups)} matching groups ({ids}); name one with --group")
    group = groups[0]
    # The group's lease, as the pipeline's runs take it: a sweep converting the same
    # group at the same time is not disturbed (this command stops, saying who has it).
    # Errors are reported by contimg_cli.main (one line, exit 2 bad input, 1 failure).
    with leases.hold(naming.group_lease_path(settings.scratch_dir, group.group_id), settings.lease_seconds,
                     heartbeat_s=settings.lease_heartbeat_interval_s) as lease:
        result = convert_group(
            group.group_id, group.files, products_dir=settings.products_dir,
            scratch_dir=settings.scratch_dir, writer=settings.writer,
            expected_subbands=settings.expected_subbands, allow_incomplete=args.allow_incomplete,
            field_per_integration=args.field_per_integration, workers=settings.convert_workers,
            ms_path=args.out, lease=lease,
        )
        if not args.no_record:
            from tasks.records import record_conversion

            settings.ensure_dirs()
            record_conversion(settings, result, group)
    print(f"{result.group_id}: {result.ms_path} ({result.writer}, {result.seconds:.1f} s)")
    if result.subbands_missing:
        print("  flagged missing subbands: " + ", ".join(f"sb{s:02d}" for s in result.subbands_missing))
    return 0
