"""Image QA metrics and thumbnail on small synthetic FITS products with known noise, beam and peak."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from contimg.errors import InvalidInputError
from contimg.imaging.products import KINDS, product_path
from contimg.qa.image_qa import (beam_angle_pixel_deg, block_mean, block_peak, image_metrics, robust_sigma,
                                 write_thumbnail)

N = 256
CELL_ARCSEC = 10.0
BEAM_ARCSEC = (60.0, 40.0, 30.0)  # BMAJ, BMIN (arcsec), BPA (deg)
FREQ_HZ, BW_HZ = 1.405e9, 1.875e8
RA0, DEC0 = 128.7, 54.6
SOURCE_XY = (150, 100)
PBLIMIT = 0.2


def _header(*, cdelt1_sign=-1.0, beam=True) -> fits.Header:
    w = WCS(naxis=4)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
    w.wcs.crval = [RA0, DEC0, FREQ_HZ, 1.0]
    w.wcs.crpix = [N / 2 + 1, N / 2 + 1, 1, 1]
    w.wcs.cdelt = [cdelt1_sign * CELL_ARCSEC / 3600, CELL_ARCSEC / 3600, BW_HZ, 1.0]
    w.wcs.cunit = ["deg", "deg", "Hz", ""]
    h = w.to_header()
    h["BUNIT"] = "Jy/beam"
    if beam:
        h["BMAJ"], h["BMIN"], h["BPA"] = BEAM_ARCSEC[0] / 3600, BEAM_ARCSEC[1] / 3600, BEAM_ARCSEC[2]
    return h


def _sky_gaussian(header, x0, y0, *, major_arcsec, minor_arcsec, pa_deg) -> np.ndarray:
    """Unit-peak elliptical Gaussian built on the sky (east/north offsets from the WCS), on the pixel grid."""
    w = WCS(header).celestial
    yy, xx = np.mgrid[0:N, 0:N]
    ra, dec = w.pixel_to_world_values(xx, yy)
    ra0, dec0 = w.pixel_to_world_values(x0, y0)
    east = (ra - ra0) * np.cos(np.radians(dec0)) * 3600
    north = (dec - dec0) * 3600
    pa = np.radians(pa_deg)
    along = east * np.sin(pa) + north * np.cos(pa)
    across = east * np.cos(pa) - north * np.sin(pa)
    return np.exp(-4 * np.log(2) * ((along / major_arcsec) ** 2 + (across / minor_arcsec) ** 2))


def _pb() -> np.ndarray:
    yy, xx = np.mgrid[0:N, 0:N] - N / 2
    s = 60.0 / math.sqrt(2 * math.log(2))  # pb = 0.5 at 60 px
    return np.exp(-(xx**2 + yy**2) / (2 * s**2)).astype(np.float32)


def _write_products(tmp_path, *, sigma_in=1e-3, sigma_out=1e-3, peak=1.0, seed=1):
    rng = np.random.default_rng(seed)
    header = _header()
    pb = _pb()
    residual = rng.normal(0.0, 1.0, (N, N)) * np.where(pb > 0.5, sigma_in, sigma_out)
    source = peak * _sky_gaussian(header, *SOURCE_XY, major_arcsec=BEAM_ARCSEC[0],
                                  minor_arcsec=BEAM_ARCSEC[1], pa_deg=BEAM_ARCSEC[2])
    image = (residual + source).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        pbcor = np.where(pb >= PBLIMIT, image / pb, np.nan).astype(np.float32)
    planes = {"image": image, "residual": residual.astype(np.float32), "pb": pb, "pbcor": pbcor,
              "model": np.zeros((N, N), np.float32),
              "psf": _sky_gaussian(header, N // 2, N // 2, major_arcsec=BEAM_ARCSEC[0],
                                   minor_arcsec=BEAM_ARCSEC[1], pa_deg=BEAM_ARCSEC[2]).astype(np.float32)}
    prefix = tmp_path / "t"
    products = {}
    for kind in KINDS:
        h = header.copy()
        if kind == "pbcor":
            h["PBLIMIT"] = PBLIMIT
        products[kind] = product_path(prefix, kind)
        fits.PrimaryHDU(planes[kind].reshape(1, 1, N, N), h).writeto(products[kind])
    return products, planes


@pytest.fixture
def products(tmp_path):
    return _write_products(tmp_path)


def test_robust_sigma_of_gaussian_noise_and_nan():
    x = np.random.default_rng(0).normal(5.0, 2.0, 200_000)
    x[:1000] = np.nan
    x[1000:1100] = 1e6  # outliers barely move a MAD
    assert robust_sigma(x) == pytest.approx(2.0, rel=0.01)
    assert math.isnan(robust_sigma(np.full(10, np.nan)))


def test_metrics_noise_peak_beam_grid(products):
    paths, planes = products
    m = image_metrics(paths)
    assert m["noise_jy"] == pytest.approx(1e-3, rel=0.05)
    assert m["noise_inner_jy"] == pytest.approx(1e-3, rel=0.05)
    assert (m["peak_x"], m["peak_y"]) == SOURCE_XY
    assert m["peak_jy"] == pytest.approx(float(planes["image"][SOURCE_XY[1], SOURCE_XY[0]]))
    assert m["peak_jy"] == pytest.approx(1.0, abs=5e-3)
    assert m["dynamic_range"] == pytest.approx(m["peak_jy"] / m["noise_inner_jy"])
    ra, dec = WCS(_header()).celestial.pixel_to_world_values(*SOURCE_XY)
    assert (m["peak_ra_deg"], m["peak_dec_deg"]) == pytest.approx((float(ra), float(dec)))
    assert m["beam_major_arcsec"] == pytest.approx(60.0)
    assert m["beam_minor_arcsec"] == pytest.approx(40.0)
    assert m["beam_pa_deg"] == pytest.approx(30.0)
    assert m["cell_arcsec"] == pytest.approx(CELL_ARCSEC)
    assert m["pixels_per_beam_minor"] == pytest.approx(4.0)
    assert (m["imsize_x"], m["imsize_y"]) == (N, N)
    assert (m["ra_deg"], m["dec_deg"]) == pytest.approx((RA0, DEC0))
    assert (m["freq_hz"], m["bandwidth_hz"]) == pytest.approx((FREQ_HZ, BW_HZ))
    assert m["pblimit"] == PBLIMIT
    assert m["pbcor_max_abs_diff"] < 1e-6
    assert m["pbcor_blank_ok"] is True
    assert m["n_inner_pixels"] == int(np.count_nonzero(_pb() > 0.5))


def test_inner_noise_uses_only_pb_above_threshold(tmp_path):
    paths, _ = _write_products(tmp_path, sigma_in=1e-3, sigma_out=4e-3)
    m = image_metrics(paths)
    assert m["noise_inner_jy"] == pytest.approx(1e-3, rel=0.05)
    assert m["noise_jy"] > 2e-3  # most of the image is outside pb = 0.5
    wider = image_metrics(paths, pb_threshold=0.3)  # takes in noisier pixels
    assert wider["noise_inner_jy"] > 1.3e-3
    assert wider["n_inner_pixels"] > m["n_inner_pixels"]


def _rewrite(path, func):
    with fits.open(path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    data, header = func(data, header)
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)


def test_pbcor_check_detects_wrong_values_and_blanking(products):
    paths, _ = products

    def offset_block(data, header):
        data[0, 0, 120:130, 120:130] += 0.01  # Jy/beam; the peak is ~1
        return data, header

    _rewrite(paths["pbcor"], offset_block)
    m = image_metrics(paths)
    assert m["pbcor_max_abs_diff"] == pytest.approx(0.01, rel=0.01)
    assert m["pbcor_blank_ok"] is True


def test_pbcor_check_detects_unblanked_and_missing_pixels(products):
    paths, _ = products

    def fill_corner(data, header):
        data[0, 0, 0, 0] = 0.0  # pb < 0.2 there: must be NaN
        return data, header

    _rewrite(paths["pbcor"], fill_corner)
    assert image_metrics(paths)["pbcor_blank_ok"] is False

    def blank_centre(data, header):
        data[0, 0, 0, 0] = np.nan
        data[0, 0, N // 2, N // 2] = np.nan  # pb = 1 there: must be finite
        return data, header

    _rewrite(paths["pbcor"], blank_centre)
    assert image_metrics(paths)["pbcor_blank_ok"] is False


def test_pbcor_without_pblimit_infers_it(products):
    paths, _ = products

    def drop_key(data, header):
        del header["PBLIMIT"]
        return data, header

    _rewrite(paths["pbcor"], drop_key)
    m = image_metrics(paths)
    assert PBLIMIT <= m["pblimit"] < PBLIMIT + 0.01
    assert m["pbcor_blank_ok"] is True


def test_bad_inputs_raise_naming_the_file(products, tmp_path):
    paths, _ = products
    with pytest.raises(InvalidInputError, match="'residual'"):
        image_metrics({k: v for k, v in paths.items() if k != "residual"})
    with pytest.raises(InvalidInputError, match="nowhere-pb.fits"):
        image_metrics({**paths, "pb": tmp_path / "nowhere-pb.fits"})

    def drop_beam(data, header):
        for key in ("BMAJ", "BMIN", "BPA"):
            del header[key]
        return data, header

    _rewrite(paths["image"], drop_beam)
    with pytest.raises(InvalidInputError, match=r"t-image\.fits.*restoring beam"):
        image_metrics(paths)


def test_shape_mismatch_raises(products):
    paths, _ = products
    fits.PrimaryHDU(np.zeros((1, 1, 64, 64), np.float32), _header()).writeto(paths["pb"], overwrite=True)
    with pytest.raises(InvalidInputError, match="t-pb.fits"):
        image_metrics(paths)


def test_block_mean_is_nan_aware_and_pads():
    data = np.arange(25, dtype=np.float32).reshape(5, 5)
    data[0, 0] = np.nan
    out = block_mean(data, 2)
    assert out.shape == (3, 3)
    assert out[0, 0] == pytest.approx((1 + 5 + 6) / 3)
    assert out[2, 2] == 24  # a padded block keeps its one real pixel
    assert np.isnan(block_mean(np.full((4, 4), np.nan, np.float32), 2)).all()


def test_block_peak_keeps_the_signed_extreme_of_each_block():
    data = np.zeros((5, 5), dtype=np.float32)
    data[1, 0], data[0, 1] = 3.0, -4.0  # block (0, 0): the larger |value| wins, with its sign
    data[2, 3] = 5.0  # one bright pixel among zeros: a mean would give 5 / 4
    data[3, 2] = np.nan
    data[4, 4] = -1.0  # a padded block
    out = block_peak(data, 2)
    assert out.shape == (3, 3)
    assert out[0, 0] == -4.0 and out[1, 1] == 5.0 and out[2, 2] == -1.0 and out[1, 0] == 0.0
    assert np.isnan(block_peak(np.full((4, 4), np.nan, np.float32), 2)).all()
    assert np.array_equal(block_peak(data, 1), data, equal_nan=True)


def test_peak_thumbnail_keeps_a_one_pixel_source_of_a_large_image(tmp_path):
    """A 3000-px image drawn into ~700 px of axes: with reduce="peak" its one-pixel source is at the top of
    the colour map; from block means it is not (diluted 9-fold; the mosaic PNG's defect)."""
    from matplotlib import colormaps
    from matplotlib.image import imread

    n = 3000
    rng = np.random.default_rng(2)
    data = rng.normal(0.0, 1e-3, (n, n)).astype(np.float32)
    data[1201, 1801] = 0.1  # 100 sigma, one pixel, off the grid lines through the centre
    header = WCS(naxis=2)
    header.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    header.wcs.crval, header.wcs.crpix, header.wcs.cdelt = [120.0, 54.6], [n / 2, n / 2], [-5 / 3600, 5 / 3600]
    hdr = header.to_header()
    hdr["BMAJ"], hdr["BMIN"], hdr["BPA"] = 5 / 3600, 5 / 3600, 0.0
    fits.PrimaryHDU(data, hdr).writeto(tmp_path / "big-pbcor.fits")
    top = colormaps["inferno"](np.linspace(0, 1, 256))[240:, :3]  # yellow: neither the white page nor text
    tops = {}
    for how in ("mean", "peak"):
        png = write_thumbnail({"pbcor": tmp_path / "big-pbcor.fits"}, tmp_path / f"{how}.png", reduce=how,
                              max_pixels=1024)
        rgb = imread(png)[..., :3]
        rgb = rgb[:, int(0.2 * rgb.shape[1]):int(0.7 * rgb.shape[1])]  # around the source, not the colour bar
        distance = np.abs(rgb[:, :, None, :] - top[None, None]).max(axis=3).min(axis=2)
        tops[how] = np.count_nonzero(distance < 0.01)
    assert tops["peak"] >= 1 and tops["mean"] == 0, tops


def _axis(angle_deg):
    return np.array([math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))])


def test_beam_angle_east_left():
    # BPA = 0: major axis north, +y; BPA = 90: east, which is -x when CDELT1 < 0
    assert _axis(beam_angle_pixel_deg(0.0)) == pytest.approx([0.0, 1.0], abs=1e-12)
    assert _axis(beam_angle_pixel_deg(90.0)) == pytest.approx([-1.0, 0.0], abs=1e-12)
    assert _axis(beam_angle_pixel_deg(45.0)) == pytest.approx([-math.sqrt(0.5), math.sqrt(0.5)])
    # east right (CDELT1 > 0): BPA = 90 along +x
    assert _axis(beam_angle_pixel_deg(90.0, np.diag([1.0, 1.0]))) == pytest.approx([1.0, 0.0], abs=1e-12)


def _pixel_major_axis_deg(img) -> float:
    """Orientation (deg CCW from +x, mod 180) of a blob's major axis from its second moments."""
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    w = img / img.sum()
    x0, y0 = (w * xx).sum(), (w * yy).sum()
    sxx, syy = (w * (xx - x0) ** 2).sum(), (w * (yy - y0) ** 2).sum()
    sxy = (w * (xx - x0) * (yy - y0)).sum()
    return math.degrees(0.5 * math.atan2(2 * sxy, sxx - syy)) % 180


@pytest.mark.parametrize("pa_deg", [0.0, 30.0, 100.0, 150.0])
@pytest.mark.parametrize("cdelt1_sign", [-1.0, 1.0])
def test_beam_angle_matches_a_gaussian_built_on_the_sky(pa_deg, cdelt1_sign):
    header = _header(cdelt1_sign=cdelt1_sign)
    blob = _sky_gaussian(header, N // 2, N // 2, major_arcsec=120.0, minor_arcsec=40.0, pa_deg=pa_deg)
    angle = beam_angle_pixel_deg(pa_deg, WCS(header).celestial.pixel_scale_matrix) % 180
    diff = (_pixel_major_axis_deg(blob) - angle + 90) % 180 - 90
    assert abs(diff) < 0.5


def test_thumbnail_is_a_png(products, tmp_path):
    from PIL import Image

    paths, _ = products
    out = write_thumbnail(paths, tmp_path / "qa" / "thumb.png", max_pixels=100)
    assert out == tmp_path / "qa" / "thumb.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    # without residual and pb (noise from the drawn image, no contour), other kind and colour map
    out2 = write_thumbnail({"image": paths["image"]}, tmp_path / "thumb2.png", kind="image", cmap="gray",
                           title="custom")
    assert out2.stat().st_size > 1000


def test_thumbnail_bad_inputs(products, tmp_path):
    paths, _ = products
    with pytest.raises(InvalidInputError, match="'pbcor'"):
        write_thumbnail({"image": paths["image"]}, tmp_path / "x.png")

    def drop_beam(data, header):
        del header["BMAJ"]
        return data, header

    _rewrite(paths["pbcor"], drop_beam)
    with pytest.raises(InvalidInputError, match="t-pbcor.fits"):
        write_thumbnail(paths, tmp_path / "x.png")
