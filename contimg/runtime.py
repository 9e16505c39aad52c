"""The offline runtime: CASA measures, astropy, matplotlib and Prefect with no network.

``python -m contimg.runtime install`` (run by ``make``) configures the current
virtual environment once so that nothing reaches for the internet or writes into
the user's home directory (STACK.md records why each step is needed):

* CASA measures data: a copy of python-casacore's bundled ``casacore/data`` with
  the empty sub-folders casaconfig expects, and DSA-110 added to the Observatories
  table (``DSA_110`` and ``DSA-110``), under ``<venv>/var/contimg/casadata``.
* ``casasiteconfig.py`` in site-packages pointing casaconfig at that copy with
  auto-updates off and its log under ``<venv>/var/contimg/logs``.
* ``_contimg_env.py`` plus a ``.pth`` file: on interpreter start-up set (only if
  unset) the astropy config/cache dirs, ``MPLCONFIGDIR``, ``PREFECT_HOME`` and
  Prefect's offline settings to directories inside the venv. ``PREFECT_HOME`` holds
  the node's Prefect server's SQLite database (``contimg serve``); a command that
  runs flows uses that server, or an ephemeral one on a temporary database of its
  own, and never opens this one itself (``contimg_cli/prefect_server.py``: two
  servers on one SQLite file lock each other).
* astropy: a config file with IERS auto-download off (the bundled
  ``astropy-iers-data`` tables are used) and a seeded site registry (DSA-110, OVRO)
  so ``EarthLocation.of_site`` works offline.

``python -m contimg.runtime check`` prints the paths and verifies each piece.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

#: DSA-110 reference position (DOMAIN.md 1.7, ``BK/utils/constants.py``: the
#: location the old pipeline used for LST and phasing). WGS84.
DSA110_LAT_DEG = 37.2314
DSA110_LON_DEG = -118.2817
DSA110_HEIGHT_M = 1222.0
#: OVRO (for astropy's site registry only).
OVRO_LAT_DEG, OVRO_LON_DEG, OVRO_HEIGHT_M = 37.2339, -118.2821, 1222.0

_CASACONFIG_EMPTY_DIRS = ("alma", "catalogs", "demo", "gui", "nrao")
#: Every address astropy may ask for its site registry (data URL and mirror).
_ASTROPY_SITES_URLS = (
    "http://www.astropy.org/astropy-data/coordinates/sites.json",
    "https://www.astropy.org/astropy-data/coordinates/sites.json",
    "http://data.astropy.org/coordinates/sites.json",
)
_ENV_MODULE = "_contimg_env"


def runtime_dir() -> Path:
    """Root of the project's runtime state inside the active environment."""
    override = os.environ.get("CONTIMG_RUNTIME_DIR")
    return Path(override) if override else Path(sys.prefix) / "var" / "contimg"


def runtime_environment(root: Path | None = None) -> dict[str, str]:
    """Environment variables the runtime sets (each only when unset)."""
    root = runtime_dir() if root is None else root
    return {
        "ASTROPY_CONFIG_DIR": str(root / "astropy" / "config"),
        "ASTROPY_CACHE_DIR": str(root / "astropy" / "cache"),
        "MPLCONFIGDIR": str(root / "matplotlib"),
        "MPLBACKEND": "Agg",
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_UI_ENABLED": "true",
        "CASASITECONFIG": str(root / "casasiteconfig.py"),
    }


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _install_casadata(root: Path) -> Path:
    import casacore

    source = Path(casacore.__file__).parent / "data"
    target = root / "casadata"
    if not (target / "geodetic" / "Observatories").exists():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    for name in _CASACONFIG_EMPTY_DIRS:
        (target / name).mkdir(parents=True, exist_ok=True)
    _add_dsa110_observatory(target / "geodetic" / "Observatories")
    return target


def _add_dsa110_observatory(table_path: Path) -> None:
    """Add DSA_110 and DSA-110 rows (WGS84) to a CASA Observatories table."""
    from casacore.tables import table

    with table(str(table_path), readonly=False, ack=False) as tab:
        names = list(tab.getcol("Name"))
        template = names.index("VLA") if "VLA" in names else 0
        for name in ("DSA_110", "DSA-110"):
            if name in names:
                row = names.index(name)
            else:
                tab.addrows(1)
                row = tab.nrows() - 1
                for col in tab.colnames():
                    try:
                        tab.putcell(col, row, tab.getcell(col, template))
                    except RuntimeError:
                        pass  # undefined cells in the template stay undefined
            tab.putcell("Name", row, name)
            tab.putcell("Type", row, "WGS84")
            tab.putcell("Long", row, DSA110_LON_DEG)
            tab.putcell("Lat", row, DSA110_LAT_DEG)
            tab.putcell("Height", row, DSA110_HEIGHT_M)
            tab.putcell("Source", row, "dsa110-contimg (BK/utils/constants.py)")
            if "AntennaResponses" in tab.colnames():
                tab.putcell("AntennaResponses", row, "")


def _extend_casa_iers(casadata: Path) -> int:
    """Append astropy-iers-data's newer IERS-A rows to CASA's ``IERSpredict`` table.

    python-casacore's wheel freezes the Earth-orientation tables on its build day;
    past their end CASA silently uses no UT1-UTC or polar motion (1.1 arcsec AZEL
    error measured on 2026-11-25 with tables ending 2026-09-22). astropy-iers-data
    is updated far more often, so its predictions extend CASA's.

    Returns
    -------
    int
        Number of daily rows added.
    """
    import numpy as np
    from astropy.utils import iers
    from casacore.tables import table

    iers_a = iers.IERS_A.open(iers.IERS_A_FILE)
    mjd = np.asarray(iers_a["MJD"].to_value("d"))
    with table(str(casadata / "geodetic" / "IERSpredict"), readonly=False, ack=False) as tab:
        last = float(tab.getcol("MJD")[-1])
        keep = (mjd > last) & np.isfinite(np.asarray(iers_a["UT1_UTC"].to_value("s")))
        rows = iers_a[keep]
        # The table is indexed by MJD0 + row * dMJD: rows must stay contiguous days.
        expected = last + 1 + np.arange(len(rows))
        rows = rows[: int(np.argmax(np.asarray(rows["MJD"].to_value("d")) != expected))] if np.any(
            np.asarray(rows["MJD"].to_value("d")) != expected
        ) else rows
        if len(rows) == 0:
            return 0
        start = tab.nrows()
        tab.addrows(len(rows))
        n = len(rows)
        columns = {
            "MJD": np.asarray(rows["MJD"].to_value("d")),
            "x": np.asarray(rows["PM_x"].to_value("arcsec")),
            "y": np.asarray(rows["PM_y"].to_value("arcsec")),
            "dUT1": np.asarray(rows["UT1_UTC"].to_value("s")),
        }
        for name in tab.colnames():
            values = columns.get(name, np.zeros(n))
            tab.putcol(name, np.nan_to_num(values), startrow=start, nrow=n)
        # casacore parses VS_DATE as a date; the provenance goes into VS_TYPE.
        tab.putkeyword("VS_DATE", time.strftime("%Y/%m/%d/%H:%M", time.gmtime()))
        tab.putkeyword("VS_TYPE", "IERS predictions extended from astropy-iers-data by contimg")
    return n


def _write_casasiteconfig(root: Path, casadata: Path) -> Path:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    text = (
        "# Written by `python -m contimg.runtime install`: CASA offline from the\n"
        "# measures tables python-casacore ships. Do not edit; rerun the installer.\n"
        f"measurespath = {str(casadata)!r}\n"
        "datapath = [measurespath]\n"
        "measures_auto_update = False\n"
        "data_auto_update = False\n"
        "nologfile = False\n"
        f"logfile = {str(logs / 'casa.log')!r}\n"
        f"cachedir = {str(root / 'casacache')!r}\n"
        "telemetry_enabled = False\n"
        "crashreporter_enabled = False\n"
    )
    path = root / "casasiteconfig.py"
    path.write_text(text)
    (root / "casacache").mkdir(exist_ok=True)
    # casaconfig also imports a module of that name from sys.path.
    (_site_packages() / "casasiteconfig.py").write_text(text)
    return path


def _write_env_hook(root: Path) -> None:
    env = runtime_environment(root)
    lines = [
        '"""Set by contimg.runtime: keep caches and config of CASA, astropy, matplotlib',
        'and Prefect inside this environment (see contimg/runtime.py)."""',
        "import os as _os",
        f"for _k, _v in {env!r}.items():",
        "    _os.environ.setdefault(_k, _v)",
    ]
    site = _site_packages()
    (site / f"{_ENV_MODULE}.py").write_text("\n".join(lines) + "\n")
    (site / "contimg_runtime.pth").write_text(f"import {_ENV_MODULE}\n")
    for key, value in env.items():
        os.environ.setdefault(key, value)
    for key in ("ASTROPY_CONFIG_DIR", "ASTROPY_CACHE_DIR", "MPLCONFIGDIR", "PREFECT_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)


def _write_astropy_config(root: Path) -> None:
    config_dir = Path(runtime_environment(root)["ASTROPY_CONFIG_DIR"])
    text = (
        "# Written by contimg.runtime: astropy offline.\n"
        "[utils.data]\n"
        "allow_internet = False\n"
        "[utils.iers.iers]\n"
        "# use the IERS tables of the astropy-iers-data package, never download\n"
        "auto_download = False\n"
        "auto_max_age = 170\n"
        "iers_degraded_accuracy = warn\n"
    )
    # astropy >= 8 reads $ASTROPY_CONFIG_DIR/astropy.cfg directly.
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "astropy.cfg").write_text(text)


def _sites_json() -> dict:
    common = {"elevation_unit": "meter", "latitude_unit": "degree", "longitude_unit": "degree"}
    return {
        "DSA-110": {
            "source": "dsa110-contimg runtime (DOMAIN.md 1.7)",
            "elevation": DSA110_HEIGHT_M,
            "latitude": DSA110_LAT_DEG,
            "longitude": DSA110_LON_DEG,
            "name": "DSA-110",
            "aliases": ["DSA_110", "dsa110", "dsa-110"],
            **common,
        },
        "OVRO": {
            "source": "dsa110-contimg runtime",
            "elevation": OVRO_HEIGHT_M,
            "latitude": OVRO_LAT_DEG,
            "longitude": OVRO_LON_DEG,
            "name": "Owens Valley Radio Observatory",
            "aliases": ["ovro", "Owens Valley"],
            **common,
        },
    }


def _seed_astropy_sites(root: Path) -> None:
    from astropy.utils.data import import_file_to_cache

    path = root / "sites.json"
    path.write_text(json.dumps(_sites_json(), indent=1))
    for url in _ASTROPY_SITES_URLS:
        import_file_to_cache(url, str(path), remove_original=False, replace=True)


def install() -> Path:
    """Configure the active environment for offline use (idempotent).

    Returns
    -------
    Path
        The runtime directory.
    """
    root = runtime_dir()
    root.mkdir(parents=True, exist_ok=True)
    _write_env_hook(root)
    casadata = _install_casadata(root)
    _extend_casa_iers(casadata)
    _write_casasiteconfig(root, casadata)
    _write_astropy_config(root)
    _seed_astropy_sites(root)
    return root


def check() -> dict[str, str]:
    """Verify the runtime; returns what was checked, raises on failure."""
    from astropy.coordinates import EarthLocation

    report = {"runtime_dir": str(runtime_dir())}
    loc = EarthLocation.of_site("DSA-110")
    report["astropy_site"] = f"{loc.lat.deg:.4f} {loc.lon.deg:.4f}"
    import casatools

    me = casatools.measures()
    obs = me.observatory("DSA_110")
    report["casa_observatory"] = str(obs["m0"]["value"]) if obs else "missing"
    report["casa_measurespath"] = casatools.ctsys.rundata()
    me.done()
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "check"
    if command == "install":
        print(f"contimg runtime installed in {install()}")
        return 0
    if command == "check":
        for key, value in check().items():
            print(f"{key}: {value}")
        return 0
    print("usage: python -m contimg.runtime [install|check]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
