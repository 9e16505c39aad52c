"""Catalog: validation, append, views (Python and duckdb -init), latest, bad files, compaction, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from catalog import check, compact, query, schema, status, store, views
from catalog.errors import CatalogError, SchemaError

UTC = dt.timezone.utc


def group(gid="2025-03-01T00:05:10", state="collecting", **extra) -> dict:
    return {"group_id": gid, "obs_date": gid[:10], "state": state, **extra}


def ms(gid="2025-03-01T00:05:10", stage="converted", **extra) -> dict:
    return {"group_id": gid, "obs_date": gid[:10], "path": f"/ms/{gid}.ms", "stage": stage, **extra}


def run_init_file(con, path: Path) -> None:
    """What ``duckdb -init path`` does: run each statement of the file."""
    for stmt in path.read_text().split(";"):
        if stmt.strip() and not all(line.startswith("--") for line in stmt.strip().splitlines()):
            con.execute(stmt).fetchall()


@pytest.fixture
def cat(tmp_path) -> Path:
    return tmp_path / "catalog"


# --- validation ----------------------------------------------------------------

@pytest.mark.parametrize(
    "table, row, column, words",
    [
        ("groups", {"obs_date": "2025-03-01", "state": "ready"}, "group_id", "missing required"),
        ("groups", group(n_present="16"), "n_present", "expected an integer, got str"),
        ("groups", group(n_present=True), "n_present", "expected an integer, got bool"),
        ("groups", group(state="done"), "state", "not one of"),
        ("groups", group(subbands_present=[0, "1"]), "subbands_present", "list of integers"),
        ("groups", group(first_seen=dt.datetime(2025, 3, 1)), "first_seen", "naive datetime"),
        ("groups", group(colour="red"), "colour", "unknown column"),
        ("groups", {**group(), "obs_date": "2025-3-1"}, "obs_date", "not YYYY-MM-DD"),
        ("groups", {**group(), "obs_date": "2025-02-30"}, "obs_date", "not a calendar date"),
        ("groups", group(gid=""), "group_id", None),
        ("ms_index", ms(stage="imaging"), "stage", "not one of"),
        ("ms_index", ms(mid_mjd="60000.5"), "mid_mjd", "expected a number"),
        ("images", {"path": "/x.fits", "type": "image", "obs_date": "2025-03-01", "imsize_x": 2**40},
         "imsize_x", "does not fit"),
    ],
)
def test_bad_rows_are_rejected_naming_table_row_and_column(cat, table, row, column, words):
    good = group() if table == "groups" else ms() if table == "ms_index" else None
    rows = [good, row] if good else [row]
    with pytest.raises(SchemaError) as info:
        store.append(cat, table, rows)
    err = info.value
    msg = str(err)
    assert err.table == table and err.column == column and err.row_index == len(rows) - 1
    assert f"catalog table {table!r}" in msg and f"row {len(rows) - 1}" in msg and repr(column) in msg
    if words:
        assert words in msg
    # nothing was written, not even the valid row
    assert not list((cat / table).glob("obs_date=2*/*")) if (cat / table).exists() else True


def test_unknown_table_and_single_dict_are_refused(cat):
    with pytest.raises(CatalogError, match="unknown"):
        store.append(cat, "nope", [group()])
    with pytest.raises(SchemaError, match="list of dicts"):
        store.append(cat, "groups", group())


def test_append_fills_common_columns_and_coerces(cat):
    ids = store.append(cat, "groups", [group(subbands_present=(0, 1), files=[Path("/a/sb00.hdf5")],
                                             first_seen=dt.datetime(2025, 3, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))))])
    assert len(ids) == 1 and len(ids[0]) == 32
    [row] = query.latest(cat, "groups")
    assert row["event_id"] == ids[0]
    assert row["schema_version"] == schema.VERSIONS["groups"] and row["code_version"]
    assert row["recorded_at"].tzinfo is not None
    assert row["first_seen"] == dt.datetime(2025, 3, 1, 0, tzinfo=UTC)
    assert row["files"] == ["/a/sb00.hdf5"] and row["subbands_present"] == [0, 1]
    assert row["obs_date"] == "2025-03-01"


def test_one_file_per_call_per_date_and_no_temp_left(cat):
    store.append(cat, "groups", [group(f"2025-03-01T00:0{i}:00") for i in range(5)])
    store.append(cat, "groups", [group("2025-03-02T00:00:00"), group("2025-03-01T09:00:00")])
    files = sorted(p.relative_to(cat / "groups").parent.name for p in (cat / "groups").rglob("part-*.parquet"))
    assert files == ["obs_date=2025-03-01", "obs_date=2025-03-01", "obs_date=2025-03-02"]
    assert not list(cat.rglob(".tmp-*"))
    assert (cat / "groups" / "obs_date=_schema" / "schema-v1.parquet").exists()


# --- views and latest --------------------------------------------------------

def test_latest_state_per_key_and_history(cat):
    g = "2025-03-01T00:05:10"
    for state in ("collecting", "ready", "converting", "converted"):
        store.append(cat, "groups", [group(g, state)])
    store.append(cat, "groups", [group("2025-03-01T00:10:20", "incomplete", reason="missing sb03")])
    latest = query.latest(cat, "groups")
    assert [(r["group_id"], r["state"]) for r in latest] == [(g, "converted"), ("2025-03-01T00:10:20", "incomplete")]
    assert query.latest(cat, "groups", state="incomplete")[0]["reason"] == "missing sb03"
    assert query.latest(cat, "groups", group_id="nope") == []
    assert [r["state"] for r in query.history(cat, "groups", group_id=g)] == [
        "collecting", "ready", "converting", "converted"]
    with pytest.raises(CatalogError, match="no column"):
        query.latest(cat, "groups", colour="red")


def test_views_are_typed_and_empty_before_any_row(cat):
    for table in schema.TABLES:
        t = query.query(cat, f"SELECT * FROM {table}")
        assert t.num_rows == 0
        assert set(schema.SCHEMAS[table].names) <= set(t.column_names)
    store.ensure_catalog(cat)
    con = duckdb.connect()
    os.chdir(cat)  # the duckdb command line is started in the catalog root
    run_init_file(con, cat / "views.sql")
    for table in schema.TABLES:
        assert con.execute(f"SELECT count(*) FROM {table}_all").fetchall() == [(0,)]
    t = con.sql("SELECT * FROM ms_index").to_arrow_table()
    assert t.schema.field("cal_applied").type == schema.BOOL


def test_views_sql_from_duckdb_cli_matches_python(cat):
    for i in range(3):
        store.append(cat, "ms_index", [ms(stage=s) for s in ("converted", "calibrated")][: i + 1])
    # an in-progress write (temp file) must be invisible to the glob readers
    (cat / "ms_index" / "obs_date=2025-03-01" / ".tmp-abc.partial").write_bytes(b"PAR1 half written")
    assert (cat / "views.sql").read_text() == views.VIEWS_SQL.read_text()  # written by the first append
    os.chdir(cat)
    con = duckdb.connect()
    run_init_file(con, cat / "views.sql")
    cli = con.execute("SELECT count(*), min(stage) FROM ms_index_all").fetchall()[0]
    py = query.query(cat, "SELECT count(*), min(stage) FROM ms_index_all").to_pylist()[0]
    assert cli == tuple(py.values()) == (5, "calibrated")
    assert con.sql("SELECT stage FROM ms_index").fetchall() == [("calibrated",)]


def test_views_sql_is_generated_from_schema():
    assert views.VIEWS_SQL.read_text() == views.render(), "run: python -m catalog.views"


def test_query_errors_are_catalog_errors(cat):
    with pytest.raises(CatalogError, match="SELEC"):
        query.query(cat, "SELEC 1")


# --- bad files ---------------------------------------------------------------

def _corrupt_files(cat):
    """A garbage file, a truncated copy and a copy with its data pages scrambled."""
    store.append(cat, "images", [{"path": f"/img/{i}.fits", "type": "fits", "obs_date": "2025-03-01",
                                  "noise_jy": 1e-3 * i} for i in range(200)])
    part = cat / "images" / "obs_date=2025-03-01"
    [good] = list(part.glob("part-*.parquet"))
    data = good.read_bytes()
    (part / "part-0-garbage.parquet").write_bytes(b"this is not parquet at all")
    (part / "part-1-truncated.parquet").write_bytes(data[: len(data) // 2])
    scrambled = bytearray(data)
    for i in range(8, len(data) // 3):
        scrambled[i] ^= 0x5A
    (part / "part-2-scrambled.parquet").write_bytes(bytes(scrambled))
    return good


def test_corrupt_files_are_skipped_with_warning_and_reported_by_check(cat, caplog):
    _corrupt_files(cat)
    store.append(cat, "images", [{"path": "/img/new.fits", "type": "fits", "obs_date": "2025-03-02"}])
    with caplog.at_level(logging.WARNING, logger="catalog"):
        n = query.query(cat, "SELECT count(*) AS n FROM images").to_pylist()[0]["n"]
    assert n == 201
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "part-0-garbage.parquet" in warned and "part-1-truncated.parquet" in warned
    assert "part-2-scrambled.parquet" in warned
    report = check.check(cat)
    bad = {Path(p).name for p, _ in report.unreadable}
    assert bad == {"part-0-garbage.parquet", "part-1-truncated.parquet", "part-2-scrambled.parquet"}
    assert not report.ok
    assert report.rows["images"] == 201
    # quarantine moves them aside (never deletes) and the catalog is clean again
    report = check.check(cat, quarantine=True)
    assert len(report.quarantined) == 3 and all(Path(dst).exists() for _, dst in report.quarantined)
    assert check.check(cat).ok


def test_compaction_skips_unreadable_files_and_keeps_rows(cat):
    _corrupt_files(cat)
    r = compact.compact(cat, tables=["images"])
    assert r.partitions == 0  # only one readable file: nothing to merge
    assert len(r.skipped) == 3
    store.append(cat, "images", [{"path": "/img/x.fits", "type": "png", "obs_date": "2025-03-01"}])
    r = compact.compact(cat, tables=["images"])
    assert r.partitions == 1 and r.rows_out == 201
    assert query.query(cat, "SELECT count(*) AS n FROM images_all").to_pylist() == [{"n": 201}]


# --- compaction --------------------------------------------------------------

def test_compaction_merges_dedupes_and_preserves_latest_state(cat):
    gids = [f"2025-03-01T{h:02d}:00:00" for h in range(10)]
    for state in ("collecting", "ready", "converted"):
        for g in gids:
            store.append(cat, "groups", [group(g, state)])
    store.append(cat, "groups", [group("2025-03-02T00:00:00", "failed", reason="bad file")])
    before = query.query(cat, "SELECT * FROM groups ORDER BY group_id").to_pylist()
    part = cat / "groups" / "obs_date=2025-03-01"
    # a duplicate file (as left between a compaction's rename and its unlinks)
    first = sorted(part.glob("part-*.parquet"))[0]
    (part / ("part-dup-" + first.name[5:])).write_bytes(first.read_bytes())
    assert query.query(cat, "SELECT count(*) AS n FROM groups_all").to_pylist() == [{"n": 31}]
    r = compact.compact(cat)
    assert r.partitions == 1 and r.files_in == 31 and r.rows_out == 30 and r.duplicates_dropped == 1
    assert len(list(part.glob("part-*.parquet"))) == 1
    assert len(list((cat / "groups" / "obs_date=2025-03-02").glob("part-*.parquet"))) == 1
    after = query.query(cat, "SELECT * FROM groups ORDER BY group_id").to_pylist()
    assert after == before
    assert compact.compact(cat).partitions == 0  # idempotent


def test_compaction_conforms_old_files_to_the_current_schema(cat):
    # a file written by an older schema lacking most columns
    part = cat / "images" / "obs_date=2025-03-01"
    part.mkdir(parents=True)
    import pyarrow as pa

    old = pa.table({"path": ["/old.fits"], "type": ["image"], "obs_date": ["2025-03-01"],
                    "event_id": ["e1"], "recorded_at": pa.array([dt.datetime(2025, 3, 1, tzinfo=UTC)],
                                                                 schema.TIMESTAMP)})
    pq.write_table(old, part / "part-old.parquet")
    store.append(cat, "images", [{"path": "/new.fits", "type": "image", "obs_date": "2025-03-01", "noise_jy": 2e-4}])
    mixed = query.query(cat, "SELECT path, noise_jy FROM images ORDER BY path").to_pylist()
    assert mixed == [{"path": "/new.fits", "noise_jy": 2e-4}, {"path": "/old.fits", "noise_jy": None}]
    compact.compact(cat)
    [merged] = list(part.glob("part-*.parquet"))
    assert pq.read_schema(merged).names[: len(schema.SCHEMAS["images"])] == schema.SCHEMAS["images"].names
    rows = query.query(cat, "SELECT path, noise_jy FROM images ORDER BY path").to_pylist()
    assert rows == [{"path": "/new.fits", "noise_jy": 2e-4}, {"path": "/old.fits", "noise_jy": None}]


def test_compaction_removes_stale_temp_files_only(cat):
    store.append(cat, "groups", [group()])
    part = cat / "groups" / "obs_date=2025-03-01"
    stale, fresh = part / ".tmp-old.partial", part / ".tmp-new.partial"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1, 1))
    assert check.check(cat).stale_temps == [str(stale)]
    r = compact.compact(cat)
    assert r.temps_removed == 1 and not stale.exists() and fresh.exists()


# --- status and CLI ----------------------------------------------------------

def _populate(cat):
    now = dt.datetime(2025, 3, 1, 12, tzinfo=UTC)
    store.append(cat, "groups", [group("2025-03-01T00:00:00", "converted"),
                                 group("2025-03-01T00:05:10", "incomplete", reason="missing sb07"),
                                 group("2025-03-01T00:10:20", "failed", reason="InvalidInputError: bad dec")])
    store.append(cat, "ms_index", [ms("2025-03-01T00:00:00", "waiting_for_cal")])
    store.append(cat, "ms_index", [ms("2025-03-01T00:00:00", "imaged", cal_applied=True, caltable_set="cal-A")])
    store.append(cat, "stage_runs", [
        {"group_id": "2025-03-01T00:00:00", "obs_date": "2025-03-01", "stage": "convert", "status": "completed",
         "started_at": now, "ended_at": now, "seconds": 42.0, "peak_memory_mb": 900.0, "host": "h"},
        {"group_id": "2025-03-01T00:10:20", "obs_date": "2025-03-01", "stage": "convert", "status": "failed",
         "started_at": now, "seconds": 1.0, "error": "InvalidInputError: bad dec"}])
    store.append(cat, "images", [{"path": "/img/2025-03-01T00:00:00.pbcor.fits", "type": "pbcor", "obs_date": "2025-03-01",
                                  "group_id": "2025-03-01T00:00:00", "noise_jy": 3.1e-4, "dynamic_range": 850.0}])


def test_status_summary(cat):
    _populate(cat)
    s = status.summary(cat)
    assert s["groups_by_state"] == {"converted": 1, "failed": 1, "incomplete": 1}
    assert s["ms_by_stage"] == {"imaged": 1}
    sources = {(r["group_id"], r["source"]) for r in s["failures"]}
    assert sources == {("2025-03-01T00:10:20", "groups"), ("2025-03-01T00:10:20", "stage_runs/convert")}
    assert [r["detail"] for r in s["waiting"]] == ["missing sb07"]
    assert s["latest_images"][0]["noise_jy"] == pytest.approx(3.1e-4)
    assert s["stage_timing"][0]["runs"] == 2 and s["stage_timing"][0]["failed"] == 1


def test_cli_query_status_compact_check(cat, tmp_path, capsys):
    from contimg_cli.main import main

    _populate(cat)
    d = ["--catalog-dir", str(cat)]
    assert main(["query", "SELECT group_id, state FROM groups ORDER BY group_id", *d]) == 0
    out = capsys.readouterr().out
    assert "group_id" in out and "incomplete" in out and "(3 rows)" in out
    assert main(["query", "SELECT group_id, state FROM groups ORDER BY group_id", "--format", "csv", *d]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ['"group_id","state"', '"2025-03-01T00:00:00","converted"']
    assert main(["query", "SELECT group_id, recorded_at FROM groups", "--format", "json", *d]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    out_file = tmp_path / "q.parquet"
    assert main(["query", "SELECT * FROM stage_runs", "--format", "parquet", "-o", str(out_file), *d]) == 0
    assert pq.read_table(out_file).num_rows == 2
    assert main(["query", "SELECT nonsense FROM groups", *d]) == 2
    assert main(["status", *d]) == 0
    out = capsys.readouterr().out
    assert "incomplete=1" in out and "missing sb07" in out and "bad dec" in out and "0.00031" in out
    assert main(["catalog", "compact", *d]) == 0
    assert main(["catalog", "check", *d]) == 0
    (cat / "groups" / "obs_date=2025-03-01" / "part-x.parquet").write_bytes(b"junk")
    assert main(["catalog", "check", *d]) == 1
    assert "UNREADABLE" in capsys.readouterr().out


def test_cli_query_writes_list_columns_as_json_text_in_csv(cat, tmp_path, capsys):
    """Issue 21, defect 1: ``SELECT * FROM cal_registry --format csv`` failed on the list column spwmap."""
    from contimg_cli.main import main

    store.append(cat, "cal_registry", [
        {"set_name": "s1", "table_path": "/x/s1.bcal", "table_type": "B", "apply_order": 0, "obs_date": "2025-03-01",
         "valid_start_mjd": 60735.0, "valid_end_mjd": 60735.1, "status": "active", "spwmap": [0, 0, 1]},
        {"set_name": "s2", "table_path": "/x/s2.bcal", "table_type": "B", "apply_order": 0, "obs_date": "2025-03-01",
         "valid_start_mjd": 60735.0, "valid_end_mjd": 60735.1, "status": "active", "spwmap": None}])
    d = ["--catalog-dir", str(cat)]
    assert main(["query", "SELECT * FROM cal_registry ORDER BY set_name", "--format", "csv", *d]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = list(csv.DictReader(captured.out.splitlines()))
    assert [(r["set_name"], r["spwmap"]) for r in rows] == [("s1", "[0,0,1]"), ("s2", "")]
    assert json.loads(rows[0]["spwmap"]) == [0, 0, 1]
    # structs and maps (and lists of them) too, as JSON objects; JSON output keeps them native
    sql = ("SELECT [1, 2] AS l, {'a': 1, 'b': ['x', 'y,z']} AS s, MAP {'k': [2]} AS m, [[1], [2]] AS ll, "
           "[{'q': 1}] AS ls, NULL::INTEGER[] AS n")
    assert main(["query", sql, "--format", "csv", *d]) == 0
    [row] = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert {k: (json.loads(v) if v else None) for k, v in row.items()} == {
        "l": [1, 2], "s": {"a": 1, "b": ["x", "y,z"]}, "m": {"k": [2]}, "ll": [[1], [2]], "ls": [{"q": 1}], "n": None}
    assert main(["query", sql, "--format", "json", *d]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"l": [1, 2], "s": {"a": 1, "b": ["x", "y,z"]}, "m": {"k": [2]}, "ll": [[1], [2]], "ls": [{"q": 1}], "n": None}]
    out_file = tmp_path / "cal.parquet"
    assert main(["query", "SELECT spwmap FROM cal_registry ORDER BY set_name", "--format", "parquet",
                 "-o", str(out_file), *d]) == 0
    assert pq.read_table(out_file).column("spwmap").to_pylist() == [[0, 0, 1], None]
    assert main(["query", "SELECT set_name, spwmap FROM cal_registry ORDER BY set_name", *d]) == 0
    assert "[0,0,1]" in capsys.readouterr().out


def test_cli_uses_catalog_dir_setting(tmp_path, monkeypatch, capsys):
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_CATALOG_DIR", str(tmp_path / "c"))
    store.append(tmp_path / "c", "groups", [group()])
    assert main(["query", "SELECT count(*) AS n FROM groups", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "1"]


def test_every_query_in_docs_runs(cat):
    import re

    _populate(cat)
    store.append(cat, "cal_registry", [
        {"set_name": "cal-A", "table_path": f"/cal/A.{t}", "table_type": t, "apply_order": i,
         "valid_start_mjd": 60735.0, "valid_end_mjd": 60735.5, "status": "active", "obs_date": "2025-03-01",
         "spwmap": [0] * 16 if t == "K" else [], "interp": "linear", "refant": "pad103", "calibrator": "3C286"}
        for i, t in enumerate(("K", "BP", "G"))])
    store.append(cat, "qa_metrics", [{"subject": "cal-A", "subject_type": "caltable_set", "metric": "bp_snr/ant012",
                                      "value": 2.0, "threshold": 5.0, "passed": False, "obs_date": "2025-03-01"}])
    store.append(cat, "groups", [group("2025-03-01T00:20:30", "incomplete", subbands_missing=[3, 7])])
    text = (Path(__file__).resolve().parents[1] / "docs" / "catalog.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    results = {sql: query.query(cat, sql) for sql in blocks}  # every block runs
    [caltables] = [r for sql, r in results.items() if "c.apply_order" in sql]
    assert caltables.column("table_type").to_pylist() == ["K", "BP", "G"]
    [failed] = [r for sql, r in results.items() if "last_runs" in sql]
    assert failed.to_pylist()[0]["error"] == "InvalidInputError: bad dec"
    [missing] = [r for sql, r in results.items() if "unnest(subbands_missing)" in sql]
    assert sorted(missing.column("sb").to_pylist()) == [3, 7]
    [cover] = [r for sql, r in results.items() if "covers" in sql]
    assert cover.to_pylist()[0]["covers"] is True


def test_long_lived_connection_sees_new_rows_after_refresh(cat):
    store.append(cat, "groups", [group()])
    con = query.connect(cat)
    store.append(cat, "groups", [group(state="ready")])
    assert con.execute("SELECT count(*) FROM groups_all").fetchall() == [(1,)]
    query.refresh(con, cat)
    assert con.execute("SELECT count(*), max(state) FROM groups_all").fetchall() == [(2, "ready")]
    assert con.execute("SELECT state FROM groups").fetchall() == [("ready",)]
    con.close()
