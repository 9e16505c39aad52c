"""Forced photometry of a real small simulated group image against the simulator's truth, through the pipeline's
tasks: image_group records the sources, task_photometry measures the image and records the photometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contimg import naming

#: The small group's image centre (256 pixels of 5.5": 0.39 deg across; beam ~58" x 15", noise ~4.5 mJy).
RA0, DEC0 = 149.9965, 54.7073


@pytest.fixture(scope="module")
def imaged(tmp_path_factory):
    """A small group with thermal noise and 16 point sources of 12-130 sigma on the image (no gain errors: the
    truth holds), converted and imaged by image_group with source finding, in a fresh pipeline base directory."""
    from contimg import simulate
    from contimg.config import load_settings
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.imaging.image import ImagingOptions
    from contimg.simulate.corruptions import Corruptions
    from contimg.simulate.group import transit_start_time
    from contimg.sky.source import Source
    from tasks.imaging import image_group

    base = tmp_path_factory.mktemp("phot_group")
    settings = load_settings(environ={}, base_dir=base / "data")
    settings.ensure_dirs()
    start = transit_start_time(150.0, "2026-11-25", dec_deg=54.5734, n_times=4)
    corruptions = Corruptions(delays=False, bandpass=False, gains=False, rfi=False, dead_antennas=0,
                              flagged_antennas=0)
    grid = [(0.08 * (i - 1.5), 0.08 * (j - 1.5), 0.15 * 10 ** ((4 * i + j) / 15)) for i in range(4) for j in range(4)]
    sky = [Source(f"P{k:02d}", RA0 + dx / math.cos(math.radians(DEC0)), DEC0 + dy, flux, -0.7)
           for k, (dx, dy, flux) in enumerate(grid)]
    g = simulate.simulate_group(settings.incoming_dir, start, antennas=tuple(range(0, 117, 4)), n_channels=4,
                                n_times=4, seed=3, corruptions=corruptions, sources=sky)
    (found,) = discover_groups(settings.incoming_dir, settle_s=0)
    done = convert_group(g.group_id, found.files, products_dir=settings.products_dir,
                         scratch_dir=settings.scratch_dir)
    image = image_group(settings, done.ms_path, options=ImagingOptions(data_column="data", imsize=256, niter=2000),
                        find_sources=True)
    return dict(settings=settings, group_id=g.group_id, ms=done.ms_path, image=image)


def test_forced_photometry_matches_the_truth(imaged):
    from contimg.photometry.forced import measure
    from contimg.qa.truth_sky import truth_table

    settings, image = imaged["settings"], imaged["image"]
    products = image.result.products
    truth = truth_table(naming.truth_path(settings.incoming_dir, imaged["group_id"]), imaged["ms"], products,
                        noise_jy=image.metrics["noise_inner_jy"])
    forced = measure(products["pbcor"], truth["ra_deg"], truth["dec_deg"], pb_fits=products["pb"])
    good = np.array([not f for f in forced.flags])
    bright = good & (forced.snr > 20)
    assert bright.sum() >= 3
    ratio = forced.peak_jy[bright] / truth["expected_flux_jy"][bright]
    assert np.all(np.abs(ratio - 1) < 0.03 + 3 * forced.rms_jy[bright] / truth["expected_flux_jy"][bright])
    assert abs(np.median(ratio) - 1) < 0.03
    dev = ((forced.peak_jy - truth["expected_flux_jy"]) / forced.rms_jy)[good]
    assert 0.5 < np.mean(dev**2) < 2.0, (np.mean(dev**2), dev.size)


def test_sources_and_photometry_rows_of_the_group(imaged):
    import pyarrow.parquet as pq

    from catalog import query as cq
    from tasks.photometry import task_photometry

    settings, group_id = imaged["settings"], imaged["group_id"]
    pbcor = str(imaged["image"].result.products["pbcor"])
    rows = cq.query(settings.catalog_dir, "SELECT * FROM sources WHERE image_path = ?", [pbcor])
    assert rows.num_rows == pq.read_table(imaged["image"].sources).num_rows > 0
    assert set(rows.column("image_kind").to_pylist()) == {"group"}
    assert set(rows.column("group_id").to_pylist()) == {group_id}
    # the default reference: this group's own detections (no mosaic yet), measured by the flow's task
    out = task_photometry.fn(settings, group_id)
    assert out["status"] == "measured" and out["reference"].startswith("default: group detections")
    phot = cq.query(settings.catalog_dir, "SELECT * FROM photometry WHERE group_id = ?", [group_id]).to_pylist()
    assert len(phot) == out["n"] >= rows.num_rows - 1
    assert all(r["image_path"] == pbcor and r["source_name"].startswith("J") for r in phot)
    by_pos = {round(r["ra_deg"], 6): r for r in phot}
    for s in rows.to_pylist():  # each detection measured at its own position: the same brightness
        r = by_pos.get(round(s["ra_deg"], 6))
        if r is not None and not r["flags"] and s["snr"] > 20:
            assert abs(r["peak_jy"] / r["flux_scale"] / s["peak_pixel_jy"] - 1) < 0.08



def test_measurements_of_a_diverged_clean_are_flagged(imaged, tmp_path):
    """An image whose clean diverged (qa_metrics clean_diverged, recorded by image_group) flags every row measured
    on it, so the variability view leaves it out; the group's own image converged."""
    from catalog import store
    from tasks import records
    from tasks.photometry import image_flags, photometer_group

    settings, group_id = imaged["settings"], imaged["group_id"]
    assert image_flags(settings, group_id) == []
    assert imaged["image"].result.imager["clean"]["diverged"] is False
    store.append(settings.catalog_dir, "qa_metrics", records.qa_rows(
        str(imaged["image"].result.products["pbcor"]), "image", group_id, "image", {"clean_diverged": True}))
    assert image_flags(settings, group_id) == ["clean_diverged"]
    done = photometer_group(settings, group_id, record=False)
    assert done.rows and all("clean_diverged" in r["flags"] for r in done.rows)
