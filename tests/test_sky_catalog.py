"""Calibrator catalog: the shipped Parquet, the VLA list parser, the loaders."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contimg.errors import InvalidInputError, NoCalibratorError
from contimg.sky.catalog import COLUMNS, Calibrator, find_calibrator, load_calibrators, packaged_catalog_path, write_parquet
from contimg.sky.catalog_build import J0834_FLUX_JY, build_from_known_csv, dropped_rows
from contimg.sky.vla_list import j2000_designation, parse_vla_calibrator_list

KNOWN_CSV = Path(__file__).resolve().parents[2] / "shared" / "dsa110" / "calibrators_known.csv"

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


def test_shipped_catalog_has_the_columns_and_the_vla_position_of_0834():
    table = pq.read_table(packaged_catalog_path())
    assert tuple(table.column_names) == COLUMNS
    cal = find_calibrator("0834+555")
    assert cal.name == "J0834+5534" and cal.alt_name == "0834+555"
    assert (cal.ra_deg, cal.dec_deg) == (128.7287, 55.5725)
    assert cal.flux_jy == J0834_FLUX_JY == 5.0
    assert "UNCERTAIN" in cal.notes and "2.3" in cal.notes and "2.5" in cal.notes
    # 08h34m54.9s +55d34m21s really is that position
    assert abs(cal.coord.ra.hms.m - 34) < 1e-9 and abs(cal.coord.ra.hms.s - 54.9) < 0.05
    assert abs(cal.coord.dec.dms.s - 21.0) < 0.5


def test_shipped_catalog_leaves_out_wrong_positionless_and_synthetic_rows():
    cals = load_calibrators()
    ras = sorted(c.ra_deg for c in cals if c.matches("0834+555") or "0834" in c.name)
    assert ras == [128.7287], "only the VLA position of 0834+555 may be shipped"
    names = {c.name for c in cals}
    assert names == {"3C286", "3C48", "3C147", "3C138", "J0834+5534"}
    reasons = {d["name"]: d["reason"] for d in dropped_rows()}
    assert set(reasons) == {"J0834+555", "0834+555", "1911+161", "0702+445", "DSA_CAL"}
    assert "no position" in reasons["1911+161"] and "synthetic" in reasons["DSA_CAL"]


def test_committed_parquet_matches_a_rebuild_from_the_csv(tmp_path):
    if not KNOWN_CSV.is_file():
        pytest.skip(f"{KNOWN_CSV} not available")
    kept, dropped = build_from_known_csv(KNOWN_CSV)
    assert kept == load_calibrators()
    assert dropped == dropped_rows()
    with open(KNOWN_CSV) as fh:
        assert len(list(csv.DictReader(fh))) == len(kept) + len(dropped)


def test_vla_list_parser_reads_entries_and_skips_b1950_and_l_bandless(tmp_path):
    cals, skipped = parse_vla_calibrator_list(VLA_SAMPLE, source="sample")
    by_alt = {c.alt_name: c for c in cals}
    assert set(by_alt) == {"0834+555", "1331+305", "0038-213"}
    assert [name for name, _ in skipped] == ["1911+161"] and "0.7cm" in skipped[0][1]
    c = by_alt["0834+555"]
    assert c.name == "J0834+5534" and c.position_code == "A" and c.flux_jy == 8.30
    assert c.ra_deg == pytest.approx((8 + 34 / 60 + 54.904 / 3600) * 15, abs=1e-9)
    assert c.dec_deg == pytest.approx(55 + 34 / 60 + 21.07 / 3600, abs=1e-9)
    assert c.spectral_index == pytest.approx(math.log(2.0 / 8.3) / math.log(5.0 / 1.4), rel=1e-12)
    assert "4C55.16" in c.notes
    south = by_alt["0038-213"]
    assert south.dec_deg == pytest.approx(-(21 + 20 / 60 + 4.027 / 3600), abs=1e-9)
    assert south.name == "J0038-2120" and south.position_code == "C" and south.spectral_index is None
    assert by_alt["1331+305"].name == "J1331+3030"
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


def test_parquet_and_csv_round_trip_and_missing_flux_is_never_defaulted(tmp_path):
    cals = [Calibrator("A", None, 10.0, 20.0, 2.0, -0.7, "A", "x"), Calibrator("B", "b", 11.0, -5.0, 3.0)]
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
