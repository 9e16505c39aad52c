"""Direct writes into the MS's tiled column files agree with casacore, cell for cell."""

from __future__ import annotations

import os

import numpy as np
import pytest
from casacore import tables

from contimg.conversion import column_io, ms_layout


@pytest.mark.parametrize("n_chan", [48, 5])
def test_direct_rows_read_back_identically_with_getcol(tmp_path, n_chan):
    n_pol = 2
    rows_per_tile = ms_layout._rows_per_tile(n_pol, n_chan, 8)
    # Two blocks like two SPWs, meeting inside a tile; several tiles, the last one partly used.
    first, second = rows_per_tile + 3, 2 * rows_per_tile + 14
    n_rows = first + second
    path = tmp_path / "t.ms"
    with ms_layout.create_ms(path, n_pol=n_pol, n_chan=n_chan, n_rows=n_rows) as ms:
        columns = ms_layout.direct_column_files(ms)
    # FLAG is written directly only when a row is whole bytes (48 x 2 bits, not 5 x 2).
    assert ("FLAG" in columns) == (n_chan == 48)
    assert set(columns) | {"FLAG"} == set(ms_layout.DIRECT_COLUMNS)
    rng = np.random.default_rng(5)
    expected = {}
    for name, column in columns.items():
        shape = (n_rows, *column.cell_shape)
        if column.bits:
            values = rng.random(shape) < 0.3
        else:
            values = rng.normal(size=shape).astype(column.dtype)
        if column.dtype.kind == "c":
            values = values + 1j * rng.normal(size=shape).astype(np.float32)
        # Out of order, as parallel workers would.
        ms_layout.write_rows(column, first, values[first:])
        ms_layout.write_rows(column, 0, values[:first])
        expected[name] = values
    with tables.table(str(path), ack=False) as ms:
        assert ms.nrows() == n_rows
        for name, values in expected.items():
            np.testing.assert_array_equal(ms.getcol(name), values, err_msg=name)
            np.testing.assert_array_equal(ms.getcol(name, startrow=n_rows - 1, nrow=1), values[-1:], err_msg=name)


def test_wrong_cell_shape_is_refused(tmp_path):
    with ms_layout.create_ms(tmp_path / "t.ms", n_pol=2, n_chan=4, n_rows=10) as ms:
        column = ms_layout.direct_column_files(ms)["DATA"]
    with pytest.raises(ValueError, match="rows of shape"):
        ms_layout.write_rows(column, 0, np.zeros((10, 2, 4), np.complex64))


def test_new_columns_are_holes_that_read_back_as_zeros_and_take_writes(tmp_path):
    path = tmp_path / "t.ms"
    with ms_layout.create_ms(path, n_pol=2, n_chan=48, n_rows=20_000) as ms:
        files = {name: ms_layout._data_file(ms, name) for name in ms_layout.ARRAY_COLUMNS}
        ms.putcol("FLAG", np.ones((7, 48, 2), bool), 100, 7)
        ms.putcol("MODEL_DATA", np.full((3, 48, 2), 2 + 1j, np.complex64), 19_997, 3)
    for name in ("DATA", "CORRECTED_DATA", "WEIGHT_SPECTRUM"):
        assert not files[name].is_symlink()
        assert files[name].stat().st_size >= 20_000 * 48 * 2 * 4
        assert files[name].stat().st_blocks * 512 < files[name].stat().st_size / 10  # nothing written
    with tables.table(str(path), ack=False) as ms:
        assert ms.nrows() == 20_000
        for name in ("DATA", "CORRECTED_DATA", "WEIGHT_SPECTRUM"):
            assert ms.getcol(name).shape == (20_000, 48, 2) and not np.any(ms.getcol(name))
        flags, model = ms.getcol("FLAG"), ms.getcol("MODEL_DATA")
    assert flags.sum() == 7 * 96 and flags[100:107].all()
    assert np.all(model[19_997:] == 2 + 1j) and not np.any(model[:19_997])


def test_a_layout_direct_writes_cannot_use_is_refused(tmp_path):
    # pyuvdata's own skeleton keeps DATA in a TiledShapeStMan hypercube shared with other columns.
    from pyuvdata.utils.io import ms as ms_utils

    path = str(tmp_path / "p.ms")
    ms_utils.init_ms_file(path)
    with tables.table(path, readonly=False, ack=False) as ms:
        with pytest.raises(RuntimeError, match="DATA"):
            ms_layout.direct_column_files(ms)


def _o_direct_supported(directory) -> bool:
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


def test_block_writers_meeting_inside_a_page_read_back_identically(tmp_path):
    """Two SPW blocks written block by block as the workers do: whole pages with O_DIRECT, shared page edges cached."""
    n_pol, n_chan = 2, 48
    first, second = 1003, 2500  # 1003 rows x 768 bytes: the boundary falls inside a page
    path = tmp_path / "t.ms"
    with ms_layout.create_ms(path, n_pol=n_pol, n_chan=n_chan, n_rows=first + second) as ms:
        column = ms_layout.direct_column_files(ms)["DATA"]
    rng = np.random.default_rng(9)
    shape = (first + second, n_chan, n_pol)
    values = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    direct = 0
    for start, stop in ((first, first + second), (0, first)):  # out of order, as parallel workers would
        buffer = column_io.aligned_array("test", (stop - start, n_chan, n_pol), column.dtype,
                                         file_offset=column.offset(start))
        with column_io.RangeWriter(column.path, column.offset(start), buffer) as writer:
            for block in range(0, stop - start, 300):
                end = min(block + 300, stop - start)
                buffer[block:end] = values[start + block:start + end]
                writer.flush_upto(end * column.row_bytes)
        direct += writer.direct_bytes
    with tables.table(str(path), ack=False) as ms:
        np.testing.assert_array_equal(ms.getcol("DATA"), values)
    if _o_direct_supported(tmp_path):
        assert direct > 0.9 * values.nbytes  # all but the partial pages at the block edges
