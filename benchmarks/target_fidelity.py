"""Target groups at the thermal limit (issue 19): full-size target groups 20 and 60 min after their
calibrator, with the default corruptions, through the target path, judged against the simulator's truth.

    nice flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/target_fidelity.py [--workdir DIR]
        [--variants transferred,flagged,selfcal] [--simulate-only]

The night: 3C147 (J0542+4951, 22.5 Jy) transits the centre of the calibrator group at Dec +49.85 (not
the tests' J0834+5534 at +54.6, nor the referee night's 3C48 at +33.2); the target groups start 20 and 60
min after it. One seed: one telescope, whose gain phases (0.2 rad rms, 30-120 min periods), delays and
bandpasses the groups share; RFI, dead and correlator-flagged antennas and thermal noise as
``contimg simulate`` makes them. The raw files are simulated once into ``--workdir`` and reused.

In this one process: the calibrator group is converted and calibrated as the calibrator flow does
(``calibrate_ms``: flag, model, K/B/G, gate); each target group is converted, then processed in
variants, each from the converted MS (flags reset), timed step by step (wall and CPU):

* ``transferred``: applycal of the calibrator's set, image (the pipeline before issue 19);
* ``flagged``: flag (``flag_for_calibration``, as the calibrator groups), applycal, image;
* ``selfcal``: flag, applycal, image with self-calibration (no bright-source fitting, full first pass);
* ``full``: the pipeline's defaults for a group with no previous group: flag, applycal, a quick first
  pass, self-calibration against its clean components, the bright sources fitted through the drifting
  beam, the final pass;
* ``truegains``: the reference: the simulator's true gains applied (``tests/cal_truth.apply_true_gains``),
  flagged, the bright sources fitted, no self-calibration;
* ``full-prior``: the same for a group whose previous group (``target15`` for ``target20``, imaged
  ``full`` first in the same run) was imaged: self-calibration against that group's sky model, one pass.

``--targets calibrator`` images the calibrator group itself (22.5 Jy at the centre) with its own set,
the "bright source at the centre" field.

Each image is judged against the truth: noise (MAD of the residual inside pb > 0.5) over the truth's
natural thermal ``image_sigma_jy``, pbcor peak / truth for sources above 20 sigma (median and scatter),
positions (beams), completeness above 10 sigma, false detections (all, and not marked sidelobe suspect).
The real-time factor: (flag + applycal + image) / the group's 309 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.imaging import cpu_s, cpu_since  # noqa: E402

GROUP_S = 24 * 12.884902
CALIBRATOR = "J0542+4951"
DEC_DEG = 49.85
TARGET_MINUTES = (20, 60)
#: The group before target20 (its sky model is target20's self-calibration model in the one-pass variant).
PREVIOUS = {"target20": "target15"}
SEED = 7


def simulate_night(workdir: Path) -> dict[str, Path]:
    """{role: incoming directory of that one group}, simulated once (calibrator, target20, target60)."""
    from contimg import simulate
    from contimg.simulate.group import transit_start_time
    from contimg.sky.catalog import find_calibrator

    cal = find_calibrator(CALIBRATOR)
    start = transit_start_time(cal.ra_deg, "2026-11-25", dec_deg=DEC_DEG)
    minutes = sorted(set(TARGET_MINUTES) | {int(p[len("target"):]) for p in PREVIOUS.values()})
    plan = {"calibrator": start, **{f"target{m}": start + timedelta(minutes=m) for m in minutes}}
    out = {}
    for role, when in plan.items():
        inbox = workdir / "in" / role
        if len(list(inbox.glob("*_truth.json"))) != 1:
            shutil.rmtree(inbox, ignore_errors=True)
            t = time.perf_counter()
            simulate.simulate_group(inbox, when, seed=SEED, scale="full", pointing_dec_deg=DEC_DEG,
                                    calibrator=CALIBRATOR if role == "calibrator" else None)
            print(f"simulated {role} ({when}) in {time.perf_counter() - t:.0f} s", flush=True)
        out[role] = inbox
    return out


def convert(inbox: Path, workdir: Path, role: str) -> Path:
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups

    (grp,) = discover_groups(inbox, settle_s=0)
    prod, scratch = workdir / "prod" / role, workdir / "scratch" / role
    for d in (prod, scratch):
        shutil.rmtree(d, ignore_errors=True)
    return convert_group(grp.group_id, grp.files, products_dir=prod, scratch_dir=scratch).ms_path


def truth_json(inbox: Path) -> Path:
    return next(inbox.glob("*_truth.json"))


def calibrate(ms: Path, workdir: Path):
    from contimg.calibration.pipeline import CalibrationOptions, calibrate_ms

    shutil.rmtree(workdir / "caltables", ignore_errors=True)
    t = time.perf_counter()
    r = calibrate_ms(ms, options=CalibrationOptions(calibrator=CALIBRATOR), table_prefix=workdir / "caltables" / "set",
                     log_dir=workdir / "logs" / "calibrate")
    print(f"calibrated on {r.calibrator}: {'passed' if r.passed else 'REJECTED ' + '; '.join(r.reasons)} in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return r


def judge(result, ms: Path, truth: Path) -> dict:
    """Truth metrics of one image (benchmarks/imaging.py's, plus noise over the natural thermal)."""
    from benchmarks.imaging import truth_metrics

    t = json.loads(truth.read_text())
    # the false detections' offsets are given from the brightest source of the field (its drift residuals lie
    # on its row and column)
    brightest = max(t["sky"], key=lambda s: s["flux_jy"] * _pb(s, t))
    m, _ = truth_metrics(result, ms, truth, reference=(brightest["ra_deg"], brightest["dec_deg"]))
    sigma = t["corruptions"]["noise"].get("image_sigma_jy")
    m["natural_thermal_mjy"] = 1e3 * sigma if sigma else None
    m["noise_over_thermal"] = m["noise_inner_mjy"] / (1e3 * sigma) if sigma else None
    m["false_offsets_from"] = brightest["name"]
    return m


def _pb(src: dict, truth: dict) -> float:
    """The Airy beam at a source's smallest distance from the meridian pointing during the group (1.4 GHz)."""
    import math

    import numpy as np

    from contimg.sky.beam import airy_power

    dec0 = math.radians(truth["pointing_dec_deg"])
    dec = math.radians(src["dec_deg"])
    ha = np.asarray(truth["lst_rad"]) - math.radians(src["ra_deg"])
    cos_d = math.sin(dec) * math.sin(dec0) + math.cos(dec) * math.cos(dec0) * np.cos(ha)
    return float(np.max(airy_power(np.arccos(np.clip(cos_d, -1, 1)), 1.4e9)))


def process(ms: Path, cal, workdir: Path, variant: str, tag: str, prior=None, truth: Path | None = None) -> dict:
    from contimg.calibration import flagging
    from contimg.calibration.applycal import ApplyTable, apply_tables
    from contimg.calibration.selfcal import SelfcalOptions
    from contimg.config import load_settings
    from contimg.imaging.image import ImagingOptions, image_ms

    steps, cpu = {}, {}
    logs = workdir / "logs" / tag
    shutil.rmtree(workdir / "images" / tag, ignore_errors=True)  # a rerun's products, its selfcal table
    if variant in ("flagged", "selfcal", "full", "full-prior", "truegains"):
        t, c = time.perf_counter(), cpu_s()
        report = flagging.flag_for_calibration(ms, log_dir=logs)
        steps["flag"], cpu["flag"] = time.perf_counter() - t, cpu_since(c)
        flagged = report.flagged_fraction
    else:
        # the converted flags: what an unflagged target group carries
        flagging.save_converted_flags(ms)
        _reset_flags(ms)
        flagged = None
    tables = [ApplyTable(s.path, s.kind, s.interp, list(s.spwmap), s.gainfield) for s in cal.solutions]
    t, c = time.perf_counter(), cpu_s()
    if variant == "truegains":  # the reference: the simulator's own gains, no calibration error at all
        sys.path.insert(0, str(REPO / "tests"))
        from cal_truth import apply_true_gains

        apply_true_gains(ms, json.loads(truth.read_text()))
    else:
        apply_tables(ms, tables, log_path=logs / "applycal.log")
    steps["applycal"], cpu["applycal"] = time.perf_counter() - t, cpu_since(c)
    if variant.startswith("full"):  # the pipeline's defaults: self-calibration, bright sources, quick first pass
        options = ImagingOptions.from_settings(load_settings(), data_column="corrected")
    elif variant == "truegains":  # the true gains, the bright sources fitted, no self-calibration
        options = ImagingOptions.from_settings(load_settings(), data_column="corrected", selfcal=None)
    else:
        options = ImagingOptions(data_column="corrected", selfcal=SelfcalOptions() if variant == "selfcal" else None)
    t, c = time.perf_counter(), cpu_s()
    result = image_ms(ms, workdir / "images" / tag / "img", options=options, work_dir=workdir / "scratch" / "image",
                      log_dir=logs, selfcal_table=workdir / "images" / tag / "selfcal.G", prior_model=prior)
    steps["image"], cpu["image"] = time.perf_counter() - t, cpu_since(c)
    return {"result": result, "steps": steps, "cpu": cpu, "flagged_fraction": flagged}


def _reset_flags(ms: Path) -> None:
    from casacore.tables import table

    from contimg.calibration.flagging import _converted_flags  # the saved converted version

    with table(str(ms), ack=False, readonly=False) as tab:
        flags, rows = _converted_flags(Path(ms), tab.nrows())
        tab.putcol("FLAG", flags)
        tab.putcol("FLAG_ROW", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "target_fidelity")
    ap.add_argument("--variants", default="transferred,flagged,selfcal,full,full-prior")
    ap.add_argument("--targets", default=",".join(f"target{m}" for m in TARGET_MINUTES))
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--label", default="", help="appended to each result's name (a settings experiment: "
                                                "CONTIMG_* variables apply to the full variants)")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    inboxes = simulate_night(workdir)
    if args.simulate_only:
        return 0
    cal_ms = convert(inboxes["calibrator"], workdir, "calibrator")
    cal = calibrate(cal_ms, workdir)
    report = {}
    for role in args.targets.split(","):
        ms = cal_ms if role == "calibrator" else convert(inboxes[role], workdir, role)
        truth = truth_json(inboxes[role])
        for variant in args.variants.split(","):
            tag = f"{role}-{variant}{args.label}"
            prior = None
            if variant == "full-prior":
                from contimg.calibration.selfcal import read_components

                before = workdir / "images" / f"{PREVIOUS.get(role)}-full" / "img-components.parquet"
                if role not in PREVIOUS or not before.exists():
                    print(f"== {tag}: skipped (no sky model of the previous group: image {PREVIOUS.get(role)} "
                          "with variant full first)", flush=True)
                    continue
                prior = read_components(before)
            t = time.perf_counter()
            done = process(ms, cal, workdir, variant, tag, prior=prior, truth=truth)
            metrics = judge(done["result"], ms, truth)
            total = sum(done["steps"].values())
            row = {"steps_s": {k: round(v, 1) for k, v in done["steps"].items()}, "cpu_s": done["cpu"],
                   "real_time_factor": round(total / GROUP_S, 3), "flagged_fraction": done["flagged_fraction"],
                   "selfcal": {k: v for k, v in done["result"].selfcal.items() if k not in ("peak_ratios",)},
                   "imaging_timings": {k: round(v, 1) for k, v in done["result"].timings.items()}, **metrics}
            report[tag] = row
            print(f"== {tag} ({time.perf_counter() - t:.0f} s)\n{json.dumps(row, indent=1, default=str)}", flush=True)
    print(json.dumps({k: {m: v[m] for m in ("noise_over_thermal", "flux_ratio_median", "flux_ratio_scatter",
                                           "median_offset_beams", "completeness_above_10sigma",
                                           "false_fraction_unsuspected", "real_time_factor")}
                      for k, v in report.items()}, indent=1))
    (workdir / f"report-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
