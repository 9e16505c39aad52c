"""``contimg config``: print the effective settings and where each comes from."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="print the effective settings")
    parser.add_argument("--instance", action="store_true",
                        help="print only the pipeline instance of these settings (for CONTIMG_INSTANCE, prefect.yaml)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from contimg.config import ENV_PREFIX, load_settings, pipeline_instance

    settings = load_settings()
    if args.instance:
        print(pipeline_instance(settings))
        return 0
    for name, value in vars(settings).items():
        key = ENV_PREFIX + name.upper()
        source = "env" if key in os.environ else "default"
        print(f"{name:24s} {str(value):40s} {source:8s} {key}")
    print(f"{'(pipeline instance)':24s} {pipeline_instance(settings):40s} {'derived':8s} from catalog_dir")
    return 0
