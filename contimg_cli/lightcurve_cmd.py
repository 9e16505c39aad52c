"""``contimg lightcurve SOURCE``: a source's light curve from the catalog's forced photometry, and a plot.

Examples::

    contimg lightcurve J083412.34+553401.2
    contimg lightcurve 128.73,55.57 --plot j0834.png          # the nearest source within 15 arcsec
    contimg lightcurve SIMVAR_FLARE --start 2026-11-25T12:00 --end 2026-11-25T13:00 --plot flare.png

SOURCE is a name of the ``photometry`` table (the reference catalog's), or
``RA,Dec`` in degrees (ICRS): the nearest source within ``--radius-arcsec``.
The table lists the source's epochs, oldest first (its latest photometry row per
image): MJD, UTC, peak and rms (Jy/beam, primary-beam corrected, flux scale
applied), SNR, primary beam response, flags and the image. The first line gives
its variability metrics over the good group epochs (the catalog's
``variability`` view at the ``variability_*`` settings; docs/catalog.md).
``--plot`` writes a PNG: error bars of 1 sigma, flagged epochs as open grey
markers, the weighted mean dashed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from contimg_cli.main import utc_time


def sky_position(text: str) -> tuple[float, float] | None:
    """``"RA,Dec"`` in degrees as floats, or None when ``text`` is not two numbers."""
    parts = text.split(",")
    if len(parts) != 2:
        return None
    try:
        ra, dec = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (math.isfinite(ra) and -90.0 <= dec <= 90.0):
        raise argparse.ArgumentTypeError(f"{text!r}: Dec must be -90 to 90 degrees")
    return ra % 360.0, dec


def register(subparsers) -> None:
    p = subparsers.add_parser("lightcurve", help="a source's light curve (forced photometry) and a PNG plot",
                              description="Print a source's epochs from the catalog's forced photometry (its "
                                          "latest row per image, oldest first) and its variability metrics; "
                                          "--plot writes a PNG. SOURCE is a name of the photometry table or "
                                          "RA,Dec in degrees (the nearest source within --radius-arcsec).")
    p.add_argument("source", metavar="SOURCE", help='a source name, or "RA,Dec" in degrees (ICRS)')
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write the plot here")
    p.add_argument("--start", type=utc_time, default=None, help="only epochs at or after this UTC time")
    p.add_argument("--end", type=utc_time, default=None, help="only epochs at or before this UTC time")
    p.add_argument("--radius-arcsec", type=float, default=15.0,
                   help="match radius of an RA,Dec SOURCE, arcsec (default 15)")
    p.add_argument("--kind", choices=("group", "mosaic", "all"), default="group",
                   help="images measured: group images (default, what the metrics use), mosaics, or all")
    p.add_argument("--catalog-dir", default=None, help="catalog root (default: the catalog_dir setting)")
    p.set_defaults(handler=run)


def resolve(catalog_dir: Path, text: str, radius_arcsec: float) -> str:
    """The ``photometry`` source name that ``text`` (a name or ``RA,Dec``) means; InvalidInputError if none."""
    from catalog import variability as cv
    from contimg.errors import InvalidInputError

    known = cv.source_names(catalog_dir)
    if not known:
        raise InvalidInputError(f"the catalog {catalog_dir} has no photometry yet (no light curves): "
                                f"forced photometry writes them (contimg photometry)")
    try:
        position = sky_position(text)
    except argparse.ArgumentTypeError as exc:
        raise InvalidInputError(str(exc)) from None
    if position is None:
        names = [s["source_name"] for s in known]
        if text in names:
            return text
        similar = [n for n in names if text.lower() in n.lower()][:5]
        hint = f"; did you mean {', '.join(similar)}?" if similar else f" ({len(names)} sources in the catalog)"
        raise InvalidInputError(f"no source named {text!r} in the photometry table{hint}")
    found = cv.nearest_source(catalog_dir, *position)
    if found is None or found[1] > radius_arcsec:
        where = "" if found is None else f"; the nearest is {found[0]['source_name']}, {found[1]:.1f} arcsec away"
        raise InvalidInputError(f"no source within {radius_arcsec:g} arcsec of RA {position[0]:.5f}, "
                                f"Dec {position[1]:.5f}{where}")
    return found[0]["source_name"]


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def run(args) -> int:
    from astropy.time import Time

    from catalog import variability as cv
    from contimg.config import load_settings
    from contimg.errors import InvalidInputError
    from contimg.variability import VariabilityThresholds

    settings = load_settings()
    catalog_dir = Path(args.catalog_dir) if args.catalog_dir else Path(settings.catalog_dir)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InvalidInputError(f"--plot {args.plot}: give a .png file name")
    if not args.radius_arcsec > 0:
        raise InvalidInputError(f"--radius-arcsec must be > 0, got {args.radius_arcsec}")
    start = Time(args.start, scale="utc").mjd if args.start else None
    end = Time(args.end, scale="utc").mjd if args.end else None
    if start is not None and end is not None and end < start:
        raise InvalidInputError(f"--end {args.end} is before --start {args.start}")
    name = resolve(catalog_dir, args.source, args.radius_arcsec)
    epochs = cv.light_curve(catalog_dir, name, start_mjd=start, end_mjd=end,
                            image_kind=None if args.kind == "all" else args.kind)
    thresholds = VariabilityThresholds.from_settings(settings)
    stats = cv.variability(catalog_dir, **thresholds.to_dict(), source_name=name)
    flagged = [bool(e["flags"]) for e in epochs]
    print(f"{name}: {len(epochs)} epoch(s) ({args.kind} images), {len(epochs) - sum(flagged)} unflagged")
    if stats:
        s = stats[0]
        print(f"  over all good group epochs: n {s['n_epochs']}, weighted mean {_fmt(s['wmean_jy'], '.4f')} Jy, "
              f"V {_fmt(s['v'], '.3f')}, eta {_fmt(s['eta'], '.2f')}, max deviation "
              f"{_fmt(s['max_dev_sigma'], '.1f')} sigma, candidate {'YES' if s['is_candidate'] else 'no'} "
              f"(eta >= {thresholds.eta_min:g}, V >= {thresholds.v_min:g}, >= {thresholds.min_epochs} epochs, "
              f"max SNR >= {thresholds.min_snr:g})")
    if not epochs:
        print("  no epochs in that time range" if (start or end) else "  no epochs")
    else:
        times = Time([e["mid_mjd"] for e in epochs], format="mjd", scale="utc")
        print(f"{'mid_mjd':>12}  {'utc':19}  {'peak_jy':>9}  {'rms_jy':>8}  {'snr':>7}  {'pb':>5}  "
              f"{'flags':14}  image")
        for e, t in zip(epochs, times):
            print(f"{e['mid_mjd']:12.6f}  {t.isot[:19]}  {_fmt(e['peak_jy'], '9.4f')}  {_fmt(e['rms_jy'], '8.4f')}  "
                  f"{_fmt(e['snr'], '7.1f')}  {_fmt(e['pb_response'], '5.2f')}  {','.join(e['flags'] or []) or '-':14}"
                  f"  {e['image_path']}")
    if args.plot is not None:
        from contimg.report.plots import lightcurve_plot

        times = Time([e["mid_mjd"] for e in epochs], format="mjd", scale="utc").to_datetime() if epochs else []
        title = name if not stats else (f"{name}: V {_fmt(stats[0]['v'], '.3f')}, eta {_fmt(stats[0]['eta'], '.1f')}"
                                        f"{', candidate' if stats[0]['is_candidate'] else ''}")
        lightcurve_plot(args.plot, list(times), [e["peak_jy"] for e in epochs], [e["rms_jy"] for e in epochs],
                        flagged, title=title, weighted_mean_jy=stats[0]["wmean_jy"] if stats else None)
        print(f"plot: {args.plot}")
    return 0
