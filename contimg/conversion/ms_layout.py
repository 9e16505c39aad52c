"""The on-disk layout of the Measurement Sets the converter writes.

Columns, types and keywords are those of pyuvdata's ``init_ms_file``: CASA and
pyuvdata read the result the same way. What differs is the storage:

* Every per-channel array column (DATA, MODEL_DATA, CORRECTED_DATA,
  WEIGHT_SPECTRUM, FLAG) has its own ``TiledColumnStMan``: a fixed cell shape
  (all SPWs of a DSA-110 group have the same channels), so every row has an
  array from the moment it exists (CASA's solvers fail with "TSM: no array in
  row" on a variable-shape column with unwritten rows), and tiles of whole rows
  of about 1 MiB. pyuvdata keeps DATA, MODEL_DATA and CORRECTED_DATA in one
  hypercube, so writing them one after another rewrote the same tiles three
  times (44 s of ``putcol`` for a full group).
* MODEL_DATA and CORRECTED_DATA are preallocated but not written: they read as
  zeros until the calibration stage fills them (``ft``/``setjy`` and
  ``applycal`` write every row anyway). Their tiles are holes in sparse files
  (:func:`create_ms`), so they cost neither time nor disk (the MS takes 3.2 GB
  per full group, not 7.3 GB) until then.
* With whole-row tiles and one hypercube, casacore's data file for such a column
  (``table.f<SEQNR>_TSM0``) is exactly the C-ordered little-endian array
  ``(row, channel, polarisation)`` (for FLAG: its bits, least significant
  first), padded to whole tiles, starting at byte 0. DATA, WEIGHT_SPECTRUM,
  FLAG, WEIGHT and SIGMA (:data:`DIRECT_COLUMNS`) are therefore written by the
  converter's workers straight into those files, in parallel, mostly with
  ``O_DIRECT`` (:mod:`.column_io`); casacore ``putcol`` reached 0.79 GB/s at
  best here, from one process.
  :func:`direct_column_files` checks the layout against casacore's own
  description of the table before anything is written, and the tests compare
  every cell with ``getcol``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contimg.conversion.column_io import RangeWriter

#: Bytes per tile of the array columns.
TILE_BYTES = 1 << 20

#: Per-channel array columns: casacore value type and bytes per element.
ARRAY_COLUMNS = {
    "DATA": ("complex", 8),
    "MODEL_DATA": ("complex", 8),
    "CORRECTED_DATA": ("complex", 8),
    "WEIGHT_SPECTRUM": ("float", 4),
    "FLAG": ("boolean", 1),  # stored as bits
}
#: The columns the converter's workers write straight into their files: element type
#: on disk (little-endian; bool is casacore's Bool storage, one bit per element,
#: least significant bit first).
DIRECT_COLUMNS = {
    "DATA": np.dtype("<c8"),
    "WEIGHT_SPECTRUM": np.dtype("<f4"),
    "FLAG": np.dtype(bool),
    "WEIGHT": np.dtype("<f4"),
    "SIGMA": np.dtype("<f4"),
}

#: Columns stored with IncrementalStMan (one value per change): give them to :func:`create_ms`.
INCREMENTAL_COLUMNS = (
    "ARRAY_ID", "DATA_DESC_ID", "EXPOSURE", "FEED1", "FEED2", "FIELD_ID", "INTERVAL", "OBSERVATION_ID",
    "PROCESSOR_ID", "SCAN_NUMBER", "STATE_ID", "TIME", "TIME_CENTROID",
)


@dataclass(frozen=True)
class ColumnFile:
    """Where the rows of one directly written column live on disk.

    Attributes
    ----------
    path : Path
        casacore's tiled data file of the column.
    dtype : numpy.dtype
        Element type on disk (see :data:`DIRECT_COLUMNS`).
    cell_shape : tuple of int
        Shape of one row's cell, numpy order: (channels, polarisations) or (polarisations,).
    """

    path: Path
    dtype: np.dtype
    cell_shape: tuple[int, ...]

    @property
    def bits(self) -> bool:
        """Stored one bit per element (casacore Bool)."""
        return self.dtype == np.dtype(bool)

    @property
    def row_bytes(self) -> int:
        n = int(np.prod(self.cell_shape))
        return n // 8 if self.bits else n * self.dtype.itemsize

    def offset(self, row: int) -> int:
        """Byte offset of ``row`` in the file."""
        return int(row) * self.row_bytes

    def encode(self, values: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``values`` (Nrows, *cell_shape) as the bytes on disk, into ``out`` if given."""
        values = np.asarray(values)
        if values.shape[1:] != self.cell_shape:
            raise ValueError(f"{self.path}: rows of shape {values.shape[1:]}, column cells are {self.cell_shape}")
        if self.bits:
            encoded = np.packbits(values.reshape(-1), bitorder="little")
        else:
            encoded = np.ascontiguousarray(values, dtype=self.dtype)
        if out is None:
            return encoded
        out.reshape(-1).view(np.uint8)[:] = encoded.reshape(-1).view(np.uint8)
        return out


def _rows_per_tile(n_pol: int, n_chan: int, itemsize: int) -> int:
    return max(1, TILE_BYTES // (n_pol * n_chan * itemsize))


def array_column(name: str, *, n_pol: int, n_chan: int) -> tuple[dict, dict]:
    """Table description and data-manager info of one per-channel column (see module docstring).

    Returns
    -------
    desc, dminfo : dict
        For ``casacore.tables`` (``maketabdesc`` result, one ``makedminfo`` entry).
    """
    from casacore import tables

    vtype, itemsize = ARRAY_COLUMNS[name]
    group = f"Tiled{name}"
    coldesc = tables.makearrcoldesc(name, False if vtype == "boolean" else 0.0, valuetype=vtype,
                                    shape=[n_chan, n_pol], datamanagertype="TiledColumnStMan",
                                    datamanagergroup=group)
    tile = np.array([n_pol, n_chan, _rows_per_tile(n_pol, n_chan, itemsize)], dtype=np.int32)
    return tables.maketabdesc(coldesc), {"TYPE": "TiledColumnStMan", "NAME": group,
                                         "SPEC": {"DEFAULTTILESHAPE": tile}}


def create_ms(path: str | Path, *, n_pol: int, n_chan: int, n_rows: int,
              incremental: Mapping[str, np.ndarray] | None = None):
    """Create an MS with ``n_rows`` rows whose per-channel columns are preallocated zeros.

    casacore initialises every new tile by writing zeros into the column's file
    when it flushes, with no way to ask for a sparse file instead: 6.8 GB of
    zeros for a full group, which took 17 s here (3 to 7 s when released from
    the page cache block by block), before a single visibility. So the rows are
    added while the data files of the tiled columns (the per-channel ones, UVW,
    WEIGHT, SIGMA) point at ``/dev/null``, and those files are then replaced by
    sparse files of exactly the size casacore expects, which read back as the
    same zeros. Nothing is ever written for MODEL_DATA and CORRECTED_DATA until
    calibration fills them.

    Parameters
    ----------
    path : str or Path
        The MS to create.
    n_pol, n_chan : int
        Correlations and channels per row (the same in every SPW).
    n_rows : int
        Rows of the main table.
    incremental : mapping of str to numpy.ndarray, optional
        Values of :data:`INCREMENTAL_COLUMNS` columns, one per row: put while
        the rows are added, the only time it is cheap (:func:`_put_runs`).

    Returns
    -------
    casacore.tables.table
        The main table, open for writing.
    """
    from casacore import tables  # here, not at import: the converter's workers never need it

    desc = tables.required_ms_desc("MAIN")
    del desc["FLAG"]
    options = {}
    for name in ARRAY_COLUMNS:
        column_desc, column_dm = array_column(name, n_pol=n_pol, n_chan=n_chan)
        desc.update(column_desc)
        options[column_dm["NAME"]] = column_dm["SPEC"]
    desc["FLAG_CATEGORY"].update(dataManagerType="TiledShapeStMan", dataManagerGroup="TiledFlagCategory",
                                 keywords={"CATEGORY": np.array("baddata")})
    desc["UVW"].update(dataManagerType="TiledColumnStMan", dataManagerGroup="TiledUVW")
    for name in ("WEIGHT", "SIGMA"):  # fixed shape too: a putcol of varying shapes goes row by row
        desc.update(tables.maketabdesc(tables.makearrcoldesc(
            name, 0.0, valuetype="float", shape=[n_pol], datamanagertype="TiledColumnStMan",
            datamanagergroup=f"Tiled{name}")))
    for name in ("ANTENNA1", "ANTENNA2", "FLAG_ROW"):
        desc[name].update(dataManagerGroup=name)
    for name in INCREMENTAL_COLUMNS:
        desc[name].update(dataManagerType="IncrementalStMan", dataManagerGroup=name)
    with tables.default_ms(str(path), desc, tables.makedminfo(desc, options)) as ms:
        files = {name: _data_file(ms, name) for name in ms.colnames()
                 if ms.getdminfo(name)["TYPE"] == "TiledColumnStMan"}
    for file in files.values():
        file.unlink()
        file.symlink_to(os.devnull)
    with tables.table(str(path), readonly=False, ack=False) as ms:
        ms.addrows(n_rows)  # the zero tiles written at close go to /dev/null
        for name, values in (incremental or {}).items():
            if name not in INCREMENTAL_COLUMNS:
                raise ValueError(f"{name} is not an IncrementalStMan column of this layout")
            _put_runs(ms, name, values)
        sizes = {name: _hypercube_bytes(ms.getdminfo(name)) for name in files}
    for name, file in files.items():
        file.unlink()
        with open(file, "wb") as handle:
            handle.truncate(sizes[name])  # sparse: reads as zeros, costs no disk until written
    return tables.table(str(path), readonly=False, ack=False)


def _put_runs(ms, column: str, values: np.ndarray) -> None:
    """Write an IncrementalStMan column of freshly added rows, one ``putcell`` per run of equal values.

    IncrementalStMan stores a value where it changes. In the session that added
    the rows, a value put after the last row put holds for every row after it,
    so putting the first row of each run, in increasing row order, gives every
    row its value: a full group's TIME (2.65 million rows, 384 runs) takes 10 ms
    instead of the 0.19 s of a ``putcol``, which compares row by row. (After the
    table is reopened, a put changes one row only.) The column is read back to
    check.
    """
    values = np.asarray(values)
    if values.shape != (ms.nrows(),):
        raise ValueError(f"{ms.name()}: {values.shape} values for {ms.nrows()} rows of {column}")
    for row in np.flatnonzero(np.r_[True, values[1:] != values[:-1]]):
        ms.putcell(column, int(row), values[row])
    if not np.array_equal(ms.getcol(column), values):
        raise RuntimeError(f"{ms.name()}: column {column} does not read back as put")


def _hypercube_bytes(dminfo: dict) -> int:
    """Size of the data file of a tiled column with one hypercube, bytes."""
    (cube,) = dminfo["SPEC"]["HYPERCUBES"].values()
    tiles = np.prod(-(-np.asarray(cube["CubeShape"]) // np.asarray(cube["TileShape"])))
    return int(tiles) * int(cube["BucketSize"])


def direct_column_files(ms) -> dict[str, ColumnFile]:
    """The data file of every column in :data:`DIRECT_COLUMNS` of an MS made by :func:`create_ms`.

    Parameters
    ----------
    ms : casacore.tables.table
        The main table, as :func:`create_ms` returns it.

    Raises
    ------
    RuntimeError
        casacore describes a column's storage differently from what direct
        writing assumes (one hypercube of whole-row tiles holding every row,
        little-endian), e.g. after a casacore upgrade.
    """
    if ms.endianformat() != "little":
        raise RuntimeError(f"{ms.name()}: {ms.endianformat()}-endian table; direct column writes need little")
    out = {}
    for name, dtype in DIRECT_COLUMNS.items():
        info = ms.getdminfo(name)
        cubes = list(info["SPEC"].get("HYPERCUBES", {}).values())
        if info["TYPE"] != "TiledColumnStMan" or len(cubes) != 1:
            raise RuntimeError(f"{ms.name()}: column {name} is not one tiled hypercube: {info}")
        cube, tile, cell = (list(cubes[0][k]) for k in ("CubeShape", "TileShape", "CellShape"))
        if tile[:-1] != cell or cube != [*cell, ms.nrows()]:
            raise RuntimeError(f"{ms.name()}: column {name} has tiles {tile} for cells {cell}; "
                               "direct writes need tiles of whole rows")
        path = _data_file(ms, name)
        column = ColumnFile(path, dtype, tuple(int(n) for n in reversed(cell)))
        if column.bits and np.prod(cell) % 8:
            continue  # a row is not whole bytes: the caller writes this column with putcol
        if int(cubes[0]["BucketSize"]) != tile[-1] * column.row_bytes:
            raise RuntimeError(f"{ms.name()}: column {name} stores {tile[-1]} rows in {cubes[0]['BucketSize']} "
                               f"bytes, not {tile[-1] * column.row_bytes}: not the plain array direct writes assume")
        if not path.is_file() or path.stat().st_size != _hypercube_bytes(info):
            raise RuntimeError(f"{path}: expected {_hypercube_bytes(info)} bytes for column {name}")
        out[name] = column
    return out


def _data_file(ms, column: str) -> Path:
    """casacore's data file of a tiled column with one hypercube."""
    return Path(ms.name()) / f"table.f{ms.getdminfo(column)['SEQNR']}_TSM0"


def write_rows(column: ColumnFile, start_row: int, values: np.ndarray) -> None:
    """Write rows ``start_row ...`` of a column straight into its data file, in one go.

    The converter's workers write block by block as they compute
    (:class:`.column_io.RangeWriter`); this is the one-shot form.

    Parameters
    ----------
    column : ColumnFile
        From :func:`direct_column_files`. casacore must hold no modified tile
        of the column: nothing but this function writes it.
    start_row : int
        First row to write.
    values : numpy.ndarray
        (Nrows, *cell_shape), any dtype convertible to the column's.
    """
    with RangeWriter(column.path, column.offset(start_row), column.encode(values)):
        pass
