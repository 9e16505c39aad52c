"""Conversion wall time: the default runner (worker threads) vs per-subband tasks on a local Dask cluster.

    .venv/bin/python benchmarks/convert_dask.py [--scale small|full] [--rounds 3] [--workers 2]

Simulates one group (kept in the work directory for reruns), then, in this one
process, for ``--rounds`` alternating rounds: ``convert_group`` with the default
runner, and with ``submit_subband`` putting one ``convert-subband`` Prefect task
per subband on a ``DaskTaskRunner`` local cluster of ``--workers`` single-threaded
processes (the ``task_runner = "dask"`` setting without ``dask_address``). Reported
for Dask: the cluster's start, the first conversion on it (worker imports
included), a second conversion on the same cluster (what a node attached to a
running scheduler with ``dask_address`` pays) and the cluster's stop. CASA gate
off for both (it is the same). A Prefect server is needed for the task runs:
``PREFECT_API_URL`` if set, else a temporary one (not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="small", choices=["full", "small"])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "convert_dask")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.simulate import scale_preset, simulate_group
    from tasks.subbands import subbands_on

    incoming = args.workdir / f"incoming-{args.scale}"
    if len(list(incoming.glob("*.hdf5"))) != 16:
        shutil.rmtree(incoming, ignore_errors=True)
        print(f"simulating a {args.scale} group into {incoming} ...", flush=True)
        simulate_group(incoming, "2026-11-25T12:09:00", seed=7, **scale_preset(args.scale))
    (group,) = discover_groups(incoming, settle_s=0)
    in_gb = sum(p.stat().st_size for p in group.files.values()) / 1e9

    def convert(out: Path, submit=None) -> tuple[float, list]:
        shutil.rmtree(out, ignore_errors=True)
        futures = []

        def tracked(job):
            futures.append(submit(job))
            return futures[-1]

        start = time.perf_counter()
        convert_group(group.group_id, group.files, products_dir=out, scratch_dir=out / "scratch", validate=False,
                      ms_path=out / "bench.ms", submit_subband=tracked if submit else None)
        seconds = time.perf_counter() - start
        results = [future.result() for future in futures]
        shutil.rmtree(out)
        return seconds, results

    server = nullcontext() if os.environ.get("PREFECT_API_URL") else prefect_test_harness(server_startup_timeout=300)
    rows: dict[str, list[float]] = {"default": [], "start": [], "first": [], "warm": [], "stop": []}
    with server:
        convert(args.workdir / "warmup")  # numba's disk cache and the imports, for both runners
        for round_ in range(args.rounds):
            seconds, _ = convert(args.workdir / "out-default")
            rows["default"].append(seconds)
            start = time.perf_counter()
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": args.workers, "threads_per_worker": 1,
                                                    "processes": True})
            with subbands_on(runner) as submit:
                runner.client.wait_for_workers(args.workers)
                rows["start"].append(time.perf_counter() - start)
                rows["first"].append(convert(args.workdir / "out-dask", submit)[0])
                seconds, results = convert(args.workdir / "out-dask", submit)
                rows["warm"].append(seconds)
                stop = time.perf_counter()
            rows["stop"].append(time.perf_counter() - stop)
            task_s = sorted(r.seconds for r in results)
            print(f"round {round_ + 1}: default {rows['default'][-1]:.2f} s | dask: start {rows['start'][-1]:.2f} s, "
                  f"first {rows['first'][-1]:.2f} s, warm {rows['warm'][-1]:.2f} s, stop {rows['stop'][-1]:.2f} s; "
                  f"warm tasks {task_s[0]:.2f}-{task_s[-1]:.2f} s each on "
                  f"{len({(r.host, r.pid) for r in results})} workers", flush=True)
    med = {name: statistics.median(values) for name, values in rows.items()}
    print()
    print(f"{args.scale} group ({in_gb:.3f} GB of UVH5), medians of {args.rounds} rounds on {os.cpu_count()} cores:")
    print(f"default runner (2 threads)          {med['default']:6.2f} s")
    print(f"dask, cluster up (warm)             {med['warm']:6.2f} s  ({med['warm'] / med['default']:.1f}x)")
    local = med["start"] + med["first"] + med["stop"]
    print(f"dask, local cluster per conversion  {local:6.2f} s  (start {med['start']:.2f} + first conversion "
          f"{med['first']:.2f} + stop {med['stop']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
