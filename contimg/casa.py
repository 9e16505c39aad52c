"""Run CASA tasks and tool code in a child process.

CASA is not thread-safe, keeps table locks for the life of its process, and can
crash the interpreter (a segfault in ``listobs`` at exit, for example). Every
CASA call of the pipeline therefore runs in a fresh child process:

* the child's CASA log goes to a path the caller chooses (next to the product),
  and the child's working directory is that log's directory, so no ``casa-*.log``
  or ``*.last`` file ever lands in the caller's working directory;
* because the child runs elsewhere, every relative path is made absolute against
  the caller's working directory before the child starts: the log path, the
  import path, path objects (``os.PathLike``) among the arguments and, for
  :func:`run_casa_task`, the task's file parameters (``vis``, ``caltable``,
  ``gaintable``...) even when they are strings;
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
    *args, **kwargs
        Passed to the target. Relative ``os.PathLike`` values (also inside lists,
        tuples and dicts) are made absolute against the caller's working
        directory; strings are passed as they are, so pass file names as
        absolute strings or as ``Path`` objects.

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
    args, kwargs = _absolute(args), _absolute(kwargs)
    name = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
    # '' and relative entries of sys.path mean the caller's working directory, not the child's.
    import_path = [os.path.abspath(p) for p in sys.path]
    payload = pickle.dumps(import_path) + pickle.dumps((target, args, kwargs, str(log_path)))
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


#: ``casatasks`` parameters that name files or directories (a string, or a list of them).
CASA_PATH_PARAMS = frozenset({
    "vis", "outputvis", "caltable", "gaintable", "fluxtable", "imagename", "fitsimage",
    "listfile", "outfile", "infile", "tablename", "complist", "startmodel",
})


def _absolute(value: Any) -> Any:
    """``value`` with every relative ``os.PathLike`` in it made absolute (caller's cwd)."""
    if isinstance(value, os.PathLike):
        return Path(os.path.abspath(value))
    if type(value) in (list, tuple):  # not a namedtuple's fields
        return type(value)(_absolute(v) for v in value)
    if type(value) is dict:
        return {k: _absolute(v) for k, v in value.items()}
    return value


def _absolute_strings(value: Any) -> Any:
    """A file parameter's value with relative path strings made absolute ('' kept: CASA's "none")."""
    if isinstance(value, str):
        return os.path.abspath(value) if value else value
    if type(value) in (list, tuple):
        return type(value)(_absolute_strings(v) for v in value)
    return _absolute(value)


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
        The task's parameters, passed through unchanged except that relative
        paths in the file parameters (:data:`CASA_PATH_PARAMS`) are made absolute
        against the caller's working directory.

    Returns
    -------
    object
        The task's return value.
    """
    params = {k: _absolute_strings(v) if k in CASA_PATH_PARAMS else v for k, v in params.items()}
    return run_in_casa(_call_task, task, params, log_path=log_path, timeout=timeout)
