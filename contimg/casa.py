"""Run CASA tasks and tool code in a child process.

CASA is not thread-safe, keeps table locks for the life of its process, and can
crash the interpreter (a segfault in ``listobs`` at exit, for example). Every
CASA call of the pipeline therefore runs in a fresh child process:

* the child's CASA log goes to a path the caller chooses (next to the product),
  and the child's working directory is that log's directory, so no ``casa-*.log``
  or ``*.last`` file ever lands in the caller's working directory;
* a Python exception in the child becomes :class:`~contimg.errors.CasaError`
  (or is re-raised as is when it is already a :class:`ContimgError`);
* a crash (signal, non-zero exit) or a timeout becomes ``CasaError(crashed=True)``,
  which the orchestration layer treats as transient and retries;
* the error carries the log path and the last lines of the log.

Examples
--------
>>> run_casa_task("gaincal", vis="x.ms", caltable="x.G", log_path="x.G.casa.log")  # doctest: +SKIP
>>> run_in_casa(my_module.function_using_casatools, "x.ms", log_path="f.log")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contimg.errors import CasaError, ContimgError

_LOG_TAIL_LINES = 15


def log_tail(log_path: str | Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    path = Path(log_path)
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 16384))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def run_in_casa(
    target: str | Callable,
    *args: Any,
    log_path: str | Path,
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """Call ``target(*args, **kwargs)`` in a child process with a CASA log.

    Parameters
    ----------
    target : callable or str
        A function importable by reference (defined in a module, not in a
        script's ``__main__``) or ``"module:function"``.
    log_path : path-like
        File the CASA log is written to; its directory is created and becomes the
        child's working directory.
    timeout : float, optional
        Seconds before the child is killed and ``CasaError(crashed=True)`` raised.

    Returns
    -------
    object
        Whatever the target returned (must be picklable).

    Raises
    ------
    CasaError
        The call raised, crashed its process, or timed out.
    ContimgError
        The target raised one of the pipeline's own errors; it is re-raised as is.
    """
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    name = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
    payload = pickle.dumps(list(sys.path)) + pickle.dumps((target, args, kwargs, str(log_path)))
    # A fresh interpreter (not fork: the caller may hold CASA or Prefect threads;
    # not multiprocessing spawn: that re-runs the caller's __main__ script).
    with tempfile.TemporaryDirectory(prefix="contimg-casa-") as tmp:
        result_file = Path(tmp) / "result.pkl"
        process = subprocess.Popen(
            [sys.executable, "-m", "contimg._casa_child", str(result_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, stderr = process.communicate(payload, timeout=timeout)
            why = f"crashed (exit code {process.returncode})"
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            why = f"timed out after {timeout} s"
        outcome = pickle.loads(result_file.read_bytes()) if result_file.exists() else None

    if outcome is None:
        tail = log_tail(log_path)
        err = stderr.decode("utf-8", errors="replace").strip().splitlines()[-_LOG_TAIL_LINES:]
        if err:
            tail = (tail + "\n" if tail else "") + "stderr:\n" + "\n".join(err)
        raise CasaError(f"CASA call {name} {why}", log_path=log_path, log_tail=tail, crashed=True)
    status, value = outcome
    if status == "ok":
        return value
    exc, tb = value
    if isinstance(exc, ContimgError):
        raise exc
    last = tb.strip().splitlines()[-1] if tb else "unknown error"
    raise CasaError(
        f"CASA call {name} failed: {last}",
        log_path=log_path,
        log_tail=log_tail(log_path),
    ) from exc


def _call_task(task: str, params: dict[str, Any]) -> Any:
    import casatasks

    return getattr(casatasks, task)(**params)


def run_casa_task(
    task: str,
    *,
    log_path: str | Path,
    timeout: float | None = None,
    **params: Any,
) -> Any:
    """Run one ``casatasks`` task in a child process.

    Parameters
    ----------
    task : str
        Name of the task in ``casatasks`` (``"gaincal"``, ``"bandpass"``...).
    log_path : path-like
        Where the task's CASA log is written.
    timeout : float, optional
        Seconds before the child is killed.
    **params
        The task's parameters, passed through unchanged.

    Returns
    -------
    object
        The task's return value.
    """
    return run_in_casa(_call_task, task, dict(params), log_path=log_path, timeout=timeout)
