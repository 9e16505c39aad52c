"""``contimg serve``: the node's Prefect server plus this pipeline instance's deployments, in one command.

Uses the server at ``PREFECT_API_URL`` if set, else the node's at the
``prefect_api_url`` setting (``--port`` overrides its port), starting ``prefect
server start`` there when none answers; waits until it is healthy, then serves the
deployments of ``deployments/serve.py`` for this instance (the settings' catalog
directory) against it. A second instance (another ``CONTIMG_BASE_DIR``) served on
the same node finds the server running and adds its own deployments to it. The UI
is at http://127.0.0.1:4200.

Before the Prefect server, it starts serving this instance's products and archive
directories over HTTP, read-only (:mod:`contimg_cli.products_http`, settings
``products_http_host`` / ``products_http_port``, default 127.0.0.1:4201), which the
artifacts link; its first line says where. It stops with the command. When the
port is taken (another instance's ``contimg serve`` on this node) it says so and
serves the rest: give each instance its own ``products_http_port``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

from contimg_cli.prefect_server import server_healthy

__all__ = ["register", "run", "server_healthy"]

#: Hosts a server may be started on by ``contimg serve`` (this node).
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the node's Prefect server (if none answers) and serve this "
                                            "pipeline instance's deployments")
    p.add_argument("--port", type=int, default=None,
                   help="port of the server on 127.0.0.1 (default: the prefect_api_url setting's, 4200)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.set_defaults(handler=run)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run(args) -> int:
    # Until Prefect's runner installs its own graceful handler, SIGTERM must
    # unwind through the ``finally`` below: the default action would end this
    # process at once and leave the server child running, holding the port.
    from contimg.config import load_settings, pipeline_instance
    from contimg.errors import ContimgError

    settings = load_settings()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server = products = None
    try:
        products = _serve_products(settings)
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            api_url = f"http://127.0.0.1:{args.port}/api" if args.port else settings.prefect_api_url
            if not server_healthy(api_url):
                where = urlsplit(api_url)
                if where.hostname not in LOCAL_HOSTS or not where.port:
                    raise ContimgError(f"no Prefect server answers at {api_url}, and contimg serve starts one only "
                                       "on this node (http://127.0.0.1:PORT/api)")
                print(f"starting Prefect server on {where.hostname}:{where.port} ...", flush=True)
                # the UI's own API address: by default Prefect's port setting (4200), not --port's
                env = {"PREFECT_UI_API_URL": api_url, **os.environ}
                server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                                           where.hostname, "--port", str(where.port)], env=env)
            deadline = time.monotonic() + args.startup_timeout
            while not server_healthy(api_url):
                if server is not None and server.poll() is not None:
                    raise ContimgError("the Prefect server exited during start-up")
                if time.monotonic() > deadline:
                    raise ContimgError(f"Prefect server not healthy after {args.startup_timeout} s")
                time.sleep(1)
            os.environ["PREFECT_API_URL"] = api_url
        print(f"Prefect UI: {api_url.removesuffix('/api')}  (serving the deployments of pipeline instance "
              f"{pipeline_instance(settings)}, catalog {settings.catalog_dir}; Ctrl-C to stop)", flush=True)
        from deployments.serve import serve_all

        serve_all()
    finally:
        if products is not None:
            products.stop()
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


def _serve_products(settings):
    """Start serving the products and archive directories; print where (None, said, if the port is taken)."""
    from contimg import naming
    from contimg_cli import products_http

    try:
        products = products_http.start(settings)
    except OSError as exc:
        print(f"products NOT served: cannot listen on {settings.products_http_host}:{settings.products_http_port} "
              f"({exc.strerror or exc}; another instance's contimg serve? set CONTIMG_PRODUCTS_HTTP_PORT)", flush=True)
        return None
    base = naming.products_base_url(settings)
    print(f"products: {base}/products/  archive: {base}/archive/  (read-only: {settings.products_dir}, "
          f"{settings.archive_dir})" + (f"; listening on {products.url}" if base != products.url else ""), flush=True)
    return products
