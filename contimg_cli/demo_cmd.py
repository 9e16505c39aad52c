"""``contimg demo``: the pipeline end to end on simulated DSA-110 data (``make demo``).

What it runs today:

1. simulate three consecutive small groups at the Dec 54.6 campaign pointing, the
   middle one containing the transit of J0834+5534 (skipped when the files exist);
2. the ``ingest_group`` Prefect flow over them (ephemeral Prefect unless
   ``PREFECT_API_URL`` points at a server): discovery, conversion, CASA gate,
   catalog records;
3. the calibrator/target classification of each group;
4. calibration: the calibrator group is flagged, modelled, solved (K, B, G),
   QA-gated and registered; every group then gets the set valid for it applied
   into CORRECTED_DATA (``tasks.calibration``, as ``contimg calibrate`` and
   ``contimg applycal`` run it);
5. ``contimg status`` and a DuckDB query of ``ms_index``.

Later stages (image, archive) extend this command as they land.
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
        print(f"[1/6] using the simulated groups already in {incoming}")
        return
    preset = scale_preset(scale)
    cal = find_calibrator(DEMO_CALIBRATOR)
    middle = transit_start_time(cal.ra_deg, DEMO_DATE, dec_deg=cal.dec_deg, n_times=preset["n_times"])
    cadence = group_cadence_s(preset["n_times"])
    first = Time(middle) - TimeDelta(cadence * (n_groups // 2), format="sec")
    print(f"[1/6] simulating {n_groups} {scale} groups into {incoming} ({DEMO_CALIBRATOR} transits in group {n_groups // 2 + 1})")
    for i in range(n_groups):
        start = first + TimeDelta(cadence * i, format="sec")
        # one seed: one telescope (delays, bandpasses and slowly varying gains shared by the groups)
        group = simulate_group(incoming, start, pointing_dec_deg=DEMO_DEC_DEG, seed=0, **preset)
        print(f"      {group.group_id}: {len(group.paths)} subband files")


def _calibrate(workdir: Path, calibrators: list[str], converted: list[str]) -> None:
    from contimg import naming
    from contimg.config import load_settings
    from contimg.errors import ContimgError
    from tasks.calibration import apply_group, calibrate_group

    settings = load_settings(base_dir=workdir)
    for group_id in calibrators:
        reg = calibrate_group(settings, naming.ms_path(settings.products_dir, group_id))
        r = reg.result
        detail = (f"refant {r.refant}, {', '.join(s.kind for s in r.solutions)}, flagged "
                  f"{r.flagging['steps'][-1]['flagged_fraction']:.0%}" if r else "already calibrated")
        print(f"      {group_id}  set {reg.set_name}: {reg.status} ({detail})")
        for reason in (r.reasons if r else []):
            print(f"        rejected: {reason}")
    for group_id in converted:
        try:
            out = apply_group(settings, naming.ms_path(settings.products_dir, group_id))
        except ContimgError as exc:
            print(f"      {group_id}  not calibrated: {exc}")
            continue
        c = out["check"]
        scale = f"flux scale {c['amp_ratio']:.3f}" if c["amp_ratio"] == c["amp_ratio"] else "no model to compare"
        print(f"      {group_id}  applied {', '.join(out['sets'])} ({scale})")


def _image(workdir: Path, converted: list[str]) -> None:
    from catalog.query import query
    from contimg import naming
    from contimg.config import load_settings
    from contimg.errors import ContimgError
    from contimg.imaging.image import ImagingOptions
    from tasks.imaging import image_group

    settings = load_settings(base_dir=workdir)
    applied = {r["group_id"] for r in query(settings.catalog_dir, "SELECT group_id FROM ms_index "
                                                                  "WHERE cal_applied").to_pylist()}
    for group_id in converted:
        if group_id not in applied:
            print(f"      {group_id}  not imaged: no calibration applied")
            continue
        try:
            # the default grid covers the beam (the calibrator 1 deg north is inside and cleaned); source
            # finding (PyBDSF, ~30 s on that grid) is left to `contimg image` in the demo
            done = image_group(settings, naming.ms_path(settings.products_dir, group_id),
                               options=ImagingOptions.from_settings(settings), find_sources=False)
        except ContimgError as exc:
            print(f"      {group_id}  not imaged: {exc}")
            continue
        r, m = done.result, done.metrics
        print(f"      {group_id}  {r.backend}: noise {1e3 * m['noise_inner_jy']:.1f} mJy/beam "
              f"(predicted {1e3 * r.predicted_noise_jy:.1f}), peak {m['peak_jy']:.2f} Jy/beam, "
              f"{r.timings['total']:.0f} s -> {r.products['pbcor'].name}")


def run(args) -> int:
    workdir = args.workdir.resolve()
    incoming = workdir / "incoming"
    os.environ["CONTIMG_BASE_DIR"] = str(workdir)
    # Freshly simulated files are complete at once; the demo need not wait for them to settle.
    os.environ.setdefault("CONTIMG_FILE_SETTLE_S", "0")
    _simulate(incoming, args.groups, args.scale)

    print("[2/6] running the ingest_group flow (Prefect)")
    from flows.ingest_group import ingest_group

    states = ingest_group(str(incoming))
    for group_id, state in sorted(states.items()):
        print(f"      {group_id}  {state}")

    print("[3/6] classifying the groups (calibrator transit inside the primary beam?)")
    from contimg.sky.selection import classify_group

    calibrators = []
    for group_id in sorted(states):
        first_file = sorted(incoming.glob(f"{group_id}_sb*.hdf5"))[0]
        result = classify_group(first_file)
        if result.kind == "calibrator":
            calibrators.append(group_id)
            print(f"      {group_id}  calibrator {result.calibrator.name}: peak at integration "
                  f"{result.peak_index}, predicted {result.predicted_flux:.2f}")
        else:
            print(f"      {group_id}  target")

    print("[4/6] calibrating the calibrator group, applying the set to every group")
    _calibrate(workdir, calibrators, sorted(g for g, s in states.items() if s == "converted"))

    print("[5/6] imaging every calibrated group (WSClean when installed, else tclean)")
    _image(workdir, sorted(g for g, st in states.items() if st == "converted"))

    print("[6/6] what the catalog recorded")
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
