"""Shared fixtures. Tests run against the real stack (CASA, pyuvdata, DuckDB, Prefect)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def settings(tmp_path):
    """Settings whose data directories all live under a fresh temporary base."""
    from contimg.config import load_settings

    s = load_settings(environ={}, base_dir=tmp_path / "data")
    s.ensure_dirs()
    return s


@pytest.fixture(autouse=True)
def _no_casa_logs_in_cwd(tmp_path, monkeypatch):
    """Every test runs in its own cwd and must leave no casa-*.log there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    stray = list(cwd.glob("casa-*.log"))
    assert not stray, f"CASA wrote logs into the working directory: {stray}"


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server on a temporary database, shared by the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def pipeline_env(tmp_path, monkeypatch):
    """Settings of the flow tests: a fresh base directory, no settle time, cheap images."""
    base = tmp_path / "data"
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(base))
    monkeypatch.setenv("CONTIMG_FILE_SETTLE_S", "0")
    # cheap images: a few seconds each
    monkeypatch.setenv("CONTIMG_IMAGING_SIZE", "512")
    monkeypatch.setenv("CONTIMG_IMAGING_NITER", "200")
    monkeypatch.setenv("CONTIMG_IMAGING_FIND_SOURCES", "false")
    return base
