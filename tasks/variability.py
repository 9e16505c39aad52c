"""Variability candidates for the operator: light-curve plots and a markdown artifact in the Prefect UI.

:func:`write_candidates` reads the candidates of the catalog's ``variability``
view at the ``variability_*`` settings (over every epoch, or over a time range
such as one night), writes each one's light-curve PNG
(:func:`contimg.naming.lightcurve_png_path`, ``<products>/lightcurves/``) and
returns a markdown table (name, epochs, V, eta, peak deviation, weighted mean,
last epoch, link to the plot). :func:`candidates_artifact` publishes it as the
``variability-candidates`` artifact; it is best effort (logged, never raised),
so the archive and mosaic flows can call it at their end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from catalog import variability as cv
from contimg import naming
from contimg.config import Settings
from contimg.variability import VariabilityThresholds

log = logging.getLogger(__name__)

#: Key of the candidates' artifact (Prefect keeps its versions; the UI shows the latest).
ARTIFACT_KEY = "variability-candidates"


@dataclass
class Candidates:
    """What :func:`write_candidates` found and wrote.

    Attributes
    ----------
    rows : list of dict
        The candidates' ``variability`` rows, most significant (largest eta) first.
    plots : dict
        Source name -> its light-curve PNG.
    markdown : str
        The artifact's text.
    """

    rows: list[dict] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""


def _fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def write_candidates(settings: Settings, *, start_mjd: float | None = None, end_mjd: float | None = None,
                     plots: bool = True, max_plots: int = 50) -> Candidates:
    """The current variability candidates, their light-curve PNGs and the markdown table.

    Parameters
    ----------
    settings : Settings
        Catalog, products directory and thresholds (``variability_*``).
    start_mjd, end_mjd : float, optional
        Metrics over the epochs in this range only (MJD, UTC); default all.
    plots : bool
        Write each candidate's light-curve PNG.
    max_plots : int
        At most this many plots, most significant first (a bad night must not write thousands).

    Returns
    -------
    Candidates
    """
    from astropy.time import Time

    from contimg.report.plots import lightcurve_plot

    thresholds = VariabilityThresholds.from_settings(settings)
    rows = cv.variability(settings.catalog_dir, **thresholds.to_dict(), candidates_only=True,
                          start_mjd=start_mjd, end_mjd=end_mjd)
    found = Candidates(rows=rows)
    for row in rows[:max_plots] if plots else []:
        name = row["source_name"]
        epochs = cv.light_curve(settings.catalog_dir, name, start_mjd=start_mjd, end_mjd=end_mjd)
        times = Time([e["mid_mjd"] for e in epochs], format="mjd", scale="utc").to_datetime() if epochs else []
        path = naming.lightcurve_png_path(settings.products_dir, name)
        lightcurve_plot(path, list(times), [e["peak_jy"] for e in epochs], [e["rms_jy"] for e in epochs],
                        [bool(e["flags"]) for e in epochs], weighted_mean_jy=row["wmean_jy"],
                        title=f"{name}: V {_fmt(row['v'], '.3f')}, eta {_fmt(row['eta'], '.1f')}, candidate")
        found.plots[name] = path
    found.markdown = candidates_markdown(settings, rows, found.plots, thresholds)
    return found


def candidates_markdown(settings: Settings, rows: list[dict], plots: dict[str, Path],
                        thresholds: VariabilityThresholds) -> str:
    """The candidates as a markdown table (links to the plots served by ``contimg serve``)."""
    from astropy.time import Time

    head = (f"**{len(rows)} variability candidate(s)**: eta >= {thresholds.eta_min:g}, V >= {thresholds.v_min:g}, "
            f">= {thresholds.min_epochs} good group epochs, max SNR >= {thresholds.min_snr:g} "
            "(VAST definitions, docs/catalog.md)")
    if not rows:
        return head
    lines = [head, "", "| source | epochs | V | eta | max dev (sigma) | weighted mean (mJy) | last epoch (UTC) | plot |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["source_name"]
        last = Time(r["last_mjd"], format="mjd", scale="utc").isot[:19] if r["last_mjd"] is not None else "-"
        url = naming.product_url(settings, plots[name]) if name in plots else None
        link = f"[png]({url})" if url else ("written" if name in plots else "-")
        lines.append(f"| {name} | {r['n_epochs']} | {_fmt(r['v'], '.3f')} | {_fmt(r['eta'], '.1f')} | "
                     f"{_fmt(r['max_dev_sigma'], '.1f')} | {_fmt(r['wmean_jy'] and r['wmean_jy'] * 1e3, '.1f')} | "
                     f"{last} | {link} |")
    return "\n".join(lines)


def candidates_artifact(settings: Settings, *, start_mjd: float | None = None,
                        end_mjd: float | None = None) -> Candidates | None:
    """Write the candidates' plots and the ``variability-candidates`` artifact; None (logged) if it fails.

    Meant for the end of the archive and mosaic flows: a failure here never fails them.
    """
    try:
        found = write_candidates(settings, start_mjd=start_mjd, end_mjd=end_mjd)
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=found.markdown,
                                 description=f"{len(found.rows)} variability candidate(s)")
    except Exception:  # noqa: BLE001 - the candidates' summary never fails the flow that calls it
        log.exception("variability candidates not written")
        return None
    return found


@task(name="variability-candidates")
def task_variability_candidates(settings: Settings, *, start_mjd: float | None = None,
                                end_mjd: float | None = None) -> int | None:
    """:func:`candidates_artifact` as a task: the number of candidates, or None when it failed (logged)."""
    found = candidates_artifact(settings, start_mjd=start_mjd, end_mjd=end_mjd)
    return None if found is None else len(found.rows)
