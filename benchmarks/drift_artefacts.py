"""Bright-source artefacts: is the drift through the primary beam the cause? (issue 19, cause 3)

    nice -n 5 .venv/bin/python benchmarks/drift_artefacts.py [--scale full|small] [--out DIR]

A noise-free, uncorrupted group holding one bright calibrator alone (3C48, J0137+3309, 16.5 Jy),
transiting the beam centre at the middle of the group (pointing Dec = its apparent Dec at transit), is
simulated twice: with the primary beam drifting over the source as it does on the telescope (the
default), and with the beam held fixed (``simulate_group(fixed_beam=True)``: every integration's
attenuation is the one at the group's mid time, per channel). Each is converted and imaged with the
default imaging settings (WSClean, the 3648 px grid at full size, data column DATA, no
self-calibration), and the residual image is measured:

* the restored peak (and the truth: the source's band-averaged apparent flux);
* max |residual| near the source (within 3 restoring-beam major axes) and outside it;
* max |residual| and pixel / peak counts above thresholds (1e-4 and 3e-4 of the peak) on the source's
  row and column (within +-2 beams of them, outside the 3-beam circle: the T-array's PSF sidelobes lie
  along them) and elsewhere;

then prints a table and the ratios drifting / fixed. The raw files, MSs and FITS products stay in
``--out`` (default ``/tmp/contimg-drift-artefacts``; a simulated group already there is reused) with
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE = "J0137+3309"  # 3C48, 16.5 Jy at 1.4 GHz in the shipped VLA list
DATE = "2026-11-25"
THRESHOLDS = (1e-4, 3e-4)  # of the restored peak
NEAR_BEAMS = 3.0  # radius of the "near the source" circle, restoring-beam major axes
ARM_BEAMS = 2.0  # half-width of the row / column bands, restoring-beam major axes


def _pointing(cal, n_times: int):
    """(group start as a Time, pointing Dec): the group's middle at transit, the Dec the source's apparent one."""
    from contimg.simulate import transit_start_time
    from contimg.simulate.visibilities import apparent_radec_rad
    from contimg.sky.transit import next_transit
    from astropy.coordinates import SkyCoord
    from astropy.time import Time
    import astropy.units as u

    start = transit_start_time(cal.ra_deg, DATE, dec_deg=cal.dec_deg, n_times=n_times)
    transit = next_transit(SkyCoord(cal.ra_deg * u.deg, cal.dec_deg * u.deg), Time(DATE))
    _, dec = apparent_radec_rad([cal.ra_deg], [cal.dec_deg], [transit.utc.jd])
    return start, float(np.degrees(dec[0, 0]))


def simulate(out: Path, *, scale: str, fixed_beam: bool) -> tuple[str, dict, Path, float]:
    """(group id, subband files, truth path, seconds) of the group in ``out`` (simulated unless present)."""
    from contimg import simulate as sim
    from contimg.conversion.discovery import discover_groups
    from contimg.simulate import Corruptions, scale_preset
    from contimg.simulate.sky import find_calibrator

    inbox = out / "in"
    truths = sorted(inbox.glob("*_truth.json"))
    elapsed = float("nan")
    ok = len(truths) == 1 and json.loads(truths[0].read_text()).get("beam", {}).get("fixed") is fixed_beam
    if not ok:
        shutil.rmtree(inbox, ignore_errors=True)
        cal = find_calibrator(SOURCE)
        start, dec = _pointing(cal, scale_preset(scale)["n_times"])
        t = time.perf_counter()
        sim.simulate_group(inbox, start, scale=scale, pointing_dec_deg=dec, sources=[cal], calibrator=SOURCE,
                           corruptions=Corruptions.none(), seed=0, jitter_s=0, fixed_beam=fixed_beam)
        elapsed = time.perf_counter() - t
        truths = sorted(inbox.glob("*_truth.json"))
    (grp,) = discover_groups(inbox, settle_s=0)
    return grp.group_id, dict(grp.files), truths[0], elapsed


def convert(out: Path, group_id: str, files: dict, *, reuse: bool = False) -> tuple[Path, float]:
    """The group's MS in ``out/prod`` and the seconds it took (converted again unless ``reuse`` and present)."""
    from contimg.conversion.convert import convert_group

    existing = sorted((out / "prod").rglob("*.ms"))
    if reuse and len(existing) == 1 and (existing[0] / "table.dat").exists():
        return existing[0], float("nan")
    shutil.rmtree(out / "prod", ignore_errors=True)
    shutil.rmtree(out / "scratch", ignore_errors=True)
    t = time.perf_counter()
    r = convert_group(group_id, files, products_dir=out / "prod", scratch_dir=out / "scratch")
    return Path(r.ms_path), time.perf_counter() - t


def image(out: Path, ms: Path, *, niter: int | None = None, bright: float | None = None):
    from contimg.imaging.image import ImagingOptions, image_ms

    name = ("img" if niter is None else f"img-niter{niter}") + ("" if bright is None else "-bright")
    prefix = out / name / "group"
    shutil.rmtree(out / name, ignore_errors=True)
    extra = {} if niter is None else {"niter": niter}
    if bright is not None:  # the fix: the source fitted through the drifting beam, subtracted, restored
        extra["bright_source_snr"] = bright
    t = time.perf_counter()
    result = image_ms(ms, prefix, options=ImagingOptions(data_column="data", selfcal=None, **extra))
    return result, time.perf_counter() - t


def _local_peaks(a: np.ndarray, threshold: float, size: int) -> np.ndarray:
    """Boolean map of local maxima of ``a`` (in a ``size`` box) above ``threshold``."""
    from scipy.ndimage import maximum_filter

    return (a >= threshold) & (a == maximum_filter(a, size=size, mode="nearest"))


def expected_apparent_flux(truth: dict) -> float:
    """The source's S PB averaged over integrations and channels, Jy (what an image of the group reads)."""
    from contimg import instrument
    from contimg.simulate.visibilities import source_geometry
    from contimg.simulate import layout
    from contimg.sky.beam import airy_power
    from contimg.sky.source import Source

    keys = ("name", "ra_deg", "dec_deg", "flux_jy", "spectral_index", "ref_freq_hz")
    (s,) = [Source(**{k: v for k, v in d.items() if k in keys}) for d in truth["sky"]]
    times = np.asarray(truth["times_jd"])
    n_ch = truth["scale"]["n_channels"]
    freqs = np.concatenate([instrument.subband_frequencies_hz(sb, n_channels=n_ch)
                            for sb in truth["scale"]["subbands"]])
    if truth["beam"]["fixed"]:
        mid = np.array([(times[0] + times[-1]) / 2])
        geo = source_geometry([s.ra_deg], [s.dec_deg], mid, layout.apparent_lst_rad(mid), truth["pointing_dec_rad"])
    else:
        geo = source_geometry([s.ra_deg], [s.dec_deg], times, np.asarray(truth["lst_rad"]), truth["pointing_dec_rad"])
    pb = airy_power(geo.offset_rad[:, 0][:, None], freqs[None, :])
    return float(np.mean(pb * s.flux_at(freqs)[None, :]))


def measure(result, truth: dict) -> dict:
    """The residual figures of one imaged group (see the module docstring)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    (src,) = truth["sky"]
    with fits.open(result.products["residual"]) as h:
        res = np.squeeze(h[0].data).astype(float)
        wcs = WCS(h[0].header).celestial
    with fits.open(result.products["image"]) as h:
        img = np.squeeze(h[0].data).astype(float)
    with fits.open(result.products["model"]) as h:
        model = np.squeeze(h[0].data).astype(float)
    cell = abs(wcs.wcs.cdelt[0]) * 3600.0
    bmaj, bmin, _ = result.restoring_beam_arcsec
    beam_px = bmaj / cell
    x0, y0 = wcs.all_world2pix([[src["ra_deg"], src["dec_deg"]]], 0)[0]
    ny, nx = res.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    near = np.hypot(xx - x0, yy - y0) <= NEAR_BEAMS * beam_px
    arms = ((np.abs(xx - x0) <= ARM_BEAMS * beam_px) | (np.abs(yy - y0) <= ARM_BEAMS * beam_px)) & ~near
    rest = ~near & ~arms
    peak = float(img[near].max())
    iy, ix = np.unravel_index(np.argmax(np.where(near, img, -np.inf)), img.shape)
    a = np.abs(res)
    out = {
        "peak_jy": peak,
        "peak_offset_px": [float(ix - x0), float(iy - y0)],
        "expected_apparent_jy": expected_apparent_flux(truth),
        "model_flux_jy": float(model.sum()),
        "model_pixels": int(np.count_nonzero(model)),
        "restoring_beam_arcsec": [bmaj, bmin],
        "beam_px": beam_px,
        "imsize": int(nx),
        "residual_rms_jy": float(np.sqrt(np.mean(res[rest] ** 2))),
        "max_near_jy": float(a[near].max()),
        "max_outside_jy": float(a[~near].max()),
        "max_arms_jy": float(a[arms].max()),
        "max_elsewhere_jy": float(a[rest].max()),
        "imager_wall_s": result.timings.get("imager"),
        "subtracted_sources": [getattr(s, "name", str(s)) for s in result.subtracted_sources],
    }
    where = np.unravel_index(np.argmax(np.where(~near, a, -np.inf)), a.shape)
    out["max_outside_at_px"] = [float(where[1] - x0), float(where[0] - y0)]
    size = max(3, int(round(beam_px)))
    for frac in THRESHOLDS:
        thr = frac * peak
        peaks = _local_peaks(a, thr, size)
        key = f"{frac:g}"
        out[f"pixels_arms_{key}"] = int((a[arms] >= thr).sum())
        out[f"pixels_elsewhere_{key}"] = int((a[rest] >= thr).sum())
        out[f"peaks_arms_{key}"] = int(peaks[arms].sum())
        out[f"peaks_elsewhere_{key}"] = int(peaks[rest].sum())
    for k in ("max_near_jy", "max_outside_jy", "max_arms_jy", "max_elsewhere_jy", "residual_rms_jy"):
        out[k.replace("_jy", "_frac")] = out[k] / peak
    return out


def _imager_stop(log_path: Path) -> str:
    """The last lines of WSClean's log that say why cleaning stopped."""
    if not log_path.exists():
        return ""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
             if "threshold" in ln.lower() or "iterations" in ln.lower() or "major" in ln.lower()]
    return " | ".join(lines[-4:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("full", "small"), default="full")
    ap.add_argument("--out", type=Path, default=Path("/tmp/contimg-drift-artefacts"))
    ap.add_argument("--only", choices=("drifting", "fixed"), default=None, help="run one case")
    ap.add_argument("--niter", type=int, default=None,
                    help="clean iterations instead of the default (10000); results under <case>-niter<N>")
    ap.add_argument("--bright", type=float, default=None,
                    help="fit bright sources above this many x the noise through the drifting beam (issue 19's "
                         "fix; the pipeline's default imaging_bright_source_snr is 50); results under <case>-bright")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    cases = [args.only] if args.only else ["drifting", "fixed"]
    results = {}
    path = out / f"results-{args.scale}.json"
    if path.exists():
        results = json.loads(path.read_text())
    for case in cases:
        d = out / args.scale / case
        d.mkdir(parents=True, exist_ok=True)
        group_id, files, truth_path, t_sim = simulate(d, scale=args.scale, fixed_beam=case == "fixed")
        print(f"[{case}] simulated {group_id} in {t_sim:.1f} s", flush=True)
        ms, t_conv = convert(d, group_id, files, reuse=np.isnan(t_sim))
        print(f"[{case}] converted in {t_conv:.1f} s", flush=True)
        result, t_img = image(d, ms, niter=args.niter, bright=args.bright)
        print(f"[{case}] imaged in {t_img:.1f} s ({result.grid.imsize} px, {result.grid.cell_arcsec:.2f}\")",
              flush=True)
        truth = json.loads(truth_path.read_text())
        t = time.perf_counter()
        m = measure(result, truth)
        m["wall_s"] = {"simulate": t_sim, "convert": t_conv, "image": t_img, "measure": time.perf_counter() - t,
                       "image_steps": result.timings}
        img_dir = ("img" if args.niter is None else f"img-niter{args.niter}") + ("" if args.bright is None else "-bright")
        m["imager_log"] = _imager_stop(out / args.scale / case / img_dir / f"group.{result.backend}.log")
        m["group_id"] = group_id
        m["pointing_dec_deg"] = truth["pointing_dec_deg"]
        key = (case if args.niter is None else f"{case}-niter{args.niter}") + ("" if args.bright is None else "-bright")
        results[key] = m
        path.write_text(json.dumps(results, indent=1, default=str))
        shutil.rmtree(d / "scratch", ignore_errors=True)
        print(json.dumps({k: v for k, v in m.items() if k != "wall_s"}, indent=1, default=str), flush=True)

    rows = [("restored peak (Jy)", "peak_jy", "{:.4f}"), ("expected apparent (Jy)", "expected_apparent_jy", "{:.4f}"),
            ("clean model flux (Jy)", "model_flux_jy", "{:.4f}"),
            ("max |res| within 3 beams (mJy)", "max_near_jy", "{:.3f}", 1e3),
            ("max |res| outside 3 beams (mJy)", "max_outside_jy", "{:.3f}", 1e3),
            ("  / peak", "max_outside_frac", "{:.2e}"),
            ("max |res| row/column (mJy)", "max_arms_jy", "{:.3f}", 1e3),
            ("max |res| elsewhere (mJy)", "max_elsewhere_jy", "{:.3f}", 1e3),
            ("rms res elsewhere (mJy)", "residual_rms_jy", "{:.4f}", 1e3)]
    for frac in THRESHOLDS:
        k = f"{frac:g}"
        rows += [(f"pixels > {k} peak: row/col", f"pixels_arms_{k}", "{:d}"),
                 (f"pixels > {k} peak: elsewhere", f"pixels_elsewhere_{k}", "{:d}"),
                 (f"peaks > {k} peak: row/col", f"peaks_arms_{k}", "{:d}"),
                 (f"peaks > {k} peak: elsewhere", f"peaks_elsewhere_{k}", "{:d}")]
    have = [c for c in ("drifting", "fixed") if c in results]
    if args.niter is not None:
        have = [c for c in results if c.endswith(f"-niter{args.niter}")] or have
    if args.bright is not None:
        have = ["drifting", "drifting-bright"] if "drifting-bright" in results else have
    print("\n| | " + " | ".join(have) + (" | drifting / fixed |" if len(have) == 2 else " |"))
    print("|---" * (len(have) + 1 + (len(have) == 2)) + "|")
    for row in rows:
        label, key, fmt = row[:3]
        scale = row[3] if len(row) > 3 else 1
        vals = [results[c][key] * scale if scale != 1 else results[c][key] for c in have]
        cells = [fmt.format(v) for v in vals]
        if len(have) == 2 and vals[1] is not None:
            cells.append(f"{vals[0] / vals[1]:.3g}" if vals[1] else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
