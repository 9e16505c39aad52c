"""``contimg demo``: the pipeline end to end on simulated DSA-110 data (``make demo``).

What it runs today:

1. simulate three consecutive small groups at the Dec 54.6 campaign pointing, the
   middle one containing the transit of J0834+5534 (skipped when the files exist);
2. the ``ingest_group`` Prefect flow over them (ephemeral Prefect unless
   ``PREFECT_API_URL`` points at a server): discovery, conversion, CASA gate,
   catalog records;
3. the calibrator/target classification of each group (the next stage's input);
4. ``contimg status`` and a DuckDB query of ``ms_index``.

Later stages (calibrate, apply, image) extend this command as they land.
"""

from __future__ import annotations

import os
from pathlib import Path

DEMO_CALIBRATOR = "J0834+5534"
DEMO_DEC_DEG = 54.5734
DEMO_DATE = "2026-11-25"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="simulate, ingest and report on a few DSA-110 groups")
    p.add_argument("--workdir", type=Path, default=Path("demo-data"), help="base directory (default demo-data)")
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--scale", choices=["small", "full"], default="small")
    p.set_defaults(handler=run)


def _simulate(incoming: Path, n_groups: int, scale: str) -> None:
    from astropy.time import Time, TimeDelta

    from contimg.simulate import group_cadence_s, scale_preset, simulate_group, transit_start_time
    from contimg.sky.catalog import find_calibrator

    if len(list(incoming.glob("*.hdf5"))) >= 16 * n_groups:
        print(f"[1/4] using the simulated groups already in {incoming}")
        return
    preset = scale_preset(scale)
    cal = find_calibrator(DEMO_CALIBRATOR)
    middle = transit_start_time(cal.ra_deg, DEMO_DATE, dec_deg=cal.dec_deg, n_times=preset["n_times"])
    cadence = group_cadence_s(preset["n_times"])
    first = Time(middle) - TimeDelta(cadence * (n_groups // 2), format="sec")
    print(f"[1/4] simulating {n_groups} {scale} groups into {incoming} ({DEMO_CALIBRATOR} transits in group {n_groups // 2 + 1})")
    for i in range(n_groups):
        start = first + TimeDelta(cadence * i, format="sec")
        group = simulate_group(incoming, start, pointing_dec_deg=DEMO_DEC_DEG, seed=i, **preset)
        print(f"      {group.group_id}: {len(group.paths)} subband files")


def run(args) -> int:
    workdir = args.workdir.resolve()
    incoming = workdir / "incoming"
    os.environ["CONTIMG_BASE_DIR"] = str(workdir)
    # Freshly simulated files are complete at once; the demo need not wait for them to settle.
    os.environ.setdefault("CONTIMG_FILE_SETTLE_S", "0")
    _simulate(incoming, args.groups, args.scale)

    print("[2/4] running the ingest_group flow (Prefect)")
    from flows.ingest_group import ingest_group

    states = ingest_group(str(incoming))
    for group_id, state in sorted(states.items()):
        print(f"      {group_id}  {state}")

    print("[3/4] classifying the groups (calibrator transit inside the primary beam?)")
    from contimg.sky.selection import classify_group

    for group_id in sorted(states):
        first_file = sorted(incoming.glob(f"{group_id}_sb*.hdf5"))[0]
        result = classify_group(first_file)
        if result.kind == "calibrator":
            print(f"      {group_id}  calibrator {result.calibrator.name}: peak at integration "
                  f"{result.peak_index}, predicted {result.predicted_flux:.2f}")
        else:
            print(f"      {group_id}  target")

    print("[4/4] what the catalog recorded")
    from contimg_cli.catalog_cmds import format_table
    from contimg_cli.main import main as contimg_main

    contimg_main(["status"])
    from catalog.query import query

    rows = query(workdir / "catalog",
                 "SELECT group_id, stage, writer, round(mid_mjd, 5) AS mid_mjd, "
                 "round(pointing_dec_deg, 4) AS dec_deg, path FROM ms_index ORDER BY group_id").to_pylist()
    print("\nms_index:")
    print(format_table(rows, ["group_id", "stage", "writer", "mid_mjd", "dec_deg", "path"]))
    print(f"\nQuery it yourself:  .venv/bin/contimg query \"SELECT * FROM stage_runs\" "
          f"(with CONTIMG_BASE_DIR={workdir})")
    return 0
