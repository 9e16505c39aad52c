"""Sidelobe suspects: a detection that a brighter source's PSF sidelobe could have made is marked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from contimg.errors import InvalidInputError
from contimg.qa.crossmatch import crossmatch
from contimg.qa.sidelobes import flag_sidelobe_suspects, sidelobe_levels

N = 256
CELL_ARCSEC = 6.0
BMAJ, BMIN = 30.0, 18.0  # arcsec: 5 x 3 pixels


def _header(n=N, cell=CELL_ARCSEC):
    h = fits.Header()
    for i, (ctype, crval, cdelt) in enumerate((("RA---SIN", 128.7, -cell / 3600), ("DEC--SIN", 54.6, cell / 3600)), 1):
        h[f"CTYPE{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"], h[f"CRPIX{i}"], h[f"CUNIT{i}"] = ctype, crval, cdelt, n // 2 + 1, "deg"
    h["BMAJ"], h["BMIN"], h["BPA"], h["BUNIT"] = BMAJ / 3600, BMIN / 3600, 0.0, "Jy/beam"
    return h


def _psf():
    """A T-array-like snapshot PSF: a core, a 2.5 % column sidelobe 60-100 px out, a 10 % row one 20-40 px out."""
    y, x = np.mgrid[0:N, 0:N] - N // 2
    psf = np.exp(-0.5 * ((x / 1.3) ** 2 + (y / 2.1) ** 2))
    psf[(np.abs(x) <= 2) & (np.abs(y) >= 60) & (np.abs(y) <= 100)] = 0.025
    psf[(np.abs(y) <= 2) & (np.abs(x) >= 20) & (np.abs(x) <= 40)] = -0.10
    return psf


@pytest.fixture
def products(tmp_path):
    fits.writeto(tmp_path / "image.fits", np.zeros((N, N), np.float32), _header())
    fits.writeto(tmp_path / "psf.fits", _psf().astype(np.float32), _header())
    return tmp_path / "image.fits", tmp_path / "psf.fits"


def _sources(pixels_and_peaks):
    wcs = WCS(_header())
    x, y, peak = (np.array(v, dtype=float) for v in zip(*pixels_and_peaks))
    ra, dec = wcs.pixel_to_world_values(x, y)
    return pa.table({"ra_deg": ra, "dec_deg": dec, "peak_flux_jy_per_beam": peak, "snr": peak / 3e-4})


# (x, y) pixels and image-plane peak, Jy/beam
BRIGHT = (128, 200, 6.0)
ON_COLUMN_FAINT = (129, 120, 0.004)    # 80 px south of BRIGHT: sidelobe 6 Jy x 2.5 % = 150 mJy, 2.7 % of it
ON_COLUMN_REAL = (128, 110, 0.015)     # 90 px south: 10 % of the sidelobe: a source
ON_ROW_FAINT = (98, 200, 0.040)        # 30 px west: under the 10 % (600 mJy) row sidelobe, 6.7 % of it
ELSEWHERE = (40, 40, 0.002)            # off the PSF's arms
NEIGHBOUR = (130, 201, 0.5)            # inside BRIGHT's main lobe: not a sidelobe question


def test_sidelobe_levels_follow_the_psf_arms_and_skip_the_main_lobe():
    rows = [BRIGHT, ON_COLUMN_FAINT, ON_COLUMN_REAL, ON_ROW_FAINT, ELSEWHERE, NEIGHBOUR]
    x, y, peak = (np.array(v, dtype=float) for v in zip(*rows))
    levels = sidelobe_levels(x, y, peak, np.abs(_psf()), main_lobe_pix=7.5, radius_pix=1.5)
    assert levels[0] == 0, "nothing brighter than the brightest"
    assert levels[1] == pytest.approx(6.0 * 0.025) and levels[2] == pytest.approx(6.0 * 0.025)
    assert levels[3] == pytest.approx(6.0 * 0.10)
    assert levels[4] == pytest.approx(0.0, abs=1e-9)
    assert levels[5] == 0, "the main lobe is skipped"


def test_flag_marks_only_the_faint_detection_on_a_sidelobe(products):
    image, psf = products
    rows = [BRIGHT, ON_COLUMN_FAINT, ON_COLUMN_REAL, ON_ROW_FAINT, ELSEWHERE, NEIGHBOUR]
    out = flag_sidelobe_suspects(_sources(rows), image, psf)
    assert out.column("sidelobe_suspect").to_pylist() == [False, True, False, False, False, False]
    assert out.column("sidelobe_jy_per_beam")[1].as_py() == pytest.approx(0.15)
    looser = flag_sidelobe_suspects(_sources(rows), image, psf, fraction=0.08)
    assert looser.column("sidelobe_suspect").to_pylist() == [False, True, False, True, False, False]


def test_crossmatch_counts_suspects_apart(products):
    image, psf = products
    found = flag_sidelobe_suspects(_sources([BRIGHT, ON_COLUMN_FAINT, ON_COLUMN_REAL, ELSEWHERE]), image, psf)
    truth = _sources([BRIGHT, ON_COLUMN_REAL, ELSEWHERE])  # the faint one on the column is not in the sky
    truth = truth.append_column("name", pa.array(["a", "b", "c"])).append_column(
        "expected_flux_jy", truth.column("peak_flux_jy_per_beam"))
    m = crossmatch(found, truth, beam_major_arcsec=BMAJ, beam_minor_arcsec=BMIN, beam_pa_deg=0.0,
                   flux_column="peak_flux_jy_per_beam")
    assert (m.n_false, m.false_fraction) == (1, 0.25)
    assert (m.n_suspect, m.n_false_suspect, m.false_fraction_unsuspected) == (1, 1, 0.0)
    plain = crossmatch(found.drop_columns(["sidelobe_suspect"]), truth, beam_major_arcsec=BMAJ,
                       beam_minor_arcsec=BMIN, flux_column="peak_flux_jy_per_beam")
    assert (plain.n_suspect, plain.false_fraction_unsuspected) == (0, 0.25)


def test_an_empty_table_and_bad_inputs(products, tmp_path):
    image, psf = products
    empty = _sources([BRIGHT]).slice(0, 0)
    out = flag_sidelobe_suspects(empty, image, psf)
    assert out.num_rows == 0 and "sidelobe_suspect" in out.column_names
    with pytest.raises(InvalidInputError, match="fraction"):
        flag_sidelobe_suspects(empty, image, psf, fraction=5)
    fits.writeto(tmp_path / "coarse_psf.fits", _psf().astype(np.float32), _header(cell=12.0))
    with pytest.raises(InvalidInputError, match="not the same grid"):
        flag_sidelobe_suspects(empty, image, tmp_path / "coarse_psf.fits")
