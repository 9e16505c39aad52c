"""QA plots of a Measurement Set: the reductions against a brute-force read, flags, errors, PNGs, CLI."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from casacore.tables import table

from contimg import naming
from contimg.conversion.convert import convert_group
from contimg.conversion.discovery import discover_groups
from contimg.errors import InvalidInputError
from contimg.qa import ms_plots
from contimg.qa.ms_plots import PLOT_KINDS, ms_summary, plot_ms, plot_summary
from contimg.simulate import simulate_group

START = "2026-11-25T08:00:00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_ms(tmp_path_factory) -> Path:
    """A converted small group (12 antennas, 16 SPWs x 4 channels, 6 integrations; some antennas flagged)."""
    out = tmp_path_factory.mktemp("qa_ms")
    simulate_group(out / "incoming", START, seed=5, scale="small")
    (group,) = discover_groups(out / "incoming", settle_s=0)
    return convert_group(group.group_id, group.files, products_dir=out / "products",
                         scratch_dir=out / "scratch", validate=False).ms_path


@pytest.fixture(scope="module")
def summary(small_ms):
    return ms_summary(small_ms)


def _copy(ms: Path, tmp_path: Path) -> Path:
    dest = tmp_path / ms.name
    shutil.copytree(ms, dest)
    return dest


def _brute_force(ms: Path) -> dict:
    """Every amplitude of the MS in memory, reduced with numpy's nanmedian: what ms_summary must match."""
    with table(str(ms), ack=False) as t:
        data, flag = t.getcol("DATA"), t.getcol("FLAG") | t.getcol("FLAG_ROW")[:, None, None]
        a1, a2, ddid, times = (t.getcol(c) for c in ("ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "TIME"))
    with table(f"{ms}/DATA_DESCRIPTION", ack=False) as dd:
        spw = dd.getcol("SPECTRAL_WINDOW_ID")[ddid]
    with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as s:
        chan_freq = s.getcol("CHAN_FREQ")
    amp = np.where(flag, np.nan, np.abs(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        amp = np.nanmean(amp, axis=-1)  # (row, chan): mean of the unflagged hands (2 pols, both parallel)
        cross = a1 != a2
        amp, a1, a2, spw, times = amp[cross], a1[cross], a2[cross], spw[cross], times[cross]
        spws = np.argsort(chan_freq.mean(axis=1))
        utimes = np.unique(times)
        ants = np.unique(np.concatenate([a1, a2]))
        time_amp = np.array([[np.nanmedian(amp[(times == t) & (spw == s)]) for s in spws] for t in utimes])
        # channels in ascending frequency: SPWs in frequency order, channels ascending within each
        by_chan = np.concatenate([amp[spw == s][:, np.argsort(chan_freq[s])] for s in spws], axis=1)
        freq_amp = np.nanmedian(by_chan, axis=0)
        rows_of = [np.concatenate([amp[(spw == s) & ((a1 == a) | (a2 == a))][:, np.argsort(chan_freq[s])]
                                   for s in spws], axis=1) for a in ants]
        antenna_amp = np.array([np.nanmedian(r, axis=0) for r in rows_of])
    return {"time_amp": time_amp, "freq_amp": freq_amp, "antenna_amp": antenna_amp, "ants": ants,
            "times": utimes, "freq": np.sort(chan_freq.ravel()), "flagged": float(np.isnan(amp).mean())}


def test_reductions_match_a_brute_force_read(small_ms, summary):
    ref = _brute_force(small_ms)
    assert np.array_equal(summary.times_mjd_s, ref["times"])
    assert np.array_equal(summary.antenna_ids, ref["ants"])
    np.testing.assert_allclose(summary.time_amp, ref["time_amp"], rtol=1e-6)
    np.testing.assert_allclose(summary.freq_amp, ref["freq_amp"], rtol=1e-6)
    np.testing.assert_allclose(summary.antenna_amp, ref["antenna_amp"], rtol=1e-6)
    assert summary.flagged_fraction == pytest.approx(ref["flagged"])
    assert 0 < summary.flagged_fraction < 1  # the simulator flags some antennas
    assert summary.unit == "uncalib"


def test_an_all_zero_spw_among_others_has_zero_medians(small_ms, tmp_path):
    ms = _copy(small_ms, tmp_path)
    with table(str(ms), readonly=False, ack=False) as t:
        data, ddid = t.getcol("DATA"), t.getcol("DATA_DESC_ID")
        data[ddid == 0] = 0
        t.putcol("DATA", data)
    s, ref = ms_summary(ms), _brute_force(ms)
    for name in ("time_amp", "freq_amp", "antenna_amp"):
        np.testing.assert_allclose(getattr(s, name), ref[name], rtol=1e-6, err_msg=name)
    column = int(np.flatnonzero(s.spw_ids == 0)[0])
    assert np.all(s.time_amp[:, column] == 0) and np.all(s.freq_amp[s.chan_spw == 0] == 0)


def test_small_chunks_and_scattered_rows_give_the_same_summary(small_ms, summary, monkeypatch):
    monkeypatch.setattr(ms_plots, "MIN_RUN_ROWS", 10**9)  # every SPW through a row selection
    other = ms_summary(small_ms, chunk_rows=37)
    for name in ("time_amp", "freq_amp", "antenna_amp", "u_klambda", "v_klambda"):
        np.testing.assert_array_equal(getattr(other, name), getattr(summary, name), err_msg=name)


def test_frequency_axis_is_ascending_and_is_chan_freq(small_ms, summary):
    with table(f"{small_ms}/SPECTRAL_WINDOW", ack=False) as spw:
        chan_freq = spw.getcol("CHAN_FREQ")
    assert np.all(np.diff(summary.freq_hz) > 0)
    np.testing.assert_array_equal(summary.freq_hz, np.sort(chan_freq.ravel()))
    for s in range(len(chan_freq)):
        np.testing.assert_array_equal(summary.freq_hz[summary.chan_spw == s], np.sort(chan_freq[s]))
    assert list(summary.spw_ids) == sorted(summary.spw_ids, key=lambda s: chan_freq[s].mean())
    assert summary.ref_freq_hz == pytest.approx(0.5 * (chan_freq.min() + chan_freq.max()))


def test_uv_in_kilolambda_is_uvw_over_wavelength(small_ms, summary):
    with table(str(small_ms), ack=False) as t:
        uvw, a1, a2, times = (t.getcol(c) for c in ("UVW", "ANTENNA1", "ANTENNA2", "TIME"))
        flag = t.getcol("FLAG")
    has_data = (a1 != a2) & ~flag.all(axis=(1, 2))
    keys = {(tm, i, j): row for row, (tm, i, j) in enumerate(zip(times, a1, a2)) if has_data[row]}
    lam = 299_792_458.0 / summary.ref_freq_hz
    expected = np.array([uvw[row, :2] / lam / 1e3 for row in keys.values()])
    got = np.column_stack([summary.u_klambda, summary.v_klambda])
    assert len(got) == len(keys)  # one point per (integration, baseline) with data, not one per SPW
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(got), order(expected), rtol=1e-12)
    assert np.abs(got).max() > 1.0  # kilolambda of km baselines at 1.4 GHz, not lambda or metres


def test_flagged_antenna_is_nan_in_the_heat_map(small_ms, summary, tmp_path):
    good = summary.antenna_ids[np.isfinite(summary.antenna_amp).all(axis=1)]
    assert len(good) >= 3
    target = int(good[1])
    ms = _copy(small_ms, tmp_path)
    with table(str(ms), readonly=False, ack=False) as t:
        a1, a2 = t.getcol("ANTENNA1"), t.getcol("ANTENNA2")
        flag = t.getcol("FLAG")
        flag[(a1 == target) | (a2 == target)] = True
        t.putcol("FLAG", flag)
    flagged = ms_summary(ms)
    row = int(np.flatnonzero(flagged.antenna_ids == target)[0])
    assert flagged.antenna_names[row] == f"DSA-{target + 1:03d}"
    assert np.isnan(flagged.antenna_amp[row]).all()
    others = np.isin(flagged.antenna_ids, good) & (flagged.antenna_ids != target)
    assert np.isfinite(flagged.antenna_amp[others]).all()
    assert flagged.flagged_fraction > summary.flagged_fraction


def test_plots_are_pngs_of_sensible_size(summary, tmp_path):
    from matplotlib.image import imread

    paths = plot_summary(summary, tmp_path / "qa")
    assert set(paths) == set(PLOT_KINDS)
    for kind, path in paths.items():
        assert path == tmp_path / "qa" / f"2026-11-25T080000_data_{kind}.png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert 10_000 < path.stat().st_size < 3_000_000, kind
        height, width = imread(path).shape[:2]
        assert 500 <= width <= 2000 and 350 <= height <= 2500, (kind, width, height)


def test_all_flagged_ms_is_plotted_and_says_so(small_ms, tmp_path):
    ms = _copy(small_ms, tmp_path)
    with table(str(ms), readonly=False, ack=False) as t:
        t.putcol("FLAG", np.ones_like(t.getcol("FLAG")))
    s = ms_summary(ms)
    assert s.all_flagged and np.isnan(s.antenna_amp).all() and len(s.u_klambda) == 0
    paths = plot_summary(s, tmp_path / "qa", prefix="flagged")
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in paths.values())


def test_zero_corrected_data_names_the_data_column(small_ms):
    with pytest.raises(InvalidInputError, match="--column DATA") as err:
        ms_summary(small_ms, column="corrected")
    assert str(small_ms) in str(err.value) and "CORRECTED_DATA" in str(err.value)


def test_missing_ms_and_missing_column_are_clear_errors(small_ms, tmp_path):
    with pytest.raises(InvalidInputError, match="not a Measurement Set"):
        plot_ms(tmp_path / "none.ms", tmp_path / "qa")
    with pytest.raises(InvalidInputError, match=f"{small_ms}: no column NOPE_DATA"):
        ms_summary(small_ms, column="NOPE_DATA")
    assert not (tmp_path / "qa").exists()


def test_cli_writes_the_plots(small_ms, tmp_path, capsys, monkeypatch):
    from contimg.config import load_settings
    from contimg_cli.main import main

    monkeypatch.setenv("CONTIMG_BASE_DIR", str(tmp_path / "data"))
    assert main(["qa", str(small_ms), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / f"2026-11-25T080000_data_{k}.png") for k in PLOT_KINDS]
    assert all(Path(p).stat().st_size > 10_000 for p in printed)
    # default: the group's QA directory, from the MS name
    assert main(["qa", str(small_ms)]) == 0
    qa_dir = naming.qa_dir(load_settings().products_dir, naming.group_id_from_stem(small_ms.stem))
    assert capsys.readouterr().out.split() == [str(qa_dir / f"2026-11-25T080000_data_{k}.png") for k in PLOT_KINDS]
    assert qa_dir.is_relative_to(tmp_path / "data")


def test_cli_zero_corrected_data_is_one_line_and_status_2(small_ms, tmp_path, capsys):
    from contimg_cli.main import main

    assert main(["qa", str(small_ms), "--column", "corrected", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contimg qa: error: ") and "--column DATA" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_default_out_dir_beside_a_non_group_ms(tmp_path):
    from contimg_cli.qa_cmd import default_out_dir

    assert default_out_dir(tmp_path / "mine.ms", tmp_path / "products") == tmp_path / "mine.ms.qa"


def test_median_ignores_nan_whatever_their_count_per_row():
    rng = np.random.default_rng(3)
    for trial in range(300):
        a = (rng.random((int(rng.integers(1, 8)), int(rng.integers(1, 40)))) * 5).astype(np.float32)
        a[rng.random(a.shape) < rng.random()] = np.nan
        a[0, : int(rng.integers(0, 2)) * a.shape[1]] = np.nan  # sometimes a row with nothing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(a.astype(float), axis=-1)
        before = a.copy()
        np.testing.assert_allclose(ms_plots._nanmedian_last(a), expected, rtol=1e-6)
        np.testing.assert_array_equal(a, before)  # not modified without overwrite
        np.testing.assert_allclose(ms_plots._nanmedian_last(a[1:].ravel()), np.nanmedian(a[1:].astype(float))
                                   if np.isfinite(a[1:]).any() else np.nan, rtol=1e-6)
        np.testing.assert_allclose(ms_plots._nanmedian_last(a.copy(), overwrite=True), expected, rtol=1e-6)
