"""Quality metrics of solved caltables, the QA gate, and per-antenna bandpass plots.

A set becomes active only if it passes the gate (:func:`qa_gate`):

* at most ``max_flagged_fraction`` (0.25, the seed's rule) of each table's
  solutions flagged, counted over antennas that have unflagged data and over
  channels given to the solver (a channel flagged for every antenna, such as a
  subband edge, is data selection: at most ``max_unused_fraction`` of them);
* median solution SNR at least ``min_snr`` (per table type);
* a smooth bandpass: median |channel-to-channel change| of the amplitude below
  ``max_bandpass_jump`` (a noisy or RFI-hit bandpass is jumpy);
* delays within ``max_delay_ns`` of the reference antenna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contimg.calibration.caltables import CalTable, read_caltable


@dataclass(frozen=True)
class GateLimits:
    """Thresholds of the QA gate."""

    max_flagged_fraction: float = 0.25
    max_unused_fraction: float = 0.5
    min_snr: dict = field(default_factory=lambda: {"K": 3.0, "B": 5.0, "GP": 3.0, "GA": 3.0, "2G": 3.0})
    max_bandpass_jump: float = 0.1
    max_delay_ns: float = 100.0


def table_metrics(cal: CalTable, *, antennas_with_data=None) -> dict:
    """Flagged fraction, SNR statistics and type-specific figures of one table.

    Parameters
    ----------
    cal : CalTable
    antennas_with_data : sequence of int, optional
        Antennas to count (default: those with any unflagged solution).
    """
    if antennas_with_data is None:
        keep = ~np.all(cal.flags[:, cal.spws], axis=(0, 1, 3, 4))
    else:
        keep = np.isin(cal.antennas, np.asarray(antennas_with_data))
    flags = cal.flags[:, cal.spws][:, :, keep]
    snr = cal.snr[:, cal.spws][:, :, keep][~flags]
    # a channel flagged for every antenna was not given to the solver (subband edges, RFI
    # everywhere): that is data selection, reported apart, not a failed solve
    unused = np.all(flags, axis=2, keepdims=True) & (keep.sum() > 0)
    judged = np.broadcast_to(~unused, flags.shape)
    out = {
        "n_antennas": int(keep.sum()),
        "n_solutions": int(judged.sum()),
        "flagged_fraction": float(flags[judged].mean()) if judged.any() else 1.0,
        "unused_channel_fraction": float(unused.mean()) if unused.size else 0.0,
        "snr_median": float(np.median(snr)) if snr.size else 0.0,
        "snr_min": float(np.min(snr)) if snr.size else 0.0,
        "snr_available": bool(np.any(snr > 0)),
    }
    values = cal.values[:, cal.spws][:, :, keep]
    if cal.kind.startswith("K"):
        d = np.where(flags, np.nan, values.real)
        out["delay_abs_max_ns"] = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else float("nan")
        out["delay_rms_ns"] = float(np.sqrt(np.nanmean(d**2))) if np.isfinite(d).any() else float("nan")
    elif cal.kind.startswith("B"):
        amp = np.where(flags, np.nan, np.abs(values))
        jump = np.abs(np.diff(amp, axis=3))
        out["bandpass_jump_median"] = float(np.nanmedian(jump)) if np.isfinite(jump).any() else float("nan")
        out["bandpass_amp_rms"] = float(np.nanstd(amp)) if np.isfinite(amp).any() else float("nan")
    else:
        g = np.where(flags, np.nan, values)
        if np.isfinite(g).any():
            # scatter over time about each antenna's mean (the mean is the instrument, not noise)
            mean = np.nanmean(g, axis=0, keepdims=True)
            ph = np.angle(g * np.conj(mean))
            out["gain_phase_rms_deg"] = float(np.degrees(np.sqrt(np.nanmean(ph**2)))) if len(g) > 1 else 0.0
            out["gain_amp_median"] = float(np.nanmedian(np.abs(g)))
    return out


def qa_gate(metrics: dict[str, dict], limits: GateLimits = GateLimits()) -> list[str]:
    """Reasons a set fails the gate ([] = passes).

    Parameters
    ----------
    metrics : dict
        Table type -> :func:`table_metrics` output.
    """
    reasons = []
    for kind, m in metrics.items():
        if m["flagged_fraction"] > limits.max_flagged_fraction:
            reasons.append(f"{kind}: {m['flagged_fraction']:.0%} of solutions flagged "
                           f"(limit {limits.max_flagged_fraction:.0%})")
        if m.get("unused_channel_fraction", 0.0) > limits.max_unused_fraction:
            reasons.append(f"{kind}: {m['unused_channel_fraction']:.0%} of channels have no solution for any "
                           f"antenna (limit {limits.max_unused_fraction:.0%})")
        need = limits.min_snr.get(kind, 3.0)
        # CASA writes no SNR for delay solutions (the column stays 0): nothing to judge
        if m.get("snr_available", True) and m["snr_median"] < need:
            reasons.append(f"{kind}: median SNR {m['snr_median']:.1f} < {need}")
        if kind == "B" and not m.get("bandpass_jump_median", 0.0) <= limits.max_bandpass_jump:
            reasons.append(f"B: not smooth (median channel-to-channel amplitude change "
                           f"{m.get('bandpass_jump_median')!s} > {limits.max_bandpass_jump})")
        if kind == "K" and not m.get("delay_abs_max_ns", 0.0) <= limits.max_delay_ns:
            reasons.append(f"K: delay {m.get('delay_abs_max_ns')!s} ns beyond {limits.max_delay_ns} ns")
    return reasons


def plot_bandpass(b_path, out_png) -> Path:
    """Per-antenna bandpass amplitude and phase against frequency (PNG).

    Two antenna-by-frequency images per polarisation (amplitude, phase in deg),
    one row per antenna, flagged solutions blank: every antenna's bandpass at a
    glance, and a bad antenna or channel stands out as a stripe.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = read_caltable(b_path)
    freqs = cal.freqs_hz[cal.spws].ravel() / 1e6
    order = np.argsort(freqs)
    n_pol = cal.values.shape[-1]
    fig, axes = plt.subplots(n_pol, 2, figsize=(12, 2 + 0.06 * len(cal.antennas) * n_pol), squeeze=False)
    extent = [freqs.min(), freqs.max(), cal.antennas.max() + 0.5, cal.antennas.min() - 0.5]
    for p in range(n_pol):
        v = np.where(cal.flags[0][cal.spws][..., p], np.nan, cal.values[0][cal.spws][..., p])  # (Nspw, Nant, Nchan)
        v = np.moveaxis(v, 1, 0).reshape(len(cal.antennas), -1)[:, order]
        for ax, data, label, kw in ((axes[p, 0], np.abs(v), "amplitude", {"vmin": 0.5, "vmax": 1.5}),
                                    (axes[p, 1], np.degrees(np.angle(v)), "phase (deg)",
                                     {"vmin": -180, "vmax": 180, "cmap": "twilight"})):
            im = ax.imshow(data, aspect="auto", extent=extent, interpolation="nearest", **kw)
            ax.set_xlabel("frequency (MHz)")
            ax.set_ylabel("antenna number")
            ax.set_title(f"{label}, {'XX' if p == 0 else 'YY'}", fontsize=9)
            fig.colorbar(im, ax=ax)
    fig.suptitle(f"{Path(b_path).name}: bandpass per antenna", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
