"""Primary beam of a DSA-110 dish: an Airy pattern (DOMAIN.md 4.4).

PB(theta) = (2 J1(x) / x)^2 with x = pi D sin(theta) / lambda, using
``scipy.special.j1`` (the old pipeline's sin/cos approximation of J1 inverted the
response and picked distant calibrators). Half-power width is ~1.02 lambda / D.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.constants import c
from astropy.coordinates import Angle
from scipy.special import j1

from contimg.instrument import DISH_DIAMETER_M

_C_M_S = c.to_value("m/s")


def airy_power(offset_rad, freq_hz, *, dish_diameter_m: float = DISH_DIAMETER_M) -> np.ndarray:
    """Power response of an Airy disk, 1 on axis.

    Parameters
    ----------
    offset_rad : array_like
        Angular distance from the pointing centre, radians.
    freq_hz : array_like
        Observing frequency, Hz (broadcast against ``offset_rad``).
    dish_diameter_m : float
        Dish diameter, metres (default 4.65).

    Returns
    -------
    numpy.ndarray
        Power response in [0, 1].
    """
    offset = np.asarray(offset_rad, dtype=float)
    lam = _C_M_S / np.asarray(freq_hz, dtype=float)
    x = np.pi * dish_diameter_m * np.sin(offset) / lam
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(np.abs(x) < 1e-8, 1.0, 2.0 * j1(x) / np.where(x == 0, 1.0, x))
    return amp**2


def half_power_width_rad(freq_hz: float, *, dish_diameter_m: float = DISH_DIAMETER_M) -> float:
    """Full width at half power of the Airy beam, radians (about 1.029 lambda/D)."""
    from scipy.optimize import brentq

    lam = _C_M_S / freq_hz
    half = brentq(lambda t: airy_power(t, freq_hz, dish_diameter_m=dish_diameter_m) - 0.5, 1e-6, 1.2 * lam / dish_diameter_m)
    return 2.0 * half


#: Frequency at which calibrator selection weighs fluxes by the beam, Hz.
SELECTION_FREQ_HZ = 1.4e9


def primary_beam_response(offset, *, freq=SELECTION_FREQ_HZ * u.Hz, dish_diameter_m: float = DISH_DIAMETER_M) -> np.ndarray:
    """Airy power response at an angular offset from the pointing centre.

    Parameters
    ----------
    offset : astropy.units.Quantity
        Angular offset(s) from the pointing centre (angle unit).
    freq : astropy.units.Quantity
        Frequency (default 1.4 GHz).
    dish_diameter_m : float
        Dish diameter, metres.

    Returns
    -------
    numpy.ndarray
        Response in [0, 1].
    """
    return airy_power(
        u.Quantity(offset).to_value(u.rad),
        u.Quantity(freq).to_value(u.Hz),
        dish_diameter_m=dish_diameter_m,
    )


def half_power_width(freq=SELECTION_FREQ_HZ * u.Hz, *, dish_diameter_m: float = DISH_DIAMETER_M) -> Angle:
    """Full width at half power (HPBW) of the Airy beam at ``freq`` (about 2.72 deg at 1.4 GHz)."""
    return Angle(half_power_width_rad(u.Quantity(freq).to_value(u.Hz), dish_diameter_m=dish_diameter_m) * u.rad).to(u.deg)
