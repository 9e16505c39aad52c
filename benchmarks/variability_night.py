"""A simulated night with injected variables through the whole pipeline, judged against the truth (issue 20).

Where it sits: file arrival to light curves. ``contimg demo --variables`` simulates a night
of consecutive groups (J0834+5534 transiting the middle one; a flare, a scattering dip, a
drift and two constant 1 Jy controls, ``SIMVAR_*``, among the field population), drops it
into incoming and runs the flows (ingest, calibrator, targets: flag, applycal, self-cal,
image). Each group image is then measured by forced photometry
(:func:`tasks.photometry.photometer_group`) at the positions of every source of the truth
sidecars (a reference list of names and positions only: no flux scale), and the catalog's
``variability`` view is read at the default thresholds.

Printed, against the truth (:func:`contimg.qa.truth_sky.truth_table`: each source's expected
pb-corrected flux in that image, the light curve included):

* constant sources: reduced chi2 of ``(peak - expected) / rms`` over all unflagged epochs,
  and by SNR bin (issue 20: 0.7-1.5);
* each variable: its largest deviation from its injected light curve, in sigma (issue 20:
  within 2 sigma at every epoch);
* the candidates at the default thresholds (issue 20: the three variables, no constant).

Usage::

    .venv/bin/python benchmarks/variability_night.py --workdir /tmp/night24            # simulate and run 24
    .venv/bin/python benchmarks/variability_night.py --workdir /tmp/night24 --groups 24  # re-judge a run night
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIABLES = ("SIMVAR_FLARE", "SIMVAR_DIP", "SIMVAR_DRIFT")


def truth_reference(night: Path, out: Path, *, fluxes: bool = False) -> Path:
    """A reference list of every source in the night's truth sidecars: name, ra_deg, dec_deg, and with
    ``fluxes`` the 1.4 GHz flux density of each constant source (``flux_jy``, empty for the variables), as
    an external catalog (NVSS, say) would give them, for the per-image flux scale."""
    rows: dict[str, tuple[float, float, str]] = {}
    for sidecar in sorted(night.glob("*_truth.json")):
        for s in json.loads(sidecar.read_text())["sky"]:
            flux = "" if not fluxes or s["name"] in VARIABLES else repr(float(s["flux_jy"]))
            rows[s["name"]] = (s["ra_deg"], s["dec_deg"], flux)
    out.write_text("name,ra_deg,dec_deg,flux_jy\n" + "".join(f"{n},{r!r},{d!r},{f}\n" for n, (r, d, f) in rows.items()))
    return out


def judge(workdir: Path, *, fluxes: bool = False, min_snr: float | None = None) -> dict:
    from catalog import query as cq
    from contimg import naming
    from contimg.config import load_settings
    from contimg.qa.truth_sky import truth_table
    from contimg.variability import metrics
    from tasks.photometry import group_products, photometer_group

    settings = load_settings(environ={}, base_dir=workdir)
    if min_snr is not None:
        settings = dataclasses.replace(settings, photometry_flux_scale_min_snr=min_snr)
    reference = truth_reference(workdir / "night", workdir / "truth-reference.csv", fluxes=fluxes)
    images = cq.query(settings.catalog_dir, "SELECT group_id, arg_max(noise_jy, recorded_at) AS noise_jy FROM images "
                                            "WHERE type = 'pbcor' GROUP BY group_id ORDER BY group_id").to_pylist()
    dev: dict[str, list[tuple[str, float, float, float]]] = {}
    constants: list[tuple[float, float]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    scales: list[tuple[str, float, str]] = []
    for image in images:
        group_id = image["group_id"]
        done = photometer_group(settings, group_id, reference=reference)
        products = group_products(settings, group_id)  # the group's latest image, the one measured
        expected = truth_table(naming.truth_path(settings.incoming_dir, group_id),
                               naming.ms_path(settings.products_dir, group_id), products, noise_jy=image["noise_jy"])
        expected = dict(zip(expected["name"], expected["expected_flux_jy"]))
        scales.append((group_id, done.scale.factor, done.scale.status))
        for row in done.rows:
            if row["flags"] or row["source_name"] not in expected:
                continue
            sigma = (row["peak_jy"] - expected[row["source_name"]]) / row["rms_jy"]
            if row["source_name"] in VARIABLES:
                dev.setdefault(row["source_name"], []).append(
                    (group_id, row["peak_jy"], float(expected[row["source_name"]]), float(sigma)))
            else:
                constants.append((float(sigma), row["snr"]))
                curves.setdefault(row["source_name"], []).append((row["peak_jy"], row["rms_jy"]))
    d, snr = np.array([c[0] for c in constants]), np.array([c[1] for c in constants])
    variability = cq.query(settings.catalog_dir, "SELECT * FROM variability ORDER BY eta DESC").to_pylist()
    etas = {n: metrics(*zip(*c))["eta"] for n, c in curves.items() if len(c) >= 10}
    return {"n_images": len(images), "chi2": float(np.mean(d ** 2)), "n_constant_epochs": len(d),
            "eta_constants": etas, "scales": scales,
            "chi2_by_snr": {f"{lo}-{hi}": (int(m.sum()), float(np.mean(d[m] ** 2)), float(np.mean(d[m])))
                            for lo, hi in ((0, 10), (10, 50), (50, 1e9))
                            if (m := (snr >= lo) & (snr < hi)).any()},
            "variables": dev, "variability": variability}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the demo's base directory")
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--scale", default="small", choices=("small", "medium", "full"))
    parser.add_argument("--reference-fluxes", action="store_true",
                        help="give the constant sources' true 1.4 GHz fluxes in the reference list (as an external "
                             "catalog would): each image is then normalised by the per-image flux scale")
    parser.add_argument("--flux-scale-min-snr", type=float, default=None,
                        help="photometry_flux_scale_min_snr for this judgement (default the setting's)")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if not (workdir / "catalog" / "images").is_dir():
        from contimg_cli.main import main as contimg_main

        code = contimg_main(["demo", "--groups", str(args.groups), "--scale", args.scale, "--variables",
                             "--workdir", str(workdir)])
        if code:
            return code  # the demo said why
    result = judge(workdir, fluxes=args.reference_fluxes, min_snr=args.flux_scale_min_snr)
    print(f"\n{result['n_images']} group images; constant sources: reduced chi2 {result['chi2']:.2f} over "
          f"{result['n_constant_epochs']} unflagged epochs")
    for band, (n, chi2, mean) in result["chi2_by_snr"].items():
        print(f"  SNR {band}: {n} epochs, reduced chi2 {chi2:.2f}, mean deviation {mean:+.2f} sigma")
    etas = np.array(list(result["eta_constants"].values()))
    if len(etas):
        print(f"constant sources with >= 10 epochs: {len(etas)}; eta (reduced chi2 about their own weighted mean) "
              f"median {np.median(etas):.2f}, mean {etas.mean():.2f}, 0.7-1.5 for {np.mean((etas >= 0.7) & (etas <= 1.5)):.0%}, "
              f"max {etas.max():.1f} ({max(result['eta_constants'], key=result['eta_constants'].get)})")
    statuses = {}
    for _, factor, status in result["scales"]:
        statuses.setdefault(status, []).append(factor)
    print("flux scales: " + "; ".join(f"{k} {len(v)} ({min(v):.3f}-{max(v):.3f})" for k, v in statuses.items()))
    for name, epochs in sorted(result["variables"].items()):
        worst = max(epochs, key=lambda e: abs(e[3]))
        within = sum(abs(e[3]) <= 2 for e in epochs)
        print(f"  {name}: {within}/{len(epochs)} epochs within 2 sigma of the injected curve; worst {worst[3]:+.1f} "
              f"sigma at {worst[0]} ({worst[1]:.3f} Jy against {worst[2]:.3f})")
    candidates = [v for v in result["variability"] if v["is_candidate"]]
    print("candidates at the default thresholds:")
    for v in candidates:
        kind = "injected variable" if v["source_name"] in VARIABLES else "CONSTANT"
        print(f"  {v['source_name']:<16} {kind:<17} epochs {v['n_epochs']}, V {v['v']:.3f}, eta {v['eta']:.1f}")
    missed = [n for n in VARIABLES if n not in {v["source_name"] for v in candidates}]
    for v in result["variability"]:
        if v["source_name"] in missed:
            print(f"  missed: {v['source_name']} epochs {v['n_epochs']}, V {v['v']:.3f}, eta {v['eta']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
