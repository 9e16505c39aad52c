"""The simulator's sky as the truth table a cross-match needs: what a pbcor image of a group should show.

Each injected source's expected pbcor flux is its spectrum times the Airy beam at
every integration and channel, averaged as the image averages (uniform weights
over the group's unflagged integrations and channels), divided by the image's own
primary beam at its position (:func:`contimg.imaging.primary_beam.source_apparent_flux`).
A variable source (the sidecar's ``variables``) has its flux scaled by its injected
light curve at each integration, as the simulator scaled it.
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
    truth = load_truth(truth_json)
    sky = truth["sky"]
    sources = [Source(s["name"], s["ra_deg"], s["dec_deg"], s["flux_jy"], s.get("spectral_index", 0.0),
                      s.get("ref_freq_hz", 1.4e9), s.get("kind", "field")) for s in sky]
    ra = np.array([s.ra_deg for s in sources])
    dec = np.array([s.dec_deg for s in sources])
    keep = np.isfinite(sample_image(products["pbcor"], ra, dec))
    pb = sample_image(products["pb"], ra, dec)
    geometry = read_geometry(ms)
    freqs = geometry.chan_freq_hz.ravel()
    weights = np.ones((len(geometry.times_s), len(freqs)))
    kept = [s for s, k in zip(sources, keep) if k]
    apparent = source_apparent_flux(kept, geometry, weights, freqs,
                                    flux_factor=_light_curves(truth, kept, geometry.times_s / 86400.0))
    return {
        "name": np.array([s.name for s in sources])[keep],
        "ra_deg": ra[keep], "dec_deg": dec[keep],
        "expected_flux_jy": apparent / pb[keep],
        "expected_snr": apparent / noise_jy,
    }


def _light_curves(truth: dict, sources: list, times_mjd: np.ndarray) -> np.ndarray | None:
    """(Ntimes, Nsources) injected light-curve factors at the MS's times (1 for constant sources);
    None when the group has no variable source."""
    variables = (truth.get("variables") or {}).get("sources") or []
    if not variables:
        return None
    t_truth = np.asarray(truth["variables"]["times_mjd"], dtype=float)
    by_name = {v["name"]: np.asarray(v["factor"], dtype=float) for v in variables}
    factor = np.ones((len(times_mjd), len(sources)))
    for j, s in enumerate(sources):
        if s.name in by_name:
            factor[:, j] = np.interp(times_mjd, t_truth, by_name[s.name])
    return factor
