"""Catalog speed: latest state of a year of groups, and the cost of one append.

Targets (issue 6): the latest state of 100,000 groups (a year: ~279 groups a day
x 365, several state rows each) over compacted tables answers in under 1 s, and
appending one row costs under 20 ms. Figures are printed with their ratio to the
target, and against baselines measured in the same process (a plain scan of the
same files; the same day before compaction).

Usage::

    .venv/bin/python benchmarks/catalog.py [--days 365] [--per-day 279] [--states 4] [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import query, store  # noqa: E402
from catalog.compact import compact  # noqa: E402

STATES = ("collecting", "ready", "converting", "converted", "failed")
GROUP_S = 309.6  # ~5.16 min per group: 279 a day


def _timed(fn, repeat: int = 5) -> tuple[float, object]:
    """Best and median wall time of ``repeat`` calls (s), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def build_year(cat: Path, days: int, per_day: int, states: int) -> int:
    """One append per day with every state row of its groups (= one file per partition)."""
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    n = 0
    for d in range(days):
        day = start + dt.timedelta(days=d)
        date = day.strftime("%Y-%m-%d")
        rows = []
        for g in range(per_day):
            t = day + dt.timedelta(seconds=g * GROUP_S)
            gid = t.strftime("%Y-%m-%dT%H:%M:%S")
            for s in range(states):
                state = STATES[s] if s < states - 1 or g % 50 else "failed"
                rows.append({"group_id": gid, "obs_date": date, "state": state,
                             "subbands_present": list(range(16)), "n_present": 16, "first_seen": t,
                             "recorded_at": t + dt.timedelta(seconds=60 * (s + 1)),
                             "reason": "InvalidInputError: bad file" if state == "failed" else None})
        n += len(store.append(cat, "groups", rows))
    return n


def one_day_uncompacted(cat: Path, per_day: int, states: int) -> None:
    """A day recorded the way the pipeline does it: one append per state change."""
    day = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for s in range(states):
        for g in range(per_day):
            gid = (day + dt.timedelta(seconds=g * GROUP_S)).strftime("%Y-%m-%dT%H:%M:%S")
            store.append(cat, "groups", [{"group_id": gid, "obs_date": "2026-01-01", "state": STATES[s]}])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--per-day", type=int, default=279)
    ap.add_argument("--states", type=int, default=4, help="state rows per group")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    cat = work / "catalog"
    try:
        # --- append cost ----------------------------------------------------
        small = work / "small"
        row = {"group_id": "2025-01-01T00:00:00", "obs_date": "2025-01-01", "state": "ready",
               "subbands_present": list(range(16)), "n_present": 16}
        store.append(small, "groups", [row])  # create the table
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            store.append(small, "groups", [row])
            times.append(time.perf_counter() - t0)
        times.sort()
        append_ms = statistics.median(times) * 1e3
        p95_ms = times[int(0.95 * len(times))] * 1e3
        print(f"append one row: median {append_ms:.2f} ms, p95 {p95_ms:.2f} ms "
              f"(target 20 ms: {append_ms / 20:.2f}x of budget)")

        # --- a year of groups, compacted -------------------------------------
        t0 = time.perf_counter()
        n_rows = build_year(cat, args.days, args.per_day, args.states)
        build_s = time.perf_counter() - t0
        n_groups = args.days * args.per_day
        print(f"built {n_rows} rows for {n_groups} groups over {args.days} days in {build_s:.1f} s "
              f"({build_s / n_rows * 1e6:.0f} us/row batched)")
        t0 = time.perf_counter()
        r = compact(cat)
        print(f"compaction pass over compacted tables: {r.partitions} partitions merged in "
              f"{time.perf_counter() - t0:.2f} s")

        sql_counts = "SELECT state, count(*) AS n FROM groups GROUP BY state ORDER BY state"
        sql_all = "SELECT * FROM groups"
        sql_scan = "SELECT count(*) AS n FROM groups_source()"
        query._problems.clear()
        cold, _, _ = _timed(lambda: query.query(cat, sql_counts), repeat=1)
        best, med, res = _timed(lambda: query.query(cat, sql_counts))
        assert sum(res.column("n").to_pylist()) == n_groups, res
        best_all, med_all, res_all = _timed(lambda: query.query(cat, sql_all))
        assert res_all.num_rows == n_groups
        best_scan, med_scan, _ = _timed(lambda: query.query(cat, sql_scan))
        some = res_all.column("group_id")[n_groups // 2].as_py()
        best_one, med_one, one = _timed(lambda: query.latest(cat, "groups", group_id=some))
        assert len(one) == 1
        _, med_date, _ = _timed(lambda: query.latest(cat, "groups", group_id=some, obs_date=some[:10]))
        print(f"latest state of {n_groups} groups ({n_rows} rows, {args.days} files):")
        print(f"  counts by state   median {med:.3f} s, best {best:.3f} s, first call in process {cold:.3f} s "
              f"(target 1 s: {med:.2f}x of budget)")
        print(f"  all latest rows   median {med_all:.3f} s ({med_all:.2f}x of budget)")
        print(f"  baseline scan     median {med_scan:.3f} s (count(*) of the raw rows, no window): "
              f"view costs {med / med_scan:.1f}x the scan")
        print(f"  one group latest  median {med_one * 1e3:.1f} ms (catalog.query.latest with group_id), "
              f"{med_date * 1e3:.1f} ms with obs_date too (one partition read)")

        # --- the cost of not compacting: one day of single-row appends ----------
        day_cat = work / "day"
        t0 = time.perf_counter()
        one_day_uncompacted(day_cat, args.per_day, args.states)
        n_files = len(query.list_files(day_cat, "groups")) - 1
        print(f"one day uncompacted: {n_files} single-row files written in {time.perf_counter() - t0:.1f} s")
        _, before, _ = _timed(lambda: query.query(day_cat, sql_counts), repeat=3)
        t0 = time.perf_counter()
        compact(day_cat)
        comp_s = time.perf_counter() - t0
        _, after, _ = _timed(lambda: query.query(day_cat, sql_counts), repeat=3)
        print(f"  latest-state query: {before:.3f} s over {n_files} files, {after:.3f} s after compaction "
              f"({comp_s:.2f} s): compaction speeds it {before / after:.0f}x")
        ok = med < 1.0 and append_ms < 20.0
        print("PASS" if ok else "FAIL", "(latest-state query < 1 s and one-row append < 20 ms)")
        return 0 if ok else 1
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
