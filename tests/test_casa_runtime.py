"""The offline CASA runtime and the child-process runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from contimg.casa import run_casa_task, run_in_casa
from contimg.errors import CasaError, InvalidInputError


def _azel_casa(ra_deg: float, dec_deg: float, mjd_utc: float) -> tuple[float, float]:
    import casatools

    me = casatools.measures()
    qa = casatools.quanta()
    me.doframe(me.observatory("DSA_110"))
    me.doframe(me.epoch("UTC", qa.quantity(mjd_utc, "d")))
    direction = me.direction("J2000", qa.quantity(ra_deg, "deg"), qa.quantity(dec_deg, "deg"))
    # AZELGEO is the geodetic frame astropy's AltAz uses (plain AZEL is geocentric).
    azel = me.measure(direction, "AZELGEO")
    me.done()
    return float(np.degrees(azel["m0"]["value"])), float(np.degrees(azel["m1"]["value"]))


def _raise_invalid(path):
    raise InvalidInputError(f"{path}: bad")


def _crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_j2000_to_azel_at_dsa110_matches_astropy(tmp_path):
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time

    when = Time("2026-11-25T13:00:00", scale="utc")
    ra, dec = 128.7287, 55.5725  # J0834+5534
    az, el = run_in_casa(_azel_casa, ra, dec, when.mjd, log_path=tmp_path / "azel.log")
    site = EarthLocation.of_site("DSA-110")
    frame = AltAz(obstime=when, location=site, pressure=0 * u.hPa)
    ref = SkyCoord(ra * u.deg, dec * u.deg, frame="fk5", equinox="J2000").transform_to(frame)
    d_az = (az - ref.az.deg + 180) % 360 - 180
    sep_arcsec = np.hypot(d_az * np.cos(np.radians(el)), el - ref.alt.deg) * 3600
    assert sep_arcsec < 1.0, f"CASA vs astropy AZEL differ by {sep_arcsec:.3f} arcsec"
    assert (tmp_path / "azel.log").exists()


def test_casa_task_error_carries_log_path_and_tail(tmp_path):
    log = tmp_path / "logs" / "gaincal.casa.log"
    with pytest.raises(CasaError) as info:
        run_casa_task("gaincal", vis=str(tmp_path / "missing.ms"), caltable=str(tmp_path / "x.G"), log_path=log)
    err = info.value
    assert err.log_path == log.resolve() and log.exists()
    assert not err.crashed
    assert "missing.ms" in str(err) or "missing.ms" in err.log_tail


def test_crashed_child_raises_crashed_casa_error(tmp_path):
    with pytest.raises(CasaError) as info:
        run_in_casa(_crash, log_path=tmp_path / "crash.log")
    assert info.value.crashed and "crashed" in str(info.value)


def test_pipeline_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(InvalidInputError, match="bad"):
        run_in_casa(_raise_invalid, "/some/file", log_path=tmp_path / "x.log")


def test_casa_writes_nothing_into_home_or_cwd(tmp_path):
    run_in_casa(_azel_casa, 0.0, 54.6, 61000.0, log_path=tmp_path / "a.log")
    assert not list(Path.cwd().glob("casa-*.log"))
    assert not (Path.home() / ".casa" / "data").exists()


def test_casa_earth_orientation_tables_cover_today():
    """CASA's IERS predictions were extended from astropy-iers-data at install time."""
    from astropy.time import Time
    from casacore.tables import table

    from contimg.runtime import runtime_dir

    with table(str(runtime_dir() / "casadata" / "geodetic" / "IERSpredict"), ack=False) as tab:
        last_mjd = tab.getcol("MJD")[-1]
    assert last_mjd > Time.now().mjd + 30
