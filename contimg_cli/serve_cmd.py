"""``contimg serve``: a local Prefect server plus every deployment, in one command.

Starts ``prefect server start`` on 127.0.0.1 (unless ``PREFECT_API_URL`` already
points at a server), waits until it is healthy, then serves the deployments of
``deployments/serve.py`` against it. The UI is at http://127.0.0.1:4200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="start a local Prefect server and serve every deployment")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.set_defaults(handler=run)


def server_healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run(args) -> int:
    # Until Prefect's runner installs its own graceful handler, SIGTERM must
    # unwind through the ``finally`` below: the default action would end this
    # process at once and leave the server child running, holding the port.
    from contimg.errors import ContimgError

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server = None
    try:
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            api_url = f"http://127.0.0.1:{args.port}/api"
            if not server_healthy(api_url):
                print(f"starting Prefect server on 127.0.0.1:{args.port} ...", flush=True)
                server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                           "--port", str(args.port)])
            deadline = time.monotonic() + args.startup_timeout
            while not server_healthy(api_url):
                if server is not None and server.poll() is not None:
                    raise ContimgError("the Prefect server exited during start-up")
                if time.monotonic() > deadline:
                    raise ContimgError(f"Prefect server not healthy after {args.startup_timeout} s")
                time.sleep(1)
            os.environ["PREFECT_API_URL"] = api_url
        print(f"Prefect UI: {api_url.removesuffix('/api')}  (serving deployments; Ctrl-C to stop)", flush=True)
        from deployments.serve import serve_all

        serve_all()
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0
