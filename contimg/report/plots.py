"""The night report's plots (matplotlib, Agg) and thumbnails: plain functions on arrays and paths.

Each plot function writes one PNG and returns what it plotted (group ids, times
and values, NaN where a group has no value), so a caller or a test can check
that every group is on it. A group without a value is drawn as a grey tick on
the time axis ("no value"), never left out silently.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

#: Colour of each state on the plots; a state not listed is grey.
STATE_COLOURS = {"imaged": "tab:blue", "archived": "tab:blue", "failed": "tab:red", "applycal_failed": "tab:red",
                 "uncalibrated": "tab:orange", "waiting_for_cal": "tab:orange", "quarantined": "tab:red"}


def _figure(width_in: float = 6.4, height_in: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _time_axis(ax, times: list[datetime]) -> None:
    from matplotlib.dates import AutoDateLocator, DateFormatter

    ax.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=8))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    ax.set_xlabel("UTC (group mid time)")
    if len(times) == 1:  # one point: a window around it, not matplotlib's default of days
        from datetime import timedelta

        ax.set_xlim(times[0] - timedelta(minutes=10), times[0] + timedelta(minutes=10))
    ax.grid(alpha=0.3)


def _missing(ax, times: list[datetime], values: np.ndarray, label: str) -> None:
    """Grey ticks on the time axis for the groups without a value."""
    from matplotlib.transforms import blended_transform_factory

    where = [t for t, v in zip(times, values) if not np.isfinite(v)]
    if where:
        ax.plot(where, [0.02] * len(where), "|", color="0.5", markersize=14, mew=2, label=label,
                transform=blended_transform_factory(ax.transData, ax.transAxes))


def noise_plot(path: Path, group_ids: list[str], times: list[datetime], noise_jy, predicted_jy,
               states: list[str] | None = None) -> dict:
    """Image noise and its thermal prediction against time, one point per group; written to ``path``.

    Parameters
    ----------
    path : Path
        The PNG to write.
    group_ids, times : list
        The groups and their (UTC) times, in the same order.
    noise_jy, predicted_jy : array-like
        Measured noise and thermal prediction, Jy/beam (NaN or None: the group has no image).
    states : list of str, optional
        Each group's state (colours the measured points).

    Returns
    -------
    dict
        ``group_ids``, ``times``, ``noise_mjy``, ``predicted_mjy``, ``path``: what was plotted.
    """
    noise = np.array([np.nan if v is None else v for v in noise_jy], dtype=float) * 1e3
    predicted = np.array([np.nan if v is None else v for v in predicted_jy], dtype=float) * 1e3
    states = list(states) if states is not None else ["imaged"] * len(group_ids)
    fig, ax = _figure()
    if len(group_ids):
        ax.plot(times, predicted, "_", color="0.3", markersize=14, mew=2, label="thermal prediction")
        colours = [STATE_COLOURS.get(s, "0.5") for s in states]
        ax.scatter(times, noise, c=colours, s=28, zorder=3, label="measured (inside pb > 0.5)")
        _missing(ax, times, noise, "no image")
        _time_axis(ax, times)
        fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no groups", ha="center", va="center", transform=ax.transAxes)
    finite = noise[np.isfinite(noise)].tolist() + predicted[np.isfinite(predicted)].tolist()
    ax.set_ylim(0, max(finite) * 1.25 if finite else 1.0)
    ax.set_ylabel("noise (mJy/beam)")
    ax.set_title(f"Image noise, {int(np.isfinite(noise).sum())} of {len(group_ids)} groups imaged", fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return {"group_ids": list(group_ids), "times": list(times), "noise_mjy": noise, "predicted_mjy": predicted,
            "path": Path(path)}


def flagged_plot(path: Path, group_ids: list[str], times: list[datetime], flagged_fraction, delivered_fraction=None,
                 *, limit: float | None = None) -> dict:
    """Flagged fraction of each group's data against time; written to ``path``.

    Parameters
    ----------
    path : Path
        The PNG to write.
    group_ids, times : list
        The groups and their (UTC) times.
    flagged_fraction : array-like
        Of all the data, 0..1 (NaN or None: no flag report).
    delivered_fraction : array-like, optional
        Of the delivered data (what the gate ``max_flagged_fraction`` applies to), 0..1.
    limit : float, optional
        The gate, drawn as a line; a delivered fraction over it is red.

    Returns
    -------
    dict
        ``group_ids``, ``times``, ``flagged_pct``, ``delivered_pct``, ``path``: what was plotted.
    """
    def pct(values):
        return np.array([np.nan if v is None else v for v in values], dtype=float) * 100

    flagged = pct(flagged_fraction)
    delivered = pct(delivered_fraction if delivered_fraction is not None else [None] * len(group_ids))
    fig, ax = _figure()
    if len(group_ids):
        ax.scatter(times, flagged, s=28, color="tab:blue", zorder=3, label="flagged (all data)")
        over = np.isfinite(delivered) & (delivered > (limit * 100 if limit is not None else np.inf))
        if np.isfinite(delivered).any():
            ax.scatter(times, np.where(over, np.nan, delivered), s=30, marker="D", facecolors="none",
                       edgecolors="tab:green", zorder=4, label="delivered data (gated)")
        if over.any():
            ax.scatter(times, np.where(over, delivered, np.nan), s=36, marker="D", color="tab:red", zorder=4,
                       label="delivered, over the limit")
        if limit is not None:
            ax.axhline(limit * 100, color="tab:red", ls="--", lw=1, label=f"limit {limit * 100:.0f} %")
        _missing(ax, times, flagged, "no flag report")
        _time_axis(ax, times)
        fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no groups", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    ax.set_ylabel("flagged (%)")
    ax.set_title(f"Flagged fraction, {int(np.isfinite(flagged).sum())} of {len(group_ids)} groups with a report",
                 fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return {"group_ids": list(group_ids), "times": list(times), "flagged_pct": flagged, "delivered_pct": delivered,
            "path": Path(path)}


def thumbnail(source: Path, dest: Path, *, width: int = 240) -> Path:
    """A small copy of a PNG (``width`` pixels wide, aspect kept) at ``dest``; the source is untouched.

    A ``dest`` newer than ``source`` is kept as it is (a report rewritten for a night of ~280 groups
    does not decode every PNG again).
    """
    from PIL import Image

    source, dest = Path(source), Path(dest)
    if dest.exists() and dest.stat().st_mtime >= source.stat().st_mtime:
        return dest
    with Image.open(source) as image:
        image = image.convert("RGB")
        height = max(1, round(image.height * width / image.width))
        small = image.resize((width, height), Image.LANCZOS) if image.width > width else image
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
        tmp.replace(dest)  # a few tens of kB; never half written
    return Path(dest)


def lightcurve_plot(path: Path, times: list[datetime], peak_jy, rms_jy, flagged, *, title: str,
                    weighted_mean_jy: float | None = None) -> dict:
    """A source's light curve: peak flux with 1-sigma error bars against time; written to ``path``.

    Parameters
    ----------
    path : Path
        The PNG to write.
    times : list of datetime
        Epochs (UTC).
    peak_jy, rms_jy : array-like
        Peak flux and its uncertainty, Jy/beam (None: not measured).
    flagged : sequence of bool
        Epochs with photometry flags: drawn as open grey markers, not used by the metrics.
    title : str
    weighted_mean_jy : float, optional
        The weighted mean of the good epochs (a dashed line).

    Returns
    -------
    dict
        ``times``, ``peak_mjy``, ``rms_mjy``, ``flagged``, ``path``: what was plotted.
    """
    peak = np.array([np.nan if v is None else v for v in peak_jy], dtype=float) * 1e3
    rms = np.array([np.nan if v is None else v for v in rms_jy], dtype=float) * 1e3
    bad = np.asarray(flagged, dtype=bool).reshape(-1)
    fig, ax = _figure(7.2, 3.8)
    if len(times):
        t = np.array(times, dtype=object)
        good = ~bad
        if good.any():
            ax.errorbar(t[good], peak[good], yerr=rms[good], fmt="o", color="tab:blue", ms=4, capsize=2,
                        label="good epochs")
        if bad.any():
            ax.errorbar(t[bad], peak[bad], yerr=rms[bad], fmt="o", mfc="none", color="0.55", ms=5, capsize=2,
                        label="flagged (not in the metrics)")
        if weighted_mean_jy is not None and np.isfinite(weighted_mean_jy):
            ax.axhline(weighted_mean_jy * 1e3, ls="--", color="0.3", lw=1, label="weighted mean")
        _time_axis(ax, list(times))
        if max(times) - min(times) > timedelta(days=1):  # several nights: the date matters
            from matplotlib.dates import DateFormatter

            ax.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M"))
            ax.set_xlabel("UTC (image mid time)")
        else:
            ax.set_xlabel(f"UTC on {min(times):%Y-%m-%d} (image mid time)")
        fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("peak flux (mJy/beam)")
    ax.set_title(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return {"times": list(times), "peak_mjy": peak, "rms_mjy": rms, "flagged": bad, "path": Path(path)}
