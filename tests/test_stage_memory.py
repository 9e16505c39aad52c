"""A stage's peak memory is its own, not the process's lifetime peak, and includes its child processes."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from tasks.memory import StagePeakMemory

MB = 2**20


def test_a_later_smaller_stage_reports_its_own_peak():
    # Held for a while, so that sampling sees them too where the kernel's high-water mark cannot be reset.
    with StagePeakMemory(interval_s=0.05) as big:
        block = np.ones(400 * MB, np.uint8)
        time.sleep(0.3)
        del block
    with StagePeakMemory(interval_s=0.05) as small:
        block = np.ones(40 * MB, np.uint8)
        time.sleep(0.3)
        del block
    assert big.peak_bytes > 400 * MB
    assert small.peak_bytes < big.peak_bytes - 300 * MB  # getrusage would report the 400 MB again


def test_a_child_process_counts():
    child = "import numpy as np, time; a = np.ones(300 * 2**20, np.uint8); time.sleep(1.5)"
    with StagePeakMemory(interval_s=0.1) as stage:
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", child], check=True)
    assert time.monotonic() - start > 1.5
    assert stage.peak_bytes > 300 * MB
