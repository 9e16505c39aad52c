"""The catalog's ``sources`` and ``photometry`` tables: rows from source tables, the one-query questions of
docs/catalog.md, the default reference list, recording forced photometry, the task that never fails a group,
and ``contimg photometry``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from test_photometry import make_field

from catalog import query as cq
from contimg import naming
from contimg.photometry.reference import from_detections, read_reference, source_name
from contimg.qa.sources import SCHEMA
from tasks import photometry as tp

DOCS = Path(__file__).resolve().parents[1] / "docs" / "catalog.md"
NIGHT = "2026-11-25"


def found_table(ra, dec, peak, *, suspect=None, pb=None) -> pa.Table:
    """A source table as contimg.qa.sources.image_sources returns it (pbcor fluxes, suspects, peak pixel)."""
    n = len(ra)
    cols = {f.name: [None] * n for f in SCHEMA}
    cols.update(source_id=list(range(n)), island_id=list(range(n)), n_gaussians=[1] * n, code=["S"] * n,
                ra_deg=list(ra), dec_deg=list(dec), ra_err_deg=[1 / 3600] * n, dec_err_deg=[2 / 3600] * n,
                total_flux_jy=list(peak), total_flux_err_jy=[1e-3] * n, peak_flux_jy_per_beam=list(peak),
                peak_flux_err_jy_per_beam=[1e-3] * n, rms_jy_per_beam=[1e-3] * n,
                snr=[p / 1e-3 * (pb[i] if pb else 1) for i, p in enumerate(peak)],
                pb_response=list(pb) if pb else [1.0] * n, major_arcsec=[60.0] * n, minor_arcsec=[30.0] * n,
                pa_deg=[0.0] * n)
    table = pa.table(cols, schema=SCHEMA)
    table = table.append_column("sidelobe_suspect", pa.array(suspect if suspect else [False] * n))
    table = table.append_column("sidelobe_jy_per_beam", pa.array([0.0] * n))
    return table.append_column("peak_pixel_jy_per_beam", pa.array([0.99 * p for p in peak]))


def _sql_blocks():
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)


def test_sources_rows_and_the_one_query_question(settings):
    # two groups tonight and one the night before; a sidelobe suspect and faint sources among them
    tp.record_sources(settings, found_table([150.0, 150.1, 150.2], [54.0, 54.1, 54.2], [0.020, 0.005, 0.015],
                                            suspect=[False, False, True], pb=[1.0, 0.5, 0.8]),
                      image_path="/img/a-pbcor.fits", image_kind="group", group_id=f"{NIGHT}T01:00:00",
                      mid_mjd=61369.04, obs_date=NIGHT)
    tp.record_sources(settings, found_table([150.0], [54.0], [0.030]), image_path="/img/b-pbcor.fits",
                      image_kind="group", group_id=f"{NIGHT}T01:05:00", mid_mjd=61369.05, obs_date=NIGHT)
    tp.record_sources(settings, found_table([150.0], [54.0], [0.040]), image_path="/img/c-pbcor.fits",
                      image_kind="group", group_id="2026-11-24T01:00:00", mid_mjd=61368.04, obs_date="2026-11-24")
    rows = cq.query(settings.catalog_dir, "SELECT * FROM sources ORDER BY image_path, source_id").to_pylist()
    assert len(rows) == 5
    first = rows[0]
    assert first["image_kind"] == "group" and first["group_id"] == f"{NIGHT}T01:00:00"
    assert first["ra_err_arcsec"] == pytest.approx(1.0) and first["peak_pixel_jy"] == pytest.approx(0.0198)
    assert rows[1]["local_rms_jy"] == pytest.approx(2e-3)  # the flat-noise rms over pb 0.5
    assert [r["suspect"] for r in rows[:3]] == [False, False, True]
    [block] = [b for b in _sql_blocks() if "suspect IS NOT TRUE" in b]
    answer = cq.query(settings.catalog_dir, block.replace("2026-11-25", NIGHT)).to_pylist()
    assert [(r["image_path"], r["peak_jy"]) for r in answer] == [("/img/b-pbcor.fits", 0.030),
                                                                 ("/img/a-pbcor.fits", 0.020)]
    # the same image recorded again (a re-run): its latest rows are the current ones
    tp.record_sources(settings, found_table([150.0], [54.0], [0.025]), image_path="/img/b-pbcor.fits",
                      image_kind="group", group_id=f"{NIGHT}T01:05:00", mid_mjd=61369.05, obs_date=NIGHT)
    again = cq.query(settings.catalog_dir, "SELECT peak_jy FROM sources WHERE image_path = '/img/b-pbcor.fits'")
    assert again.column("peak_jy").to_pylist() == [0.025]


def test_names_and_detections_to_references():
    assert source_name([128.5514, 0.0], [55.5670, -0.5]) == ["J083412.33+553401.2", "J000000.00-003000.0"]
    # three epochs of two sources; the first detection names and places each one
    ra = np.array([150.0, 150.5, 150.0 + 2 / 3600, 150.5 - 3 / 3600, 150.0 - 1 / 3600])
    dec = np.array([54.0, 54.0, 54.0, 54.0 + 1 / 3600, 54.0])
    mjd = np.array([2.0, 2.0, 1.0, 3.0, 3.0])
    ref = from_detections(ra, dec, mjd, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), radius_arcsec=10.0, label="t")
    assert len(ref) == 2
    first = int(np.argmin(np.abs(ref.ra_deg - 150.0)))
    assert ref.ra_deg[first] == pytest.approx(150.0 + 2 / 3600)  # the epoch-1 detection
    assert ref.name[first] == source_name(150.0 + 2 / 3600, 54.0)[0]
    assert sorted(ref.flux_jy) == [3.0, 3.0]


def test_reference_files(tmp_path):
    csv = tmp_path / "refs.csv"
    csv.write_text("Name,RA_deg,Dec_deg\nA,150.0,54.0\nB,151.0,55.0\n")
    ref = read_reference(csv)
    assert list(ref.name) == ["A", "B"] and np.isnan(ref.flux_jy).all() and ref.label == str(csv.resolve())
    pq_path = tmp_path / "refs.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["A"], "ra_deg": [1.0], "dec_deg": [2.0], "flux_jy": [0.5]}), pq_path)
    assert read_reference(pq_path).flux_jy.tolist() == [0.5]
    for text, match in (("name,ra\nA,1\n", "no column ra_deg, dec_deg"), ("name,ra_deg,dec_deg\nA,1,95\n", "no valid"),
                        ("name,ra_deg,dec_deg\nA,1,2\nA,3,4\n", "repeated"), ("name,ra_deg,dec_deg\nA,x,2\n",
                                                                              "not numeric|not a readable")):
        csv.write_text(text)
        with pytest.raises(Exception, match=match):
            read_reference(csv)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception, match="not a readable reference list"):
        read_reference(tmp_path / "junk.parquet")


@pytest.fixture
def field(tmp_path):
    image, pb, truth = make_field(tmp_path / "img", seed=7)
    for path in (image, pb):
        fits.setval(path, "MJD-OBS", value=61369.04)
        fits.setval(path, "DATE-OBS", value="2026-11-25T00:57:36")
    return image, pb, truth


def test_default_reference_prefers_mosaic_detections(settings, field):
    image, pb, truth = field
    assert tp.default_reference(settings, image) is None  # an empty catalog: no default
    ra, dec = truth["ra_deg"], truth["dec_deg"]
    tp.record_sources(settings, found_table(ra[:5], dec[:5], truth["flux_jy"][:5]), image_path="/g1-pbcor.fits",
                      image_kind="group", group_id=f"{NIGHT}T01:00:00", mid_mjd=61369.04, obs_date=NIGHT)
    tp.record_sources(settings, found_table(ra[:6] + 2 / 3600, dec[:6], truth["flux_jy"][:6]),
                      image_path="/g2-pbcor.fits", image_kind="group", group_id=f"{NIGHT}T01:05:00",
                      mid_mjd=61369.05, obs_date=NIGHT)
    ref = tp.default_reference(settings, image)
    assert len(ref) == 6 and ref.label == "default: group detections (2 images)"
    assert set(ref.ra_deg) == set(ra[:5]) | {ra[5] + 2 / 3600}  # named after the first detection
    tp.record_sources(settings, found_table(ra, dec, truth["flux_jy"], suspect=[i == 0 for i in range(len(ra))]),
                      image_path="/m1.fits", image_kind="mosaic", mosaic_id="m1", mid_mjd=61369.2, obs_date=NIGHT)
    # a mosaic far away does not cover the image
    tp.record_sources(settings, found_table([10.0], [-30.0], [1.0]), image_path="/m2.fits", image_kind="mosaic",
                      mosaic_id="m2", mid_mjd=61369.3, obs_date=NIGHT)
    before = dict(zip(np.round(ref.ra_deg, 4), ref.name))
    ref = tp.default_reference(settings, image)
    assert ref.label == "default: mosaic detections (1 image)" and len(ref) == len(ra) - 1  # not the suspect
    # the names the group images gave stay (light curves are not split); the mosaic gives the positions
    assert set(ref.ra_deg) == set(ra[1:])
    for k in range(1, 6):
        i = list(ref.ra_deg).index(ra[k])
        assert ref.name[i] == source_name(ra[k] + (2 / 3600 if k == 5 else 0), dec[k])[0] == before[
            round(ra[k] + (2 / 3600 if k == 5 else 0), 4)]
    # reference fluxes: the sources' forced photometry in mosaics (none yet: no flux scale)
    assert np.isnan(ref.flux_jy).all()
    done = tp.photometer_mosaic(settings, image, mosaic_id="m1", mid_mjd=61369.2)
    assert done.reference.label == ref.label and done.scale.status == "no_reference_fluxes"
    ref = tp.default_reference(settings, image)
    f = done.forced
    measured = {n: p for n, p, s, fl in zip(done.reference.name, f.peak_jy, f.snr, f.flags) if s >= 5 and not fl}
    good = np.isfinite(ref.flux_jy)
    assert set(ref.name[good]) == set(measured) and len(measured) > 30
    assert np.allclose(ref.flux_jy[good], [measured[n] for n in ref.name[good]])
    # a group image of the field is then normalised to the mosaic's scale: 1 for the same image
    again = tp.photometer(settings, image, image_kind="group", group_id=f"{NIGHT}T01:10:00", pb_fits=pb)
    assert again.scale.status == "applied" and again.scale.factor == pytest.approx(1.0, abs=1e-3)


def test_photometer_records_rows_and_the_flux_scale(settings, field, tmp_path):
    image, pb, truth = field
    wcs = WCS(fits.getheader(image)).celestial
    off = [float(v) for v in wcs.pixel_to_world_values(-100, 100)]
    csv = tmp_path / "refs.csv"
    lines = ["name,ra_deg,dec_deg,flux_jy"] + [
        f"S{i:03d},{float(r)!r},{float(d)!r},{0.9 * float(f)!r}"
        for i, (r, d, f) in enumerate(zip(truth["ra_deg"], truth["dec_deg"], truth["flux_jy"]))]
    csv.write_text("\n".join(lines + [f"OFF,{off[0]!r},{off[1]!r},1.0"]) + "\n")
    done = tp.photometer(settings, image, image_kind="group", pb_fits=pb, reference=csv)
    assert done.scale.status == "applied" and done.scale.factor == pytest.approx(0.9, rel=0.01)
    rows = cq.query(settings.catalog_dir, "SELECT * FROM photometry ORDER BY source_name").to_pylist()
    assert len(rows) == len(truth["ra_deg"])  # OFF is not on the image: not recorded
    assert {r["reference"] for r in rows} == {str(csv.resolve())}
    assert all(r["flux_scale"] == done.scale.factor and r["obs_date"] == NIGHT and r["mid_mjd"] == 61369.04
               for r in rows)
    ratio = np.array([r["peak_jy"] / f for r, f in zip(rows, truth["flux_jy"])])
    bright = np.array([r["snr"] > 50 for r in rows])
    assert abs(np.median(ratio[bright]) - 0.9) < 0.01  # scaled onto the reference's (0.9 x true) fluxes
    [block] = [b for b in _sql_blocks() if "FROM photometry" in b and "source_name =" in b]
    curve = cq.query(settings.catalog_dir, block.replace("J083536.00+540600.0", "S003")).to_pylist()
    assert len(curve) == 1 and curve[0]["peak_jy"] == rows[3]["peak_jy"]


def test_photometer_mosaic_uses_the_noise_map(settings, field, tmp_path):
    image, pb, truth = field
    noise = tmp_path / "m-noise.fits"
    fits.writeto(noise, 1e-3 / fits.getdata(pb), fits.getheader(pb))
    csv = tmp_path / "refs.csv"
    csv.write_text("name,ra_deg,dec_deg\n" + "".join(f"S{i},{float(r)!r},{float(d)!r}\n" for i, (r, d) in
                                                     enumerate(zip(truth["ra_deg"], truth["dec_deg"]))))
    done = tp.photometer_mosaic(settings, image, mosaic_id="2026-11-25T010000-12g", mid_mjd=61369.3,
                                noise_fits=noise, reference=csv)
    rows = cq.query(settings.catalog_dir, "SELECT * FROM photometry").to_pylist()
    assert len(rows) == len(done.rows) == len(truth["ra_deg"])
    assert {(r["image_kind"], r["mosaic_id"], r["group_id"], r["pb_response"]) for r in rows} == {
        ("mosaic", "2026-11-25T010000-12g", None, None)}
    # a query's rows come in no set order: match them to the truth by name (S<index>)
    rms = {r["source_name"]: r["rms_jy"] for r in rows}
    ratio = np.array([rms[f"S{i}"] for i in range(len(truth["noise_jy"]))]) / truth["noise_jy"]
    assert abs(np.median(ratio) - 1) < 0.05


def test_task_photometry_never_fails_the_group(settings, tmp_path):
    group_id = f"{NIGHT}T02:00:00"
    prefix = naming.image_prefix(settings.products_dir, group_id)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    naming.image_product_path(prefix, "pbcor").write_bytes(b"not a FITS file")
    csv = tmp_path / "refs.csv"
    csv.write_text("name,ra_deg,dec_deg\nA,150.0,54.0\n")
    out = tp.task_photometry.fn(settings.replace(photometry_reference=csv), group_id)
    assert out["status"] == "failed" and "not a readable FITS" in out["error"]
    runs = cq.query(settings.catalog_dir, "SELECT status, error FROM stage_runs WHERE stage = 'photometry'")
    assert runs.to_pylist()[0]["status"] == "failed"
    # no reference at all: skipped, not failed
    assert tp.task_photometry.fn(settings, group_id)["status"] in ("skipped", "failed")
    assert tp.task_photometry.fn(settings.replace(photometry=False), group_id)["status"] == "skipped"


def test_cli_photometry(field, tmp_path, monkeypatch, capsys):
    from contimg_cli.main import main

    image, pb, truth = field
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    csv = tmp_path / "refs.csv"
    csv.write_text("name,ra_deg,dec_deg\n" + "".join(f"S{i},{float(r)!r},{float(d)!r}\n" for i, (r, d) in
                                                     enumerate(zip(truth["ra_deg"], truth["dec_deg"]))))
    out = tmp_path / "phot.csv"
    assert main(["photometry", str(image), "--reference", str(csv), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "S0 " in text and "flux scale 1.0000 (no_reference_fluxes" in text and "recorded" in text
    assert out.read_text().startswith('"source_name","ra_deg"')
    rows = cq.query(tmp_path / "data" / "catalog", "SELECT count(*) AS n FROM photometry").to_pylist()
    assert rows[0]["n"] == len(truth["ra_deg"])
    for argv, message in (([str(tmp_path / "nope.fits")], "no such image file"),
                          (["2026-11-25T09:00:00"], "no pbcor image"),
                          (["tonight"], "neither a FITS image nor a group id"),
                          ([str(image), "--reference", str(tmp_path / "missing.csv")], "no such reference list"),
                          ([str(image)], "no reference sources")):
        assert main(["photometry", *argv, "--no-record"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
