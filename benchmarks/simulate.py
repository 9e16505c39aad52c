"""Benchmark: simulate a full-size DSA-110 group vs writing the same bytes with numpy.

Run: ``flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/simulate.py [--out DIR] [--workers N]
[--scale full] [--sky default|full-population|calibrators] [--rounds 3]``

In one run, alternating for ``--rounds`` rounds (this machine's disk speed changes
from minute to minute; the ratio uses the medians), each in a fresh child process:

1. baseline: numpy ``tofile`` of 16 arrays whose sizes equal the simulated files,
   each followed by ``os.fsync``;
2. the simulator: ``simulate_group`` (default sky: calibrators + the field
   population above the default apparent-flux cut, 3 mJy; ``--sky full-population``:
   no cut; ``--sky calibrators``: no field; all corruptions), then ``os.fsync`` of
   every file it wrote.

Prints both times, their ratio (goal < 2) and the peak memory of the simulator's
process tree (sum of RSS of the child and its workers, sampled every 20 ms; goal
< 4 GB), plus the child's own ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _measure import PeakTreeRSS


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _simulate(out: str, scale: str, workers: int | None, sky: str, queue) -> None:
    from contimg.simulate import FieldOptions, simulate_group

    kwargs = {"calibrators": {"field": None}, "full-population": {"field": FieldOptions(min_apparent_flux_jy=0.0)},
              "default": {}}[sky]
    t0 = time.perf_counter()
    group = simulate_group(out, "2026-11-25T08:00:00", scale=scale, workers=workers, **kwargs)
    for p in group.paths:
        _fsync(p)
    elapsed = time.perf_counter() - t0
    sizes = [p.stat().st_size for p in group.paths]
    truth = group.truth()
    queue.put({"elapsed": elapsed, "sizes": sizes, "n_sources": len(truth["sky"]),
               "field_population": truth["field_population"],
               "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _numpy_write(out: str, sizes: list[int], queue) -> None:
    import numpy as np

    arrays = [np.ones(s // 8 + 1, dtype=np.complex64)[: s // 8] for s in sizes]
    t0 = time.perf_counter()
    for k, a in enumerate(arrays):
        path = Path(out) / f"numpy_{k:02d}.bin"
        with open(path, "wb") as fh:
            a.tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
    queue.put({"elapsed": time.perf_counter() - t0, "bytes": int(sum(a.nbytes for a in arrays))})


def _run(target, args) -> tuple[dict, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    with PeakTreeRSS(proc.pid, interval_s=0.02) as sampler:
        result = queue.get()
        proc.join()
    if proc.exitcode:
        sys.exit(f"child failed with exit code {proc.exitcode}")
    return result, sampler.peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--scale", default="full", choices=["small", "full"])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--sky", default="default", choices=["default", "full-population", "calibrators"],
                        help="default: calibrators + field sources above the default apparent-flux cut "
                             "(~200 sources); full-population: no cut (~670); calibrators: no field")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating simulate/numpy rounds; the ratio uses the medians (the disk is noisy)")
    args = parser.parse_args(argv)
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    sim_dir, np_dir = base / "sim", base / "numpy"
    sims, bases, peaks = [], [], []
    try:
        for round_ in range(args.rounds):
            for d in (sim_dir, np_dir):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
            sim, peak = _run(_simulate, (str(sim_dir), args.scale, args.workers, args.sky))
            shutil.rmtree(sim_dir)
            base_res, _ = _run(_numpy_write, (str(np_dir), sim["sizes"]))
            shutil.rmtree(np_dir)
            sims.append(sim["elapsed"])
            bases.append(base_res["elapsed"])
            peaks.append(peak)
            print(f"round {round_ + 1}/{args.rounds}: simulate {sims[-1]:.2f} s, numpy {bases[-1]:.2f} s, "
                  f"ratio {sims[-1] / bases[-1]:.2f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True) if not args.out else None
    total = sum(sim["sizes"])
    ratio = statistics.median(sims) / statistics.median(bases)
    base_res = {"elapsed": statistics.median(bases)}
    sim["elapsed"] = statistics.median(sims)
    peak = max(peaks)
    print(f"scale={args.scale} sky={args.sky} files={len(sim['sizes'])} bytes={total / 1e9:.3f} GB sources={sim['n_sources']} "
          f"cpus={os.cpu_count()}")
    fp = sim["field_population"]
    if fp is not None:
        print(f"field population: {fp['n_drawn']} drawn, {fp['n_simulated']} simulated, {fp['n_dropped']} dropped "
              f"below {fp['min_apparent_flux_jy'] * 1e3:g} mJy apparent "
              f"(summed peak apparent flux dropped {fp['dropped_peak_apparent_flux_jy'] * 1e3:.0f} mJy, "
              f"kept {fp['simulated_peak_apparent_flux_jy'] * 1e3:.0f} mJy)")
    print(f"medians of {args.rounds} rounds:")
    print(f"numpy write+fsync   {base_res['elapsed']:8.2f} s  ({total / base_res['elapsed'] / 1e6:.0f} MB/s)")
    print(f"simulate_group+fsync {sim['elapsed']:8.2f} s")
    print(f"ratio                {ratio:8.2f}  (goal < 2)")
    print(f"peak RSS (tree)      {peak / 1e9:8.2f} GB  (goal < 4); child ru_maxrss {sim['maxrss_mb'] / 1e3:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
