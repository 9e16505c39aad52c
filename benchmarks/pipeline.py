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
  (Prefect's ``total_run_time``) minus the work its stages recorded in
  ``stage_runs`` (by flow run id), summed over the group's runs; as a fraction of
  the group's stage work, and of a full-size group's processing (``--full-group-s``,
  default the convert + applycal + image seconds recorded in RESULTS.md);
* **latency**: from a run's creation (its event) to its start (a worker's poll and
  a fresh Python process), which the overhead above does not include.
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


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _simulate(night: Path, n_groups: int, scale: str) -> list[str]:
    from contimg_cli.demo_cmd import _night_groups, _simulate as simulate_night

    simulate_night(night, n_groups, scale)
    return sorted(_night_groups(night))


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
        while not _healthy(self.api):
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


def _flow_runs(api: str) -> list[dict]:
    request = urllib.request.Request(f"{api}/flow_runs/filter", data=json.dumps({"limit": 200}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


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
        runs = _flow_runs(stack.api)
    if not all(stages.get(g) == "imaged" for g in groups):
        raise RuntimeError(f"not every group imaged after {timeout_s} s: {stages}; logs in {work}")
    work_by_run: dict[str, float] = {}
    for row in query.query(base / "catalog", "SELECT flow_run_id, seconds FROM stage_runs").to_pylist():
        work_by_run[row["flow_run_id"]] = work_by_run.get(row["flow_run_id"], 0.0) + row["seconds"]
    per_group: dict[str, dict] = {g: {"flow_s": 0.0, "work_s": 0.0, "latency_s": []} for g in groups}
    for run in runs:
        group = next((g for g in groups if g in run["name"]), None)
        if group is None or run["state_type"] != "COMPLETED":
            continue
        per_group[group]["flow_s"] += run["total_run_time"]
        per_group[group]["work_s"] += work_by_run.get(run["id"], 0.0)
        if run.get("start_time") and run.get("created"):
            from datetime import datetime

            latency = (datetime.fromisoformat(run["start_time"]) - datetime.fromisoformat(run["created"]))
            per_group[group]["latency_s"].append(latency.total_seconds())
    overhead = [p["flow_s"] - p["work_s"] for p in per_group.values()]
    work_s = [p["work_s"] for p in per_group.values()]
    latencies = [x for p in per_group.values() for x in p["latency_s"]]
    return {"workers": n_workers, "groups": len(groups), "wall_s": wall,
            "groups_per_hour": len(groups) / wall * 3600,
            "overhead_s_median": float(sorted(overhead)[len(overhead) // 2]),
            "overhead_s_max": max(overhead), "work_s_median": float(sorted(work_s)[len(work_s) // 2]),
            "latency_s_median": float(sorted(latencies)[len(latencies) // 2]) if latencies else float("nan"),
            "flow_runs": sum(1 for r in runs if any(g in r["name"] for g in groups))}


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
    args = parser.parse_args()
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
    print("| workers | wall (s) | groups / hour | Prefect overhead / group (median, max) | of the group's work "
          "| of a full-size group | run start latency (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['wall_s']:.0f} | {r['groups_per_hour']:.0f} | {r['overhead_s_median']:.1f} s, "
              f"{r['overhead_s_max']:.1f} s | {r['overhead_s_median'] / r['work_s_median']:.1%} | "
              f"{r['overhead_s_median'] / args.full_group_s:.1%} | {r['latency_s_median']:.1f} s |")
    if len(results) > 1:
        print(f"\nthroughput ratio {results[-1]['workers']} / {results[0]['workers']} workers: "
              f"{results[-1]['groups_per_hour'] / results[0]['groups_per_hour']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
