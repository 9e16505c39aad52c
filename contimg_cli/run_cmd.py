"""``contimg run FLOW``: run a flow once by hand, on the node's Prefect server when one answers, else an
ephemeral one of its own (:mod:`contimg_cli.prefect_server`)."""

from __future__ import annotations

from contimg_cli.main import CommandFailed


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a pipeline flow once")
    p.set_defaults(uses_prefect=True)  # contimg_cli.main chooses the Prefect server
    flows = p.add_subparsers(dest="flow", required=True, metavar="FLOW")
    ingest = flows.add_parser("ingest", help="sweep an incoming directory and convert ready groups")
    ingest.add_argument("incoming_dir", nargs="?", default=None, help="default: the incoming_dir setting")
    ingest.add_argument("--allow-incomplete", action="store_true",
                        help="also convert groups that timed out incomplete (missing subbands flagged)")
    ingest.add_argument("--writer", choices=["direct-subband", "pyuvdata"], default=None)
    ingest.set_defaults(handler=run_ingest)
    cal = flows.add_parser("calibrate", help="calibrate a calibrator group and register its caltable set")
    cal.add_argument("group", metavar="GROUP_OR_MS", help="group id (YYYY-MM-DDTHH:MM:SS) or MS path")
    cal.set_defaults(handler=run_calibrate)
    target = flows.add_parser("target", help="apply the valid caltables to a group and image it")
    target.add_argument("group", metavar="GROUP_OR_MS", help="group id (YYYY-MM-DDTHH:MM:SS) or MS path")
    target.add_argument("--force", action="store_true",
                        help="flag, apply and image again even if already flagged or imaged")
    target.set_defaults(handler=run_target)
    group = flows.add_parser("group", help="classify a converted group and run its calibrator or target flow")
    group.add_argument("group", metavar="GROUP_OR_MS", help="group id (YYYY-MM-DDTHH:MM:SS) or MS path")
    group.set_defaults(handler=run_group)
    wake = flows.add_parser("wake", help="run the target flow for every group waiting for calibration")
    wake.set_defaults(handler=run_wake)
    arch = flows.add_parser("archive", help="archive finished groups (verified copies), apply raw retention, "
                                            "compact the catalog, record disk use")
    arch.add_argument("--no-compact", action="store_true", help="do not compact the catalog")
    arch.set_defaults(handler=run_archive)


def _check_settings(incoming_dir: str | None = None) -> None:
    """Bad settings or a missing directory fail here, in one line, before a flow run starts."""
    from pathlib import Path

    from contimg.config import load_settings
    from contimg.errors import InvalidInputError

    load_settings()  # a bad CONTIMG_* value
    if incoming_dir is not None and not Path(incoming_dir).is_dir():
        raise InvalidInputError(f"{incoming_dir} is not a directory (the incoming directory to sweep)")


def run_ingest(args) -> int:
    from flows.ingest_group import ingest_group

    _check_settings(args.incoming_dir)
    states = ingest_group(args.incoming_dir, allow_incomplete=args.allow_incomplete, writer=args.writer)
    for group_id, state in sorted(states.items()):
        print(f"{group_id}  {state}")
    return 0


def _check_group(text: str) -> None:
    """Bad input fails here, in one line, before a flow run starts (Prefect logs a failed run's traceback)."""
    from flows._groups import check_instance, resolve, settings_for

    settings = settings_for(None)
    check_instance(settings, ms_or_group_id=text)
    resolve(settings, text)


def run_calibrate(args) -> int:
    from flows.calibrator_group import calibrator_group

    _check_group(args.group)
    out = calibrator_group(args.group)
    print(f"{out['group_id']}  {out['state']}  {out['set_name'] or ''}".rstrip())
    for reason in out["reasons"]:
        print(f"  rejected: {reason}")
    if out["state"] == "rejected":
        raise CommandFailed(f"{out['group_id']}: caltable set rejected by the QA gate: " + "; ".join(out["reasons"]))
    return 0


def run_target(args) -> int:
    from flows.target_group import target_group

    _check_group(args.group)
    out = target_group(args.group, force=args.force)
    print(f"{out['group_id']}  {out['state']}  {out['caltable_set'] or out['detail'] or ''}".rstrip())
    if out["state"] == "failed":  # e.g. too much flagged: recorded, not imaged
        raise CommandFailed(f"{out['group_id']} failed: {out['detail'] or 'see contimg status'}")
    return 0


def run_group(args) -> int:
    from flows.process_group import process_group

    _check_group(args.group)
    out = process_group(args.group)
    cal, target = out["calibration"], out["target"]
    print(f"{out['group_id']}  {out['kind']}")
    if cal:
        print(f"  calibration  {cal['state']}  {cal['set_name'] or ''}".rstrip())
        for reason in cal["reasons"]:
            print(f"    rejected: {reason}")
    if target:
        print(f"  target  {target['state']}  {target['caltable_set'] or target['detail'] or ''}".rstrip())
    if cal and cal["state"] == "rejected":
        raise CommandFailed(f"{out['group_id']}: caltable set rejected by the QA gate: " + "; ".join(cal["reasons"]))
    if target and target["state"] == "failed":
        raise CommandFailed(f"{out['group_id']} failed: {target['detail'] or 'see contimg status'}")
    return 0


def run_wake(args) -> int:
    from flows.target_group import wake_waiting

    _check_settings()
    states = wake_waiting()
    for group_id, state in sorted(states.items()):
        print(f"{group_id}  {state}")
    if not states:
        print("no group is waiting for calibration")
    return 0


def run_archive(args) -> int:
    from flows.archive import FAILED, archive
    from tasks.archive import human_bytes

    _check_settings()
    out = archive(compact=not args.no_compact)
    for group_id, outcome in sorted(out["groups"].items()):
        print(f"{group_id}  {outcome['state']}  {outcome['detail']}".rstrip())
    if not out["groups"]:
        print("no group has archive work left")
    if out["compaction"] is not None:
        c = out["compaction"]
        skipped = f", {c['skipped']} file(s) skipped (see the log)" if c["skipped"] else ""
        print(f"catalog  compacted {c['partitions']} partition(s), {c['files_in']} files merged{skipped}")
    by_area: dict[str, list[dict]] = {}
    for row in out["disk_usage"]:
        by_area.setdefault(row["area"], []).append(row)
    for area, rows in by_area.items():
        total = sum(r["bytes"] for r in rows)
        # kind "." is the files at the top of the area (contimg.archive.disk_usage)
        kinds = ", ".join(f"{'top level' if r['kind'] == '.' else r['kind']} {human_bytes(r['bytes'])}"
                          for r in sorted(rows, key=lambda r: -r["bytes"]))
        print(f"disk  {area}  {human_bytes(total)} ({kinds})" if total else f"disk  {area}  empty")
    failed = sorted(g for g, o in out["groups"].items() if o["state"] == FAILED)
    if failed:
        raise CommandFailed(f"{len(failed)} group(s) not archived: {', '.join(failed)} (the lines above say why)")
    return 0
