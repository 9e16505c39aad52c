"""Variability metrics of a light curve, as the VAST pipeline defines them.

For the ``N`` good epochs of one source, fluxes ``f_i`` (Jy/beam, the forced
photometry's primary-beam-corrected peak) with uncertainties ``sigma_i`` (the
local rms, Jy/beam) and weights ``w_i = 1 / sigma_i^2``:

* ``mean_jy = mean(f)``;
* ``wmean_jy = sum(w f) / sum(w)`` (the weighted mean);
* ``v = s / mean(f)``, ``s`` the sample standard deviation (the modulation
  index, VAST's ``v_peak``);
* ``eta = N / (N - 1) (mean(w f^2) - mean(w f)^2 / mean(w))`` (VAST's
  ``eta_peak``; Swinbank et al. 2015), which equals
  ``sum(w (f - wmean)^2) / (N - 1)``: the reduced chi-square of the light curve
  against a constant at the weighted mean (~1 for a constant source whose
  errors are right); computed in that second form, which does not cancel;
* ``max_dev_sigma = max |f - wmean| / sigma`` (the peak deviation in sigma);
* ``max_snr``: the largest SNR of the epochs.

A source with one epoch has ``v`` and ``eta`` undefined (None); the SQL view
``variability`` (catalog/views.sql) computes the same numbers, and
:func:`is_candidate` the same decision as its ``is_candidate`` column.

References: VAST pipeline docs, "Source Statistics"
(askap-vast/vast-pipeline, docs/design/sourcestats.md; its ``get_eta_metric``
uses ``w = 1 / e^2``, the docs' text says ``1 / e``: the code is what VAST computes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class VariabilityThresholds:
    """When a source is a variability candidate (all must hold).

    Attributes
    ----------
    eta_min : float
        ``eta >=`` this.
    v_min : float
        ``v >=`` this.
    min_epochs : int
        At least this many good group epochs.
    min_snr : float
        ``max_snr >=`` this: seen at least once.
    """

    eta_min: float
    v_min: float
    min_epochs: int
    min_snr: float

    @classmethod
    def from_settings(cls, settings) -> "VariabilityThresholds":
        """The thresholds of :class:`contimg.config.Settings` (``variability_*``)."""
        return cls(settings.variability_eta_min, settings.variability_v_min,
                   settings.variability_min_epochs, settings.variability_min_snr)

    def to_dict(self) -> dict:
        return asdict(self)


def metrics(peak_jy, rms_jy, *, snr=None, mjd=None) -> dict:
    """The variability metrics of one light curve (see module docstring).

    Parameters
    ----------
    peak_jy : array_like
        Fluxes of the good epochs, Jy/beam.
    rms_jy : array_like
        Their uncertainties, Jy/beam (> 0).
    snr : array_like, optional
        Their SNRs (default ``peak_jy / rms_jy``).
    mjd : array_like, optional
        Their epochs, MJD (UTC), for ``first_mjd``/``last_mjd``.

    Returns
    -------
    dict
        ``n_epochs``, ``first_mjd``, ``last_mjd``, ``mean_jy``, ``wmean_jy``,
        ``v``, ``eta``, ``max_dev_sigma``, ``max_snr``.
    """
    f = np.asarray(peak_jy, dtype=float)
    e = np.asarray(rms_jy, dtype=float)
    n = f.size
    s = f / e if snr is None else np.asarray(snr, dtype=float)
    t = None if mjd is None else np.asarray(mjd, dtype=float)
    out = {"n_epochs": n, "first_mjd": None if t is None or n == 0 else float(t.min()),
           "last_mjd": None if t is None or n == 0 else float(t.max()),
           "mean_jy": None, "wmean_jy": None, "v": None, "eta": None, "max_dev_sigma": None, "max_snr": None}
    if n == 0:
        return out
    w = 1.0 / e**2
    wmean = float(np.sum(w * f) / np.sum(w))
    out.update(mean_jy=float(f.mean()), wmean_jy=wmean, max_snr=float(s.max()),
               max_dev_sigma=float(np.max(np.abs(f - wmean) / e)))
    if n > 1:
        mean = float(f.mean())
        out["v"] = float(f.std(ddof=1) / mean) if mean != 0 else None  # as SQL: x / 0 is NULL
        out["eta"] = float(np.sum(w * (f - wmean) ** 2) / (n - 1))
    return out


def is_candidate(m: dict, thresholds: VariabilityThresholds) -> bool:
    """Whether the metrics ``m`` (:func:`metrics`) make a variability candidate."""
    if m["n_epochs"] < thresholds.min_epochs or m["eta"] is None or m["v"] is None:
        return False
    if not (math.isfinite(m["eta"]) and math.isfinite(m["v"])):
        return False
    return m["eta"] >= thresholds.eta_min and m["v"] >= thresholds.v_min and m["max_snr"] >= thresholds.min_snr
