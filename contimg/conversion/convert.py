"""Convert one group: scratch first, validate, then move into place.

A killed conversion leaves at most a scratch directory (removed by the next
attempt) and never a half-written MS where products live: the MS reaches the
products directory by a rename of a complete, validated directory.

A conversion holds the group's lease (:mod:`contimg.lease`) from before it
looks at the scratch directory until the MS is in place: a leftover scratch
directory is only ever removed by the lease holder, so a second run never
deletes the work of a live one.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from contimg import instrument, lease as leases, naming
from contimg.config import Settings
from contimg.conversion.subband import group_phase_centre
from contimg.sky.pointing import load_pointing
from contimg.conversion.validate import ExpectedShape, validate_ms
from contimg.conversion.subband_scratch import ScratchJob, SupportsResult
from contimg.conversion.writers import get_writer
from contimg.errors import IncompleteGroupError, InvalidInputError

log = logging.getLogger(__name__)

#: Reference antennas for the smoke solve, best first: outriggers (DOMAIN.md 5.1).
REFANT_PREFERENCE = tuple(range(103, 117)) + (102, 116) + tuple(range(0, 102))


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion produced, ready to be recorded in ``ms_index``."""

    group_id: str
    ms_path: Path
    writer: str
    subbands_present: list[int]
    subbands_missing: list[int]
    start_mjd: float
    mid_mjd: float
    end_mjd: float
    pointing_ra_deg: float
    pointing_dec_deg: float
    seconds: float
    validation: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _GroupHeader:
    dec_rad: float
    times_jd: np.ndarray
    n_channels: int
    n_blts: int
    antennas_with_data: np.ndarray


def _read_header(files: Mapping[int, Path]) -> _GroupHeader:
    # load_pointing rejects a declination stored in degrees (|dec| > pi/2 or
    # disagreeing with the fs_table name): the pipeline never guesses the unit.
    decs = {sb: float(load_pointing(path).dec.rad) for sb, path in files.items()}
    ref_sb = min(decs)
    if any(abs(d - decs[ref_sb]) > 1e-6 for d in decs.values()):
        detail = ", ".join(f"sb{sb:02d}={np.degrees(d):.4f} deg" for sb, d in sorted(decs.items()))
        raise InvalidInputError(f"subbands disagree on the pointing declination: {detail}")
    path = files[ref_sb]
    try:
        with h5py.File(path, "r") as h:
            times = np.asarray(h["Header/time_array"][()])
            n_channels = int(h["Header/Nfreqs"][()])
            ants = np.union1d(h["Header/ant_1_array"][()], h["Header/ant_2_array"][()])
    except (OSError, KeyError) as exc:
        raise InvalidInputError(f"{path}: unreadable header: {exc}") from exc
    return _GroupHeader(decs[ref_sb], times, n_channels, len(times), ants)


def choose_refant(antennas_with_data: np.ndarray) -> str:
    """The preferred reference antenna (by name) among those that have data."""
    present = set(int(a) for a in antennas_with_data)
    for number in REFANT_PREFERENCE:
        if number in present:
            return instrument.antenna_name(number)
    raise InvalidInputError("no antenna has data")


def _move_into_place(source: Path, destination: Path) -> None:
    """Move a finished MS directory to ``destination`` atomically (rename last).

    Across filesystems the MS is copied first, keeping its sparse files sparse
    (MODEL_DATA/CORRECTED_DATA are holes until calibration: 4 GB per full group
    that a plain copy would write out as zeros).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial-{uuid.uuid4().hex[:8]}")
    if os.stat(source).st_dev == os.stat(destination.parent).st_dev:
        os.rename(source, partial)
    else:
        subprocess.run(["cp", "-R", "--sparse=always", str(source), str(partial)], check=True,
                       capture_output=True)
        shutil.rmtree(source)
    os.rename(partial, destination)


def convert_group(
    group_id: str,
    files: Mapping[int, Path],
    *,
    products_dir: Path,
    scratch_dir: Path,
    writer: str = "direct-subband",
    expected_subbands: int = 16,
    allow_incomplete: bool = False,
    field_per_integration: bool = False,
    workers: int = 2,
    validate: bool = True,
    ms_path: Path | None = None,
    lease: leases.Lease | None = None,
    lease_seconds: float = Settings.lease_seconds,
    submit_subband: Callable[[ScratchJob], SupportsResult] | None = None,
) -> ConversionResult:
    """Convert one group of subband files into a validated MS.

    Parameters
    ----------
    group_id : str
        The group's id (``YYYY-MM-DDTHH:MM:SS``).
    files : mapping of int to path
        Subband number -> file.
    products_dir, scratch_dir : path
        Where the MS ends up, and where it is written first.
    writer : str
        ``direct-subband`` (default) or ``pyuvdata``.
    expected_subbands : int
        Subbands in a complete group.
    allow_incomplete : bool
        Convert even with subbands missing; they are written fully flagged.
    field_per_integration : bool
        Keep one field per integration instead of phasing to the group midpoint.
    workers : int
        Worker threads converting subbands in parallel (``direct-subband`` only).
    validate : bool
        Run the CASA validation gate (always on in the pipeline).
    ms_path : path, optional
        Output path (default ``naming.ms_path``).
    lease : Lease, optional
        The group's lease (``naming.group_lease_path``), held by the caller.
        Without one, the conversion takes it itself for its duration
        (``lease_seconds``, heartbeat a third of it).
    submit_subband : callable, optional
        Convert each subband elsewhere (a Dask worker) through scratch files in
        the group's scratch directory (``direct-subband`` only; see
        :func:`.writers.write_direct_subband`). Default: worker threads here.

    Raises
    ------
    IncompleteGroupError
        Subbands are missing and ``allow_incomplete`` is false.
    InvalidInputError
        Unreadable or inconsistent input, or a failed validation gate. The input
        files are never modified.
    FileExistsError
        The output MS already exists.
    contimg.lease.LeaseHeldError
        Another run holds the group's lease (nothing was touched).
    contimg.lease.LeaseLostError
        The lease was lost (expired, taken over) before the MS was moved into place.
    """
    started = time.perf_counter()
    # CASA children run in their log directory: relative paths would point elsewhere there.
    products_dir, scratch_dir = Path(products_dir).resolve(), Path(scratch_dir).resolve()
    files = {sb: Path(path).resolve() for sb, path in files.items()}
    missing = [sb for sb in range(expected_subbands) if sb not in files]
    if missing and not allow_incomplete:
        raise IncompleteGroupError(group_id, missing)
    if not files:
        raise InvalidInputError(f"group {group_id}: no subband files")
    final = Path(ms_path).resolve() if ms_path else naming.ms_path(products_dir, group_id)
    if final.exists():
        raise FileExistsError(f"{final} already exists; remove it to convert {group_id} again")
    scatter = {} if submit_subband is None else {"submit_subband": submit_subband}
    if scatter and writer != "direct-subband":
        raise ValueError(f"subbands are converted elsewhere only by the direct-subband writer, not {writer!r}")

    header = _read_header(files)
    centre = None if field_per_integration else group_phase_centre(header.times_jd, header.dec_rad)
    held = nullcontext(lease) if lease is not None else leases.hold(
        naming.group_lease_path(scratch_dir, group_id), lease_seconds)
    with held as lease:
        return _convert_holding(lease, group_id, files, missing, header, centre, final, products_dir, scratch_dir,
                                writer, expected_subbands, allow_incomplete, workers, validate, started, scatter)


def _remove_own_scratch(lease: leases.Lease, workdir: Path) -> None:
    """Remove this failed attempt's scratch directory, if the group is still ours."""
    try:
        lease.ensure_held()
    except leases.LeaseLostError:
        return
    shutil.rmtree(workdir, ignore_errors=True)


def _convert_holding(lease, group_id, files, missing, header, centre, final, products_dir, scratch_dir, writer,
                     expected_subbands, allow_incomplete, workers, validate, started, scatter) -> ConversionResult:
    workdir = naming.convert_workdir(scratch_dir, group_id)
    if workdir.exists():
        lease.ensure_held()  # a leftover of a dead run only: a live one holds the lease
        log.warning("removing leftover scratch directory of an earlier attempt: %s", workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    try:
        scratch_ms = workdir / final.name

        inputs: dict[int, Path | None] = {sb: files.get(sb) for sb in range(expected_subbands)}
        if not allow_incomplete:
            inputs = dict(files)
        log.info("converting %s (%d subbands, writer %s) in %s", group_id, len(files), writer, workdir)
        get_writer(writer)(
            inputs, scratch_ms, dec_rad=header.dec_rad, phase_centre=centre,
            n_subbands=expected_subbands, workers=workers, **scatter,
        )

        info: dict = {}
        if validate:
            expected = ExpectedShape(
                n_spw=len(inputs),
                n_chan_per_spw=header.n_channels,
                n_antennas=len(instrument.antenna_table()),
                n_rows=len(inputs) * header.n_blts,
            )
            info = validate_ms(
                scratch_ms, expected, refant=choose_refant(header.antennas_with_data),
                log_path=naming.casa_log_path(products_dir, group_id, "validate"), workdir=workdir,
            )
        lease.ensure_held()
        if final.exists():
            raise FileExistsError(f"{final} appeared while {group_id} was being converted")
        _move_into_place(scratch_ms, final)
        shutil.rmtree(workdir, ignore_errors=True)
    except BaseException as exc:
        if not isinstance(exc, leases.LeaseLostError):  # then the directory may be the new holder's
            _remove_own_scratch(lease, workdir)
        raise

    unique = np.unique(header.times_jd)
    half_int = instrument.INTEGRATION_TIME_S / 86400.0 / 2
    ra_deg = np.degrees(centre.ra_rad) if centre else float("nan")
    return ConversionResult(
        group_id=group_id,
        ms_path=final,
        writer=writer,
        subbands_present=sorted(files),
        subbands_missing=missing,
        start_mjd=float(unique[0] - half_int - 2400000.5),
        mid_mjd=float(0.5 * (unique[0] + unique[-1]) - 2400000.5),
        end_mjd=float(unique[-1] + half_int - 2400000.5),
        pointing_ra_deg=float(ra_deg),
        pointing_dec_deg=float(np.degrees(header.dec_rad)),
        seconds=time.perf_counter() - started,
        validation=info,
    )
