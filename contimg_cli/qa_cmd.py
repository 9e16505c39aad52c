"""``contimg qa PATH``: QA plots of a Measurement Set, or the metrics and thumbnail of an image."""

from __future__ import annotations

from pathlib import Path

from contimg import naming

#: ``--column`` choices and the MS columns they name.
COLUMNS = {"data": "DATA", "corrected": "CORRECTED_DATA", "model": "MODEL_DATA"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "qa", help="QA plots of a Measurement Set: amplitude vs time and frequency, UV coverage, antennas",
        description="Write the QA plots of a Measurement Set (read-only; no CASA): median amplitude per "
        "integration and SPW against time, median amplitude per channel against frequency, the UV coverage "
        "in kilolambda, and an antenna x frequency heat map. Flagged data and autocorrelations are left out; "
        "the amplitude is the mean of the two parallel hands. Prints the paths of the PNGs. Given an image "
        "product (<prefix>-image.fits, -pbcor.fits...), prints its metrics and writes its thumbnail.")
    p.add_argument("path", type=Path, help="the Measurement Set, or one FITS product of an image")
    p.add_argument("--column", type=_column_choice, choices=sorted(COLUMNS), default="data",
                   help="visibility column, any case: data (DATA, default), corrected (CORRECTED_DATA, after "
                   "applycal) or model (MODEL_DATA)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the plots (default: the group's QA directory, products/qa/<date>/<stem>/, "
                   "for a group MS; else <MS>.qa/ beside it)")
    p.set_defaults(handler=run_qa)


def _column_choice(text: str) -> str:
    """``--column`` in any case, with or without ``_DATA`` (``DATA``, ``corrected_data``...)."""
    key = text.strip().lower()
    return key if key == "data" else key.removesuffix("_data")


def default_out_dir(ms: Path, products_dir: Path) -> Path:
    """Where the plots of ``ms`` go without ``--out``.

    Parameters
    ----------
    ms : pathlib.Path
        The Measurement Set.
    products_dir : pathlib.Path
        The pipeline's products directory.

    Returns
    -------
    pathlib.Path
        ``naming.qa_dir(products_dir, group)`` when the MS is named after a
        group (``<group stem>.ms``), else ``<ms>.qa`` beside it.
    """
    from contimg import naming

    group_id = naming.group_id_from_stem(ms.stem)
    if group_id is not None:
        return naming.qa_dir(products_dir, group_id)
    return ms.with_name(ms.name + ".qa")


def run_qa(args) -> int:
    """Write the QA plots of ``args.path`` and print their paths (exit status 0, 2 bad input, 1 failure)."""
    from contimg.errors import InvalidInputError

    path = Path(args.path)
    if (path / "table.dat").exists() and (path / "ANTENNA").is_dir():
        paths = ms_qa(path, column=COLUMNS[args.column], out_dir=args.out)
    elif path.suffix.lower() == ".fits":
        paths = image_qa(path, out_dir=args.out)
    else:
        raise InvalidInputError(f"{path} is neither a Measurement Set (no table.dat and ANTENNA table) "
                                "nor a FITS image product")
    for p in paths.values():
        print(p)
    return 0


def ms_qa(ms: Path, *, column: str = "DATA", out_dir: Path | None = None) -> dict[str, Path]:
    """The Measurement Set part of ``contimg qa``: the plots of one column.

    Parameters
    ----------
    ms : pathlib.Path
        The Measurement Set.
    column : str
        The MS column (``DATA``, ``CORRECTED_DATA``, ``MODEL_DATA``).
    out_dir : pathlib.Path, optional
        Directory for the PNGs (default :func:`default_out_dir`).

    Returns
    -------
    dict of str to pathlib.Path
        The PNGs, as :func:`contimg.qa.ms_plots.plot_ms` returns them.
    """
    from contimg.qa.ms_plots import plot_ms

    if out_dir is None:
        from contimg.config import load_settings

        out_dir = default_out_dir(ms, load_settings().products_dir)
    return plot_ms(ms, out_dir, column=column)  # logs rows, flagged fraction and time at INFO


def image_qa(fits_path: Path, *, out_dir: Path | None = None) -> dict[str, Path]:
    """Print the metrics of the image whose product ``fits_path`` is; write its thumbnail."""
    from contimg.errors import InvalidInputError
    from contimg.imaging.products import KINDS, product_path
    from contimg.qa.image_qa import image_metrics, write_thumbnail

    name = fits_path.name[:-len(".fits")]
    kind = next((k for k in KINDS if name.endswith(f"-{k}")), None)
    if kind is None:
        raise InvalidInputError(f"{fits_path}: not an image product (<prefix>-{{{','.join(KINDS)}}}.fits)")
    prefix = fits_path.resolve().with_name(name[:-len(kind) - 1])
    products = {k: product_path(prefix, k) for k in KINDS}
    metrics = image_metrics(products)
    for key, value in metrics.items():
        print(f"{key:24s} {value}")
    out = naming.image_product_path(Path(out_dir) / prefix.name if out_dir else prefix, "png")
    out.parent.mkdir(parents=True, exist_ok=True)
    return {"thumbnail": write_thumbnail(products, out)}

