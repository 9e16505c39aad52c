"""AOFlagger's strategy on images built elsewhere: what the RFI worker processes run.

:func:`contimg.calibration.flagging.aoflagger_flags` builds each chunk's images
in the parent (compiled code, 0.1 ms per baseline) and sends them to spawned worker
processes (:func:`contimg.calibration.flagging.rfi_pool`), which hold nothing of
the group (two workers forked after DATA was read tripled the stage's measured peak:
``stage_runs.peak_memory_mb``; benchmarks/RESULTS.md, issue 21). Keep this module's
imports light: every worker imports it.
"""

from __future__ import annotations

import signal

import numpy as np

_STRATEGIES: dict = {}
"""Per worker process: strategy path -> (AOFlagger, loaded strategy)."""


def run_strategy(strategy: str, images: list, masks: np.ndarray, n_t: int, n_pos: int, n_chan: int) -> np.ndarray:
    """The strategy's flags of a chunk of baselines, packed bits of (baseline, time, SPW position, channel).

    Parameters
    ----------
    strategy : str
        Lua strategy file.
    images : list of numpy.ndarray
        One (baseline, frequency, time) real image per AOFlagger image buffer: one
        (the polarisation amplitude sum; the second buffer is zeros) or four (real
        and imaginary of XX and YY).
    masks : numpy.ndarray
        (baseline, frequency, time) bool, the input flags.
    """
    import aoflagger

    if strategy not in _STRATEGIES:
        flagger = aoflagger.AOFlagger()
        _STRATEGIES[strategy] = (flagger, flagger.load_strategy_file(strategy))
    flagger, strat = _STRATEGIES[strategy]
    n_bl, n_freq = masks.shape[0], masks.shape[1]
    pol_sum = len(images) == 1
    image_set = flagger.make_image_set(n_t, n_freq, 2 if pol_sum else 4)
    mask = flagger.make_flag_mask(n_t, n_freq, False)
    if pol_sum:
        image_set.set_image_buffer(1, np.zeros((n_freq, n_t)))  # the amplitude sum is real
    out = np.zeros((n_bl, n_t, n_pos, n_chan), dtype=bool)
    for k in range(n_bl):
        if masks[k].all():
            continue
        for i, image in enumerate(images):
            image_set.set_image_buffer(i, image[k])
        mask.set_buffer(masks[k])
        out[k] = strat.run(image_set, mask).get_buffer().T.reshape(n_t, n_pos, n_chan)  # (freq, time) -> (t, pos, chan)
    return np.packbits(out)


def run_task(task: tuple) -> np.ndarray:
    """:func:`run_strategy` of one ``(strategy, images, masks, n_t, n_pos, n_chan)`` task (a pool's map)."""
    return run_strategy(*task)


def reset_signals() -> None:
    """Pool initializer: SIGTERM's default action, SIGINT ignored (the parent handles Ctrl-C).

    A Python handler for SIGTERM in a worker (a forked one inherited Prefect's flow
    engine's; a spawned one gets whatever its imports install) runs only in the main
    thread, and the signal can be taken by one of AOFlagger's threads while the main
    thread waits on the pool's queue lock: ``Pool.terminate()``'s SIGTERM was then never
    acted on, and the parent's join hung (``make test`` beside another,
    tests/test_pipeline_flows.py). With the default action the kernel ends the process,
    whichever thread takes it.

    :func:`~contimg.calibration.flagging.rfi_pool` starts workers with SIGTERM blocked,
    so that one sent before this runs (a ``terminate()`` right after the pool was made)
    is delivered here, after the reset: the worker then ends.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
