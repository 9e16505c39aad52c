"""Calibrator catalog: the shipped Parquet, the VLA list parser, the loaders."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contimg.errors import InvalidInputError, NoCalibratorError
from contimg.sky.catalog import COLUMNS, Calibrator, find_calibrator, load_calibrators, packaged_catalog_path, write_parquet
from contimg.sky.catalog_build import catalog_metadata, dropped_rows, merge_known, write_packaged_catalog
from contimg.sky.vla_list import DEFAULT_SPECTRAL_INDEX, j2000_designation, parse_vla_calibrator_list

SHARED = Path(__file__).resolve().parents[2] / "shared" / "dsa110"
KNOWN_CSV = SHARED / "calibrators_known.csv"
VLA_LIST = SHARED / "vla_calibrators.txt"

# A small excerpt in the NRAO VLA calibrator list layout (DOMAIN.md 4.1): title and
# column-header lines, J2000 entry lines with position code, position reference and
# other name, B1950 lines, band tables. 1911+161 has only a 0.7 cm flux (Q band)
# and must be left out rather than given a default L-band flux.
VLA_SAMPLE = """\
                       VLA CALIBRATOR LIST (excerpt for tests)

IAU NAME EQUINOX  PC RA(hh,mm,ss)    DEC(ddd,mm,ss)   POS.REF ALT.NAME
=====================================================================
0834+555   J2000  A 08h34m54.9040s    55d34'21.070"   Aug01  4C55.16
0830+557   B1950  A 08h30m58.3600s    55d44'31.720"
-----------------------------------------------------
BAND        A B C D    FLUX(Jy)    UVMIN(kL)  UVMAX(kL)
=====================================================
 90cm    P  X S S S      14.00
 20cm    L  P P P P       8.30
  6cm    C  P P S S       2.00
3.7cm    X  P P P P       1.20

1331+305   J2000  A 13h31m08.2881s    30d30'32.959"   Aug01  3C286
1328+307   B1950  A 13h28m49.6577s    30d45'58.640"
-----------------------------------------------------
BAND        A B C D    FLUX(Jy)    UVMIN(kL)  UVMAX(kL)
=====================================================
 20cm    L  P P P P      15.00
  6cm    C  P P P P       7.47

0038-213   J2000  C 00h38m29.9524s   -21d20'04.027''
0036-216   B1950  C 00h36m00.4390s   -21d36'33.100''
-----------------------------------------------------
BAND        A B C D    FLUX(Jy)    UVMIN(kL)  UVMAX(kL)
=====================================================
 20cm    L  ? ? X X       0.78           10

1911+161   J2000  T 19h11m49.3400s    16d11'23.300"
1909+161   B1950  T 19h09m34.0000s    16d06'20.000"
-----------------------------------------------------
BAND        A B C D    FLUX(Jy)    UVMIN(kL)  UVMAX(kL)
=====================================================
0.7cm    Q  S S S S       0.18
"""


def _vla_row(name):
    """The 20 cm line of one entry of the real VLA list, split (band, code, A, B, C, D, flux, ...)."""
    lines = VLA_LIST.read_text(errors="replace").splitlines()
    i = next(k for k, line in enumerate(lines) if line.split()[:2] == [name, "J2000"])
    return next(line.split() for line in lines[i + 1:i + 12] if line.split()[:1] == ["20cm"])


def test_shipped_catalog_is_the_vla_list_with_its_provenance():
    table = pq.read_table(packaged_catalog_path())
    assert tuple(table.column_names) == COLUMNS
    meta = catalog_metadata()
    assert meta["source"] == "vla_calibrators.txt"
    # DOMAIN.md 4.1: 1,865 entries, 1,028 with a 20 cm flux; no repo-known row is missing from it
    assert (meta["count"], meta["count_vla"], meta["count_known_kept"]) == ("1028", "1028", "0")
    assert int(meta["vla_skipped_no_20cm"]) == 1865 - 1028
    assert table.num_rows == 1028 == len(load_calibrators())
    assert len(meta["source_sha256"]) == 64 and meta["build_date"][:2] == "20"
    assert any("spectral_index" in rule for rule in json.loads(meta["rules"]))
    if VLA_LIST.is_file():
        assert meta["source_sha256"] == hashlib.sha256(VLA_LIST.read_bytes()).hexdigest()
    names = [c.name for c in load_calibrators()]
    assert len(set(names)) == len(names)


def test_j0834_is_8p8_jy_with_its_20_6_cm_spectral_index():
    cal = find_calibrator("0834+555")
    assert cal.name == "J0834+5534" and cal.alt_name == "0834+555"
    assert cal.flux_jy == 8.8
    assert cal.spectral_index == pytest.approx(math.log(5.6 / 8.8) / math.log(5.0 / 1.4), rel=1e-12)
    assert cal.spectral_index == pytest.approx(-0.355, abs=5e-4)
    assert cal.flux_at(5.0e9) == pytest.approx(5.6)
    assert (cal.quality_c, cal.quality_d, cal.quality_rank, cal.unsuitable) == ("P", "P", 0, False)
    # the VLA position 08h34m54.904s +55d34m21.07s; the repo's 5 Jy and wrong positions are in the notes only
    assert abs(cal.coord.ra.hms.m - 34) < 1e-9 and abs(cal.coord.ra.hms.s - 54.904) < 1e-3
    assert abs(cal.coord.dec.dms.s - 21.07) < 1e-3
    assert "5 Jy" in cal.notes and "129.4843" in cal.notes and "VLA values used" in cal.notes
    assert [c.name for c in load_calibrators() if c.matches("0834+555") or c.name.startswith("J0834+55")] \
        == ["J0834+5534"]


def test_every_spectral_index_is_from_20_and_6_cm_or_marked_assumed():
    cals = load_calibrators()
    assumed = [c for c in cals if "ASSUMED" in c.notes]
    assert all(c.spectral_index == DEFAULT_SPECTRAL_INDEX == -0.7 for c in assumed)
    assert all(c.spectral_index is not None for c in cals)
    # J0655+5408 (3C171) has no 6 cm flux; J1331+3030 (3C286) has 15.0 and 7.47 Jy
    assert find_calibrator("J0655+5408") in assumed
    c286 = find_calibrator("3C286")
    assert c286.name == "J1331+3030" and c286.flux_jy == 15.0
    assert c286.spectral_index == pytest.approx(math.log(7.47 / 15.0) / math.log(5.0 / 1.4), rel=1e-12)
    assert 0 < len(assumed) < len(cals) / 2


def test_the_dec_54p6_strip_holds_25_calibrators_6_of_them_usable():
    """DOMAIN.md 4.1: 25 calibrators with a 20 cm flux within 1.5 deg of Dec 54.6, 0.26-8.8 Jy.
    Their C and D letters, read here from the raw list, leave 6 without an X or C."""
    strip = [c for c in load_calibrators() if abs(c.dec_deg - 54.6) <= 1.5]
    assert len(strip) == 25
    assert (min(c.flux_jy for c in strip), max(c.flux_jy for c in strip)) == (0.26, 8.8)
    expected = {"J0655+5408": 3.6, "J0834+5534": 8.8, "J0957+5522": 2.6, "J1313+5458": 1.31,
                "J1349+5341": 1.1, "J1944+5448": 1.66, "J2343+5348": 2.25}
    assert {c.name: c.flux_jy for c in strip if c.name in expected} == expected
    if VLA_LIST.is_file():
        for c in strip:
            row = _vla_row(c.alt_name)
            assert (c.quality_c, c.quality_d) == (row[4], row[5]) and c.flux_jy == float(row[6])
    usable = sorted(c.name for c in strip if not c.unsuitable)
    assert usable == ["J0834+5534", "J1337+5501", "J1944+5448", "J2023+5427", "J2231+5409", "J2343+5348"]
    assert not any({c.quality_c, c.quality_d} & {"X", "C"} for c in strip if c.name in usable)


def test_known_list_rows_are_kept_only_where_the_vla_list_lacks_them():
    reasons = {(d["name"], d["ra_deg"]): d["reason"] for d in dropped_rows()}
    # name variants: J0834+555 = 0834+555 (RA 0.15 deg off, and the ops script's wrong position);
    # 3C286 = J1331+3030 etc.; 0702+445 is a VLA entry with a 20 cm flux
    assert reasons[("J0834+555", "128.5813")] == "in the VLA list as J0834+5534"
    assert reasons[("0834+555", "129.4843")] == "in the VLA list as J0834+5534"
    assert reasons[("3C286", "202.7845")] == "in the VLA list as J1331+3030"
    assert reasons[("3C147", "85.6505")] == "in the VLA list as J0542+4951"
    assert reasons[("0702+445", None)] == "in the VLA list as J0702+4431"
    assert "no position" in reasons[("1911+161", None)] and "synthetic" in reasons[("DSA_CAL", "180.0")]
    assert find_calibrator("3C48").name == "J0137+3309" and find_calibrator("3C138").name == "J0521+1638"
    with pytest.raises(NoCalibratorError):
        find_calibrator("DSA_CAL")


def test_merge_keeps_a_known_source_the_vla_list_lacks_and_matches_by_position():
    vla = [Calibrator("J0834+5534", "0834+555", 128.72877, 55.57252, 8.8, -0.355, "A", "vla", "P", "P")]
    rows = [
        {"name": "4C+55.16", "alt_name": "", "ra_deg": "128.7290", "dec_deg": "55.5726",  # 1.1 arcsec away
         "flux_1p4ghz_jy": "8.0", "repo_file": "a.py", "notes": "n"},
        {"name": "NEWCAL", "alt_name": "JNEW", "ra_deg": "10.0", "dec_deg": "20.0",
         "flux_1p4ghz_jy": "2.0", "repo_file": "b.py", "notes": "only in the repo"},
        {"name": "FAR", "alt_name": "", "ra_deg": "128.7300", "dec_deg": "55.5725",  # 4.4 arcsec: same source
         "flux_1p4ghz_jy": "", "repo_file": "c.py", "notes": ""},
        {"name": "NOFLUX", "alt_name": "", "ra_deg": "11.0", "dec_deg": "20.0",
         "flux_1p4ghz_jy": "", "repo_file": "d.py", "notes": ""},
    ]
    merged, kept, dropped = merge_known(vla, rows)
    assert merged[0].other_name == "4C+55.16" and "repo-known as 4C+55.16" in merged[0].notes
    assert merged[0].flux_jy == 8.8 and "with 8 Jy" in merged[0].notes
    assert [(c.name, c.flux_jy, c.spectral_index) for c in kept] == [("NEWCAL", 2.0, DEFAULT_SPECTRAL_INDEX)]
    assert "ASSUMED" in kept[0].notes and kept[0].quality_rank == 3 and not kept[0].unsuitable
    assert {d["name"]: d["reason"] for d in dropped} == {
        "4C+55.16": "in the VLA list as J0834+5534", "FAR": "in the VLA list as J0834+5534",
        "NOFLUX": "no 1.4 GHz flux; never defaulted"}


def test_committed_parquet_matches_a_rebuild(tmp_path):
    if not (VLA_LIST.is_file() and KNOWN_CSV.is_file()):
        pytest.skip("shared/dsa110 lists not available")
    out = write_packaged_catalog(VLA_LIST, KNOWN_CSV, tmp_path / "c.parquet", build_date="2000-01-01")
    assert load_calibrators(out) == load_calibrators()
    rebuilt, shipped = catalog_metadata(out), catalog_metadata()
    assert rebuilt.pop("build_date") == "2000-01-01"
    shipped.pop("build_date")
    assert rebuilt == shipped
    with open(KNOWN_CSV) as fh:
        assert len(list(csv.DictReader(fh))) == len(dropped_rows()) + int(shipped["count_known_kept"])


def test_vla_list_parser_reads_entries_and_skips_b1950_and_l_bandless(tmp_path):
    cals, skipped = parse_vla_calibrator_list(VLA_SAMPLE, source="sample")
    by_alt = {c.alt_name: c for c in cals}
    assert set(by_alt) == {"0834+555", "1331+305", "0038-213"}
    assert [name for name, _ in skipped] == ["1911+161"] and "0.7cm" in skipped[0][1]
    c = by_alt["0834+555"]
    assert c.name == "J0834+5534" and c.position_code == "A" and c.flux_jy == 8.30
    assert (c.quality_c, c.quality_d) == ("P", "P") and c.other_name == "4C55.16"
    assert c.ra_deg == pytest.approx((8 + 34 / 60 + 54.904 / 3600) * 15, abs=1e-9)
    assert c.dec_deg == pytest.approx(55 + 34 / 60 + 21.07 / 3600, abs=1e-9)
    assert c.spectral_index == pytest.approx(math.log(2.0 / 8.3) / math.log(5.0 / 1.4), rel=1e-12)
    assert "from 20cm 8.3 Jy / 6cm 2 Jy" in c.notes and "ASSUMED" not in c.notes
    south = by_alt["0038-213"]
    assert south.dec_deg == pytest.approx(-(21 + 20 / 60 + 4.027 / 3600), abs=1e-9)
    assert south.name == "J0038-2120" and south.position_code == "C"
    # no 6 cm flux: the documented default, said to be assumed; C/D letters X X: unsuitable
    assert south.spectral_index == DEFAULT_SPECTRAL_INDEX and "-0.7 ASSUMED" in south.notes
    assert (south.quality_c, south.quality_d, south.unsuitable, south.other_name) == ("X", "X", True, None)
    assert by_alt["1331+305"].name == "J1331+3030" and by_alt["1331+305"].other_name == "3C286"
    assert find_calibrator("3C286", catalog=cals).flux_jy == 15.0
    # the same file dropped in by an operator
    path = tmp_path / "csource.txt"
    path.write_text(VLA_SAMPLE)
    strip = lambda cs: [dataclasses.replace(c, notes="") for c in cs]  # noqa: E731
    assert strip(load_calibrators(path)) == strip(cals)
    assert find_calibrator("1331+305", catalog=path).flux_jy == 15.0
    assert find_calibrator("J0834+5534", catalog=path).alt_name == "0834+555"


def test_j2000_designation_truncates():
    assert j2000_designation(128.7287, 55.5725) == "J0834+5534"
    assert j2000_designation(202.7845, 30.5092) == "J1331+3030"
    assert j2000_designation(0.1, -0.99) == "J0000-0059"


def test_quality_rank_is_the_worse_of_the_c_and_d_letters():
    def rank(c, d):
        return Calibrator("A", None, 1.0, 1.0, 1.0, quality_c=c, quality_d=d).quality_rank

    assert [rank("P", "P"), rank("P", "S"), rank("S", "P"), rank("W", "S"), rank("P", "?"), rank(None, None)] \
        == [0, 1, 1, 2, 3, 3]
    assert rank("P", "X") == rank("C", "P") == 4
    assert Calibrator("A", None, 1.0, 1.0, 1.0, quality_c="C", quality_d="P").unsuitable
    assert not Calibrator("A", None, 1.0, 1.0, 1.0, quality_c="?", quality_d="?").unsuitable


def test_parquet_and_csv_round_trip_and_missing_flux_is_never_defaulted(tmp_path):
    cals = [Calibrator("A", None, 10.0, 20.0, 2.0, -0.7, "A", "x", "P", "S", "3CX"),
            Calibrator("B", "b", 11.0, -5.0, 3.0)]
    assert load_calibrators(write_parquet(cals, tmp_path / "c.parquet")) == cals
    path = tmp_path / "c.csv"
    path.write_text("name,alt_name,ra_deg,dec_deg,flux_1p4ghz_jy,spectral_index\n"
                    "A,,10.0,20.0,2.0,-0.7\nNOFLUX,,12.0,20.0,,\nNOPOS,,,,5.0,\n")
    loaded = load_calibrators(path)
    assert [c.name for c in loaded] == ["A"]
    assert loaded[0].spectral_index == -0.7


def test_flux_at_follows_the_power_law():
    c = Calibrator("A", None, 10.0, 20.0, 2.0, -0.7)
    assert c.flux_at(1.4e9) == pytest.approx(2.0)
    assert c.flux_at(2.8e9) == pytest.approx(2.0 * 2 ** -0.7)
    assert Calibrator("B", None, 1.0, 1.0, 3.0).flux_at([1.3e9, 1.5e9]).tolist() == [3.0, 3.0]


def test_bad_catalog_inputs_are_rejected(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_calibrators(tmp_path / "nope.parquet")
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    with pytest.raises(InvalidInputError, match="no calibrators"):
        load_calibrators(empty)
    with pytest.raises(NoCalibratorError):
        find_calibrator("1911+161")
