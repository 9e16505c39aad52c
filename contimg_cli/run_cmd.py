"""``contimg run FLOW``: run a flow once by hand (ephemeral Prefect, or the configured server)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a pipeline flow once")
    flows = p.add_subparsers(dest="flow", required=True, metavar="FLOW")
    ingest = flows.add_parser("ingest", help="sweep an incoming directory and convert ready groups")
    ingest.add_argument("incoming_dir", nargs="?", default=None, help="default: the incoming_dir setting")
    ingest.add_argument("--allow-incomplete", action="store_true",
                        help="also convert groups that timed out incomplete (missing subbands flagged)")
    ingest.add_argument("--writer", choices=["direct-subband", "pyuvdata"], default=None)
    ingest.set_defaults(handler=run_ingest)


def run_ingest(args) -> int:
    from flows.ingest_group import ingest_group

    states = ingest_group(args.incoming_dir, allow_incomplete=args.allow_incomplete, writer=args.writer)
    for group_id, state in sorted(states.items()):
        print(f"{group_id}  {state}")
    return 0
