"""Source finding on a mosaic: PyBDSF with the mosaic's own noise map as its rms map.

A mosaic's noise is known exactly where it has coverage, ``1 / sqrt(W)`` (the noise map of
:mod:`.linear`), smooth, and varies by a factor of several across the hour's footprint. PyBDSF's own
box statistics fail on its edge: on the 12-group full-size mosaic a box holding a few valid pixels at the
edge of the coverage divided by zero (its ``bstat``), or, with that allowed, gave an "unphysical rms".
So :func:`find_mosaic_sources` gives PyBDSF the noise map as the rms map and a zero mean map
(``rmsmean_map_filename``). What the noise map does not hold (sidelobes of bright sources, confusion)
is not in the rms: the detections near a bright source should be read with that in mind, as the
groups' sidelobe suspects are (``contimg/qa/sidelobes.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.io import fits


def find_mosaic_sources(image, noise, *, out_parquet=None, **options) -> pa.Table:
    """PyBDSF sources of a mosaic image (:func:`contimg.qa.sources.find_sources`), rms = the noise map.

    Parameters
    ----------
    image, noise : path-like
        The mosaic (Jy/beam, blank outside its coverage) and its noise map (Jy/beam), same grid.
    out_parquet : path-like, optional
        Write the table here too (atomically).
    **options
        Passed to :func:`~contimg.qa.sources.find_sources` (thresholds...).

    Returns
    -------
    pyarrow.Table
        As :func:`~contimg.qa.sources.find_sources`.
    """
    from contimg.qa.sources import find_sources

    with fits.open(noise) as hdul:
        rms, header = np.asarray(hdul[0].data, dtype=np.float32), hdul[0].header.copy()
    finite = np.isfinite(rms)
    if not finite.any():
        raise ValueError(f"{noise}: no finite noise")
    # blank pixels of the image are never in an island; their rms only has to be a number
    rms = np.where(finite, rms, np.nanmax(rms)).astype(np.float32).reshape(1, 1, *rms.shape[-2:])
    with tempfile.TemporaryDirectory(prefix="mosaic-rms-") as tmp:
        mean_path, rms_path = Path(tmp) / "mean.fits", Path(tmp) / "rms.fits"
        fits.PrimaryHDU(np.zeros_like(rms), header).writeto(mean_path)
        fits.PrimaryHDU(rms, header).writeto(rms_path)
        # PyBDSF opens these as <the image's directory>/<name>: relative names that lead here
        home = Path(image).resolve().parent
        names = [os.path.relpath(p, home) for p in (mean_path, rms_path)]
        return find_sources(image, out_parquet=out_parquet, adaptive_rms_box=False, rmsmean_map_filename=names,
                            **options)
