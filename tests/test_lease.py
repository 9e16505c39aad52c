"""contimg.lease: one holder at a time, across processes; stale leases are taken over by exactly one."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time

import pytest

from contimg import lease as leases
from contimg.lease import LeaseHeldError, LeaseInfo, LeaseLostError


def _plant(path, *, expires_in: float, host: str = "elsewhere", pid: int = 12345, token: str = "theirs",
           lease_seconds: float = 60.0, **owner):
    """A lease file as another run would have written it."""
    now = time.time()
    info = LeaseInfo(host=host, pid=pid, flow_run_id="run-of-someone-else", token=token, acquired_at=now - 100,
                     renewed_at=now - 10, expires_at=now + expires_in, lease_seconds=lease_seconds, **owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.to_json())
    return info


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_acquire_skip_when_held_renew_release(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    lease = leases.try_acquire(path, 60, flow_run_id="run-1")
    assert lease is not None
    info = leases.read_lease(path)
    assert (info.host, info.pid, info.flow_run_id, info.token) == (socket.gethostname(), os.getpid(), "run-1",
                                                                   lease.token)
    assert info.expires_at == pytest.approx(info.acquired_at + 60)
    content = json.loads(path.read_text())
    assert {"owner", "acquired_at", "expires_at"} <= set(content) and content["owner"]["flow_run_id"] == "run-1"

    assert leases.try_acquire(path, 60) is None, "held: a second taker is refused"
    with pytest.raises(LeaseHeldError, match="run-1"):
        leases.acquire(path, 60)
    assert leases.read_lease(path).token == lease.token, "a refused taker touches nothing"

    time.sleep(0.02)
    before = leases.read_lease(path)
    lease.renew()
    after = leases.read_lease(path)
    assert after.token == before.token and after.expires_at > before.expires_at
    assert after.acquired_at == before.acquired_at and after.renewed_at > before.renewed_at
    lease.ensure_held()

    assert lease.release() is True
    assert not path.exists() and _leftovers(path.parent) == []
    with pytest.raises(LeaseLostError):
        lease.ensure_held()
    again = leases.try_acquire(path, 60)
    assert again is not None and again.token != lease.token
    again.release()


def test_heartbeat_keeps_a_short_lease_alive_and_the_context_releases_it(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    # The heartbeat renews every 0.1 s and the lease lasts 2 s, so a CI machine may stall the
    # heartbeat thread for almost 2 s without the lease lapsing (a 0.6 s lease lapsed on CI).
    with leases.try_acquire(path, 2.0, heartbeat_s=0.1) as lease:
        first = leases.read_lease(path).expires_at
        time.sleep(4.5)  # more than twice the lease: only the heartbeat keeps it
        assert leases.try_acquire(path, 2.0) is None
        lease.ensure_held()
        assert leases.read_lease(path).expires_at > first + 2.0
    assert not path.exists()


def test_an_expired_lease_is_taken_over(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    _plant(path, expires_in=-1)
    assert leases.is_stale(path, 60) is True
    lease = leases.try_acquire(path, 60)
    assert lease is not None and leases.read_lease(path).token == lease.token
    assert _leftovers(tmp_path / "leases") == ["g.lease"], "the stale lease is removed, not left aside"
    lease.release()


def test_an_unexpired_lease_of_another_host_is_held_even_if_its_pid_is_free_here(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    _plant(path, expires_in=30, pid=2**22 + 1)
    assert leases.try_acquire(path, 60) is None


def test_the_lease_of_a_dead_process_on_this_machine_is_taken_over_before_it_expires(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    child = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    here = leases._MACHINE
    if not here.get("boot_id") or not here.get("pid_ns"):
        pytest.skip("no /proc boot id or PID namespace here")
    _plant(path, expires_in=600, host=socket.gethostname(), pid=child.pid, boot_id=here["boot_id"],
           pid_ns=here["pid_ns"])
    lease = leases.try_acquire(path, 60)
    assert lease is not None
    lease.release()
    # ... but not one whose process is alive, nor one from another PID namespace
    _plant(path, expires_in=600, host=socket.gethostname(), pid=os.getppid(), **here)
    assert leases.try_acquire(path, 60) is None
    _plant(path, expires_in=600, host=socket.gethostname(), pid=child.pid, boot_id=here["boot_id"],
           pid_ns="pid:[1]")
    assert leases.try_acquire(path, 60) is None


def test_a_garbage_lease_is_held_until_its_mtime_plus_the_duration(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    path.parent.mkdir()
    path.write_bytes(b"\x00not json{")
    assert leases.try_acquire(path, 60) is None
    assert path.read_bytes() == b"\x00not json{", "untouched while it may still be someone's"
    old = time.time() - 61
    os.utime(path, (old, old))
    lease = leases.try_acquire(path, 60)
    assert lease is not None and leases.read_lease(path).token == lease.token
    lease.release()
    path.write_text("")  # an empty file (a create without hard links, interrupted)
    os.utime(path, (old, old))
    assert leases.try_acquire(path, 60) is not None


def test_a_holder_whose_lease_was_taken_over_finds_it_lost_and_leaves_the_new_one(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    slow = leases.try_acquire(path, 0.3)
    time.sleep(0.4)  # no heartbeat: expired
    taker = leases.try_acquire(path, 60)
    assert taker is not None
    with pytest.raises(LeaseLostError):
        slow.ensure_held()
    with pytest.raises(LeaseLostError):
        slow.renew()
    assert slow.release() is False
    assert leases.read_lease(path).token == taker.token, "the late holder's release leaves the taker's lease"
    taker.ensure_held()
    taker.release()
    assert _leftovers(tmp_path / "leases") == []


def test_a_taker_that_judged_a_lease_stale_leaves_the_fresh_one_another_took(tmp_path):
    """Taker A judges the lease stale; B takes it over first; A's takeover then finds B's live lease."""
    path = tmp_path / "leases" / "g.lease"
    _plant(path, expires_in=-1)
    assert leases.is_stale(path, 60)  # A's look
    b = leases.try_acquire(path, 60)  # B is faster
    assert b is not None
    leases._take_over_stale(path, 60)  # A, late
    assert leases.read_lease(path).token == b.token
    b.ensure_held()
    assert leases.try_acquire(path, 60) is None
    assert _leftovers(tmp_path / "leases") == ["g.lease"]
    b.release()


def test_a_takeover_lock_left_by_a_dead_taker_expires(tmp_path):
    path = tmp_path / "leases" / "g.lease"
    _plant(path, expires_in=-1)
    lock = path.with_name(f".{path.name}.takeover")
    lock.write_text("{}")
    assert leases.try_acquire(path, 60) is None  # a takeover is (apparently) under way
    old = time.time() - leases.TAKEOVER_LOCK_S - 1
    os.utime(lock, (old, old))
    held = leases.try_acquire(path, 60)
    assert held is not None and not lock.exists()
    held.release()


def test_settings_validate_the_heartbeat(tmp_path):
    with pytest.raises(ValueError):
        leases.try_acquire(tmp_path / "leases" / "g.lease", 10, heartbeat_s=10)
    from contimg.config import load_settings

    s = load_settings(environ={"CONTIMG_LEASE_SECONDS": "90"})
    assert s.lease_seconds == 90 and s.lease_heartbeat_interval_s == 30
    assert load_settings(environ={}, lease_heartbeat_s=5).lease_heartbeat_interval_s == 5


def _race(paths, start, results):
    start.wait()
    won = []
    for path in paths:
        lease = leases.try_acquire(path, 60)
        if lease is not None:
            won.append((str(path), lease.token))
    results.put((os.getpid(), won))


@pytest.mark.parametrize("n_takers", [2, 4])
def test_processes_racing_to_take_over_stale_leases_exactly_one_wins_each(tmp_path, n_takers):
    paths = [tmp_path / "leases" / f"g{i:03d}.lease" for i in range(150)]
    for path in paths:
        _plant(path, expires_in=-5)
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(paths, start, results)) for _ in range(n_takers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every child imported and waiting
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners: dict[str, list[str]] = {}
    for _, won in outcomes:
        for path, token in won:
            winners.setdefault(path, []).append(token)
    assert sorted(winners) == sorted(map(str, paths)), "every stale lease is taken by someone"
    assert all(len(tokens) == 1 for tokens in winners.values()), {p: t for p, t in winners.items() if len(t) > 1}
    for path in paths:
        assert leases.read_lease(path).token == winners[str(path)][0], "the file is the winner's"
    assert sorted(_leftovers(tmp_path / "leases")) == sorted(p.name for p in paths), "no temporary or aside files left"
    print(f"{n_takers} takers: wins per process {[len(w) for _, w in outcomes]}")
