"""The calibration registry: caltable sets in the ``cal_registry`` table, and what to apply when.

A *set* is what one calibrator group produced: its tables in apply order, each a
row of ``cal_registry`` (key ``set_name, table_path``) with its interpolation,
``spwmap``, ``gainfield``, reference antenna, calibrator, source MS, solver
parameters and quality. Every row of a set carries the set's time ``mid_mjd``
(the mid time of the source MS, MJD UTC) and status. The table is append-only
like every catalog table: a status change is a new row per table, and the latest
row per key is the state.

Statuses
--------
``active``
    Passed the QA gate (decided by the solver and passed in): in force.
``rejected``
    Failed it; recorded with its reason and never applied. Registering a
    rejected set changes nothing: the previous good set stays in force.
``retired``
    Withdrawn by :func:`retire_set` (with a reason); never applied again.
    Version-1 rows' ``deprecated`` is read as retired.

Table types
-----------
Two kinds, chosen separately at lookup:

* *K/B* (:data:`KB_TYPES`: ``K``, ``KCROSS``, ``B``, ``BP``, ``BA``): delay and
  bandpass, from a strong calibrator. Valid until superseded, up to
  ``kb_max_age_hours`` (the ``cal_kb_validity_hours`` setting, 24 h).
* *G* (:data:`G_TYPES`: ``G``, ``GA``, ``GP``, ``2G``, ``T``, ``FLUX``): gains,
  from every calibrator transit of the strip. The solver's tables are
  registered as ``GP`` (phase on every integration), ``GA`` (amplitude once per
  group) and ``2G`` (the optional short phase solve), or one ``G`` for a joint
  solve; the registry does not care which, as long as sets that are to be
  interpolated use the same types.

A set may hold both kinds (a strong calibrator: K, B, then G) or G only (a weaker
calibrator solved against an earlier set's K/B: name that set in ``kb_set``).

A third type, ``SC`` (:data:`SELFCAL_TYPES`), is a group's self-calibration, solved
on top of the sets applied to it and registered as a set of its own (source MS:
that group's): it is never chosen by :func:`active_applylist`.

Lookup (:func:`active_applylist`)
---------------------------------
Only ``active`` sets are considered. The set's time is ``mid_mjd``; "newest"
means the latest ``mid_mjd``, then the latest registration (a set re-solved from
the same data supersedes the earlier one).

G, for a target time ``t`` (``g`` = ``g_max_gap_hours``):

1. a G set at ``t`` (within 1 s: the calibrator group itself): that set alone;
2. the nearest set before and the nearest after, when they are at most ``2 g``
   apart (so every time between them is within ``g`` of one of them) and
   *compatible* (same reference antenna, same G types in the same order): both,
   in time order, with ``interpolate_g=True``. Sets solved against different
   K/B sets are still interpolated (a strong calibrator may solve its own K/B
   at every transit); the K/B set is then chosen by rules 2-3 below. The applier
   merges each type's two tables into one table (solutions of both, in time
   order) and applies it with linear interpolation in time; this module does
   not merge;
3. otherwise the nearer of the two if within ``g``, with a warning saying why it
   was not interpolated;
4. otherwise :class:`~catalog.errors.NoCalibrationError`, naming the nearest
   sets before and after (time, gap, calibrator): the group waits for the next
   calibrator transit.

K/B, among active sets with K/B tables within ``kb_max_age_hours`` of ``t``:

1. when the chosen G sets all name one ``kb_set`` and that set qualifies, that
   set: gains are consistent only with the bandpass they were solved against,
   so consistency wins over recency;
2. otherwise the newest set at or before ``t`` ("valid until superseded");
3. otherwise (``t`` before the night's first strong calibrator) the nearest
   set after ``t``;
4. otherwise ``NoCalibrationError``.

A warning is added when the K/B set is none of those the G sets were solved
with, or when the reference antennas of the K/B and G sets differ.

The recorded ``valid_start_mjd``/``valid_end_mjd`` of each row are the window
these rules gave with the settings at registration (K/B: ``mid_mjd`` +- the K/B
validity, G: +- the G gap). They are a record for people and SQL (docs/catalog.md
query 7); lookups apply the settings in force at lookup time, so changing a
setting takes effect on old sets too. End a set early with :func:`retire_set`.

Concurrency
-----------
A set is written by one :func:`catalog.store.append` (all its rows share
``obs_date``), so it is one file, renamed into place: a reader sees all of a set
or none of it; the same holds for a retirement. Any number of processes may
register at once. Set names must be unique per solve (e.g.
``<ms stem>_<mid_mjd:.6f>``): re-registering an existing name with the same
status and tables does nothing (a rerun of a flow), with different ones raises
:class:`~catalog.errors.CatalogError`.

Errors
------
:class:`catalog.errors.NoCalibrationError` is this package's own class: the
catalog cannot import ``contimg``. The task layer catches it and re-raises
``contimg.errors.NoCalibrationError`` (after recording the group as
``waiting_for_cal``); scripts may catch this one directly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from catalog import query as cq
from catalog import schema as sch
from catalog import store
from catalog.errors import CatalogError, NoCalibrationError

TABLE = "cal_registry"
KB_TYPES = frozenset({"K", "KCROSS", "B", "BP", "BA"})
#: A group's own self-calibration (``SC``): recorded for provenance and for rebuilding that group's
#: CORRECTED_DATA; never transferred, so no lookup for another time chooses it.
SELFCAL_TYPES = frozenset({"SC"})
G_TYPES = frozenset(sch.CAL_TABLE_TYPES) - KB_TYPES - SELFCAL_TYPES
REGISTER_STATUSES = ("active", "rejected")
RETIRED = frozenset({"retired", "deprecated"})
#: A set this close to the target time (days: 1 s) is "at" it.
SAME_TIME_DAYS = 1.0 / 86400.0
DEFAULT_KB_VALIDITY_HOURS = 24.0
DEFAULT_G_MAX_GAP_HOURS = 3.0

_TABLE_KEYS = {
    "path", "type", "interp", "spwmap", "gainfield", "refant", "calibrator", "source_ms", "solver",
    "solver_params", "snr_median", "flagged_fraction", "quality", "valid_start_mjd", "valid_end_mjd", "notes",
}
#: The set's time when a (version-1) row has no ``mid_mjd``.
_SET_TIME_SQL = "coalesce(mid_mjd, transit_mjd, (valid_start_mjd + valid_end_mjd) / 2)"


# --- results -------------------------------------------------------------------

@dataclass(frozen=True)
class CalTable:
    """One caltable to apply, with exactly the registered parameters.

    Attributes
    ----------
    path : str
        Caltable path.
    type : str
        Table type (``K``, ``B``, ``GP``...).
    interp : str
        applycal ``interp`` ("" = CASA's default).
    spwmap : list of int
        applycal ``spwmap`` (empty: identity).
    gainfield : str
        applycal ``gainfield`` ("" = all).
    set_name : str
        The set the table belongs to.
    set_mjd : float
        That set's time, MJD (UTC).
    calibrator : str or None
        Calibrator the table was solved on.
    refant : str or None
        Reference antenna(s) of the solve, CASA syntax.
    apply_order : int
        Position in its own set.
    """

    path: str
    type: str
    interp: str
    spwmap: list[int]
    gainfield: str
    set_name: str
    set_mjd: float
    calibrator: str | None
    refant: str | None
    apply_order: int


@dataclass(frozen=True)
class GSet:
    """A G set chosen for a time.

    Attributes
    ----------
    set_name : str
    mid_mjd : float
        The set's time, MJD (UTC).
    gap_hours : float
        ``mid_mjd`` minus the target time, hours (negative: before it).
    weight : float
        Its weight in a linear interpolation at the target time (1 for a single set).
    calibrator : str or None
    """

    set_name: str
    mid_mjd: float
    gap_hours: float
    weight: float
    calibrator: str | None


@dataclass(frozen=True)
class ApplyList:
    """What to apply at one time (:func:`active_applylist`).

    Attributes
    ----------
    mjd : float
        The target time, MJD (UTC).
    tables : list of CalTable
        In apply order: the K/B set's K/B tables, then the G tables of each G set
        in time order (when ``interpolate_g``, the earlier set's, then the later's).
    kb_set : str
        The set the K/B tables come from.
    g_sets : list of GSet
        One or two G sets, in time order.
    interpolate_g : bool
        Two G sets bracket the time: merge each G type's two tables (pair them by
        ``type``) into one and apply it with linear interpolation in time.
    warnings : list of str
        Things to record with the group (a single nearby G set, a mismatch...).
    """

    mjd: float
    tables: list[CalTable]
    kb_set: str
    g_sets: list[GSet]
    interpolate_g: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def set_names(self) -> list[str]:
        """Every set used, K/B set first, without repeats."""
        out = []
        for t in self.tables:
            if t.set_name not in out:
                out.append(t.set_name)
        return out

    def applycal_kwargs(self) -> dict:
        """``gaintable``, ``interp``, ``spwmap``, ``gainfield`` lists for CASA ``applycal``.

        Raises
        ------
        ValueError
            When ``interpolate_g``: the two sets' G tables must be merged first.
        """
        if self.interpolate_g:
            raise ValueError("two G sets bracket this time: merge each G type's tables before applycal")
        return {"gaintable": [t.path for t in self.tables], "interp": [t.interp for t in self.tables],
                "spwmap": [list(t.spwmap) for t in self.tables], "gainfield": [t.gainfield for t in self.tables]}


@dataclass(frozen=True)
class _Set:
    name: str
    mid_mjd: float
    registered_at: dt.datetime | None
    calibrator: str | None
    refant: str | None
    kb_set: str | None
    kb_tables: tuple[CalTable, ...]
    g_tables: tuple[CalTable, ...]

    @property
    def order_key(self):
        """Newest last: by time, then registration, then name."""
        reg = self.registered_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        return (self.mid_mjd, reg, self.name)


# --- registering -----------------------------------------------------------------

def _json(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _finite(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CatalogError(f"{name} must be a number (MJD days UTC), got {value!r}") from None
    if not math.isfinite(out):
        raise CatalogError(f"{name} must be finite, got {value!r}")
    return out


def register_set(catalog_dir: str | os.PathLike, *, set_name: str, tables: Sequence[Mapping], status: str,
                 obs_date: str, mid_mjd: float, reason: str | None = None, calibrator: str | None = None,
                 transit_mjd: float | None = None, refant: str | None = None, refant_ranking=None,
                 source_ms: str | os.PathLike | None = None, kb_set: str | None = None,
                 kb_validity_hours: float = DEFAULT_KB_VALIDITY_HOURS,
                 g_max_gap_hours: float = DEFAULT_G_MAX_GAP_HOURS) -> None:
    """Record a caltable set, its tables in apply order, as active (passed QA) or rejected.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    set_name : str
        Unique name of this solve (e.g. ``<ms stem>_<mid_mjd:.6f>``).
    tables : list of dict
        In apply order. Keys: ``path`` and ``type`` (required; type one of
        ``catalog.schema.CAL_TABLE_TYPES``), ``interp`` (default ""),
        ``spwmap`` (list of int, default identity), ``gainfield`` (default ""),
        ``refant``, ``calibrator``, ``source_ms`` (default: the set's),
        ``solver``, ``solver_params`` (dict, stored as JSON), ``snr_median``,
        ``flagged_fraction`` (0..1), ``quality`` (dict, JSON), ``notes``,
        ``valid_start_mjd``/``valid_end_mjd`` (MJD UTC; default below).
    status : {"active", "rejected"}
        The QA gate's verdict, decided by the caller.
    obs_date : str
        ``YYYY-MM-DD`` of the source MS (the partition of every row of the set).
    mid_mjd : float
        The set's time: mid time of the source MS, MJD (UTC).
    reason : str, optional
        Why the set was rejected (required when ``status="rejected"``).
    calibrator, transit_mjd, refant, source_ms : optional
        Set-wide defaults of the per-table values; ``transit_mjd`` in MJD (UTC).
    refant_ranking : list or dict, optional
        Reference antenna ranking (best first), stored as JSON.
    kb_set : str, optional
        For G tables: the set whose K/B tables they were solved with. Default:
        this set when it has K/B tables, otherwise unknown.
    kb_validity_hours, g_max_gap_hours : float
        The settings in force, hours: only used to record each row's validity
        window (K/B: ``mid_mjd`` +- ``kb_validity_hours``; G: +- ``g_max_gap_hours``).

    Raises
    ------
    CatalogError
        Invalid arguments, or ``set_name`` already registered with another status
        or other tables (re-registering the same is a no-op).
    SchemaError
        A value does not fit the schema (nothing is written).
    """
    if not isinstance(set_name, str) or not set_name.strip():
        raise CatalogError("register_set: set_name must be a non-empty string")
    if status not in REGISTER_STATUSES:
        raise CatalogError(f"register_set {set_name}: status must be 'active' (passed QA) or 'rejected', "
                           f"got {status!r}")
    if status == "rejected" and not reason:
        raise CatalogError(f"register_set {set_name}: a rejected set needs its reason")
    if not tables:
        raise CatalogError(f"register_set {set_name}: no tables")
    mid = _finite("mid_mjd", mid_mjd)
    paths = []
    for i, t in enumerate(tables):
        unknown = set(t) - _TABLE_KEYS
        if unknown:
            raise CatalogError(f"register_set {set_name}: table {i} has unknown keys {sorted(unknown)}; "
                               f"known: {sorted(_TABLE_KEYS)}")
        if not t.get("path") or not t.get("type"):
            raise CatalogError(f"register_set {set_name}: table {i} needs 'path' and 'type'")
        paths.append(os.fspath(t["path"]))
    if len(set(paths)) != len(paths):
        raise CatalogError(f"register_set {set_name}: a table path appears twice: {paths}")
    has_kb = any(t["type"] in KB_TYPES for t in tables)
    if kb_set is None and has_kb:
        kb_set = set_name

    existing = _rows(catalog_dir, "set_name = ?", [set_name])
    if existing:
        same = ({r["table_path"] for r in existing} == set(paths)
                and {r["status"] for r in existing} == {status})
        if same:
            return
        states = sorted({r["status"] for r in existing})
        raise CatalogError(f"caltable set {set_name!r} is already registered ({', '.join(states)}, "
                           f"{len(existing)} tables); register a new solve under a new set name")

    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i, (t, path) in enumerate(zip(tables, paths)):
        half = (kb_validity_hours if t["type"] in KB_TYPES else g_max_gap_hours) / 24.0
        ms = t.get("source_ms", source_ms)
        rows.append({
            "set_name": set_name, "table_path": path, "table_type": t["type"], "apply_order": i,
            "valid_start_mjd": t.get("valid_start_mjd", mid - half),
            "valid_end_mjd": t.get("valid_end_mjd", mid + half),
            "status": status, "interp": t.get("interp", ""), "spwmap": list(t.get("spwmap") or []),
            "gainfield": t.get("gainfield", ""), "refant": t.get("refant", refant),
            "calibrator": t.get("calibrator", calibrator), "transit_mjd": transit_mjd,
            "source_ms": os.fspath(ms) if ms is not None else None, "solver": t.get("solver"),
            "solver_params": _json(t.get("solver_params")), "snr_median": t.get("snr_median"),
            "flagged_fraction": t.get("flagged_fraction"), "quality": _json(t.get("quality")),
            "notes": t.get("notes"), "mid_mjd": mid, "registered_at": now, "qa_passed": status == "active",
            "reason": reason, "refant_ranking": _json(refant_ranking), "kb_set": kb_set, "obs_date": obs_date,
        })
    store.append(catalog_dir, TABLE, rows)  # one file: the whole set or nothing


def retire_set(catalog_dir: str | os.PathLike, set_name: str, *, reason: str) -> int:
    """Withdraw a set: a new ``retired`` row per table, so lookups skip it.

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    set_name : str
        The set.
    reason : str
        Why (recorded in ``reason``).

    Returns
    -------
    int
        Tables retired now (0 when the set was already retired).

    Raises
    ------
    CatalogError
        No such set.
    """
    if not reason:
        raise CatalogError(f"retire_set {set_name}: give a reason")
    rows = _rows(catalog_dir, "set_name = ?", [set_name])
    if not rows:
        known = [s["set_name"] for s in list_sets(catalog_dir)[:10]]
        raise CatalogError(f"no caltable set named {set_name!r} in {catalog_dir}"
                           + (f"; latest sets: {', '.join(known)}" if known else "; the registry is empty"))
    todo = [r for r in rows if r["status"] not in RETIRED]
    new = []
    for r in todo:
        row = {k: v for k, v in r.items() if k not in ("event_id", "recorded_at", "schema_version", "code_version", "set_mjd")}
        row["status"] = "retired"
        row["reason"] = reason
        new.append(row)
    if new:
        store.append(catalog_dir, TABLE, new)
    return len(new)


# --- reading -----------------------------------------------------------------------

def _rows(catalog_dir, where: str, params: list) -> list[dict]:
    """Current rows (latest per key) of ``cal_registry`` matching ``where``, with ``set_mjd``."""
    sql = (f"SELECT *, {_SET_TIME_SQL} AS set_mjd FROM {TABLE} WHERE {where} "
           "ORDER BY set_name, apply_order")
    return cq.query(catalog_dir, sql, params).to_pylist()


def _sets(rows: list[dict]) -> list[_Set]:
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["set_name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        rs.sort(key=lambda r: (r["apply_order"], r["table_path"]))
        first = rs[0]
        tables = [CalTable(path=r["table_path"], type=r["table_type"], interp=r["interp"] or "",
                           spwmap=list(r["spwmap"] or []), gainfield=r["gainfield"] or "", set_name=name,
                           set_mjd=r["set_mjd"], calibrator=r["calibrator"], refant=r["refant"],
                           apply_order=r["apply_order"]) for r in rs]
        kb = tuple(t for t in tables if t.type in KB_TYPES)
        out.append(_Set(name=name, mid_mjd=first["set_mjd"], registered_at=first.get("registered_at"),
                        calibrator=first["calibrator"], refant=first["refant"],
                        kb_set=first.get("kb_set") or (name if kb else None), kb_tables=kb,
                        g_tables=tuple(t for t in tables if t.type in G_TYPES)))
    return out


def _active_sets(catalog_dir, lo: float | None = None, hi: float | None = None) -> list[_Set]:
    where, params = "status = 'active'", []
    if lo is not None:
        where += f" AND {_SET_TIME_SQL} BETWEEN ? AND ?"
        params = [lo, hi]
    return _sets(_rows(catalog_dir, where, params))


def _describe(s: _Set | None, mjd: float) -> dict | None:
    if s is None:
        return None
    return {"set_name": s.name, "mid_mjd": s.mid_mjd, "gap_hours": (s.mid_mjd - mjd) * 24.0,
            "calibrator": s.calibrator}


def _text(d: dict | None, side: str) -> str:
    if d is None:
        return f"{side}: none"
    return (f"{side}: {d['set_name']} at MJD {d['mid_mjd']:.5f} ({_iso(d['mid_mjd'])}, "
            f"{abs(d['gap_hours']):.2f} h {side}, calibrator {d['calibrator'] or '?'})")


def _iso(mjd: float) -> str:
    t = dt.datetime(1858, 11, 17, tzinfo=dt.timezone.utc) + dt.timedelta(days=mjd)
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _nearest(sets: list[_Set], mjd: float) -> tuple[_Set | None, _Set | None]:
    """The newest set at or before ``mjd`` and the nearest after it (the newest of equals)."""
    before = [s for s in sets if s.mid_mjd <= mjd]
    after = [s for s in sets if s.mid_mjd > mjd]
    b = max(before, key=lambda s: s.order_key) if before else None
    a = min(after, key=lambda s: (s.mid_mjd, -_ts(s), s.name)) if after else None
    return b, a


def _ts(s: _Set) -> float:
    return s.registered_at.timestamp() if s.registered_at else 0.0


def _incompatible(a: _Set, b: _Set) -> str | None:
    if (a.refant or "") != (b.refant or ""):
        return f"their reference antennas differ ({a.refant} vs {b.refant})"
    if [t.type for t in a.g_tables] != [t.type for t in b.g_tables]:
        return (f"their G tables differ ({'/'.join(t.type for t in a.g_tables)} vs "
                f"{'/'.join(t.type for t in b.g_tables)})")
    return None


def _choose_g(sets: list[_Set], mjd: float, gap: float) -> tuple[list[_Set], bool, list[str]]:
    """(G sets in time order, interpolate?, warnings); [] when none qualifies."""
    g = [s for s in sets if s.g_tables]
    at = [s for s in g if abs(s.mid_mjd - mjd) <= SAME_TIME_DAYS]
    if at:
        return [max(at, key=lambda s: (_ts(s), s.name))], False, []
    before, after = _nearest(g, mjd)
    why_not = None
    if before is not None and after is not None:
        if after.mid_mjd - before.mid_mjd <= 2 * gap:
            why_not = _incompatible(before, after)
            if why_not is None:
                return [before, after], True, []
        else:
            why_not = f"they are {(after.mid_mjd - before.mid_mjd) * 24:.2f} h apart (more than 2 x {gap * 24:g} h)"
    near = [s for s in (before, after) if s is not None and abs(s.mid_mjd - mjd) <= gap]
    if not near:
        return [], False, []
    best = min(near, key=lambda s: abs(s.mid_mjd - mjd))
    side = "before" if best.mid_mjd < mjd else "after"
    other = "after" if side == "before" else "before"
    text = (f"gains from the single G set {best.name} ({best.calibrator or '?'}, "
            f"{abs(best.mid_mjd - mjd) * 24:.2f} h {side} MJD {mjd:.5f}), not interpolated: ")
    if why_not:
        text += f"the sets before and after cannot be interpolated: {why_not}"
    else:
        text += f"no G set {other} it within {2 * gap * 24:g} h of the one {side}"
    return [best], False, [text]


def _choose_kb(sets: list[_Set], mjd: float, max_age: float, g_sets: list[_Set]) -> tuple[_Set | None, list[str]]:
    kb = [s for s in sets if s.kb_tables and abs(s.mid_mjd - mjd) <= max_age]
    warnings = []
    wanted = {s.kb_set for s in g_sets}
    if len(wanted) == 1 and None not in wanted:
        [name] = wanted
        match = [s for s in kb if s.name == name]
        if match:
            return match[0], warnings
    upto = [s for s in kb if s.mid_mjd <= mjd + SAME_TIME_DAYS]
    if upto:
        chosen = max(upto, key=lambda s: s.order_key)
    elif kb:
        chosen = min(kb, key=lambda s: (s.mid_mjd, -_ts(s), s.name))
    else:
        return None, warnings
    solved_with = sorted(n for n in wanted if n)
    if solved_with and chosen.name not in solved_with:
        warnings.append(f"K/B from {chosen.name}, but the gains were solved with the K/B of "
                        f"{', '.join(solved_with)} (not active within {max_age * 24:g} h)")
    return chosen, warnings


def active_kb_set(catalog_dir: str | os.PathLike, mjd: float, *,
                  kb_max_age_hours: float = DEFAULT_KB_VALIDITY_HOURS) -> tuple[str, str | None, list[CalTable]] | None:
    """The K/B set in force at ``mjd`` (same choice as :func:`active_applylist`), or None.

    A calibrator group too faint for its own delay and bandpass solves only gains,
    against these tables, so that gain sets from different transits share one
    K/B and can be interpolated.

    Returns
    -------
    tuple or None
        ``(set_name, refant, K/B tables in apply order)``.
    """
    mjd = _finite("mjd", mjd)
    age = kb_max_age_hours / 24.0
    sets = _active_sets(catalog_dir, mjd - age - SAME_TIME_DAYS, mjd + age + SAME_TIME_DAYS)
    chosen, _ = _choose_kb(sets, mjd, age, [])
    return (chosen.name, chosen.refant, list(chosen.kb_tables)) if chosen else None


def active_applylist(catalog_dir: str | os.PathLike, mjd: float, *,
                     kb_max_age_hours: float = DEFAULT_KB_VALIDITY_HOURS,
                     g_max_gap_hours: float = DEFAULT_G_MAX_GAP_HOURS) -> ApplyList:
    """The caltables to apply at ``mjd`` (rules: this module's docstring).

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root.
    mjd : float
        Target time (a group's mid time), MJD (UTC).
    kb_max_age_hours : float
        K/B sets farther than this from ``mjd`` are not used, hours (setting
        ``cal_kb_validity_hours``).
    g_max_gap_hours : float
        Nearest single G set allowed within this, hours; bracketing sets at most
        twice this apart (setting ``cal_g_max_gap_hours``).

    Returns
    -------
    ApplyList

    Raises
    ------
    NoCalibrationError
        No active K/B set within ``kb_max_age_hours``, or no G set as above. The
        message names the nearest active sets of the missing kind before and
        after ``mjd`` with their times and gaps; the group should wait for the
        next calibrator transit.
    """
    mjd = _finite("mjd", mjd)
    kb_age, gap = kb_max_age_hours / 24.0, g_max_gap_hours / 24.0
    span = max(kb_age, 2 * gap) + SAME_TIME_DAYS
    sets = _active_sets(catalog_dir, mjd - span, mjd + span)
    g_sets, interpolate, warnings = _choose_g(sets, mjd, gap)
    kb_set, kb_warnings = _choose_kb(sets, mjd, kb_age, g_sets)
    missing = [kind for kind, ok in (("K/B", kb_set is not None), ("G", bool(g_sets))) if not ok]
    if missing:
        raise _no_calibration(catalog_dir, mjd, missing, kb_max_age_hours, g_max_gap_hours)
    warnings = warnings + kb_warnings
    refants = {s.refant for s in g_sets} - {kb_set.refant}
    if refants:
        warnings.append(f"reference antenna of the K/B set {kb_set.name} ({kb_set.refant}) differs from the "
                        f"G set's ({', '.join(sorted(str(r) for r in refants))})")
    if interpolate:
        b, a = g_sets
        span_days = a.mid_mjd - b.mid_mjd
        weights = [(a.mid_mjd - mjd) / span_days, (mjd - b.mid_mjd) / span_days]
    else:
        weights = [1.0]
    chosen = [GSet(set_name=s.name, mid_mjd=s.mid_mjd, gap_hours=(s.mid_mjd - mjd) * 24.0, weight=w,
                   calibrator=s.calibrator) for s, w in zip(g_sets, weights)]
    tables = list(kb_set.kb_tables) + [t for s in g_sets for t in s.g_tables]
    return ApplyList(mjd=mjd, tables=tables, kb_set=kb_set.name, g_sets=chosen, interpolate_g=interpolate,
                     warnings=warnings)


def _no_calibration(catalog_dir, mjd: float, missing: list[str], kb_hours: float,
                    g_hours: float) -> NoCalibrationError:
    every = _active_sets(catalog_dir)
    parts, near = [], {}
    for kind in missing:
        pool = [s for s in every if (s.kb_tables if kind == "K/B" else s.g_tables)]
        before, after = _nearest(pool, mjd)
        near[kind] = (_describe(before, mjd), _describe(after, mjd))
        limit = (f"within {kb_hours:g} h" if kind == "K/B"
                 else f"bracketing it (at most {2 * g_hours:g} h apart) or within {g_hours:g} h")
        parts.append(f"no active {kind} caltable set {limit}; nearest {_text(near[kind][0], 'before')}; "
                     f"nearest {_text(near[kind][1], 'after')}")
    if not every:
        detail = f"no active caltable set is registered in {catalog_dir}"
    else:
        detail = "; ".join(parts)
    message = (f"no calibration for MJD {mjd:.5f} ({_iso(mjd)}): {detail}. The group waits for the next "
               "calibrator transit (a new registered set wakes it); see `contimg caltables --at`.")
    kind = missing[-1] if len(missing) == 1 else " and ".join(missing)
    before, after = near.get("G", near.get("K/B", (None, None)))
    return NoCalibrationError(message, mjd=mjd, missing=kind, before=before, after=after)


def list_sets(catalog_dir: str | os.PathLike, *, at_mjd: float | None = None,
              status: str | None = None) -> list[dict]:
    """Every set's current state, one dict per set (for ``contimg caltables``).

    Parameters
    ----------
    catalog_dir : path-like
        Catalog root (it may not exist: then ``[]``).
    at_mjd : float, optional
        Add ``gap_hours`` (set time minus this, hours) and sort by its size.
    status : str, optional
        Only sets with this status (``retired`` includes ``deprecated``).

    Returns
    -------
    list of dict
        Keys ``set_name``, ``status``, ``mid_mjd`` (MJD UTC), ``obs_date``,
        ``calibrator``, ``refant``, ``types`` (apply order), ``n_tables``,
        ``qa_passed``, ``reason``, ``kb_set``, ``flagged_fraction_max``,
        ``snr_median_min``, ``registered_at``, ``source_ms``; newest first
        (or nearest first with ``at_mjd``).
    """
    where, params = "TRUE", []
    if status is not None:  # 'retired' includes version 1's 'deprecated'
        wanted = sorted(RETIRED) if status in RETIRED else [status]
        where, params = f"status IN ({', '.join('?' * len(wanted))})", wanted
    rows = _rows(catalog_dir, where, params)
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["set_name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        rs.sort(key=lambda r: r["apply_order"])
        statuses = sorted({r["status"] for r in rs})
        flagged = [r["flagged_fraction"] for r in rs if r["flagged_fraction"] is not None]
        snr = [r["snr_median"] for r in rs if r["snr_median"] is not None]
        first = rs[0]
        item = {
            "set_name": name, "status": "/".join(statuses), "mid_mjd": first["set_mjd"],
            "obs_date": first["obs_date"], "calibrator": first["calibrator"], "refant": first["refant"],
            "types": [r["table_type"] for r in rs], "n_tables": len(rs), "qa_passed": first.get("qa_passed"),
            "reason": next((r["reason"] for r in rs if r.get("reason")), None), "kb_set": first.get("kb_set"),
            "flagged_fraction_max": max(flagged) if flagged else None,
            "snr_median_min": min(snr) if snr else None, "registered_at": first.get("registered_at"),
            "source_ms": first["source_ms"],
        }
        if at_mjd is not None and item["mid_mjd"] is not None:
            item["gap_hours"] = (item["mid_mjd"] - at_mjd) * 24.0
        out.append(item)
    if at_mjd is not None:
        out.sort(key=lambda d: (abs(d.get("gap_hours", math.inf)), d["set_name"]))
    else:
        out.sort(key=lambda d: (d["mid_mjd"] if d["mid_mjd"] is not None else -math.inf, d["set_name"]),
                 reverse=True)
    return out
