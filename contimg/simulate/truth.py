"""The truth sidecar: everything injected into a simulated group, as JSON.

Written to :func:`contimg.naming.truth_path` (``<group_id>_truth.json`` next to the
files). Keys (schema ``contimg-simulate-truth/1``):

``group_id``, ``start_utc``, ``times_jd`` (integration mid times), ``integration_time_s``,
``pointing_dec_deg``/``_rad``, ``seed``, ``scale`` (subbands, channels, times,
antennas with data, channel width), ``conventions`` (text of the sign, frame,
gain and noise definitions), ``sky`` (name, ICRS ra_deg/dec_deg, flux_jy at
ref_freq_hz, spectral_index, kind: the sources actually simulated),
``field_population`` (null without a random field; else its ``options``, the
apparent-flux cut ``min_apparent_flux_jy`` and ``cut_freq_hz``, ``n_drawn``,
``n_simulated``, ``n_dropped`` and the summed peak apparent flux, Jy, of the
dropped and of the simulated field sources), ``calibrator`` (name, transit time,
nearest integration) or null, ``beam`` (``fixed``: the test option that holds each source's
beam attenuation at its group-mid-time value), ``corruptions`` (switches; ``instrument`` parameters per
antenna number and pol, from which :func:`gains_from_truth` rebuilds the exact
complex gains; ``delays_ns`` per antenna; ``noise`` SEFD, per-visibility sigma and
the natural-weighting image sigma of the whole group; ``rfi`` cells;
``dead_antennas``; ``flagged_antennas``), ``files`` (subband, file name, timestamp,
jitter_s), and the ``extra_keywords`` written to every file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from contimg.simulate import corruptions as _corr

SCHEMA = "contimg-simulate-truth/1"

CONVENTIONS = {
    "uvw": "uvw = p[ant2] - p[ant1] (pyuvdata), p = antenna ECEF position (relative to the site) projected "
           "toward the phase centre (pyuvdata calc_uvw with app_ra = LST, app_dec = pointing Dec, frame_pa = 0)",
    "phase_centre": "each integration: pyuvdata apparent frame (utils.phasing.transform_icrs_to_app, erfa atco13: "
                    "topocentric apparent place of date, equinox-based RA), "
                    "RA = local apparent sidereal time at the integration mid time (lst_array), Dec = pointing Dec",
    "visibility": "V_ij = sum_s S_s(nu) PB(theta_s, nu) exp(+2 pi i nu/c (u l + v m + w (n - 1))); sources in "
                  "the same apparent frame; this is the sign pyuvdata phase() and CASA ft use with this uvw",
    "gains": "V_ij = G_i conj(G_j) (V_sky + N); G = g(t) B(nu) exp(+2 pi i nu tau)",
    "noise_sigma": "sigma_jy: standard deviation of EACH of the real and imaginary parts of one "
                   "cross-correlation (one pol, channel, integration), = SEFD / sqrt(2 dnu tau), in Jy "
                   "referred to the sky (before gains)",
    "image_sigma": "image_sigma_jy: thermal noise of one naturally weighted Stokes I image of the whole group, "
                   "SEFD / sqrt(2 N (N - 1) B T) in Jy/beam, N = antennas with data that are neither dead nor "
                   "flagged, B = bandwidth of the written subbands, T = n_times x integration time",
    "antenna_numbering": "antenna number = station - 1 (0..116), name DSA-<station:03d>",
    "polarizations": "XX = YY = Stokes I (unpolarised sky); pol index 0 = XX (-5), 1 = YY (-6)",
}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_truth(path: Path, truth: dict) -> Path:
    """Write the truth dict as JSON (atomically: temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable({"schema": SCHEMA, **truth}), indent=1))
    tmp.replace(path)
    return path


def load_truth(path) -> dict:
    """Read a truth sidecar."""
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a simulator truth file (schema {data.get('schema')!r})")
    return data


def gains_from_truth(truth: dict, antennas, freqs_hz, times_jd) -> np.ndarray:
    """The complex antenna gains G injected into a group, shape (Nants, Ntimes, Nfreqs, 2).

    Parameters
    ----------
    truth : dict
        From :func:`load_truth`.
    antennas : sequence of int
        Antenna numbers.
    freqs_hz : array_like
        Frequencies, Hz.
    times_jd : array_like
        Integration mid times, JD (UTC).
    """
    params = {k: np.asarray(v) if isinstance(v, list) else v
              for k, v in truth["corruptions"]["instrument"].items()}
    unix_s = (np.asarray(times_jd, dtype=float) - 2440587.5) * 86400.0
    return _corr.antenna_gains(params, antennas, freqs_hz, unix_s)
