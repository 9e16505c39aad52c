"""``contimg image MS``: image one group by hand, measured and recorded like the pipeline does it."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "image", help="image a group's MS: FITS image, pbcor, pb, residual, model, psf; QA; catalog rows",
        description="Image one group with WSClean (default when installed) or CASA tclean: the calibrated "
        "data (CORRECTED_DATA, written by `contimg applycal`) or, with --data-column data, the raw data. "
        "The image covers the DSA-110 primary beam down to the pbcor cutoff; bright catalog sources outside "
        "it are subtracted first. With the selfcal setting (default on) the group is self-calibrated between "
        "two imaging passes and the solutions kept only if the gate passes. Products are primary-beam "
        "corrected with the averaged Airy beam and recorded in the images and qa_metrics tables.")
    _arguments(p)
    p.add_argument("--selfcal", dest="selfcal", action="store_true", default=None,
                   help="self-calibrate (default: the selfcal setting)")
    p.add_argument("--no-selfcal", dest="selfcal", action="store_false", help="one imaging pass, no self-calibration")
    p.set_defaults(handler=run_image)
    s = subparsers.add_parser(
        "selfcal", help="self-calibrate a group's MS between two imaging passes, gated by QA, and record it",
        description="Image the group, take its clean components as the model (predicted through the beam "
        "that drifts during the group), solve phases per antenna (interval from the SNR; amplitudes when the "
        "model is bright enough), image again, and keep the solutions only if the residual noise did not rise "
        "and the brightest sources' peaks did not move (settings selfcal_*). Kept solutions are registered as "
        "a caltable set of type SC (`contimg caltables`); either way the reasons are printed and recorded.")
    _arguments(s)
    s.set_defaults(handler=run_image, selfcal=True)


def _arguments(p) -> None:
    p.add_argument("ms", type=Path, help="the group's Measurement Set")
    p.add_argument("--backend", choices=["wsclean", "tclean"], default=None,
                   help="imager (default: the imaging_backend setting, else WSClean when installed)")
    p.add_argument("--data-column", choices=["corrected", "data"], default="corrected",
                   help="corrected (default; needs applycal) or data (the raw visibilities)")
    p.add_argument("--out", type=Path, default=None,
                   help="product directory (default: products/images/<date>/, recorded in the catalog); any "
                        "other directory holds an ad-hoc image: written and measured, the catalog unchanged")
    p.add_argument("--imsize", type=int, default=None, help="pixels on a side (default: cover the beam)")
    p.add_argument("--cell", type=float, default=None, help="pixel size, arcsec (default: lambda/B_max / 3)")
    p.add_argument("--niter", type=int, default=None, help="clean components (default: imaging_niter)")
    p.add_argument("--chan-avg", type=int, default=None,
                   help="channels averaged before gridding (default: the most within a 5%% smearing loss)")
    p.add_argument("--no-sources", action="store_true", help="skip PyBDSF source finding")


def run_image(args) -> int:
    from contimg.config import load_settings
    from contimg.errors import InvalidInputError
    from contimg.imaging.image import ImagingOptions
    from tasks.imaging import image_group

    if not (args.ms / "table.dat").exists():
        raise InvalidInputError(f"{args.ms} is not a Measurement Set (no table.dat)")
    for name in ("imsize", "cell", "niter", "chan_avg"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    settings = load_settings() if args.selfcal is None else load_settings(selfcal=args.selfcal)
    settings.ensure_dirs()
    overrides = {k: v for k, v in {"backend": args.backend, "imsize": args.imsize, "cell_arcsec": args.cell,
                                   "niter": args.niter, "chan_avg": args.chan_avg}.items() if v is not None}
    options = ImagingOptions.from_settings(settings, data_column=args.data_column, **overrides)
    done = image_group(settings, args.ms, options=options, out_dir=args.out,
                       find_sources=False if args.no_sources else None)
    r, m = done.result, done.metrics
    bmaj, bmin, bpa = r.restoring_beam_arcsec
    print(f"{done.group_id}: {r.backend} image of {r.data_column}, {r.grid.imsize} x {r.grid.imsize} at "
          f"{r.grid.cell_arcsec}\" ({r.grid.width_deg:.2f} deg), {r.chan_avg} channels averaged")
    print(f"beam {bmaj:.1f}\" x {bmin:.1f}\" PA {bpa:.0f} deg; noise {1e3 * m['noise_inner_jy']:.3f} mJy/beam "
          f"(predicted {1e3 * r.predicted_noise_jy:.3f}); peak {m['peak_jy']:.3f} Jy/beam; DR {m['dynamic_range']:.0f}")
    clean = r.imager.get("clean") or {}
    if clean.get("diverged"):
        from contimg.imaging.backends import divergence_warning

        print(f"WARNING: {divergence_warning(clean)}")
    if r.subtracted_sources:
        print("subtracted before imaging (outside the image): "
              + ", ".join(f"{s['name']} ({s['peak_apparent_jy']:.2f} Jy apparent)" for s in r.subtracted_sources))
    if done.crossmatch_metrics:
        c = done.crossmatch_metrics
        print(f"truth: completeness >10 sigma {c['completeness_above_10sigma']:.2f}, false {c['false_fraction']:.3f}, "
              f"flux ratio {c['flux_ratio_median']:.3f}, offsets {c['median_offset_beams']:.3f} beam")
    if r.selfcal:
        c = r.selfcal
        print(f"self-calibration {c['status']}: " + ("; ".join(c.get("reasons", [])) or
              f"{c.get('model_sources')} model sources, solint {c.get('solint_s', 0):.0f} s, "
              f"phases {c.get('phase_rms_deg', 0):.1f} deg rms, amplitudes {'solved' if c.get('amplitude') else 'not solved'}, "
              f"noise x{c.get('noise_ratio', float('nan')):.3f}, brightest peaks moved {100 * c.get('flux_change_median', 0):.1f} %"))
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.timings.items()))
    for kind, path in r.products.items():
        print(f"  {kind:10s} {path}")
    print(f"  {'png':10s} {done.thumbnail}")
    for kind, path in (("sources", done.sources), ("crossmatch", done.crossmatch)):
        if path:
            print(f"  {kind:10s} {path}")
    if not done.recorded:
        print(_not_recorded(settings, done.group_id, args.out))
    return 0


def _not_recorded(settings, group_id: str, out_dir: Path) -> str:
    """Why an ``--out`` image is not in the catalog, and which image of the group the catalog still names."""
    from contimg import naming
    from tasks.records import latest_ms

    current = (latest_ms(settings, group_id) or {}).get("image_name")
    return (f"not recorded in the catalog: {out_dir} is not the pipeline's image directory "
            f"({naming.image_dir(settings.products_dir, group_id)}); the group's catalog image is "
            + (f"still {current}" if current else "none (not imaged by the pipeline)"))
