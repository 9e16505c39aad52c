"""Every imaged group is flagged as calibrator groups are, once, before applycal; too much flagged: not imaged.

One small simulated target group with RFI (about one hit channel per subband), converted once; each test
flags its own copy of the MS (flagging it takes ~0.1 s).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from casacore.tables import table

from catalog import query as cq
from catalog import store
from contimg import naming
from contimg.calibration.flagging import flag_for_calibration
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.simulate import Corruptions, simulate_group
from contimg.simulate.truth import load_truth
from tasks import records
from tasks.flagging import flag_group, recorded_flagging
from test_flagging import _converted_flags, _rfi_scores

START = "2026-11-26T08:00:00"
STEPS = ["reset", "clip", "autocorr", "edge", "rfi"]


@pytest.fixture(scope="module")
def target_group(tmp_path_factory):
    """(incoming directory, MS, truth) of a small target group with RFI, dead and correlator-flagged antennas."""
    root = tmp_path_factory.mktemp("target")
    # the small preset's 12 antennas with 8 channels and 12 integrations: with its 4 x 6 samples per subband
    # and baseline the RFI statistics are thin (measured: 2.5 % false flags instead of 0.5 %)
    sim = simulate_group(root / "incoming", START, scale="small", n_channels=8, n_times=12, seed=5,
                         corruptions=Corruptions(rfi=True, rfi_channels_per_subband=1.0))
    (group,) = discover_groups(root / "incoming", settle_s=0)
    ms = convert_group(sim.group_id, group.files, products_dir=root / "products", scratch_dir=root / "scratch",
                       validate=False).ms_path
    return root / "incoming", ms, load_truth(naming.truth_path(root / "incoming", sim.group_id))


def _converted_copy(settings, ms: Path) -> tuple[Path, str]:
    """A copy of the MS in the settings' products, recorded ``converted``: (its path, its group id)."""
    group_id = naming.group_id_from_stem(naming.ms_table_prefix(ms).name)
    dest = naming.ms_path(settings.products_dir, group_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ms, dest)
    store.append(settings.catalog_dir, "ms_index",
                 [records.next_ms_row(None, group_id, dest.resolve(), stage="converted")])
    return dest.resolve(), group_id


def _column(ms: Path, name: str) -> np.ndarray:
    with table(str(ms), ack=False) as tab:
        return tab.getcol(name)


def _flag_metrics(settings, ms: Path) -> dict:
    rows = cq.query(settings.catalog_dir, "SELECT metric, value, value_text, passed, threshold FROM qa_metrics "
                                          "WHERE subject = ? AND stage = 'flag'", [str(ms)]).to_pylist()
    return {r["metric"]: r for r in rows}


def _flag_runs(settings, group_id: str) -> list[dict]:
    return cq.query(settings.catalog_dir, "SELECT status, error FROM stage_runs_all WHERE group_id = ? "
                                          "AND stage = 'flag' ORDER BY started_at", [group_id]).to_pylist()


def test_flag_group_flags_the_rfi_and_records_the_report(settings, target_group, capsys):
    _, src, truth = target_group
    ms, group_id = _converted_copy(settings, src)
    data_before = _column(ms, "DATA")
    t = time.perf_counter()
    out = flag_group(settings, ms)
    seconds = time.perf_counter() - t
    scores = _rfi_scores(ms, truth, edge=1)
    with capsys.disabled():
        print(f"\nflag_group on a small target group: {seconds:.2f} s; flagged {out['flagged_fraction']:.1%} in all, "
              f"RFI added {out['rfi_added_fraction']:.2%}, delivered data flagged "
              f"{out['delivered_flagged_fraction']:.2%}; {len(truth['corruptions']['rfi'])} RFI cells, "
              f"recall {scores['recall_gt0sigma']:.3f}, false flags {scores['false_flag']:.4f}")
    assert out["flagged"] and out["passed"] and out["reason"] is None and out["source"] == "flag"
    assert [s["step"] for s in out["steps"]] == STEPS
    # the truth's RFI cells end up flagged (measured: all of them), little else
    assert len(truth["corruptions"]["rfi"]) >= 10 and scores["n_rfi"] > 0
    assert scores["recall_gt5sigma"] == 1.0 and scores["recall_gt0sigma"] >= 0.95
    assert scores["false_flag"] < 0.05  # measured 0.021 (flags grown around the RFI cells among them)
    np.testing.assert_array_equal(_column(ms, "DATA"), data_before)  # DATA untouched
    # the gated fraction: cross-correlations outside the edge channels, unflagged as converted
    flags, ant1, ant2 = (_column(ms, c) for c in ("FLAG", "ANTENNA1", "ANTENNA2"))
    delivered = ~_converted_flags(ms) & (ant1 != ant2)[:, None, None]
    delivered[:, 0] = delivered[:, -1] = False
    assert out["delivered_flagged_fraction"] == pytest.approx(flags[delivered].mean())

    # the report, with the calibrator path's metric names
    m = _flag_metrics(settings, ms)
    assert {f"flagged_after_{s}" for s in STEPS} | {f"added_by_{s}" for s in STEPS} \
        | {f"seconds/{s}" for s in STEPS} <= set(m)
    assert m["flagged_fraction"]["value"] == pytest.approx(out["flagged_fraction"])
    assert m["flagged_fraction"]["value"] == pytest.approx(m["flagged_after_rfi"]["value"])
    assert m["rfi_backend"]["value_text"] == out["rfi_backend"] != "none"
    assert m["added_by_rfi"]["value"] == pytest.approx(out["rfi_added_fraction"]) and out["rfi_added_fraction"] > 0
    gate = m["delivered_flagged_fraction"]
    assert gate["passed"] is True and gate["threshold"] == settings.max_flagged_fraction
    assert 0 < gate["value"] < settings.max_flagged_fraction
    antennas = sorted(int(k.split("/ant")[1]) for k in m if k.startswith("flagged/ant"))
    assert antennas == sorted(truth["scale"]["antennas"])
    assert sorted(k for k in m if k.startswith("flagged/spw")) == [f"flagged/spw{s:02d}" for s in range(16)]
    bad = truth["corruptions"]["dead_antennas"] + truth["corruptions"]["flagged_antennas"]
    assert all(m[f"flagged/ant{a:03d}"]["value"] == 1.0 for a in bad)
    assert [r["status"] for r in _flag_runs(settings, group_id)] == ["completed"]
    # flagging is not a stage of the MS: the sweeps still see it converted
    assert records.latest_ms(settings, group_id)["stage"] == "converted"


def test_rerun_does_not_flag_again_force_does_from_the_converted_flags(settings, target_group):
    _, src, _ = target_group
    ms, group_id = _converted_copy(settings, src)
    first = flag_group(settings, ms)
    flags = _column(ms, "FLAG")
    n_rows = cq.query(settings.catalog_dir, "SELECT count(*) AS n FROM qa_metrics_all").column("n")[0].as_py()

    # someone (a hand applycal, say) adds flags: a rerun leaves them, records nothing
    with table(str(ms), ack=False, readonly=False) as tab:
        tab.putcol("FLAG", np.ones_like(flags))
    again = flag_group(settings, ms)
    assert not again["flagged"] and again["passed"] and again["source"] == "flag" and again["steps"] == []
    assert again["delivered_flagged_fraction"] == pytest.approx(first["delivered_flagged_fraction"])
    assert _column(ms, "FLAG").all()
    assert cq.query(settings.catalog_dir, "SELECT count(*) AS n FROM qa_metrics_all").column("n")[0].as_py() == n_rows
    assert len(_flag_runs(settings, group_id)) == 1

    # force: flagged again from the converted flags, so exactly the first run's flags
    forced = flag_group(settings, ms, force=True)
    assert forced["flagged"] and [s["step"] for s in forced["steps"]] == STEPS
    np.testing.assert_array_equal(_column(ms, "FLAG"), flags)
    assert [r["status"] for r in _flag_runs(settings, group_id)] == ["completed", "completed"]

    # a reconverted MS has new flags: its old report does not count
    store.append(settings.catalog_dir, "ms_index", [records.next_ms_row(None, group_id, ms, stage="converted")])
    assert recorded_flagging(settings, ms) is None
    assert flag_group(settings, ms)["flagged"]


def test_a_group_flagged_by_its_calibration_is_not_flagged_again(settings, target_group):
    """The calibrator path's report (stage calibrate, the same metrics) counts as the group's flagging."""
    _, src, _ = target_group
    ms, group_id = _converted_copy(settings, src)
    report = flag_for_calibration(ms, log_dir=settings.products_dir / "logs").to_dict()
    store.append(settings.catalog_dir, "qa_metrics",
                 records.qa_rows(str(ms), "ms", group_id, "calibrate", records.flag_metrics(report)))
    out = flag_group(settings, ms)
    assert not out["flagged"] and out["source"] == "calibrate" and out["passed"]
    assert out["flagged_fraction"] == pytest.approx(report["flagged_fraction"])
    assert _flag_runs(settings, group_id) == []


def test_too_much_flagged_is_recorded_failed_with_the_reason(settings, target_group):
    _, src, _ = target_group
    strict = settings.replace(max_flagged_fraction=0.001)
    ms, group_id = _converted_copy(strict, src)
    out = flag_group(strict, ms)
    assert out["flagged"] and not out["passed"]
    fraction = f"{out['delivered_flagged_fraction']:.1%}"
    assert fraction in out["reason"] and "max_flagged_fraction 0.1%" in out["reason"]
    latest = records.latest_ms(strict, group_id)
    assert latest["stage"] == "failed" and latest["error"] == out["reason"] and latest["path"] == str(ms)
    assert _flag_runs(strict, group_id) == [{"status": "failed", "error": out["reason"]}]
    gate = _flag_metrics(strict, ms)["delivered_flagged_fraction"]
    assert gate["passed"] is False and gate["threshold"] == 0.001
    # a rerun judges the recorded report again and adds no row; a raised limit passes it without flagging
    rows = len(cq.history(strict.catalog_dir, "ms_index", group_id=group_id))
    assert not flag_group(strict, ms)["passed"]
    assert len(cq.history(strict.catalog_dir, "ms_index", group_id=group_id)) == rows
    relaxed = flag_group(strict.replace(max_flagged_fraction=0.5), ms)
    assert relaxed["passed"] and not relaxed["flagged"]


def test_contimg_flag_command(settings, target_group, monkeypatch, capsys):
    from contimg_cli.main import main

    _, src, _ = target_group
    monkeypatch.setenv("CONTIMG_BASE_DIR", str(settings.base_dir))
    ms, _ = _converted_copy(settings, src)
    assert main(["flag", str(ms)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reset ") and "rfi " in out and "(limit 50%)" in out
    assert main(["flag", str(ms)]) == 0
    assert "was flagged already (by flag); --force flags it again" in capsys.readouterr().out
    assert main(["flag", str(ms.parent / "nope.ms")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contimg flag: error: ") and "not a Measurement Set" in err[0]


def test_target_flow_flags_before_applycal_once_and_fails_a_group_flagged_too_much(pipeline_env, prefect_server,
                                                                                   target_group, monkeypatch):
    """The flag stage runs before applycal; a woken group is not flagged again; over the limit: failed, not
    imaged, its artifact says why, and the sweeps leave it alone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from contimg.config import load_settings
    from flows.process_group import process_converted
    from flows.target_group import target_group as target_flow
    from flows.target_group import wake_waiting
    from tasks.artifacts import artifact_key

    incoming, src, _ = target_group
    settings = load_settings()
    settings.ensure_dirs()
    ms, group_id = _converted_copy(settings, src)

    # no calibration yet: flagged, then waiting
    assert target_flow(group_id)["state"] == "waiting_for_cal"
    runs = cq.query(settings.catalog_dir, "SELECT stage, status, started_at, ended_at FROM stage_runs_all "
                                          "WHERE group_id = ? ORDER BY started_at", [group_id]).to_pylist()
    assert [(r["stage"], r["status"]) for r in runs] == [("flag", "completed"), ("applycal", "skipped")]
    assert runs[0]["ended_at"] <= runs[1]["started_at"]
    # run again (as a wake-up would): not flagged again
    assert target_flow(group_id)["state"] == "waiting_for_cal"
    assert len(_flag_runs(settings, group_id)) == 1

    # too much flagged (a strict limit): failed with the reason, not imaged
    monkeypatch.setenv("CONTIMG_MAX_FLAGGED_FRACTION", "0.001")
    state = target_flow(group_id, force=True, return_state=True)
    assert state.is_completed()  # recorded bad data, not a fault
    out = state.result()
    assert out["state"] == "failed" and "above max_flagged_fraction 0.1%" in out["detail"]
    assert records.latest_ms(settings, group_id)["stage"] == "failed"
    assert [r["status"] for r in _flag_runs(settings, group_id)] == ["completed", "failed"]
    applycal = cq.query(settings.catalog_dir, "SELECT count(*) AS n FROM stage_runs_all WHERE group_id = ? "
                                              "AND stage = 'applycal'", [group_id]).column("n")[0].as_py()
    assert applycal == 2  # the two waiting runs' only
    assert cq.query(settings.catalog_dir, "SELECT count(*) AS n FROM images_all").column("n")[0].as_py() == 0
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("group", group_id)])))
    summary = max(found, key=lambda a: a.created).data
    assert f"# Group {group_id}: failed" in summary and out["detail"] in summary
    assert "## Flagging" in summary and "worst antennas: DSA-" in summary and "(limit 0.1 %)" in summary
    # the sweeps leave a failed group alone
    assert group_id not in process_converted() and group_id not in wake_waiting()
    # a raised limit: the recorded report passes, the group goes on without being flagged again
    monkeypatch.delenv("CONTIMG_MAX_FLAGGED_FRACTION")
    assert target_flow(group_id)["state"] == "waiting_for_cal"
    assert len(_flag_runs(settings, group_id)) == 2
