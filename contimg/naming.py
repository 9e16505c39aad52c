"""Every file name and product path, derived from a group id in one place.

A *group id* is the UTC start timestamp of a group as the correlator writes it,
``YYYY-MM-DDTHH:MM:SS`` (the canonical id is sb00's timestamp, DOMAIN.md 1.1).
Product names use the *stem*, the id with its colons removed
(``2026-11-25T080000``), because colons break CASA selection strings, scp and
some filesystems. Products are sorted into per-day directories (``YYYY-MM-DD``)
so that no directory grows without bound at ~279 groups a day.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

GROUP_ID_FORMAT = "%Y-%m-%dT%H:%M:%S"
SUBBAND_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(\d{2})\.hdf5$")


def parse_group_id(group_id: str) -> datetime:
    """The UTC datetime of a group id; raises ``ValueError`` on a malformed id."""
    return datetime.strptime(group_id, GROUP_ID_FORMAT)


def group_id_from_datetime(when: datetime) -> str:
    """The group id of a UTC datetime (seconds precision)."""
    return when.strftime(GROUP_ID_FORMAT)


def group_stem(group_id: str) -> str:
    """File-system-safe stem of a group id: ``2026-11-25T08:00:00`` -> ``2026-11-25T080000``."""
    parse_group_id(group_id)  # validate
    return group_id.replace(":", "")


def group_id_from_stem(stem: str) -> str | None:
    """The group id of a product stem (``2026-11-25T080000`` -> ``2026-11-25T08:00:00``), or None."""
    try:
        return group_id_from_datetime(datetime.strptime(stem, "%Y-%m-%dT%H%M%S"))
    except ValueError:
        return None


def group_date(group_id: str) -> str:
    """Observation date ``YYYY-MM-DD`` of a group (the catalog's partition key)."""
    return group_id[:10]


# --- raw correlator files ---------------------------------------------------------


def subband_filename(group_id: str, subband: int) -> str:
    """``<group_id>_sbNN.hdf5`` as the correlator writes it."""
    return f"{group_id}_sb{subband:02d}.hdf5"


def parse_subband_filename(name: str | Path) -> tuple[str, int] | None:
    """(timestamp, subband) of a subband file name, or ``None`` if it is not one."""
    match = SUBBAND_RE.search(Path(name).name)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def truth_path(directory: Path, group_id: str) -> Path:
    """The simulator's truth sidecar next to a simulated group."""
    return Path(directory) / f"{group_id}_truth.json"


# --- products ----------------------------------------------------------------------


def ms_path(products_dir: Path, group_id: str) -> Path:
    """The group's Measurement Set (16 SPWs, ascending frequency)."""
    return Path(products_dir) / "ms" / group_date(group_id) / f"{group_stem(group_id)}.ms"


def quarantine_dir(quarantine_root: Path, group_id: str) -> Path:
    """Where a group's input files go when they are bad input (kept, never deleted)."""
    return Path(quarantine_root) / group_date(group_id) / group_stem(group_id)


def convert_workdir(scratch_dir: Path, group_id: str) -> Path:
    """Scratch directory of a conversion in progress (removed after success)."""
    return Path(scratch_dir) / "convert" / group_stem(group_id)


def group_lease_path(scratch_dir: Path, group_id: str) -> Path:
    """The lease file of the run working on a group (``contimg.lease``); absent when nobody is."""
    return Path(scratch_dir) / "leases" / f"{group_stem(group_id)}.lease"


def caltable_prefix(products_dir: Path, group_id: str, solve_id: str | None = None) -> Path:
    """Prefix of a calibrator group's caltables; suffixes ``.K``, ``.B``, ``.GP``, ``.GA`` follow.

    ``solve_id`` (e.g. the solve's UTC time) keeps every solve of a group, rejected ones
    included, under its own name: a re-solve never overwrites the provenance of an earlier one.
    """
    stem = group_stem(group_id) if solve_id is None else f"{group_stem(group_id)}_{solve_id}"
    return Path(products_dir) / "caltables" / group_date(group_id) / stem


def field_model_work_dir(products_dir: Path, group_id: str, solve_id: str | None = None) -> Path:
    """Scratch of a calibrator group's field model (the first solve's tables, the image): removed after the
    solve (:mod:`contimg.calibration.field_model`)."""
    prefix = caltable_prefix(products_dir, group_id, solve_id)
    return prefix.with_name(prefix.name + ".fieldmodel")


def caltable_path(products_dir: Path, group_id: str, kind: str, solve_id: str | None = None) -> Path:
    """One caltable of a set; ``kind`` is its registry type (``K``, ``B``, ``GP``...)."""
    prefix = caltable_prefix(products_dir, group_id, solve_id)
    return prefix.with_name(f"{prefix.name}.{kind}")


def ms_table_prefix(ms) -> Path:
    """Caltable prefix of any MS: its path with a trailing ``.ms``/``.MS`` removed.

    ``Path.stem``-style, never ``str.rstrip(".ms")``: the telescope team's
    ``rstrip`` turned ``runs.ms`` into ``run`` (DOMAIN.md, seed).
    """
    path = Path(ms).resolve()
    name = path.name[:-3] if path.name.lower().endswith(".ms") else path.name
    return path.with_name(name)


def image_dir(products_dir: Path, group_id: str) -> Path:
    """Directory holding a group's images."""
    return Path(products_dir) / "images" / group_date(group_id)


def image_prefix(products_dir: Path, group_id: str) -> Path:
    """Imager name prefix; backends append ``-image.fits``, ``-pb.fits``..."""
    return image_dir(products_dir, group_id) / group_stem(group_id)


#: Image products that are not FITS, by kind: the file's suffix after the prefix.
_IMAGE_PRODUCT_SUFFIXES = {"png": "-pbcor.png", "sources": "-sources.parquet", "crossmatch": "-crossmatch.parquet",
                           "components": "-components.parquet"}


def image_product_path(prefix: Path, kind: str) -> Path:
    """One product of an image: ``<prefix>-<kind>.fits`` (image, pbcor, pb, residual, model, psf), the
    thumbnail ``<prefix>-pbcor.png`` (kind ``png``), the source table ``<prefix>-sources.parquet``, the
    truth cross-match ``<prefix>-crossmatch.parquet`` and the sky model ``<prefix>-components.parquet``
    (the next group's self-calibration model)."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + _IMAGE_PRODUCT_SUFFIXES.get(kind, f"-{kind}.fits"))


def qa_dir(products_dir: Path, group_id: str) -> Path:
    """Directory of a group's QA plots and tables."""
    return Path(products_dir) / "qa" / group_date(group_id) / group_stem(group_id)


def casa_log_path(products_dir: Path, group_id: str, step: str) -> Path:
    """The CASA log of one step on one group; never in the working directory."""
    return Path(products_dir) / "logs" / group_date(group_id) / group_stem(group_id) / f"{step}.casa.log"


# --- mosaics ----------------------------------------------------------------------

#: Mosaic products by kind: the file's suffix after the mosaic's prefix.
MOSAIC_KINDS = {"image": "-image.fits", "weight": "-weight.fits", "noise": "-noise.fits", "png": "-image.png",
                "sources": "-sources.parquet"}


def mosaic_id(start: str, n_groups: int) -> str:
    """The id of a mosaic: its window's start stem and the number of groups it combines,
    ``2026-11-25T080000-12g`` (``start`` is a group id-formatted UTC time)."""
    if int(n_groups) < 1:
        raise ValueError(f"a mosaic combines at least one group, not {n_groups}")
    return f"{group_stem(start)}-{int(n_groups)}g"


def mosaic_prefix(products_dir: Path, mosaic_id_: str) -> Path:
    """Name prefix of a mosaic's products: ``<products>/mosaics/<YYYY-MM-DD>/<mosaic id>``."""
    return Path(products_dir) / "mosaics" / mosaic_id_[:10] / mosaic_id_


def mosaic_lease_path(scratch_dir: Path, window_start: str) -> Path:
    """The lease of the run making the mosaic of the window starting at ``window_start`` (a group id-formatted
    UTC time); absent when nobody is."""
    return Path(scratch_dir) / "leases" / f"mosaic-{group_stem(window_start)}.lease"


def mosaic_product_path(prefix: Path, kind: str) -> Path:
    """One product of a mosaic: ``<prefix>-image.fits``, ``-weight.fits``, ``-noise.fits`` (1 / sqrt(weight)),
    the thumbnail ``-image.png`` and the source table ``-sources.parquet``."""
    try:
        suffix = MOSAIC_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown mosaic product {kind!r}; known: {', '.join(MOSAIC_KINDS)}") from None
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + suffix)


# --- night report ------------------------------------------------------------------


def parse_obs_date(date: str) -> str:
    """An observation date ``YYYY-MM-DD`` (the UTC date of the groups), checked; raises ``ValueError``."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(date)):
            raise ValueError
        datetime.strptime(date, "%Y-%m-%d")  # a real day: 2026-02-30 is refused
    except ValueError:
        raise ValueError(f"{date!r} is not a date (YYYY-MM-DD)") from None
    return date


def report_dir(products_dir: Path, date: str) -> Path:
    """Directory of the night report of an observation date (its page, plots and thumbnails)."""
    return Path(products_dir) / "reports" / parse_obs_date(date)


def report_path(products_dir: Path, date: str) -> Path:
    """The night report's page: ``<products>/reports/<date>/index.html``."""
    return report_dir(products_dir, date) / "index.html"


def lightcurve_dir(products_dir: Path) -> Path:
    """Directory of the light-curve plots: ``<products>/lightcurves``."""
    return Path(products_dir) / "lightcurves"


def lightcurve_png_path(products_dir: Path, source_name: str) -> Path:
    """The light-curve plot of a source: ``<products>/lightcurves/<source_name>.png``.

    Characters other than letters, digits and ``+-._`` become ``_`` (a reference
    name such as ``J083412.34+553401.2`` is kept as it is).
    """
    safe = re.sub(r"[^A-Za-z0-9+\-._]", "_", source_name).strip(".") or "_"
    return lightcurve_dir(products_dir) / f"{safe}.png"


# --- products over HTTP ------------------------------------------------------------

#: The URL path of each directory ``contimg serve`` serves, by the setting naming it.
URL_ROOTS = {"products": "products_dir", "archive": "archive_dir"}


def products_base_url(settings) -> str:
    """Where browsers reach the products server: the ``products_base_url`` setting, else
    ``http://<products_http_host>:<products_http_port>`` (127.0.0.1 for a wildcard host); no trailing ``/``."""
    if settings.products_base_url:
        return settings.products_base_url.rstrip("/")
    host = settings.products_http_host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.products_http_port}"


def product_url(settings, path: str | os.PathLike) -> str | None:
    """The http URL of a file or directory under the products or archive directory, as ``contimg serve``
    serves it: ``<base>/products/<path under products_dir>`` or ``<base>/archive/<path under archive_dir>``.

    Parameters
    ----------
    settings : contimg.config.Settings
        Its ``products_dir``, ``archive_dir`` and base URL (:func:`products_base_url`).
    path : path-like
        A product (relative: against the working directory). Matched as given and with symbolic
        links resolved, against each directory as set and resolved.

    Returns
    -------
    str or None
        The URL (percent-encoded; a directory's ends with ``/``), or None for a path under neither
        directory, which is not served.
    """
    given = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    best: tuple[int, str, Path] | None = None
    for candidate in (given, Path(os.path.realpath(given))):
        for name, field in URL_ROOTS.items():
            root = getattr(settings, field)
            for home in (Path(root), Path(os.path.realpath(root))):
                if candidate.is_relative_to(home) and (best is None or len(home.parts) > best[0]):
                    best = (len(home.parts), name, candidate.relative_to(home))
        if best is not None:
            break
    if best is None:
        return None
    _, name, relative = best
    tail = quote(relative.as_posix()) if relative.parts else ""
    if tail and given.is_dir():
        tail += "/"
    return f"{products_base_url(settings)}/{name}/{tail}"


# --- archive -----------------------------------------------------------------------


def archive_product_path(archive_dir: Path, products_dir: Path, path: Path, group_id: str) -> Path:
    """Where a product is archived: its place under ``products_dir`` mirrored under ``archive_dir``.

    A product outside ``products_dir`` (e.g. imaged with ``--out-dir``) goes to
    ``<archive>/external/<date>/<stem>/<name>``.
    """
    path, products_dir = Path(path), Path(products_dir)
    try:
        return Path(archive_dir) / path.relative_to(products_dir)
    except ValueError:
        return Path(archive_dir) / "external" / group_date(group_id) / group_stem(group_id) / path.name


def archive_raw_dir(archive_dir: Path, group_id: str) -> Path:
    """Directory of the archived copies of a group's raw subband files."""
    return Path(archive_dir) / "raw" / group_date(group_id) / group_stem(group_id)


def archive_manifest_path(archive_dir: Path, group_id: str) -> Path:
    """A group's checksums in ``sha256sum`` format, paths relative to ``archive_dir``.

    ``cd <archive_dir> && sha256sum -c manifests/<date>/<stem>.sha256`` checks every archived file of the group.
    """
    return Path(archive_dir) / "manifests" / group_date(group_id) / f"{group_stem(group_id)}.sha256"
