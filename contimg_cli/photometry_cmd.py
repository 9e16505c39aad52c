"""``contimg photometry IMAGE_OR_GROUP``: forced photometry of one image at a reference list's positions.

Examples::

    contimg photometry 2026-11-25T08:00:00                      # a group's pbcor image, the default reference
    contimg photometry field-pbcor.fits --reference refs.csv --out phot.csv --no-record

IMAGE_OR_GROUP is a FITS image (a group's ``-pbcor.fits``, whose ``-pb.fits`` beside
it is used when present, or a mosaic, whose ``-noise.fits`` beside it is) or a
group id (its pbcor image is found by naming). The reference list is ``--reference``
(Parquet or CSV: name, ra_deg, dec_deg[, flux_jy]), else the
``photometry_reference`` setting, else the pipeline's own detections in the catalog
(:func:`tasks.photometry.default_reference`). Prints one line per position and the
image's flux scale; records the positions on the image in the catalog's
``photometry`` table unless ``--no-record``.
"""

from __future__ import annotations

import math
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "photometry", help="forced photometry of an image or a group at a reference list's positions",
        description="Measure the primary-beam-corrected peak brightness (the image interpolated at the position), "
        "the local rms, SNR, primary-beam response and flags at every reference position of a FITS image "
        "or a group's pbcor image; normalise the image's flux scale against bright references with a flux; "
        "print the table and record it in the catalog (table photometry).")
    p.add_argument("target", metavar="IMAGE_OR_GROUP", help="a FITS image, or a group id YYYY-MM-DDTHH:MM:SS")
    p.add_argument("--reference", type=Path, default=None, metavar="FILE",
                   help="reference list, Parquet or CSV with name, ra_deg, dec_deg[, flux_jy] (default: the "
                   "photometry_reference setting, else the pipeline's own detections in the catalog)")
    p.add_argument("--pb", type=Path, default=None, metavar="FILE",
                   help="primary beam of a FITS image (default: its -pb.fits beside a -pbcor.fits)")
    p.add_argument("--noise", type=Path, default=None, metavar="FILE",
                   help="noise map of a mosaic (default: its -noise.fits beside it)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="also write the table as CSV")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not record the measurements in the catalog")
    p.set_defaults(handler=run)


def _sibling(image: Path, kind: str) -> Path | None:
    """``<prefix>-<kind>.fits`` beside ``<prefix>-<anything>.fits``, when it exists."""
    prefix, dash, _ = image.name.rpartition("-")
    if not dash:
        return None
    path = image.with_name(f"{prefix}-{kind}.fits")
    return path if path.is_file() and path != image else None


def run(args) -> int:
    from contimg import naming
    from contimg.config import load_settings
    from contimg.errors import InvalidInputError
    from tasks import photometry as tp

    settings = load_settings()
    target = Path(args.target)
    if args.out is not None and args.out.is_dir():
        raise IsADirectoryError(f"--out {args.out} is a directory; give a file name (FILE.csv)")
    if target.suffix.lower() in (".fits", ".fit", ".fts") or target.exists():
        if not target.is_file():
            raise InvalidInputError(f"{target}: no such image file")
        noise = args.noise or _sibling(target, "noise")
        pb = args.pb or (None if noise else _sibling(target, "pb"))
        group_id = naming.group_id_from_stem(target.name.rpartition("-")[0])
        kind = "mosaic" if noise is not None else "group"
        done = tp.photometer(settings, target, image_kind=kind, group_id=group_id if kind == "group" else None,
                             mosaic_id=target.name.rpartition("-")[0] if kind == "mosaic" else None,
                             pb_fits=pb, noise_fits=noise, reference=args.reference, record=args.record)
    else:
        done = tp.photometer_group(settings, args.target, reference=args.reference, record=args.record)
    if done is None:
        raise InvalidInputError(f"no reference sources: the catalog at {settings.catalog_dir} has no detections "
                                "covering the image; give a reference list with --reference FILE "
                                "(CSV or Parquet: name, ra_deg, dec_deg[, flux_jy])")
    _print(done)
    if args.out is not None:
        _write_csv(done, args.out)
        print(f"wrote {args.out}")
    if args.record:
        print(f"recorded {len(done.rows)} rows in {settings.catalog_dir} (table photometry)")
    return 0


def _columns(done) -> dict[str, list]:
    f, ref = done.forced, done.reference
    return {"source_name": [str(n) for n in ref.name], "ra_deg": list(ref.ra_deg), "dec_deg": list(ref.dec_deg),
            "peak_jy": list(f.peak_jy), "rms_jy": list(f.rms_jy),
            "snr": list(f.snr), "pb_response": list(f.pb_response), "flux_scale": [done.scale.factor] * len(ref),
            "flags": [";".join(x) for x in f.flags]}


def _fmt(value: float, scale: float = 1.0, spec: str = ".3f") -> str:
    return "-" if not math.isfinite(value) else format(value * scale, spec)


def _print(done) -> None:
    cols = _columns(done)
    print(f"{done.image_path}: {len(done.reference)} reference positions ({done.reference.label})")
    print(f"{'source':<22} {'ra_deg':>10} {'dec_deg':>9} {'peak_mJy':>10} {'rms_mJy':>8} "
          f"{'snr':>7} {'pb':>5}  flags")
    for i in range(len(done.reference)):
        print(f"{cols['source_name'][i]:<22} {cols['ra_deg'][i]:>10.5f} {cols['dec_deg'][i]:>9.5f} "
              f"{_fmt(cols['peak_jy'][i], 1e3):>10} "
              f"{_fmt(cols['rms_jy'][i], 1e3):>8} {_fmt(cols['snr'][i], 1, '.1f'):>7} "
              f"{_fmt(cols['pb_response'][i], 1, '.2f'):>5}  {cols['flags'][i]}")
    s = done.scale
    print(f"flux scale {s.factor:.4f} ({s.status}, {s.n_used} references"
          + (f", scatter {100 * s.scatter:.1f} %" if math.isfinite(s.scatter) else "") + ")")


def _write_csv(done, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table(_columns(done)), path)
