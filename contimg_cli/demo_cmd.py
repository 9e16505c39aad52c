"""``contimg demo``: a short simulated night through the pipeline's flows (``make demo``).

1. simulate a short night of small DSA-110 groups at the Dec 54.6 campaign
   pointing, J0834+5534 transiting one of them (skipped when the files exist);
2. let them arrive out of order, as the telescope's stream can: the targets
   before the transit first, then the calibrator group and the rest;
3. after each arrival, run what the deployments run on their events: the
   ``ingest_group`` sweep (``contimg.group.ready``), ``process_converted``
   (``contimg.group.converted``: a target waits for calibration, the calibrator
   group is calibrated, registered and imaged), and ``wake_waiting``
   (``contimg.calset.registered``: the waiting targets are applied the new set
   and imaged);
4. print ``contimg status``, the images and a DuckDB query, and how to watch the
   same flows in the Prefect UI.

The flows run on the node's Prefect server when one answers (``contimg serve``'s;
then every run, artifact and event is in its UI), else on an ephemeral server of
the demo's own (:mod:`contimg_cli.prefect_server`; the first line says which).
"""

from __future__ import annotations

import os
from pathlib import Path

from contimg.errors import InvalidInputError

DEMO_CALIBRATOR = "J0834+5534"
DEMO_DEC_DEG = 54.5734
DEMO_DATE = "2026-11-25"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a short simulated night through the pipeline's flows")
    p.add_argument("--workdir", type=Path, default=Path("demo-data"), help="base directory (default demo-data)")
    p.add_argument("--groups", type=int, default=4, help="groups in the night (default 4; at least 2)")
    p.add_argument("--scale", choices=["small", "medium", "full"], default="small")
    p.add_argument("--variables", action="store_true",
                   help="add the variable sources of contimg simulate --variables (a flare, a scattering dip, "
                        "a drift and two constant controls, SIMVAR_*) to the simulated night")
    p.set_defaults(handler=run, uses_prefect=True)


def night_plan(n_groups: int, scale: str, *, variables: bool = False):
    """The demo night: its size preset, the start times of its ``n_groups`` groups (J0834+5534 transiting in
    the middle one, index ``n_groups // 2``) and, with ``variables``, the variable sources of
    ``contimg simulate --variables`` (:func:`contimg.simulate.variables.night_variables`; else None)."""
    from astropy.time import Time, TimeDelta

    from contimg.simulate import group_cadence_s, scale_preset, transit_start_time
    from contimg.sky.catalog import find_calibrator

    preset = scale_preset(scale)
    cal = find_calibrator(DEMO_CALIBRATOR)
    middle = transit_start_time(cal.ra_deg, DEMO_DATE, dec_deg=cal.dec_deg, n_times=preset["n_times"])
    cadence = group_cadence_s(preset["n_times"])
    first = Time(middle) - TimeDelta(cadence * (n_groups // 2), format="sec")
    starts = [first + TimeDelta(cadence * i, format="sec") for i in range(n_groups)]
    extra = None
    if variables:
        from contimg_cli.simulate_cmd import night_variables_for

        extra = night_variables_for(starts, cadence, DEMO_DEC_DEG)
    return preset, starts, extra


def simulate_night(night: Path, n_groups: int, scale: str, *, variables: bool = False) -> None:
    """Simulate ``n_groups`` consecutive groups into ``night``, J0834+5534 transiting the middle one
    (skipped when the files are there); one seed, so the groups share one telescope's gains.
    ``variables``: add the variable sources of ``contimg simulate --variables``
    (:func:`contimg.simulate.variables.night_variables`)."""
    from contimg.simulate import simulate_group

    if len(list(night.glob("*.hdf5"))) >= 16 * n_groups:
        print(f"[1/5] using the simulated night already in {night}")
        return
    preset, starts, extra = night_plan(n_groups, scale, variables=variables)
    print(f"[1/5] simulating a night of {n_groups} {scale} groups into {night} ({DEMO_CALIBRATOR} transits in "
          f"group {n_groups // 2 + 1})")
    for start in starts:
        # one seed: one telescope (delays, bandpasses and slowly varying gains shared by the groups)
        group = simulate_group(night, start, pointing_dec_deg=DEMO_DEC_DEG, seed=0, variables=extra, **preset)
        print(f"      {group.group_id}: {len(group.paths)} subband files")


def night_groups(night: Path) -> dict[str, list[Path]]:
    """Group id -> its files in the night: the subbands (grouped as ingest groups them: their
    timestamps differ by seconds) and the simulator's truth sidecar (image QA cross-matches it)."""
    from contimg.conversion.discovery import discover_groups

    return {c.group_id: [*c.files.values(), *night.glob(f"{c.group_id}_truth.json")]
            for c in discover_groups(night, settle_s=0)}


def _arrive(incoming: Path, files: list[Path]) -> None:
    """Hard-link (else copy) ``files`` into the incoming directory."""
    import shutil

    for path in files:
        destination = incoming / path.name
        if destination.exists():
            continue
        try:
            destination.hardlink_to(path)
        except OSError:
            shutil.copy2(path, destination)


def _print_states(states: dict[str, str]) -> None:
    for group_id, state in sorted(states.items()):
        print(f"      {group_id}  {state}")
    if not states:
        print("      (nothing to do)")


def run(args) -> int:
    import time

    if args.groups < 2:
        raise InvalidInputError(f"--groups {args.groups}: a night needs at least 2 groups (targets and a calibrator)")
    workdir = args.workdir.resolve()
    night, incoming = workdir / "night", workdir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    os.environ["CONTIMG_BASE_DIR"] = str(workdir)
    os.environ["CONTIMG_INCOMING_DIR"] = str(incoming)
    # Freshly simulated files are complete at once; the demo need not wait for them to settle.
    os.environ.setdefault("CONTIMG_FILE_SETTLE_S", "0")
    # PyBDSF on every image costs ~30 s each; `contimg qa IMAGE` runs it on one.
    os.environ.setdefault("CONTIMG_IMAGING_FIND_SOURCES", "false")
    started = time.monotonic()
    simulate_night(night, args.groups, args.scale, variables=args.variables)
    groups = night_groups(night)
    group_ids = sorted(groups)
    transit = len(group_ids) // 2
    first, then = group_ids[:transit], group_ids[transit:]

    from flows.ingest_group import ingest_group
    from flows.process_group import process_converted
    from flows.target_group import wake_waiting

    print(f"[2/5] {len(first)} target group(s) arrive before the calibrator: ingest, then route them")
    _arrive(incoming, [f for g in first for f in groups[g]])
    _print_states(ingest_group())
    _print_states(process_converted())
    print("      (no caltable set is registered yet: the targets wait for calibration, and waiting is not a failure)")

    print(f"[3/5] the calibrator group and {len(then) - 1} more target(s) arrive: ingest, route, calibrate, image")
    _arrive(incoming, [f for g in then for f in groups[g]])
    _print_states(ingest_group())
    _print_states(process_converted())

    print("[4/5] the registration wakes the groups waiting for calibration: apply the new set and image them")
    _print_states(wake_waiting())

    print(f"[5/5] what the catalog recorded ({time.monotonic() - started:.0f} s so far)")
    from catalog.query import query
    from contimg_cli.catalog_cmds import format_table
    from contimg_cli.main import main as contimg_main

    contimg_main(["status"])
    sql = ("SELECT m.group_id, m.stage, m.caltable_set, round(1e3 * i.noise_jy, 2) AS noise_mjy, "
           "round(i.beam_major_arcsec) AS bmaj_arcsec, i.path FROM ms_index m "
           "LEFT JOIN images i ON i.group_id = m.group_id AND i.type = 'pbcor' ORDER BY m.group_id")
    rows = query(workdir / "catalog", sql).to_pylist()
    print("\nevery group, its calibration set and its pbcor image:")
    print(format_table(rows, ["group_id", "stage", "caltable_set", "noise_mjy", "bmaj_arcsec", "path"]))
    print(f"\nQuery it yourself (CONTIMG_BASE_DIR={workdir}):\n  .venv/bin/contimg query \"{sql}\"")
    print("\nWatch the same flows in the Prefect UI, on these data (the set is valid for 3 h around the transit):\n"
          f"  CONTIMG_BASE_DIR={workdir} .venv/bin/contimg serve &\n"
          f"  .venv/bin/contimg simulate --out {incoming} --start {DEMO_DATE}T12:20:00 --scale small\n"
          "then open http://127.0.0.1:4200: the new group is converted, calibrated and imaged by the deployments "
          "(docs/operations.md).")
    unfinished = [r["group_id"] for r in rows if r["stage"] != "imaged"]
    if unfinished:
        from contimg_cli.main import CommandFailed

        raise CommandFailed(f"not imaged: {', '.join(unfinished)}")
    return 0
