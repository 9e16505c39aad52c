"""What an operator reads in the Prefect UI: a summary per group, calibration QA per set, product links.

Every artifact is keyed by its group or set (Prefect keeps the versions of a key:
a rerun adds a version, the UI shows the latest), and everything in it is read
back from the catalog, so it says what was recorded, not what the flow hoped.
Artifacts are best effort: a failure to write one is logged, never raised.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from catalog import query as cq
from contimg import naming
from contimg.config import Settings
from contimg.instrument import antenna_name

log = logging.getLogger(__name__)


def artifact_key(kind: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``kind`` of ``name``."""
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _rows(settings: Settings, sql: str, params: list) -> list[dict]:
    try:
        return cq.query(settings.catalog_dir, sql, params).to_pylist()
    except Exception:  # noqa: BLE001 - an empty catalog has no such table yet
        log.exception("artifact query failed: %s", sql)
        return []


def _fmt(value, spec: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def group_summary(settings: Settings, group_id: str, state: str, *, detail: str = "") -> None:
    """A markdown summary of one group: its state, stage timings, calibration set, images and links.

    Parameters
    ----------
    settings : Settings
        Where the catalog is.
    group_id : str
        The group (``YYYY-MM-DDTHH:MM:SS``).
    state : str
        The state the flow ended the group in (``imaged``, ``waiting_for_cal``, ...).
    detail : str
        One line on why (shown under the state).
    """
    try:
        _group_summary(settings, group_id, state, detail)
    except Exception:  # noqa: BLE001 - the UI summary must never fail a group
        log.exception("could not write the summary artifact of %s", group_id)


def _group_summary(settings: Settings, group_id: str, state: str, detail: str) -> None:
    markdown, images = _group_markdown(settings, group_id, state, detail)
    create_markdown_artifact(key=artifact_key("group", group_id), markdown=markdown,
                             description=f"group {group_id}: {state}")
    for kind in ("pbcor", "png"):
        product = next((r for r in images if r["type"] == kind), None)
        url = product and naming.product_url(settings, product["path"])
        if url:
            create_link_artifact(key=artifact_key(kind, group_id), link=url,
                                 link_text=Path(product["path"]).name, description=f"{kind} image of {group_id}")


#: The order of a group's products in its summary: what an operator opens first, first.
_PRODUCT_ORDER = ["png", "pbcor", "image", "residual", "model", "psf", "pb", "sources", "crossmatch", "components"]


def group_markdown(settings: Settings, group_id: str, state: str, *, detail: str = "") -> str:
    """The markdown of :func:`group_summary` (links to the products over HTTP, the thumbnail inline)."""
    return _group_markdown(settings, group_id, state, detail)[0]


def _served_path(row: dict) -> str:
    """A product's path, or its archived copy's once the archive flow moved it."""
    path, archived = row["path"], row.get("archived_path")
    return archived if archived and not Path(path).exists() and Path(archived).exists() else path


def _link(settings: Settings, path: str, text: str | None = None) -> str:
    """A markdown link to a product over HTTP (``contimg serve``), or its path as code when it is not served."""
    url = naming.product_url(settings, path)
    return f"[{text or Path(path).name}]({url})" if url else f"`{path}`"


def _group_markdown(settings: Settings, group_id: str, state: str, detail: str) -> tuple[str, list[dict]]:
    ms = _rows(settings, "SELECT * FROM ms_index WHERE group_id = ?", [group_id])
    ms = ms[0] if ms else {}
    stages = _rows(settings, "SELECT stage, status, seconds, peak_memory_mb FROM stage_runs "
                             "WHERE group_id = ? AND status <> 'running' ORDER BY started_at", [group_id])
    images = _rows(settings, "SELECT type, path, archived_path, noise_jy, beam_major_arcsec, beam_minor_arcsec, "
                             "beam_pa_deg, peak_jy, dynamic_range, backend, caltable_set FROM images "
                             "WHERE group_id = ?",
                   [group_id])
    images = sorted(({**r, "path": _served_path(r)} for r in images),
                    key=lambda r: (_PRODUCT_ORDER.index(r["type"]) if r["type"] in _PRODUCT_ORDER else 99, r["path"]))
    lines = [f"# Group {group_id}: {state}", ""]
    if detail:
        lines += [detail, ""]
    lines += ["| | |", "|---|---|",
              f"| MS | `{ms.get('path', '-')}` |",
              f"| latest stage | {ms.get('stage', '-')} |",
              f"| calibration set | {ms.get('caltable_set') or '-'} |",
              f"| calibrator group | {ms.get('calibrator') or 'no'} |", ""]
    if stages:
        lines += ["## Stages", "", "| stage | status | seconds | peak memory (MB) |", "|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['status']} | {_fmt(r['seconds'], '.1f')} | "
                  f"{_fmt(r['peak_memory_mb'], '.0f')} |" for r in stages]
        lines.append("")
    lines += _flagging_lines(settings, group_id)
    lines += _selfcal_lines(settings, group_id)
    image = next((r for r in images if r["type"] == "image"), None)
    thumbnail = next((r for r in images if r["type"] == "png"), None)
    thumbnail_url = thumbnail and naming.product_url(settings, thumbnail["path"])
    if image:
        lines += ["## Image", ""]
        if thumbnail_url:
            # a plain image: Prefect's UI renders it, but not an image inside a link (shown as its text)
            lines += [f"![thumbnail of {group_id}]({thumbnail_url})", ""]
        lines += [f"noise {_fmt(1e3 * image['noise_jy'], '.3f')} mJy/beam, peak {_fmt(image['peak_jy'], '.3f')} "
                  f"Jy/beam, dynamic range {_fmt(image['dynamic_range'], '.0f')}, beam "
                  f"{_fmt(image['beam_major_arcsec'], '.1f')}\" x {_fmt(image['beam_minor_arcsec'], '.1f')}\" "
                  f"PA {_fmt(image['beam_pa_deg'], '.0f')} deg ({image['backend']}, set {image['caltable_set']})",
                  ""]
        lines += ["| product | file |", "|---|---|"]
        lines += [f"| {r['type']} | {_link(settings, r['path'])} |" for r in images]
        lines.append("")
    log_dir = naming.casa_log_path(settings.products_dir, group_id, "step").parent  # every step's log is in it
    folders = [(label, path) for label, path in (("QA plots", naming.qa_dir(settings.products_dir, group_id)),
                                                 ("CASA logs", log_dir)) if path.is_dir()]
    if folders:
        lines += ["More: " + ", ".join(_link(settings, str(path), label) for label, path in folders), ""]
    return "\n".join(lines), images


def _flagging_lines(settings: Settings, group_id: str) -> list[str]:
    """The group's latest flag report in a few lines: fractions, what RFI added, the worst antennas and SPWs."""
    rows = _rows(settings, "SELECT metric, value, value_text, stage, threshold FROM qa_metrics WHERE group_id = ? "
                           "AND subject_type = 'ms' AND stage IN ('flag', 'calibrate') AND (metric LIKE 'flagged%' "
                           "OR metric IN ('added_by_rfi', 'delivered_flagged_fraction', 'rfi_backend'))", [group_id])
    m = {r["metric"]: r for r in rows}
    if "flagged_fraction" not in m and "flagged_after_reset" not in m:
        return []
    final = m.get("flagged_fraction") or max((r for k, r in m.items() if k.startswith("flagged_after_")),
                                             key=lambda r: r["value"])

    def pct(name):
        return _fmt(100 * m[name]["value"], ".1f") + " %" if name in m and m[name]["value"] is not None else "-"

    def worst(prefix, label):
        parts = sorted(((r["value"], k[len(prefix):]) for k, r in m.items() if k.startswith(prefix)), reverse=True)
        return ", ".join(f"{label(name)} {100 * v:.0f} %" for v, name in parts[:3]) or "-"

    limit = m.get("delivered_flagged_fraction", {}).get("threshold")
    limit = f" (limit {100 * limit:g} %)" if limit is not None else ""
    backend = m.get("rfi_backend", {}).get("value_text") or "-"
    return ["## Flagging", "",
            f"{_fmt(100 * final['value'], '.1f')} % flagged in all (stage {final['stage']}); RFI ({backend}) added "
            f"{pct('added_by_rfi')}; of the data delivered, {pct('delivered_flagged_fraction')} flagged{limit}", "",
            f"worst antennas: {worst('flagged/ant', lambda a: antenna_name(int(a)))}; "
            f"worst SPWs: {worst('flagged/spw', lambda s: f'SPW {int(s)}')}", ""]


def _selfcal_lines(settings: Settings, group_id: str) -> list[str]:
    """What the group's latest self-calibration did, and the bright sources modelled through the drifting beam."""
    rows = _rows(settings, "SELECT metric, value, value_text FROM qa_metrics WHERE group_id = ? AND stage = 'selfcal' "
                           "QUALIFY row_number() OVER (PARTITION BY metric ORDER BY recorded_at DESC) = 1", [group_id])
    bright = _rows(settings, "SELECT value_text FROM qa_metrics WHERE group_id = ? AND stage = 'image' AND "
                             "metric = 'bright_sources' ORDER BY recorded_at DESC LIMIT 1", [group_id])
    m = {r["metric"]: (r["value"] if r["value"] is not None else r["value_text"]) for r in rows}
    lines = []
    if m:
        import json

        status = m.get("status", "-")
        reasons = json.loads(m["reasons"]) if isinstance(m.get("reasons"), str) else []
        lines += ["## Self-calibration", "", f"**{status}**" + (": " + "; ".join(reasons) if reasons else ""), ""]
        if "solint_s" in m:
            lines += [f"model {_fmt(m.get('model_sources'), '.0f')} sources ({_fmt(m.get('model_flux_jy'), '.2f')} Jy), "
                      f"solution interval {_fmt(m.get('solint_s'), '.0f')} s, phase SNR {_fmt(m.get('snr_median'), '.0f')}, "
                      f"phases {_fmt(m.get('phase_rms_deg'), '.1f')} deg rms, amplitudes "
                      f"{'solved' if m.get('amplitude') == 'true' else 'not solved'}; residual noise x"
                      f"{_fmt(m.get('noise_ratio'), '.3f')}, brightest peaks moved "
                      f"{_fmt(100 * m['flux_change_median'], '.1f') if 'flux_change_median' in m else '-'} %", ""]
    if bright and bright[0]["value_text"]:
        import json

        fitted = [b for b in json.loads(bright[0]["value_text"]) if b.get("fitted")]
        if fitted:
            lines += ["Bright sources fitted through the drifting beam, subtracted and restored: "
                      + ", ".join(f"{b['flux_jy']:.3g} Jy (alpha {b['spectral_index']:.2f})" for b in fitted), ""]
    return lines


def calibration_qa(settings: Settings, set_name: str) -> None:
    """A table artifact of one caltable set's QA: each table's type, SNR, flagged fraction and verdict."""
    try:
        rows = _rows(settings, "SELECT table_type, apply_order, status, refant, calibrator, snr_median, "
                               "flagged_fraction, interp, spwmap, reason, table_path FROM cal_registry "
                               "WHERE set_name = ? ORDER BY apply_order", [set_name])
        table = [{"set": set_name, "type": r["table_type"], "status": r["status"], "refant": r["refant"],
                  "calibrator": r["calibrator"], "snr_median": _fmt(r["snr_median"], ".1f"),
                  "flagged_fraction": _fmt(r["flagged_fraction"], ".3f"), "interp": r["interp"],
                  "spwmap": str(r["spwmap"]), "reason": r["reason"] or "", "table": Path(r["table_path"]).name}
                 for r in rows]
        create_table_artifact(key=artifact_key("calset", set_name), table=table,
                              description=f"calibration QA of set {set_name}")
    except Exception:  # noqa: BLE001 - the UI table must never fail a calibration
        log.exception("could not write the calibration QA artifact of %s", set_name)
