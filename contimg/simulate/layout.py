"""UVData metadata of one simulated subband file (DOMAIN.md 1).

The header is the real instrument's: 117 antennas (``DSA-NNN``, numbers station-1,
ECEF positions relative to :data:`contimg.instrument.SITE`, 4.65 m dishes), two
linear polarisations XX/YY, ``integration_time`` 12.885 s, one spectral window of
descending channels, an unprojected (drift) phase centre and the DSA-110
``extra_keywords``. Baselines are ``ant1 <= ant2`` including autocorrelations, in
time-major order (all baselines of integration 0, then 1...).

uvw projection (the documented choice): integration k is fringe-stopped to the
apparent-frame position (RA = local apparent sidereal time, Dec = pointing Dec),
i.e. hour angle 0. With ECEF antenna positions (X, Y, Z) relative to the site and
the Greenwich hour angle of that centre ``H = LST - RA - lon = -lon`` (constant),
the per-antenna coordinates are (Thompson, Moran & Swenson eq. 4.1)::

    u =  sin H X + cos H Y
    v = -sin d cos H X + sin d sin H Y + cos d Z
    w =  cos d cos H X - cos d sin H Y + sin d Z

and a baseline's uvw is ``p[ant2] - p[ant1]``. This is exactly pyuvdata's
``calc_uvw(app_ra=lst, app_dec=dec, frame_pa=0)`` (a test compares them). Because
the phase centre is fixed to the Earth, uvw is the same at every integration.
"""

from __future__ import annotations

from functools import lru_cache

import astropy.units as u
import numpy as np
from astropy.time import Time
from pyuvdata import Telescope, UVData

from contimg import instrument
from contimg.jit_cache import cache_pyuvdata_kernels

#: Visibility units: corrupted by gains, so not calibrated Jy.
VIS_UNITS = "uncalib"

#: Bytes per chunk of the visibility dataset: real files use 2-4 MB chunks (DOMAIN.md).
VISDATA_CHUNK_BYTES = 3 << 20


def visibility_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """HDF5 chunk shape for the (Nblts, Nfreqs, Npols) datasets: whole rows, ~3 MB of visdata.

    pyuvdata's automatic chunking gives ~80 kB chunks of 2 channels x 1 pol,
    ~1500 per dataset, which a reader pays for; the real correlator writes
    2-4 MB chunks. flags and nsamples share the chunk shape (pyuvdata
    compresses them with lzf, as before).
    """
    n_blts, n_freqs, n_pols = shape
    rows = max(1, VISDATA_CHUNK_BYTES // (n_freqs * n_pols * 8))
    return (min(rows, n_blts), n_freqs, n_pols)


@lru_cache(maxsize=1)
def _telescope() -> Telescope:
    tab = instrument.antenna_table()
    n = len(tab)
    return Telescope.new(
        name=instrument.TELESCOPE_NAME_RAW,
        location=instrument.SITE,
        antenna_positions=tab.positions_relative_to(instrument.SITE),
        antenna_names=list(tab.names),
        antenna_numbers=np.asarray(tab.numbers, dtype=int),
        antenna_diameters=np.full(n, instrument.DISH_DIAMETER_M),
        instrument=instrument.TELESCOPE_NAME_RAW,
        mount_type=instrument.MOUNT,
        feed_array=np.array([["x", "y"]] * n),
        feed_angle=np.array([[np.pi / 2, 0.0]] * n),
    )


def telescope() -> Telescope:
    """A fresh pyuvdata ``Telescope`` for DSA-110 with all 117 antennas."""
    return _telescope().copy()


def antenna_projection_m(pointing_dec_rad: float, *, location=instrument.SITE) -> np.ndarray:
    """Per-antenna (u, v, w) toward the meridian at the pointing Dec, metres.

    Parameters
    ----------
    pointing_dec_rad : float
        Apparent declination of the phase centre, radians.
    location : astropy.coordinates.EarthLocation
        Array reference position (antenna positions are ECEF relative to it).

    Returns
    -------
    numpy.ndarray
        (117, 3) float64, rows in antenna-number order; baseline uvw is
        ``p[ant2] - p[ant1]``.
    """
    xyz = instrument.antenna_table().positions_relative_to(location)
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    h = -location.lon.to_value(u.rad)
    sd, cd = np.sin(pointing_dec_rad), np.cos(pointing_dec_rad)
    sh, ch = np.sin(h), np.cos(h)
    return np.stack(
        [
            sh * x + ch * y,
            -sd * ch * x + sd * sh * y + cd * z,
            cd * ch * x - cd * sh * y + sd * z,
        ],
        axis=1,
    )


def baseline_pairs(antennas) -> np.ndarray:
    """(Nbls, 2) antenna pairs ``ant1 <= ant2`` including autos, sorted."""
    ants = np.sort(np.asarray(antennas, dtype=int))
    i1, i2 = np.triu_indices(len(ants))
    return np.stack([ants[i1], ants[i2]], axis=1)


def integration_times_jd(start: Time, n_times: int) -> np.ndarray:
    """Mid times (JD, UTC) of ``n_times`` integrations starting at ``start``."""
    offsets = (np.arange(n_times) + 0.5) * instrument.INTEGRATION_TIME_S
    return (start + offsets * u.s).utc.jd


def apparent_lst_rad(times_jd, *, location=instrument.SITE) -> np.ndarray:
    """Local apparent sidereal time (astropy, IAU 2006A), radians, of JD times (UTC)."""
    t = Time(np.asarray(times_jd, dtype=float), format="jd", scale="utc")
    return t.sidereal_time("apparent", longitude=location.lon).to_value(u.rad)


def fs_table_name(pointing_dec_deg: float, n_times: int) -> str:
    """Name of the (fictional) fringe-stopping table, which names the Dec in degrees."""
    return f"fringestopping_table_dec{pointing_dec_deg:.1f}deg_{n_times}ints.npz"


def build_template(
    *,
    times_jd: np.ndarray,
    antennas,
    n_channels: int,
    pointing_dec_rad: float,
    applied_delays_ns: str,
    fs_table: str,
    history: str = "",
) -> UVData:
    """Metadata of one subband file (data arrays empty), for subband 0.

    Use :func:`set_subband` to retarget the frequency axis to another subband.

    Parameters
    ----------
    times_jd : numpy.ndarray
        Integration mid times, JD (UTC).
    antennas : sequence of int
        Antenna numbers with data (station - 1); the header always holds all 117.
    n_channels : int
        Channels per subband.
    pointing_dec_rad : float
        Pointing declination, radians (stored in ``extra_keywords``).
    applied_delays_ns, fs_table : str
        Values of the DSA-110 ``extra_keywords`` of the same names.
    history : str
        History text.

    Returns
    -------
    pyuvdata.UVData
        With ``uvw_array`` projected toward the meridian (module docstring) and
        ``lst_array`` the astropy apparent LST.
    """
    pairs = baseline_pairs(antennas)
    cache_pyuvdata_kernels()
    uvd = UVData.new(
        freq_array=instrument.subband_frequencies_hz(0, n_channels=n_channels),
        polarization_array=list(instrument.POLARIZATION_ARRAY),
        times=np.asarray(times_jd, dtype=float),
        telescope=telescope(),
        antpairs=pairs,
        do_blt_outer=True,
        time_axis_faster_than_bls=False,
        integration_time=instrument.INTEGRATION_TIME_S,
        channel_width=instrument.subband_channel_width_hz(n_channels=n_channels),
        vis_units=VIS_UNITS,
        history=history,
        empty=False,  # metadata only: the data arrays are filled per subband
    )
    # time-major order: all baselines of integration 0, then 1, ...
    n_bls, n_t = len(pairs), len(times_jd)
    assert np.array_equal(uvd.ant_1_array[:n_bls], pairs[:, 0]) and uvd.Ntimes == n_t
    proj = antenna_projection_m(pointing_dec_rad)
    uvw = proj[pairs[:, 1]] - proj[pairs[:, 0]]
    uvd.uvw_array = np.tile(uvw, (n_t, 1))
    uvd.lst_array = np.repeat(apparent_lst_rad(times_jd), n_bls)
    uvd.extra_keywords = {
        "phase_center_dec": float(pointing_dec_rad),
        "ha_phase_center": 0.0,
        "phase_center_epoch": "HADEC",
        "applied_delays_ns": applied_delays_ns,
        "fs_table": fs_table,
    }
    uvd.data_array = None
    uvd.flag_array = None
    uvd.nsample_array = None
    return uvd


def set_subband(uvd: UVData, subband: int, *, n_channels: int) -> None:
    """Point a template's frequency axis at ``subband`` (descending channels)."""
    uvd.freq_array = instrument.subband_frequencies_hz(subband, n_channels=n_channels)
    uvd.channel_width = np.full(n_channels, instrument.subband_channel_width_hz(n_channels=n_channels))
