"""Exceptions of the catalog package (self-contained: ``catalog`` imports nothing from ``contimg``)."""

from __future__ import annotations


class CatalogError(Exception):
    """A catalog write or read failed (bad row, unreadable table, bad query)."""


class SchemaError(CatalogError, ValueError):
    """A row does not match its table's schema.

    Attributes
    ----------
    table : str
        The table the row was meant for.
    row_index : int or None
        Position of the offending row in the list given to ``append``.
    column : str or None
        The offending column.
    """

    def __init__(self, table: str, row_index: int | None, column: str | None, problem: str):
        self.table = table
        self.row_index = row_index
        self.column = column
        where = f"catalog table {table!r}"
        if row_index is not None:
            where += f", row {row_index}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


class NoCalibrationError(Exception):
    """No registered caltable set may be applied at the requested time.

    Not a :class:`CatalogError` (the catalog works; calibration is missing), and
    not ``contimg.errors.NoCalibrationError`` either (``catalog`` does not import
    ``contimg``): the task layer catches this one and re-raises the ``contimg``
    one (``raise contimg.errors.NoCalibrationError(str(exc)) from exc``) after
    recording the group as ``waiting_for_cal``. It is not worth a retry: the
    group waits for the next registered set.

    Attributes
    ----------
    mjd : float
        The requested time, MJD (UTC).
    missing : str
        What is missing: ``"K/B"`` or ``"G"``.
    before, after : dict or None
        The nearest active set before / after ``mjd`` of the missing kind:
        ``{"set_name", "mid_mjd", "gap_hours", "calibrator"}``, None when there is none.
    """

    def __init__(self, message: str, *, mjd: float, missing: str,
                 before: dict | None = None, after: dict | None = None):
        self.mjd = mjd
        self.missing = missing
        self.before = before
        self.after = after
        super().__init__(message)
