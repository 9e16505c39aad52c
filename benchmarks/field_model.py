"""A calibrator group and one target group through the pipeline's commands, judged against the truth: what the
calibration model does to a target group (issue 20).

Where it sits: file arrival to one target image, through the commands an operator runs (``contimg convert``,
``calibrate``, ``flag``, ``applycal``, ``image``) in a fresh base directory. The two groups are those of the demo
night (``contimg demo --variables``, medium scale by default): the calibrator group (J0834+5534 at transit, the
night's middle, index 12 of 24) and a target group (``--target-index``, default 5: 9 min before, the 1 Jy
SIMVAR_DIP 1.3 deg due south of J0834+5534). Printed: the pbcor peak of every truth source above 30 sigma against
its expected flux (:func:`contimg.qa.truth_sky.truth_table`, light curves included), and what the field model
found.

Variants, each into its own ``--workdir``:

* ``--corruptions gains=0,bandpass=0,delays=0,rfi=0``: simulate without them (``Corruptions`` fields);
* ``--field-model-snr 0``: the catalog model only (``calibration_field_model_snr``);
* ``--calibration-catalog FILE``: the calibrate step's catalog (e.g. the truth sky written as a catalog, the
  complete model).

Usage::

    .venv/bin/python benchmarks/field_model.py --workdir /tmp/fm_default
    .venv/bin/python benchmarks/field_model.py --workdir /tmp/fm_catalog --field-model-snr 0 \\
        --corruptions gains=0,bandpass=0,delays=0,rfi=0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_GROUPS = 24
CALIBRATOR_INDEX = N_GROUPS // 2


def corruptions_from(text: str):
    """``"gains=0,rfi=0"`` -> ``Corruptions(gains=False, rfi=False)``."""
    import dataclasses

    from contimg.simulate.corruptions import Corruptions

    kinds = {f.name: f.type for f in dataclasses.fields(Corruptions)}
    values = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in kinds:
            raise ValueError(f"unknown corruption {key!r}; known: {sorted(kinds)}")
        values[key] = value == "1" if kinds[key] in (bool, "bool") else float(value) if "." in value else int(value)
    return Corruptions(**values)


def simulate(workdir: Path, target_index: int, scale: str, corruptions) -> dict:
    """The demo night's calibrator group and one target group (:func:`contimg_cli.demo_cmd.night_plan`), with
    ``corruptions``, into ``workdir/incoming``: index -> the simulated group."""
    from contimg.simulate import simulate_group
    from contimg_cli.demo_cmd import DEMO_DEC_DEG, night_plan

    preset, starts, variables = night_plan(N_GROUPS, scale, variables=True)
    return {index: simulate_group(workdir / "incoming", starts[index], pointing_dec_deg=DEMO_DEC_DEG, seed=0,
                                  variables=variables, corruptions=corruptions, **preset)
            for index in (CALIBRATOR_INDEX, target_index)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a new base directory")
    parser.add_argument("--target-index", type=int, default=5, help=f"0-{N_GROUPS - 1}, not {CALIBRATOR_INDEX}")
    parser.add_argument("--scale", default="medium", choices=("small", "medium", "full"))
    parser.add_argument("--corruptions", default="", help='Corruptions fields, e.g. "gains=0,rfi=0"')
    parser.add_argument("--field-model-snr", default=None, help="calibration_field_model_snr (0: catalog only)")
    parser.add_argument("--calibration-catalog", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 <= args.target_index < N_GROUPS or args.target_index == CALIBRATOR_INDEX:
        print(f"--target-index {args.target_index}: a target group is 0-{N_GROUPS - 1} but not {CALIBRATOR_INDEX}",
              file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    if (workdir / "catalog").exists():
        print(f"{workdir} has a catalog already: give a new directory", file=sys.stderr)
        return 2
    try:
        corruptions = corruptions_from(args.corruptions)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2

    from contimg import naming
    from contimg.config import load_settings
    from contimg.photometry.forced import measure
    from contimg.qa.truth_sky import truth_table

    groups = simulate(workdir, args.target_index, args.scale, corruptions)
    env = dict(os.environ, CONTIMG_BASE_DIR=str(workdir))
    if args.field_model_snr is not None:
        env["CONTIMG_CALIBRATION_FIELD_MODEL_SNR"] = args.field_model_snr
    settings = load_settings(base_dir=workdir, environ={})
    cal, target = groups[CALIBRATOR_INDEX], groups[args.target_index]
    cal_ms, target_ms = (naming.ms_path(settings.products_dir, g.group_id) for g in (cal, target))
    steps = [("convert", str(cal.paths[0])), ("convert", str(target.paths[0])), ("calibrate", str(cal_ms)),
             ("flag", str(target_ms)), ("applycal", str(target_ms)), ("image", str(target_ms))]
    for step in steps:
        step_env = env
        if step[0] == "calibrate" and args.calibration_catalog:
            step_env = dict(env, CONTIMG_CALIBRATOR_CATALOG=str(args.calibration_catalog.resolve()))
        done = subprocess.run([sys.executable, "-m", "contimg_cli", *step], env=step_env, capture_output=True,
                              text=True)
        if done.returncode:
            print(f"contimg {' '.join(step)} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1

    from catalog import query as cq

    field = cq.query(settings.catalog_dir, "SELECT value_text FROM qa_metrics WHERE stage = 'calibrate' AND "
                     "metric = 'field_model_sources'").to_pylist()
    if field:
        found = json.loads(field[-1]["value_text"])
        print(f"field model: {len(found)} source(s): " + ", ".join(f"{s['name']} {s['flux_jy']:.3f} Jy at "
                                                                  f"({s['ra_deg']:.3f}, {s['dec_deg']:.3f})"
                                                                  for s in found))
    else:
        print("field model: not made")
    prefix = naming.image_prefix(settings.products_dir, target.group_id)
    products = {k: naming.image_product_path(prefix, k) for k in ("pbcor", "pb")}
    table = truth_table(target.truth_path, target_ms, products, noise_jy=1.0)
    sky = {s["name"]: s for s in json.loads(Path(target.truth_path).read_text())["sky"]}
    names = list(table["name"])
    expected = dict(zip(names, table["expected_flux_jy"]))
    forced = measure(products["pbcor"], [sky[n]["ra_deg"] for n in names], [sky[n]["dec_deg"] for n in names],
                     pb_fits=products["pb"])
    print(f"target group {target.group_id}: pbcor peak / expected, sources above 30 sigma")
    for name, peak, rms in sorted(zip(names, forced.peak_jy, forced.rms_jy), key=lambda x: -x[1] / x[2]):
        if peak / rms > 30:
            print(f"  {name:16s} SNR {peak / rms:6.0f}  ratio {peak / expected[name]:.3f}  "
                  f"{(peak - expected[name]) / rms:+5.1f} sigma")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
