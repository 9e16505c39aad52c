"""The streaming pipeline under its deployments: groups per hour with 1 and 2 workers, Prefect overhead.

    flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/pipeline.py [--groups 6] [--scale small]
        [--workers 1 2] [--workdir DIR]

What an operator runs, end to end, with nothing called by hand: a real Prefect
server (``prefect server start``, a temporary database), the deployments of
``deployments/prefect.yaml`` registered by ``prefect deploy --all`` on a process
work pool, ``N`` process workers (``prefect worker start --limit 3``, as one worker per
node), the ``casa`` tag limit set to ``N`` (one CASA-heavy task per worker at a
time), and the watcher. The schedules stay on (the safety-net sweeps run alongside, as in operation). A night of simulated groups (the calibrator transit in the middle) is
copied into the incoming directory at once; the watcher's ``contimg.group.ready``
events start the ingest sweep, and the triggers do the rest (converted ->
calibrator/target flows, calset registered -> wake-waiting -> target runs). The
clock stops when every group's latest ``ms_index`` stage is ``imaged``.

Reported per worker count, in one process (these machines are noisy: compare
within a run):

* **groups per hour**: groups / wall time from the files' arrival to the last image;
* **Prefect overhead per group**: for every flow run of a group, its run time
  (Prefect's ``total_run_time``) minus its task runs' run time and the time they
  waited for a ``casa`` slot (creation to start), summed over the group's runs;
  as a fraction of a full-size group's processing (``--full-group-s``, default
  the convert + applycal + image seconds recorded in RESULTS.md). The slot waits
  are reported apart: they are queueing for the machine, not Prefect's cost;
* **latency**: from a run's creation (its event) to its start (a worker's poll and
  a fresh Python process), which the overhead above does not include.

    nice .venv/bin/python benchmarks/pipeline.py --target-group [--workdir DIR]

A full-size target group's real-time factor, step by step (wall and CPU, this process and its
children: CASA, WSClean, AOFlagger), in one process on the night of ``benchmarks/target_fidelity.py``
(3C147's calibrator group calibrated first; the groups 15 and 20 min after it):

* **before** issue 19: convert, applycal of the calibrator's set, image (target20);
* **after, first group after a gap**: convert, flag, applycal, a quick first pass, self-calibration,
  the bright sources fitted through the drifting beam, the final pass (target15);
* **after, steady state**: the same with the previous group's sky model (target15's): one imaging
  pass (target20). Groups arrive every 5 min, so this is every group but the first of a night or
  after a gap.

The real-time factor is the steps' wall time over the group's 309 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Flow runs a worker (one per node) runs at once. Most runs are light (sweeps, wake-ups, a group
#: found done); the CASA-heavy tasks are bounded by the ``casa`` tag limit, one per worker. With one run
#: per worker the sweeps that pile up behind a busy worker hold up the groups' own runs.
RUNS_PER_WORKER = 3
#: A full-size target group's processing on this machine: convert 16.1 + applycal 13.5 + image 132.7 s
#: (RESULTS.md, Imaging, commit da0eaf4).
FULL_GROUP_S = 16.1 + 13.5 + 132.7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _simulate(night: Path, n_groups: int, scale: str) -> list[str]:
    """The demo's night (the calibrator transit in the middle group): its group ids."""
    from contimg_cli.demo_cmd import night_groups, simulate_night

    simulate_night(night, n_groups, scale)
    return sorted(night_groups(night))


class Stack:
    """A Prefect server, the deployments on a process pool, N workers and the watcher, in child processes."""

    def __init__(self, work: Path, base: Path, n_workers: int):
        self.work, self.base, self.n_workers = work, base, n_workers
        self.procs: list[subprocess.Popen] = []
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_API_URL": self.api, "PREFECT_HOME": str(work / "prefect"),
                    "CONTIMG_BASE_DIR": str(base), "CONTIMG_REPO_DIR": str(REPO), "CONTIMG_FILE_SETTLE_S": "0",
                    "CONTIMG_IMAGING_FIND_SOURCES": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_UI_ENABLED": "false"}
        self.port = port
        # prefect.yaml names the deployments after the pipeline instance, and their triggers match it (issue 22)
        from contimg.config import load_settings, pipeline_instance

        self.env["CONTIMG_INSTANCE"] = pipeline_instance(load_settings(environ={}, base_dir=base))

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.work / log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def _prefect(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> "Stack":
        self._spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(self.port)], "server.log")
        deadline = time.monotonic() + 180
        from contimg_cli.serve_cmd import server_healthy

        while not server_healthy(self.api):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server not healthy; see {self.work / 'server.log'}")
            time.sleep(1)
        self._prefect("work-pool", "create", "contimg-local", "--type", "process")
        self._prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        self._prefect("concurrency-limit", "create", "casa", str(self.n_workers))
        for i in range(self.n_workers):
            self._spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", "contimg-local",
                         "--limit", str(RUNS_PER_WORKER), "--name", f"bench-{i}"], f"worker-{i}.log")
        self._spawn([sys.executable, "-m", "deployments.watcher"], "watcher.log")
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _stages(catalog_dir: Path) -> dict[str, str]:
    from catalog import query

    try:
        return {r["group_id"]: r["stage"] for r in query.latest(catalog_dir, "ms_index")}
    except Exception:  # noqa: BLE001 - no table until the first conversion
        return {}


def _post(api: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _flow_runs(api: str) -> list[dict]:
    return _post(api, "/flow_runs/filter", {"limit": 200})


def _task_runs(api: str, flow_run_ids: list[str]) -> list[dict]:
    return _post(api, "/task_runs/filter", {"limit": 200, "flow_runs": {"id": {"any_": flow_run_ids}}})


def _seconds(later: str | None, earlier: str | None) -> float:
    from datetime import datetime

    if not later or not earlier:
        return 0.0
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _unfinished(flow_runs: list[dict], work: Path, *, n_lines: int = 25) -> str:
    """What a stalled run was doing: the flow runs not completed, and the end of every log in ``work``."""
    lines = [f"flow run {r['name']} ({r.get('flow_id', '')[:8]}): {r['state_name']}" for r in flow_runs
             if r["state_type"] != "COMPLETED"]
    for log in sorted(work.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-n_lines:]
        lines += [f"--- {log}, last {len(tail)} lines:", *tail]
    return "\n".join(lines)


def run_once(work: Path, night: Path, groups: list[str], n_workers: int, timeout_s: float) -> dict:
    from catalog import query

    base = work / "data"
    incoming = base / "incoming"
    incoming.mkdir(parents=True)
    with Stack(work, base, n_workers) as stack:
        started = time.monotonic()
        for path in night.iterdir():  # the whole night at once
            shutil.copy2(path, incoming / path.name)
        stages: dict[str, str] = {}
        while time.monotonic() - started < timeout_s:
            stages = _stages(base / "catalog")
            if len(stages) == len(groups) and all(s == "imaged" for s in stages.values()):
                break
            time.sleep(2)
        wall = time.monotonic() - started
        every_run = _flow_runs(stack.api)
        runs = [r for r in every_run if r["state_type"] == "COMPLETED" and any(g in r["name"] for g in groups)]
        tasks = _task_runs(stack.api, [r["id"] for r in runs])
    if not all(stages.get(g) == "imaged" for g in groups):
        raise RuntimeError(f"not every group imaged after {timeout_s} s: {stages}\n{_unfinished(every_run, work)}")
    per_group: dict[str, dict] = {g: {"flow_s": 0.0, "task_s": 0.0, "slot_wait_s": 0.0, "latency_s": []}
                                  for g in groups}
    group_of_run = {r["id"]: next(g for g in groups if g in r["name"]) for r in runs}
    # A subflow (process_group -> calibrator_group, target_group) runs inside its parent's run time and
    # is stood for there by a task run of its own: count the parent's time, and the subflow's real tasks.
    task_ids = {t["id"] for t in tasks}
    placeholders = {r["parent_task_run_id"] for r in runs if r.get("parent_task_run_id") in task_ids}
    for run in runs:
        if run.get("parent_task_run_id") in task_ids:
            continue
        p = per_group[group_of_run[run["id"]]]
        p["flow_s"] += run["total_run_time"]
        # from the run's creation (its event or hand-off) to its start: a worker's poll and a Python start-up
        p["latency_s"].append(_seconds(run.get("start_time"), run.get("created")))
    for task in tasks:
        if task.get("flow_run_id") not in group_of_run or task["id"] in placeholders:
            continue
        p = per_group[group_of_run[task["flow_run_id"]]]
        p["task_s"] += task["total_run_time"]
        # a task waits for a slot of its tag's concurrency limit (casa) before it runs
        p["slot_wait_s"] += max(0.0, _seconds(task.get("start_time"), task.get("created")))
    overhead = [p["flow_s"] - p["task_s"] - p["slot_wait_s"] for p in per_group.values()]
    task_s = [p["task_s"] for p in per_group.values()]
    waits = [p["slot_wait_s"] for p in per_group.values()]
    latencies = [x for p in per_group.values() for x in p["latency_s"]]

    def median(values: list[float]) -> float:
        return float(sorted(values)[len(values) // 2]) if values else float("nan")

    return {"workers": n_workers, "groups": len(groups), "wall_s": wall,
            "groups_per_hour": len(groups) / wall * 3600,
            "overhead_s_median": median(overhead), "overhead_s_max": max(overhead),
            "task_s_median": median(task_s), "slot_wait_s_median": median(waits),
            "latency_s_median": median(latencies), "flow_runs": len(runs), "task_runs": len(tasks)}


def target_group_rtf(work: Path) -> list[dict]:
    """The real-time factor of a full-size target group before and after issue 19 (module docstring)."""
    from benchmarks import target_fidelity as tf
    from benchmarks.imaging import cpu_s, cpu_since
    from contimg.calibration.selfcal import read_components

    inboxes = tf.simulate_night(work)
    cal = tf.calibrate(tf.convert(inboxes["calibrator"], work, "calibrator"), work)
    cases = (("before", "target20", "transferred"), ("after, first group after a gap", "target15", "full"),
             ("after, steady state", "target20", "full-prior"))
    rows = []
    for label, role, variant in cases:
        tag = f"rtf-{role}-{variant}"
        prior = None
        if variant == "full-prior":  # the previous case imaged target15 with its full recipe
            prior = read_components(work / "images" / "rtf-target15-full" / "img-components.parquet")
        t, c = time.perf_counter(), cpu_s()
        ms = tf.convert(inboxes[role], work, role)
        steps, cpu = {"convert": time.perf_counter() - t}, {"convert": cpu_since(c)}
        done = tf.process(ms, cal, work, variant, tag, prior=prior)
        steps.update(done["steps"])
        cpu.update(done["cpu"])
        row = {"case": label, "group": role, "variant": variant, "steps_s": {k: round(v, 1) for k, v in steps.items()},
               "cpu_s": {k: round(v["self"] + v["children"], 1) for k, v in cpu.items()},
               "imaging_s": {k: round(v, 1) for k, v in done["result"].timings.items()},
               "selfcal": done["result"].selfcal.get("status"),
               "real_time_factor": round(sum(steps.values()) / tf.GROUP_S, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _print_target_rtf(rows: list[dict]) -> None:
    steps = [k for k in ("convert", "flag", "applycal", "image") if any(k in r["steps_s"] for r in rows)]
    print("\n| case | group | " + " | ".join(f"{k} wall / CPU (s)" for k in steps) + " | real-time factor |")
    print("|---|---|" + "---|" * len(steps) + "---|")
    for r in rows:
        cells = [f"{r['steps_s'][k]:.1f} / {r['cpu_s'][k]:.1f}" if k in r["steps_s"] else "-" for k in steps]
        print(f"| {r['case']} | {r['group']} | " + " | ".join(cells) + f" | **{r['real_time_factor']:.2f}** |")
    for r in rows[1:]:
        print(f"{r['case']} / before: {r['real_time_factor'] / rows[0]['real_time_factor']:.2f}")


def main() -> int:
    import signal

    # SIGTERM (a timeout, a kill) unwinds through the stacks' clean-up: no server or worker left behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--scale", choices=["small", "full"], default="small")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "pipeline")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before giving up")
    parser.add_argument("--full-group-s", type=float, default=FULL_GROUP_S)
    parser.add_argument("--target-group", action="store_true",
                        help="a full-size target group's real-time factor before and after issue 19, step by step "
                             "(default workdir: target_fidelity's night)")
    args = parser.parse_args()
    if args.target_group:
        default = REPO / "benchmarks" / "_work" / "target_fidelity"
        work = (default if args.workdir == parser.get_default("workdir") else args.workdir).resolve()
        _print_target_rtf(target_group_rtf(work))
        return 0
    work = args.workdir.resolve()
    night = work / f"night-{args.scale}-{args.groups}"
    night.mkdir(parents=True, exist_ok=True)
    groups = _simulate(night, args.groups, args.scale)
    results = []
    for n in args.workers:
        run_dir = work / f"run-{n}-workers"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        result = run_once(run_dir, night, groups, n, args.timeout)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{args.groups} {args.scale} groups (1 calibrator), process workers --limit {RUNS_PER_WORKER}, "
          "casa limit = workers:")
    print("| workers | wall (s) | groups / hour | task work / group | waiting for a casa slot / group | Prefect "
          "overhead / group (median, max) | of a full-size group | run start latency (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['wall_s']:.0f} | {r['groups_per_hour']:.0f} | {r['task_s_median']:.1f} s | "
              f"{r['slot_wait_s_median']:.1f} s | {r['overhead_s_median']:.1f} s, {r['overhead_s_max']:.1f} s | "
              f"{r['overhead_s_median'] / args.full_group_s:.1%} | {r['latency_s_median']:.1f} s |")
    if len(results) > 1:
        print(f"\nthroughput ratio {results[-1]['workers']} / {results[0]['workers']} workers: "
              f"{results[-1]['groups_per_hour'] / results[0]['groups_per_hour']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
