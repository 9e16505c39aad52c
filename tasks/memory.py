"""Peak memory of one pipeline stage, for ``stage_runs.peak_memory_mb``.

``getrusage`` reports a process's peak since it started, so in a long-lived
worker every stage after the largest would report the largest one's peak. So:

* this process: the kernel's high-water mark (``VmHWM``), reset when the stage
  starts by writing 5 to ``/proc/self/clear_refs`` and read when it ends: exact,
  including the converter's worker threads;
* child processes (each CASA step runs in one): their resident memory, sampled
  with psutil every ``interval_s`` together with this process's, since no kernel
  counter covers a process tree. A child shorter than the interval can be missed.

Where ``clear_refs`` cannot be written, this process is sampled too. Two stages
running at once in one process would reset each other's high-water mark; the
flows run a group's stages one after another.
"""

from __future__ import annotations

import threading

import psutil

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _reset_high_water_mark() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _high_water_mark_bytes() -> int:
    with open(_STATUS) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f"no VmHWM in {_STATUS}")


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, bytes (the benchmarks use it too)."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass  # a child that has just exited
    return total


class StagePeakMemory:
    """Peak resident memory of this process and its children within a ``with`` block.

    Attributes
    ----------
    peak_bytes : int
        Set when the block ends.
    """

    def __init__(self, *, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="stage-peak-memory", daemon=True)
        self._exact = False

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, tree_rss(self._process))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "StagePeakMemory":
        self._exact = _reset_high_water_mark()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, tree_rss(self._process))
        if self._exact:
            try:
                self.peak_bytes = max(self.peak_bytes, _high_water_mark_bytes())
            except (OSError, ValueError):
                pass
