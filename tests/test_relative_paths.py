"""Relative paths never reach a child process or the catalog (issue 14, defect 1).

The default base directory is relative (``contimg-data``) and a CASA child runs
in its log's directory, so a relative path that got through would name a file
under the log directory instead.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from contimg import casa
from contimg.config import Settings, load_settings


def _clear_contimg_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("CONTIMG_"):
            monkeypatch.delenv(key)


def _path_settings(settings: Settings) -> dict[str, Path]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)
            if isinstance(getattr(settings, f.name), Path)}


def test_every_path_setting_is_absolute_against_the_cwd_at_load(tmp_path, monkeypatch):
    _clear_contimg_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    defaults = load_settings()
    paths = _path_settings(defaults)
    assert set(paths) >= {"base_dir", "incoming_dir", "scratch_dir", "products_dir", "archive_dir",
                          "catalog_dir", "quarantine_dir"}
    assert all(p.is_absolute() for p in paths.values()), paths
    assert defaults.base_dir == tmp_path / "contimg-data"
    assert defaults.scratch_dir == tmp_path / "contimg-data" / "scratch"

    monkeypatch.setenv("CONTIMG_BASE_DIR", "rel/base")
    monkeypatch.setenv("CONTIMG_SCRATCH_DIR", "fast/../scratch")
    monkeypatch.setenv("CONTIMG_CALIBRATOR_CATALOG", "cals.csv")
    from_env = load_settings()
    assert all(p.is_absolute() for p in _path_settings(from_env).values())
    assert from_env.catalog_dir == tmp_path / "rel" / "base" / "catalog"
    assert from_env.scratch_dir == tmp_path / "scratch"
    assert from_env.calibrator_catalog == tmp_path / "cals.csv"

    # CLI-style overrides (strings or Paths), a direct Settings() and replace(): all absolute.
    overridden = load_settings(environ={}, base_dir="b", products_dir=Path("p"))
    assert (overridden.base_dir, overridden.products_dir) == (tmp_path / "b", tmp_path / "p")
    assert overridden.incoming_dir == tmp_path / "b" / "incoming"
    assert all(p.is_absolute() for p in _path_settings(Settings()).values())
    moved = overridden.replace(base_dir="c")
    assert moved.quarantine_dir == tmp_path / "c" / "quarantine" and moved.products_dir == tmp_path / "p"

    # Absolute at load: a later chdir does not move the data.
    monkeypatch.chdir(tmp_path / "..")
    assert defaults.base_dir == tmp_path / "contimg-data"


def _where_am_i(path):
    return os.getcwd(), str(path), Path(path).read_text()


def test_run_in_casa_resolves_relative_log_path_and_path_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text("hello")
    cwd, seen, text = casa.run_in_casa(_where_am_i, Path("in.txt"), log_path=Path("logs/deep/x.casa.log"))
    assert cwd == str(tmp_path / "logs" / "deep")
    assert (seen, text) == (str(tmp_path / "in.txt"), "hello")
    assert (tmp_path / "logs" / "deep" / "x.casa.log").exists()


def test_run_in_casa_resolves_relative_import_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("relpath_probe_mod.py").write_text("import os\n\ndef where():\n    return os.getcwd()\n")
    monkeypatch.syspath_prepend(".")  # relative: the child's cwd is the log directory
    assert casa.run_in_casa("relpath_probe_mod:where", log_path="logs/probe.log") == str(tmp_path / "logs")


def test_run_casa_task_resolves_relative_file_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(casa, "run_in_casa", lambda target, *args, **kw: calls.append((args, kw)))
    casa.run_casa_task("applycal", vis="a.ms", gaintable=["k.K", Path("b.B")], gainfield=["", "x"],
                       calwt=False, log_path="logs/a.log")
    (task, params), kw = calls[0]
    assert task == "applycal" and kw["log_path"] == "logs/a.log"
    assert params["vis"] == str(tmp_path / "a.ms")
    assert params["gaintable"] == [str(tmp_path / "k.K"), tmp_path / "b.B"]
    assert params["gainfield"] == ["", "x"] and params["calwt"] is False  # not file parameters


def test_convert_from_an_empty_cwd_with_default_settings(tmp_path, monkeypatch):
    from contimg import simulate
    from contimg_cli.main import main

    _clear_contimg_env(monkeypatch)
    incoming = tmp_path / "in"
    simulate.simulate_group(incoming, "2026-11-25T08:00:00", scale="small")
    work = tmp_path / "newuser"
    work.mkdir()
    monkeypatch.chdir(work)

    assert main(["convert", "../in"]) == 0
    ms = work / "contimg-data" / "products" / "ms" / "2026-11-25" / "2026-11-25T080000.ms"
    assert (ms / "table.dat").exists()
    assert not list((work / "contimg-data" / "scratch").rglob("*.ms")), "scratch copy left behind"

    from catalog import query

    rows = query.latest(work / "contimg-data" / "catalog", "ms_index")
    assert len(rows) == 1 and Path(rows[0]["path"]) == ms
