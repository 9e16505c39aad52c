"""``contimg simulate``: write simulated DSA-110 groups (16 subband UVH5 files + truth)."""

from __future__ import annotations

from contimg_cli.main import declination_deg, nonnegative_float, positive_int, utc_time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate DSA-110 subband groups",
        description="Write N consecutive simulated groups of 16 UVH5 subband files plus a JSON truth "
                    "sidecar each. With --calibrator the groups are centred on its next transit after --start.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--start", type=utc_time, required=True,
                        help="UTC start of the first group, e.g. 2026-11-25T08:00:00")
    parser.add_argument("--groups", type=positive_int, default=1, help="number of consecutive groups (default 1)")
    parser.add_argument("--calibrator", default=None,
                        help="calibrator name (e.g. J0834+5534): it transits in the middle group")
    parser.add_argument("--scale", choices=["small", "medium", "full"], default="full", help="size preset (default full)")
    parser.add_argument("--seed", type=int, default=0, help="sky/instrument seed (default 0)")
    parser.add_argument("--dec", type=declination_deg, default=None,
                        help="pointing declination, degrees, -90 to 90 (default 54.5734)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes per group (default auto)")
    parser.add_argument("--min-apparent-flux-mjy", type=nonnegative_float, default=None, metavar="MJY",
                        help="do not simulate random field sources whose peak apparent flux in the group "
                             "(flux x primary beam at 1311 MHz) is below this, mJy; calibrators are always "
                             "simulated; 0 = the full population (default: FieldOptions.min_apparent_flux_jy, "
                             "3 mJy, ~10 sigma of a 5-min image)")
    parser.add_argument("--variables", action="store_true",
                        help="add variable sources that the groups see (a flare, an extreme scattering event "
                             "dip, a slow drift and two constant controls, SIMVAR_*; 1 Jy each, transiting "
                             "near the middle group 0.3-0.8 deg south of the pointing); their light curves "
                             "are in each group's truth sidecar ('variables')")
    parser.set_defaults(handler=run)


def field_options(min_apparent_flux_mjy: float | None):
    """The :class:`~contimg.simulate.sky.FieldOptions` for ``--min-apparent-flux-mjy`` (None: the default)."""
    from contimg.simulate.sky import FieldOptions

    if min_apparent_flux_mjy is None:
        return FieldOptions()
    if not min_apparent_flux_mjy >= 0:
        raise SystemExit("--min-apparent-flux-mjy must be >= 0")
    return FieldOptions(min_apparent_flux_jy=min_apparent_flux_mjy * 1e-3)


def night_variables_for(starts, cadence_s: float, dec_deg: float):
    """The :func:`~contimg.simulate.variables.night_variables` of groups starting at ``starts``
    (astropy Times), ``cadence_s`` apart, pointed at ``dec_deg``: placed on the meridian at the middle."""
    import astropy.units as u

    from contimg import instrument
    from contimg.simulate.variables import night_variables

    start, end = starts[0], starts[-1] + cadence_s * u.s
    middle = start + (end - start) / 2
    ra = middle.sidereal_time("apparent", longitude=instrument.SITE.lon).deg
    return night_variables(start.mjd, end.mjd, ra_deg=ra, dec_deg=dec_deg)


def run(args) -> int:
    import astropy.units as u
    from astropy.time import Time
    from tqdm import tqdm

    from contimg.simulate import scale_preset, simulate_group, transit_start_time
    from contimg.simulate.group import DEFAULT_POINTING_DEC_DEG, group_cadence_s
    from contimg.simulate.sky import find_calibrator

    if args.groups < 1:
        raise SystemExit("--groups must be >= 1")
    field = field_options(args.min_apparent_flux_mjy)
    preset = scale_preset(args.scale)
    n_times = preset["n_times"]
    cadence = group_cadence_s(n_times)
    first = Time(args.start, scale="utc")
    dec = DEFAULT_POINTING_DEC_DEG if args.dec is None else args.dec
    if args.calibrator:
        cal = find_calibrator(args.calibrator)
        centre = transit_start_time(cal.ra_deg, first, dec_deg=cal.dec_deg, n_times=n_times)
        first = Time(centre.datetime, scale="utc") - (args.groups // 2) * cadence * u.s
    starts = [first + k * cadence * u.s for k in range(args.groups)]
    variables = night_variables_for(starts, cadence, dec) if args.variables else None
    total = args.groups * preset["n_subbands"]
    with tqdm(total=total, unit="subband", desc="simulate") as bar:
        for start in starts:
            group = simulate_group(args.out, Time(start.isot[:19], format="isot", scale="utc"), scale=args.scale,
                                   pointing_dec_deg=dec, calibrator=args.calibrator, seed=args.seed,
                                   field=field, workers=args.workers, progress=bar.update,
                                   variables=variables)
            bar.write(f"{group.group_id}: {len(group.paths)} files, truth {group.truth_path.name}")
    return 0
