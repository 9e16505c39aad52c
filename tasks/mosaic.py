"""Mosaics as the pipeline makes them: a window's groups from the catalog, the mosaic, its sources, its row.

:func:`window_inputs` reads the window's groups from the catalog: the imaged ones (latest
``ms_index`` stage ``imaged`` or ``archived``) with their ``image`` and ``pb`` products and
noise (``images``), the others with why they are not used, and the slots of the cadence no
group fills. :func:`make_mosaic` (``contimg mosaic`` and the ``mosaic`` flow) combines the
imaged groups (:func:`contimg.mosaic.linear.linear_mosaic`), finds the mosaic's sources with
PyBDSF, its noise map as the rms map (:mod:`contimg.mosaic.sources`; ``-sources.parquet``, the default reference for forced photometry) and records a
``mosaics`` row. Idempotent: a mosaic of the same groups already recorded, with its image on
disk, is not made again (unless ``force``); every file is written under a temporary name and
renamed, so a run killed half-way leaves no half file and the next run makes it whole.

A mosaic written elsewhere (``contimg mosaic --out DIR`` with a directory other than
naming's) is an operator's ad-hoc product: made, with its sources, but not recorded (no
``mosaics``, ``sources`` or ``photometry`` rows) and without the window's lease, so the
hourly sweep and the event still find the hour due and make the pipeline's mosaic.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import query as catalog_query
from catalog import store
from contimg import lease as leases
from contimg import naming
from contimg.config import Settings
from contimg.errors import ContimgError, InvalidInputError
from contimg.mosaic import windows
from contimg.mosaic.linear import GroupImage, linear_mosaic
from tasks.photometry import photometer_mosaic, record_sources

log = logging.getLogger(__name__)

#: Latest ``ms_index`` stages whose image a mosaic uses.
USED_STAGES = ("imaged", "archived")
#: Latest ``ms_index`` stages after which a group will not be imaged without an operator.
FINAL_STAGES = ("failed", "uncalibrated")
#: Ingest states (``groups``) of a group that never became an MS.
NEVER_CONVERTED = ("incomplete", "failed", "quarantined")


class MosaicHeldError(ContimgError):
    """Another run holds the window's lease (it is making the same mosaic now)."""


@dataclass
class WindowInputs:
    """A window's groups: what a mosaic can use, what it cannot (and why), what may still come."""

    start: datetime
    end: datetime
    used: list[GroupImage] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    empty_slots: list[str] = field(default_factory=list)

    @property
    def n_expected(self) -> int:
        """Known groups plus the cadence's empty slots."""
        return len(self.known) + len(self.empty_slots)


def _rows(settings: Settings, sql: str, params: list) -> list[dict]:
    try:
        return catalog_query.query(settings.catalog_dir, sql, params).to_pylist()
    except Exception as exc:  # noqa: BLE001 - a table with no file yet has nothing to say
        log.debug("catalog query failed (%s): %s", exc, sql)
        return []


def _existing(path: str | None, archived: dict[str, str]) -> Path | None:
    """The product where it is, or its archived copy, or None."""
    for candidate in (path, archived.get(path or "")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def window_inputs(settings: Settings, start: datetime, end: datetime) -> WindowInputs:
    """The groups of ``[start, end)`` as the catalog knows them (see :class:`WindowInputs`)."""
    lo, hi = windows.window_ids(start, end)
    out = WindowInputs(start, end)
    ms_rows = {r["group_id"]: r for r in _rows(settings, "SELECT group_id, stage, error, image_name FROM ms_index "
                                                         "WHERE group_id >= ? AND group_id < ? ORDER BY group_id",
                                                [lo, hi])}
    ingest = {r["group_id"]: r for r in _rows(settings, "SELECT group_id, state, reason FROM groups "
                                                        "WHERE group_id >= ? AND group_id < ?", [lo, hi])}
    images = {}
    for r in _rows(settings, "SELECT group_id, type, path, noise_jy FROM images WHERE group_id >= ? AND group_id < ? "
                             "AND type IN ('image', 'pb')", [lo, hi]):
        images.setdefault(r["group_id"], {})[r["type"]] = r
    archived = {r["source_path"]: r["archive_path"] for r in _rows(
        settings, "SELECT source_path, archive_path FROM archived WHERE group_id >= ? AND group_id < ? "
                  "AND status <> 'failed'", [lo, hi])}
    out.known = sorted(set(ms_rows) | set(ingest))
    for group_id in out.known:
        ms, state = ms_rows.get(group_id), ingest.get(group_id)
        if ms is None:
            if state and state["state"] in NEVER_CONVERTED:
                out.missing.append((group_id, f"not converted: {state['state']}"
                                              + (f" ({state['reason']})" if state.get("reason") else "")))
            else:
                out.pending.append(group_id)
                out.missing.append((group_id, f"not converted yet ({state['state'] if state else 'unknown'})"))
            continue
        stage = ms["stage"]
        if stage in USED_STAGES:
            products = images.get(group_id, {})
            image = _existing(products.get("image", {}).get("path"), archived)
            pb = _existing(products.get("pb", {}).get("path"), archived)
            if image is None or pb is None:
                out.missing.append((group_id, f"{stage}, but its image or pb file is not on disk"))
                continue
            out.used.append(GroupImage(group_id, image, pb, products["image"].get("noise_jy")))
        elif stage in FINAL_STAGES:
            out.missing.append((group_id, f"{stage}" + (f": {ms['error']}" if ms.get("error") else "")))
        else:
            out.pending.append(group_id)
            reason = "waiting for calibration" if stage == "waiting_for_cal" else f"not imaged yet ({stage})"
            out.missing.append((group_id, reason))
    out.empty_slots = windows.empty_slots(out.known, start, end)
    out.missing.extend((slot, "no group recorded in this slot of the cadence") for slot in out.empty_slots)
    out.missing.sort()
    return out


def window_closed(settings: Settings, inputs: WindowInputs, *, now: datetime | None = None) -> bool:
    """No group of the window can still change: none pending, and the window is over (every slot of the
    cadence filled, or a later group recorded, or ``mosaic_settle_s`` past its end)."""
    if inputs.pending or not inputs.known:
        return False
    if not inputs.empty_slots:
        return True
    now = now or windows.utc_now()
    if now >= inputs.end + timedelta(seconds=settings.mosaic_settle_s):
        return True
    _, hi = windows.window_ids(inputs.start, inputs.end)
    later = _rows(settings, "SELECT group_id FROM groups WHERE group_id >= ? LIMIT 1", [hi]) or \
        _rows(settings, "SELECT group_id FROM ms_index WHERE group_id >= ? LIMIT 1", [hi])
    return bool(later)


def covering_mosaics(settings: Settings, start: datetime, end: datetime) -> list[dict]:
    """The recorded mosaics whose window overlaps ``[start, end)``, most groups first, then the latest."""
    return _rows(settings, "SELECT * FROM mosaics WHERE start_mjd < ? AND end_mjd > ? "
                           "ORDER BY len(group_ids) DESC, recorded_at DESC",
                 [windows.to_mjd(end), windows.to_mjd(start)])


def is_pipeline_prefix(settings: Settings, mosaic_id: str, prefix) -> bool:
    """True when ``prefix`` is naming's prefix of the mosaic: the product the catalog records.

    Anything else (``contimg mosaic --out DIR`` into a scratch directory) is ad hoc and must not be
    recorded, or the pipeline would take it for the hour's mosaic and never make its own.
    """
    return Path(prefix).resolve() == naming.mosaic_prefix(settings.products_dir, mosaic_id).resolve()


def is_pipeline_row(settings: Settings, row: dict) -> bool:
    """True when a ``mosaics`` row names naming's image of its mosaic, so it stands for the window.

    A catalog may hold rows of ad-hoc mosaics recorded before those were left out of it: they do not
    count as the hour's mosaic, and the pipeline makes its own.
    """
    image = naming.mosaic_product_path(naming.mosaic_prefix(settings.products_dir, row["mosaic_id"]), "image")
    return bool(row.get("image_path")) and Path(row["image_path"]).resolve() == image.resolve()


def recorded_mosaic(settings: Settings, mosaic_id: str) -> dict | None:
    """The latest ``mosaics`` row of a mosaic id, or None."""
    rows = _rows(settings, "SELECT * FROM mosaics WHERE mosaic_id = ?", [mosaic_id])
    return rows[0] if rows else None


def make_mosaic(settings: Settings, start: datetime, end: datetime, *, out_dir=None, force: bool = False,
                find_sources: bool | None = None, inputs: WindowInputs | None = None) -> dict:
    """Mosaic the imaged groups of ``[start, end)``, find its sources and record it.

    Parameters
    ----------
    settings : Settings
    start, end : datetime
        The window (naive UTC): groups whose start is in ``[start, end)``.
    out_dir : path-like, optional
        Products here (``<out_dir>/<mosaic id>-image.fits``...) instead of ``naming.mosaic_prefix``.
        Unless it is that directory, the mosaic is ad hoc: made (sources too) but not recorded (no
        ``mosaics``, ``sources`` or ``photometry`` rows) and made without the window's lease.
    force : bool
        Make it again even if the same groups' mosaic is recorded.
    find_sources : bool, optional
        Default: the ``mosaic_find_sources`` setting.
    inputs : WindowInputs, optional
        Already read (:func:`window_inputs`).

    Returns
    -------
    dict
        The ``mosaics`` row (``skipped`` True when it was already made), plus ``pending`` and
        ``recorded`` (False for an ad-hoc mosaic: the row is not in the catalog).

    Raises
    ------
    InvalidInputError
        No imaged group in the window (the message lists what the catalog knows of it).
    MosaicHeldError
        Another run holds the window's lease (``naming.mosaic_lease_path``): it is making this mosaic now.
        Never for an ad-hoc mosaic.
    """
    if end <= start:
        raise InvalidInputError(f"the window ends ({end:%Y-%m-%dT%H:%M:%S}) before it starts "
                                f"({start:%Y-%m-%dT%H:%M:%S})")
    inputs = inputs or window_inputs(settings, start, end)
    lo, hi = windows.window_ids(start, end)
    if not inputs.used:
        known = "; ".join(f"{g}: {why}" for g, why in inputs.missing) or "the catalog has no group in it"
        raise InvalidInputError(f"no imaged group in [{lo}, {hi}): {known}")
    mid = naming.mosaic_id(lo, len(inputs.used))
    used_ids = [g.group_id for g in inputs.used]
    prefix = (Path(out_dir).resolve() / mid) if out_dir else naming.mosaic_prefix(settings.products_dir, mid)
    record = is_pipeline_prefix(settings, mid, prefix)
    # An ad-hoc run writes other files and no row: holding the lease would only make the pipeline's run of
    # the window give way to it (MosaicHeldError) and leave the hour unmosaicked until the next sweep.
    with _window_lease(settings, lo, mid) if record else contextlib.nullcontext():
        previous = recorded_mosaic(settings, mid)
        if (previous and not force and list(previous["group_ids"]) == used_ids and is_pipeline_row(settings, previous)
                and Path(previous["image_path"]).is_file() and out_dir is None):
            log.info("%s: already made from the same %d groups (%s)", mid, len(used_ids), previous["image_path"])
            return {**previous, "skipped": True, "pending": inputs.pending, "recorded": True}
        return _make(settings, inputs, mid, lo, start, end, prefix=prefix, record=record, find_sources=find_sources)


def _window_lease(settings: Settings, lo: str, mid: str) -> leases.Lease:
    """The window's lease, held: one run records a window's mosaic at a time (the event of the hour's last
    group and the hourly sweep may meet).

    Raises
    ------
    MosaicHeldError
        Another run holds it.
    """
    path = naming.mosaic_lease_path(settings.scratch_dir, lo)
    lease = leases.try_acquire(path, settings.lease_seconds, heartbeat_s=settings.lease_heartbeat_interval_s)
    if lease is None:
        holder = leases.read_lease(path)
        raise MosaicHeldError(f"{mid}: another run is making this window's mosaic "
                              f"({holder.describe() if holder else 'lease just released'})")
    return lease


def _mid_mjd(settings: Settings, group_ids: list[str]) -> float | None:
    """The mosaic's epoch: the mean of its groups' mid times (their start times where the catalog has no
    mid time), MJD (UTC)."""
    marks = ", ".join("?" for _ in group_ids)
    rows = _rows(settings, f"SELECT avg(mid_mjd) AS mjd FROM ms_index WHERE group_id IN ({marks})", list(group_ids))
    if rows and rows[0]["mjd"] is not None:
        return rows[0]["mjd"]
    return sum(windows.to_mjd(naming.parse_group_id(g)) for g in group_ids) / len(group_ids)


def _make(settings: Settings, inputs: WindowInputs, mid: str, lo: str, start: datetime, end: datetime, *,
          prefix: Path, record: bool, find_sources: bool | None) -> dict:
    """Make the mosaic at ``prefix``, find its sources; with ``record``, its ``mosaics``, ``sources`` and
    ``photometry`` rows."""
    from contimg.mosaic.sources import find_mosaic_sources

    used_ids = [g.group_id for g in inputs.used]
    paths = {k: naming.mosaic_product_path(prefix, k) for k in ("image", "weight", "noise", "png")}
    t0 = time.perf_counter()
    result = linear_mosaic(inputs.used, paths, pblimit=settings.imaging_pblimit, order=settings.mosaic_interpolation,
                           title=f"mosaic {mid}: {len(used_ids)} groups from {used_ids[0]}")
    mid_mjd = _mid_mjd(settings, used_ids)
    sources_path, n_sources = None, None
    if settings.mosaic_find_sources if find_sources is None else find_sources:
        sources_path = naming.mosaic_product_path(prefix, "sources")
        table = find_mosaic_sources(result.paths["image"], result.paths["noise"], out_parquet=sources_path)
        n_sources = table.num_rows
        # the mosaics' detections are forced photometry's default reference list: an ad-hoc one's are not
        if record:
            record_sources(settings, table, image_path=result.paths["image"], image_kind="mosaic", mosaic_id=mid,
                           mid_mjd=mid_mjd, obs_date=lo[:10])
    bmaj, bmin, bpa = result.beam_deg
    missing = inputs.missing
    row = {
        "mosaic_id": mid, "obs_date": lo[:10], "start_mjd": windows.to_mjd(start), "end_mjd": windows.to_mjd(end),
        "group_ids": used_ids, "n_expected": inputs.n_expected,
        "missing": [g for g, _ in missing], "missing_reason": [why for _, why in missing],
        "noise_center_jy": result.noise_center_jy, "noise_expected_jy": result.noise_expected_jy,
        "beam_major_arcsec": 3600 * bmaj, "beam_minor_arcsec": 3600 * bmin, "beam_pa_deg": bpa,
        "beam_major_spread_arcsec": 3600 * (result.beam_spread_deg["bmaj"][1] - result.beam_spread_deg["bmaj"][0]),
        "ra_center_deg": result.ra_center_deg, "dec_center_deg": result.dec_center_deg,
        "coverage_deg2": result.coverage_deg2, "imsize_x": result.shape[1], "imsize_y": result.shape[0],
        "cell_arcsec": 3600 * result.cell_deg,
        "image_path": str(result.paths["image"]), "weight_path": str(result.paths["weight"]),
        "noise_path": str(result.paths["noise"]), "png_path": str(result.paths.get("png") or ""),
        "sources_path": str(sources_path) if sources_path else None, "n_sources": n_sources,
        "tool": result.tool, "seconds": time.perf_counter() - t0,
        "status": "partial" if missing else "complete",
    }
    if not record:
        log.info("%s: ad-hoc mosaic %s not recorded", mid, result.paths["image"])
        return {**row, "skipped": False, "pending": inputs.pending, "recorded": False}
    store.append(settings.catalog_dir, "mosaics", [row])
    if settings.photometry:
        try:  # the mosaic is the product: its photometry failing is logged, never the mosaic's failure
            photometer_mosaic(settings, result.paths["image"], mosaic_id=mid, mid_mjd=mid_mjd,
                              noise_fits=result.paths["noise"])
        except Exception as err:  # noqa: BLE001
            log.warning("%s: forced photometry failed: %s: %s", mid, type(err).__name__, err)
    log.info("%s: %d groups, %d missing, noise %.3g (expected %.3g) Jy/beam, %s", mid, len(used_ids), len(missing),
             result.noise_center_jy, result.noise_expected_jy, result.paths["image"])
    return {**row, "skipped": False, "pending": inputs.pending, "recorded": True}


def hours_to_mosaic(settings: Settings, *, now: datetime | None = None) -> list[tuple[datetime, datetime]]:
    """Closed hourly windows of the last ``mosaic_lookback_hours`` with imaged groups whose mosaic of
    exactly those groups is not recorded."""
    now = now or windows.utc_now()
    first = (now - timedelta(hours=settings.mosaic_lookback_hours)).replace(minute=0, second=0, microsecond=0)
    lo = naming.group_id_from_datetime(first)
    hours = sorted({windows.hour_window(r["group_id"]) for r in _rows(
        settings, "SELECT group_id FROM ms_index WHERE group_id >= ? AND stage IN ('imaged', 'archived')", [lo])})
    out = []
    for start, end in hours:
        inputs = window_inputs(settings, start, end)
        if not inputs.used or not window_closed(settings, inputs, now=now):
            continue
        done = recorded_mosaic(settings, naming.mosaic_id(naming.group_id_from_datetime(start), len(inputs.used)))
        if done and list(done["group_ids"]) == [g.group_id for g in inputs.used] and is_pipeline_row(settings, done):
            continue
        out.append((start, end))
    return out



@task(name="mosaic", cache_policy=NO_CACHE, tags=["mosaic"])
def task_mosaic(settings: Settings, start: datetime, end: datetime, *, force: bool = False) -> dict:
    """Prefect task of :func:`make_mosaic`."""
    return make_mosaic(settings, start, end, force=force)
