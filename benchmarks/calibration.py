"""Calibrator stage speed and truth recovery on a full-size calibrator group, one run.

    flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/calibration.py [--workdir DIR]

Simulates a full-size calibrator group (117 antennas, 16 SPWs x 48 channels, 24
integrations) at J0834+5534's transit with the default corruptions (noise, RFI,
dead and flagged antennas) and converts it, into ``--workdir`` (reused when it
already holds a converted group and its truth). The converted MS is copied
(sparse) into ``<workdir>/run`` before anything writes to it. Then, in this one
process:

* ``calibrate_ms``: flag, model, refant, solve_K, solve_B, solve_GP, solve_GA
  (each timed; the CASA logs go to ``<workdir>/run/logs``);
* its peak memory (issue 21; goal <= 4 GB): ``tasks.memory.StagePeakMemory``, the
  figure the flows record in ``stage_runs.peak_memory_mb``, and a 0.1 s sampler of
  this process and its children laid over the step timings (the peak per step);
  ``CONTIMG_CALIBRATION_MEMORY_BUDGET_GB`` sets the budget;
* ``apply_tables`` of K, B, GP, GA with each solution's interp and spwmap, timed,
  against a plain copy of the DATA column's bytes (python-casacore ``getcol`` in
  chunks, the same bytes written to a file and fsynced) timed before and after
  applycal in the same run;
* truth recovery relative to the reference antenna (``tests/cal_truth.py``):
  delays, bandpass amplitude and phase, gain phases; the flux scale and the
  scatter reduction from ``check_calibrated``; the flagged fraction; DATA
  checksummed before and after (bit for bit).

Prints a table next to the telescope team's figures on a 40-thread server
(bandpass 31 s, gaincal 10 s, applycal 4 s, ~41 s per calibrator group) and the
issue's goals on 2 cores: the whole calibrator stage < 60 s, applycal < 2x the
plain copy of DATA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # cal_truth: the truth comparison helpers the tests use

CHUNK_ROWS = 65536
CALIBRATOR = "J0834+5534"
TEAM = {"solve_B": 31.0, "solve_G": 10.0, "applycal": 4.0, "total": 41.0}  # 40-thread server, per group


def find_group(workdir: Path) -> tuple[Path, Path] | None:
    """(MS, truth json) of an already converted group in ``workdir``, or None."""
    mss = sorted((workdir / "prod" / "ms").glob("*/*.ms"))
    truths = sorted((workdir / "in").glob("*_truth.json"))
    if len(mss) == 1 and len(truths) == 1 and (mss[0] / "table.dat").exists():
        return mss[0], truths[0]
    return None


def make_group(workdir: Path) -> tuple[Path, Path]:
    """Simulate and convert the calibrator group (as /tmp/cal/mkfull.py does)."""
    from contimg import simulate
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.simulate.group import transit_start_time
    from contimg.sky.catalog import find_calibrator

    cal = find_calibrator(CALIBRATOR)
    start = transit_start_time(cal.ra_deg, "2026-11-25", dec_deg=cal.dec_deg)
    for sub in ("in", "prod", "scratch"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    t = time.perf_counter()
    g = simulate.simulate_group(workdir / "in", start, seed=5, scale="full", calibrator=CALIBRATOR)
    print(f"simulated {g.group_id} in {time.perf_counter() - t:.1f} s", flush=True)
    (grp,) = discover_groups(workdir / "in", settle_s=0)
    t = time.perf_counter()
    r = convert_group(g.group_id, grp.files, products_dir=workdir / "prod", scratch_dir=workdir / "scratch")
    print(f"converted to {r.ms_path} in {time.perf_counter() - t:.1f} s", flush=True)
    found = find_group(workdir)
    if found is None:
        raise SystemExit(f"no converted group found in {workdir} after converting")
    return found


def data_checksum(ms: Path) -> str:
    """sha256 of the DATA column's values, read in row chunks."""
    from casacore.tables import table

    h = hashlib.sha256()
    with table(str(ms), ack=False) as t:
        n = t.nrows()
        for start in range(0, n, CHUNK_ROWS):
            h.update(np.ascontiguousarray(t.getcol("DATA", start, min(CHUNK_ROWS, n - start))).tobytes())
    return h.hexdigest()


def copy_data_bytes(ms: Path, dest: Path) -> tuple[float, int]:
    """Read DATA in row chunks and write the same bytes to ``dest`` with fsync: (seconds, bytes)."""
    from casacore.tables import table

    start_t = time.perf_counter()
    written = 0
    with table(str(ms), ack=False) as t, open(dest, "wb") as out:
        n = t.nrows()
        for start in range(0, n, CHUNK_ROWS):
            chunk = t.getcol("DATA", start, min(CHUNK_ROWS, n - start))
            chunk.tofile(out)
            written += chunk.nbytes
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - start_t
    dest.unlink()
    return seconds, written


def rms(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x ** 2))) if x.size else float("nan")


def truth_recovery(result, truth_path: Path) -> dict:
    import cal_truth
    from contimg.simulate.truth import load_truth

    truth = load_truth(truth_path)
    refant = int(result.refant.split("-")[1]) - 1  # DSA-NNN is antenna number NNN - 1
    tables = {s.kind: s.path for s in result.solutions}
    ants = cal_truth.good_antennas(truth)
    if refant not in set(ants.tolist()):
        raise SystemExit(f"reference antenna {result.refant} is not a good antenna of the truth")
    dk = cal_truth.delay_errors_ns(tables["K"], truth, refant)
    amp, ph = cal_truth.bandpass_errors(tables["B"], tables["K"], truth, refant)
    gp = cal_truth.gain_phase_errors_deg(tables["GP"], truth, refant)
    # per-antenna rms over SPW, channel and pol (the refant itself is identically 0)
    others = np.array([a != refant for a in ants])
    amp_ant = np.array([rms(amp[:, i]) for i in range(len(ants))])
    ph_ant = np.array([rms(ph[:, i]) for i in range(len(ants))])
    worst_amp, worst_ph = int(np.nanargmax(amp_ant)), int(np.nanargmax(ph_ant))
    return {
        "refant": result.refant, "refant_number": refant, "n_good_antennas": int(len(ants)),
        "delay_rms_ns": rms(dk[:, others]), "delay_max_ns": float(np.nanmax(np.abs(dk))),
        "bp_amp_rms_pct": 100 * rms(amp[:, others]), "bp_phase_rms_deg": rms(ph[:, others]),
        "bp_amp_worst_ant": int(ants[worst_amp]), "bp_amp_worst_rms_pct": 100 * float(amp_ant[worst_amp]),
        "bp_phase_worst_ant": int(ants[worst_ph]), "bp_phase_worst_rms_deg": float(ph_ant[worst_ph]),
        "bp_flagged_fraction": float(np.mean(~np.isfinite(amp[:, others]))),
        "gain_phase_rms_deg": rms(gp[:, :, others]),
        "gain_phase_max_deg": float(np.nanmax(np.abs(gp))),
    }


class MemoryTimeline:
    """Resident memory of this process and of its children, sampled every ``interval_s`` in a thread.

    Beside :class:`tasks.memory.StagePeakMemory` (the ``stage_runs.peak_memory_mb``
    figure: this process's high-water mark, or the sampled tree, whichever is larger),
    it keeps the samples, so the peak can be put on a step of ``calibrate_ms``.
    """

    def __init__(self, interval_s: float = 0.1):
        import threading

        import psutil

        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (perf_counter, own RSS, children's RSS)
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            own = self._process.memory_info().rss
            kids = 0
            for child in self._process.children(recursive=True):
                try:
                    kids += child.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter(), own, kids))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MemoryTimeline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def per_step(self, start: float, timings: dict) -> dict:
        """Peak own and tree RSS (bytes) within each step, the steps laid end to end from ``start``."""
        out, t = {}, start
        for step, seconds in list(timings.items()) + [("(rest)", float("inf"))]:
            inside = [(own, own + kids) for when, own, kids in self.samples if t <= when < t + seconds]
            out[step] = (max(o for o, _ in inside), max(k for _, k in inside)) if inside else (0, 0)
            t += seconds
        return out


def cpu_s() -> float:
    """CPU seconds of this process (all threads) and its reaped children (AOFlagger workers, CASA)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rfi_scores(ms: Path, truth_path: Path) -> dict:
    """Flagging quality against the simulator's RFI cells (``tests/test_flagging.py``'s scoring).

    Recall of the RFI-hit visibilities (all, and those injected above 3, 5, 10
    sigma of the noise) and the fraction of clean visibilities flagged, over the
    cross-correlations the converter left unflagged, edge channels excluded.
    """
    import test_flagging
    from contimg.simulate.truth import load_truth

    return test_flagging._rfi_scores(ms, load_truth(truth_path), edge=1)


def casa_log_summary(log_dir: Path) -> dict:
    """Wall span of each CASA log (first to last timestamped line), seconds."""
    from datetime import datetime

    out = {}
    for log in sorted(log_dir.glob("*.log")):
        stamps = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                continue
        if len(stamps) >= 2:
            out[log.name] = (stamps[-1] - stamps[0]).total_seconds()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "calibration",
                        help="holds (or receives) the simulated group in in/ and its MS under prod/ms/; "
                             "the run's copy, tables and logs go to <workdir>/run unless --rundir")
    parser.add_argument("--rundir", type=Path, default=None)
    parser.add_argument("--calibrator", default=CALIBRATOR,
                        help=f"the group's calibrator (default {CALIBRATOR}, the group this script simulates)")
    parser.add_argument("--solver", choices=["fast", "casa"], default="fast",
                        help="calibrate_ms solver (default fast; casa: gaincal/bandpass on averaged data)")
    parser.add_argument("--no-casa-apply", dest="casa_apply", action="store_false",
                        help="skip timing CASA applycal beside the numpy applier")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    rundir = (args.rundir or workdir / "run").resolve()

    found = find_group(workdir)
    if found is None:
        print(f"simulating and converting a full-size {CALIBRATOR} group into {workdir} ...", flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        found = make_group(workdir)
    src_ms, truth_path = found
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    ms = rundir / src_ms.name
    subprocess.run(["cp", "-r", "--sparse=always", str(src_ms), str(ms)], check=True)
    print(f"MS {ms} (copy of {src_ms}), truth {truth_path}", flush=True)

    from casacore.tables import table

    from contimg.calibration.applycal import ApplyTable, apply_tables, check_calibrated
    from contimg.calibration.pipeline import CalibrationOptions, calibrate_ms

    with table(str(ms), ack=False) as t:
        shape = (t.nrows(), *t.getcell("DATA", 0).shape)
    before = data_checksum(ms)

    from tasks.memory import StagePeakMemory

    load_before = os.getloadavg()
    c0, t0 = cpu_s(), time.perf_counter()
    with StagePeakMemory() as stage_memory, MemoryTimeline() as timeline:
        result = calibrate_ms(ms, options=CalibrationOptions(calibrator=args.calibrator, solver=args.solver),
                              table_prefix=rundir / "cal",
                              log_dir=rundir / "logs", qa_dir=rundir / "qa")
    calibrate_s, calibrate_cpu = time.perf_counter() - t0, cpu_s() - c0
    memory = {"stage_peak_mb": stage_memory.peak_bytes / 2**20,
              "own_peak_mb": max(o for _, o, _ in timeline.samples) / 2**20,
              "tree_peak_mb": max(o + k for _, o, k in timeline.samples) / 2**20,
              "per_step_mb": {k: (o / 2**20, t / 2**20)
                              for k, (o, t) in timeline.per_step(t0, result.timings).items()}}
    load_after = os.getloadavg()
    print(f"calibrate_ms {calibrate_s:.1f} s, refant {result.refant}, QA gate "
          f"{'passed' if result.passed else 'REJECTED: ' + '; '.join(result.reasons)}", flush=True)

    try:
        rfi = rfi_scores(ms, truth_path)  # FLAG as calibrate_ms left it (apply does not flag more than B/G do)
    except Exception:
        import traceback

        traceback.print_exc()
        rfi = {}
    tables = [ApplyTable(s.path, s.kind, s.interp, s.spwmap) for s in result.solutions]
    copies = [copy_data_bytes(ms, rundir / "data_copy.bin")]
    casa_apply_s = float("nan")
    if args.casa_apply:
        casa_apply_s = apply_tables(ms, tables, log_path=rundir / "logs" / "applycal.casa.log", engine="casa")["seconds"]
        copies.append(copy_data_bytes(ms, rundir / "data_copy.bin"))
    c0 = cpu_s()
    apply_s = apply_tables(ms, tables, log_path=rundir / "logs" / "applycal.casa.log")["seconds"]
    apply_cpu = cpu_s() - c0
    copies.append(copy_data_bytes(ms, rundir / "data_copy.bin"))
    copy_s = float(np.median([c[0] for c in copies]))
    data_bytes = copies[0][1]
    print(f"applycal {apply_s:.1f} s (CASA applycal {casa_apply_s:.1f} s); plain copy of DATA "
          f"({data_bytes / 1e9:.2f} GB) {' / '.join(f'{c[0]:.1f}' for c in copies)} s", flush=True)

    t = time.perf_counter()
    check = check_calibrated(ms)
    check_s = time.perf_counter() - t
    after = data_checksum(ms)
    try:
        rec = truth_recovery(result, truth_path)
    except Exception:  # keep the timings of a long run even if the comparison fails
        import traceback

        traceback.print_exc()
        rec = None
    logs = casa_log_summary(rundir / "logs")

    tm = result.timings
    stage = calibrate_s + apply_s
    print()
    print(f"full-size group: {shape[0]} rows x {shape[1]} channels x {shape[2]} pols, calibrator {result.calibrator}, "
          f"solver {args.solver}")
    cpu = getattr(result, "cpu_timings", {})
    print(f"load average (1, 5, 15 min) before calibrate_ms {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")
    print(f"{'step':22s} {'2 cores (s)':>12s} {'CPU (s)':>9s} {'team, 40 threads (s)':>22s}")
    for step, seconds in tm.items():
        team = {"solve_B": f"{TEAM['solve_B']:.0f}"}.get(step, "")
        c = f"{cpu[step]:9.1f}" if step in cpu else f"{'':9s}"
        print(f"{step:22s} {seconds:12.1f} {c} {team:>22s}")
    print(f"{'(team gaincal)':22s} {'':12s} {'':9s} {TEAM['solve_G']:22.0f}")
    other = calibrate_s - sum(tm.values())
    other_cpu = calibrate_cpu - sum(cpu.values())
    print(f"{'other (QA, plots)':22s} {other:12.1f} {other_cpu:9.1f}")
    print(f"{'calibrate_ms total':22s} {calibrate_s:12.1f} {calibrate_cpu:9.1f}")
    print(f"{'applycal':22s} {apply_s:12.1f} {apply_cpu:9.1f} {TEAM['applycal']:22.0f}")
    print(f"{'CASA applycal':22s} {casa_apply_s:12.1f}")
    print(f"calibrate_ms peak memory {memory['stage_peak_mb'] / 1024:.2f} GB (stage_runs.peak_memory_mb "
          f"{memory['stage_peak_mb']:.0f}; goal <= 4 GB: {'met' if memory['stage_peak_mb'] <= 4096 else 'NOT met'}); "
          f"sampled: this process {memory['own_peak_mb'] / 1024:.2f} GB, with children "
          f"{memory['tree_peak_mb'] / 1024:.2f} GB")
    print("  peak per step, GB (this process / with children): " + ", ".join(
        f"{k} {o / 1024:.2f}/{t / 1024:.2f}" for k, (o, t) in memory["per_step_mb"].items()))
    print(f"{'calibrator stage':22s} {stage:12.1f} {calibrate_cpu + apply_cpu:9.1f} {TEAM['total']:22.0f}   (goal < 60 s: "
          f"{'met' if stage < 60 else 'NOT met'}, {stage / 60:.1f}x)")
    print(f"{'plain copy of DATA':22s} {copy_s:12.1f}   ({data_bytes / 1e9:.2f} GB; runs "
          f"{' / '.join(f'{c[0]:.1f}' for c in copies)} s)")
    print(f"applycal / copy = {apply_s / copy_s:.2f}  (goal < 2: {'met' if apply_s / copy_s < 2 else 'NOT met'})")
    print(f"check_calibrated {check_s:.1f} s")
    print()
    if rec is None:
        rec = {k: float("nan") for k in ("delay_rms_ns", "delay_max_ns", "bp_amp_rms_pct", "bp_phase_rms_deg",
                                         "bp_amp_worst_rms_pct", "bp_phase_worst_rms_deg", "bp_flagged_fraction",
                                         "gain_phase_rms_deg", "gain_phase_max_deg")}
        rec.update(refant=result.refant, refant_number=-1, n_good_antennas=-1, bp_amp_worst_ant=-1,
                   bp_phase_worst_ant=-1)
    print(f"truth recovery relative to {rec['refant']} (antenna {rec['refant_number']}), "
          f"{rec['n_good_antennas']} good antennas:")
    print(f"  delay error           rms {rec['delay_rms_ns']:.4f} ns, max {rec['delay_max_ns']:.4f} ns  (goal 0.1 ns)")
    print(f"  bandpass amplitude    rms {rec['bp_amp_rms_pct']:.2f} %  worst antenna {rec['bp_amp_worst_ant']} "
          f"{rec['bp_amp_worst_rms_pct']:.2f} % ({rec['bp_amp_worst_rms_pct'] / rec['bp_amp_rms_pct']:.1f}x)"
          f"  (goal 2 %, worst < 3x)")
    print(f"  bandpass phase        rms {rec['bp_phase_rms_deg']:.2f} deg  worst antenna {rec['bp_phase_worst_ant']} "
          f"{rec['bp_phase_worst_rms_deg']:.2f} deg ({rec['bp_phase_worst_rms_deg'] / rec['bp_phase_rms_deg']:.1f}x)"
          f"  (goal 2 deg, worst < 3x)")
    print(f"  bandpass solutions flagged {100 * rec['bp_flagged_fraction']:.1f} % (good antennas)")
    print(f"  gain phase            rms {rec['gain_phase_rms_deg']:.2f} deg, max {rec['gain_phase_max_deg']:.2f} deg"
          f"  (goal 2 deg)")
    print(f"  flux scale amp_ratio  {check['amp_ratio']:.4f}  (goal within 3 % of 1)")
    print(f"  scatter reduction     {check['scatter_reduction']:.2f}  (raw {check['raw_residual_rms_jy']:.3f} Jy / "
          f"residual {check['residual_rms_jy']:.3f} Jy; goal > 2)")
    print(f"  flagged fraction      {100 * result.flagging['flagged_fraction']:.1f} %  (goal < 50 %); steps "
          + ", ".join(f"{s['step']} {100 * s['flagged_fraction']:.1f} %" for s in result.flagging["steps"]))
    if rfi:
        print(f"  RFI flagging          recall {100 * rfi['recall_gt0sigma']:.2f} % of {rfi['n_rfi']} RFI-hit "
              f"visibilities ({100 * rfi['recall_gt3sigma']:.2f} / {100 * rfi['recall_gt5sigma']:.2f} / "
              f"{100 * rfi['recall_gt10sigma']:.2f} % above 3 / 5 / 10 sigma); clean visibilities flagged "
              f"{100 * rfi['false_flag']:.3f} %")
    print(f"  DATA unchanged        {'yes, bit for bit' if before == after else 'NO: CHANGED'} (sha256 {after[:16]})")
    print(f"  QA gate               {'passed' if result.passed else 'rejected: ' + '; '.join(result.reasons)}")
    print()
    print("CASA log spans (first to last line, s): " + ", ".join(f"{k} {v:.0f}" for k, v in logs.items()))
    summary = {"memory": memory, "timings": tm, "cpu_timings": cpu, "calibrate_cpu_s": calibrate_cpu, "applycal_cpu_s": apply_cpu,
               "load_before": load_before, "load_after": load_after, "calibrate_s": calibrate_s, "applycal_s": apply_s, "casa_applycal_s": casa_apply_s, "copy_s": [c[0] for c in copies],
               "data_bytes": data_bytes, "check": check, "recovery": rec, "casa_log_spans": logs,
               "flagging": {k: result.flagging[k] for k in ("steps", "flagged_fraction", "rfi_backend")},
               "refant_ranking": result.refant_ranking[:5], "reasons": result.reasons,
               "data_unchanged": before == after, "rfi_scores": rfi}
    (rundir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"summary: {rundir / 'summary.json'}; logs: {rundir / 'logs'}")
    return 0 if before == after else 1


if __name__ == "__main__":
    raise SystemExit(main())
