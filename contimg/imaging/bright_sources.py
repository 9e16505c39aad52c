"""Bright sources modelled through the drifting beam: fitted, subtracted before the final deconvolution,
restored afterwards.

DSA-110 drift-scans: during a 5-min group the sky moves ~1 deg through the 2.7 deg beam,
so a source's apparent flux changes with time (10 % or more at the centre, several times
near the edge) and, since the beam narrows with frequency, with channel. CLEAN models a
constant sky: what it cannot fit of a bright source is left on the snapshot PSF's row and
column, the array's arms. The outside-source subtraction (:mod:`.visibilities`) already
predicts sources through the beam at every integration and channel; this module does the
same for the bright sources inside the image:

1. :func:`fit_and_subtract`: for each bright source (brightest first, twice round), the
   unit-flux model ``T`` (:func:`contimg.calibration.model.predict_model`: the Airy beam at
   every integration and channel, apparent-frame position) and three derived terms,
   ``T ln(nu / nu0)`` (spectral index) and ``2 pi i (u, v) nu / c T`` (position), are
   fitted to the visibilities by weighted linear least squares; the source's flux,
   spectral index and position are updated and its model subtracted from DATA.
2. The imager deconvolves what is left (the fainter sky), with the same parameters.
3. :func:`restore`: each fitted source is added back to the image as the restoring beam
   times its drift-averaged apparent flux (its flux x the averaged primary beam at its
   position, which is what pbcor divides by), and to the model image as a point.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np

from contimg.calibration.model import C_M_S, predict_model
from contimg.sky.source import Source


def _read(ms):
    from casacore.tables import table

    with table(str(ms), ack=False) as main:
        data = main.getcol("DATA")
        flag = main.getcol("FLAG")
        w = (main.getcol("WEIGHT_SPECTRUM") if "WEIGHT_SPECTRUM" in main.colnames() else
             np.repeat(main.getcol("WEIGHT")[:, None, :], data.shape[1], axis=1))
        w = np.where(flag | (main.getcol("ANTENNA1") == main.getcol("ANTENNA2"))[:, None, None], 0.0, w)
        uvw = main.getcol("UVW")
    with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as sw:
        freqs = np.asarray(sw.getcol("CHAN_FREQ"), dtype=float)
    if freqs.shape[0] != 1:
        raise ValueError(f"{ms}: bright-source fitting works on the single-SPW imaging MS, not {freqs.shape[0]} SPWs")
    return data, w.astype(np.float32), uvw, freqs[0]


_CHUNKS = 64


@numba.njit(cache=True, nogil=True, parallel=True)
def _normal_equations(t, w, resid, u, v, k, lnf):  # pragma: no cover - compiled
    # the weighted normal equations of resid ~ sum_j p_j B_j with real p and the four terms
    # B = (T, T ln(nu/nu0), i k u T, i k v T), in one pass (numpy made a 32M-element temporary per product)
    n_rows, n_chan, n_pol = t.shape
    a_part = np.zeros((_CHUNKS, 4, 4))
    b_part = np.zeros((_CHUNKS, 4))
    step = (n_rows + _CHUNKS - 1) // _CHUNKS
    for ci in numba.prange(_CHUNKS):
        basis = np.empty(4, dtype=np.complex128)
        for r in range(ci * step, min(n_rows, (ci + 1) * step)):
            for c in range(n_chan):
                ku = k[c] * u[r]
                kv = k[c] * v[r]
                for p in range(n_pol):
                    ww = w[r, c, p]
                    if ww == 0.0:
                        continue
                    tt = complex(t[r, c, p])
                    basis[0] = tt
                    basis[1] = tt * lnf[c]
                    basis[2] = tt * complex(0.0, ku)
                    basis[3] = tt * complex(0.0, kv)
                    val = complex(resid[r, c, p])
                    for i in range(4):
                        bi = basis[i].conjugate()
                        b_part[ci, i] += ww * (bi * val).real
                        for j in range(i, 4):
                            a_part[ci, i, j] += ww * (bi * basis[j]).real
    a = a_part.sum(axis=0)
    for i in range(4):
        for j in range(i):
            a[i, j] = a[j, i]
    return a, b_part.sum(axis=0)


@numba.njit(cache=True, nogil=True, parallel=True)
def _model(t, u, v, k, lnf, params, out):  # pragma: no cover - compiled
    # out = T (s + s_alpha ln(nu/nu0) + i k (s_dl u + s_dm v)): the fitted model, to first order
    s, s_alpha, s_dl, s_dm = params[0], params[1], params[2], params[3]
    n_rows, n_chan, n_pol = t.shape
    for r in numba.prange(n_rows):
        for c in range(n_chan):
            factor = complex(s + s_alpha * lnf[c], k[c] * (s_dl * u[r] + s_dm * v[r]))
            for p in range(n_pol):
                out[r, c, p] = t[r, c, p] * factor


def _fit_one(residual, w, uvw, freqs, src: Source, ms) -> tuple[Source, np.ndarray, dict]:
    """Fit flux, spectral index and position of one source to ``residual + its current model``.

    ``residual`` must not contain the source's current model (the caller adds it back first).
    Returns the updated source, its model (rows, chan, pol) complex64 and the fit's figures.
    """
    unit = replace(src, flux_jy=1.0)
    t = np.empty(residual.shape, dtype=np.complex64)
    predict_model(ms, [unit], column=None, out=t)
    # position derivatives: d/dl exp(+2 pi i nu/c (u l + v m)) = 2 pi i nu/c u
    k = (2 * np.pi / C_M_S) * freqs  # (chan,)
    lnf = np.log(freqs / src.ref_freq_hz)
    u, v = np.ascontiguousarray(uvw[:, 0]), np.ascontiguousarray(uvw[:, 1])
    a, b = _normal_equations(t, w, residual, u, v, k, lnf)
    try:
        params = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return src, np.zeros_like(t), {"name": src.name, "fitted": False}
    s, s_alpha, s_dl, s_dm = (float(x) for x in params)
    if not s > 0:
        return src, np.zeros_like(t), {"name": src.name, "fitted": False}
    _model(t, u, v, k, lnf, params, t)  # the model in place of the unit template
    dl, dm = s_dl / s, s_dm / s
    cos_dec = math.cos(math.radians(src.dec_deg))
    new = replace(src, flux_jy=s, spectral_index=float(src.spectral_index + s_alpha / s),
                  ra_deg=float((src.ra_deg + math.degrees(dl) / cos_dec) % 360.0),
                  dec_deg=float(src.dec_deg + math.degrees(dm)))
    return new, t, {"name": src.name, "fitted": True, "flux_jy": s, "spectral_index": new.spectral_index,
                    "shift_arcsec": float(math.degrees(math.hypot(dl, dm)) * 3600)}


def fit_and_subtract(ms, sources, *, rounds: int = 2, subtract: bool = True) -> tuple[list[Source], dict]:
    """Fit the bright ``sources`` to the DATA of ``ms`` through the drifting beam and subtract them.

    Parameters
    ----------
    ms : path-like
        The single-SPW imaging MS (DATA is rewritten: the sources' models subtracted).
    sources : sequence of Source
        Starting values (intrinsic flux, spectral index, ICRS position), brightest first.
    rounds : int
        Passes over the sources (each refits every source with the others subtracted).
    subtract : bool
        Write DATA with the models subtracted; False only fits (a check of a model against the data).

    Returns
    -------
    (list of Source, dict)
        The fitted sources (those whose fit failed are dropped: nothing was subtracted for
        them) and the figures of the last round.
    """
    from casacore.tables import table

    sources = list(sources)
    if not sources:
        return [], {"sources": []}
    data, w, uvw, freqs = _read(ms)
    residual = data.copy()
    models: list[np.ndarray | None] = [None] * len(sources)
    figures: list[dict] = []
    for _ in range(rounds):
        figures = []
        for i, src in enumerate(sources):
            if models[i] is not None:
                residual += models[i]
            sources[i], models[i], fig = _fit_one(residual, w, uvw, freqs, src, ms)
            residual -= models[i]
            figures.append(fig)
    fitted = [s for s, f in zip(sources, figures) if f.get("fitted")]
    if subtract:
        with table(str(ms), ack=False, readonly=False) as main:
            main.putcol("DATA", residual.astype(np.complex64))
    return fitted, {"sources": figures}


def restore(image_fits, model_fits, sources, pb: np.ndarray, *, beam_arcsec: tuple[float, float, float],
            freq_hz: float) -> None:
    """Add the fitted sources back: restoring-beam Gaussians into ``image_fits``, points into ``model_fits``.

    Each at its drift-averaged apparent flux: intrinsic flux (at the image's frequency) times ``pb`` at its
    position, so that pbcor (image / pb) reads the fitted flux. ``beam_arcsec``: (major, minor FWHM, PA deg);
    ``freq_hz``: the image's frequency (the band centre), Hz.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    bmaj, bmin, bpa = beam_arcsec
    for path, as_point in ((image_fits, False), (model_fits, True)):
        with fits.open(path, mode="update") as hdul:
            header = hdul[0].header
            plane = hdul[0].data.reshape(hdul[0].data.shape[-2:])
            cel = WCS(header).celestial
            cell = abs(header["CDELT2"]) * 3600.0
            for src in sources:
                (x, y), = cel.all_world2pix([[src.ra_deg, src.dec_deg]], 0)
                ix, iy = int(round(x)), int(round(y))
                if not (0 <= ix < plane.shape[1] and 0 <= iy < plane.shape[0]):
                    continue
                apparent = float(src.flux_at(freq_hz) * pb[iy, ix])
                if as_point:
                    plane[iy, ix] += apparent
                    continue
                half = int(math.ceil(3 * bmaj / cell))
                y0, y1, x0, x1 = max(iy - half, 0), min(iy + half + 1, plane.shape[0]), max(ix - half, 0), \
                    min(ix + half + 1, plane.shape[1])
                yy, xx = np.mgrid[y0:y1, x0:x1]
                # offsets in arcsec, east and north (a standard RA axis runs east to the left: CDELT1 < 0)
                de = (xx - x) * header["CDELT1"] * 3600.0
                dn = (yy - y) * header["CDELT2"] * 3600.0
                theta = math.radians(bpa)
                a = de * math.sin(theta) + dn * math.cos(theta)  # along the major axis
                b = de * math.cos(theta) - dn * math.sin(theta)
                sa, sb = bmaj / 2.3548200450309493, bmin / 2.3548200450309493
                plane[y0:y1, x0:x1] += (apparent * np.exp(-0.5 * ((a / sa) ** 2 + (b / sb) ** 2))).astype(plane.dtype)
            hdul[0].data = plane.reshape(hdul[0].data.shape)
