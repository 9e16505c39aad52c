"""Products over HTTP (issue 21): the read-only server ``contimg serve`` runs beside the Prefect UI, the URLs
artifacts link, and nothing outside the products and archive trees. Real HTTP on a free port, no mocks."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

GROUP = "2026-11-25T08:00:00"

#: A file of each kind an operator opens, with the type it must be served as.
KINDS = {"png": "image/png", "fits": "application/fits", "html": "text/html", "json": "application/json",
         "parquet": "application/vnd.apache.parquet", "csv": "text/csv", "log": "text/plain", "txt": "text/plain"}


def _get(server, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request sent as is (http.client does not normalise ``..``)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _fetch(url: str) -> tuple[int, dict, bytes]:
    """GET an absolute URL, following redirects on the same server."""
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.fixture
def tree(settings, tmp_path):
    """A products tree with one file of each kind, an archived product, and ways out of the tree."""
    from contimg import naming

    files = {}
    for kind in KINDS:
        path = naming.image_dir(settings.products_dir, GROUP) / f"x-{kind}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{kind} {os.urandom(8).hex()}\n".encode())
        files[kind] = path
    report = settings.products_dir / "reports" / "2026-11-25" / "index.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>night</html>")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (settings.products_dir / "out").symlink_to(outside)
    (settings.products_dir / "passwd").symlink_to("/etc/passwd")
    (settings.products_dir / "etc").symlink_to("/etc")
    archived = settings.archive_dir / "images" / "2026-11-24" / "old-pbcor.fits"
    archived.parent.mkdir(parents=True)
    archived.write_bytes(b"archived fits")
    return {"files": files, "report": report, "outside": outside, "archived": archived}


@pytest.fixture
def server(settings):
    from contimg_cli.products_http import start

    with start(settings, port=0) as srv:
        yield srv


def test_files_answer_their_bytes_and_type(settings, tree, server):
    from contimg import naming

    served = settings.replace(products_http_port=server.server_address[1])
    for kind, path in tree["files"].items():
        url = naming.product_url(served, path)
        assert url == f"{server.url}/products/{path.relative_to(settings.products_dir).as_posix()}"
        status, headers, body = _fetch(url)
        assert status == 200 and body == path.read_bytes(), kind
        assert headers["content-type"].split(";")[0] == KINDS[kind], kind
        assert headers["content-length"] == str(path.stat().st_size)
    status, headers, body = _get(server, urlpath(naming.product_url(served, tree["files"]["fits"])), "HEAD")
    assert status == 200 and body == b"" and headers["content-type"] == "application/fits"
    # the night report: /products/reports/<date>/ answers its page
    status, headers, body = _fetch(naming.product_url(served, tree["report"].parent))
    assert status == 200 and body == b"<html>night</html>" and headers["content-type"].startswith("text/html")
    # the archive tree, and a product moved there by the archive flow, from its old /products/ link
    assert _fetch(naming.product_url(served, tree["archived"]))[2] == b"archived fits"
    old_link = f"{server.url}/products/images/2026-11-24/old-pbcor.fits"
    status, headers, _ = _get(server, urlpath(old_link))  # redirects are relative: a proxy's prefix is kept
    assert status == 302 and headers["location"] == "../../../archive/images/2026-11-24/old-pbcor.fits"
    assert _fetch(old_link)[2] == b"archived fits"
    # listings inside the trees only
    status, _, body = _get(server, "/products/images/2026-11-25/")
    assert status == 200 and b"x-png.png" in body
    for path, location in (("/products/images", "images/"), ("/products", "products/")):
        status, headers, _ = _get(server, path)
        assert status == 301 and headers["location"] == location
    assert _get(server, "/")[0] == 200


def urlpath(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


@pytest.mark.parametrize("path", [
    "/products/../../etc/passwd",
    "/products/../../../../../../etc/passwd",
    "/archive/../products/../../etc/passwd",
    "/products/%2e%2e/%2e%2e/etc/passwd",
    "/products/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/products/..%2f..%2f..%2f..%2f..%2fetc/passwd",
    "/products/images/%2e%2e/%2e%2e/%2e%2e/catalog/",
    "/products/%252e%252e/%252e%252e/etc/passwd",
    "/products//etc/passwd",
    "/products/%2Fetc%2Fpasswd",
    "/etc/passwd",
    "/products/passwd",          # a symbolic link to a file outside
    "/products/etc/passwd",      # ... to a directory outside
    "/products/etc/",
    "/products/out/secret.txt",
    "/products/out/",
    "/catalog/",                 # a data directory that is not served
    "/scratch/",
    "/products/nothing-here.fits",
    "/products/%00",
])
def test_nothing_outside_the_trees(tree, server, path):
    status, _, body = _get(server, path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body and b"secret" not in body


def test_read_only(tree, server):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _get(server, "/products/images/2026-11-25/x-txt.txt", method)[0] == 405
    assert tree["files"]["txt"].exists()


def test_product_url(settings, tmp_path):
    from contimg import naming

    assert naming.product_url(settings, "/etc/passwd") is None
    assert naming.product_url(settings, settings.products_dir / "a b#c.png") == \
        "http://127.0.0.1:4201/products/a%20b%23c.png"
    proxied = settings.replace(products_base_url="https://ops.example.org/contimg/")
    assert naming.product_url(proxied, settings.archive_dir / "raw" / "x.hdf5") == \
        "https://ops.example.org/contimg/archive/raw/x.hdf5"
    # a products directory reached through a symbolic link: either spelling maps
    link = tmp_path / "link"
    link.symlink_to(settings.products_dir)
    assert naming.product_url(settings, link / "x.fits") == "http://127.0.0.1:4201/products/x.fits"
    wild = settings.replace(products_http_host="0.0.0.0", products_http_port=8000)
    assert naming.products_base_url(wild) == "http://127.0.0.1:8000"


def _record_imaged_group(settings) -> None:
    """What the target flow records of an imaged group: its MS, stages, image products, QA plot and log dirs."""
    from datetime import datetime, timezone

    from catalog import store
    from contimg import naming

    ms = naming.ms_path(settings.products_dir, GROUP)
    ms.mkdir(parents=True)
    date = naming.group_date(GROUP)
    store.append(settings.catalog_dir, "ms_index", [{"group_id": GROUP, "path": str(ms), "stage": "imaged",
                                                     "obs_date": date, "caltable_set": "set-a"}])
    now = datetime.now(timezone.utc)
    store.append(settings.catalog_dir, "stage_runs", [
        {"group_id": GROUP, "stage": s, "status": "completed", "started_at": now, "obs_date": date, "seconds": 1.0}
        for s in ("applycal", "image")])
    prefix = naming.image_prefix(settings.products_dir, GROUP)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in ("image", "pbcor", "pb", "residual", "png", "sources"):
        path = naming.image_product_path(prefix, kind)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" if kind == "png" else b"SIMPLE  =                    T")
        rows.append({"path": str(path), "type": kind, "group_id": GROUP, "obs_date": date, "ms_path": str(ms),
                     "noise_jy": 1e-3, "peak_jy": 1.0, "dynamic_range": 1000.0, "beam_major_arcsec": 30.0,
                     "beam_minor_arcsec": 10.0, "beam_pa_deg": 5.0, "backend": "wsclean", "caltable_set": "set-a"})
    store.append(settings.catalog_dir, "images", rows)
    naming.qa_dir(settings.products_dir, GROUP).mkdir(parents=True)
    naming.casa_log_path(settings.products_dir, GROUP, "applycal").parent.mkdir(parents=True)
    naming.casa_log_path(settings.products_dir, GROUP, "applycal").write_text("log\n")


def test_group_artifact_links_only_http_urls_that_answer(settings, server):
    from tasks.artifacts import group_markdown

    _record_imaged_group(settings)
    served = settings.replace(products_http_port=server.server_address[1])
    markdown = group_markdown(served, GROUP, "imaged")
    assert "file:" not in markdown
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    assert len(targets) == 9, markdown  # the thumbnail, 6 products, QA plots, logs
    assert f"![thumbnail of {GROUP}]({server.url}/products/images/2026-11-25/2026-11-25T080000-pbcor.png)" \
        in markdown
    for url in targets:
        assert url.startswith(server.url + "/"), url
        status, _, _ = _fetch(url)
        assert status == 200, url
    # once archived (moved), the artifact links the archived copies, which answer too
    from catalog import store
    from catalog import query as cq

    rows = cq.query(settings.catalog_dir, "SELECT * FROM images WHERE group_id = ?", [GROUP]).to_pylist()
    moved = []
    for r in rows:
        dest = settings.archive_dir / Path(r["path"]).relative_to(settings.products_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        Path(r["path"]).rename(dest)
        kept = {k: v for k, v in r.items() if k not in ("event_id", "recorded_at")}
        moved.append(kept | {"archived_path": str(dest)})
    store.append(settings.catalog_dir, "images", moved)
    markdown = group_markdown(served, GROUP, "imaged")
    assert f"{server.url}/archive/images/2026-11-25/2026-11-25T080000-pbcor.png" in markdown
    for url in re.findall(r"\]\(([^)\s]+)\)", markdown):
        assert _fetch(url)[0] == 200, url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_contimg_serve_says_where_and_serves_until_stopped(tmp_path):
    """``contimg serve``'s first line gives the products URL, which answers; stopped, it answers no more."""
    base = tmp_path / "data"
    product = base / "products" / "images" / "2026-11-25" / "x-pbcor.png"
    product.parent.mkdir(parents=True)
    product.write_bytes(b"\x89PNG\r\n\x1a\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(CONTIMG_BASE_DIR=str(base), PREFECT_HOME=str(tmp_path / "prefect"),
               CONTIMG_PRODUCTS_HTTP_PORT=str(port))
    contimg = Path(sys.executable).parent / "contimg"
    serve = subprocess.Popen([str(contimg), "serve", "--port", str(_free_port())], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = serve.stdout.readline()
        assert first.startswith(f"products: http://127.0.0.1:{port}/products/  archive: http://127.0.0.1:{port}"
                                "/archive/"), first
        status, headers, body = _fetch(f"http://127.0.0.1:{port}/products/images/2026-11-25/x-pbcor.png")
        assert status == 200 and body == product.read_bytes() and headers["content-type"] == "image/png"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            raise
        else:  # its Prefect server child, if it got that far, stops with it (test_serve_signal.py)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) != 0:
                        break
                time.sleep(0.5)
            else:
                pytest.fail("the products server still answers after contimg serve stopped")
