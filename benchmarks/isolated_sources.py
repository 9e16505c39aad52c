"""Isolated 1 Jy sources, noise-free and uncorrupted, through conversion and imaging (issue 20).

Where it sits: the imaging step alone (group files -> MS -> image_ms -> forced photometry), on data where
the right answer is exact: every source 1 Jy, flat spectrum, placed at chosen offsets from the pointing so
that no two share a row or a column. Whatever the image gives away from 1.000 (pb-corrected peak over the
truth) is the imager's, not calibration's or noise's. It separates the sparse-array flux errors of the
variability night (benchmarks/variability_night.py) from the rest of the pipeline, and prints how
WSClean's last minor loop ended (a diverged clean stops at the iteration limit on a residual peak far over
its threshold: :func:`contimg.imaging.backends.clean_stop`).

Usage::

    .venv/bin/python benchmarks/isolated_sources.py --scale medium --workdir /tmp/iso
    .venv/bin/python benchmarks/isolated_sources.py --scale small --workdir /tmp/iso --variants default,pipeline
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (east, north) offsets from the pointing, deg: no two sources on one row or column of the image
OFFSETS_DEG = ((0.0, 0.0), (0.5, -0.4), (-0.6, 0.5), (1.0, 0.9), (-1.1, -0.8), (0.3, 1.2), (0.8, -1.1),
               (-0.35, -0.25))
START = "2026-11-25T12:12:58"
DEC_DEG = 54.6


def simulate_and_convert(workdir: Path, scale: str) -> tuple[Path, list]:
    """The group MS and its sources (simulated once per work directory)."""
    from astropy.time import Time

    from contimg.conversion.convert import convert_group
    from contimg.simulate import scale_preset, simulate_group
    from contimg.simulate.corruptions import Corruptions
    from contimg.simulate.truth import load_truth
    from contimg.sky.source import Source

    ms, listing = workdir / "group.ms", workdir / "sources.json"
    if ms.exists() and listing.exists():
        return ms, [Source(**s) for s in json.loads(listing.read_text())]
    clean = Corruptions(delays=False, bandpass=False, gains=False, rfi=False, noise=False, dead_antennas=0,
                        flagged_antennas=0)
    preset = scale_preset(scale)
    probe = simulate_group(workdir / "probe", Time(START), pointing_dec_deg=DEC_DEG, field=None,
                           sources=[Source("probe", 0.0, DEC_DEG, 1e-3)], corruptions=clean, subbands=[0],
                           **{k: v for k, v in preset.items() if k != "n_subbands"})
    ra0 = float(np.degrees(np.median(load_truth(probe.truth_path)["lst_rad"])))  # the meridian at mid-group
    shutil.rmtree(workdir / "probe")
    sources = [Source(f"ISO{i}", (ra0 + east / np.cos(np.radians(DEC_DEG + north))) % 360.0, DEC_DEG + north, 1.0)
               for i, (east, north) in enumerate(OFFSETS_DEG)]
    group = simulate_group(workdir / "incoming", Time(START), pointing_dec_deg=DEC_DEG, field=None, sources=sources,
                           corruptions=clean, **preset)
    done = convert_group(group.group_id, dict(zip(group.subbands, group.paths)), products_dir=workdir / "products",
                         scratch_dir=workdir / "scratch")
    shutil.move(str(done.ms_path), ms)
    listing.write_text(json.dumps([s.__dict__ for s in sources]))
    return ms, sources


def measure_variant(ms: Path, sources: list, out: Path, variant: str) -> dict:
    from contimg.config import Settings
    from contimg.imaging.backends import clean_stop
    from contimg.imaging.image import ImagingOptions, image_ms
    from contimg.photometry.forced import measure

    options = (ImagingOptions.from_settings(Settings(), data_column="data") if variant == "pipeline"
               else ImagingOptions(data_column="data"))
    result = image_ms(ms, out / "img", options=options)
    logs = sorted(out.glob("*.wsclean.log"))
    stop = clean_stop(logs[-1].read_text(errors="replace")) if logs else {}
    forced = measure(result.products["pbcor"], [s.ra_deg for s in sources], [s.dec_deg for s in sources],
                     pb_fits=result.products["pb"])
    return {"variant": variant, "ratios": [float(x) for x in forced.peak_jy], "pb": [float(x) for x in forced.pb_response],
            "beam": result.restoring_beam_arcsec, "cell": result.grid.cell_arcsec, "clean": stop,
            "selfcal": result.selfcal.get("status")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--scale", default="medium", choices=("small", "medium", "full"))
    parser.add_argument("--variants", default="default,pipeline",
                        help="comma-separated: default (ImagingOptions(): one pass, no self-cal), pipeline "
                             "(the settings' options: self-cal, bright sources)")
    args = parser.parse_args(argv)
    workdir = (args.workdir / args.scale).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ms, sources = simulate_and_convert(workdir, args.scale)
    print(f"{args.scale}: {len(sources)} isolated 1 Jy sources, noise-free, uncorrupted ({ms})")
    for variant in args.variants.split(","):
        r = measure_variant(ms, sources, workdir / variant, variant)
        ratios = np.array(r["ratios"])
        print(f"{variant}: cell {r['cell']}\", beam {r['beam'][0]:.1f}\" x {r['beam'][1]:.1f}\", self-cal "
              f"{r['selfcal']}; clean stopped on {1e3 * r['clean'].get('stop_peak_jy', np.nan):.1f} mJy "
              f"({r['clean'].get('reason')}), threshold {1e3 * r['clean'].get('threshold_jy', np.nan):.1f} mJy, "
              f"diverged {r['clean'].get('diverged')}")
        print(f"  pbcor peak / truth: median {np.nanmedian(ratios):.3f}, range {np.nanmin(ratios):.3f}-"
              f"{np.nanmax(ratios):.3f}")
        for (east, north), ratio, pb in zip(OFFSETS_DEG, ratios, r["pb"]):
            print(f"    offset ({east:+.2f}, {north:+.2f}) deg  pb {pb:.3f}  peak/truth {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
