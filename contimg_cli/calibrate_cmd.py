"""``contimg calibrate MS`` and ``contimg applycal MS``: the calibration stage by hand, recorded."""

from __future__ import annotations

from pathlib import Path

from contimg_cli.caltables_cmd import at_time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="flag, model, solve K/B/G, QA-gate and register a calibrator group's caltables",
        description="Calibrate one calibrator group's MS: flag, predict the beam-weighted model, rank a "
        "reference antenna, solve delay, bandpass and gains, judge the set against the QA gate, and "
        "register it in cal_registry (active, or rejected with its reasons).")
    p.add_argument("ms", type=Path, help="the group's Measurement Set")
    p.add_argument("--calibrator", help="calibrator name (default: the one transiting the group)")
    p.add_argument("--refant", help="reference antenna: name (DSA-104) or antenna number "
                   "(default: CONTIMG_REFANT, else ranked from the data)")
    p.add_argument("--no-rfi", action="store_true", help="skip RFI flagging")
    p.add_argument("--rfi-backend", choices=["auto", "aoflagger", "casa"], default="auto")
    p.add_argument("--short-phase-solint", help="add a second phase solve on this interval (e.g. 60s)")
    p.add_argument("--force", action="store_true", help="solve again although the MS has an active set")
    p.set_defaults(handler=run_calibrate)

    a = subparsers.add_parser(
        "applycal", help="apply the caltable set valid for an MS into CORRECTED_DATA",
        description="Look up the registered set valid at the MS's mid time (or --at), apply it with its "
        "registered parameters, check the result and record it.")
    a.add_argument("ms", type=Path, help="the Measurement Set to calibrate")
    a.add_argument("--at", type=at_time, metavar="TIME",
                   help="use the set valid at this time (ISO UTC or MJD) instead of the MS's")
    a.set_defaults(handler=run_applycal)


def _check_ms(path: Path) -> None:
    """Bad input (exit status 2) unless ``path`` is a Measurement Set."""
    from contimg.errors import InvalidInputError

    if not (path / "table.dat").exists():
        raise InvalidInputError(f"{path} is not a Measurement Set (no table.dat)")


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header)] + [line(r) for r in rows])


def run_calibrate(args) -> int:
    from contimg.calibration.pipeline import CalibrationOptions
    from contimg.config import load_settings
    from tasks.calibration import calibrate_group

    _check_ms(args.ms)
    settings = load_settings()
    settings.ensure_dirs()
    options = CalibrationOptions(calibrator=args.calibrator, refant=args.refant or settings.refant,
                                 rfi=not args.no_rfi,
                                 rfi_backend=args.rfi_backend, short_phase_solint=args.short_phase_solint,
                                 bandpass_min_snr=settings.bandpass_min_snr, gain_min_snr=settings.gain_min_snr)
    reg = calibrate_group(settings, args.ms, options=options, force=args.force)
    r = reg.result
    if r is None:
        print(f"{args.ms} already has an active set, {reg.set_name}; --force solves again")
        return 0
    print(f"{reg.set_name}: {reg.status} (calibrator {r.calibrator}, refant {r.refant})")
    rows = [(s.kind, s.path.name, f"{r.metrics[s.kind]['flagged_fraction']:.1%}",
             f"{r.metrics[s.kind]['snr_median']:.1f}" if r.metrics[s.kind]["snr_available"] else "-",
             f"{r.timings.get(f'solve_{s.kind}', s.seconds):.1f}") for s in r.solutions]
    print(_table(rows, ("type", "table", "flagged", "SNR med", "s")))
    print(f"flagged after flagging: {r.flagging['steps'][-1]['flagged_fraction']:.1%}  "
          f"steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.timings.items()))
    field = r.model.get("field")
    if field is not None:
        if "error" in field:
            print(f"field model: failed ({field['error']}); the catalog model's solve stands")
        elif not field["sources"]:
            print(f"field model: no source the catalog lacks above {field['threshold_jy']:.3g} Jy apparent; "
                  "the catalog model's solve stands")
        else:
            print(f"field model: {len(field['sources'])} source(s) the catalog lacks added to the model"
                  + "".join(f"\n  {s['name']} {s['flux_jy']:.3f} Jy at RA {s['ra_deg']:.4f} Dec {s['dec_deg']:.4f}"
                            for s in field["sources"]))
    for reason in r.reasons:
        print(f"  rejected: {reason}")
    if not r.passed:
        from contimg_cli.main import CommandFailed

        raise CommandFailed(f"{reg.set_name} rejected by the QA gate: " + "; ".join(r.reasons))
    return 0


def run_applycal(args) -> int:
    from contimg.config import load_settings
    from tasks.calibration import apply_group

    _check_ms(args.ms)
    settings = load_settings()
    settings.ensure_dirs()
    out = apply_group(settings, args.ms, at_mjd=args.at)  # --at: MJD (at_time), or None
    c = out["check"]
    print(f"applied {', '.join(out['sets'])}{' (gains interpolated)' if out['interpolated_g'] else ''}")
    if c["amp_ratio"] == c["amp_ratio"]:  # not NaN: the MS has a model (a calibrator group)
        print(f"flux scale (calibrated / model) {c['amp_ratio']:.3f}; residual rms {c['residual_rms_jy']:.2f} Jy "
              f"(raw {c['raw_residual_rms_jy']:.2f} Jy, {c['scatter_reduction']:.1f}x lower)")
    else:
        print(f"CORRECTED_DATA written ({c['nonzero_fraction']:.0%} non-zero); no model in this MS to compare with")
    for w in out["warnings"]:
        print(f"  warning: {w}")
    return 0
