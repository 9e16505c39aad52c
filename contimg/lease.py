"""Leases: one holder of a group at a time, across processes and nodes sharing a filesystem.

A lease is a small JSON file (``naming.group_lease_path``: ``<scratch>/leases/<stem>.lease``)
saying who holds it and until when::

    {"owner": {"host": ..., "pid": ..., "flow_run_id": ..., "token": ..., ...},
     "acquired_at": "...", "renewed_at": "...", "expires_at": "...", "lease_seconds": 900}

* **Acquire**: the content is written to a private temporary file that is then
  hard-linked to the lease name. ``link`` fails if the name exists, atomically,
  also on NFS (where ``O_EXCL`` was long unreliable), and the file appears with
  its whole content. Where hard links are not supported, ``O_CREAT | O_EXCL``.
* **Held**: an existing lease whose ``expires_at`` is in the future (a file that
  cannot be parsed: whose mtime + the lease duration is) belongs to someone
  else: :func:`try_acquire` returns ``None`` and touches nothing.
* **Renew**: the holder rewrites the file (temporary file + rename) with a new
  expiry, from a heartbeat thread every third of the duration; a holder that
  finds its lease gone, someone else's, or already expired stops renewing and
  marks it *lost* (:meth:`Lease.ensure_held` raises :class:`LeaseLostError`).
* **Take over**: a stale lease (expired, or its owner is a process that no
  longer exists on this very machine) is removed by one taker at a time: each
  first creates ``.<name>.takeover`` exclusively, looks at the lease again under
  it and deletes it only if it is still stale; then it creates its own with
  ``link`` like anyone else, so exactly one process holds the lease. A takeover
  lock older than 30 s (its taker died) is removed.
* **Release**: the holder renames the file aside, checks the token, and deletes it.

Expiry compares times written by different hosts: their clocks must agree to
well under the lease duration (NTP). The mechanics know nothing of groups,
Prefect or the catalog: the caller names the file and says who it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from contimg.errors import ContimgError

log = logging.getLogger(__name__)

#: Errors of ``link`` that mean "this filesystem has no hard links": fall back to ``O_EXCL``.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class LeaseHeldError(ContimgError):
    """Someone else holds the lease (not an error of the input: never retried, never recorded)."""

    def __init__(self, path: Path, holder: "LeaseInfo | None"):
        self.path = Path(path)
        self.holder = holder
        who = holder.describe() if holder else "an unreadable lease file (stale after its mtime + duration)"
        super().__init__(f"{self.path} is held by {who}: another run is working on it")


class LeaseLostError(ContimgError):
    """Our lease expired or was taken over while we worked: stop before touching anything more."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # unreadable is not absent
        log.warning("cannot read lease %s: %s", path, exc)
        return ""


def _machine() -> dict:
    """What tells this kernel and PID namespace apart from others (for the dead-owner shortcut)."""
    out = {}
    with contextlib.suppress(OSError):
        out["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        out["pid_ns"] = os.readlink("/proc/self/ns/pid")
    return out


_MACHINE = _machine()


@dataclass(frozen=True)
class LeaseInfo:
    """The content of a lease file."""

    host: str
    pid: int
    flow_run_id: str | None
    token: str
    acquired_at: float
    renewed_at: float
    expires_at: float
    lease_seconds: float
    boot_id: str | None = None
    pid_ns: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "LeaseInfo | None":
        """The lease in ``text``, or ``None`` when it is not a lease this module wrote."""
        if not text:
            return None
        try:
            data = json.loads(text)
            owner = data["owner"]
            return cls(
                host=str(owner["host"]), pid=int(owner["pid"]), flow_run_id=owner.get("flow_run_id"),
                token=str(owner["token"]), acquired_at=_epoch(data["acquired_at"]),
                renewed_at=_epoch(data.get("renewed_at") or data["acquired_at"]),
                expires_at=_epoch(data["expires_at"]), lease_seconds=float(data["lease_seconds"]),
                boot_id=owner.get("boot_id"), pid_ns=owner.get("pid_ns"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def to_json(self) -> str:
        owner = {"host": self.host, "pid": self.pid, "flow_run_id": self.flow_run_id, "token": self.token,
                 "boot_id": self.boot_id, "pid_ns": self.pid_ns}
        return json.dumps({
            "owner": owner, "acquired_at": _iso(self.acquired_at), "renewed_at": _iso(self.renewed_at),
            "expires_at": _iso(self.expires_at), "lease_seconds": self.lease_seconds,
        }, indent=1) + "\n"

    def describe(self) -> str:
        run = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        return f"{self.host} pid {self.pid}{run} until {_iso(self.expires_at)}"

    def owner_is_dead_here(self) -> bool:
        """True only when the owner ran on this kernel, in this PID namespace, and is gone."""
        if not (self.boot_id and self.pid_ns) or (self.boot_id, self.pid_ns) != (
                _MACHINE.get("boot_id"), _MACHINE.get("pid_ns")):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: it exists, as someone else
            return False
        return False


def read_lease(path: str | os.PathLike) -> LeaseInfo | None:
    """The lease at ``path``, or ``None`` (no file, or one that cannot be parsed)."""
    return LeaseInfo.parse(_read_text(os.fspath(path)))


def _stale(info: LeaseInfo | None, mtime: float, lease_seconds: float, now: float) -> bool:
    if info is None:  # garbage (or empty: a create without links in progress): judged by its age
        return now >= mtime + lease_seconds
    return now >= info.expires_at or info.owner_is_dead_here()


def is_stale(path: str | os.PathLike, lease_seconds: float, *, now: float | None = None) -> bool | None:
    """Whether the lease at ``path`` may be taken over; ``None`` when there is none."""
    path = os.fspath(path)
    text = _read_text(path)
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    if text is None:  # gone between the two looks
        return None
    return _stale(LeaseInfo.parse(text), mtime, lease_seconds, time.time() if now is None else now)


def _aside(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{what}-{uuid.uuid4().hex[:12]}")


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; True when we created it."""
    tmp = _aside(path, "new")
    with open(tmp, "x") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        with contextlib.suppress(OSError):
            if os.stat(tmp).st_nlink == 2:  # NFS: the link happened, its reply was lost
                return True
        if exc.errno not in _NO_LINKS:
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    try:  # no hard links here: exclusive create, then write
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _put_back(aside: Path, path: Path) -> bool:
    """Move a file renamed aside by mistake back to ``path`` (unless someone created it since)."""
    try:
        os.link(aside, path)
        restored = True
    except FileExistsError:
        restored = False
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        try:  # no links: rename only if the name is still free (a small window remains)
            restored = not path.exists()
            if restored:
                os.rename(aside, path)
        except OSError:
            restored = False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
    return restored


#: A takeover lock older than this belongs to a taker that died mid-takeover (a takeover takes milliseconds).
TAKEOVER_LOCK_S = 30.0


def _take_over_stale(path: Path, lease_seconds: float) -> None:
    """Remove a stale lease so that a create can follow, one taker at a time.

    Takers serialise on an exclusive ``.<name>.takeover`` file and look again under
    it: a lease that another taker replaced meanwhile is live and stays. Moving the
    lease aside by rename instead let a slow taker grab the fresh lease of a faster
    one, and with a third process creating in the gap, two holders each believed
    they held it (seen with four processes racing on a loaded machine).
    """
    lock = path.with_name(f".{path.name}.takeover")
    if not _create(lock, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(lock).st_mtime > TAKEOVER_LOCK_S:
                log.warning("removing the takeover lock %s of a taker that died", lock.name)
                os.unlink(lock)
        return
    try:
        if is_stale(path, lease_seconds):
            info = read_lease(path)
            log.warning("taking over the stale lease %s (was %s)", path.name,
                        info.describe() if info else "an unreadable lease file")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


class Lease:
    """A lease we hold. Use as a context manager to heartbeat it and release it at the end."""

    def __init__(self, path: Path, info: LeaseInfo, *, heartbeat_s: float | None = None):
        self.path = path
        self.info = info
        self.token = info.token
        self.lease_seconds = info.lease_seconds
        self.expires_at = info.expires_at
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else info.lease_seconds / 3
        self.lost = threading.Event()
        self._lost_reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.released = False

    def __repr__(self) -> str:
        return f"Lease({self.path}, {self.info.describe()})"

    def _lose(self, reason: str) -> LeaseLostError:
        if not self.lost.is_set():
            self._lost_reason = reason
            self.lost.set()
            log.error("lease %s lost: %s", self.path.name, reason)
        return LeaseLostError(f"lease {self.path} lost: {self._lost_reason}")

    def _current(self) -> LeaseInfo | None:
        # A releasing process that renamed our lease aside by mistake puts it back within moments.
        for delay in (0.0, 0.05, 0.2):
            time.sleep(delay)
            text = _read_text(os.fspath(self.path))
            if text is not None:
                return LeaseInfo.parse(text)
        return None

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease file is still ours and unexpired."""
        if self.lost.is_set() or self.released:
            raise LeaseLostError(f"lease {self.path} lost: {self._lost_reason or 'released'}")
        if time.time() >= self.expires_at:
            raise self._lose("expired before it was renewed (heartbeat late)")
        current = self._current()
        if current is None or current.token != self.token:
            raise self._lose(f"now held by {current.describe()}" if current else "the lease file is gone")

    def renew(self) -> None:
        """Extend the expiry by the lease duration from now."""
        with self._lock:
            self.ensure_held()
            now = time.time()
            info = dataclasses.replace(self.info, renewed_at=now, expires_at=now + self.lease_seconds)
            tmp = _aside(self.path, "renew")
            with open(tmp, "x") as fh:
                fh.write(info.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self.info, self.expires_at = info, info.expires_at

    def release(self) -> bool:
        """Stop the heartbeat and remove the lease file if it is still ours; True when it was."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.released:
                return False
            self.released = True
            aside = _aside(self.path, "released")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                log.error("lease %s was gone at release (taken over as stale?)", self.path)
                return False
            info = read_lease(aside)
            if info is not None and info.token == self.token:
                os.unlink(aside)
                return True
            log.error("lease %s was no longer ours at release (%s); leaving it", self.path,
                      info.describe() if info else "unreadable")
            _put_back(aside, self.path)
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except LeaseLostError:
                return
            except OSError as exc:  # a filesystem hiccup: the next beat tries again before expiry
                log.warning("could not renew lease %s: %s", self.path, exc)

    def start_heartbeat(self) -> None:
        """Renew from a daemon thread every ``heartbeat_s`` until released."""
        if self._thread is None and self.heartbeat_s > 0:
            self._thread = threading.Thread(target=self._beat, name=f"lease-{self.path.stem}", daemon=True)
            self._thread.start()

    def __enter__(self) -> "Lease":
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_acquire(path: str | os.PathLike, lease_seconds: float, *, heartbeat_s: float | None = None,
                flow_run_id: str | None = None) -> Lease | None:
    """Take the lease at ``path``, taking over a stale one; ``None`` when someone else holds it.

    Parameters
    ----------
    path : path
        The lease file (its directory is created).
    lease_seconds : float
        How long the lease lasts without renewal.
    heartbeat_s : float, optional
        Renewal interval once the lease is entered as a context manager
        (default a third of ``lease_seconds``); must be shorter than it.
    flow_run_id : str, optional
        Recorded as part of the owner, for operators.
    """
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
    if heartbeat_s is not None and not 0 < heartbeat_s < lease_seconds:
        raise ValueError(f"the heartbeat ({heartbeat_s} s) must be shorter than the lease ({lease_seconds} s)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        now = time.time()
        info = LeaseInfo(host=socket.gethostname(), pid=os.getpid(), flow_run_id=flow_run_id,
                         token=uuid.uuid4().hex, acquired_at=now, renewed_at=now, expires_at=now + lease_seconds,
                         lease_seconds=float(lease_seconds), boot_id=_MACHINE.get("boot_id"),
                         pid_ns=_MACHINE.get("pid_ns"))
        if _create(path, info.to_json()):
            return Lease(path, info, heartbeat_s=heartbeat_s)
        stale = is_stale(path, lease_seconds)
        if stale is None:  # released or moved aside since: try again
            continue
        if not stale:
            return None
        _take_over_stale(path, lease_seconds)
    return None  # it kept changing hands under us: someone else is clearly on it


def acquire(path: str | os.PathLike, lease_seconds: float, **kwargs) -> Lease:
    """:func:`try_acquire`, raising :class:`LeaseHeldError` when the lease is held."""
    lease = try_acquire(path, lease_seconds, **kwargs)
    if lease is None:
        raise LeaseHeldError(Path(path), read_lease(path))
    return lease


@contextlib.contextmanager
def hold(path: str | os.PathLike, lease_seconds: float, **kwargs) -> Iterator[Lease]:
    """Acquire (or raise :class:`LeaseHeldError`), heartbeat while the block runs, release at the end."""
    with acquire(path, lease_seconds, **kwargs) as lease:
        yield lease
