"""What the calibrator and target flows share: settings and resolving a group id or MS path."""

from __future__ import annotations

from pathlib import Path

from contimg import naming
from contimg.config import Settings, load_settings
from contimg.errors import InvalidInputError
from tasks import records
from tasks.calibration import group_id_of


def settings_for(base_dir: str | None) -> Settings:
    settings = load_settings(base_dir=Path(base_dir) if base_dir else None)
    settings.ensure_dirs()
    return settings


def resolve(settings: Settings, ms_or_group_id: str) -> tuple[Path, str]:
    """``(MS path, group id)`` of a group id (its recorded MS, else where naming puts it) or an MS path.

    Raises
    ------
    InvalidInputError
        There is no such MS.
    """
    text = str(ms_or_group_id).rstrip("/")
    if _is_group_id(text):
        latest = records.latest_ms(settings, text) or {}
        path = Path(latest["path"]) if latest.get("path") else naming.ms_path(settings.products_dir, text)
        group_id = text
    else:
        path, group_id = Path(text), None
    if not path.is_dir():
        raise InvalidInputError(f"{text}: no MS at {path} (not converted yet? see `contimg status`)")
    path = path.resolve()
    return path, group_id or group_id_of(path)


def _is_group_id(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.strptime(text, naming.GROUP_ID_FORMAT)
    except ValueError:
        return False
    return True
