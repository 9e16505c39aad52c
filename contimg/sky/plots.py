"""24-hour altitude and primary-beam-response tracks of calibrator candidates (PNG).

Top panel: altitude of each candidate over the UTC day with its transit marked.
Bottom panel: primary-beam power response (log scale) of the fixed meridian
pointing, with the half-power level; a source is useful only near the peak.
Drawn with the matplotlib Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.time import TimeDelta

from contimg.instrument import SITE
from contimg.sky.beam import SELECTION_FREQ_HZ, airy_power
from contimg.sky.catalog import Calibrator
from contimg.sky.transit import apparent_radec, offset_from_meridian_pointing, transit_time
from contimg.sky.units import as_angle, day_start


def plot_altitude_tracks(calibrators, dec, date, out_path, *, freq=SELECTION_FREQ_HZ * u.Hz, step_s: float = 60.0,
                         pointing_epoch: str = "apparent", location=SITE) -> Path:
    """Write a two-panel 24-hour altitude / beam-response plot.

    Parameters
    ----------
    calibrators : list of Calibrator or CalibratorScore
        Sources to draw.
    dec : astropy.units.Quantity
        Pointing declination.
    date : astropy.time.Time, str or datetime.date
        UTC day shown.
    out_path : str or pathlib.Path
        PNG file to write.
    freq : astropy.units.Quantity
        Beam frequency (default 1.4 GHz).
    step_s : float
        Sampling interval, seconds.
    pointing_epoch : {"apparent", "J2000"}
        Frame of ``dec``.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cals = [getattr(c, "calibrator", c) for c in calibrators]
    if not all(isinstance(c, Calibrator) for c in cals):
        raise TypeError("calibrators must be Calibrator or CalibratorScore objects")
    d0 = as_angle(dec, "dec").to_value(u.rad)
    t0 = day_start(date)
    hours = np.arange(0.0, 86400.0 + step_s, step_s) / 3600.0
    times = t0 + TimeDelta(hours * 3600.0, format="sec")
    last = times.sidereal_time("apparent", longitude=location.lon).to_value(u.rad)
    lat = location.lat.to_value(u.rad)
    freq_hz = u.Quantity(freq).to_value(u.Hz)

    fig, (ax_alt, ax_pb) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for cal in cals:
        coord = cal.coord
        # apparent place at mid-day: it moves by < 0.1 arcsec over one day
        ra_app, dec_app = apparent_radec(coord, t0 + TimeDelta(43200.0, format="sec"), location=location)
        ha = last - ra_app
        alt = np.degrees(np.arcsin(np.sin(lat) * np.sin(dec_app) + np.cos(lat) * np.cos(dec_app) * np.cos(ha)))
        src_dec = dec_app if pointing_epoch == "apparent" else coord.dec.to_value(u.rad)
        pb = airy_power(offset_from_meridian_pointing(ha, src_dec, d0), freq_hz)
        (line,) = ax_alt.plot(hours, alt, label=f"{cal.name} ({cal.flux_jy:.1f} Jy)")
        t_tr = transit_time(coord, t0, location=location)
        h_tr = (t_tr - t0).sec / 3600.0
        ax_alt.axvline(h_tr, color=line.get_color(), ls=":", lw=0.8)
        ax_pb.semilogy(hours, np.clip(pb, 1e-4, None), color=line.get_color())
    ax_alt.axhline(0.0, color="k", lw=0.5)
    ax_alt.set_ylabel("altitude (deg)")
    ax_alt.set_ylim(-90, 90)
    ax_alt.legend(fontsize="small", loc="lower right")
    ax_alt.set_title(f"DSA-110 drift scan, pointing Dec {np.degrees(d0):.2f} deg, {t0.isot[:10]} UTC")
    ax_pb.axhline(0.5, color="k", ls="--", lw=0.8, label="half power")
    ax_pb.set_ylim(1e-4, 1.5)
    ax_pb.set_ylabel(f"primary beam response ({freq_hz / 1e9:.2f} GHz)")
    ax_pb.set_xlabel("UTC (hours)")
    ax_pb.set_xlim(0, 24)
    ax_pb.legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
