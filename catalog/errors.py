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
