"""Child side of :mod:`contimg.casa`: ``python -m contimg._casa_child RESULT_FILE``.

Reads the parent's ``sys.path`` and then ``(target, args, kwargs, log_path)``,
both pickled, from stdin, points the CASA
log at ``log_path``, calls the target and pickles ``("ok", result)`` or
``("error", (exception or None, traceback))`` into ``RESULT_FILE``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import traceback
from pathlib import Path


def _resolve(target):
    if callable(target):
        return target
    module, _, name = target.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> None:
    result_file = Path(sys.argv[1])
    # The parent's import path first, so targets pickled by reference resolve.
    sys.path[:] = pickle.load(sys.stdin.buffer)
    target, args, kwargs, log_path = pickle.load(sys.stdin.buffer)
    os.chdir(Path(log_path).parent)
    try:
        from casatasks import casalog

        casalog.setlogfile(log_path)
        casalog.showconsole(False)
        payload = ("ok", _resolve(target)(*args, **kwargs))
        data = pickle.dumps(payload)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        tb = traceback.format_exc()
        try:
            data = pickle.dumps(("error", (exc, tb)))
        except Exception:  # noqa: BLE001 - unpicklable exception or result
            data = pickle.dumps(("error", (None, tb)))
    tmp = result_file.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(result_file)


if __name__ == "__main__":
    main()
