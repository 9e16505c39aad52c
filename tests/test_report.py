"""The night report (issue 21): ``contimg report DATE`` from a real catalog and real files.

A night is recorded as the stages record it (``catalog.store.append``, real
Parquet read back through DuckDB) with real PNG and FITS files at their
``contimg.naming`` places: imaged groups, a group over the flagging limit, an
uncalibrated one, a quarantined one, an active and a rejected calibration set, a
failed stage run. The page must show every group, plot every group (the plotted
arrays are checked, not only the files), escape what it shows, and every link in
it must answer 200 over HTTP. A real small group, simulated, converted and
imaged by the pipeline's own task, is reported too (slow).
"""

from __future__ import annotations

import re
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest

DATE = "2026-11-25"
T0 = datetime(2026, 11, 25, 8, 0, 0)
MJD0 = 61369.0 + 8 / 24  # 2026-11-25T08:00:00


def _png(path: Path, seed: int) -> Path:
    """A real PNG as the pipeline writes one (matplotlib), 600 x 500 pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    fig.add_subplot().imshow(np.random.default_rng(seed).normal(size=(64, 64)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _record_night(settings) -> dict:
    """A night of five groups and two sets in the catalog, with their files; returns what was recorded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io import fits

    from catalog import cal_registry, store
    from contimg import naming

    cat, products = settings.catalog_dir, settings.products_dir
    gids = [(T0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%S") for i in range(5)]
    imaged, over_limit, uncalibrated, quarantined = gids[:2] + [gids[3]], gids[2], gids[4], "2026-11-25T09:00:00"
    cal_ms = str(naming.ms_path(products, gids[1]))
    good = f"{naming.group_stem(gids[1])}_61369.3368_20261125T083000"
    bad = f"{naming.group_stem(gids[1])}_61369.3368_20261125T082000"
    tables = [{"path": f"{products}/caltables/{DATE}/{good}.{t}", "type": t} for t in ("K", "B", "GP", "GA")]
    cal_registry.register_set(cat, set_name=bad, status="rejected", reason="GP: 100% of solutions flagged <b>",
                              obs_date=DATE, mid_mjd=MJD0 + 0.0035, calibrator="J0834+5534", refant="DSA-104",
                              source_ms=cal_ms,
                              tables=[{**t, "path": t["path"].replace(good, bad)} for t in tables])
    cal_registry.register_set(cat, set_name=good, status="active", obs_date=DATE, mid_mjd=MJD0 + 0.0035,
                              calibrator="J0834+5534", refant="DSA-104", source_ms=cal_ms, tables=tables)
    noise, predicted, flagged, n_sources = {}, {}, {}, {}
    for i, gid in enumerate(gids + [quarantined]):
        store.append(cat, "groups", [{"group_id": gid, "obs_date": DATE,
                                      "state": "quarantined" if gid == quarantined else "converted",
                                      "reason": "subband 3 truncated: HDF5 <header> unreadable"
                                      if gid == quarantined else None}])
        if gid == quarantined:
            continue
        ms = str(naming.ms_path(products, gid))
        base = {"group_id": gid, "obs_date": DATE, "path": ms, "mid_mjd": MJD0 + i * 5 / 1440 + 0.0017,
                "is_calibrator": gid == gids[1], "calibrator": "J0834+5534" if gid == gids[1] else None}
        flagged[gid] = 0.1 + 0.05 * i if gid != over_limit else 0.7
        report = {"flagged_fraction": flagged[gid], "delivered_flagged_fraction": flagged[gid] - 0.05}
        store.append(cat, "qa_metrics", [
            {"subject": ms, "subject_type": "ms", "metric": k, "value": v, "group_id": gid, "obs_date": DATE,
             "stage": "calibrate" if gid == gids[1] else "flag",
             **({"threshold": 0.5, "passed": v <= 0.5} if k.startswith("delivered") else {})}
            for k, v in report.items()])
        if gid == over_limit:
            error = "flagged: 65.0 % of the delivered data flagged, over the limit 50 %"
            store.append(cat, "ms_index", [{**base, "stage": "failed", "error": error}])
            continue
        if gid == uncalibrated:
            store.append(cat, "ms_index", [{**base, "stage": "uncalibrated",
                                            "error": "no set covers MJD 61369.36 within 3 h"}])
            started = datetime(2026, 11, 25, 8, 21, tzinfo=timezone.utc)
            store.append(cat, "stage_runs", [{"group_id": gid, "obs_date": DATE, "stage": "image", "status": "failed",
                                              "started_at": started, "error": "WSCleanError: <script>x</script>"}])
            continue
        prefix = naming.image_prefix(products, gid)
        noise[gid], predicted[gid] = 1e-3 * (1 + i), 0.8e-3
        common = {"group_id": gid, "obs_date": DATE, "ms_path": ms, "caltable_set": f"{good},{gid}_selfcal",
                  "noise_jy": noise[gid], "predicted_noise_jy": predicted[gid], "beam_major_arcsec": 45.5,
                  "beam_minor_arcsec": 16.1, "beam_pa_deg": -10.0}
        rows = [{**common, "type": "png", "path": str(_png(naming.image_product_path(prefix, "png"), i))}]
        pbcor = naming.image_product_path(prefix, "pbcor")
        pbcor.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(pbcor)
        rows.append({**common, "type": "pbcor", "path": str(pbcor)})
        if i != 0:  # the first group was imaged without source finding
            n_sources[gid] = 3 + i
            src = naming.image_product_path(prefix, "sources")
            pq.write_table(pa.table({"ra_deg": np.arange(n_sources[gid], dtype=float)}), src)
            rows.append({**common, "type": "sources", "path": str(src)})
        store.append(cat, "images", rows)
        store.append(cat, "ms_index", [{**base, "stage": "imaged", "caltable_set": good, "cal_applied": True}])
    return {"groups": gids + [quarantined], "imaged": imaged, "over_limit": over_limit,
            "uncalibrated": uncalibrated, "quarantined": quarantined, "good": good, "bad": bad, "noise": noise,
            "predicted": predicted, "flagged": flagged, "n_sources": n_sources}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def _links(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.links


class _Served:
    """The products directory over HTTP: ``contimg serve``'s products server when there is one
    (``contimg_cli.products_http``), else the standard library's; ``url`` is the page's URL."""

    def __init__(self, settings, page: Path, port: int = 0):
        self.settings, self.page, self.port = settings, page, port

    def __enter__(self):
        rel = self.page.relative_to(self.settings.products_dir).as_posix()
        try:
            from contimg_cli.products_http import start
        except ImportError:
            start = None
        if start is not None:
            self.server = start(self.settings, host="127.0.0.1", port=self.port)
            self.url = f"{self.server.url.rstrip('/')}/products/{rel}"
            self.stop = self.server.stop
            return self
        import functools
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        handler = functools.partial(SimpleHTTPRequestHandler, directory=str(self.settings.products_dir))
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}/{rel}"

        def stop():
            httpd.shutdown()
            httpd.server_close()

        self.stop = stop
        return self

    def __exit__(self, *exc):
        self.stop()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def _check_links_over_http(settings, page_path: Path, port: int = 0) -> int:
    """GET the page and every href/src in it over HTTP: each answers 200. Returns the number of links."""
    with _Served(settings, page_path, port) as served:
        status, body = _get(served.url)
        assert status == 200
        links = _links(body.decode())
        for link in links:
            assert not link.startswith("file:"), link
            status, data = _get(urljoin(served.url, link))
            assert status == 200 and data, link
    return len(links)


def test_contimg_report_shows_every_group_plots_them_and_every_link_answers(settings, monkeypatch, capsys):
    from contimg import naming
    from contimg_cli.main import main
    from tasks.report import write_night_report

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    night = _record_night(settings)
    assert main(["report", DATE]) == 0
    page_path = naming.report_path(settings.products_dir, DATE)
    assert capsys.readouterr().out.splitlines() == [f"{DATE}: 6 groups, 5 failure(s)", str(page_path)]
    page = page_path.read_text()

    # every group, with its state, its set and its numbers
    for gid in night["groups"]:
        assert page.count(gid) >= 1, gid
    rows = {gid: page[page.rindex("<tr>", 0, page.index(f'<span class="mono">{gid}</span>')):]
            for gid in night["groups"]}
    rows = {gid: text[:text.index("</tr>")] for gid, text in rows.items()}
    for gid in night["imaged"]:
        assert ">imaged<" in rows[gid] and night["good"] in rows[gid] and f"{gid}_selfcal" in rows[gid]
        assert f"{night['noise'][gid] * 1e3:.2f}" in rows[gid] and "45.5&quot; x 16.1&quot;" in rows[gid]
        assert f"{night['noise'][gid] / night['predicted'][gid]:.2f}" in rows[gid]
        assert f"{night['flagged'][gid] * 100:.1f} %" in rows[gid]
        assert f'thumbs/{naming.group_stem(gid)}.png"' in rows[gid]
    assert f">{night['n_sources'][night['imaged'][1]]}<" in rows[night["imaged"][1]]
    assert ">failed<" in rows[night["over_limit"]] and 'class="bad">65.0 %' in rows[night["over_limit"]]
    assert ">uncalibrated<" in rows[night["uncalibrated"]] and "no set covers" in rows[night["uncalibrated"]]
    assert ">quarantined<" in rows[night["quarantined"]]
    # the sets with their QA, the rejected one with its reason; the failures with theirs
    assert night["good"] in page and night["bad"] in page and ">rejected<" in page
    assert "GP: 100% of solutions flagged &lt;b&gt;" in page
    failures = page[page.index("<h2>Failures</h2>"):]
    for words in ("stage image failed", "WSCleanError: &lt;script&gt;x&lt;/script&gt;", "group quarantined",
                  "HDF5 &lt;header&gt; unreadable", "MS failed", "over the limit 50 %", "MS uncalibrated",
                  f"calibration set {night['bad']} rejected"):
        assert words in failures, words
    assert "<script>" not in page and "<b>" not in page  # escaped, never markup

    # the plots show every group: the plotted arrays, in time order (a rewrite keeps the thumbnails)
    made = {t: t.stat().st_mtime_ns for t in (page_path.parent / "thumbs").glob("*.png")}
    report = write_night_report(settings, DATE)
    assert {t: t.stat().st_mtime_ns for t in made} == made
    assert report.noise["group_ids"] == report.flagged["group_ids"] == sorted(night["groups"])
    plotted = dict(zip(report.noise["group_ids"], report.noise["noise_mjy"]))
    for gid in night["groups"]:
        assert plotted[gid] == pytest.approx(night["noise"][gid] * 1e3) if gid in night["noise"] \
            else np.isnan(plotted[gid])
    flagged = dict(zip(report.flagged["group_ids"], report.flagged["flagged_pct"]))
    for gid in night["groups"]:
        assert flagged[gid] == pytest.approx(night["flagged"][gid] * 100) if gid in night["flagged"] \
            else np.isnan(flagged[gid])
    from PIL import Image

    for plot in (report.noise["path"], report.flagged["path"]):
        with Image.open(plot) as image:
            assert image.width >= 600 and plot.name in page
    # thumbnails are small copies; the full PNG is linked where it is, never copied
    thumbs = sorted((page_path.parent / "thumbs").glob("*.png"))
    assert len(thumbs) == len(night["imaged"]) and all(t.stat().st_size < 60_000 for t in thumbs)
    assert "../../images/2026-11-25/2026-11-25T080000-pbcor.png" in page

    # every link answers over HTTP
    assert _check_links_over_http(settings, page_path) >= 2 + 3 * len(night["imaged"])


def test_a_date_without_groups_writes_a_page_saying_so(settings, monkeypatch, capsys, tmp_path):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    _record_night(settings)
    out = tmp_path / "elsewhere"
    assert main(["report", "2026-11-26", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == ["no groups on 2026-11-26", str(out / "index.html")]
    page = (out / "index.html").read_text()
    assert "no groups on 2026-11-26" in page and "No failures." in page and "<img" not in page
    # an empty catalog too
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "fresh"))
    assert main(["report", DATE, "--out", str(out)]) == 0
    assert f"no groups on {DATE}" in (out / "index.html").read_text()


def test_an_unreadable_png_costs_its_thumbnail_not_the_report(settings, monkeypatch):
    from contimg import naming
    from tasks.report import write_night_report

    night = _record_night(settings)
    png = naming.image_product_path(naming.image_prefix(settings.products_dir, night["imaged"][0]), "png")
    png.write_bytes(b"not a png")
    report = write_night_report(settings, DATE)
    page = report.path.read_text()
    assert "thumbnail unreadable" in page and report.n_groups == len(night["groups"])


@pytest.mark.slow
def test_report_of_a_real_imaged_group(settings, monkeypatch, tmp_path):
    """A small simulated group, converted and imaged by the pipeline's task (real products, real rows)."""
    from contimg import naming, simulate
    from contimg.conversion.convert import convert_group
    from contimg.conversion.discovery import discover_groups
    from contimg.imaging.image import ImagingOptions
    from contimg.simulate.group import transit_start_time
    from tasks.imaging import image_group
    from tasks.report import write_night_report

    start = transit_start_time(150.0, DATE, dec_deg=54.5734, n_times=4)
    g = simulate.simulate_group(tmp_path / "in", start, antennas=tuple(range(0, 117, 4)), n_channels=4, n_times=4,
                                seed=3)
    (found,) = discover_groups(tmp_path / "in", settle_s=0)
    done = convert_group(g.group_id, found.files, products_dir=settings.products_dir,
                         scratch_dir=settings.scratch_dir)
    image_group(settings, done.ms_path, options=ImagingOptions(data_column="data", imsize=256, niter=50),
                find_sources=True)
    report = write_night_report(settings, naming.group_date(g.group_id))
    page = report.path.read_text()
    assert report.noise["group_ids"] == [g.group_id] and np.isfinite(report.noise["noise_mjy"]).all()
    assert np.isfinite(report.noise["predicted_mjy"]).all()
    assert g.group_id in page and ">imaged<" in page
    assert re.search(r'<img src="thumbs/[^"]+\.png"', page)
    assert _check_links_over_http(settings, report.path) >= 5


# --- the nightly archive writes it ------------------------------------------------------


def _latest_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created) if found else None


def test_the_archive_flow_writes_the_night_report_and_its_artifact(settings, prefect_server, monkeypatch):
    """A finished group as the archive tests build it (its PNG is random bytes: no thumbnail, the report is
    written all the same); the report is written after the products moved, from the catalog."""
    from test_archive import GID, _make_group

    import socket

    from contimg import naming
    from flows.archive import archive

    with socket.socket() as sock:  # the products server's port, which the flow's links are built on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CONTIMG_PRODUCTS_HTTP_PORT", str(port))
    made = _make_group(settings, seed=7)
    date = naming.group_date(GID)
    out = archive(base_dir=str(settings.base_dir), compact=True)
    assert out["groups"][GID]["state"] == "archived"
    page = naming.report_path(settings.products_dir, date)
    assert out["reports"] == {date: str(page)}
    text = page.read_text()
    assert GID in text and ">archived<" in text and "thumbnail unreadable" in text
    # the moved products are linked where they are now, on the product server; every link answers
    assert not made["images"]["pbcor"].exists() and f":{port}/archive/images/" in text
    assert _check_links_over_http(settings, page, port) >= 4
    artifact = _latest_artifact(f"report-{date}")
    assert artifact is not None and artifact.type == "markdown"
    # linked on the products server (naming.product_url)
    assert f"](http://127.0.0.1:{port}/products/reports/{date}/index.html)" in artifact.data
    assert "1 group(s), 0 failure(s)" in artifact.data

    # a report that cannot be written is logged; the archive does not fail for it
    import tasks.report

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tasks.report, "write_night_report", broken)
    _make_group(settings, "2025-03-02T00:00:00", seed=8)
    out = archive(base_dir=str(settings.base_dir), compact=False)
    assert out["groups"]["2025-03-02T00:00:00"]["state"] == "archived"
    assert out["reports"] == {"2025-03-02": "failed: disk full"}
