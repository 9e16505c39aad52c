"""Forced photometry and the flux scale on synthetic pbcor images with injected beam-shaped sources and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from contimg.errors import InvalidInputError
from contimg.photometry import fluxscale
from contimg.photometry.forced import measure, robust_rms

N = 512
CELL_ARCSEC = 8.0
BMAJ, BMIN, BPA = 30.0, 24.0, 100.0  # arcsec (~3 pixels per beam minor axis), deg east of north
NOISE = 1e-3  # Jy/beam where pb = 1
PB_CUTOFF = 0.3  # pb at 0.45 N from the centre; blank beyond
_F = 1.0 / math.sqrt(8.0 * math.log(2.0))


def _header(n=N, *, cdelt1_sign=-1.0):
    h = fits.Header()
    axes = [("RA---SIN", 150.0, cdelt1_sign * CELL_ARCSEC / 3600, n // 2 + 1),
            ("DEC--SIN", 54.0, CELL_ARCSEC / 3600, n // 2 + 1), ("FREQ", 1.4e9, 1.875e8, 1), ("STOKES", 1.0, 1.0, 1)]
    for i, (ctype, crval, cdelt, crpix) in enumerate(axes, start=1):
        h[f"CTYPE{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"], h[f"CRPIX{i}"] = ctype, crval, cdelt, crpix
    h["BMAJ"], h["BMIN"], h["BPA"] = BMAJ / 3600, BMIN / 3600, BPA
    h["BUNIT"], h["RADESYS"], h["EQUINOX"] = "Jy/beam", "ICRS", 2000.0
    return h


def sky_gaussian(wcs, shape, ra, dec, peak, *, major=BMAJ, minor=BMIN, pa=BPA):
    """A Gaussian built on the sky (offsets east/north in arcsec from the WCS), independent of the code's beam."""
    ny, nx = shape
    ry, rx = np.mgrid[0:ny, 0:nx]
    pra, pdec = wcs.pixel_to_world_values(rx, ry)
    east = (pra - ra) * math.cos(math.radians(dec)) * 3600.0
    east = (east + 180 * 3600 * math.cos(math.radians(dec))) % (360 * 3600 * math.cos(math.radians(dec))) \
        - 180 * 3600 * math.cos(math.radians(dec))
    north = (pdec - dec) * 3600.0
    t = math.radians(pa)
    along = east * math.sin(t) + north * math.cos(t)
    across = east * math.cos(t) - north * math.sin(t)
    return peak * np.exp(-0.5 * ((along / (major * _F)) ** 2 + (across / (minor * _F)) ** 2))


def beam_noise(n, rng):
    """Unit-rms noise whose autocorrelation is the beam (white noise convolved with the beam / sqrt 2)."""
    y, x = np.mgrid[0:n, 0:n] - n // 2
    t = math.radians(BPA)
    along, across = -x * math.sin(t) + y * math.cos(t), x * math.cos(t) + y * math.sin(t)
    smaj, smin = BMAJ / CELL_ARCSEC * _F / math.sqrt(2), BMIN / CELL_ARCSEC * _F / math.sqrt(2)
    kernel = np.exp(-0.5 * ((along / smaj) ** 2 + (across / smin) ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * np.fft.fft2(np.fft.ifftshift(kernel))).real
    return field / field.std()


def make_field(tmp_path, *, seed=1, spacing=48, n=N, cdelt1_sign=-1.0):
    """A pbcor image (beam-correlated NOISE / pb, blank below PB_CUTOFF), its pb, and the injected sources.

    Sources on a jittered grid, peaks log-uniform from 2 to 200 x the local noise (pbcor), at random
    sub-pixel positions.
    """
    rng = np.random.default_rng(seed)
    header = _header(n, cdelt1_sign=cdelt1_sign)
    wcs = WCS(header).celestial
    yy, xx = np.mgrid[0:n, 0:n]
    r_cut = 0.45 * n
    pb = PB_CUTOFF ** ((np.hypot(xx - n // 2, yy - n // 2) / r_cut) ** 2)
    image = NOISE * beam_noise(n, rng) / pb
    truth = {"ra_deg": [], "dec_deg": [], "flux_jy": [], "noise_jy": []}
    for gy in range(spacing // 2, n, spacing):
        for gx in range(spacing // 2, n, spacing):
            sx, sy = gx + rng.uniform(-5, 5), gy + rng.uniform(-5, 5)
            r = math.hypot(sx - n // 2, sy - n // 2)
            if r > r_cut - 12:
                continue
            local = NOISE / PB_CUTOFF ** ((r / r_cut) ** 2)
            flux = local * 10 ** rng.uniform(math.log10(2), math.log10(200))
            ra, dec = (float(v) for v in wcs.pixel_to_world_values(sx, sy))
            image += sky_gaussian(wcs, image.shape, ra, dec, flux)
            for key, value in zip(truth, (ra, dec, flux, local)):
                truth[key].append(value)
    image[pb < PB_CUTOFF] = np.nan
    header["PBLIMIT"] = PB_CUTOFF
    tmp_path.mkdir(parents=True, exist_ok=True)
    image_path, pb_path = tmp_path / "field-pbcor.fits", tmp_path / "field-pb.fits"
    fits.writeto(image_path, image[None, None].astype(np.float32), header, overwrite=True)
    fits.writeto(pb_path, pb[None, None].astype(np.float32), header, overwrite=True)
    return image_path, pb_path, {k: np.asarray(v) for k, v in truth.items()}


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """Three independent noise realisations (some 250 sources) and their forced photometry."""
    out = []
    for seed in (1, 2, 3):
        image, pb, truth = make_field(tmp_path_factory.mktemp(f"field{seed}"), seed=seed)
        out.append((image, pb, truth, measure(image, truth["ra_deg"], truth["dec_deg"], pb_fits=pb)))
    return out


def _good(forced):
    return np.array([not f for f in forced.flags])


def test_peaks_are_unbiased_and_chi2_of_rms_is_one(fields):
    dev, frac_bright, n = [], [], 0
    for _, _, truth, forced in fields:
        good = _good(forced)
        n += good.sum()
        dev += list(((forced.peak_jy - truth["flux_jy"]) / forced.rms_jy)[good])
        bright = good & (truth["flux_jy"] / truth["noise_jy"] > 50)
        frac_bright += list((forced.peak_jy / truth["flux_jy"])[bright])
    dev = np.asarray(dev)
    assert n > 150
    chi2 = float(np.mean(dev**2))
    assert 0.7 < chi2 < 1.5, chi2
    assert abs(np.mean(dev)) < 3 * 1.1 / math.sqrt(n)  # no bias, faint sources included
    assert abs(np.median(frac_bright) - 1) < 0.01 and np.all(np.abs(np.asarray(frac_bright) - 1) < 0.06)


def test_rms_matches_the_injected_noise(fields):
    for _, _, truth, forced in fields:
        good = _good(forced)
        ratio = (forced.rms_jy / truth["noise_jy"])[good]
        assert abs(np.median(ratio) - 1) < 0.05
        assert np.all(np.abs(ratio - 1) < 0.10), ratio.min()
        assert np.allclose(forced.snr, forced.peak_jy / forced.rms_jy, equal_nan=True)


def test_pb_response_and_flags(fields, tmp_path):
    image, pb, truth, forced = fields[0]
    wcs = WCS(fits.getheader(image)).celestial
    # pb_response: the injected primary beam at the position
    r = np.hypot(forced.x_pix - N // 2, forced.y_pix - N // 2)
    assert np.allclose(forced.pb_response, PB_CUTOFF ** ((r / (0.45 * N)) ** 2), rtol=0.01)
    corner = wcs.pixel_to_world_values(5, 5)          # blank: beyond the pb cutoff
    off = wcs.pixel_to_world_values(-50, 200)          # not on the image
    edge = wcs.pixel_to_world_values(N // 2, 0.45 * N - 2.5 + N // 2)  # 2.5 pixels (< 1 beam) from the blank
    first = (truth["ra_deg"][0], truth["dec_deg"][0])
    pos = [corner, off, edge, first]
    forced_extra = measure(image, [p[0] for p in pos], [p[1] for p in pos], pb_fits=pb)
    assert forced_extra.flags[0] == ["blanked"] and np.isnan(forced_extra.peak_jy[0])
    assert forced_extra.flags[1] == ["outside"] and np.isnan(forced_extra.peak_jy[1])
    assert "edge" in forced_extra.flags[2] and np.isfinite(forced_extra.peak_jy[2])
    # low_pb with a stricter limit than the image's
    strict = measure(image, truth["ra_deg"], truth["dec_deg"], pb_fits=pb, pblimit=0.8)
    assert all(("low_pb" in f) == (p < 0.8) for f, p in zip(strict.flags, strict.pb_response))
    # a faint source half a beam from the brightest one: blended and near_bright
    brightest = int(np.nanargmax(forced.snr))
    assert forced.snr[brightest] > 100
    near_ra = truth["ra_deg"][brightest] + 1.5 * BMAJ / 3600 / math.cos(math.radians(truth["dec_deg"][brightest]))
    ra = np.r_[truth["ra_deg"], near_ra]
    dec = np.r_[truth["dec_deg"], truth["dec_deg"][brightest]]
    both = measure(image, ra, dec, pb_fits=pb)
    assert "near_bright" in both.flags[-1] and "near_bright" not in both.flags[brightest]
    assert "blended" not in both.flags[-1]  # 1.5 beams away: their cores do not overlap
    close = measure(image, np.r_[truth["ra_deg"], truth["ra_deg"][brightest] + 0.5 * BMAJ / 3600 / math.cos(
        math.radians(truth["dec_deg"][brightest]))], dec, pb_fits=pb)
    assert "blended" in close.flags[-1] and "blended" in close.flags[brightest]


def test_orientation_follows_the_wcs(tmp_path):
    """RA increasing with x (CDELT1 > 0) mirrors the image: the beam is still the sky's beam."""
    image, pb, truth = make_field(tmp_path, seed=4, cdelt1_sign=1.0)
    header = fits.getheader(image)
    plane = np.zeros((N, N))
    wcs = WCS(header).celestial
    for ra, dec in zip(truth["ra_deg"][:10], truth["dec_deg"][:10]):
        plane += sky_gaussian(wcs, plane.shape, ra, dec, 1.0)
    fits.writeto(image, plane[None, None], header, overwrite=True)
    forced = measure(image, truth["ra_deg"][:10], truth["dec_deg"][:10])
    assert np.allclose(forced.peak_jy, 1.0, atol=2e-3)


def test_noise_map_sets_the_noise_shape(fields, tmp_path):
    """A mosaic's noise map replaces 1/pb: the same rms when it has the same shape."""
    image, pb, truth, forced = fields[1]
    noise = tmp_path / "field-noise.fits"
    fits.writeto(noise, 7.0 * NOISE / fits.getdata(pb), fits.getheader(pb))  # level is measured, not taken
    with_map = measure(image, truth["ra_deg"], truth["dec_deg"], noise_fits=noise)
    good = _good(forced)
    assert np.allclose(with_map.rms_jy[good], forced.rms_jy[good], rtol=1e-6)
    assert np.all(np.isnan(with_map.pb_response))


def test_bad_inputs(tmp_path, fields):
    image, pb, truth, _ = fields[0]
    with pytest.raises(InvalidInputError, match="no such image"):
        measure(tmp_path / "nope.fits", [150.0], [54.0])
    small = tmp_path / "small-pb.fits"
    fits.writeto(small, np.ones((1, 1, 64, 64), np.float32), _header(64))
    with pytest.raises(InvalidInputError, match="share the image's grid"):
        measure(image, [150.0], [54.0], pb_fits=small)
    nobeam = tmp_path / "nobeam.fits"
    h = _header(64)
    del h["BMAJ"]
    fits.writeto(nobeam, np.ones((1, 1, 64, 64), np.float32), h)
    with pytest.raises(InvalidInputError, match="BMAJ"):
        measure(nobeam, [150.0], [54.0])
    assert len(measure(image, [], [])) == 0


def test_robust_rms_ignores_sources():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 2.0, 20000)
    v[:500] += 100.0
    assert abs(robust_rms(v) / 2.0 - 1) < 0.03
    assert math.isnan(robust_rms(np.ones(5)))


# --- flux scale ------------------------------------------------------------------------


def _refs(n, rng, *, gain=1.0):
    true = 10 ** rng.uniform(-1.5, 0, n)
    measured = gain * true * (1 + rng.normal(0, 0.01, n))
    return true, measured


def test_flux_scale_corrects_a_gain_drift_and_not_a_variable():
    rng = np.random.default_rng(5)
    true, measured = _refs(12, rng, gain=0.9)
    snr = np.full(12, 500.0)
    flags = [[] for _ in range(12)]
    scale = fluxscale.flux_scale(true, measured, snr, flags, min_snr=50, min_sources=5)
    assert scale.status == "applied" and scale.n_used == 12 and abs(scale.factor * 0.9 - 1) < 0.01
    # one reference flares by x3: the median moves by at most one rank of the others' scatter
    flared = measured.copy()
    flared[0] *= 3.0
    s2 = fluxscale.flux_scale(true, flared, snr, flags, min_snr=50, min_sources=5)
    assert abs(s2.factor / scale.factor - 1) < 0.01
    # too few bright, unflagged references: 1.0 and why
    low = snr.copy()
    low[4:] = 10.0
    s3 = fluxscale.flux_scale(true, measured, low, flags, min_snr=50, min_sources=5)
    assert s3.factor == 1.0 and s3.status == "too_few_references" and s3.n_used == 4
    flagged = [["edge"]] * 12
    assert fluxscale.flux_scale(true, measured, snr, flagged, min_snr=50, min_sources=5).factor == 1.0
    none = fluxscale.flux_scale(np.full(12, np.nan), measured, snr, flags, min_snr=50, min_sources=5)
    assert none.status == "no_reference_fluxes" and none.factor == 1.0
    # named references: only those, whatever their SNR rank
    names = np.array([f"S{i}" for i in range(12)])
    s4 = fluxscale.flux_scale(true, measured, snr, flags, min_snr=50, min_sources=3, names=names,
                              use=["S1", "S2", "S3"])
    assert s4.n_used == 3 and s4.status == "applied"
