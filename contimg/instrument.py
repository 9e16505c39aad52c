"""DSA-110 instrument facts, from ``shared/dsa110/DOMAIN.md`` (section numbers cited).

Everything the simulator and the converter must agree on lives here: the
frequency layout of the 16 subbands, the integration time, the antenna table and
its numbering, polarisations, and the site.

Antenna numbering (a decision, documented in docs/architecture.md): antenna
*number* = station − 1 (0..116, the order of the station table, DOMAIN.md 1.4);
antenna *name* = ``DSA-NNN`` with the station number. CASA refant selection
therefore always uses names (``refant="DSA-104"``), which are unambiguous, never
bare numbers, which CASA would read as MS row indices.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import astropy.units as u
import numpy as np
from astropy.coordinates import EarthLocation

# --- frequency (DOMAIN.md 1.2) ---------------------------------------------------
N_SUBBANDS = 16
CHANNELS_PER_SUBBAND = 48
CHANNEL_WIDTH_HZ = 244_140.625
"""Native channel width (187.5 MHz / 768)."""
FIRST_CHANNEL_HZ = 1_311_387_329.1015625
"""Centre of the lowest channel of the band (k = 0)."""
SUBBAND_WIDTH_HZ = CHANNELS_PER_SUBBAND * CHANNEL_WIDTH_HZ
BAND_LOW_EDGE_HZ = FIRST_CHANNEL_HZ - CHANNEL_WIDTH_HZ / 2  # 1311.265 MHz (DOMAIN.md rounds to 1311.25)

# --- time (DOMAIN.md 1.3) --------------------------------------------------------
INTEGRATION_TIME_S = 12.884902000427246
INTEGRATIONS_PER_FILE = 24

# --- polarisation (DOMAIN.md 1.4): AIPS codes XX=-5, YY=-6 -------------------------
POLARIZATION_ARRAY = (-5, -6)

# --- dish (DOMAIN.md 1.4, 9) ------------------------------------------------------
DISH_DIAMETER_M = 4.65
MOUNT = "alt-az"

# --- names (DOMAIN.md 1.7) -----------------------------------------------------------
TELESCOPE_NAME_RAW = "DSA-110"
TELESCOPE_NAME_MS = "DSA_110"

#: Site used for LST and phasing (``BK/utils/constants.py``, "authoritative").
SITE = EarthLocation.from_geodetic(
    lon=-118.2817 * u.deg, lat=37.2314 * u.deg, height=1222.0 * u.m
)


def subband_frequencies_hz(subband: int, *, n_channels: int = CHANNELS_PER_SUBBAND) -> np.ndarray:
    """Channel centres of one subband in the order the correlator writes them.

    sb00 is the top of the band and sb15 the bottom; within a file the channels
    descend (negative channel width). With ``n_channels`` < 48 the subband keeps
    its edges and the channels are wider (a scaled-down simulation).

    Parameters
    ----------
    subband : int
        Subband number 0..15.
    n_channels : int
        Channels in the subband (a divisor of 48 keeps channels aligned with the
        native grid).

    Returns
    -------
    numpy.ndarray
        Frequencies in Hz, descending.
    """
    if not 0 <= subband < N_SUBBANDS:
        raise ValueError(f"subband must be 0..15, got {subband}")
    low_edge = BAND_LOW_EDGE_HZ + (N_SUBBANDS - 1 - subband) * SUBBAND_WIDTH_HZ
    width = SUBBAND_WIDTH_HZ / n_channels
    ascending = low_edge + width * (np.arange(n_channels) + 0.5)
    return ascending[::-1].copy()


def subband_channel_width_hz(*, n_channels: int = CHANNELS_PER_SUBBAND) -> float:
    """Signed channel width as stored in the file (negative: descending)."""
    return -SUBBAND_WIDTH_HZ / n_channels


@dataclass(frozen=True)
class AntennaTable:
    """The station table (DOMAIN.md 1.8): 117 pads, absolute ITRF positions."""

    numbers: np.ndarray
    """Antenna numbers, station − 1 (int)."""
    names: tuple[str, ...]
    """``DSA-NNN`` with the station number."""
    stations: np.ndarray
    itrf_m: np.ndarray
    """(N, 3) absolute ITRF/ECEF positions in metres."""
    enu_m: np.ndarray
    """(N, 3) east/north/up in metres relative to the array tee centre."""
    groups: tuple[str, ...]
    """``core_EW``, ``core_NS`` or ``outrigger``."""

    def __len__(self) -> int:
        return len(self.numbers)

    def positions_relative_to(self, location: EarthLocation) -> np.ndarray:
        """ECEF positions relative to ``location`` in metres (pyuvdata's antenna_positions)."""
        origin = np.array([location.x.to_value(u.m), location.y.to_value(u.m), location.z.to_value(u.m)])
        return self.itrf_m - origin


@lru_cache(maxsize=1)
def antenna_table() -> AntennaTable:
    """Load the shipped station table (a copy of ``shared/dsa110/antpos.csv``)."""
    text = resources.files("contimg.data").joinpath("dsa110_antpos.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    stations = np.array([int(r["station"]) for r in rows])
    return AntennaTable(
        numbers=stations - 1,
        names=tuple(r["name"] for r in rows),
        stations=stations,
        itrf_m=np.array([[float(r[k]) for k in ("itrf_x_m", "itrf_y_m", "itrf_z_m")] for r in rows]),
        enu_m=np.array([[float(r[k]) for k in ("east_m", "north_m", "up_m")] for r in rows]),
        groups=tuple(r["group"] for r in rows),
    )


def antenna_name(number: int) -> str:
    """``DSA-NNN`` for an antenna number (station − 1)."""
    return f"DSA-{number + 1:03d}"
