"""The night report's HTML page: one static page from plain rows (no catalog, no Prefect).

Every piece of text put into the page goes through :func:`esc` (``html.escape``);
every link is given by the caller's ``href`` function, so the page can link
relative paths (file or http) or the product server's URLs.
"""

from __future__ import annotations

import html
import math
from datetime import datetime
from typing import Callable

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.2em 2em;
       color: #1d2330; font-size: 14px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ccd; padding-bottom: 0.2em; }
.meta { color: #667; margin-top: 0; }
.chips span { display: inline-block; padding: 0.15em 0.6em; margin: 0 0.4em 0.3em 0; border-radius: 1em;
              background: #eef1f6; }
table { border-collapse: collapse; margin-top: 0.5em; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 0.3em 0.45em; text-align: left; vertical-align: top; }
th { background: #f4f6f9; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
td.thumb img { width: 140px; height: auto; display: block; border: 1px solid #ccd; }
.plots img { width: 640px; max-width: 48%; margin-right: 1%; border: 1px solid #dde; }
.state { font-weight: 600; white-space: nowrap; }
.ok { color: #1a7f37; } .bad { color: #c62828; } .wait { color: #b26a00; } .other { color: #555; }
.detail { color: #666; font-size: 0.9em; max-width: 32em; overflow-wrap: anywhere; }
.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 0.9em; overflow-wrap: anywhere; }
.muted { color: #999; }
.nowrap, .nowrap .mono { white-space: nowrap; overflow-wrap: normal; }
td.set { min-width: 14em; max-width: 20em; }
"""

STATE_CLASS = {"imaged": "ok", "archived": "ok", "active": "ok", "converted": "other", "calibrated": "other",
               "applycal_done": "other", "waiting_for_cal": "wait", "uncalibrated": "wait", "retired": "wait",
               "failed": "bad", "applycal_failed": "bad", "quarantined": "bad", "rejected": "bad",
               "incomplete": "wait"}


#: The groups table's columns (the numeric ones from "flagged" on, right-aligned).
GROUP_COLUMNS = ["thumbnail", "group", "state", "calibration set", "flagged", "delivered flagged", "noise (mJy/beam)",
                 "thermal (mJy/beam)", "noise / thermal", "beam", "sources"]


def esc(value) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value, spec: str = "", *, scale: float = 1.0, suffix: str = "") -> str:
    """A number formatted (``-`` when absent), escaped."""
    if _missing(value):
        return '<span class="muted">-</span>'
    return esc(format(value * scale if scale != 1.0 else value, spec) + suffix)


def _state(state: str | None) -> str:
    return f'<span class="state {STATE_CLASS.get(state or "", "other")}">{esc(state or "-")}</span>'


def _time(when) -> str:
    if isinstance(when, datetime):
        return when.strftime("%H:%M:%S")
    return esc(when) if when else "-"


def _when(when) -> str:
    if isinstance(when, datetime):
        return esc(when.strftime("%Y-%m-%d %H:%M:%S"))
    return esc(when) if when else "-"


def _link(href: Callable[[str], str | None], path: str | None, text: str) -> str:
    url = href(path) if path else None
    return f'<a href="{esc(url)}">{esc(text)}</a>' if url else ""


def _beam(g: dict) -> str:
    if _missing(g.get("beam_major_arcsec")):
        return '<span class="muted">-</span>'
    text = f'{g["beam_major_arcsec"]:.1f}" x {g["beam_minor_arcsec"]:.1f}"'
    if not _missing(g.get("beam_pa_deg")):
        text += f', {g["beam_pa_deg"]:.0f} deg'
    return esc(text)


def _group_rows(groups: list[dict], href) -> list[str]:
    rows = []
    for g in groups:
        thumb = g.get("thumbnail")
        full = href(g["png"]) if g.get("png") else None
        if thumb:
            image = f'<img src="{esc(href(thumb))}" alt="{esc(g["group_id"])} thumbnail" loading="lazy">'
            cell = f'<a href="{esc(full)}">{image}</a>' if full else image
        else:
            cell = f'<span class="muted">{esc(g.get("thumbnail_note") or "no image")}</span>'
        ratio = (g["noise_jy"] / g["predicted_noise_jy"]
                 if not _missing(g.get("noise_jy")) and not _missing(g.get("predicted_noise_jy"))
                 and g["predicted_noise_jy"] > 0 else None)
        role = f'calibrator {g["calibrator"]}' if g.get("calibrator") else ("calibrator" if g.get("is_calibrator")
                                                                          else "")
        links = " ".join(x for x in (_link(href, g.get("png"), "PNG"), _link(href, g.get("pbcor_fits"),
                                                                              "pbcor FITS")) if x)
        flag = fmt(g.get("flagged_fraction"), ".1f", scale=100, suffix=" %")
        delivered = fmt(g.get("delivered_flagged_fraction"), ".1f", scale=100, suffix=" %")
        if g.get("flag_passed") is False:
            delivered = f'<span class="bad">{delivered}</span>'
        rows.append(
            "<tr>"
            f'<td class="thumb">{cell}</td>'
            f'<td class="nowrap"><span class="mono">{esc(g["group_id"])}</span>'
            f'<br><span class="detail">{esc(role)}</span>'
            f'<br>{links}</td>'
            f'<td>{_state(g.get("state"))}<div class="detail">{esc(g.get("state_detail") or "")}</div></td>'
            f'<td class="mono set">{esc(g.get("caltable_set") or "-")}'
            + (f'<div class="detail">self-cal: {esc(g["selfcal_set"])}</div>' if g.get("selfcal_set") else "")
            + "</td>"
            f'<td class="num">{flag}</td><td class="num">{delivered}</td>'
            f'<td class="num">{fmt(g.get("noise_jy"), ".2f", scale=1e3)}</td>'
            f'<td class="num">{fmt(g.get("predicted_noise_jy"), ".2f", scale=1e3)}</td>'
            f'<td class="num">{fmt(ratio, ".2f")}</td>'
            f'<td class="num">{_beam(g)}</td>'
            f'<td class="num">{fmt(g.get("n_sources"), "d")}</td>'
            "</tr>")
    return rows


def _calset_rows(calsets: list[dict]) -> list[str]:
    rows = []
    for s in calsets:
        tables = "<br>".join(
            f'{esc(t.get("type"))}: SNR {fmt(t.get("snr_median"), ".1f")}, flagged '
            f'{fmt(t.get("flagged_fraction"), ".1f", scale=100, suffix=" %")}'
            for t in s.get("tables", []))
        why = s.get("reason") or ""
        rows.append(
            "<tr>"
            f'<td class="mono">{esc(s["set_name"])}</td>'
            f'<td>{_state(s.get("status"))}<div class="detail">{esc(why)}</div></td>'
            f'<td>{esc(s.get("calibrator") or "-")}</td>'
            f'<td>{_time(s.get("time"))}</td>'
            f'<td>{esc(s.get("refant") or "-")}</td>'
            f'<td class="num">{tables or "-"}</td>'
            f'<td class="num">{fmt(s.get("groups_applied"), "d")}</td>'
            f'<td>{esc(s.get("note") or "")}</td>'
            "</tr>")
    return rows


def _failure_rows(failures: list[dict]) -> list[str]:
    return ["<tr>"
            f'<td class="nowrap">{_when(f.get("when"))}</td>'
            f'<td class="mono nowrap">{esc(f.get("group_id"))}</td>'
            f'<td>{esc(f.get("what"))}</td>'
            f'<td class="detail">{esc(f.get("error") or "")}</td>'
            f'<td>{_state(f.get("now"))}</td>'
            "</tr>" for f in failures]


def _table(headers: list[str], rows: list[str], *, numeric: set[str] = frozenset()) -> str:
    head = "".join(f'<th class="num">{esc(h)}</th>' if h in numeric else f"<th>{esc(h)}</th>" for h in headers)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def render(night: dict, *, href: Callable[[str], str | None], plots: dict[str, str] | None = None) -> str:
    """The page of one night.

    Parameters
    ----------
    night : dict
        ``date``, ``generated_at``, ``source`` (where the rows came from), ``groups`` (dicts: ``group_id``,
        ``time``, ``state``, ``state_detail``, ``caltable_set``, ``selfcal_set``, ``flagged_fraction``,
        ``flag_passed``, ``noise_jy``, ``predicted_noise_jy``, beam, ``n_sources``, ``png``, ``pbcor_fits``,
        ``thumbnail``), ``calsets`` (``set_name``, ``status``, ``reason``, ``calibrator``, ``time``, ``refant``,
        ``tables``, ``groups_applied``, ``note``), ``failures`` (``when``, ``group_id``, ``what``, ``error``,
        ``now``), ``flag_limit``.
    href : callable
        Path (of a product, a plot, a thumbnail) -> the link to put in the page, or None for no link.
    plots : dict, optional
        ``noise``, ``flagged``: the plots' paths.
    """
    date = night["date"]
    groups, calsets, failures = night.get("groups", []), night.get("calsets", []), night.get("failures", [])
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>DSA-110 night report {esc(date)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>DSA-110 continuum imaging: night of {esc(date)} (UTC)</h1>",
           f'<p class="meta">Written {esc(night.get("generated_at", ""))} from the catalog '
           f'<span class="mono">{esc(night.get("source", ""))}</span>.</p>']
    if not groups:
        out.append(f"<p><strong>no groups on {esc(date)}</strong></p>")
    else:
        states: dict[str, int] = {}
        for g in groups:
            states[g.get("state") or "-"] = states.get(g.get("state") or "-", 0) + 1
        chips = "".join(f"<span>{_state(s)} {n}</span>" for s, n in sorted(states.items()))
        out.append(f'<div class="chips"><span>{len(groups)} groups</span>{chips}'
                   f"<span>{len(failures)} failure(s)</span><span>{len(calsets)} calibration set(s)</span></div>")
        if plots:
            imgs = "".join(f'<img src="{esc(href(str(p)))}" alt="{esc(name)} against time">'
                           for name, p in plots.items())
            out += ["<h2>Noise and flagging against time</h2>", f'<div class="plots">{imgs}</div>']
        out += ["<h2>Groups</h2>",
                '<p class="meta">State: the latest <span class="mono">ms_index</span> stage. Flagged: of all the '
                "group's data, and of the delivered data (the gated fraction), from its flag report (stage flag; "
                "a calibrator group's, stage calibrate)"
                + (f"; the gate's limit {night['flag_limit'] * 100:.0f} %"
                   if not _missing(night.get("flag_limit")) else "")
                + ". Noise: MAD of the residual inside pb &gt; 0.5 (pbcor image row); thermal: the prediction "
                  "from the visibility weights. Sources: rows of the PyBDSF source table (- when source finding "
                  "was off).</p>",
                _table(GROUP_COLUMNS, _group_rows(groups, href), numeric=set(GROUP_COLUMNS[4:]))]
    out.append("<h2>Calibration sets</h2>")
    if calsets:
        out.append(_table(["set", "status", "calibrator", "time (UTC)", "refant", "tables: QA", "groups applied",
                           "note"], _calset_rows(calsets), numeric={"tables: QA", "groups applied"}))
    else:
        out.append(f"<p>No calibration set registered or rejected on {esc(date)}.</p>")
    out.append("<h2>Failures</h2>")
    if failures:
        out.append(_table(["recorded (UTC)", "group", "what", "reason", "state now"], _failure_rows(failures)))
    else:
        out.append("<p>No failures.</p>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
