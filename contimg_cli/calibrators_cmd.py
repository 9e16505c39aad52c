"""``contimg calibrators``: ranked calibrators and predicted calibrator groups for a day.

Example: ``contimg calibrators --dec 54.6 --date 2026-11-25 --plot tracks.png``.
The declination is in degrees (a human input); the table lists name, the VLA
20 cm quality letters of the C and D configurations, position, 1.4 GHz flux,
beam response and weighted flux at transit, transit time, altitude, minutes in
the half-power beam and the start of the group holding the transit. The default
catalog is the shipped one, built from the NRAO VLA calibrator list; calibrators
with a C or D letter X or C are not candidates, and P ranks before S before W.
"""

from __future__ import annotations

from contimg_cli.main import declination_deg, nonnegative_float, utc_time


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrators", help="rank calibrators and predict calibrator groups for a day")
    p.add_argument("--dec", type=declination_deg, required=True,
                   help="pointing declination, DEGREES, -90 to 90 (e.g. 54.6)")
    p.add_argument("--date", type=utc_time, required=True, help="UTC day, YYYY-MM-DD")
    p.add_argument("--catalog", default=None, help="Parquet, CSV or VLA calibrator list text (default: shipped)")
    p.add_argument("--band", type=nonnegative_float, default=None, help="Dec band half-width, deg (default: setting)")
    p.add_argument("--min-flux", type=nonnegative_float, default=None,
                   help="1.4 GHz flux cut, Jy (default: setting)")
    p.add_argument("--min-pb", type=nonnegative_float, default=None,
                   help="beam response at transit for a calibrator group (default 0.3)")
    p.add_argument("--anchor", type=utc_time, default=None,
                   help="start of one group (UTC ISO); default 00:00:00 of --date")
    p.add_argument("--pointing-epoch", choices=("apparent", "J2000"), default="apparent",
                   help="frame of --dec (default apparent, of date)")
    p.add_argument("--plot", default=None, help="write a 24-hour altitude/beam-response PNG here")
    p.set_defaults(handler=run)


def run(args) -> int:
    import astropy.units as u

    from contimg.errors import InvalidInputError
    from contimg.sky.selection import DEFAULT_MIN_PB, predict_calibrator_groups, score_calibrators

    if not -90.0 <= args.dec <= 90.0:
        raise InvalidInputError(f"--dec {args.dec} is not a declination in degrees")
    dec = args.dec * u.deg
    common = dict(catalog=args.catalog, band_deg=args.band, min_flux_jy=args.min_flux,
                  anchor=args.anchor, pointing_epoch=args.pointing_epoch)
    scores = score_calibrators(dec, args.date, **common)
    min_pb = DEFAULT_MIN_PB if args.min_pb is None else args.min_pb
    print(f"Calibrators for pointing Dec {args.dec:.4f} deg on {args.date} (beam and flux at 1.4 GHz)")
    print(f"catalog: {_catalog_label(args.catalog)}; C/D letters X or C excluded, P before S before W")
    if not scores:
        print("  no calibrator in the declination band above the flux cut")
    else:
        head = (f"{'rank':>4} {'name':<12} {'CD':<2} {'RA(deg)':>9} {'Dec(deg)':>9} {'S1.4(Jy)':>8} {'PB':>6} "
                f"{'S*PB(Jy)':>8} {'transit UTC':<23} {'alt(deg)':>8} {'HPBW(min)':>9} {'group start':<19} field")
        print(head)
        for i, s in enumerate(scores, 1):
            c = s.calibrator
            group = s.group_start.isot[:19] if s.group_start is not None else "-"
            print(f"{i:>4} {c.name:<12} {_letters(c):<2} {c.ra_deg:>9.4f} {c.dec_deg:>9.4f} {c.flux_jy:>8.2f} "
                  f"{s.pb_at_transit:>6.3f} {s.weighted_flux.to_value(u.Jy):>8.3f} {s.transit.isot:<23} "
                  f"{s.altitude.deg:>8.2f} {s.time_in_hpbw.to_value(u.min):>9.1f} {group:<19} {s.field_name or '-'}")
    groups = predict_calibrator_groups(dec, args.date, min_pb=min_pb, **common)
    print()
    print(f"Predicted calibrator groups (PB at transit >= {min_pb}):")
    if not groups:
        print("  none")
    for s in groups:
        print(f"  {s.group_start.isot[:19]}  {s.calibrator.name:<12} peak integration {s.peak_integration:>2}  "
              f"PB {s.pb_at_transit:.3f}  S*PB {s.weighted_flux.to_value(u.Jy):.3f} Jy  transit {s.transit.isot}")
    if args.plot:
        from contimg.sky.plots import plot_altitude_tracks

        out = plot_altitude_tracks(scores, dec, args.date, args.plot, pointing_epoch=args.pointing_epoch)
        print(f"\nwrote {out}")
    return 0


def _letters(cal) -> str:
    """The 20 cm C and D configuration letters, ``?`` where unknown."""
    return f"{cal.quality_c or '?'}{cal.quality_d or '?'}"


def _catalog_label(path) -> str:
    """One line naming the catalog: its file, or the shipped one's source and build date."""
    if path is not None:
        return str(path)
    from contimg.sky.catalog_build import catalog_metadata

    meta = catalog_metadata()
    return (f"shipped, {meta.get('count', '?')} calibrators from {meta.get('source', '?')} "
            f"(built {meta.get('build_date', '?')})")
