"""The exception hierarchy of the pipeline.

Every message names the file or group, what was wrong, and what to do. The
orchestration layer uses the class to decide whether to retry: only
:class:`TransientError` subclasses (and ``CasaError`` from a crashed child) are
worth a retry; :class:`InvalidInputError` never is.
"""

from __future__ import annotations

from pathlib import Path


class ContimgError(Exception):
    """Base class of every error raised by the pipeline."""


class InvalidInputError(ContimgError):
    """Unreadable or inconsistent input. Never retried; the input is kept."""


class IncompleteGroupError(ContimgError):
    """A group lacks subbands.

    Parameters
    ----------
    group_id : str
        The group's id (timestamp of its first subband).
    missing : list of int
        Subband numbers that are absent.
    """

    def __init__(self, group_id: str, missing: list[int], message: str | None = None):
        self.group_id = group_id
        self.missing = sorted(missing)
        names = ", ".join(f"sb{n:02d}" for n in self.missing)
        super().__init__(
            message
            or f"group {group_id} is incomplete: missing {names}. Wait for the files, "
            "or convert it with the missing subbands flagged (--allow-incomplete)."
        )


class NoCalibratorError(ContimgError):
    """No usable calibrator transits in the requested range."""


class NoCalibrationError(ContimgError):
    """No registered caltable set is valid for the requested time."""


class CatalogError(ContimgError):
    """A catalog write or read failed (bad row, unreadable table)."""


class TransientError(ContimgError):
    """A fault that may go away on retry (I/O hiccup, crashed child process)."""


class CasaError(TransientError):
    """A CASA task or tool call failed or crashed its process.

    Parameters
    ----------
    message : str
        What failed.
    log_path : path-like, optional
        The CASA log of the failed call.
    log_tail : str, optional
        The last lines of that log.
    crashed : bool
        True when the child process died (signal or non-zero exit) rather than
        raising a Python exception. Only crashes are worth retrying.
    """

    def __init__(
        self,
        message: str,
        *,
        log_path: str | Path | None = None,
        log_tail: str = "",
        crashed: bool = False,
    ):
        self.log_path = Path(log_path) if log_path else None
        self.log_tail = log_tail
        self.crashed = crashed
        text = message
        if self.log_path:
            text += f"\n  CASA log: {self.log_path}"
        if log_tail:
            text += "\n  last log lines:\n" + "\n".join(
                "    " + line for line in log_tail.splitlines()
            )
        super().__init__(text)
