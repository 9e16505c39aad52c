"""The night report (issue 21): one static HTML page per observation date, with PNG plots.

:func:`write_report` takes the night as plain rows (``tasks.report.night_rows``
reads them from the catalog) and writes, into one directory::

    index.html          the page (contimg.report.html)
    noise.png           image noise and its thermal prediction against time (contimg.report.plots)
    flagged.png         flagged fraction against time
    thumbs/<stem>.png   a small copy of each group's image PNG (the full PNG is linked, never copied)

No catalog, no Prefect here: plain functions on rows and paths.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from contimg.report import html as report_html
from contimg.report import plots

log = logging.getLogger(__name__)


@dataclass
class Report:
    """A written report: its page and what its plots show."""

    path: Path
    n_groups: int
    n_failures: int
    noise: dict = field(default_factory=dict)
    flagged: dict = field(default_factory=dict)


def relative_href(out_dir: Path) -> Callable[[str], str]:
    """Links relative to the report's directory (they resolve over file:// and over http alike when the
    report and the products are served from one tree)."""
    base = Path(out_dir).resolve()

    def href(path: str) -> str:
        return quote(os.path.relpath(Path(path).resolve(), base), safe="/")

    return href


def write_report(night: dict, out_dir: Path, *, href: Callable[[str], str | None] | None = None,
                 thumb_width: int = 240) -> Report:
    """Write the night's page, plots and thumbnails into ``out_dir``; return what was written.

    Parameters
    ----------
    night : dict
        As :func:`contimg.report.html.render` takes it (each group's ``png`` the image PNG where it is now,
        or None); ``thumbnail`` is filled here.
    out_dir : Path
        The report's directory (``naming.report_dir``), created.
    href : callable, optional
        A product's path -> its link; default :func:`relative_href`. The report's own files (plots,
        thumbnails) are always linked relative to the page.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    local = relative_href(out_dir)
    product_href = href or local
    own = {str((out_dir / "noise.png").resolve()), str((out_dir / "flagged.png").resolve())}

    def link(path: str) -> str | None:
        resolved = str(Path(path).resolve())
        return local(path) if resolved in own or Path(resolved).is_relative_to(out_dir.resolve()) \
            else product_href(path)

    groups = night.get("groups", [])
    for g in groups:
        g["thumbnail"] = None
        if not g.get("png"):
            continue
        try:
            g["thumbnail"] = str(plots.thumbnail(Path(g["png"]), out_dir / "thumbs" / f"{_safe(g['group_id'])}.png",
                                                 width=thumb_width))
        except Exception as exc:  # noqa: BLE001 - an unreadable PNG costs its thumbnail, not the report
            log.warning("%s: no thumbnail from %s: %s", g["group_id"], g["png"], exc)
            g["thumbnail_note"] = "thumbnail unreadable"
    noise = flagged = {}
    plot_paths = None
    if groups:
        ids, times = [g["group_id"] for g in groups], [g["time"] for g in groups]
        noise = plots.noise_plot(out_dir / "noise.png", ids, times, [g.get("noise_jy") for g in groups],
                                 [g.get("predicted_noise_jy") for g in groups], [g.get("state") for g in groups])
        flagged = plots.flagged_plot(out_dir / "flagged.png", ids, times, [g.get("flagged_fraction") for g in groups],
                                     [g.get("delivered_flagged_fraction") for g in groups],
                                     limit=night.get("flag_limit"))
        plot_paths = {"noise": str(noise["path"]), "flagged fraction": str(flagged["path"])}
    page = report_html.render(night, href=link, plots=plot_paths)
    path = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # a reader (the product server) never sees half a page
    return Report(path, len(groups), len(night.get("failures", [])), noise, flagged)


def _safe(group_id: str) -> str:
    return "".join(c for c in group_id if c.isalnum() or c in "-_T")
