"""``contimg serve`` stopped with SIGTERM while its Prefect server starts leaves no server behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_during_server_start_up_stops_the_server_too(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(CONTIMG_BASE_DIR=str(tmp_path / "data"), PREFECT_HOME=str(tmp_path / "prefect"))
    contimg = Path(sys.executable).parent / "contimg"
    serve = subprocess.Popen([str(contimg), "serve", "--port", str(_free_port())], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = []
    try:
        deadline = time.monotonic() + 60
        while not servers and time.monotonic() < deadline:
            servers = [p for p in psutil.Process(serve.pid).children(recursive=True)
                       if "server" in p.cmdline() and "start" in p.cmdline()]
            time.sleep(0.2)
        assert servers, "contimg serve did not start a Prefect server"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, f"Prefect server left running: {[p.pid for p in alive]}"
    finally:  # whatever happened, leave nothing running
        for proc in [*servers, psutil.Process(serve.pid)] if serve.poll() is None else servers:
            try:
                proc.kill()
            except psutil.Error:
                pass
