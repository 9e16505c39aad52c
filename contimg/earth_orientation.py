"""astropy's Earth orientation table, parsed once per environment instead of once per process.

The first celestial <-> terrestrial transform of a process makes astropy parse the
IERS-A and IERS-B text files of ``astropy-iers-data``: 0.4 s here (1.1 s under a
profiler), which in the converter sits on the critical path before any
visibility is written. :func:`use_cached_table` parses them once, pickles the
result under the runtime directory, keyed by the astropy and astropy-iers-data
versions (a new bulletin is a new package version), and hands later processes the
same table in 0.04 s. The table is exactly what ``IERS_Auto.open()`` returns;
only where it comes from changes.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


def cache_path() -> Path:
    """Where the pickled table of this astropy and astropy-iers-data lives."""
    import astropy
    import astropy_iers_data

    from contimg.runtime import runtime_dir

    return runtime_dir() / "astropy" / f"iers-auto-{astropy.__version__}-{astropy_iers_data.__version__}.pickle"


@lru_cache(maxsize=1)
def use_cached_table() -> Path | None:
    """Make astropy use the cached Earth orientation table (building the cache if needed), once per process.

    Best effort: if the cache cannot be read or written, astropy parses the
    text files as it would have anyway.

    Returns
    -------
    Path or None
        The cache file in use, or None when astropy's own loading is used.
    """
    from astropy.utils import iers

    path = cache_path()
    try:
        with open(path, "rb") as handle:
            table = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        table = iers.IERS_Auto.open()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            with open(partial, "wb") as handle:
                pickle.dump(table, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(partial, path)  # atomic: concurrent processes never read half a file
        except OSError as exc:
            log.info("could not cache the IERS table at %s: %s", path, exc)
            path = None
    if not isinstance(table, iers.IERS):
        return None
    iers.earth_orientation_table.set(table)
    return path
