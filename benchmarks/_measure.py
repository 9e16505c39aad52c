"""Shared measuring helpers of the benchmark scripts."""

from __future__ import annotations

import threading
import time

import psutil

from tasks.memory import tree_rss


class PeakTreeRSS:
    """Sample :func:`tree_rss` of a process in a thread; ``.peak`` holds the maximum (bytes).

    Use as a context manager around the wait for the process.
    """

    def __init__(self, pid: int, *, interval_s: float = 0.05):
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_rss(self.proc))
            except psutil.Error:
                pass
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakTreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
