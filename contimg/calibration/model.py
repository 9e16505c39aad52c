"""The calibrator model: catalog sources times the primary beam, predicted on the MS geometry.

CASA ``ft`` of a component list multiplies by no beam, or by one beam for the
whole observation; a drift-scan source moves through the beam during a group
(the meridian moves 3.2' per integration), so its apparent flux changes with
time and, because the beam narrows with frequency, with channel. Left out of the
model, the gain solve absorbs the drift and the bandpass the beam's spectral
slope. The model here is, per row and channel,

    M(u, v, w, nu, t) = sum_s S_s(nu) PB(theta_s(t), nu) exp(+2 pi i nu/c (u l_s + v m_s + w (n_s - 1)))

* ``S_s(nu) = S_s(nu0) (nu / nu0)^alpha_s`` from the calibrator catalog;
* ``PB`` the Airy power pattern of a 4.65 m dish (:func:`contimg.sky.beam.airy_power`),
  ``theta_s(t)`` the distance of the source from the beam centre, which is the
  meridian (hour angle 0) at the apparent pointing declination;
* ``(l, m, n)`` relative to the FIELD's phase centre (ICRS) and ``(u, v, w)``
  the MS UVW, in CASA's sign convention (``exp(+2 pi i ...)`` of the MS UVW;
  the tests check it against ``ft`` for sources on and off the phase centre).

XX = YY = Stokes I (unpolarised sources); XY and YX, if present, are zero.
"""

from __future__ import annotations

import logging
import math
import time as _time
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numba
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.constants import c as _c
from astropy.time import Time

from contimg import instrument
from contimg.errors import InvalidInputError
from contimg.sky.beam import airy_power
from contimg.sky.source import Source
from contimg.sky.transit import apparent_radec, offset_from_meridian_pointing

log = logging.getLogger(__name__)

C_M_S = _c.to_value(u.m / u.s)
#: Rows predicted and written per chunk (~6 MB of MODEL_DATA at 48 channels x 2 pols).
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class MsGeometry:
    """What the model needs from an MS, read once.

    Attributes
    ----------
    times_s : numpy.ndarray
        Distinct integration mid times, MJD seconds (UTC).
    chan_freq_hz : numpy.ndarray
        (Nspw, Nchan) channel frequencies, Hz.
    phase_dirs_rad : numpy.ndarray
        (Nfield, 2) ICRS (RA, Dec) of each field's phase centre, radians.
    pointing_dec_app_rad : float
        Apparent declination of the beam centre (the meridian pointing), radians.
    n_corr : int
        Correlations per row (2: XX, YY).
    corr_types : tuple of int
        CASA Stokes codes of the correlations (9 XX, 10 XY, 11 YX, 12 YY).
    """

    times_s: np.ndarray
    chan_freq_hz: np.ndarray
    phase_dirs_rad: np.ndarray
    pointing_dec_app_rad: float
    n_corr: int
    corr_types: tuple[int, ...]


def read_geometry(ms) -> MsGeometry:
    """Read the time axis, frequencies, phase centres and pointing of an MS.

    The pointing declination is the apparent declination of the phase centre
    of the middle field at its own time: the converter phases to the meridian
    at the pointing declination (DOMAIN.md 1.6), so the two coincide.
    """
    from casacore.tables import table, taql

    path = str(Path(ms))
    if not Path(path, "table.dat").exists():
        raise InvalidInputError(f"{path}: not a Measurement Set (no table.dat); give the path of a converted group MS")
    with table(path, ack=False) as main:
        times = np.unique(taql("select distinct TIME from $main").getcol("TIME"))
    with table(f"{path}/SPECTRAL_WINDOW", ack=False) as spw:
        freqs = np.asarray(spw.getcol("CHAN_FREQ"), dtype=float)
    with table(f"{path}/FIELD", ack=False) as field:
        dirs = np.asarray(field.getcol("PHASE_DIR"), dtype=float).reshape(-1, 2)
        ref = str(field.getcolkeyword("PHASE_DIR", "MEASINFO").get("Ref", "J2000")).upper()
    if ref not in {"J2000", "ICRS"}:
        raise InvalidInputError(f"{path}: FIELD phase centres in {ref}; the model needs J2000/ICRS")
    with table(f"{path}/POLARIZATION", ack=False) as pol:
        corr = tuple(int(c) for c in pol.getcol("CORR_TYPE")[0])
    mid_field = dirs[len(dirs) // 2]
    centre = SkyCoord(mid_field[0] * u.rad, mid_field[1] * u.rad, frame="icrs")
    t_mid = Time(times[len(times) // 2] / 86400.0, format="mjd", scale="utc")
    _, dec_app = apparent_radec(centre, t_mid)
    return MsGeometry(times, freqs, dirs, float(dec_app), len(corr), corr)


def beam_offsets_rad(sources, geometry: MsGeometry) -> np.ndarray:
    """Distance of each source from the beam centre at each integration, radians, (Ntimes, Nsources)."""
    return beam_offsets_at([s.ra_deg for s in sources], [s.dec_deg for s in sources], geometry)


def beam_offsets_at(ra_deg, dec_deg, geometry: MsGeometry) -> np.ndarray:
    """Distance of ICRS positions (degrees) from the beam centre at each integration, radians, (Ntimes, Npos)."""
    ra_deg, dec_deg = np.atleast_1d(np.asarray(ra_deg, dtype=float)), np.atleast_1d(np.asarray(dec_deg, dtype=float))
    if ra_deg.size == 0:
        return np.zeros((len(geometry.times_s), 0))
    coords = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    times = Time(geometry.times_s / 86400.0, format="mjd", scale="utc")
    # apparent places at the mid time only: over a group they move < 0.1" (diurnal aberration), and one
    # transform instead of one per integration makes a beam on a 97 x 97 grid take 0.5 s, not 10 s
    ra_app, dec_app = apparent_radec(coords, times[len(times) // 2])
    last = times.sidereal_time("apparent", longitude=instrument.SITE.lon).to_value(u.rad)
    ha = last[:, None] - ra_app[None, :]
    dec_app = np.broadcast_to(dec_app[None, :], ha.shape)
    return offset_from_meridian_pointing(ha, dec_app, geometry.pointing_dec_app_rad)


def apparent_fluxes(sources, geometry: MsGeometry, *,
                    dish_diameter_m: float = instrument.DISH_DIAMETER_M) -> np.ndarray:
    """``S(nu) PB(theta(t), nu)``, Jy, shape (Ntimes, Nsources, Nspw, Nchan), float64."""
    offsets = beam_offsets_rad(sources, geometry)  # (Nt, Ns)
    freqs = geometry.chan_freq_hz  # (Nspw, Nchan)
    flux = np.stack([s.flux_at(freqs) for s in sources]) if sources else np.zeros((0,) + freqs.shape)
    pb = airy_power(offsets[:, :, None, None], freqs[None, None], dish_diameter_m=dish_diameter_m)
    return pb * flux[None]


def direction_cosines(sources, geometry: MsGeometry) -> np.ndarray:
    """(l, m, n - 1) of each source relative to each field's phase centre, shape (Nfield, Nsources, 3).

    Both in the apparent frame of the group's mid time (as the correlator and the
    simulator see the sky): differential aberration moves a source 2.5 deg from the
    phase centre by 0.4" relative to ICRS offsets, 8 deg of phase on a 2.5 km
    baseline, enough to leave a fifth of it behind when it is subtracted.
    """
    t_mid = Time(geometry.times_s[len(geometry.times_s) // 2] / 86400.0, format="mjd", scale="utc")
    src = SkyCoord([s.ra_deg for s in sources] * u.deg, [s.dec_deg for s in sources] * u.deg, frame="icrs")
    fld = SkyCoord(geometry.phase_dirs_rad[:, 0] * u.rad, geometry.phase_dirs_rad[:, 1] * u.rad, frame="icrs")
    ra, dec = (np.atleast_1d(v)[None, :] for v in apparent_radec(src, t_mid))
    a0, d0 = (np.atleast_1d(v)[:, None] for v in apparent_radec(fld, t_mid))
    da = ra - a0
    l = np.cos(dec) * np.sin(da)
    m = np.sin(dec) * np.cos(d0) - np.cos(dec) * np.sin(d0) * np.cos(da)
    n = np.sin(dec) * np.sin(d0) + np.cos(dec) * np.cos(d0) * np.cos(da)
    # the MS UVW axes point to ICRS north (pyuvdata's frame_pa): turn the apparent (l, m) by the
    # position angle of ICRS north at each phase centre (0.3 deg of precession since J2000)
    north = SkyCoord(fld.ra, fld.dec + 1 * u.arcmin, frame="icrs")
    an, dn = (np.atleast_1d(v)[:, None] for v in apparent_radec(north, t_mid))
    pa = np.arctan2(np.cos(dn) * np.sin(an - a0), np.sin(dn) * np.cos(d0) - np.cos(dn) * np.sin(d0) * np.cos(an - a0))
    c, s_ = np.cos(pa), np.sin(pa)
    l, m = l * c - m * s_, l * s_ + m * c
    return np.stack([l, m, n - 1.0], axis=-1)


@numba.njit(cache=True, nogil=True, parallel=True)
def predict_rows(uvw, spw, field, tidx, lmn, amp, freqs, pol_on, out):  # pragma: no cover - compiled
    # out[r, f, p] = sum_s amp[t, s, spw, f] exp(+2 pi i nu/c (uvw . lmn_s)); phasors by
    # recurrence along the (equally spaced) channels, exact at every channel 0 of a row.
    n_rows, n_chan, n_pol = out.shape
    n_src = lmn.shape[1]
    two_pi_over_c = 2.0 * np.pi / 299792458.0
    for r in numba.prange(n_rows):
        sw = spw[r]
        t = tidx[r]
        fl = field[r]
        for f in range(n_chan):
            for p in range(n_pol):
                out[r, f, p] = 0.0
        for s in range(n_src):
            path = uvw[r, 0] * lmn[fl, s, 0] + uvw[r, 1] * lmn[fl, s, 1] + uvw[r, 2] * lmn[fl, s, 2]
            phi0 = two_pi_over_c * freqs[sw, 0] * path
            ph = complex(math.cos(phi0), math.sin(phi0))
            if n_chan > 1:
                dphi = two_pi_over_c * (freqs[sw, 1] - freqs[sw, 0]) * path
                step = complex(math.cos(dphi), math.sin(dphi))
            else:
                step = 1.0 + 0.0j
            for f in range(n_chan):
                if f > 0 and f % 16 == 0:  # re-anchor: keeps the recurrence error < 1e-6
                    phi = two_pi_over_c * freqs[sw, f] * path
                    ph = complex(math.cos(phi), math.sin(phi))
                v = amp[t, s, sw, f] * ph
                for p in range(n_pol):
                    if pol_on[p]:
                        out[r, f, p] += v
                ph *= step


def predict_model(ms, sources, *, dish_diameter_m: float = instrument.DISH_DIAMETER_M,
                  column: str = "MODEL_DATA", chunk_rows: int = CHUNK_ROWS, out: np.ndarray | None = None,
                  on_chunk=None) -> dict:
    """Write the beam-weighted point-source model of ``sources`` into ``column`` of ``ms``.

    Parameters
    ----------
    ms : path-like
        The Measurement Set (its MODEL_DATA column must exist: the converter
        creates it).
    sources : sequence of Source
        Point sources with spectra.
    dish_diameter_m : float
        Dish diameter of the Airy beam, metres.
    column : str or None
        Column to write; None writes nothing (the model goes to ``out`` only: an MS
        without MODEL_DATA, such as the imaging MS, can still be predicted).
    chunk_rows : int
        Rows per chunk (memory: chunk_rows x channels x 16 bytes).
    out : numpy.ndarray, optional
        (rows, channels, correlations) complex64: receives the model as well, so a
        caller that uses it next need not read the column back.
    on_chunk : callable, optional
        Called as ``on_chunk(start_row, model)`` with each chunk's model, in row
        order, before the next chunk is predicted (the fast solver builds its sums
        from them: :class:`contimg.calibration.fastsolve.SumsBuilder`), so no
        column-sized model need be held.

    Returns
    -------
    dict
        ``sources`` (as dicts, with ``peak_apparent_jy``: the largest beam-weighted
        flux at 1.4 GHz over the group), ``seconds``, ``rows``.
    """
    from casacore.tables import table

    started = _time.perf_counter()
    sources = list(sources)
    if not sources:
        raise InvalidInputError(f"{ms}: no sources to predict; the model needs at least the calibrator")
    geometry = read_geometry(ms)
    amp = apparent_fluxes(sources, geometry, dish_diameter_m=dish_diameter_m)
    lmn = direction_cosines(sources, geometry)
    # XX (9) and YY (12), or RR/LL (5/8): Stokes I in each; cross-hands zero.
    pol_on = np.array([c in (5, 8, 9, 12) for c in geometry.corr_types], dtype=np.bool_)
    if column is None and out is None and on_chunk is None:
        raise ValueError("predict_model: column=None needs out= or on_chunk= to receive the model")
    with table(str(ms), ack=False, readonly=column is None) as main:
        if column is not None and column not in main.colnames():
            raise InvalidInputError(f"{ms}: no {column} column; convert the group with contimg (it creates it)")
        n_rows = main.nrows()
        with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
            ddid_to_spw = np.asarray(dd.getcol("SPECTRAL_WINDOW_ID"), dtype=np.int64)
        n_chan = geometry.chan_freq_hz.shape[1]
        if out is not None and (out.shape != (n_rows, n_chan, geometry.n_corr) or out.dtype != np.complex64):
            raise ValueError(f"out must be complex64 {(n_rows, n_chan, geometry.n_corr)}, got {out.dtype} {out.shape}")
        buf = np.empty((chunk_rows, n_chan, geometry.n_corr), dtype=np.complex64) if out is None else None
        for start in range(0, n_rows, chunk_rows):
            n = min(chunk_rows, n_rows - start)
            uvw = main.getcol("UVW", start, n)
            spw = ddid_to_spw[main.getcol("DATA_DESC_ID", start, n)]
            field = np.asarray(main.getcol("FIELD_ID", start, n), dtype=np.int64)
            tidx = np.searchsorted(geometry.times_s, main.getcol("TIME", start, n))
            rows = buf[:n] if out is None else out[start:start + n]
            predict_rows(uvw, spw, field, tidx.astype(np.int64), lmn, amp, geometry.chan_freq_hz, pol_on, rows)
            if column is not None:
                main.putcol(column, rows, start, n)
            if on_chunk is not None:
                on_chunk(start, rows)
    mid_1p4 = apparent_fluxes(sources, MsGeometry(geometry.times_s, np.array([[1.4e9]]), geometry.phase_dirs_rad,
                                                  geometry.pointing_dec_app_rad, geometry.n_corr, geometry.corr_types),
                              dish_diameter_m=dish_diameter_m)[:, :, 0, 0]
    described = [dict(s.to_dict(), peak_apparent_jy=float(mid_1p4[:, i].max())) for i, s in enumerate(sources)]
    return {"sources": described, "rows": n_rows, "seconds": _time.perf_counter() - started}


def sources_in_beam(calibrator, geometry_or_ms, *, catalog=None, min_apparent_flux_jy: float = 0.1,
                    dish_diameter_m: float = instrument.DISH_DIAMETER_M) -> list[Source]:
    """The calibrator first, then every other catalog source whose peak apparent flux
    (1.4 GHz, over the group) is at least ``min_apparent_flux_jy``, brightest first.

    Parameters
    ----------
    calibrator : Source or Calibrator or None
        None: only the catalog sources above the cut.
    geometry_or_ms : MsGeometry or path-like
    catalog : optional
        Calibrator catalog (default: the shipped one), as accepted by
        :func:`contimg.sky.catalog.resolve_catalog`.
    min_apparent_flux_jy : float
        Flux cut on ``S(1.4 GHz) x PB`` at the source's closest approach, Jy.
    """
    from contimg.sky.catalog import resolve_catalog

    cal = (None if calibrator is None else
           calibrator if isinstance(calibrator, Source) else Source.from_calibrator(calibrator))
    geometry = geometry_or_ms if isinstance(geometry_or_ms, MsGeometry) else read_geometry(geometry_or_ms)
    others = [Source.from_calibrator(c) for c in resolve_catalog(catalog)
              if cal is None or not _same_position(c, cal)]
    # cheap pre-cut: within 6 deg of the pointing declination (the beam's 5th null at 1.3 GHz is further,
    # but nothing there is above any useful cut)
    others = [s for s in others if abs(s.dec_deg - math.degrees(geometry.pointing_dec_app_rad)) < 6.0]
    if others:
        g1 = MsGeometry(geometry.times_s, np.array([[1.4e9]]), geometry.phase_dirs_rad,
                        geometry.pointing_dec_app_rad, geometry.n_corr, geometry.corr_types)
        peak = apparent_fluxes(others, g1, dish_diameter_m=dish_diameter_m)[:, :, 0, 0].max(axis=0)
        keep = np.argsort(-peak)
        others = [others[i] for i in keep if peak[i] >= min_apparent_flux_jy]
    return ([] if cal is None else [cal]) + others


def _same_position(cal, src: Source, tol_deg: float = 10 / 3600) -> bool:
    ddec = abs(cal.dec_deg - src.dec_deg)
    dra = abs((cal.ra_deg - src.ra_deg + 180) % 360 - 180) * math.cos(math.radians(src.dec_deg))
    return ddec < tol_deg and dra < tol_deg
