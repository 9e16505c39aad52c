"""``contimg lightcurve``: the table, the plot, the source by name or position, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.time import Time

from catalog import store
from contimg_cli.main import main

T0 = 61369.5  # MJD of the first epoch: 2026-11-25T12:00
CADENCE_D = 78.0 / 86400.0
FLARE_POS = (128.9, 54.1)


def _row(name, k, peak, rms, *, ra, dec, flags=()) -> dict:
    return {"source_name": name, "ra_deg": ra, "dec_deg": dec, "image_path": f"/products/images/g{k:02d}-pb.fits",
            "image_kind": "group", "group_id": f"g{k:02d}", "mid_mjd": T0 + k * CADENCE_D, "peak_jy": peak,
            "rms_jy": rms, "snr": peak / rms, "pb_response": 0.7, "flux_scale": 1.0, "flags": list(flags),
            "reference": "test", "obs_date": "2026-11-25"}


@pytest.fixture
def catalog_env(tmp_path, monkeypatch):
    """A catalog with a flaring source (one flagged epoch) and a constant one; settings from the environment."""
    for key in [k for k in os.environ if k.startswith("CONTIMG_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    cat = tmp_path / "data" / "catalog"
    rng = np.random.default_rng(3)
    rows = []
    for k in range(24):
        flare = 0.2 * (1 + (2 * np.exp(-(k - 8) / 3.0) if k >= 8 else 0.0))
        rows.append(_row("J083536.00+540600.0", k, flare + rng.normal(0, 0.006), 0.006, ra=FLARE_POS[0],
                         dec=FLARE_POS[1], flags=["near_bright"] if k == 20 else ()))
        rows.append(_row("J083000.00+543000.0", k, 0.3 + rng.normal(0, 0.006), 0.006, ra=127.5, dec=54.5))
    store.append(cat, "photometry", rows)
    return tmp_path


def test_light_curve_by_name_with_plot(catalog_env, capsys):
    png = catalog_env / "flare.png"
    assert main(["lightcurve", "J083536.00+540600.0", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("J083536.00+540600.0: 24 epoch(s) (group images), 23 unflagged")
    assert "n 23," in lines[1] and "candidate YES" in lines[1]
    table = [ln for ln in lines if ln[:1].isdigit()]
    assert len(table) == 24
    first = table[0].split()
    assert float(first[0]) == pytest.approx(T0) and first[1] == Time(T0, format="mjd").isot[:19]
    assert "near_bright" in table[20] and table[20].endswith("/products/images/g20-pb.fits")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_light_curve_by_position_and_time_range(catalog_env, capsys):
    t_start = Time(T0 + 4.5 * CADENCE_D, format="mjd").isot
    t_end = Time(T0 + 9.5 * CADENCE_D, format="mjd").isot
    ra, dec = FLARE_POS[0] + 3 / 3600 / np.cos(np.radians(FLARE_POS[1])), FLARE_POS[1]  # 3 arcsec east
    assert main(["lightcurve", f"{ra},{dec}", "--start", t_start, "--end", t_end]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("J083536.00+540600.0: 5 epoch(s)")
    assert "n 23," in lines[1]  # the metrics are over the whole light curve
    # the constant source is no candidate
    assert main(["lightcurve", "127.5,54.5"]) == 0
    assert "candidate no" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["lightcurve", "J0835"], "no source named 'J0835' in the photometry table; did you mean J083536.00+540600.0?"),
    (["lightcurve", "NOPE"], "no source named 'NOPE' in the photometry table (2 sources in the catalog)"),
    (["lightcurve", "128.9,54.2"], "no source within 15 arcsec of RA 128.90000, Dec 54.20000; the nearest is "
                                   "J083536.00+540600.0, 360.0 arcsec away"),
    (["lightcurve", "128.9,95"], "'128.9,95': Dec must be -90 to 90 degrees"),
    (["lightcurve", "J083536.00+540600.0", "--plot", "x.jpg"], "--plot x.jpg: give a .png file name"),
    (["lightcurve", "J083536.00+540600.0", "--start", "2026-11-26", "--end", "2026-11-25"], "--end 2026-11-25 is before --start 2026-11-26"),
])
def test_bad_source_is_a_clear_error(catalog_env, capsys, argv, words):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.strip() == f"contimg lightcurve: error: {words}"


def test_empty_catalog_from_an_empty_directory(tmp_path, monkeypatch, capsys):
    """A new user in an empty directory: one clear line, nothing written."""
    for key in [k for k in os.environ if k.startswith("CONTIMG_")]:
        monkeypatch.delenv(key)
    new = tmp_path / "new"
    new.mkdir()
    monkeypatch.chdir(new)
    assert main(["lightcurve", "J083536.00+540600.0", "--plot", "lc.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contimg lightcurve: error: the catalog ") and "has no photometry yet" in err
    assert list(new.iterdir()) == []
