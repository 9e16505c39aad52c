"""UVH5 -> MS: round trip for both writers, phasing physics, CASA agreement, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from casacore.tables import table
from pyuvdata import UVData

from contimg import instrument, naming, simulate
from contimg.simulate import badinput
from contimg.conversion.convert import choose_refant, convert_group
from contimg.conversion.discovery import discover_groups
from contimg.conversion.subband import group_phase_centre
from contimg.errors import IncompleteGroupError, InvalidInputError


START = "2026-11-25T08:00:00"
SMALL = dict(n_subbands=16, n_channels=4, n_times=4, n_antennas=8)


@pytest.fixture(scope="module")
def group_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("incoming")
    simulate.simulate_group(out, START, seed=3, **SMALL)
    return out


def _files(directory: Path) -> dict[int, Path]:
    (group,) = discover_groups(directory, settle_s=0)
    return group.files


def _convert(directory, tmp_path, writer, **kwargs):
    files = _files(directory)
    group_id = naming.parse_subband_filename(files[0])[0]
    return convert_group(
        group_id, files, products_dir=tmp_path / f"products-{writer}", scratch_dir=tmp_path / "scratch",
        writer=writer, **kwargs,
    )


def _read_raw(files: dict[int, Path]) -> dict[int, UVData]:
    raw = {}
    for sb, path in files.items():
        uv = UVData.from_file(str(path), file_type="uvh5")  # full checks on
        uv.reorder_blts(order="time", minor_order="baseline", conj_convention="ant1<ant2")
        raw[sb] = uv
    return raw


@pytest.mark.parametrize("writer", ["direct-subband", "pyuvdata"])
def test_round_trip_field_per_integration(group_dir, tmp_path, writer):
    """Without rephasing, the MS holds exactly the UVH5 data, conjugated, channels ascending."""
    result = _convert(group_dir, tmp_path, writer, field_per_integration=True)
    raw = _read_raw(_files(group_dir))
    with table(str(result.ms_path), ack=False) as ms:
        ddid = ms.getcol("DATA_DESC_ID")
        data, flags = ms.getcol("DATA"), ms.getcol("FLAG")
        wspec, uvw, times = ms.getcol("WEIGHT_SPECTRUM"), ms.getcol("UVW"), ms.getcol("TIME")
        ant1, ant2 = ms.getcol("ANTENNA1"), ms.getcol("ANTENNA2")
        model, corrected = ms.getcol("MODEL_DATA"), ms.getcol("CORRECTED_DATA")
    with table(f"{result.ms_path}/SPECTRAL_WINDOW", ack=False) as spw:
        chan_freq = spw.getcol("CHAN_FREQ")
    with table(f"{result.ms_path}/FIELD", ack=False) as field:
        assert field.nrows() == SMALL["n_times"]
        assert list(field.getcol("NAME")) == [f"meridian_icrs_t{i}" for i in range(SMALL["n_times"])]
    for sb, uv in raw.items():
        spw_id = 15 - sb
        rows = ddid == spw_id
        order = np.argsort(uv.freq_array)
        np.testing.assert_array_equal(chan_freq[spw_id], uv.freq_array[order])
        np.testing.assert_array_equal(data[rows], np.conj(uv.data_array[:, order, :]))
        np.testing.assert_array_equal(flags[rows], uv.flag_array[:, order, :])
        np.testing.assert_array_equal(wspec[rows], uv.nsample_array[:, order, :])
        np.testing.assert_array_equal(ant1[rows], uv.ant_1_array)
        np.testing.assert_array_equal(ant2[rows], uv.ant_2_array)
        np.testing.assert_allclose(times[rows] / 86400.0, uv.time_array - 2400000.5, atol=1e-6 / 86400)
        # MS UVW = -(UVH5 uvw), rotated from the apparent frame of the file into the
        # J2000 frame of the FIELD table (precession, ~0.24 deg in 2026): w and the
        # projected length are frame-invariant.
        np.testing.assert_allclose(uvw[rows][:, 2], -uv.uvw_array[:, 2], atol=5e-3)
        np.testing.assert_allclose(np.hypot(uvw[rows][:, 0], uvw[rows][:, 1]),
                                   np.hypot(uv.uvw_array[:, 0], uv.uvw_array[:, 1]), atol=5e-3)
    assert np.all(np.diff(chan_freq.ravel()) > 0), "frequencies must ascend across SPWs"
    with table(f"{result.ms_path}/SPECTRAL_WINDOW", ack=False) as spw:
        widths, total = spw.getcol("CHAN_WIDTH"), spw.getcol("TOTAL_BANDWIDTH")
    np.testing.assert_allclose(widths, np.broadcast_to(np.diff(chan_freq, axis=1)[:, :1], widths.shape), rtol=1e-9)
    np.testing.assert_allclose(total, 11.71875e6)
    # Preallocated in every row, zero until calibration writes them.
    assert model.shape == corrected.shape == data.shape
    assert not np.any(model) and not np.any(corrected)


def test_both_writers_write_the_same_ms(group_dir, tmp_path):
    a = _convert(group_dir, tmp_path, "direct-subband").ms_path
    b = _convert(group_dir, tmp_path, "pyuvdata").ms_path
    with table(str(a), ack=False) as ta, table(str(b), ack=False) as tb:
        for col in ("FLAG", "UVW", "TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "FIELD_ID",
                    "WEIGHT", "SIGMA", "WEIGHT_SPECTRUM", "MODEL_DATA", "CORRECTED_DATA"):
            np.testing.assert_array_equal(ta.getcol(col), tb.getcol(col), err_msg=col)
        # The direct writer builds the w-term phasor as a geometric series over channels:
        # equal to complex64 rounding, not necessarily bit for bit.
        scale = np.abs(tb.getcol("DATA")).max()
        np.testing.assert_allclose(ta.getcol("DATA"), tb.getcol("DATA"), rtol=0, atol=1e-6 * scale)
    for sub, cols in {"FIELD": ["PHASE_DIR", "NAME"], "SPECTRAL_WINDOW": ["CHAN_FREQ", "CHAN_WIDTH"],
                      "ANTENNA": ["NAME", "POSITION", "MOUNT", "DISH_DIAMETER"]}.items():
        with table(f"{a}/{sub}", ack=False) as ta, table(f"{b}/{sub}", ack=False) as tb:
            for col in cols:
                np.testing.assert_array_equal(ta.getcol(col), tb.getcol(col), err_msg=f"{sub}.{col}")


def test_ms_metadata_matches_the_instrument(group_dir, tmp_path):
    ms = _convert(group_dir, tmp_path, "direct-subband").ms_path
    with table(f"{ms}/ANTENNA", ack=False) as ant:
        assert ant.nrows() == 117
        assert list(ant.getcol("NAME")) == list(instrument.antenna_table().names)
        assert set(ant.getcol("MOUNT")) == {"alt-az"}
        np.testing.assert_allclose(ant.getcol("DISH_DIAMETER"), 4.65)
        np.testing.assert_allclose(ant.getcol("POSITION"), instrument.antenna_table().itrf_m, atol=1e-3)
    with table(f"{ms}/OBSERVATION", ack=False) as obs:
        assert list(obs.getcol("TELESCOPE_NAME")) == ["DSA_110"]
    with table(f"{ms}/POLARIZATION", ack=False) as pol:
        assert list(pol.getcol("CORR_TYPE")[0]) == [9, 12]  # CASA Stokes codes XX, YY
    with table(f"{ms}/FIELD", ack=False) as field:
        assert list(field.getcol("NAME")) == ["meridian_icrs_mid"]
        ra, dec = field.getcol("PHASE_DIR")[0, 0]
    files = _files(group_dir)
    uv = UVData.from_file(str(files[0]), file_type="uvh5", read_data=False)
    expected = group_phase_centre(uv.time_array, uv.extra_keywords["phase_center_dec"])
    assert np.isclose(ra, expected.ra_rad, atol=1e-9) and np.isclose(dec, expected.dec_rad, atol=1e-9)


def test_midpoint_phasing_brings_a_source_at_the_phase_centre_to_zero_phase(tmp_path):
    """Physics: a noiseless point source at the group's mid-time meridian has zero phase after conversion."""
    layout = dict(n_subbands=16, n_channels=4, n_times=6, n_antennas=10, jitter_s=0.0)
    probe = simulate.simulate_group(tmp_path / "probe", START, seed=1, field=None, **layout)
    uv = UVData.from_file(str(probe.paths[0]), file_type="uvh5", read_data=False)
    centre = group_phase_centre(uv.time_array, uv.extra_keywords["phase_center_dec"])
    source = simulate.Source("centre", np.degrees(centre.ra_rad), np.degrees(centre.dec_rad), 10.0)
    clean = simulate.Corruptions(delays=False, bandpass=False, gains=False, noise=False, rfi=False,
                                 dead_antennas=0, flagged_antennas=0)
    incoming = tmp_path / "in"
    simulate.simulate_group(incoming, START, seed=1, sources=[source], field=None, corruptions=clean, **layout)
    result = _convert(incoming, tmp_path, "direct-subband")
    with table(str(result.ms_path), ack=False) as ms:
        cross = ms.getcol("ANTENNA1") != ms.getcol("ANTENNA2")
        data = ms.getcol("DATA")[cross]
    residual = np.max(np.abs(np.angle(data)))
    assert residual < 1e-3, f"max residual phase {residual:.2e} rad"
    # ... while in the raw file (per-integration meridian phasing) it is not at zero phase.
    raw = UVData.from_file(str(_files(incoming)[8]), file_type="uvh5")
    cross_raw = raw.ant_1_array != raw.ant_2_array
    assert np.max(np.abs(np.angle(raw.data_array[cross_raw]))) > 0.1


def test_missing_subband_is_refused_unless_allowed_then_flagged(group_dir, tmp_path):
    incoming = tmp_path / "in"
    shutil.copytree(group_dir, incoming)
    missing = incoming / naming.subband_filename(START, 5)
    missing.unlink()
    files = _files(incoming)
    with pytest.raises(IncompleteGroupError, match="sb05"):
        convert_group(START, files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s")
    result = convert_group(START, files, products_dir=tmp_path / "p", scratch_dir=tmp_path / "s",
                           allow_incomplete=True)
    assert result.subbands_missing == [5]
    with table(str(result.ms_path), ack=False) as ms:
        ddid = ms.getcol("DATA_DESC_ID")
        flags = ms.getcol("FLAG")
    assert flags[ddid == 10].all() and not flags[ddid == 9].all()
    with table(f"{result.ms_path}/SPECTRAL_WINDOW", ack=False) as spw:
        freqs = spw.getcol("CHAN_FREQ")
    np.testing.assert_allclose(freqs[10], np.sort(instrument.subband_frequencies_hz(5, n_channels=4)))


def test_truncated_file_is_a_clear_error_and_the_input_is_kept(group_dir, tmp_path):
    incoming = tmp_path / "in"
    shutil.copytree(group_dir, incoming)
    badinput.truncate_file(incoming / naming.subband_filename(START, 3))
    before = sorted(p.name for p in incoming.iterdir())
    with pytest.raises(InvalidInputError, match="sb03"):
        convert_group(START, _files(incoming), products_dir=tmp_path / "p", scratch_dir=tmp_path / "s")
    assert sorted(p.name for p in incoming.iterdir()) == before
    assert not naming.ms_path(tmp_path / "p", START).exists()


def test_declination_in_degrees_is_rejected(group_dir, tmp_path):
    incoming = tmp_path / "in"
    shutil.copytree(group_dir, incoming)
    for path in incoming.glob("*.hdf5"):
        badinput.set_dec_in_degrees(path)
    with pytest.raises(InvalidInputError, match="radians"):
        convert_group(START, _files(incoming), products_dir=tmp_path / "p", scratch_dir=tmp_path / "s")


def test_casa_sees_what_the_input_says_and_solves_on_it(group_dir, tmp_path):
    from contimg.casa import run_in_casa

    result = _convert(group_dir, tmp_path, "direct-subband")
    info = result.validation
    assert info["n_spw"] == 16 and set(info["n_chan"]) == {4} and info["n_pol"] == 2
    assert info["telescope"] == "DSA_110" and info["smoke_solutions"] > 0
    with table(str(result.ms_path), ack=False) as ms:
        refant = choose_refant(np.unique(ms.getcol("ANTENNA1")))
    tables = run_in_casa(_bandpass_and_delay, str(result.ms_path), str(tmp_path), refant,
                         log_path=tmp_path / "bp.log")
    assert tables["B"] > 0 and tables["K"] > 0
    # CASA wrote the preallocated imaging columns: the model everywhere, the corrected data where unflagged.
    with table(str(result.ms_path), ack=False) as ms:
        model, corrected, flags = ms.getcol("MODEL_DATA"), ms.getcol("CORRECTED_DATA"), ms.getcol("FLAG")
    np.testing.assert_allclose(model, 1.0, atol=1e-6)
    assert np.all(corrected[~flags] != 0)


def _casa_uvw(ms: str, out: str):
    from casatasks import fixvis

    fixvis(vis=ms, outputvis=out, reuse=False)  # CASA recomputes UVW from antennas + PHASE_DIR


@pytest.mark.parametrize("per_integration", [False, True])
def test_casa_recomputes_the_same_uvw(group_dir, tmp_path, per_integration):
    """Sign and frame of UVW agree with CASA's own calculation (a flip or an apparent-frame
    UVW would differ by 2 or by ~4e-3 of the baseline length)."""
    from contimg.casa import run_in_casa

    ms = _convert(group_dir, tmp_path, "direct-subband", field_per_integration=per_integration).ms_path
    out = tmp_path / "fixvis.ms"
    run_in_casa(_casa_uvw, str(ms), str(out), log_path=tmp_path / "fixvis.log")
    with table(str(ms), ack=False) as a, table(str(out), ack=False) as b:
        ours, casa = a.getcol("UVW"), b.getcol("UVW")
    length = np.linalg.norm(ours, axis=1)
    err = np.linalg.norm(ours - casa, axis=1)
    assert np.all(err <= 1e-4 * np.maximum(length, 1.0)), f"max relative UVW error {np.max(err / np.maximum(length, 1)):.1e}"


def _bandpass_and_delay(ms: str, workdir: str, refant: str) -> dict:
    import casatools
    from casatasks import applycal, bandpass, gaincal, listobs, setjy

    summary = listobs(vis=ms)
    assert summary["nfields"] == 1 and summary["numrecords"] > 0, summary
    setjy(vis=ms, standard="manual", fluxdensity=[1, 0, 0, 0], usescratch=True)  # into MODEL_DATA
    gaincal(vis=ms, caltable=f"{workdir}/t.K", gaintype="K", solint="inf", refant=refant, minsnr=0)
    bandpass(vis=ms, caltable=f"{workdir}/t.B", solint="inf", refant=refant, minsnr=0,
             gaintable=[f"{workdir}/t.K"])
    applycal(vis=ms, gaintable=[f"{workdir}/t.K", f"{workdir}/t.B"], calwt=False, flagbackup=False)
    counts = {}
    tb = casatools.table()
    for kind in ("K", "B"):
        tb.open(f"{workdir}/t.{kind}")
        counts[kind] = tb.nrows()
        tb.close()
    return counts


def _scramble(directory: Path, out: Path, seed: int = 11) -> None:
    """The same group with rows in a shuffled order and a third of the cross-correlations stored as
    ant1 > ant2 (uvw negated, visibilities conjugated), as another correlator layout could write it."""
    out.mkdir()
    rng = np.random.default_rng(seed)
    permutation = None
    for path in sorted(directory.glob("*.hdf5")):
        target = out / path.name
        shutil.copyfile(path, target)
        with h5py.File(target, "r+") as h:
            header, data = h["Header"], h["Data"]
            n_blts = int(header["Nblts"][()])
            if permutation is None:
                permutation = rng.permutation(n_blts)
                ant1, ant2 = header["ant_1_array"][()], header["ant_2_array"][()]
                flip = (ant1 != ant2) & (rng.random(n_blts) < 1 / 3)
            for name in list(header):
                dset = header[name]
                if isinstance(dset, h5py.Dataset) and dset.shape and dset.shape[0] == n_blts:
                    dset[...] = dset[()][permutation]
            ant1, ant2, uvw = header["ant_1_array"][()], header["ant_2_array"][()], header["uvw_array"][()]
            swap = flip[permutation]
            header["ant_1_array"][...] = np.where(swap, ant2, ant1)
            header["ant_2_array"][...] = np.where(swap, ant1, ant2)
            header["uvw_array"][...] = np.where(swap[:, None], -uvw, uvw)
            for name in ("visdata", "flags", "nsamples"):
                values = data[name][()][permutation]
                if name == "visdata":
                    values[swap] = np.conj(values[swap])
                data[name][...] = values


def test_row_order_and_conjugation_of_the_input_do_not_change_the_ms(group_dir, tmp_path):
    """The direct writer's row reordering and conjugation paths (the simulator writes canonical order)."""
    scrambled = tmp_path / "scrambled"
    _scramble(group_dir, scrambled)
    with h5py.File(next(scrambled.glob("*.hdf5")), "r") as h:
        ant1, ant2, times = (h["Header"][k][()] for k in ("ant_1_array", "ant_2_array", "time_array"))
    assert (ant1 > ant2).any() and np.any(np.diff(times) < 0)  # both paths are exercised
    a = _convert(group_dir, tmp_path / "a", "direct-subband", validate=False).ms_path
    b = _convert(scrambled, tmp_path / "b", "direct-subband", validate=False).ms_path
    with table(str(a), ack=False) as ta, table(str(b), ack=False) as tb:
        for col in ("ANTENNA1", "ANTENNA2", "TIME", "FLAG", "WEIGHT_SPECTRUM", "WEIGHT", "DATA_DESC_ID"):
            np.testing.assert_array_equal(ta.getcol(col), tb.getcol(col), err_msg=col)
        np.testing.assert_allclose(ta.getcol("UVW"), tb.getcol("UVW"), rtol=0, atol=1e-6)
        data = ta.getcol("DATA")
        np.testing.assert_allclose(tb.getcol("DATA"), data, rtol=0, atol=1e-5 * np.abs(data).max())


def test_flags_that_are_not_whole_bytes_per_row_are_put_by_the_converting_thread(tmp_path):
    """5 channels x 2 pols = 10 flag bits a row: FLAG cannot go straight into its file, the fallback puts it."""
    incoming = tmp_path / "in"
    simulate.simulate_group(incoming, START, seed=4, n_subbands=16, n_channels=5, n_times=2, n_antennas=6,
                            jitter_s=0.0)
    rng = np.random.default_rng(8)
    for path in sorted(incoming.glob("*.hdf5"))[::3]:
        with h5py.File(path, "r+") as h:
            flags = h["Data/flags"][()]
            flags |= rng.random(flags.shape) < 0.2
            h["Data/flags"][...] = flags
    a = _convert(incoming, tmp_path, "direct-subband", validate=False).ms_path
    b = _convert(incoming, tmp_path, "pyuvdata", validate=False).ms_path
    with table(str(a), ack=False) as ta, table(str(b), ack=False) as tb:
        assert tb.getcol("FLAG").mean() > 0.05
        for col in ("FLAG", "WEIGHT", "SIGMA", "WEIGHT_SPECTRUM"):
            np.testing.assert_array_equal(ta.getcol(col), tb.getcol(col), err_msg=col)


def test_nsamples_stored_as_float16_convert_like_float32(group_dir, tmp_path):
    """DOMAIN.md's 32 MB of nsamples per file suggests float16; the compiled pass has no float16 (numba)."""
    half = tmp_path / "half"
    shutil.copytree(group_dir, half)
    for path in half.glob("*.hdf5"):
        with h5py.File(path, "r+") as h:
            values = h["Data/nsamples"][()]
            del h["Data/nsamples"]
            h["Data"].create_dataset("nsamples", data=values.astype(np.float16))
    a = _convert(group_dir, tmp_path / "a", "direct-subband", validate=False).ms_path
    b = _convert(half, tmp_path / "b", "direct-subband", validate=False).ms_path
    with table(str(a), ack=False) as ta, table(str(b), ack=False) as tb:
        for col in ("WEIGHT_SPECTRUM", "WEIGHT", "SIGMA", "FLAG", "DATA"):
            np.testing.assert_array_equal(ta.getcol(col), tb.getcol(col), err_msg=col)


def test_a_subband_with_other_channels_is_bad_input(group_dir, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(group_dir, odd)
    path = next(iter(sorted(odd.glob("*_sb03.hdf5"))))
    with h5py.File(path, "r+") as h:
        for name in ("visdata", "flags", "nsamples"):
            values = h["Data"][name][()][:, :3]
            del h["Data"][name]
            h["Data"].create_dataset(name, data=values)
        for name in ("freq_array", "channel_width"):
            values = h["Header"][name][()][..., :3]
            del h["Header"][name]
            h["Header"].create_dataset(name, data=values)
        h["Header/Nfreqs"][()] = 3
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="3 channels x 2 polarisations, but the group's other subbands have 4"):
        _convert(odd, tmp_path, "direct-subband", validate=False)
    assert path.read_bytes() == before
