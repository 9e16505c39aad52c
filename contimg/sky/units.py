"""Coercion of public arguments to astropy types, refusing bare numbers for angles.

A bare float for a declination is how the old pipeline went to the wrong part of
the sky (radians read as degrees), so public sky functions take a ``Quantity``
(or ``Angle``/``Latitude``) and these helpers turn anything else into a clear
:class:`~contimg.errors.InvalidInputError`.
"""

from __future__ import annotations

import datetime as _dt

import astropy.units as u
from astropy.coordinates import Angle
from astropy.time import Time

from contimg.errors import InvalidInputError


def as_angle(value, name: str = "angle") -> Angle:
    """Return ``value`` as an :class:`~astropy.coordinates.Angle`.

    Parameters
    ----------
    value : astropy.units.Quantity or Angle
        Must carry an angular unit; a bare number is rejected.
    name : str
        Argument name used in the error message.

    Raises
    ------
    InvalidInputError
        For a bare number or a non-angular unit.
    """
    if isinstance(value, u.Quantity):
        if not value.unit.is_equivalent(u.rad):
            raise InvalidInputError(f"{name} must be an angle, got unit {value.unit}")
        return Angle(value)
    raise InvalidInputError(
        f"{name}={value!r} has no unit; pass an astropy Quantity, e.g. "
        f"54.6 * u.deg or 0.9529 * u.rad (bare numbers are refused because "
        f"degrees and radians were confused before)"
    )


def as_time(value, name: str = "time") -> Time:
    """Return ``value`` as a UTC :class:`~astropy.time.Time` (Time, ISO string or datetime)."""
    if isinstance(value, Time):
        return value.utc
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = value.isoformat()
    if isinstance(value, (str, _dt.datetime)):
        try:
            return Time(value, scale="utc")
        except ValueError as exc:
            raise InvalidInputError(f"{name}={value!r} is not a recognisable UTC time") from exc
    raise InvalidInputError(f"{name}={value!r}: pass an astropy Time or an ISO string")


def day_start(date) -> Time:
    """00:00:00 UTC of the day containing ``date`` (Time, ``YYYY-MM-DD`` string or date)."""
    t = as_time(date, "date")
    return Time(t.isot[:10] + "T00:00:00", scale="utc")
