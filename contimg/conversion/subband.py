"""Read one DSA-110 subband file and put it in the pipeline's conventions.

The correlator writes each integration fringe-stopped to the meridian at the
pointing declination (DOMAIN.md 1.6) but labels the file ``drift``. We attach the
truth instead: one sidereal phase centre per integration at (HA = 0, Dec =
pointing) converted to ICRS at that integration's time (``meridian_icrs_t<i>``),
recompute UVW from the station table, and then, by default, let pyuvdata rephase
every integration to one common centre: the meridian at the group's mid time.

Both MS writers call :func:`prepare_subband`, so they cannot disagree on
conventions: channels ascending, telescope ``DSA_110`` at the DOMAIN site, 117
antennas numbered station − 1 and named ``DSA-NNN``, 4.65 m alt-az dishes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import HADec, SkyCoord
from astropy.time import Time
from pyuvdata import UVData

from contimg import instrument
from contimg.earth_orientation import use_cached_table
from contimg.errors import InvalidInputError
from contimg.jit_cache import cache_pyuvdata_kernels

log = logging.getLogger(__name__)

#: pyuvdata checks that real DSA-110 files fail (float32 uvw, drift label).
_RELAXED = dict(run_check=False, check_extra=False, run_check_acceptability=False, strict_uvw_antpos_check=False)


@dataclass(frozen=True)
class PhaseCentre:
    """Where a converted group is phased.

    Attributes
    ----------
    ra_rad, dec_rad : float
        ICRS position, radians.
    name : str
        FIELD name.
    """

    ra_rad: float
    dec_rad: float
    name: str


def meridian_icrs(times_jd: np.ndarray, dec_rad: float) -> SkyCoord:
    """ICRS positions of (HA = 0, Dec = ``dec_rad``) at each time, at the DSA-110 site."""
    use_cached_table()
    obstime = Time(np.atleast_1d(times_jd), format="jd", scale="utc")
    frame = HADec(obstime=obstime, location=instrument.SITE)
    hadec = SkyCoord(
        ha=np.zeros(len(obstime)) * u.rad, dec=np.full(len(obstime), dec_rad) * u.rad, frame=frame
    )
    return hadec.transform_to("icrs")


def group_phase_centre(times_jd: np.ndarray, dec_rad: float) -> PhaseCentre:
    """The meridian at the mid time of a group: its single field by default."""
    unique = np.unique(times_jd)
    mid = 0.5 * (unique[0] + unique[-1])
    icrs = meridian_icrs(np.array([mid]), dec_rad)[0]
    return PhaseCentre(float(icrs.ra.rad), float(icrs.dec.rad), "meridian_icrs_mid")


def read_subband(path: str | Path, *, read_data: bool = True) -> UVData:
    """Read one subband file with the relaxed checks real files need.

    Raises
    ------
    InvalidInputError
        The file is unreadable (truncated, not HDF5, missing datasets).
    """
    path = Path(path)
    cache_pyuvdata_kernels()
    try:
        uv = UVData.from_file(str(path), file_type="uvh5", read_data=read_data, **_RELAXED)
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as a DSA-110 UVH5 subband: {exc}") from exc
    return uv


def _apply_instrument_metadata(uv: UVData) -> None:
    """Stamp the telescope and antenna facts the MS must carry."""
    table = instrument.antenna_table()
    tel = uv.telescope
    tel.name = instrument.TELESCOPE_NAME_MS
    tel.location = instrument.SITE
    if tel.Nants != len(table):
        raise InvalidInputError(
            f"file lists {tel.Nants} antennas in its header; the station table has {len(table)}"
        )
    order = np.argsort(tel.antenna_numbers)
    if not np.array_equal(tel.antenna_numbers[order], table.numbers):
        raise InvalidInputError("antenna numbers in the header are not 0..116 (station - 1)")
    tel.antenna_numbers = table.numbers.copy()
    tel.antenna_names = list(table.names)
    tel.antenna_positions = table.positions_relative_to(instrument.SITE)
    tel.antenna_diameters = np.full(len(table), instrument.DISH_DIAMETER_M)
    tel.mount_type = [instrument.MOUNT] * len(table)
    uv.uvw_array = np.asarray(uv.uvw_array, dtype=np.float64)


def _attach_meridian_centres(uv: UVData, dec_rad: float) -> None:
    """One sidereal phase centre per integration at the meridian (no data rotation)."""
    times, inverse = np.unique(uv.time_array, return_inverse=True)
    icrs = meridian_icrs(times, dec_rad)
    uv.phase_center_catalog = {}
    ids = np.empty(len(times), dtype=int)
    for i in range(len(times)):
        ids[i] = uv._add_phase_center(
            f"meridian_icrs_t{i}",
            cat_type="sidereal",
            cat_lon=float(icrs.ra.rad[i]),
            cat_lat=float(icrs.dec.rad[i]),
            cat_frame="icrs",
            cat_epoch=2000.0,
        )
    uv.phase_center_id_array = ids[inverse]
    uv._set_app_coords_helper()
    # The file's uvw are float32 and their phasing epoch is uncertain; recompute
    # them for these centres from the station table without touching the data.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recalculating uvw_array without adjusting")
        uv.set_uvws_from_antenna_positions(update_vis=False)


def _rephase(uv: UVData, phase_centre: PhaseCentre) -> None:
    """pyuvdata rephasing to the common centre (data too, unless metadata only)."""
    uv.phase(
        lon=phase_centre.ra_rad,
        lat=phase_centre.dec_rad,
        cat_name=phase_centre.name,
        phase_frame="icrs",
        epoch="J2000",
        cat_type="sidereal",
    )
    uv._clear_unused_phase_centers()


def canonical_blt_order(uv: UVData) -> tuple[np.ndarray, np.ndarray]:
    """Put rows in the MS order, in place: ant1 <= ant2, sorted by (time, ant1, ant2).

    Real files' row order is undocumented (DOMAIN.md 1.4), so it is never relied on.

    Returns
    -------
    conjugated : numpy.ndarray of bool
        Rows (in the original order) whose baseline was conjugated.
    order : numpy.ndarray of int
        The permutation applied after conjugation: ``new = old[order]``.
    """
    conjugated = uv.ant_1_array > uv.ant_2_array
    if conjugated.any():
        uv.conjugate_bls("ant1<ant2")
    order = np.lexsort((uv.ant_2_array, uv.ant_1_array, uv.time_array))
    uv.reorder_blts(order=order, run_check=False)
    return conjugated, order


def prepare_subband(
    uv: UVData,
    *,
    dec_rad: float,
    phase_centre: PhaseCentre | None,
    spw_id: int,
) -> UVData:
    """Bring a freshly read subband into the pipeline's conventions, in place.

    This is the reference path (the ``pyuvdata`` writer); the direct writer
    applies the same operations to the arrays with a :class:`GroupGeometry`.

    Parameters
    ----------
    uv : UVData
        A subband as read by :func:`read_subband`.
    dec_rad : float
        Pointing declination shared by the group, radians.
    phase_centre : PhaseCentre or None
        Rephase every integration to this centre; ``None`` keeps one field per
        integration (``meridian_icrs_t<i>``).
    spw_id : int
        Spectral-window id of this subband in the combined MS (0 = lowest band).

    Returns
    -------
    UVData
        The same object, channels ascending.
    """
    _place_rows(uv, dec_rad=dec_rad, phase_centre=phase_centre)
    uv.reorder_freqs(channel_order="freq", run_check=False)
    # pyuvdata keeps the file's negative width after sorting; ascending channels
    # have positive CHAN_WIDTH in an MS.
    uv.channel_width = np.abs(uv.channel_width)
    uv.spw_array = np.array([spw_id])
    uv.flex_spw_id_array = np.full(uv.Nfreqs, spw_id)
    return uv


def _place_rows(uv: UVData, *, dec_rad: float,
                phase_centre: PhaseCentre | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frequency-independent steps of :func:`prepare_subband`, in place, shared with :func:`group_geometry`.

    Instrument metadata, meridian centres, rephasing to ``phase_centre``, and
    the MS row order. Returns ``w_new - w_old`` per raw row (metres), the raw
    rows conjugated, and the row permutation (see :func:`canonical_blt_order`).
    """
    _apply_instrument_metadata(uv)
    _attach_meridian_centres(uv, dec_rad)
    w_old = uv.uvw_array[:, 2].copy()
    if phase_centre is not None:
        _rephase(uv, phase_centre)
    delta_w = uv.uvw_array[:, 2] - w_old
    conjugated, order = canonical_blt_order(uv)
    return delta_w, conjugated, order


@dataclass
class GroupGeometry:
    """Everything about a group's rows that does not depend on frequency.

    All subbands of a group share times, baselines and phase centres, so the
    meridian centres, UVW, w-terms and row order are computed once, from one
    file's metadata, by exactly the pyuvdata calls :func:`prepare_subband` makes.

    Attributes
    ----------
    meta : UVData
        Metadata-only object in its final state (final UVW, phase centres, rows
        in MS order); frequency metadata is that of the file it was read from.
    raw_time, raw_ant1, raw_ant2 : numpy.ndarray
        Row axis as stored in the files (to check every subband against it).
    delta_w_m : numpy.ndarray
        ``w_new - w_old`` per raw row, metres (0 with no common phase centre).
    conjugated : numpy.ndarray of bool
        Raw rows conjugated to ant1 <= ant2.
    order : numpy.ndarray of int
        Row permutation applied after conjugation.
    """

    meta: UVData
    raw_time: np.ndarray
    raw_ant1: np.ndarray
    raw_ant2: np.ndarray
    delta_w_m: np.ndarray
    conjugated: np.ndarray
    order: np.ndarray


def group_geometry(path: str | Path, *, dec_rad: float, phase_centre: PhaseCentre | None) -> GroupGeometry:
    """Compute a group's :class:`GroupGeometry` from one subband file's metadata."""
    uv = read_subband(path, read_data=False)
    raw = (uv.time_array.copy(), uv.ant_1_array.copy(), uv.ant_2_array.copy())
    return GroupGeometry(uv, *raw, *_place_rows(uv, dec_rad=dec_rad, phase_centre=phase_centre))
