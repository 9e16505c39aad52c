"""Catalog queries cannot write, attach, load or reconfigure (issue 14, defect 3)."""

from __future__ import annotations

import duckdb
import pytest

from catalog import query, store
from catalog.errors import CatalogError
from catalog.query import QueryError

GID = "2025-03-01T00:05:10"


@pytest.fixture
def cat(tmp_path):
    root = tmp_path / "catalog"
    store.append(root, "groups", [{"group_id": GID, "obs_date": GID[:10], "state": "ready"}])
    return root


def _files(root):
    return sorted((p.relative_to(root), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def _part_file(root):
    return next((root / "groups" / f"obs_date={GID[:10]}").glob("part-*.parquet"))


@pytest.mark.parametrize("target", ["part", "new-in-catalog", "outside"])
def test_copy_to_a_file_is_refused_and_writes_nothing(cat, tmp_path, target):
    path = {"part": _part_file(cat), "new-in-catalog": cat / "groups" / f"obs_date={GID[:10]}" / "part-x.parquet",
            "outside": tmp_path / "out.csv"}[target]
    before = _files(cat)
    with pytest.raises(QueryError, match="read-only.*got COPY"):
        query.query(cat, f"COPY (SELECT * FROM groups) TO '{path}'")
    with pytest.raises(QueryError, match="read-only"):
        query.query(cat, f"SELECT 1; COPY (SELECT * FROM groups) TO '{path}'")
    assert _files(cat) == before
    assert target == "part" or not path.exists()
    assert query.query(cat, "SELECT state FROM groups").to_pylist() == [{"state": "ready"}]


@pytest.mark.parametrize("sql", [
    "ATTACH '{cat}/x.duckdb' AS x",
    "ATTACH ':memory:' AS m",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "SET lock_configuration = false",
    "EXPORT DATABASE '{cat}/export'",
    "CREATE TABLE t AS SELECT * FROM groups",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{cat}/x.csv'",
    "CALL pragma_version()",
    "",
])
def test_statements_other_than_one_select_are_refused(cat, sql):
    before = _files(cat)
    with pytest.raises(QueryError) as info:
        query.query(cat, sql.format(cat=cat))
    assert isinstance(info.value, CatalogError) and isinstance(info.value, ValueError)
    assert _files(cat) == before


def test_select_cannot_read_outside_the_catalog(cat, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for sql in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM '{secret}'",
                f"SELECT * FROM read_text('{secret}')", f"SELECT * FROM glob('{tmp_path}/*')"):
        with pytest.raises(QueryError, match="catalog's own files|Permission"):
            query.query(cat, sql)
    # a sibling directory whose name starts like the catalog's is outside it too
    sibling = tmp_path / "catalog2"
    sibling.mkdir()
    (sibling / "x.csv").write_text("a\n1\n")
    with pytest.raises(QueryError):
        query.query(cat, f"SELECT * FROM read_csv('{sibling}/x.csv')")


def test_reading_views_still_works(cat):
    assert query.query(cat, "SELECT group_id, state FROM groups").to_pylist() == [{"group_id": GID, "state": "ready"}]
    assert query.query(cat, "WITH g AS (FROM groups_all) SELECT count(*) AS n FROM g").to_pylist() == [{"n": 1}]
    assert query.query(cat, "SELECT count(*) AS n FROM groups_source() WHERE state = ?", ["ready"]).to_pylist() \
        == [{"n": 1}]
    assert query.latest(cat, "groups", group_id=GID)[0]["state"] == "ready"
    assert query.query(cat, f"SELECT count(*) AS n FROM read_parquet('{_part_file(cat)}')").to_pylist() == [{"n": 1}]
    assert query.query(cat / "nowhere", "SELECT count(*) AS n FROM groups").to_pylist() == [{"n": 0}]


def test_connect_is_locked_and_refresh_still_works(cat, tmp_path):
    con = query.connect(cat)
    try:
        for sql in ("SET enable_external_access = true", "SET lock_configuration = false",
                    f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "INSTALL httpfs"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        assert not (tmp_path / "x.csv").exists()
        store.append(cat, "groups", [{"group_id": GID, "obs_date": GID[:10], "state": "converted"}])
        query.refresh(con, cat)  # the catalog's writers and a long-lived reader keep working
        assert con.execute("SELECT state FROM groups").fetchall() == [("converted",)]
    finally:
        con.close()


def test_cli_query_refuses_copy_and_output_still_writes(cat, tmp_path, capsys):
    from contimg_cli.main import main

    target = tmp_path / "via-sql.csv"
    d = ["--catalog-dir", str(cat)]
    assert main(["query", f"COPY (SELECT * FROM groups) TO '{target}'", *d]) == 2
    err = capsys.readouterr().err
    assert not target.exists()
    assert err.startswith("contimg query: error: ") and "read-only" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "via-output.csv"
    assert main(["query", "SELECT group_id FROM groups", "--format", "csv", "--output", str(out), *d]) == 0
    assert out.read_text().splitlines() == ['"group_id"', f'"{GID}"']


def test_cli_output_inside_the_catalog_is_refused(cat, capsys):
    from contimg_cli.main import main

    victim = _part_file(cat)
    before = _files(cat)
    for path in (victim, cat / "groups" / "new.csv"):
        assert main(["query", "SELECT 1 AS x", "--format", "parquet", "-o", str(path), "--catalog-dir", str(cat)]) == 2
        assert "inside the catalog directory" in capsys.readouterr().err
    assert _files(cat) == before
