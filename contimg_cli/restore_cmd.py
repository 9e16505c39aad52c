"""``contimg restore GROUP``: rebuild an archived group's calibrated MS from the archive.

Examples::

    contimg restore 2026-11-25T09:37:55                    # back to products/ms/<date>/<stem>.ms
    contimg restore 2026-11-25T09:37:55 --out /tmp/g.ms    # somewhere else

The archive keeps the MS lean (no MODEL_DATA, no CORRECTED_DATA; no
WEIGHT_SPECTRUM when it is WEIGHT over the channels). The command checks the
archived copy against its recorded checksums, copies it back, puts the columns
back and applies the caltables recorded for the group
(``tasks.archive.restore_group``): CORRECTED_DATA is what it was before
archiving, bit for bit. The archive and the catalog's record of the MS are not
changed; the run is recorded in ``stage_runs`` (stage ``restore``).
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("restore", help="rebuild an archived group's calibrated MS from the archive")
    p.add_argument("group_id", metavar="GROUP", help="group id, YYYY-MM-DDTHH:MM:SS (see `contimg status`)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="where the MS goes (default: its place in the products directory); must not exist")
    p.set_defaults(handler=run)


def run(args) -> int:
    from contimg import naming
    from contimg.config import load_settings
    from contimg.errors import ContimgError, InvalidInputError
    from tasks import ingest
    from tasks.archive import restore_group

    try:
        naming.parse_group_id(args.group_id)
    except ValueError:
        raise InvalidInputError(f"{args.group_id!r} is not a group id (YYYY-MM-DDTHH:MM:SS)") from None
    settings = load_settings()
    settings.ensure_dirs()
    lease = ingest.try_group_lease(settings, args.group_id)
    if lease is None:
        raise ContimgError(f"{args.group_id}: held by {ingest.lease_holder(settings, args.group_id)}; "
                           "try again when that run ends")
    with lease:
        done = restore_group(settings, args.group_id, out=args.out, lease=lease)
    print(f"{args.group_id}  {done.line()}")
    return 0
