"""Calibration registry: sets, QA gate, validity by table type, interpolation, retirement, CLI.

Real Parquet files and DuckDB in temporary directories; no mocks.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest

from catalog import query, store
from catalog.cal_registry import ApplyList, active_applylist, list_sets, register_set, retire_set
from catalog.errors import CatalogError, NoCalibrationError

T0 = 60735.0  # 2025-03-01T00:00:00 UTC
H = 1.0 / 24.0


@pytest.fixture
def cat(tmp_path):
    return tmp_path / "catalog"


def tables(name, *, kb=True, g=("GP", "GA")):
    out = []
    if kb:
        out += [{"path": f"/cal/{name}.K", "type": "K", "interp": "nearest", "snr_median": 40.0,
                 "flagged_fraction": 0.05},
                {"path": f"/cal/{name}.B", "type": "B", "interp": "nearest,linearflag", "spwmap": [],
                 "solver_params": {"solint": "inf", "minsnr": 5.0}, "flagged_fraction": 0.1}]
    for t in g:
        out.append({"path": f"/cal/{name}.{t}", "type": t, "interp": "linear", "gainfield": "",
                    "spwmap": [0] * 16 if t == "GA" else [], "snr_median": 20.0})
    return out


def reg(cat, name, mid, *, status="active", reason=None, kb=True, g=("GP", "GA"), refant="DSA-104",
        kb_set=None, calibrator="J0834+5534"):
    register_set(cat, set_name=name, tables=tables(name, kb=kb, g=g), status=status, reason=reason,
                 obs_date="2025-03-01", mid_mjd=mid, calibrator=calibrator, transit_mjd=mid, refant=refant,
                 refant_ranking=[refant, "DSA-105"], source_ms=f"/ms/{name}.ms", kb_set=kb_set)


def test_a_set_at_its_own_time_gives_its_tables_in_order_with_their_parameters(cat):
    reg(cat, "A", T0)
    al = active_applylist(cat, T0)
    assert isinstance(al, ApplyList)
    assert [t.type for t in al.tables] == ["K", "B", "GP", "GA"]
    assert [t.path for t in al.tables] == ["/cal/A.K", "/cal/A.B", "/cal/A.GP", "/cal/A.GA"]
    assert al.tables[3].spwmap == [0] * 16 and al.tables[0].spwmap == []
    assert al.tables[1].interp == "nearest,linearflag"
    assert {t.refant for t in al.tables} == {"DSA-104"} and {t.calibrator for t in al.tables} == {"J0834+5534"}
    assert al.kb_set == "A" and [g.set_name for g in al.g_sets] == ["A"] and not al.interpolate_g
    assert al.warnings == []
    kw = al.applycal_kwargs()
    assert kw["gaintable"] == [t.path for t in al.tables] and kw["spwmap"][3] == [0] * 16
    row = query.latest(cat, "cal_registry", set_name="A", table_path="/cal/A.B")[0]
    assert row["qa_passed"] is True and row["schema_version"] == 2 and '"minsnr": 5.0' in row["solver_params"]
    assert row["valid_end_mjd"] == pytest.approx(T0 + 1.0)  # K/B: the 24 h setting recorded
    assert query.latest(cat, "cal_registry", set_name="A", table_path="/cal/A.GP")[0]["valid_end_mjd"] == \
        pytest.approx(T0 + 3 * H)


def test_overlapping_sets_newest_wins(cat):
    # two K/B sets before the target: the newer one; a re-solve of the same data supersedes the first
    reg(cat, "KB1", T0, g=())
    reg(cat, "KB2", T0 + 2 * H, g=())
    reg(cat, "KB2-resolved", T0 + 2 * H, g=())
    reg(cat, "G1", T0 + 2.5 * H, kb=False)
    reg(cat, "G2", T0 + 3.5 * H, kb=False)
    al = active_applylist(cat, T0 + 3 * H)
    assert al.kb_set == "KB2-resolved"
    assert [t.path for t in al.tables[:2]] == ["/cal/KB2-resolved.K", "/cal/KB2-resolved.B"]
    # two G sets at the same time: the one registered last
    reg(cat, "G2-resolved", T0 + 3.5 * H, kb=False)
    al = active_applylist(cat, T0 + 3 * H)
    assert [g.set_name for g in al.g_sets] == ["G1", "G2-resolved"]


def test_kb_older_than_max_age_is_not_used(cat):
    reg(cat, "KB", T0, g=())
    reg(cat, "G", T0 + 25 * H, kb=False)
    with pytest.raises(NoCalibrationError) as err:
        active_applylist(cat, T0 + 25 * H)
    assert err.value.missing == "K/B"
    assert "KB at MJD 60735.00000" in str(err.value) and "25.00 h before" in str(err.value)
    al = active_applylist(cat, T0 + 25 * H, kb_max_age_hours=30.0)
    assert al.kb_set == "KB"


def test_kb_solved_after_the_target_is_used_when_none_before(cat):
    # a target observed before the night's first strong calibrator
    reg(cat, "A", T0 + 1 * H, g=())
    reg(cat, "G", T0 + 0.5 * H, kb=False)  # K/B it was solved with unknown
    al = active_applylist(cat, T0 + 0.5 * H)
    assert al.kb_set == "A"
    # once a set before the target exists it wins ("valid until superseded"), even if older
    reg(cat, "Old", T0 - 20 * H, g=())
    assert active_applylist(cat, T0 + 0.5 * H).kb_set == "Old"
    # ... unless the gains were solved with the later one: then consistency wins
    reg(cat, "Full", T0 + 1 * H)
    assert active_applylist(cat, T0 + 1 * H).kb_set == "Full"


def test_target_between_two_g_sets_gets_both_in_time_order(cat):
    reg(cat, "A", T0)
    reg(cat, "G2", T0 + 2 * H, kb=False, kb_set="A")
    al = active_applylist(cat, T0 + 0.5 * H)
    assert al.interpolate_g and al.warnings == []
    assert [g.set_name for g in al.g_sets] == ["A", "G2"]
    assert [g.weight for g in al.g_sets] == pytest.approx([0.75, 0.25])
    assert [g.gap_hours for g in al.g_sets] == pytest.approx([-0.5, 1.5])
    assert [(t.set_name, t.type) for t in al.tables] == [
        ("A", "K"), ("A", "B"), ("A", "GP"), ("A", "GA"), ("G2", "GP"), ("G2", "GA")]
    assert al.kb_set == "A"
    with pytest.raises(ValueError, match="merge"):
        al.applycal_kwargs()


def test_single_g_set_within_the_gap_is_used_with_a_warning(cat):
    reg(cat, "A", T0)
    al = active_applylist(cat, T0 + 2 * H)
    assert [g.set_name for g in al.g_sets] == ["A"] and not al.interpolate_g
    assert len(al.warnings) == 1 and "single G set A" in al.warnings[0] and "2.00 h before" in al.warnings[0]
    # sets too far apart to interpolate: the nearer one, saying why
    reg(cat, "G9", T0 + 8 * H, kb=False, kb_set="A")
    al = active_applylist(cat, T0 + 2 * H)
    assert [g.set_name for g in al.g_sets] == ["A"]
    assert "8.00 h apart" in al.warnings[0]


def test_beyond_the_gap_no_calibration_names_the_nearest_sets(cat):
    reg(cat, "A", T0)
    reg(cat, "G9", T0 + 8 * H, kb=False, kb_set="A")
    with pytest.raises(NoCalibrationError) as err:
        active_applylist(cat, T0 + 4 * H)
    exc = err.value
    assert exc.missing == "G" and exc.mjd == pytest.approx(T0 + 4 * H)
    assert exc.before["set_name"] == "A" and exc.before["gap_hours"] == pytest.approx(-4.0)
    assert exc.after["set_name"] == "G9" and exc.after["gap_hours"] == pytest.approx(4.0)
    text = str(exc)
    assert "A at MJD 60735.00000 (2025-03-01T00:00:00, 4.00 h before" in text
    assert "G9 at MJD 60735.33333" in text and "4.00 h after" in text
    assert "waits for the next calibrator transit" in text
    # the setting decides: a wider gap accepts the nearest
    assert active_applylist(cat, T0 + 4 * H, g_max_gap_hours=5.0).interpolate_g


def test_rejected_set_is_never_returned_and_the_previous_good_set_stays(cat):
    reg(cat, "Good", T0)
    with pytest.raises(CatalogError, match="reason"):
        reg(cat, "Bad", T0 + 1 * H, status="rejected")
    reg(cat, "Bad", T0 + 1 * H, status="rejected", reason="bandpass: 40% of solutions flagged (max 25%)")
    al = active_applylist(cat, T0 + 1 * H)
    assert al.set_names == ["Good"]
    assert "Bad" not in {t.set_name for t in al.tables}
    [bad] = list_sets(cat, status="rejected")
    assert bad["set_name"] == "Bad" and bad["qa_passed"] is False and "40%" in bad["reason"]


def test_retired_set_is_skipped_and_history_kept(cat):
    reg(cat, "Old", T0)
    reg(cat, "New", T0 + 1 * H)
    assert active_applylist(cat, T0 + 1 * H).set_names == ["New"]
    assert retire_set(cat, "New", reason="phase jumps on DSA-104") == 4
    al = active_applylist(cat, T0 + 1 * H)
    assert al.set_names == ["Old"] and al.warnings  # a single G set 1 h before
    assert retire_set(cat, "New", reason="again") == 0
    [state] = [s for s in list_sets(cat) if s["set_name"] == "New"]
    assert state["status"] == "retired" and state["reason"] == "phase jumps on DSA-104"
    assert state["qa_passed"] is True  # it passed QA; it was withdrawn later
    history = query.history(cat, "cal_registry", set_name="New", table_path="/cal/New.K")
    assert [r["status"] for r in history] == ["active", "retired"]
    assert history[0]["registered_at"] == history[1]["registered_at"]
    with pytest.raises(CatalogError, match="no caltable set named 'Nope'.*latest sets: New, Old"):
        retire_set(cat, "Nope", reason="x")


def test_no_set_at_all_is_a_clear_error(cat):
    with pytest.raises(NoCalibrationError, match="no active caltable set is registered") as err:
        active_applylist(cat, T0)
    assert err.value.before is None and err.value.after is None
    assert list_sets(cat) == []
    # only rejected ones: still none
    reg(cat, "Bad", T0, status="rejected", reason="too faint")
    with pytest.raises(NoCalibrationError, match="no active caltable set is registered"):
        active_applylist(cat, T0)


def test_reregistering_the_same_set_is_a_noop_and_a_different_one_refused(cat):
    reg(cat, "A", T0)
    reg(cat, "A", T0)  # a rerun of the flow
    assert len(query.history(cat, "cal_registry", set_name="A")) == 4
    with pytest.raises(CatalogError, match="already registered"):
        reg(cat, "A", T0, status="rejected", reason="x")
    with pytest.raises(CatalogError, match="already registered"):
        reg(cat, "A", T0, g=("G",))


def test_sets_that_cannot_be_interpolated_fall_back_to_the_nearer(cat):
    reg(cat, "A", T0, refant="DSA-104")
    reg(cat, "B", T0 + 2 * H, refant="DSA-110")
    al = active_applylist(cat, T0 + 1.5 * H)
    assert not al.interpolate_g and [g.set_name for g in al.g_sets] == ["B"]
    assert any("reference antennas differ" in w for w in al.warnings)


def test_gains_come_with_the_kb_they_were_solved_against(cat):
    reg(cat, "KB-A", T0, g=())
    reg(cat, "KB-B", T0 + 5 * H, g=())  # newer, but the gains below were solved with KB-A
    reg(cat, "G1", T0 + 6 * H, kb=False, kb_set="KB-A")
    reg(cat, "G2", T0 + 7 * H, kb=False, kb_set="KB-A")
    al = active_applylist(cat, T0 + 6.5 * H)
    assert al.kb_set == "KB-A" and al.interpolate_g and al.warnings == []
    retire_set(cat, "KB-A", reason="bad")
    al = active_applylist(cat, T0 + 6.5 * H)
    assert al.kb_set == "KB-B" and any("solved with the K/B of KB-A" in w for w in al.warnings)


def test_version_1_rows_are_read(cat):
    # rows written before the registry columns existed: no mid_mjd (window midpoint), 'deprecated' = retired
    common = {"apply_order": 0, "valid_start_mjd": T0 - 0.5, "valid_end_mjd": T0 + 0.5, "obs_date": "2025-03-01"}
    store.append(cat, "cal_registry", [
        {"set_name": "v1", "table_path": "/cal/v1.K", "table_type": "K", "status": "active", **common},
        {"set_name": "v1", "table_path": "/cal/v1.G", "table_type": "G", "status": "active", **common,
         "apply_order": 1},
        {"set_name": "v1-old", "table_path": "/cal/v1-old.G", "table_type": "G", "status": "deprecated", **common},
    ])
    al = active_applylist(cat, T0 + 0.5 * H)
    assert al.set_names == ["v1"] and [t.type for t in al.tables] == ["K", "G"]


def _register_many(cat, prefix, n, start):
    for i in range(n):
        reg(cat, f"{prefix}{i}", start + i * H)


def test_concurrent_registrations_are_all_visible(cat):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(cat, p, 4, T0 + k * 0.5 * H))
             for k, p in enumerate(("p", "q"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    names = {s["set_name"] for s in list_sets(cat)}
    assert names == {f"{p}{i}" for p in "pq" for i in range(4)}
    assert all(s["n_tables"] == 4 for s in list_sets(cat))
    al = active_applylist(cat, T0 + 1.25 * H)  # between p1 (1.0 h) and q1 (1.5 h)
    assert [g.set_name for g in al.g_sets] == ["p1", "q1"]


# --- command line --------------------------------------------------------------------

def test_cli_on_an_empty_catalog_is_friendly(tmp_path, monkeypatch, capsys):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "new"))
    monkeypatch.delenv("CONTIMG_CATALOG_DIR", raising=False)
    assert main(["caltables"]) == 0
    assert "no caltable sets registered" in capsys.readouterr().out
    assert main(["caltables", "--at", "2025-03-01T04:00:00"]) == 1
    out = capsys.readouterr().out
    assert "none: no calibration for MJD 60735.16667" in out and "no caltable sets registered" in out
    assert main(["caltables", "retire", "X"]) == 2
    assert "no caltable set named 'X'" in capsys.readouterr().err
    assert main(["caltables", "--at", "yesterday"]) == 2
    assert "neither an MJD nor an ISO" in capsys.readouterr().err


def test_cli_lists_shows_applylist_and_retires(cat, capsys):
    from contimg_cli.main import main

    reg(cat, "A", T0)
    reg(cat, "G2", T0 + 2 * H, kb=False, kb_set="A")
    reg(cat, "Bad", T0 + 1 * H, status="rejected", reason="delays out of range")
    assert main(["caltables", "--catalog-dir", str(cat)]) == 0
    out = capsys.readouterr().out
    assert out.index("G2") < out.index("Bad") < out.index("\nA ")
    assert "K,B,GP,GA" in out and "delays out of range" in out and "2025-03-01T02:00:00" in out
    assert main(["caltables", "--catalog-dir", str(cat), "--at", f"{T0 + 0.5 * H}"]) == 0
    out = capsys.readouterr().out
    assert "interpolated linearly" in out and "/cal/G2.GA" in out and "0,0,0" in out
    assert main(["caltables", "--catalog-dir", str(cat), "retire", "G2", "--reason", "RFI"]) == 0
    assert "retired G2 (2 tables): RFI" in capsys.readouterr().out
    assert main(["caltables", "retire", "A", "--catalog-dir", str(cat)]) == 0
    assert main(["caltables", "--catalog-dir", str(cat), "--at", "2025-03-01T00:30:00"]) == 1
    assert "waits for the next calibrator transit" in capsys.readouterr().out
