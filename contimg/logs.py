"""Logging set up once for the command line and scripts.

Library code only calls ``logging.getLogger(__name__)``; handlers are configured
here, by entry points, never on import.
"""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_configured = False


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once (``CONTIMG_LOG_LEVEL`` sets the default level)."""
    global _configured
    if _configured:
        return
    level = level or os.environ.get("CONTIMG_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    # One line per HTTP request to the Prefect API drowns the pipeline's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _configured = True
