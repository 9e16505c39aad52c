"""numba's on-disk cache for pyuvdata's compiled kernels.

pyuvdata computes baseline numbers with ``numba.njit`` functions
(``pyuvdata.utils.bls_numba``) declared without ``cache=True``, so every new
process spends 0.8-1.5 s compiling them the first time it reads or builds a
UVData: the simulator's template and the converter's group geometry both do.
"""

from __future__ import annotations

from functools import lru_cache

_KERNELS = ("_max_ant", "_min_ant", "_antnums_to_baseline", "_baseline_to_antnums")


@lru_cache(maxsize=1)
def cache_pyuvdata_kernels() -> bool:
    """Let numba cache pyuvdata's baseline-number kernels on disk (once per process).

    With the cache, the compile costs ~10 ms after the first run on a machine
    (numba keys it on the source file and numba version, next to pyuvdata's
    sources or in the user cache directory). Best effort: any failure leaves
    pyuvdata as it is.

    Returns
    -------
    bool
        Whether caching was switched on.
    """
    try:
        from pyuvdata.utils import bls_numba

        for name in _KERNELS:
            func = getattr(bls_numba, name)
            if not func.signatures:  # not compiled yet in this process
                func.enable_caching()
    except Exception:  # noqa: BLE001 - an optimisation only
        return False
    return True
