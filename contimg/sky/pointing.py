"""Pointing declination and time range of a group, from a UVH5 subband file or an MS.

UVH5 (read with h5py, header only): ``Header/extra_keywords/phase_center_dec`` in
**radians** (DOMAIN.md 1.6), ``Header/time_array`` (JD, integration mid-times) and
``Header/integration_time`` (s). A value above pi/2 in magnitude cannot be radians
and is rejected, and when ``fs_table`` names a declination
(``fringestopping_table_dec54.6deg_96ant.npz``) the header value must agree with
it: a degrees value read as radians sent the old pipeline to the wrong part of the
sky.

MS (python-casacore): FIELD ``PHASE_DIR`` declinations (radians; the 24 meridian
fields share the pointing Dec) and the distinct ``TIME`` values of the main table
(MJD seconds, UTC, integration mid-times), ``INTERVAL`` for the integration time.

``Pointing.epoch`` says in which frame the declination is given: ``"apparent"``
(of date; UVH5 ``phase_center_epoch`` ``HADEC``, the default) or ``"J2000"`` (an MS
whose fields are ICRS/J2000, or a UVH5 file that says ``J2000``). DOMAIN.md marks
the fringe-stopping epoch uncertain, so the selection code takes it as a parameter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle
from astropy.time import Time

from contimg.errors import InvalidInputError

log = logging.getLogger(__name__)

#: ``..._dec54.6deg_...`` in a fringe-stopping table name.
_FS_DEC = re.compile(r"dec\s*([+-]?\d+(?:\.\d+)?)\s*deg", re.IGNORECASE)

#: Largest allowed difference between the header Dec and the ``fs_table`` Dec, deg.
FS_TABLE_TOLERANCE_DEG = 0.5


@dataclass(frozen=True)
class Pointing:
    """Where a group points and when it was taken.

    Attributes
    ----------
    dec : astropy.coordinates.Angle
        Pointing declination.
    times : astropy.time.Time
        Distinct integration mid-times, ascending (UTC).
    integration_time : astropy.units.Quantity
        Integration length (s).
    epoch : str
        ``"apparent"`` or ``"J2000"``: frame of ``dec``.
    path : pathlib.Path or None
        File it was read from.
    """

    dec: Angle
    times: Time
    integration_time: u.Quantity
    epoch: str = "apparent"
    path: Path | None = None

    @property
    def start(self) -> Time:
        """Start of the first integration."""
        return self.times[0] - self.integration_time / 2

    @property
    def end(self) -> Time:
        """End of the last integration."""
        return self.times[-1] + self.integration_time / 2

    @property
    def mid(self) -> Time:
        """Middle of the time range."""
        return self.start + (self.end - self.start) / 2


def fs_table_declination(fs_table: str | bytes | None) -> float | None:
    """Declination in degrees named in a fringe-stopping table name, or None."""
    if fs_table is None:
        return None
    if isinstance(fs_table, bytes):
        fs_table = fs_table.decode(errors="replace")
    m = _FS_DEC.search(str(fs_table))
    return float(m.group(1)) if m else None


def validate_declination(value_rad, *, fs_table: str | None = None, source: str = "input",
                         tolerance_deg: float = FS_TABLE_TOLERANCE_DEG) -> Angle:
    """Check that a stored pointing declination is in radians and return it as an Angle.

    Parameters
    ----------
    value_rad : float
        The stored value, which must be radians.
    fs_table : str, optional
        Fringe-stopping table name; if it names a Dec (``dec54.6deg``) the value
        must agree with it within ``tolerance_deg``.
    source : str
        File or keyword named in error messages.
    tolerance_deg : float
        Allowed disagreement with ``fs_table``, degrees.

    Returns
    -------
    astropy.coordinates.Angle
        The declination.

    Raises
    ------
    InvalidInputError
        If the value is not finite, exceeds pi/2 in magnitude (so it cannot be
        radians, and is most likely degrees), or disagrees with ``fs_table``.
    """
    if isinstance(value_rad, u.Quantity):
        value_rad = value_rad.to_value(u.rad)
    try:
        value = float(value_rad)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{source}: pointing declination {value_rad!r} is not a number") from exc
    if not np.isfinite(value):
        raise InvalidInputError(f"{source}: pointing declination is {value}; the file has no usable pointing")
    fs_dec = fs_table_declination(fs_table)
    if abs(value) > np.pi / 2:
        hint = f" (fs_table says {fs_dec} deg)" if fs_dec is not None else ""
        raise InvalidInputError(
            f"{source}: pointing declination {value:g} is not radians: |dec| must be <= pi/2 "
            f"(1.5708); it looks like a value in DEGREES{hint}. The header must store radians "
            f"({value:g} deg = {np.radians(value):.6f} rad); fix the writer or the file, "
            f"do not guess."
        )
    if fs_dec is not None and abs(np.degrees(value) - fs_dec) > tolerance_deg:
        looks_deg = abs(value - fs_dec) <= tolerance_deg
        why = "the value looks like degrees stored as radians" if looks_deg else "the pointing is inconsistent"
        raise InvalidInputError(
            f"{source}: pointing declination {value:g} rad = {np.degrees(value):.4f} deg disagrees with "
            f"fs_table {fs_table!r} ({fs_dec} deg) by more than {tolerance_deg} deg; {why}. "
            f"Check the header before selecting calibrators."
        )
    return Angle(value * u.rad).to(u.deg)


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _load_uvh5(path: Path) -> Pointing:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(f"{path}: not a readable HDF5/UVH5 file ({exc})") from exc
    with fh:
        header = fh.get("Header")
        if header is None or "time_array" not in header:
            raise InvalidInputError(f"{path}: no Header/time_array; not a UVH5 file")
        extra = header.get("extra_keywords")
        if extra is None or "phase_center_dec" not in extra:
            raise InvalidInputError(
                f"{path}: Header/extra_keywords/phase_center_dec is missing; the pointing Dec "
                f"(radians) cannot be determined from this file"
            )
        dec_raw = extra["phase_center_dec"][()]
        fs_table = _text(extra["fs_table"][()]) if "fs_table" in extra else None
        epoch_text = _text(extra["phase_center_epoch"][()]) if "phase_center_epoch" in extra else "HADEC"
        jd = np.unique(np.asarray(header["time_array"][()], dtype=float))
        tint = np.asarray(header["integration_time"][()], dtype=float) if "integration_time" in header else None
    dec = validate_declination(np.asarray(dec_raw).item(), fs_table=fs_table, source=f"{path} phase_center_dec")
    if jd.size == 0 or not np.all(np.isfinite(jd)) or jd.min() < 2.4e6 or jd.max() > 2.6e6:
        raise InvalidInputError(f"{path}: Header/time_array does not hold Julian dates")
    if tint is not None and tint.size:
        tint_s = float(np.median(tint))
    elif jd.size > 1:
        tint_s = float(np.median(np.diff(jd)) * 86400.0)
    else:
        raise InvalidInputError(f"{path}: no integration_time and a single time; cannot derive the time range")
    epoch = "J2000" if epoch_text.strip().upper() in {"J2000", "ICRS"} else "apparent"
    return Pointing(dec=dec, times=Time(jd, format="jd", scale="utc"), integration_time=tint_s * u.s,
                    epoch=epoch, path=path)


def _load_ms(path: Path) -> Pointing:
    from casacore.tables import table

    try:
        with table(str(path / "FIELD"), ack=False) as field:
            phase_dir = np.asarray(field.getcol("PHASE_DIR"), dtype=float)
            ref = str(field.getcolkeyword("PHASE_DIR", "MEASINFO").get("Ref", "J2000"))
        with table(str(path), ack=False) as main:
            times = np.unique(np.asarray(main.getcol("TIME"), dtype=float))
            interval = np.asarray(main.getcol("INTERVAL", nrow=1000), dtype=float)
    except RuntimeError as exc:
        raise InvalidInputError(f"{path}: not a readable Measurement Set ({exc})") from exc
    decs = phase_dir.reshape(-1, 2)[:, 1]
    if decs.size == 0 or times.size == 0:
        raise InvalidInputError(f"{path}: the MS has no fields or no rows")
    if np.ptp(decs) > np.radians(0.1):
        log.warning("%s: field declinations span %.3f deg; using the median", path, np.degrees(np.ptp(decs)))
    dec = validate_declination(float(np.median(decs)), source=f"{path} FIELD PHASE_DIR")
    tint_s = float(np.median(interval)) if interval.size else float(np.median(np.diff(times)))
    epoch = "J2000" if ref.upper() in {"J2000", "ICRS"} else "apparent"
    return Pointing(dec=dec, times=Time(times / 86400.0, format="mjd", scale="utc"),
                    integration_time=tint_s * u.s, epoch=epoch, path=path)


def load_pointing(path) -> Pointing:
    """Pointing declination and time range of a UVH5 subband file or a Measurement Set.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.hdf5``/``.uvh5`` file, or an MS directory.

    Returns
    -------
    Pointing
        Declination (Angle), distinct integration times (Time), integration
        length, and the frame of the declination.

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable, or the declination is not a valid
        radians value (see :func:`validate_declination`).
    """
    p = Path(path)
    if p.is_dir():
        return _load_ms(p)
    if p.is_file():
        return _load_uvh5(p)
    raise InvalidInputError(f"{p}: no such UVH5 file or Measurement Set")
