"""The calibration stage as the pipeline runs it: solve, register, look up, apply, record.

Three small groups of one simulated night share one instrument (same seed): a
strong calibrator (J0834+5534: delay, bandpass and gains), a fainter calibrator
40 min later (gains only, against the first set's delay and bandpass), and a
target group between them, which gets the two gain sets interpolated in time.
The target holds one bright source, so the phase of its calibrated visibilities
against that source's model measures the gain error at its time.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from casacore.tables import table

from catalog import cal_registry
from catalog import query as cq
from contimg import simulate
from contimg.calibration.model import predict_model
from contimg.sky.source import Source
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.conversion.inspect import ms_summary
from contimg.errors import NoCalibrationError
from contimg.simulate.group import transit_start_time
from contimg.sky.catalog import find_calibrator
from tasks.calibration import apply_group, calibrate_group

pytestmark = pytest.mark.slow

LAYOUT = dict(n_channels=8, n_times=8, n_antennas=12, jitter_s=0.0)
NOISELESS_RFI_FREE = simulate.Corruptions(noise=False, rfi=False, dead_antennas=0, flagged_antennas=0)
J0834 = find_calibrator("J0834+5534")
#: A fictitious 3 Jy calibrator 10 deg east of J0834+5534 (transits 40 min later), below the
#: 5 Jy K/B threshold: its group solves gains only.
FAINT = simulate.Source("J0914+5440", J0834.ra_deg + 10.0, 54.67, 3.0, -0.7)
TARGET = simulate.Source("TGT", J0834.ra_deg + 5.0, 54.6, 2.0, -0.7)


def _catalog_csv(path):
    rows = [
        {"name": J0834.name, "ra_deg": J0834.ra_deg, "dec_deg": J0834.dec_deg, "flux_1p4ghz_jy": J0834.flux_jy,
         "spectral_index": J0834.spectral_index, "quality_c": "P", "quality_d": "P"},
        {"name": FAINT.name, "ra_deg": FAINT.ra_deg, "dec_deg": FAINT.dec_deg, "flux_1p4ghz_jy": FAINT.flux_jy,
         "spectral_index": FAINT.spectral_index, "quality_c": "P", "quality_d": "P"},
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _group(root, name, source, sky, *, corruptions):
    start = transit_start_time(source.ra_deg, "2026-11-25", dec_deg=source.dec_deg, n_times=LAYOUT["n_times"])
    sim = simulate.simulate_group(root / name, start, seed=9, sources=sky, corruptions=corruptions, **LAYOUT)
    (grp,) = discover_groups(root / name, settle_s=0)
    return convert_group(sim.group_id, grp.files, products_dir=root / "products",
                         scratch_dir=root / "scratch").ms_path, sim.truth()


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from contimg.config import load_settings

    root = tmp_path_factory.mktemp("night")
    settings = load_settings(environ={}, base_dir=root / "data",
                             calibrator_catalog=_catalog_csv(root / "calibrators.csv"))
    settings.ensure_dirs()
    # noise-free, so that the target's residual phase is the interpolation error alone
    corruptions = NOISELESS_RFI_FREE
    strong = simulate.Source(J0834.name, J0834.ra_deg, J0834.dec_deg, J0834.flux_jy, J0834.spectral_index)
    ms_a, _ = _group(root, "a", strong, [strong], corruptions=corruptions)
    ms_t, truth_t = _group(root, "t", TARGET, [TARGET], corruptions=corruptions)
    ms_c, _ = _group(root, "c", FAINT, [FAINT], corruptions=corruptions)
    reg_a = calibrate_group(settings, ms_a)
    reg_c = calibrate_group(settings, ms_c)
    return settings, (ms_a, ms_t, ms_c), (reg_a, reg_c), truth_t


def test_strong_calibrator_solves_kbg_faint_one_gains_only(night):
    settings, _, (reg_a, reg_c), _ = night
    assert reg_a.status == "active" and reg_c.status == "active", (reg_a.result.reasons, reg_c.result.reasons)
    assert [s.kind for s in reg_a.result.solutions] == ["K", "B", "GP", "GA"]
    assert [s.kind for s in reg_c.result.solutions] == ["GP", "GA"]
    # the faint group's gains were solved against the strong group's K and B, with its refant
    assert reg_c.result.refant == reg_a.result.refant
    rows = cq.query(settings.catalog_dir, "SELECT DISTINCT set_name, kb_set FROM cal_registry").to_pylist()
    kb = {r["set_name"]: r["kb_set"] for r in rows}
    assert kb[reg_c.set_name] == reg_a.set_name


def test_target_between_two_transits_gets_interpolated_gains(night, tmp_path):
    settings, (_, ms_t, _), (reg_a, reg_c), truth = night
    out = apply_group(settings, ms_t)
    assert out["interpolated_g"] and out["sets"] == [reg_a.set_name, reg_c.set_name]
    assert any(p.endswith(".merged") for p in out["gaintable"])
    # the gain error at the target's time: phase of CORRECTED against the target source's model
    predict_model(ms_t, [Source("TGT", TARGET.ra_deg, TARGET.dec_deg, TARGET.flux_jy, TARGET.spectral_index)])
    with table(str(ms_t), ack=False) as t:
        cross = t.getcol("ANTENNA1") != t.getcol("ANTENNA2")
        corrected = t.getcol("CORRECTED_DATA")[cross]
        model = t.getcol("MODEL_DATA")[cross]
        flag = t.getcol("FLAG")[cross]
    phase = np.degrees(np.angle(corrected[~flag] * np.conj(model[~flag])))
    ratio = np.sum((corrected[~flag] * np.conj(model[~flag])).real) / np.sum(np.abs(model[~flag]) ** 2)
    rms = float(np.sqrt(np.mean(phase**2)))
    print(f"\ninterpolated gains at the target: baseline phase error rms {rms:.2f} deg, "
          f"flux scale {ratio:.4f} (truth gains drift 0.2 rad over 30-120 min)")
    # a reported figure, bounded loosely: linear interpolation over 40 min of a sinusoidal drift
    assert rms < 10.0 and abs(ratio - 1) < 0.05
    latest = cq.latest(settings.catalog_dir, "ms_index", path=str(ms_t))
    assert latest[-1]["stage"] == "applycal_done" and reg_c.set_name in latest[-1]["caltable_set"]


def test_interpolated_apply_equals_casa_applycal(night, tmp_path):
    """Two merged gain sets interpolated in time: the numpy applier against CASA applycal."""
    import shutil

    from contimg.calibration.applycal import ApplyTable, apply_tables

    settings, (_, ms_t, _), _, _ = night
    applylist = cal_registry.active_applylist(settings.catalog_dir, ms_summary(ms_t)["mid_mjd"])
    groups: dict = {}
    for t in applylist.tables:
        groups.setdefault(t.type, []).append(ApplyTable(Path(t.path), t.type, t.interp, list(t.spwmap), t.gainfield))
    tables = [g if len(g) > 1 else g[0] for g in groups.values()]
    assert applylist.interpolate_g and any(isinstance(t, list) for t in tables)
    out = {}
    for engine in ("casa", "fast"):
        copy = tmp_path / f"{engine}.ms"
        shutil.copytree(ms_t, copy)
        apply_tables(copy, tables, log_path=tmp_path / f"{engine}.casa.log", work_dir=tmp_path / engine,
                     engine=engine)
        with table(str(copy), ack=False) as t:
            out[engine] = (t.getcol("CORRECTED_DATA"), t.getcol("FLAG"))
    assert np.array_equal(out["casa"][1], out["fast"][1])
    good = ~out["casa"][1]
    assert np.max(np.abs(out["casa"][0][good] - out["fast"][0][good])) <= 1e-4 * np.max(np.abs(out["casa"][0][good]))


def test_a_group_far_from_any_set_waits_for_calibration(night):
    settings, (_, ms_t, _), _, _ = night
    far = cq.query(settings.catalog_dir, "SELECT max(mid_mjd) AS m FROM cal_registry").column("m")[0].as_py() + 1.0
    with pytest.raises(NoCalibrationError, match="nearest"):
        apply_group(settings, ms_t, at_mjd=far)
    latest = cq.latest(settings.catalog_dir, "ms_index", path=str(ms_t))
    assert latest[-1]["stage"] == "waiting_for_cal"
    # waiting is recorded as a skipped stage with its reason, not as a failure
    runs = cq.query(settings.catalog_dir, "SELECT status, error FROM stage_runs WHERE stage = 'applycal' "
                                          "ORDER BY ended_at DESC LIMIT 1").to_pylist()
    assert runs[0]["status"] == "skipped" and runs[0]["error"].startswith("waiting_for_cal")


def test_cli_lists_the_sets_and_refuses_a_bad_path(night, tmp_path):
    settings, _, (reg_a, reg_c), _ = night
    env = {"CONTIMG_BASE_DIR": str(settings.base_dir), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "contimg_cli", "caltables"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert reg_a.set_name in listed.stdout and reg_c.set_name in listed.stdout
    bad = subprocess.run([sys.executable, "-m", "contimg_cli", "calibrate", "no-such.ms"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "contimg calibrate: error: no-such.ms is not a Measurement Set" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_small_preset_calibrates_and_reruns_are_idempotent(tmp_path):
    """What a new user runs first: `contimg simulate --scale small` (4 channels per subband, so one edge
    channel each side is half the band, and 3 of 12 antennas bad) must still give an active set; a rerun
    returns it; --force solves again under a new name and keeps the first solve's tables."""
    from contimg.config import load_settings

    settings = load_settings(environ={}, base_dir=tmp_path / "data")
    settings.ensure_dirs()
    start = transit_start_time(J0834.ra_deg, "2026-11-25", dec_deg=J0834.dec_deg, n_times=6)
    sim = simulate.simulate_group(tmp_path / "in", start, scale="small", calibrator=J0834.name, seed=0)
    (grp,) = discover_groups(tmp_path / "in", settle_s=0)
    ms = convert_group(sim.group_id, grp.files, products_dir=settings.products_dir,
                       scratch_dir=settings.scratch_dir).ms_path
    first = calibrate_group(settings, ms)
    assert first.status == "active", first.result.reasons
    again = calibrate_group(settings, ms)
    assert again.set_name == first.set_name and again.result is None
    forced = calibrate_group(settings, ms, force=True)
    assert forced.set_name != first.set_name
    assert all(s.path.exists() for s in first.result.solutions + forced.result.solutions)
