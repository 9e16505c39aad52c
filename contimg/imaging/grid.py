"""The image grid of a group: cell from the baselines, size from the primary beam, smearing budget.

* **Cell.** From the longest projected baseline at the top of the band: no
  weighting gives a synthesized beam narrower than ``lambda / B_max``
  (:func:`theoretical_resolution_arcsec`, 15.6" for the full array), and the cell
  puts ``pixels_per_beam`` (3) pixels across it. The Briggs-0 beam of a full group
  is ~34" x 57", so its minor axis spans ~6 pixels; the QA records the figure.
* **Size.** The image covers the time- and frequency-averaged primary beam down
  to the pbcor cutoff (0.2 by default), with a margin: ~4.4 deg at Dec 55, where
  the seed's 1024 x 4" (1.1 deg) left the calibrator 1 deg north outside the image.
* **Smearing.** Averaging channels before gridding smears a source at radius r by
  the Gaussian-beam bandwidth factor (Bridle & Schwab 1999, eq. 18-43),
  ``R = 1.0645 erf(0.8326 x) / x`` with ``x = (dnu / nu) (r / theta_b)``;
  :func:`choose_channel_average` takes the largest factor whose peak loss at the
  half-power radius stays within the budget (5 %). WSClean's baseline-dependent
  time averaging (:func:`baseline_averaging_loss`) takes its share of the same
  budget first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from contimg import instrument
from contimg.sky.beam import airy_power, half_power_width_rad

C_M_S = 299792458.0
RAD_TO_ARCSEC = 180.0 / math.pi * 3600.0
#: Image sizes are rounded up to a multiple of this (FFT-friendly, even).
SIZE_QUANTUM = 64


@dataclass(frozen=True)
class ImageGrid:
    """Where and how finely a group is imaged.

    Attributes
    ----------
    ra_deg, dec_deg : float
        Image centre (the MS phase centre), ICRS, degrees.
    cell_arcsec : float
        Pixel size, arcsec.
    imsize : int
        Pixels on a side (square images).
    """

    ra_deg: float
    dec_deg: float
    cell_arcsec: float
    imsize: int

    @property
    def width_deg(self) -> float:
        """Side of the image, degrees."""
        return self.imsize * self.cell_arcsec / 3600.0

    def wcs(self, freq_hz: float = 1.4e9, bandwidth_hz: float = 0.0):
        """The image's celestial + spectral + Stokes WCS (SIN projection, as the imagers write it)."""
        from astropy.wcs import WCS

        w = WCS(naxis=4)
        w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
        w.wcs.cunit = ["deg", "deg", "Hz", ""]
        w.wcs.crval = [self.ra_deg, self.dec_deg, freq_hz, 1.0]
        w.wcs.crpix = [self.imsize / 2 + 1, self.imsize / 2 + 1, 1.0, 1.0]
        w.wcs.cdelt = [-self.cell_arcsec / 3600.0, self.cell_arcsec / 3600.0, bandwidth_hz or 1.0, 1.0]
        w.wcs.radesys = "ICRS"
        return w


def theoretical_resolution_arcsec(uvw_m: np.ndarray, freq_hz: float) -> float:
    """``lambda / B_max``: the narrowest synthesized beam any weighting can give, arcsec.

    Parameters
    ----------
    uvw_m : numpy.ndarray
        (N, 3) baseline coordinates, metres (cross-correlations).
    freq_hz : float
        Top of the band, Hz.
    """
    uv = np.asarray(uvw_m, dtype=float)[:, :2]
    if len(uv) == 0:
        raise ValueError("no baselines")
    b_max = float(np.sqrt((uv**2).sum(axis=1)).max())
    return C_M_S / freq_hz / b_max * RAD_TO_ARCSEC


def cell_for_beam(beam_minor_arcsec: float, *, pixels_per_beam: float = 3.0) -> float:
    """Pixel size putting ``pixels_per_beam`` pixels across the minor axis, arcsec, rounded down to 0.1"."""
    return math.floor(10.0 * beam_minor_arcsec / pixels_per_beam) / 10.0


def effective_beam_radius_rad(cutoff: float, *, freq_hz: float, drift_rad: float = 0.0,
                              dish_diameter_m: float = instrument.DISH_DIAMETER_M) -> float:
    """Radius from the group's mid pointing where the Airy response falls to ``cutoff``, radians.

    ``drift_rad`` is the on-sky distance the beam centre moves over the group
    (half of it on each side of the mid pointing): the time-averaged beam is
    wider along the drift, and the image must cover that too.
    """
    from scipy.optimize import brentq

    lam = C_M_S / freq_hz
    r = brentq(lambda t: airy_power(t, freq_hz, dish_diameter_m=dish_diameter_m) - cutoff,
               1e-6, 1.6 * lam / dish_diameter_m)  # inside the first null (1.22 lambda/D)
    return r + drift_rad / 2.0


def imsize_for_coverage(radius_rad: float, cell_arcsec: float, *, margin: float = 1.05) -> int:
    """Pixels on a side covering a circle of ``radius_rad`` with a margin, rounded up to :data:`SIZE_QUANTUM`."""
    n = 2.0 * radius_rad * margin * RAD_TO_ARCSEC / cell_arcsec
    return int(SIZE_QUANTUM * math.ceil(n / SIZE_QUANTUM))


def bandwidth_smearing_factor(x) -> np.ndarray:
    """Peak response of a Gaussian-beam point source smeared radially by ``x = (dnu/nu)(r/theta_b)``."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0645 * erf(0.8326 * x) / x
    return np.where(x < 1e-6, 1.0, out)


def choose_channel_average(channel_width_hz: float, n_chan_per_spw: int, *, freq_hz: float, radius_rad: float,
                           beam_arcsec: float, max_loss: float = 0.05) -> tuple[int, float]:
    """The largest divisor of the channels per SPW whose averaging keeps the peak loss within ``max_loss``.

    Parameters
    ----------
    channel_width_hz : float
        Width of one input channel, Hz.
    n_chan_per_spw : int
        Channels per SPW (averaging never crosses a SPW boundary).
    freq_hz : float
        Frequency at which the fractional bandwidth is worst (the band's bottom), Hz.
    radius_rad : float
        Radius at which the loss is budgeted (the half-power radius), radians.
    beam_arcsec : float
        Synthesized beam width along the smearing (radial) direction, arcsec
        (the minor axis: the worst case).
    max_loss : float
        Largest tolerated peak loss, 0..1.

    Returns
    -------
    (int, float)
        The factor and its peak loss (0 for factor 1: the data's own channels).
    """
    best, best_loss = 1, 0.0
    for k in range(1, n_chan_per_spw + 1):
        if n_chan_per_spw % k:
            continue
        loss = averaging_loss(k, channel_width_hz, freq_hz=freq_hz, radius_rad=radius_rad, beam_arcsec=beam_arcsec)
        if loss <= max_loss:
            best, best_loss = k, loss
    return best, best_loss


def averaging_loss(k: int, channel_width_hz: float, *, freq_hz: float, radius_rad: float,
                   beam_arcsec: float) -> float:
    """Peak loss at ``radius_rad`` from averaging ``k`` channels, relative to the data as written
    (whose own channel width already smears)."""
    r_over_b = radius_rad * RAD_TO_ARCSEC / beam_arcsec
    return 1.0 - float(bandwidth_smearing_factor(k * channel_width_hz / freq_hz * r_over_b)
                       / bandwidth_smearing_factor(channel_width_hz / freq_hz * r_over_b))


def half_power_radius_rad(freq_hz: float, *, dish_diameter_m: float = instrument.DISH_DIAMETER_M) -> float:
    """Half the Airy half-power width at ``freq_hz``, radians."""
    return half_power_width_rad(freq_hz, dish_diameter_m=dish_diameter_m) / 2.0


def baseline_averaging_factors(uvw_m: np.ndarray, *, size_wavelengths: float, freq_hz: float,
                               integration_s: float) -> np.ndarray:
    """Integrations WSClean's ``-baseline-averaging`` averages on each baseline.

    WSClean's rule (``AveragingMSRowProvider``): ``floor(size / (2 pi |B| / lambda_min x dt / 1 day))``,
    at least 1, with ``|B|`` the baseline length (``|uvw|``, which the projection keeps).

    Parameters
    ----------
    uvw_m : numpy.ndarray
        (..., 3) baseline coordinates, metres.
    size_wavelengths : float
        The ``-baseline-averaging`` value, wavelengths.
    freq_hz : float
        Top of the band (WSClean uses the shortest wavelength), Hz.
    integration_s : float
        The data's integration time, s.
    """
    length_wl = np.linalg.norm(np.asarray(uvw_m, dtype=float), axis=-1) * freq_hz / C_M_S
    per_integration = 2.0 * math.pi * length_wl * integration_s / 86400.0
    with np.errstate(divide="ignore"):
        return np.maximum(np.floor(size_wavelengths / per_integration), 1).astype(int)


def baseline_averaging_loss(uvw_m: np.ndarray, *, size_wavelengths: float, freq_hz: float, integration_s: float,
                            radius_rad: float, n_angles: int = 8) -> float:
    """Peak loss at ``radius_rad`` from WSClean's baseline-dependent time averaging, relative to the data as written.

    Each baseline's track (its own uvw, so the real Earth-rotation rate, not WSClean's
    upper bound) is cut into WSClean's blocks of :func:`baseline_averaging_factors`
    integrations; a point source at ``radius_rad`` keeps ``|mean exp(2 pi i (ul + vm + w(n-1)))|``
    of each block. The loss is one minus the mean of that over visibilities (natural
    weights: the short baselines, averaged most, weigh more than under Briggs weighting,
    so this errs high) and over ``n_angles`` position angles.

    Parameters
    ----------
    uvw_m : numpy.ndarray
        (n_baselines, n_times, 3) baseline coordinates, metres, in time order.
    size_wavelengths, freq_hz, integration_s : float
        As :func:`baseline_averaging_factors`.
    radius_rad : float
        Distance of the source from the phase centre, radians.
    n_angles : int
        Position angles averaged over (0-180 deg).

    Returns
    -------
    float
        0..1.
    """
    uvw = np.asarray(uvw_m, dtype=float)
    n_bl, n_t, _ = uvw.shape
    if n_bl == 0 or n_t == 0:
        return 0.0  # no baseline with a row at every time to measure it on
    factors = np.minimum(baseline_averaging_factors(uvw[:, 0], size_wavelengths=size_wavelengths, freq_hz=freq_hz,
                                                    integration_s=integration_s), n_t)
    wl = uvw * (freq_hz / C_M_S)
    kept = 0.0
    for pa in np.arange(n_angles) * math.pi / n_angles:
        l, m = radius_rad * math.sin(pa), radius_rad * math.cos(pa)
        n_minus_1 = math.sqrt(1 - l * l - m * m) - 1
        phase = np.exp(2j * math.pi * (wl[..., 0] * l + wl[..., 1] * m + wl[..., 2] * n_minus_1))
        for k in np.unique(factors):
            p = phase[factors == k]
            whole = (n_t // k) * k
            blocks = np.abs(p[:, :whole].reshape(len(p), n_t // k, k).mean(axis=2)).sum() * k
            rest = np.abs(p[:, whole:].mean(axis=1)).sum() * (n_t - whole) if whole < n_t else 0.0
            kept += blocks + rest  # the last, shorter block is averaged too
    return float(1.0 - kept / (n_angles * n_bl * n_t))
