"""The flux scale of one image, from constant bright reference sources.

DSA-110's gains drift between calibrator transits, so an image's fluxes may be
off by a few per cent as a whole; a light curve would show that as variability
of every source at once. As the telescope team's pipeline does, each image is
normalised against reference sources of known, constant flux density:

    factor = median over the references of (reference flux / measured peak)

and every peak and rms of the image is multiplied by it. The references are
those named by a setting (``photometry_flux_scale_sources``), or by default every
reference with a catalog flux measured at SNR >= ``min_snr`` in this image;
flagged measurements never count. With fewer than ``min_sources`` of them the
factor is 1.0 and the status says why (``too_few_references``,
``no_reference_fluxes``): an image is never scaled on one or two sources.

It cannot correct a real variable away. The factor is one number for the whole
image, a median over several sources: a variable among the references moves it
by at most one rank of the others' ratios (their scatter divided by ~sqrt(n),
per cent at most), and its own measured change is kept in full since it is
divided by that factor like every other source. A variable would bias the
scale only if it were the majority of the references, i.e. if most constant
references changed by the same factor at the same epoch, which is what a gain
drift looks like. The median's robust scatter (``scatter``) is recorded so a
bad reference list shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAD_TO_SIGMA = 1.482602218505602


@dataclass(frozen=True)
class FluxScale:
    """The flux scale of an image.

    Attributes
    ----------
    factor : float
        Multiply the image's peaks and rms by this (1.0 when not normalised).
    n_used : int
        References the median is over (also when too few to apply).
    status : str
        ``applied``, ``too_few_references`` or ``no_reference_fluxes``.
    scatter : float
        Robust fractional scatter (MAD x 1.4826 / median) of the references' ratios; NaN under 2.
    used : tuple of int
        Indices of the references used.
    """

    factor: float = 1.0
    n_used: int = 0
    status: str = "no_reference_fluxes"
    scatter: float = float("nan")
    used: tuple[int, ...] = field(default=())


def flux_scale(reference_flux_jy, measured_jy, snr, flags, *, min_snr: float = 50.0, min_sources: int = 5,
               names=None, use=None) -> FluxScale:
    """The multiplicative flux scale of one image (see the module docstring).

    Parameters
    ----------
    reference_flux_jy : array_like
        Catalog flux density of each reference, Jy (NaN: none known).
    measured_jy : array_like
        Forced-photometry peak of each in this image, Jy/beam (before any scale).
    snr : array_like
        Its SNR in this image.
    flags : sequence of sequence of str
        Its flags; a flagged measurement is never a reference.
    min_snr : float, optional
        Without ``use``, references measured at least this significant.
    min_sources : int, optional
        At least this many references, else factor 1.0.
    names : array_like of str, optional
        Name of each reference (needed with ``use``).
    use : iterable of str, optional
        Only these references (by name), at any SNR above 5.

    Returns
    -------
    FluxScale
    """
    ref = np.asarray(reference_flux_jy, dtype=float)
    meas = np.asarray(measured_jy, dtype=float)
    snr = np.asarray(snr, dtype=float)
    ok = np.isfinite(ref) & (ref > 0) & np.isfinite(meas) & (meas > 0)
    if not ok.any():
        return FluxScale()
    ok &= np.array([not f for f in flags], dtype=bool)
    if use is not None:
        wanted = set(use)
        ok &= np.array([n in wanted for n in np.asarray(names, dtype=object)], dtype=bool) & (snr >= 5.0)
    else:
        ok &= snr >= min_snr
    idx = np.flatnonzero(ok)
    ratio = ref[idx] / meas[idx]
    scatter = float("nan")
    if idx.size >= 2:
        med = float(np.median(ratio))
        scatter = MAD_TO_SIGMA * float(np.median(np.abs(ratio - med))) / med
    if idx.size < max(min_sources, 1):
        return FluxScale(1.0, int(idx.size), "too_few_references", scatter, tuple(int(i) for i in idx))
    return FluxScale(float(np.median(ratio)), int(idx.size), "applied", scatter, tuple(int(i) for i in idx))
