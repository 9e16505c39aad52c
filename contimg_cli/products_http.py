"""The products and archive directories over HTTP, read-only: what ``contimg serve`` runs beside the Prefect UI.

Prefect's server does not serve files, so a small standard-library server does
(issue 21: the artifacts linked ``file://`` paths, which a browser does not follow
from an http page). URL layout, as :func:`contimg.naming.product_url` builds it:

- ``/products/<path under products_dir>`` (the night reports are under
  ``/products/reports/<date>/``),
- ``/archive/<path under archive_dir>``.

A product missing under ``/products/`` whose mirror exists in the archive (the
archive flow moved it) is redirected to ``/archive/``: the links of the artifacts
written before keep working. ``/`` lists the two trees.

Only GET and HEAD. A directory answers its ``index.html`` if it has one, else a
listing of its entries; nothing outside the two trees is listed or served: a path
with a ``..`` segment (encoded or not) answers 403, a path that resolves outside
the trees (a symbolic link out of them) 403, anything else not found 404.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from contimg.naming import URL_ROOTS

__all__ = ["ProductsServer", "make_server", "start"]

log = logging.getLogger(__name__)

#: Content types of the products (``mimetypes`` knows neither FITS nor Parquet, and guesses the rest by platform).
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".fits": "application/fits",
    ".fit": "application/fits",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".hdf5": "application/x-hdf5",
    "": "application/octet-stream",
}


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, location: str | None = None) -> None:
        super().__init__(status)
        self.status, self.location = status, location


class ProductsHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of files under the server's roots; every other method answers 405."""

    server: "ProductsServer"
    server_version = "contimg-products"
    sys_version = ""
    extensions_map = CONTENT_TYPES

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def _refuse_method(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _resolve(self) -> Path | None:
        """The real path the request names (None for ``/``); raises ``_Refused``."""
        url_path = urlsplit(self.path).path
        if url_path == "/":
            return None
        top, _, rest = url_path.lstrip("/").partition("/")
        if top not in self.server.roots:
            raise _Refused(HTTPStatus.NOT_FOUND)
        if url_path == f"/{top}":
            raise _Refused(HTTPStatus.MOVED_PERMANENTLY, f"{top}/")
        text = unquote(rest, errors="strict")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts or "\x00" in text:
            raise _Refused(HTTPStatus.FORBIDDEN)
        path = self.server.roots[top].joinpath(*parts)
        real = Path(os.path.realpath(path))
        if not self.server.inside(real):
            raise _Refused(HTTPStatus.FORBIDDEN)
        if not real.exists():
            mirror = self.server.archive_mirror(top, parts)
            if mirror:  # relative, as every redirect here: behind a reverse proxy's prefix too
                raise _Refused(HTTPStatus.FOUND, "../" * (url_path.count("/") - 1) + mirror)
            raise _Refused(HTTPStatus.NOT_FOUND)
        return real

    def send_head(self):
        try:
            target = self._resolve()
        except _Refused as refused:
            if refused.location:
                self.send_response(refused.status)
                self.send_header("Location", refused.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_error(refused.status)
            return None
        except (UnicodeDecodeError, ValueError, OSError):
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        if target is None:
            return self._page("contimg products", [(f"{name}/", "") for name in self.server.roots])
        if target.is_dir():
            url_path = urlsplit(self.path).path
            if not url_path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", url_path.rsplit("/", 1)[1] + "/")  # relative, as sent
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            index = Path(os.path.realpath(target / "index.html"))
            if index.is_file() and self.server.inside(index):
                target = index
            else:
                return self._listing(target)
        if not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        try:
            f = open(target, "rb")  # noqa: SIM115 - handed to the base class, which closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        try:
            fs = os.fstat(f.fileno())
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", self.guess_type(str(target)))
            self.send_header("Content-Length", str(fs.st_size))
            self.send_header("Last-Modified", self.date_time_string(fs.st_mtime))
            self.end_headers()
            return f
        except BaseException:
            f.close()
            raise

    def _listing(self, directory: Path):
        try:
            names = sorted(os.listdir(directory), key=str.lower)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        entries = [(name + ("/" if (directory / name).is_dir() else ""), "") for name in names]
        return self._page(unquote(urlsplit(self.path).path), [("../", "")] + entries)

    def _page(self, title: str, entries: list[tuple[str, str]]):
        import io

        items = "".join(f'<li><a href="{quote(name)}">{html.escape(name)}</a>'
                        + (f" <code>{html.escape(note)}</code>" if note else "") + "</li>\n"
                        for name, note in entries)
        body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
                f"<body><h1>{html.escape(title)}</h1>\n<ul>\n{items}</ul></body></html>\n").encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


class ProductsServer(ThreadingHTTPServer):
    """A threading HTTP server of directories, each under its URL path: ``{"products": Path, ...}``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], roots: Mapping[str, os.PathLike]) -> None:
        self.roots = {name: Path(os.path.realpath(root)) for name, root in roots.items()}
        self.thread: threading.Thread | None = None
        super().__init__(address, ProductsHandler)

    @property
    def url(self) -> str:
        """``http://host:port`` this server listens on."""
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address) -> None:
        """A client that goes away mid-file (a cancelled download) is not an error; anything else is logged."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        log.warning("products server: error serving %s", client_address, exc_info=True)

    def inside(self, real: Path) -> bool:
        """Whether a resolved path is in one of the served trees."""
        return any(real.is_relative_to(root) for root in self.roots.values())

    def archive_mirror(self, top: str, parts: list[str]) -> str | None:
        """``archive/<parts>`` (relative to ``/``) when a path missing under ``/products/`` was archived there
        (moved by the archive flow, which mirrors the products' layout), else None."""
        if top != "products" or "archive" not in self.roots or not parts:
            return None
        mirror = Path(os.path.realpath(self.roots["archive"].joinpath(*parts)))
        if mirror.exists() and mirror.is_relative_to(self.roots["archive"]):
            return "archive/" + quote("/".join(parts)) + ("/" if mirror.is_dir() else "")
        return None

    def start(self) -> "ProductsServer":
        """Serve in a daemon thread; returns self."""
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="products-http", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self.thread is not None:
            self.shutdown()
            self.thread.join(timeout=10)
            self.thread = None
        self.server_close()

    def __enter__(self) -> "ProductsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def make_server(settings, *, host: str | None = None, port: int | None = None) -> ProductsServer:
    """A server of ``settings``' products and archive directories (not yet serving).

    Parameters
    ----------
    settings : contimg.config.Settings
        The directories, and the ``products_http_host`` / ``products_http_port`` to listen on.
    host, port : optional
        Override those (``port=0``: a free port, see ``server.url``).

    Raises
    ------
    OSError
        The address cannot be bound (the port is in use).
    """
    roots = {name: getattr(settings, field) for name, field in URL_ROOTS.items()}
    return ProductsServer((settings.products_http_host if host is None else host,
                           settings.products_http_port if port is None else port), roots)


def start(settings, *, host: str | None = None, port: int | None = None) -> ProductsServer:
    """:func:`make_server`, serving in a daemon thread until ``stop()`` (or the end of a ``with`` block)."""
    return make_server(settings, host=host, port=port).start()
