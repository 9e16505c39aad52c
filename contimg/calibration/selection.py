"""CASA-style selection strings for fields and antennas, resolved to ids.

The CASA solvers take the strings as they are; the fast solver needs the ids.
Syntax (a subset of CASA's ``MSSelection``, the part the telescope team used):

* ``''`` or ``'*'``: everything;
* comma-separated items, each an id (``3``), an id range (``0~23``) or a name
  glob matched against the table's ``NAME`` column (``DSA-10?``, ``J0834*_t1*``);
* a leading ``!`` on an item removes what it matches.

A bare number is an id (row index of the FIELD or ANTENNA table); for antennas
that is the antenna number, station - 1. A spec that selects nothing is an error,
never an empty selection that would silently solve on no data (the telescope
team's ``field='0'`` silently solved one 12.9 s field).
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from contimg.errors import InvalidInputError

_RANGE = re.compile(r"^(\d+)~(\d+)$")


def select_ids(spec: str, names, *, what: str = "item") -> np.ndarray:
    """Ids (sorted) selected by a CASA-style ``spec`` among ``names`` (index = id).

    Raises
    ------
    InvalidInputError
        The spec selects nothing, or names an id out of range.
    """
    names = [str(n) for n in names]
    n = len(names)
    spec = (spec or "").strip()
    if spec in ("", "*"):
        return np.arange(n)
    include: set[int] = set()
    exclude: set[int] = set()
    any_include = False
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        negate = item.startswith("!")
        item = item[1:].strip() if negate else item
        hits = _match(item, names, what)
        if negate:
            exclude |= hits
        else:
            any_include = True
            include |= hits
    chosen = (include if any_include else set(range(n))) - exclude
    if not chosen:
        raise InvalidInputError(f"{what} selection {spec!r} selects nothing among {n} ({', '.join(names[:5])}...)")
    return np.array(sorted(chosen), dtype=int)


def _match(item: str, names: list[str], what: str) -> set[int]:
    if item.isdigit():
        i = int(item)
        if i >= len(names):
            raise InvalidInputError(f"{what} id {i} is out of range (0..{len(names) - 1})")
        return {i}
    m = _RANGE.match(item)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi or hi >= len(names):
            raise InvalidInputError(f"{what} range {item!r} is not within 0..{len(names) - 1}")
        return set(range(lo, hi + 1))
    hits = {i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, item)}
    if not hits:
        raise InvalidInputError(f"{what} name {item!r} matches no {what} ({', '.join(names[:5])}...)")
    return hits


def table_names(ms, subtable: str) -> list[str]:
    """The NAME column of an MS subtable (``ANTENNA``, ``FIELD``)."""
    from casacore.tables import table

    with table(f"{ms}/{subtable}", ack=False) as t:
        return list(t.getcol("NAME"))
