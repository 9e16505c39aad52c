"""The thermal noise an image should have, from its visibility weights and Briggs imaging weights.

For a Stokes I pixel ``I = sum_k w_k Re(V_k ...) / sum_k w_k`` over the unflagged
samples ``k`` (row, channel, hand) with imaging weights ``w_k``, and visibilities
of noise variance ``sigma_1^2 / W_k`` per real part (``W_k`` the number of
native samples averaged into it: the MS weight, ``sigma_1 = SEFD / sqrt(2 dnu tau)``
for one native channel and integration),

    sigma_I^2 = sigma_1^2 sum_k (w_k^2 / W_k) / (sum_k w_k)^2 .

With natural weights (``w = W``) this is the radiometer figure
``SEFD / sqrt(2 N (N - 1) B T)``; Briggs weighting raises it. Neither imager
hands its imaging weights back (WSClean 3.1 did not fill
IMAGING_WEIGHT_SPECTRUM on a single-SPW MS; CASA 6 computes them on the fly), so
:func:`briggs_weights` computes them with the definition both use (Briggs 1995;
CASA ``rmode='norm'``, WSClean ``-weight briggs``): the visibility weights
gridded on the image's uv grid (both hermitian halves), ``D``, and

    w_k = W_k / (1 + f^2 D(cell_k)),   f^2 = (5 x 10^-R)^2 / (sum_k W_k D(cell_k) / sum_k W_k) .
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Rows read per chunk.
CHUNK_ROWS = 32768
C_M_S = 299792458.0


def _read(vis_ms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v) in wavelengths and the unflagged weight summed over the hands, of every (row, channel) with any.

    The hands share (u, v) and so their Briggs factor: per (row, channel), ``sum_p w_p = S / (1 + f^2 D)``
    and ``sum_p w_p^2 / W_p = S / (1 + f^2 D)^2`` with ``S = sum_p W_p``.
    """
    from casacore.tables import table

    with table(f"{vis_ms}/SPECTRAL_WINDOW", ack=False) as spw:
        freqs = np.asarray(spw.getcol("CHAN_FREQ"), dtype=float)
    if len(freqs) != 1:
        raise ValueError(f"{vis_ms}: the noise prediction reads the single-SPW imaging MS")
    inv_lam = (freqs[0] / C_M_S).astype(np.float32)
    us, vs, ss = [], [], []
    with table(str(vis_ms), ack=False) as t:
        n = t.nrows()
        for start in range(0, n, CHUNK_ROWS):
            nr = min(CHUNK_ROWS, n - start)
            uvw = t.getcol("UVW", start, nr).astype(np.float32)
            big_w = t.getcol("WEIGHT_SPECTRUM", start, nr)
            big_w[t.getcol("FLAG", start, nr)] = 0.0
            s = big_w.sum(axis=2)  # (row, chan)
            keep = s > 0
            us.append((uvw[:, 0, None] * inv_lam[None, :])[keep])
            vs.append((uvw[:, 1, None] * inv_lam[None, :])[keep])
            ss.append(s[keep].astype(np.float64))
    return np.concatenate(us), np.concatenate(vs), np.concatenate(ss)


def briggs_weights(u: np.ndarray, v: np.ndarray, w: np.ndarray, *, robust: float, imsize: int,
                   cell_arcsec: float) -> np.ndarray:
    """Briggs imaging weights of samples at ``(u, v)`` (wavelengths) with visibility weights ``w``.

    Parameters
    ----------
    u, v : numpy.ndarray
        Sample coordinates, wavelengths.
    w : numpy.ndarray
        Visibility weights.
    robust : float
        Briggs robustness (-2 ~ uniform, +2 ~ natural).
    imsize : int
        Pixels on a side of the image (the uv grid has as many cells).
    cell_arcsec : float
        Pixel size, arcsec (the uv cell is ``1 / (imsize cell)``).
    """
    du = 1.0 / (imsize * math.radians(cell_arcsec / 3600.0))
    half = imsize // 2
    iu = np.rint(u / du).astype(np.int64)
    iv = np.rint(v / du).astype(np.int64)
    inside = (np.abs(iu) < half) & (np.abs(iv) < half)
    # both hermitian halves: the sample and its conjugate at (-u, -v)
    flat = (iv + half) * imsize + (iu + half)
    flat_conj = (half - iv) * imsize + (half - iu)
    density = np.bincount(flat[inside], weights=w[inside], minlength=imsize * imsize)
    density += np.bincount(flat_conj[inside], weights=w[inside], minlength=imsize * imsize)
    d_k = np.where(inside, density[np.where(inside, flat, 0)], 0.0)
    f2 = (5.0 * 10.0 ** (-robust)) ** 2 / (2.0 * np.sum(w * d_k) / (2.0 * np.sum(w)))
    out = w / (1.0 + f2 * d_k)
    return np.where(inside, out, 0.0)


@dataclass(frozen=True)
class ImagingWeights:
    """The samples an imager grids, read once: what the noise prediction and the restoring beam need.

    Attributes
    ----------
    u, v : numpy.ndarray
        Wavelengths, one per (row, channel) with any unflagged hand.
    summed : numpy.ndarray
        Visibility weight summed over the hands (native samples).
    imaging : numpy.ndarray
        Briggs imaging weight summed over the hands (``summed`` for natural weighting).
    """

    u: np.ndarray
    v: np.ndarray
    summed: np.ndarray
    imaging: np.ndarray

    def predicted_noise(self, sigma_unit_jy: float) -> float:
        """Expected Stokes I image noise, Jy/beam, for a native sample's real-part noise ``sigma_unit_jy`` (Jy).

        Per (row, channel) ``sum_p w_p = S r`` and ``sum_p w_p^2 / W_p = S r^2`` with ``r`` the Briggs
        factor ``imaging / summed``, so ``sigma_I = sigma_1 sqrt(sum S r^2) / sum S r``.
        """
        factor = self.imaging / self.summed
        return float(sigma_unit_jy * np.sqrt(np.sum(self.summed * factor**2)) / np.sum(self.summed * factor))


def imaging_weights(vis_ms, *, robust: float | None, imsize: int, cell_arcsec: float) -> ImagingWeights:
    """Read the single-SPW imaging MS's (u, v) and weights, and compute the Briggs imaging weights.

    Parameters
    ----------
    vis_ms : path-like
        The single-SPW MS the imager reads (its WEIGHT_SPECTRUM counts native samples).
    robust : float or None
        Briggs robustness; None for natural weighting.
    imsize : int
    cell_arcsec : float
    """
    u, v, summed = _read(Path(vis_ms))
    if len(summed) == 0:
        raise ValueError(f"{vis_ms}: no unflagged sample")
    imaging = summed if robust is None else briggs_weights(u, v, summed, robust=robust, imsize=imsize,
                                                           cell_arcsec=cell_arcsec)
    return ImagingWeights(u, v, summed, imaging)


def predicted_image_noise(vis_ms, *, sigma_unit_jy: float, robust: float | None, imsize: int,
                          cell_arcsec: float) -> float:
    """Expected Stokes I noise of an image of ``vis_ms``, Jy/beam.

    Parameters
    ----------
    vis_ms : path-like
        The single-SPW MS the imager read (its WEIGHT_SPECTRUM counts native samples).
    sigma_unit_jy : float
        Noise of the real part of one native sample (one channel, one integration), Jy.
    robust : float or None
        Briggs robustness; None for natural weighting.
    imsize : int
    cell_arcsec : float

    Returns
    -------
    float
    """
    return imaging_weights(vis_ms, robust=robust, imsize=imsize, cell_arcsec=cell_arcsec).predicted_noise(
        sigma_unit_jy)
