"""1 Jy sources at the beam edge beside a bright source, on a sparse (39-antenna) array, imaged with the
pipeline's settings: their pb-corrected peaks match the truth, whether they are fitted through the drifting
beam (the default: above ``imaging_bright_source_snr``) or cleaned (a threshold above them).

The case that found WSClean's ``-mgain 0.95`` too deep (benchmarks/RESULTS.md, "Variability on a
simulated night"): the 12:24:40 group of the demo night, 13 min after J0834+5534's transit, with the
night's three calibrators and five 1 Jy sources 1.9 deg west of the pointing (primary beam 0.2-0.4), only
thermal noise added. J0834+5534 (8.8 Jy, 2.2 Jy apparent) is fitted through the drifting beam and
subtracted before the final pass; with mgain 0.95 that pass's first minor loop cleaned to 5 % of the peak
and put the 1 Jy sources at 0.86-0.88 of the truth (mgain 0.9, 0.85 and 0.8: 0.99-1.03), in a converged
clean with no residual left at them. Cleaned with mgain 0.9 they read 3-4 % high (their neighbours' drift
through the beam edge, which a constant clean model cannot follow, leaves sidelobes at them); fitted, within
1 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from contimg.imaging.backends import wsclean_path
from contimg.sky.source import Source

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not wsclean_path(), reason="WSClean is not installed")]

START = "2026-11-25T12:24:40"
DEC0 = 54.5734
SKY = (
    Source("J0834+5534", 128.72876715416666, 55.57251971666667, 8.8, -0.355),
    Source("J0847+5723", 131.86691682916663, 57.393981375, 0.37, -0.165),
    Source("J0903+5151", 135.9940600708333, 51.85018378611111, 0.32, -0.051),
    Source("J0854+5757", 133.6749849375, 57.958316466666666, 0.8, 0.093),
    *(Source(f"EDGE{i}", ra, dec, 1.0, 0.0) for i, (ra, dec) in enumerate((
        (129.5220625692334, 54.0734), (128.65948727076682, 54.2734), (129.09077492000011, 53.7734),
        (129.7808351587734, 53.8734), (128.40071468122682, 53.9734)))),
)


@pytest.fixture(scope="module")
def group_ms(tmp_path_factory):
    from contimg.conversion.convert import convert_group
    from contimg.simulate import scale_preset, simulate_group
    from contimg.simulate.corruptions import Corruptions

    tmp = tmp_path_factory.mktemp("faint_beside_bright")
    noise_only = Corruptions(delays=False, bandpass=False, gains=False, rfi=False, dead_antennas=0,
                             flagged_antennas=0)
    group = simulate_group(tmp / "in", START, pointing_dec_deg=DEC0, sources=SKY, corruptions=noise_only,
                           seed=0, **scale_preset("medium"))
    ms = convert_group(group.group_id, dict(zip(group.subbands, group.paths)), products_dir=tmp / "prod",
                       scratch_dir=tmp / "scr").ms_path
    return group, ms, tmp


@pytest.mark.parametrize("bright_source_snr, tolerance", [(None, 0.02), (300.0, 0.05)],
                         ids=["default-fitted", "cleaned"])
def test_faint_sources_beside_a_fitted_bright_source_keep_their_flux(group_ms, bright_source_snr, tolerance):
    from dataclasses import replace

    from contimg.config import Settings
    from contimg.imaging.image import ImagingOptions, image_ms
    from contimg.photometry.forced import measure
    from contimg.qa.truth_sky import truth_table

    group, ms, tmp = group_ms
    options = ImagingOptions.from_settings(Settings(), data_column="data")
    if bright_source_snr is not None:
        options = replace(options, bright_source_snr=bright_source_snr)
    result = image_ms(ms, tmp / f"img-{bright_source_snr}" / "g", options=options)
    fitted = {s["name"] for s in result.bright_sources.get("sources", []) if s["fitted"]}
    assert "J0834+5534" in fitted

    truth = truth_table(group.truth_path, ms, result.products, noise_jy=result.predicted_noise_jy)
    expected = dict(zip(truth["name"], truth["expected_flux_jy"]))
    edge = [s for s in SKY if s.name.startswith("EDGE") and s.name in expected]
    forced = measure(result.products["pbcor"], [s.ra_deg for s in edge], [s.dec_deg for s in edge],
                     pb_fits=result.products["pb"])
    ratios = np.array(forced.peak_jy) / np.array([expected[s.name] for s in edge])
    snr = np.array(forced.peak_jy) / np.array(forced.rms_jy)
    for s, r, q, pb in zip(edge, ratios, snr, forced.pb_response):
        print(f"{s.name}: pb {pb:.2f}, SNR {q:.0f}, peak / truth {r:.3f}")
    print(f"fitted through the drifting beam: {sorted(fitted)}")
    bright = snr > 50  # 0.6-1 % noise; the mgain 0.95 failure was 12-14 % low
    assert bright.sum() >= 3
    assert np.all(np.abs(ratios[bright] - 1.0) < tolerance), ratios
    if bright_source_snr is None:  # by default they are fitted too (as their clean islands, named cc...)
        assert len(fitted) >= 1 + bright.sum()
