"""When a task is worth retrying: transient faults only, never bad input."""

from __future__ import annotations

from contimg.errors import CasaError, ContimgError, TransientError


def is_transient(exc: BaseException) -> bool:
    """True for faults a retry may cure: a crashed CASA child, an I/O error.

    A CASA task that *raised* (bad parameters, bad data) is not transient, and
    no :class:`~contimg.errors.InvalidInputError` ever is.
    """
    if isinstance(exc, CasaError):
        return exc.crashed
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, ContimgError):
        return False
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, FileExistsError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only :func:`is_transient` failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as raised:  # noqa: BLE001 - some states raise on access
        exc = raised
    return isinstance(exc, BaseException) and is_transient(exc)
