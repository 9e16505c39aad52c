"""Imaging: the grid, the imaging MS, the averaged primary beam, the noise prediction, both imagers,
the FITS products and the recorded stage, on small simulated groups with a known sky."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from contimg import simulate
from contimg.errors import InvalidInputError
from contimg.imaging import grid as gridmod
from contimg.imaging.backends import wsclean_path
from contimg.simulate.corruptions import Corruptions
from contimg.sky.source import Source

RA0, DEC0 = 150.0, 54.5734
#: A sky with sources on and off the phase centre (bright: a noise-free image measures them to < 1 %).
SKY = [
    Source("centre", RA0, DEC0, 2.0, -0.7),
    Source("north", RA0, DEC0 + 0.35, 1.0, 0.0),
    Source("east", RA0 + 0.4 / math.cos(math.radians(DEC0)), DEC0 - 0.2, 1.5, -0.5),
]
#: Far outside any image of the tests (the beam's sidelobe): subtracted before imaging.
FAR = Source("far", RA0, DEC0 - 2.5, 20.0, 0.0)
#: A fine cell (the derived one, lambda / B_max / 3, is tested with plan_grid): this sparse 39-antenna
#: subset's restoring beam is narrower than the full array's, and peaks are measured on pixels.
IMSIZE, CELL = 1600, 2.5
ANTENNAS = tuple(range(0, 117, 3))


def _convert(tmp_path, name, sources, *, corruptions=Corruptions.none(), n_channels=4, n_times=6, antennas=ANTENNAS):
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.simulate.group import transit_start_time

    start = transit_start_time(RA0, "2026-11-25", dec_deg=DEC0, n_times=n_times)
    g = simulate.simulate_group(tmp_path / name / "in", start, antennas=antennas, n_channels=n_channels,
                                n_times=n_times, sources=sources, corruptions=corruptions, seed=3)
    (grp,) = discover_groups(tmp_path / name / "in", settle_s=0)
    r = convert_group(g.group_id, grp.files, products_dir=tmp_path / name / "prod",
                      scratch_dir=tmp_path / name / "scratch")
    return r.ms_path, g


@pytest.fixture(scope="module")
def sky_ms(tmp_path_factory):
    """A noise-free group of 39 antennas with three bright sources (and nothing else)."""
    ms, g = _convert(tmp_path_factory.mktemp("img"), "sky", SKY)
    return ms


@pytest.fixture(scope="module")
def images(sky_ms, tmp_path_factory):
    """The sky group imaged by each available backend with the same parameters."""
    from contimg.imaging.image import ImagingOptions, image_ms

    out = {}
    backends = ["tclean"] + (["wsclean"] if wsclean_path() else [])
    for backend in backends:
        prefix = tmp_path_factory.mktemp(backend) / "sky"
        out[backend] = image_ms(sky_ms, prefix, options=ImagingOptions(
            backend=backend, data_column="data", imsize=IMSIZE, cell_arcsec=CELL, niter=300, model_min_jy=0))
    return out


# --- grid and smearing --------------------------------------------------------------


def test_resolution_and_cell_from_the_longest_baseline():
    uvw = np.array([[100.0, 0, 0], [0, 2000.0, 5.0], [-300.0, 400.0, 0]])
    res = gridmod.theoretical_resolution_arcsec(uvw, 1.5e9)
    assert res == pytest.approx(299792458.0 / 1.5e9 / 2000.0 * 206264.806, rel=1e-6)
    assert gridmod.cell_for_beam(res, pixels_per_beam=3) <= res / 3


def test_plan_grid_derives_the_cell_and_covers_the_beam(sky_ms):
    from contimg.calibration.model import read_geometry
    from contimg.imaging.image import ImagingOptions, plan_grid

    grid, res = plan_grid(sky_ms, read_geometry(sky_ms), ImagingOptions())
    assert res / 3 - 0.1 < grid.cell_arcsec <= res / 3 and 14.0 < res < 25.0  # outriggers: 2-2.6 km
    assert grid.width_deg > 2 * 1.9  # the 0.2 level of the beam at the bottom of the band, plus the drift


def test_image_covers_the_beam_to_the_cutoff():
    r = gridmod.effective_beam_radius_rad(0.2, freq_hz=1.311e9)
    from contimg.sky.beam import airy_power

    assert airy_power(r, 1.311e9) == pytest.approx(0.2, abs=1e-6)
    n = gridmod.imsize_for_coverage(r, 5.0)
    assert n % gridmod.SIZE_QUANTUM == 0 and n * 5.0 / 3600 >= 2 * math.degrees(r)


def test_channel_averaging_stays_inside_the_smearing_budget():
    width, n = 244140.625, 48
    r = gridmod.half_power_radius_rad(1.4e9)
    k, loss = gridmod.choose_channel_average(width, n, freq_hz=1.311e9, radius_rad=r, beam_arcsec=15.6,
                                             max_loss=0.05)
    assert n % k == 0 and 0 <= loss <= 0.05
    bigger = [d for d in range(k + 1, n + 1) if n % d == 0]
    x = lambda kk: kk * width / 1.311e9 * r * gridmod.RAD_TO_ARCSEC / 15.6  # noqa: E731
    assert all(1 - gridmod.bandwidth_smearing_factor(x(d)) / gridmod.bandwidth_smearing_factor(x(1)) > 0.05
               for d in bigger)
    assert gridmod.averaging_loss(k, width, freq_hz=1.311e9, radius_rad=r, beam_arcsec=15.6) == pytest.approx(loss)
    assert gridmod.bandwidth_smearing_factor(0.0) == 1.0


def test_baseline_averaging_follows_wsclean_and_its_loss_is_the_track_decorrelation():
    # one east-west baseline turning at the Earth's rate for 24 integrations of 12.9 s, 1 deg off axis
    dt, f, r = 12.884902, 1.5e9, math.radians(1.0)
    omega = 2 * math.pi / 86400.0
    hour_angle = omega * dt * np.arange(24)
    uvw = np.zeros((2, 24, 3))
    for i, length_m in enumerate((10.0, 2000.0)):
        uvw[i, :, 0], uvw[i, :, 1] = length_m * np.cos(hour_angle), length_m * np.sin(hour_angle)
    k = gridmod.baseline_averaging_factors(uvw[:, 0], size_wavelengths=4.0, freq_hz=f, integration_s=dt)
    per_integration = 2 * math.pi * np.array([10.0, 2000.0]) * f / gridmod.C_M_S * dt / 86400.0
    np.testing.assert_array_equal(k, np.maximum(np.floor(4.0 / per_integration), 1))
    assert k[1] == 1 and k[0] > 24  # the long baseline is left alone; the short one averaged over the group
    # the short baseline's whole track (24 steps of `per_integration`) decorrelates a source at r, the long one not
    loss = gridmod.baseline_averaging_loss(uvw, size_wavelengths=4.0, freq_hz=f, integration_s=dt, radius_rad=r,
                                           n_angles=2)
    assert 0 < loss < 1e-3
    assert gridmod.baseline_averaging_loss(uvw, size_wavelengths=0.01, freq_hz=f, integration_s=dt,
                                           radius_rad=r) == pytest.approx(0.0, abs=1e-12)
    # the loss of a block grows with its track: sin(pi x) / (pi x) for a straight track of x cycles
    long_only = uvw[1:]
    wide = gridmod.baseline_averaging_loss(long_only, size_wavelengths=2.0 * 24 * per_integration[1], freq_hz=f,
                                           integration_s=dt, radius_rad=r, n_angles=2)
    track_wl = 2000.0 * f / gridmod.C_M_S * omega * dt * 24  # the arc, nearly straight
    x = track_wl * r  # cycles of phase along the track for a source along it (pa 90 deg)
    expected = (1 - np.sinc(x)) / 2  # pa 0 is across the track: no loss
    assert wide == pytest.approx(expected, rel=0.1)


# --- the imaging MS ----------------------------------------------------------------------


def test_imaging_ms_is_one_spw_of_weighted_channel_averages(sky_ms, tmp_path):
    from casacore.tables import table

    from contimg.imaging.visibilities import write_imaging_ms

    vis = write_imaging_ms(sky_ms, tmp_path / "v.ms", data_column="data", chan_avg=2)
    with table(str(sky_ms), ack=False) as src, table(str(vis.ms), ack=False) as out:
        n_spw = 16
        nblts = src.nrows() // n_spw
        a1, a2 = src.getcol("ANTENNA1", 0, nblts), src.getcol("ANTENNA2", 0, nblts)
        cross = np.flatnonzero(a1 != a2)
        assert out.nrows() == len(cross)
        assert np.all(out.getcol("ANTENNA1") != out.getcol("ANTENNA2"))
        assert set(out.getcol("DATA_DESC_ID")) == {0}
        data = out.getcol("DATA")
        assert data.shape == (len(cross), n_spw * 2, 2)
        for spw in (0, 7, 15):
            d = src.getcol("DATA", spw * nblts, nblts)[cross]
            w = src.getcol("WEIGHT_SPECTRUM", spw * nblts, nblts)[cross]
            expect = (d * w).reshape(len(cross), 2, 2, 2).sum(axis=2) / w.reshape(len(cross), 2, 2, 2).sum(axis=2)
            np.testing.assert_allclose(data[:, 2 * spw:2 * spw + 2], expect, rtol=1e-5, atol=1e-6)
    with table(f"{sky_ms}/SPECTRAL_WINDOW", ack=False) as spw, table(f"{vis.ms}/SPECTRAL_WINDOW", ack=False) as o:
        f = spw.getcol("CHAN_FREQ")
        assert o.nrows() == 1
        np.testing.assert_allclose(o.getcol("CHAN_FREQ")[0], f.reshape(16, 2, 2).mean(axis=2).ravel())
    assert np.all(np.diff(vis.freqs_hz) > 0)
    assert vis.weights.shape == (6, 32) and vis.weights.min() > 0


def test_unwritten_corrected_data_is_an_error_naming_data_column(sky_ms, tmp_path):
    from contimg.imaging.visibilities import write_imaging_ms

    with pytest.raises(InvalidInputError, match="--data-column data"):
        write_imaging_ms(sky_ms, tmp_path / "v.ms", data_column="corrected")
    assert not (tmp_path / "v.ms").exists()


def test_subtracting_leaves_what_the_model_does_not_hold(tmp_path):
    """A sky of one far source plus one inside: subtracting the far one leaves the inside one."""
    from casacore.tables import table

    from contimg.imaging.visibilities import write_imaging_ms

    inside = SKY[1]
    ms, _ = _convert(tmp_path, "two", [inside, FAR])
    only, _ = _convert(tmp_path, "one", [inside])
    sub = write_imaging_ms(ms, tmp_path / "sub.ms", data_column="data", subtract=[FAR])
    both = write_imaging_ms(ms, tmp_path / "both.ms", data_column="data")
    ref = write_imaging_ms(only, tmp_path / "ref.ms", data_column="data")
    with table(str(sub.ms), ack=False) as a, table(str(ref.ms), ack=False) as b, \
            table(str(both.ms), ack=False) as c:
        resid = np.abs(a.getcol("DATA") - b.getcol("DATA")).max()
        far = np.abs(c.getcol("DATA") - b.getcol("DATA")).max()
    assert far > 0.05, "the test needs the far source to be seen"
    # what is left is a ~2 deg phase difference on the longest baselines between the model's and the
    # simulator's apparent positions at 2.5 deg (benchmarks/RESULTS.md, Imaging)
    assert resid < 0.08 * far, f"the far source was not subtracted: {resid:.2e} Jy left of {far:.2e} Jy"
    assert [s["name"] for s in sub.subtracted] == ["far"]


# --- primary beam and noise ---------------------------------------------------------------


def test_averaged_beam_matches_direct_evaluation(sky_ms):
    from contimg.calibration.model import beam_offsets_at, read_geometry
    from contimg.imaging.primary_beam import average_primary_beam
    from contimg.sky.beam import airy_power

    geometry = read_geometry(sky_ms)
    freqs = geometry.chan_freq_hz.ravel()
    weights = np.ones((len(geometry.times_s), len(freqs)))
    weights[:, :10] = 0  # a flagged band edge moves the average: the weights must matter
    grid = gridmod.ImageGrid(*np.degrees(geometry.phase_dirs_rad[0]), 30.0, 512)
    pb = average_primary_beam(grid, geometry, weights, freqs)
    wcs = grid.wcs().celestial
    for x, y in [(256, 256), (100, 400), (500, 20), (0, 0)]:
        ra, dec = wcs.all_pix2world([x], [y], 0)
        off = beam_offsets_at(ra, dec, geometry)[:, 0]
        direct = np.sum(weights * airy_power(off[:, None], freqs[None, :])) / weights.sum()
        assert pb[y, x] == pytest.approx(direct, abs=2e-3)
    assert pb[256, 256] > 0.95 and pb[0, 0] < pb[256, 256]


def test_noise_prediction_is_the_radiometer_equation_for_natural_weights(sky_ms, tmp_path):
    from contimg.imaging.noise import briggs_weights, predicted_image_noise
    from contimg.imaging.visibilities import write_imaging_ms
    from contimg.radiometer import image_noise_jy, noise_sigma_jy

    vis = write_imaging_ms(sky_ms, tmp_path / "v.ms", data_column="data")
    sigma1 = noise_sigma_jy(11614.0, vis.chan_width_hz, 12.884902)
    natural = predicted_image_noise(vis.ms, sigma_unit_jy=sigma1, robust=None, imsize=512, cell_arcsec=10)
    expect = image_noise_jy(11614.0, len(ANTENNAS), vis.bandwidth_hz, 6 * 12.884902)
    assert natural == pytest.approx(expect, rel=1e-3)
    briggs = predicted_image_noise(vis.ms, sigma_unit_jy=sigma1, robust=0.0, imsize=512, cell_arcsec=10)
    assert briggs > natural * 1.05
    assert predicted_image_noise(vis.ms, sigma_unit_jy=sigma1, robust=5.0, imsize=512,
                                 cell_arcsec=10) == pytest.approx(natural, rel=2e-3)
    # uniform limit: each occupied cell gets the same total weight
    u = np.array([10.0, 10.2, 500.0]); v = np.zeros(3); w = np.ones(3)
    uw = briggs_weights(u, v, w, robust=-8.0, imsize=256, cell_arcsec=10)
    assert uw[0] + uw[1] == pytest.approx(uw[2], rel=1e-3)


# --- the imagers and their products ----------------------------------------------------------


@pytest.mark.slow
def test_products_have_the_standard_headers_and_pbcor_is_image_over_pb(images):
    from astropy.wcs import WCS

    for backend, result in images.items():
        p = result.products
        assert set(p) == {"image", "pbcor", "pb", "residual", "model", "psf", "components"}
        assert p["components"].name.endswith("-components.parquet")
        for kind, path in ((k, v) for k, v in p.items() if k != "components"):
            h = fits.getheader(path)
            for key in ("BUNIT", "BMAJ", "BMIN", "BPA", "DATE-OBS", "MJD-OBS", "TELESCOP", "OBSGEO-X",
                        "OBSGEO-Y", "OBSGEO-Z"):
                assert key in h, (backend, kind, key)
            assert h["CTYPE1"] == "RA---SIN" and h["CTYPE2"] == "DEC--SIN" and h["CTYPE3"] == "FREQ"
            assert h["CDELT3"] == pytest.approx(result.bandwidth_hz)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                WCS(h)
        img, pb, pbcor = (fits.getdata(p[k])[0, 0] for k in ("image", "pb", "pbcor"))
        inside = pb >= 0.2
        np.testing.assert_allclose(pbcor[inside], img[inside] / pb[inside], rtol=1e-6)
        assert np.all(np.isnan(pbcor[~inside]))
        h = fits.getheader(p["image"])
        bmin_pix = h["BMIN"] / h["CDELT2"]
        assert bmin_pix >= 3, f"{backend}: restoring beam minor axis spans {bmin_pix:.1f} pixels"


#: The header of a WSClean 3.1 image (HISTORY aside), as it writes it.
WSCLEAN_HEADER = [
    ("BSCALE", 1.0, ""), ("BZERO", 0.0, ""), ("BUNIT", "JY/BEAM", "Units are in Jansky per beam"),
    ("BMAJ", 0.0063497, ""), ("BMIN", 0.0034408, ""), ("BPA", -77.3774, ""), ("EQUINOX", 2000.0, "J2000"),
    ("BTYPE", "Intensity", ""), ("TELESCOP", "DSA_110", ""), ("OBSERVER", "DSA_110", ""),
    ("OBJECT", "meridian_icrs_mid", ""), ("ORIGIN", "WSClean", "W-stacking imager written by Andre Offringa"),
    ("CTYPE1", "RA---SIN", "Right ascension angle cosine"), ("CRPIX1", 17.0, ""), ("CRVAL1", 65.6145779, ""),
    ("CDELT1", -0.0015833, ""), ("CUNIT1", "deg", ""), ("CTYPE2", "DEC--SIN", "Declination angle cosine"),
    ("CRPIX2", 17.0, ""), ("CRVAL2", 54.5095752, ""), ("CDELT2", 0.0015833, ""), ("CUNIT2", "deg", ""),
    ("CTYPE3", "FREQ", "Central frequency"), ("CRPIX3", 1.0, ""), ("CRVAL3", 1488511352.53906, ""),
    ("CDELT3", 2929687.5, ""), ("CUNIT3", "Hz", ""), ("CTYPE4", "STOKES", ""), ("CRPIX4", 1.0, ""),
    ("CRVAL4", 1.0, ""), ("CDELT4", 1.0, ""), ("CUNIT4", "", ""), ("SPECSYS", "TOPOCENT", ""),
    ("DATE-OBS", "2026-11-25T08:00:06.4", ""), ("WSCDATAC", "DATA", ""), ("WSCVDATE", "2022-04-01", ""),
    ("WSCVERSI", "3.1.0", ""), ("WSCWEIGH", "Briggs'(0)", ""), ("WSCNITER", 100.0, ""), ("WSCNVIS", 360.0, ""),
]


def test_products_are_written_and_read_without_fits_warnings(tmp_path):
    """Issue 21, defect 3: the products kept WSClean's ORIGIN comment beside the longer value
    'dsa110-contimg (wsclean)', and astropy warned 'Card is too long, comment will be truncated' for
    each product written. Every key the products set has its own comment, and they read back
    without a FITSFixedWarning (no 'datfix': MJD-OBS is there with DATE-OBS)."""
    from astropy.io.fits.verify import VerifyWarning
    from astropy.time import Time
    from astropy.wcs import FITSFixedWarning

    from contimg.imaging.products import KINDS, write_products

    n = 32
    raw = {}
    for kind in ("image", "residual", "model", "psf"):
        header = fits.Header(WSCLEAN_HEADER)
        header.add_history("wsclean -j 2 -size 32 32 -scale 5.7asec -weight briggs 0.0 -pol I -data-column DATA")
        raw[kind] = tmp_path / f"raw-MFS-{kind}.fits"
        fits.PrimaryHDU(np.full((1, 1, n, n), 0.1, np.float32), header).writeto(raw[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        warnings.simplefilter("error", FITSFixedWarning)
        products = write_products(raw, tmp_path / "g", pb=np.full((n, n), 0.5), pblimit=0.2,
                                  freq_hz=1.4e9, bandwidth_hz=1.875e8,
                                  start=Time("2026-11-25T08:00:00", scale="utc"), backend="wsclean")
        for kind in KINDS:
            h = fits.getheader(products[kind])
            WCS(h)
            assert h["ORIGIN"] == "dsa110-contimg (wsclean)" and h.comments["ORIGIN"] == "pipeline (imager)"
            assert h["MJD-OBS"] == pytest.approx(Time("2026-11-25T08:00:00").mjd)
            assert all(len(card.image) == 80 for card in h.cards)
    assert not any(p.exists() for p in raw.values())


def _measure(result, source):
    """(peak, (dx, dy)): the pbcor peak near the source and the offset, pixels, of the centroid of its
    main lobe (pixels above half the peak) from the true position."""
    from astropy.wcs import WCS
    from scipy import ndimage

    h = fits.getheader(result.products["pbcor"])
    data = fits.getdata(result.products["pbcor"])[0, 0]
    x, y = WCS(h).celestial.all_world2pix([source.ra_deg], [source.dec_deg], 0)
    xi, yi, r = int(round(x[0])), int(round(y[0])), 10
    box = np.nan_to_num(data[yi - r:yi + r + 1, xi - r:xi + r + 1])
    peak = box.max()
    labels, _ = ndimage.label(box > 0.5 * peak)
    lobe = labels == labels[np.unravel_index(np.argmax(box), box.shape)]
    cy, cx = ndimage.center_of_mass(np.where(lobe, box, 0.0))
    return peak, (xi - r + cx - x[0], yi - r + cy - y[0])


@pytest.mark.slow
def test_both_imagers_recover_the_sky_and_agree(images, sky_ms):
    """Noise-free sky: pbcor peak = the truth's band/time-averaged flux (within 3 %), at the true
    position (within 0.1 beam); the two imagers agree within 3 % and 0.05 beam."""
    from contimg.calibration.model import read_geometry
    from contimg.imaging.primary_beam import source_apparent_flux
    from contimg.qa.sources import sample_image

    geometry = read_geometry(sky_ms)
    freqs = geometry.chan_freq_hz.ravel()
    apparent = source_apparent_flux(SKY, geometry, np.ones((len(geometry.times_s), len(freqs))), freqs)
    measured = {}
    for backend, result in images.items():
        pb = sample_image(result.products["pb"], [s.ra_deg for s in SKY], [s.dec_deg for s in SKY])
        h = fits.getheader(result.products["image"])
        beam_pix = h["BMIN"] / h["CDELT2"]
        for s, app, b in zip(SKY, apparent, pb):
            peak, (dx, dy) = _measure(result, s)
            assert peak == pytest.approx(app / b, rel=0.03), (backend, s.name)
            assert math.hypot(dx, dy) < 0.1 * beam_pix, (backend, s.name, dx, dy)
            measured[backend, s.name] = (peak, dx, dy, beam_pix)
    if len(images) == 2:
        for s in SKY:
            (p1, x1, y1, b), (p2, x2, y2, _) = measured["wsclean", s.name], measured["tclean", s.name]
            assert p1 == pytest.approx(p2, rel=0.03), s.name
            assert math.hypot(x1 - x2, y1 - y2) < 0.05 * b, s.name
        pbs = [fits.getdata(r.products["pb"]) for r in images.values()]
        np.testing.assert_allclose(pbs[0], pbs[1], atol=1e-6)


def test_both_imagers_restore_with_the_psf_fit_of_the_imaging_weights(images, sky_ms, tmp_path):
    """The restoring beam is ours, the same for both imagers, fitted to a PSF that is the imagers' own."""
    from contimg.imaging.noise import imaging_weights
    from contimg.imaging.restoring_beam import psf_centre, restoring_beam
    from contimg.imaging.visibilities import write_imaging_ms

    first = next(iter(images.values()))
    vis = write_imaging_ms(sky_ms, tmp_path / "v.ms", data_column="data", chan_avg=first.chan_avg)
    w = imaging_weights(vis.ms, robust=0.0, imsize=IMSIZE, cell_arcsec=CELL)
    major, minor, pa = restoring_beam(w.u, w.v, w.imaging, imsize=IMSIZE, cell_arcsec=CELL,
                                      resolution_arcsec=first.resolution_arcsec)
    half = 12
    ours = psf_centre(w.u, w.v, w.imaging, imsize=IMSIZE, cell_arcsec=CELL, half_pix=half)
    for backend, result in images.items():
        h = fits.getheader(result.products["image"])
        assert h["BMAJ"] * 3600 == pytest.approx(major, rel=1e-3) and h["BMIN"] * 3600 == pytest.approx(minor, rel=1e-3)
        assert (h["BPA"] - pa + 90) % 180 - 90 == pytest.approx(0, abs=0.01), backend
        assert tuple(result.restoring_beam_arcsec) == pytest.approx((h["BMAJ"] * 3600, h["BMIN"] * 3600, h["BPA"]))
        psf = fits.getdata(result.products["psf"]).squeeze()
        cy, cx = np.unravel_index(np.argmax(psf), psf.shape)
        diff = np.abs(psf[cy - half:cy + half + 1, cx - half:cx + half + 1] / psf[cy, cx] - ours)
        assert diff.max() < 0.05, f"{backend}: our PSF differs from the imager's by {diff.max():.3f}"


def test_wsclean_cleans_subbands_jointly_for_spectral_terms(tmp_path):
    from contimg.imaging.backends import CleanParameters, raw_products, tclean_parameters, wsclean_command

    flat = CleanParameters(imsize=64, cell_arcsec=5.0, spectral_terms=1, channels_out=1)
    sloped = CleanParameters(imsize=64, cell_arcsec=5.0, spectral_terms=2, channels_out=4)
    cmd = wsclean_command(tmp_path / "v.ms", tmp_path / "p", sloped)
    i = cmd.index("-channels-out")
    assert cmd[i:i + 5] == ["-channels-out", "4", "-join-channels", "-fit-spectral-pol", "2"]
    assert cmd[-1].endswith("v.ms") and "-channels-out" not in wsclean_command(tmp_path / "v.ms", tmp_path / "p", flat)
    assert raw_products("wsclean", tmp_path / "p", sloped)["residual"].name == "p-MFS-residual.fits"
    assert raw_products("wsclean", tmp_path / "p", flat)["residual"].name == "p-residual.fits"
    assert raw_products("tclean", tmp_path / "p", sloped)["image"].name == "p-image.fits"
    assert tclean_parameters(tmp_path / "v.ms", tmp_path / "p", sloped)["deconvolver"] == "mtmfs"
    assert tclean_parameters(tmp_path / "v.ms", tmp_path / "p", flat)["deconvolver"] == "hogbom"
    with pytest.raises(InvalidInputError, match="output channels"):
        CleanParameters(imsize=64, cell_arcsec=5.0, spectral_terms=3, channels_out=2)


def test_wsclean_speed_options_reach_the_command(tmp_path):
    from contimg.imaging.backends import CleanParameters, wsclean_command

    def value(cmd, flag):
        return cmd[cmd.index(flag) + 1] if flag in cmd else None

    fast = CleanParameters(imsize=64, cell_arcsec=5.0, spectral_terms=2, channels_out=4, deconvolution_channels=2,
                           padding=1.1, wgridder_accuracy=3e-3, baseline_averaging=4.0, parallel_gridding=2)
    cmd = wsclean_command(tmp_path / "v.ms", tmp_path / "p", fast)
    assert [value(cmd, f) for f in ("-deconvolution-channels", "-padding", "-wgridder-accuracy",
                                    "-baseline-averaging", "-parallel-gridding")] == ["2", "1.1", "0.003", "4", "2"]
    plain = wsclean_command(tmp_path / "v.ms", tmp_path / "p", CleanParameters(imsize=64, cell_arcsec=5.0))
    assert all(value(plain, f) is None for f in ("-baseline-averaging", "-deconvolution-channels",
                                                 "-parallel-gridding"))
    assert cmd[-1].endswith("v.ms") and cmd[-3] == "-name"
    with pytest.raises(InvalidInputError, match="deconvolution_channels"):
        CleanParameters(imsize=64, cell_arcsec=5.0, spectral_terms=2, channels_out=4, deconvolution_channels=1)
    flat = CleanParameters(imsize=64, cell_arcsec=5.0, deconvolution_channels=2)  # one term: nothing to fit
    assert "-deconvolution-channels" not in wsclean_command(tmp_path / "v.ms", tmp_path / "p", flat)


@pytest.mark.skipif(wsclean_path() is None, reason="WSClean not installed")
def test_an_ms_of_one_spw_is_imaged_whatever_its_channels(tmp_path, caplog):
    """Issue 21, defect 2: one SPW of 64 channels averaged to one; channels_out 4 made WSClean refuse
    ("4 output channels requested, but ... only 1 unique channels"). The sub-bands, spectral terms and
    deconvolution channels are at most the imaging MS's channels, and the log says so."""
    import logging

    from contimg.conversion.convert import convert_group
    from contimg.imaging.image import ImagingOptions, image_ms
    from contimg.simulate.group import transit_start_time

    start = transit_start_time(RA0, "2026-11-25", dec_deg=DEC0, n_times=6)
    g = simulate.simulate_group(tmp_path / "in", start, scale="small", subbands=[0], n_channels=64,
                                sources=SKY[:1], corruptions=Corruptions.none(), seed=3)
    ms = convert_group(g.group_id, {0: g.paths[0]}, products_dir=tmp_path / "prod", scratch_dir=tmp_path / "scratch",
                       expected_subbands=1).ms_path
    # chan_avg: 64 -> 1 channel, 32 -> 2, None -> the smearing budget's choice (8 -> 8 channels)
    for chan_avg, n_chan, asked in ((64, 1, (1, 1, 1)), (32, 2, (2, 2, 2)), (None, None, (4, 2, 2))):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="contimg.imaging.image"):
            r = image_ms(ms, tmp_path / f"avg{chan_avg}" / "one", options=ImagingOptions(
                backend="wsclean", data_column="data", imsize=256, niter=100, chan_avg=chan_avg, model_min_jy=0,
                selfcal=None))
        cmd = r.imager["command"]
        got = (int(cmd[cmd.index("-channels-out") + 1]) if "-channels-out" in cmd else 1,
               int(cmd[cmd.index("-fit-spectral-pol") + 1]) if "-fit-spectral-pol" in cmd else 1,
               int(cmd[cmd.index("-deconvolution-channels") + 1]) if "-deconvolution-channels" in cmd else None)
        lowered = [m for m in caplog.messages if "channel(s) after averaging" in m]
        if n_chan is None:
            assert 64 // r.chan_avg >= 4 and got == (4, 2, 2) and not lowered, (r.chan_avg, got, lowered)
        else:
            assert r.chan_avg == chan_avg and got[:2] == asked[:2], got
            assert got[2] is None  # deconvolution channels = channels_out: WSClean's default
            assert lowered == [f"{ms.name}: the imaging MS has {n_chan} channel(s) after averaging: imaging with "
                               f"channels_out {asked[0]}, spectral_terms {asked[1]}, deconvolution_channels "
                               f"{asked[2]} (asked: 4, 2, 2)"], caplog.messages
        image = fits.getdata(r.products["image"]).squeeze()
        assert image.shape == (256, 256) and np.isfinite(image).all() and np.nanmax(image) > 0.5


@pytest.mark.slow
@pytest.mark.skipif(wsclean_path() is None, reason="WSClean not installed")
def test_spectral_terms_clean_a_steep_source_off_axis(tmp_path):
    """An off-axis source whose apparent spectrum is steep (its index and the beam's slope): one flat
    clean term leaves its spectral error on the residual, two terms model it."""
    from contimg.imaging.image import ImagingOptions, image_ms

    steep = Source("steep", RA0, DEC0 + 0.45, 5.0, -2.0)
    ms, _ = _convert(tmp_path, "steep", [steep])
    floors = {}
    for terms in (1, 2):
        r = image_ms(ms, tmp_path / f"t{terms}" / "s", options=ImagingOptions(
            backend="wsclean", data_column="data", imsize=IMSIZE, cell_arcsec=CELL, niter=2000, model_min_jy=0,
            spectral_terms=terms, channels_out=4 if terms > 1 else 1))
        res = fits.getdata(r.products["residual"]).squeeze()
        h = fits.getheader(r.products["residual"])
        x, y = (int(round(float(v))) for v in WCS(h).celestial.all_world2pix([[steep.ra_deg, steep.dec_deg]], 0)[0])
        yy, xx = np.mgrid[:res.shape[0], :res.shape[1]]
        far = np.hypot(xx - x, yy - y) > 3 * h["BMAJ"] / h["CDELT2"]
        floors[terms] = float(np.abs(res[far]).max())
    assert floors[2] < floors[1] / 2, floors


@pytest.mark.slow
def test_casa_importfits_reads_the_products_back(images, tmp_path):
    from contimg.casa import run_casa_task

    result = next(iter(images.values()))
    out = tmp_path / "back.image"
    run_casa_task("importfits", log_path=tmp_path / "importfits.log", fitsimage=str(result.products["pbcor"]),
                  imagename=str(out))
    from casacore.images import image

    im = image(str(out))
    assert im.shape()[-2:] == [IMSIZE, IMSIZE]
    assert im.imageinfo()["restoringbeam"]["major"]["value"] > 0


@pytest.mark.slow
@pytest.mark.skipif(wsclean_path() is None, reason="wsclean is not installed")
def test_image_group_records_products_metrics_and_stage(settings, sky_ms):
    from catalog import query as cq
    from contimg.imaging.image import ImagingOptions
    from tasks.imaging import image_group

    done = image_group(settings, sky_ms, options=ImagingOptions(
        data_column="data", imsize=IMSIZE, cell_arcsec=CELL, niter=300, model_min_jy=0), find_sources=True)
    rows = cq.query(settings.catalog_dir, "SELECT type, data_column, noise_jy, predicted_noise_jy FROM images").to_pylist()
    assert {r["type"] for r in rows} >= {"image", "pbcor", "pb", "residual", "model", "psf", "png", "sources"}
    assert all(r["data_column"] == "DATA" for r in rows)
    stage = cq.query(settings.catalog_dir, "SELECT stage, image_name FROM ms_index").to_pylist()
    assert stage[0]["stage"] == "imaged"
    metrics = {r["metric"] for r in cq.query(settings.catalog_dir,
                                              "SELECT metric FROM qa_metrics WHERE subject_type = 'image'").to_pylist()}
    assert {"noise_inner_jy", "dynamic_range", "predicted_noise_jy", "imaging/imager", "clean_diverged"} <= metrics
    assert done.result.imager["clean"]["diverged"] is False  # 300 iterations: stopped at the limit, near the threshold
    assert done.thumbnail.exists() and done.thumbnail.stat().st_size > 10_000
    found = __import__("pyarrow.parquet").parquet.read_table(done.sources)
    assert found.num_rows >= len(SKY)


def test_cli_image_of_unwritten_corrected_data_is_one_line(sky_ms, capsys, settings, monkeypatch):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    code = main(["image", str(sky_ms), "--backend", "tclean"])
    err = capsys.readouterr().err
    assert code == 2 and "--data-column data" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_qa_of_an_image_product_prints_metrics_and_writes_the_thumbnail(images, tmp_path, capsys):
    from contimg_cli.main import main

    result = next(iter(images.values()))
    assert main(["qa", str(result.products["residual"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "noise_inner_jy" in out and "pbcor_blank_ok           True" in out
    png = tmp_path / f"{result.products['image'].name[:-len('-image.fits')]}-pbcor.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["qa", str(tmp_path / "nothing.fits")]) == 2


#: The ends of real WSClean logs: a converged clean that met the iteration limit near its threshold, and two
#: that diverged on sparse-array groups (a 39-antenna night: a flare measured 40 % low in the second image;
#: a noise-free 12-antenna group, benchmarks/isolated_sources.py: a source at 5x its flux in the third).
_CONVERGED_AT_LIMIT = """Next major iteration at: 639.65 mJy
Stopped on peak 623.92 mJy, because the minor-loop threshold was reached. Continuing cleaning after inversion/prediction round.
Major iteration threshold reached global threshold of 4.99 mJy: final major iteration.
Stopped on peak -6.4 mJy, because maximum number of iterations was reached.
"""
_DIVERGED = ["""Next major iteration at: 49.23 mJy
Stopped on peak 49.21 mJy, because the minor-loop threshold was reached. Continuing cleaning after inversion/prediction round.
2026-Dec-07 16:46:27.329428 Major iteration threshold reached global threshold of 24.08 mJy: final major iteration.
2026-Dec-07 16:46:31.240789 Stopped on peak 889.34 mJy, because maximum number of iterations was reached.
""", """Major iteration threshold reached global threshold of 15.15 mJy: final major iteration.
Stopped on peak -33.24 mJy, because maximum number of iterations was reached.
""", """Major iteration threshold reached global threshold of 72.96 mJy: final major iteration.
Stopped on peak 72.86 mJy, because the threshold was reached.
Auto-masking threshold reached; continuing next major iteration with deeper threshold and mask.
Next major iteration at: 8.05 mJy
Stopped on peak -8.05 mJy, because the minor-loop threshold was reached. Continuing cleaning after inversion/prediction round.
Next major iteration at: 21.59 mJy
Stopped on peak -21.55 mJy, because the minor-loop threshold was reached. Continuing cleaning after inversion/prediction round.
Next major iteration at: 131.48 mJy
Stopped on peak -255.51 mJy, because maximum number of iterations was reached.
"""]


def test_a_clean_that_grew_its_residual_is_reported_diverged():
    from contimg.imaging.backends import clean_stop

    ok = clean_stop(_CONVERGED_AT_LIMIT)
    assert ok["diverged"] is False and ok["stop_peak_jy"] == pytest.approx(-6.4e-3)
    assert ok["threshold_jy"] == pytest.approx(4.99e-3) and "maximum number of iterations" in ok["reason"]
    first, second, across_cycles = (clean_stop(text) for text in _DIVERGED)
    assert first["diverged"] and first["stop_peak_jy"] == pytest.approx(0.88934) and first["threshold_jy"] == pytest.approx(0.02408)
    assert second["diverged"] and second["stop_peak_jy"] == pytest.approx(-0.03324)
    # each major cycle started from a larger residual than the last (8 -> 22 -> 131 mJy)
    assert across_cycles["diverged"] and across_cycles["threshold_jy"] == pytest.approx(8.05e-3)
    assert clean_stop("Stopped on peak 12.1 mJy, because the threshold was reached.\n")["diverged"] is False
    assert clean_stop("no clean here") == {}


# --- contimg image --out: an ad-hoc image is not the pipeline's product ----------------------------


GROUP = "2026-11-25T08:00:00"


def _synthetic_imager(tmp_path):
    """An ``image_ms`` stand-in: one synthetic group's products (:mod:`contimg.simulate.images`, seconds)
    copied to the prefix it is asked for, so the recording of :func:`tasks.imaging.image_group` is tested
    without an imager."""
    import shutil

    from astropy.time import Time

    from contimg import naming
    from contimg.imaging.grid import ImageGrid
    from contimg.imaging.image import ImageResult
    from contimg.simulate.images import write_group_images

    def image_ms(ms, prefix, **_):
        (g,) = write_group_images(tmp_path / "synthetic", [(120.0, 54.6, 0.1)], start=GROUP, n_groups=1,
                                  imsize=128, dec_deg=54.6, ra0_deg=120.0)
        products = {}
        for kind in ("image", "pbcor", "pb", "residual", "model", "psf"):
            products[kind] = naming.image_product_path(prefix, kind)
            products[kind].parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(naming.image_product_path(g.prefix, kind), products[kind])
        return ImageResult(ms=Path(ms), backend="synthetic", data_column="DATA", products=products,
                           grid=ImageGrid(g.ra_deg, g.dec_deg, 90.0, 128), resolution_arcsec=g.beam_arcsec[0],
                           restoring_beam_arcsec=g.beam_arcsec, freq_hz=1.4e9, bandwidth_hz=1.9e8,
                           start=Time("2026-11-25T08:00:00", scale="utc"), integration_s=309.0, chan_avg=1,
                           smearing_loss=0.0, flagged_fraction=0.0, predicted_noise_jy=g.noise_jy)

    return image_ms


@pytest.fixture
def imaged_group(settings, monkeypatch, tmp_path):
    """A group the pipeline imaged (its ``ms_index`` and ``images`` rows), an MS of it and a fake imager."""
    from catalog import store
    from contimg import naming

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    monkeypatch.setattr("tasks.imaging.image_ms", _synthetic_imager(tmp_path))
    ms = naming.ms_path(settings.products_dir, GROUP)
    ms.mkdir(parents=True)
    (ms / "table.dat").touch()
    prefix = naming.image_prefix(settings.products_dir, GROUP)
    date = naming.group_date(GROUP)
    store.append(settings.catalog_dir, "ms_index", [{"group_id": GROUP, "obs_date": date, "path": str(ms),
                                                     "stage": "archived", "image_name": str(prefix)}])
    store.append(settings.catalog_dir, "images", [{"group_id": GROUP, "obs_date": date, "type": kind,
                                                   "path": str(naming.image_product_path(prefix, kind))}
                                                  for kind in ("image", "pb")])
    return ms, prefix


def _catalog(settings):
    from catalog import query as cq
    from tasks.records import latest_ms

    images = cq.query(settings.catalog_dir, "SELECT path FROM images").to_pylist()
    return latest_ms(settings, GROUP), {r["path"] for r in images}


def test_cli_image_out_elsewhere_leaves_the_catalog_naming_the_pipeline_product(imaged_group, settings, tmp_path,
                                                                                capsys):
    """``contimg image --out SCRATCH`` writes and measures the image but records nothing: ms_index keeps its
    stage and image_name, no images (or sources) rows name the scratch files, and the command says so."""
    from contimg_cli.main import main

    ms, prefix = imaged_group
    before = _catalog(settings)
    scratch = tmp_path / "scratch"
    assert main(["image", str(ms), "--out", str(scratch), "--no-selfcal"]) == 0
    assert (scratch / "2026-11-25T080000-pbcor.fits").exists() and (scratch / "2026-11-25T080000-pbcor.png").exists()
    after = _catalog(settings)
    assert after[0]["image_name"] == str(prefix) and after[0]["stage"] == "archived"
    assert after == before
    out = capsys.readouterr().out
    assert f"not recorded in the catalog: {scratch}" in out and f"still {prefix}" in out


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "out-is-the-image-dir"])
def test_cli_image_into_the_image_dir_is_recorded(imaged_group, settings, capsys, explicit):
    """Without --out (or with naming's own image directory) the image is the group's product, as before."""
    from contimg import naming
    from contimg_cli.main import main

    ms, prefix = imaged_group
    extra = ["--out", str(naming.image_dir(settings.products_dir, GROUP))] if explicit else []
    assert main(["image", str(ms), "--no-selfcal", *extra]) == 0
    assert "not recorded" not in capsys.readouterr().out
    row, paths = _catalog(settings)
    assert row["image_name"] == str(prefix) and row["stage"] == "imaged"
    assert str(naming.image_product_path(prefix, "pbcor")) in paths and str(naming.image_product_path(prefix, "png")) in paths
