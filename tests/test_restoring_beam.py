"""The restoring beam from the imaging weights: the PSF's orientation and the Gaussian fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contimg.imaging.restoring_beam import fit_beam, psf_centre, restoring_beam

N, CELL = 256, 6.0  # pixels, arcsec
DU = 1.0 / (N * math.radians(CELL / 3600.0))  # uv cell, wavelengths


def _direct_psf(u, v, w, half):
    """sum w cos 2 pi (u l + v m) / sum w, l east = -x, m north = +y, on the image's pixels."""
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    l_rad, m_rad = -dx * math.radians(CELL / 3600), dy * math.radians(CELL / 3600)
    phase = 2 * np.pi * (u[:, None, None] * l_rad + v[:, None, None] * m_rad)
    psf = (w[:, None, None] * np.cos(phase)).sum(axis=0)
    return psf / psf[half, half]


def test_psf_centre_is_the_direct_fourier_sum_in_image_orientation():
    rng = np.random.default_rng(3)
    # samples on cell centres (the grid is then exact), an asymmetric cover: no accidental symmetry
    u = rng.integers(-40, 41, 300) * DU + 0.6 * rng.integers(0, 30, 300) * DU
    v = rng.integers(-20, 21, 300) * DU
    u = np.rint(u / DU) * DU
    w = rng.uniform(0.5, 2.0, 300)
    got = psf_centre(u, v, w, imsize=N, cell_arcsec=CELL, half_pix=6)
    np.testing.assert_allclose(got, _direct_psf(u, v, w, 6), atol=1e-10)


def _gaussian(major_arcsec, minor_arcsec, pa_deg, half=20):
    """A Gaussian built from the geometry: major axis at pa east (-x) of north (+y)."""
    d = np.arange(-half, half + 1)
    y, x = np.meshgrid(d, d, indexing="ij")
    east, north = -x * CELL, y * CELL
    pa = math.radians(pa_deg)
    major_dir = np.array([math.sin(pa), math.cos(pa)])  # (east, north)
    along = east * major_dir[0] + north * major_dir[1]
    across = east * major_dir[1] - north * major_dir[0]
    s = 2 * math.sqrt(2 * math.log(2))
    return np.exp(-0.5 * ((along / (major_arcsec / s)) ** 2 + (across / (minor_arcsec / s)) ** 2))


@pytest.mark.parametrize("pa", [0.0, 30.0, 60.0, -45.0, 89.0])
def test_fit_recovers_a_gaussian(pa):
    major, minor, got_pa = fit_beam(_gaussian(50.0, 20.0, pa), CELL, box_pix=30)
    assert major == pytest.approx(50.0, rel=1e-4) and minor == pytest.approx(20.0, rel=1e-4)
    assert (got_pa - pa + 90) % 180 - 90 == pytest.approx(0.0, abs=0.01)


def test_the_pa_follows_the_array():
    """Long east-west baselines make a beam narrow east-west: its major axis runs north-south (PA 0)."""
    rng = np.random.default_rng(5)
    u, v = rng.normal(0, 60 * DU, 20000), rng.normal(0, 15 * DU, 20000)
    major, minor, pa = restoring_beam(u, v, np.ones_like(u), imsize=N, cell_arcsec=CELL, resolution_arcsec=12.0)
    assert major > 2 * minor and abs(pa) < 3
    major, minor, pa = restoring_beam(v, u, np.ones_like(u), imsize=N, cell_arcsec=CELL, resolution_arcsec=12.0)
    assert major > 2 * minor and abs(abs(pa) - 90) < 3
    # a Gaussian cover has a Gaussian PSF: sigma_l = 1 / (2 pi sigma_u)
    expected = 2 * math.sqrt(2 * math.log(2)) / (2 * math.pi * 15 * DU) * 206264.806
    assert major == pytest.approx(expected, rel=0.03)
