"""The night report from the catalog: which rows, and where the page goes (issue 21).

:func:`night_rows` reads everything the page shows from the catalog (DuckDB on
the views, ``catalog.query``) for one observation date, the UTC date of the
groups (their ``obs_date``); :func:`write_night_report` hands them to
:func:`contimg.report.write_report`, by default into
``naming.report_dir(products_dir, DATE)``. The only files read besides the
catalog are the ones its rows name: each group's image PNG (for a small
thumbnail) and its source table's Parquet footer (the source count).

Used by ``contimg report DATE`` and by the nightly archive flow
(:func:`reports_after_archive`, which never fails the archive: a report that
cannot be written is logged).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from catalog import query as cq
from contimg import naming
from contimg.config import Settings
from contimg.report import Report, relative_href, write_report

log = logging.getLogger(__name__)

#: A stage of an MS or a state of a group that is a failure (shown under Failures with its reason).
FAILED_MS_STAGES = ("failed", "applycal_failed", "uncalibrated")
FAILED_GROUP_STATES = ("failed", "quarantined")
MJD_EPOCH = datetime(1858, 11, 17)


def _rows(catalog_dir, sql: str, params: list) -> list[dict]:
    return cq.query(catalog_dir, sql, params).to_pylist()


def _mjd_datetime(mjd: float) -> datetime:
    return MJD_EPOCH + timedelta(days=mjd)


def _existing(*paths) -> str | None:
    """The first of ``paths`` that exists (a product's place now: where it was made, or its archived copy)."""
    for path in paths:
        if path and Path(path).exists():
            return str(path)
    return None


def _n_sources(path: str | None) -> int | None:
    if not path:
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - an unreadable table costs its count only
        log.warning("source table %s unreadable: %s", path, exc)
        return None


def _sets(text: str | None) -> list[str]:
    return [s for s in (text or "").split(",") if s]


def night_rows(catalog_dir, date: str) -> dict:
    """Everything the night report of ``date`` shows, read from the catalog at ``catalog_dir``.

    Returns
    -------
    dict
        As :func:`contimg.report.html.render` takes it: ``date``, ``groups`` (every group of the date, from
        ``groups`` and ``ms_index``, in time order), ``calsets`` (the sets of the date and those its groups
        applied; self-calibration sets are shown with their group), ``failures`` (failed stage runs, failed
        or quarantined groups, MSs failed or uncalibrated, rejected sets), ``flag_limit`` (the flag gate's
        recorded threshold).
    """
    date = naming.parse_obs_date(date)
    ms = {r["group_id"]: r for r in _rows(catalog_dir, "SELECT * FROM ms_index WHERE obs_date = ?", [date])}
    ingest = {r["group_id"]: r for r in _rows(
        catalog_dir, "SELECT group_id, state, reason, recorded_at FROM groups WHERE obs_date = ?", [date])}
    images: dict[str, dict[str, dict]] = {}
    for r in _rows(catalog_dir, "SELECT * FROM images WHERE obs_date = ? AND type IN ('pbcor', 'png', 'sources') "
                                "ORDER BY recorded_at", [date]):
        images.setdefault(r["group_id"], {})[r["type"]] = r  # the latest of each type
    flags: dict[str, dict] = {}
    for r in _rows(catalog_dir, "SELECT group_id, stage, metric, value, passed, threshold FROM qa_metrics "
                                "WHERE obs_date = ? AND subject_type = 'ms' AND stage IN ('flag', 'calibrate') "
                                "AND metric IN ('flagged_fraction', 'delivered_flagged_fraction')", [date]):
        flags.setdefault(r["group_id"], {}).setdefault(r["stage"], {})[r["metric"]] = r
    limits = [r["threshold"] for f in flags.values() for s in f.values() for r in s.values()
              if r["threshold"] is not None]

    groups = []
    for group_id in sorted(set(ms) | set(ingest)):
        m, g, im = ms.get(group_id, {}), ingest.get(group_id, {}), images.get(group_id, {})
        pbcor, png, sources = im.get("pbcor", {}), im.get("png", {}), im.get("sources", {})
        report = flags.get(group_id, {})
        report = report.get("flag") or report.get("calibrate") or {}
        gated = report.get("delivered_flagged_fraction", {})
        applied = _sets(m.get("caltable_set"))
        selfcal = [s for s in _sets(pbcor.get("caltable_set")) if s not in applied]
        state = m.get("stage") or g.get("state")
        detail = m.get("error") if m.get("stage") else g.get("reason")
        groups.append({
            "group_id": group_id,
            "time": _mjd_datetime(m["mid_mjd"]) if m.get("mid_mjd") is not None else naming.parse_group_id(group_id),
            "state": state, "state_detail": detail if state not in ("imaged", "archived") else None,
            "is_calibrator": m.get("is_calibrator"), "calibrator": m.get("calibrator"),
            "caltable_set": ",".join(applied) or None, "selfcal_set": ",".join(selfcal) or None,
            "flagged_fraction": report.get("flagged_fraction", {}).get("value"),
            "delivered_flagged_fraction": gated.get("value"), "flag_passed": gated.get("passed"),
            **{k: pbcor.get(k) for k in ("noise_jy", "predicted_noise_jy", "beam_major_arcsec", "beam_minor_arcsec",
                                         "beam_pa_deg", "backend", "data_column", "dynamic_range")},
            "n_sources": _n_sources(_existing(sources.get("path"), sources.get("archived_path"))),
            "png": _existing(png.get("path"), png.get("archived_path")),
            "pbcor_fits": _existing(pbcor.get("path"), pbcor.get("archived_path")),
        })
    groups.sort(key=lambda g: (g["time"], g["group_id"]))
    calsets = _calsets(catalog_dir, date, groups)
    return {"date": date, "source": str(catalog_dir), "groups": groups, "calsets": calsets,
            "failures": _failures(catalog_dir, date, {g["group_id"]: g["state"] for g in groups}, calsets),
            "flag_limit": max(limits) if limits else None,
            "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _calsets(catalog_dir, date: str, groups: list[dict]) -> list[dict]:
    used: dict[str, int] = {}
    for g in groups:
        for name in _sets(g["caltable_set"]):
            used[name] = used.get(name, 0) + 1
    rows = _rows(catalog_dir, "SELECT * FROM cal_registry WHERE table_type <> 'SC' AND (obs_date = ? OR "
                              "list_contains(?, set_name)) ORDER BY mid_mjd, set_name, apply_order",
                 [date, sorted(used) or [""]])
    sets: dict[str, dict] = {}
    for r in rows:
        s = sets.setdefault(r["set_name"], {
            "set_name": r["set_name"], "status": r["status"], "reason": r["reason"], "calibrator": r["calibrator"],
            "refant": r["refant"], "time": _mjd_datetime(r["mid_mjd"]) if r["mid_mjd"] is not None else None,
            "source_ms": r["source_ms"], "registered_at": r["registered_at"] or r["recorded_at"],
            "qa_passed": r["qa_passed"], "groups_applied": used.get(r["set_name"], 0),
            "note": None if r["obs_date"] == date else f"registered for {r['obs_date']}", "tables": []})
        s["tables"].append({"type": r["table_type"], "snr_median": r["snr_median"],
                            "flagged_fraction": r["flagged_fraction"], "path": r["table_path"]})
        if r["reason"] and not s["reason"]:
            s["reason"] = r["reason"]
    return list(sets.values())


def _failures(catalog_dir, date: str, states: dict[str, str], calsets: list[dict]) -> list[dict]:
    out = [{"when": r["started_at"], "group_id": r["group_id"], "what": f"stage {r['stage']} failed",
            "error": r["error"], "now": states.get(r["group_id"])}
           for r in _rows(catalog_dir, "SELECT group_id, stage, started_at, error FROM stage_runs_all "
                                       "WHERE obs_date = ? AND status = 'failed'", [date])]
    out += [{"when": r["recorded_at"], "group_id": r["group_id"], "what": f"group {r['state']}",
             "error": r["reason"], "now": states.get(r["group_id"])}
            for r in _rows(catalog_dir, "SELECT group_id, state, reason, recorded_at FROM groups WHERE obs_date = ? "
                                        "AND list_contains(?, state)", [date, list(FAILED_GROUP_STATES)])]
    out += [{"when": r["recorded_at"], "group_id": r["group_id"], "what": f"MS {r['stage']}", "error": r["error"],
             "now": r["stage"]}
            for r in _rows(catalog_dir, "SELECT group_id, stage, error, recorded_at FROM ms_index WHERE obs_date = ? "
                                        "AND list_contains(?, stage)", [date, list(FAILED_MS_STAGES)])]
    for s in calsets:
        if s["status"] == "rejected" and not s["note"]:
            group_id = naming.group_id_from_stem(Path(s["source_ms"] or "").name[:17]) or "-"
            out.append({"when": s["registered_at"], "group_id": group_id,
                        "what": f"calibration set {s['set_name']} rejected",
                        "error": s["reason"], "now": "rejected"})
    return sorted(out, key=lambda f: (f["group_id"], _sortable(f["when"])))


def _sortable(when) -> float:
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return 0.0


def page_links(settings: Settings, out_dir: Path):
    """The page's links: relative to the page for a product under ``products_dir`` (the report is there too:
    the link works over file:// and over http alike, and ``contimg serve`` redirects a moved product's
    ``/products/`` URL to its archived copy), the product server's URL (``naming.product_url``) for one
    elsewhere (an archived product), a relative path when it has no URL."""
    relative = relative_href(out_dir)
    products = Path(settings.products_dir).resolve()

    def href(path: str) -> str | None:
        if not Path(path).resolve().is_relative_to(products):
            return naming.product_url(settings, path) or relative(path)
        return relative(path)

    return href


def write_night_report(settings: Settings, date: str, out_dir=None) -> Report:
    """Write the night report of ``date`` (``naming.report_dir`` unless ``out_dir``); return it."""
    date = naming.parse_obs_date(date)
    out = Path(out_dir) if out_dir is not None else naming.report_dir(settings.products_dir, date)
    return write_report(night_rows(settings.catalog_dir, date), out, href=page_links(settings, out))


def report_artifact(settings: Settings, date: str, report: Report) -> None:
    """A Prefect markdown artifact ``report-<date>`` linking the page (best effort: logged, never raised)."""
    try:
        from prefect.artifacts import create_markdown_artifact

        link = report_url(settings, report.path)
        create_markdown_artifact(
            key=f"report-{date}",
            markdown=(f"# Night report {date}\n\n[{report.path.name}]({link}): {report.n_groups} group(s), "
                      f"{report.n_failures} failure(s).\n"),
            description=f"night report of {date}")
    except Exception:  # noqa: BLE001 - the UI link must never fail the caller
        log.exception("could not write the report artifact of %s", date)


def report_url(settings: Settings, path: Path) -> str:
    """The page's link: its URL on the product server (``naming.product_url``), else (a page written outside
    the products and archive directories) a ``file://`` URI."""
    return naming.product_url(settings, path) or Path(path).resolve().as_uri()


def reports_after_archive(settings: Settings, dates) -> dict[str, str]:
    """Write the night report of each date (and its artifact); a date that fails is logged and skipped.

    Returns
    -------
    dict
        date -> the page's path, or ``"failed: <error>"``.
    """
    done: dict[str, str] = {}
    for date in sorted(set(dates)):
        try:
            report = write_night_report(settings, date)
        except Exception as exc:  # noqa: BLE001 - a report never fails the archive
            log.exception("night report of %s not written", date)
            done[date] = f"failed: {exc}"
            continue
        report_artifact(settings, date, report)
        done[date] = str(report.path)
    return done
