"""Which Prefect server a command that runs flows uses: the node's when it answers, else one of its own.

One server per node (issue 22). ``contimg serve`` runs the node's server (at the
``prefect_api_url`` setting, default ``http://127.0.0.1:4200/api``). A command run
beside it (``contimg run target``, ``contimg demo``) must use that server: its runs
then show in the operator's UI, and no second server opens the same SQLite database
(two did, and the first logged ``database is locked`` while validating states). With
no server there, the command runs its flows on an ephemeral server whose database is
a temporary file of its own, removed when the command exits, never the database a
live server (or the next ``contimg serve``) uses.

In order, the command uses:

1. the server Prefect is already configured with: ``PREFECT_API_URL`` in the
   environment, a Prefect profile, or the process's own settings (a test harness);
   it must answer;
2. the ``prefect_api_url`` setting (``CONTIMG_PREFECT_API_URL``), when it answers;
3. an ephemeral server on a database of its own.

:func:`prefect_server` decides, once per command, in :func:`contimg_cli.main.main`
before the handler of a command registered with ``uses_prefect=True``, and says
which in the command's first line.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator

from contimg.errors import ContimgError


def server_healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, timed out, or not a URL at all
        return False


@contextlib.contextmanager
def prefect_server(*, announce: Callable[[str], object] = print) -> Iterator[str | None]:
    """Point Prefect at the node's server, or at an ephemeral server of this command's own, for a block.

    Prefect's settings are changed in this process (``temporary_settings``) and
    in ``os.environ`` (for child processes that talk to Prefect, such as Dask
    workers), and restored when the block ends.

    Parameters
    ----------
    announce : callable
        Called once with the line saying which server (``print``: the command's first line).

    Yields
    ------
    str or None
        The API URL of the server used; None for the ephemeral one.

    Raises
    ------
    ContimgError
        Prefect is configured with a server that does not answer.
    ValueError
        A bad ``CONTIMG_*`` setting.
    """
    from contimg.config import load_settings

    settings = load_settings()  # a bad CONTIMG_* value fails here, before anything starts
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL, temporary_settings

    # The environment first: Prefect read it when first imported, and it may have changed since (a caller's).
    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        if not server_healthy(configured):
            source = "PREFECT_API_URL" if os.environ.get("PREFECT_API_URL") else "Prefect's PREFECT_API_URL setting"
            raise ContimgError(f"no Prefect server answers at {configured} ({source}): start it, or unset it")
        announce(f"using the Prefect server at {configured}")
        with temporary_settings(updates={PREFECT_API_URL: configured}):
            yield configured
        return
    url = settings.prefect_api_url
    if server_healthy(url):
        announce(f"using the Prefect server at {url}")
        with temporary_settings(updates={PREFECT_API_URL: url}), _environ(PREFECT_API_URL=url):
            yield url
        return
    # The ephemeral server starts in a child process at the first flow run, and stops at this process's exit
    # (Prefect's atexit hook). Registered before it, this removal runs after it (atexit is last in, first out).
    home = tempfile.mkdtemp(prefix="contimg-prefect-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    database = f"sqlite+aiosqlite:///{home}/prefect.db"
    announce(f"no Prefect server at {url}: an ephemeral server of this run's own (database in {home}, "
             "removed at exit; `contimg serve` runs the node's server)")
    with temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: database}), \
            _environ(PREFECT_API_DATABASE_CONNECTION_URL=database):
        yield None


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for a block, then restore what was there."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
