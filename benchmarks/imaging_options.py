"""One group MS imaged with several sets of imaging options, in one process, judged against the simulator's truth.

Where it sits: the image step alone (a calibrated group MS -> ``image_ms`` -> forced photometry), to choose
imaging settings by measurement: each variant is the settings' ``ImagingOptions`` with some fields replaced,
imaged (from CORRECTED_DATA unless ``--data-column data``) into its own directory. Printed per variant: wall time, the CPU of the imagers
(this process's children), the step's own timings, how the clean ended, and the pbcor peaks of the truth's
sources above 20 sigma (forced photometry at their positions) against their expected fluxes
(:func:`contimg.qa.truth_sky.truth_table`): median ratio, robust scatter, reduced chi2 by SNR, the worst.
Run variants in alternation (``a b a b``) on a noisy machine: their ratios, not their seconds, are the result.

Usage::

    .venv/bin/python benchmarks/imaging_options.py MS TRUTH_JSON WORKDIR "mgain=0.95,bright_source_snr=300" \\
        "mgain=0.9,bright_source_snr=50"
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNR_BINS = ((20.0, 50.0), (50.0, np.inf))


def parse_variant(text: str) -> dict:
    """``"mgain=0.9,bright_source_snr=50"`` -> ``{"mgain": 0.9, "bright_source_snr": 50}`` (Python literals)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = ast.literal_eval(value.strip())
    return out


def run_variant(ms: Path, truth: Path, workdir: Path, variant: str, tag: str, *, data_column: str = "corrected") -> dict:
    from contimg.config import Settings
    from contimg.imaging.image import ImagingOptions, image_ms
    from contimg.photometry.forced import measure
    from contimg.qa.truth_sky import truth_table

    options = dataclasses.replace(ImagingOptions.from_settings(Settings(), data_column=data_column),
                                  **parse_variant(variant))
    out = workdir / tag
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = image_ms(ms, out / "img", options=options, work_dir=out / "work", log_dir=out / "logs")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sky = {s["name"]: s for s in json.loads(truth.read_text())["sky"]}
    table = truth_table(truth, ms, result.products, noise_jy=result.predicted_noise_jy)
    keep = np.asarray(table["expected_snr"]) > 20
    names = [str(n) for n in np.asarray(table["name"])[keep]]
    expected = np.asarray(table["expected_flux_jy"])[keep]
    forced = measure(result.products["pbcor"], [sky[n]["ra_deg"] for n in names],
                     [sky[n]["dec_deg"] for n in names], pb_fits=result.products["pb"])
    peak, rms = np.asarray(forced.peak_jy), np.asarray(forced.rms_jy)
    return {"variant": variant, "wall_s": wall, "children_cpu_s": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime), "timings": result.timings,
            "clean": result.imager.get("clean"), "names": names, "ratio": peak / expected,
            "chi": (peak - expected) / rms, "snr": peak / rms}


def report(r: dict) -> None:
    ratio, chi, snr = r["ratio"], r["chi"], r["snr"]
    good = np.isfinite(ratio)
    median = float(np.median(ratio[good]))
    scatter = 1.4826 * float(np.median(np.abs(ratio[good] - median)))
    print(f"{r['variant']}: wall {r['wall_s']:.1f} s, imagers' CPU {r['children_cpu_s']:.1f} s; "
          f"{ {k: round(v, 1) for k, v in r['timings'].items()} }")
    print(f"  clean: {r['clean']}")
    parts = []
    for lo, hi in SNR_BINS:
        sel = good & (snr >= lo) & (snr < hi)
        parts.append(f"SNR {lo:g}-{hi:g}: chi2 {np.mean(chi[sel] ** 2) if sel.any() else np.nan:.2f} (n {int(sel.sum())})")
    bins = ", ".join(parts)
    print(f"  {int(good.sum())} sources above 20 sigma: pbcor peak / truth median {median:.4f}, robust scatter "
          f"{scatter:.4f}, range {np.min(ratio[good]):.3f}-{np.max(ratio[good]):.3f}; {bins}")
    for i in np.argsort(-np.abs(np.where(good, chi, 0)))[:5]:
        print(f"    {r['names'][i]:16s} SNR {snr[i]:7.0f}  ratio {ratio[i]:.3f}  {chi[i]:+.1f} sigma")


def main(argv: list[str] | None = None) -> int:
    from contimg.errors import ContimgError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ms", type=Path, help="a calibrated group MS (CORRECTED_DATA written)")
    parser.add_argument("truth", type=Path, help="the group's truth sidecar (simulator)")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("variants", nargs="+", help='ImagingOptions fields to replace, e.g. "mgain=0.9,niter=5000"')
    parser.add_argument("--data-column", default="corrected", choices=("corrected", "data"))
    args = parser.parse_args(argv)
    if not args.truth.is_file():
        print(f"{args.truth}: no such truth sidecar", file=sys.stderr)
        return 2
    for i, variant in enumerate(args.variants):
        try:
            report(run_variant(args.ms.resolve(), args.truth.resolve(), args.workdir.resolve(), variant, f"v{i}",
                               data_column=args.data_column))
        except (ContimgError, ValueError, SyntaxError, TypeError) as err:  # a bad MS, or a bad variant
            print(f"{variant}: {err}", file=sys.stderr)
            return 2
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
