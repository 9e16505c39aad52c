"""The linear mosaic (contimg/mosaic) on synthetic drift-scan group images with known sources, noise and beams.

Twelve consecutive groups (:func:`contimg.simulate.images.write_group_images`): each image is centred on the
meridian at its mid time, so the grids are shifted in RA by 1.29 deg per group; each has its own drift-averaged
Airy beam, restoring beam (3 % change across the hour) and noise (+-15 %). Small geometry: 384 px of 50"
(5.3 deg, the pb >= 0.2 area) and a 400" x 300" beam (8 x 6 pixels, as the pipeline's images sample theirs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from contimg import naming
from contimg.mosaic.linear import GroupImage, linear_mosaic
from contimg.simulate.images import GROUP_S, SIDEREAL_DEG_PER_S, write_group_images

N = 12
DEC = 54.6
RA0 = 120.0
GEOMETRY = dict(imsize=384, cell_arcsec=50.0, beam_arcsec=(400.0, 300.0, 20.0), dec_deg=DEC, ra0_deg=RA0,
                n_groups=N, noise_jy=3e-4)


def _sources(seed=1, n=40):
    rng = np.random.default_rng(seed)
    span = N * GROUP_S * SIDEREAL_DEG_PER_S
    ra = RA0 + rng.uniform(-1.0, span + 1.0, n)
    dec = DEC + rng.uniform(-2.0, 2.0, n)
    flux = rng.uniform(0.02, 0.2, n)
    return np.column_stack([ra, dec, flux])


def _groups(synthetic):
    return [GroupImage(g.group_id, naming.image_product_path(g.prefix, "image"),
                       naming.image_product_path(g.prefix, "pb"), g.noise_jy) for g in synthetic]


def _paths(root, name):
    prefix = naming.mosaic_prefix(root, name)
    return {k: naming.mosaic_product_path(prefix, k) for k in ("image", "weight", "noise", "png")}


def _plane(path):
    with fits.open(path) as hdul:
        return np.squeeze(hdul[0].data), WCS(hdul[0].header).celestial, hdul[0].header


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaic")
    truth = _sources()
    synthetic = write_group_images(root / "products", truth, **GEOMETRY)
    result = linear_mosaic(_groups(synthetic), _paths(root, "sky-12g"))
    return root, truth, synthetic, result


@pytest.fixture(scope="module")
def noise_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaic-noise")
    synthetic = write_group_images(root / "products", [], seed=7, **GEOMETRY)
    result = linear_mosaic(_groups(synthetic), _paths(root, "noise-12g"))
    return synthetic, result


def test_weight_map_is_the_sum_of_the_groups_pb2_over_sigma2(noise_only):
    """At sky positions across the mosaic, W = sum_i pb_i^2 / sigma_i^2 with each group's pb read from its
    own -pb.fits (bilinear, independent of the mosaic code) and pb_i < 0.2 left out."""
    from contimg.qa.sources import sample_image

    synthetic, result = noise_only
    weight, wcs, _ = _plane(result.paths["weight"])
    ny, nx = weight.shape
    ys, xs = np.meshgrid(np.linspace(0.1 * ny, 0.9 * ny, 7).astype(int),
                         np.linspace(0.05 * nx, 0.95 * nx, 15).astype(int), indexing="ij")
    ra, dec = wcs.pixel_to_world_values(xs.ravel(), ys.ravel())
    expected = np.zeros(ra.size)
    near_edge = np.zeros(ra.size, dtype=bool)
    for g in synthetic:
        pb = np.nan_to_num(sample_image(naming.image_product_path(g.prefix, "pb"), ra, dec))
        expected += np.where(pb >= 0.2, pb**2, 0.0) / g.noise_jy**2
        near_edge |= np.abs(pb - 0.2) < 0.01  # a group's pblimit edge: the nearest pixel may be either side
    got = weight[ys.ravel(), xs.ravel()]
    inside = (expected > 0) & ~near_edge
    assert inside.sum() > 40
    np.testing.assert_allclose(got[inside], expected[inside], rtol=0.02)
    noise, _, _ = _plane(result.paths["noise"])
    sigma = float(np.median([g.noise_jy for g in synthetic]))
    covered = weight * sigma**2 >= 0.2**2  # the effective beam of the mosaic at or above pblimit
    np.testing.assert_allclose(noise[covered], 1.0 / np.sqrt(weight[covered]), rtol=1e-5)
    assert np.isnan(noise[~covered]).all()
    image, _, _ = _plane(result.paths["image"])
    assert np.array_equal(np.isnan(image), ~covered) and covered.sum() > 0.4 * covered.size


def test_noise_at_the_centre_is_the_single_group_noise_over_the_root_of_the_effective_overlap(noise_only):
    """Measured robust rms in the central box vs sigma_single / sqrt(N_eff), N_eff = sum_i pb_i^2 (sigma / sigma_i)^2
    from the weight map (= W sigma^2): the mosaic's noise is that of sum pb_i I_i / sigma_i^2 / W for independent
    groups. Here N_eff ~ 2.8: consecutive groups' beams are 0.75 deg apart on the sky at Dec 54.6 and pb^2 has a
    FWHM of ~2 deg, so sum pb_i^2 ~ 1.06 x 2 / 0.75."""
    synthetic, result = noise_only
    image, _, _ = _plane(result.paths["image"])
    weight, _, _ = _plane(result.paths["weight"])
    sigma = float(np.median([g.noise_jy for g in synthetic]))
    ny, nx = weight.shape
    n_eff = float(weight[ny // 2, nx // 2]) * sigma**2
    assert 2.0 < n_eff < 4.0
    expected = sigma / math.sqrt(n_eff)
    assert result.noise_center_jy == pytest.approx(expected, rel=0.20)
    assert result.noise_expected_jy == pytest.approx(expected, rel=0.05)
    assert result.noise_center_jy < 0.7 * sigma  # deeper than any one group


def test_sources_above_20_sigma_keep_position_and_flux(sky):
    """PyBDSF on the mosaic (its noise map as the rms map): every source > 20 sigma within 0.05 beam of the truth, peak (Jy/beam, the mosaic is
    primary-beam corrected) and integrated flux within 3 % in the median and each within 3 % + 3 / SNR."""
    from contimg.mosaic.sources import find_mosaic_sources

    root, truth, _, result = sky
    table = find_mosaic_sources(result.paths["image"], result.paths["noise"])
    snr = table["snr"].to_numpy()
    bright = snr > 20
    assert bright.sum() >= 25
    found = SkyCoord(table["ra_deg"].to_numpy()[bright], table["dec_deg"].to_numpy()[bright], unit="deg")
    true = SkyCoord(truth[:, 0], truth[:, 1], unit="deg")
    index, sep, _ = found.match_to_catalog_sky(true)
    bmaj, bmin, _ = result.beam_deg
    beam = math.sqrt(bmaj * bmin)
    offsets = sep.deg / beam
    assert offsets.max() < 0.05, offsets
    flux = truth[index, 2]
    peak = table["peak_flux_jy_per_beam"].to_numpy()[bright] / flux
    total = table["total_flux_jy"].to_numpy()[bright] / flux
    tolerance = 0.03 + 3.0 / snr[bright]
    assert abs(np.median(peak) - 1) < 0.03 and abs(np.median(total) - 1) < 0.03, (np.median(peak), np.median(total))
    assert (np.abs(peak - 1) < tolerance).all() and (np.abs(total - 1) < tolerance).all()


def test_header_png_and_beam_spread(sky):
    _, _, synthetic, result = sky
    _, wcs, header = _plane(result.paths["image"])
    assert header["NGROUPS"] == N and header["GROUP001"] == synthetic[0].group_id
    bmajs = sorted(3600 * g.beam_arcsec[0] / 3600 for g in synthetic)
    assert header["BMAJLO"] == pytest.approx(bmajs[0]) and header["BMAJHI"] == pytest.approx(bmajs[-1])
    assert 3600 * header["BMAJ"] == pytest.approx(np.median(bmajs))
    assert wcs.wcs.ctype[0] == "RA---SIN" and abs(3600 * wcs.wcs.cdelt[1] - 50.0) < 1e-6
    # centred on the mean of the groups' RAs, at their Dec
    assert wcs.wcs.crval[0] == pytest.approx(np.mean([g.ra_deg for g in synthetic]), abs=1e-3)
    assert result.paths["png"].stat().st_size > 10_000
    # the hour's footprint: ~12 x 1.29 deg of RA at Dec 54.6 plus the image width
    assert 30 < result.coverage_deg2 < 60


# --- the PNG: every point source shows ---------------------------------------------------------------


#: A mosaic wider than any sensible PNG (1758 x 307 px of 20") with a beam of a pixel (20" x 16"): as a
#: 3648-px image's 3-pixel beam is in its 6-fold reduced PNG. 15 sources along the middle, 17' apart, 20 mJy.
POINTS = dict(imsize=256, cell_arcsec=20.0, beam_arcsec=(20.0, 16.0, 0.0), dec_deg=DEC, ra0_deg=RA0, n_groups=N,
              noise_jy=3e-4)


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaic-points")
    span = N * GROUP_S * SIDEREAL_DEG_PER_S
    truth = np.column_stack([RA0 + np.linspace(0.3, span - 0.3, 15), np.full(15, DEC), np.full(15, 0.02)])
    synthetic = write_group_images(root / "products", truth, **POINTS)
    return truth, linear_mosaic(_groups(synthetic), _paths(root, "points-12g"))


def _colour_index(png, cmap="inferno"):
    """Per PNG pixel: the colour map's index (0..255) of its colour (-1: not a colour of the map, or the blank
    grey), and the (row0, row1, col0, col1) box of the drawn image: the largest connected area of colour-map
    (not near-black: the frame and text) or blank-grey pixels."""
    from matplotlib import colormaps
    from matplotlib.image import imread
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rgb = imread(png)[..., :3]
    lut = colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    distance, index = cKDTree(lut).query(rgb.reshape(-1, 3))
    distance, index = distance.reshape(rgb.shape[:2]), index.reshape(rgb.shape[:2])
    blank = (np.abs(rgb - 0.75) < 0.01).all(axis=2)
    drawn = ((distance < 0.02) & (index >= 10)) | blank
    labels, n = ndimage.label(drawn)
    largest = 1 + int(np.argmax(ndimage.sum(drawn, labels, range(1, n + 1))))
    rows, cols = np.nonzero(labels == largest)
    return np.where(drawn & ~blank, index, -1), (rows.min(), rows.max(), cols.min(), cols.max())


def test_png_shows_every_point_source(points):
    """Each source a beam (a pixel) across is at the top of the colour map where it is on the PNG, and the
    noise is not: block peaks no larger than the axes, where block means drawn nearest-neighbour into a
    smaller axes diluted them or skipped their rows and columns."""
    truth, result = points
    index, (r0, r1, c0, c1) = _colour_index(result.paths["png"])
    image, wcs, _ = _plane(result.paths["image"])
    ny, nx = image.shape
    assert abs((c1 - c0 + 1) / (r1 - r0 + 1) - nx / ny) < 0.05 * nx / ny  # found the drawn image
    x, y = wcs.all_world2pix(truth[:, 0], truth[:, 1], 0)
    cols = np.round(c0 + (x + 0.5) / nx * (c1 - c0 + 1) - 0.5).astype(int)
    rows = np.round(r1 - (y + 0.5) / ny * (r1 - r0 + 1) + 0.5).astype(int)
    near = [index[r - 2:r + 3, c - 2:c + 3].max() for r, c in zip(rows, cols)]
    area = index[r0:r1 + 1, c0:c1 + 1]
    background = area[area >= 0]
    assert np.mean(background >= 230) < 0.005  # the noise is not at the top of the map
    assert min(near) >= 230, near
