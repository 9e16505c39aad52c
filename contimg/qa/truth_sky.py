"""The simulator's sky as the truth table a cross-match needs: what a pbcor image of a group should show.

Each injected source's expected pbcor flux is its spectrum times the Airy beam at
every integration and channel, averaged as the image averages (uniform weights
over the group's unflagged integrations and channels), divided by the image's own
primary beam at its position (:func:`contimg.imaging.primary_beam.source_apparent_flux`).
"""

from __future__ import annotations

import numpy as np

from contimg.calibration.model import read_geometry
from contimg.imaging.primary_beam import source_apparent_flux
from contimg.qa.sources import sample_image
from contimg.simulate.truth import load_truth
from contimg.sky.source import Source


def truth_table(truth_json, ms, products: dict, *, noise_jy: float) -> dict:
    """Columns ``name, ra_deg, dec_deg, expected_flux_jy, expected_snr`` for the sources inside the pbcor footprint.

    Parameters
    ----------
    truth_json : path-like
        The simulator's sidecar of the group.
    ms : path-like
        The group's MS (its times, channels and pointing).
    products : dict
        Image products (``pbcor`` and ``pb`` FITS).
    noise_jy : float
        Image noise (before primary-beam correction), Jy/beam: ``expected_snr`` is the
        apparent flux over it.
    """
    sky = load_truth(truth_json)["sky"]
    sources = [Source(s["name"], s["ra_deg"], s["dec_deg"], s["flux_jy"], s.get("spectral_index", 0.0),
                      s.get("ref_freq_hz", 1.4e9), s.get("kind", "field")) for s in sky]
    ra = np.array([s.ra_deg for s in sources])
    dec = np.array([s.dec_deg for s in sources])
    keep = np.isfinite(sample_image(products["pbcor"], ra, dec))
    pb = sample_image(products["pb"], ra, dec)
    geometry = read_geometry(ms)
    freqs = geometry.chan_freq_hz.ravel()
    weights = np.ones((len(geometry.times_s), len(freqs)))
    apparent = source_apparent_flux([s for s, k in zip(sources, keep) if k], geometry, weights, freqs)
    return {
        "name": np.array([s.name for s in sources])[keep],
        "ra_deg": ra[keep], "dec_deg": dec[keep],
        "expected_flux_jy": apparent / pb[keep],
        "expected_snr": apparent / noise_jy,
    }
