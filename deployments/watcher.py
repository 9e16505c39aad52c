"""Watch the incoming directory and announce each group once it is ready.

Polling (not inotify): it works on the network filesystems the correlator writes
to, and a missed poll only delays a group by one interval. The watcher emits
``contimg.group.ready``; the ingest deployment is triggered by it.
"""

from __future__ import annotations

import logging
import threading

from contimg.config import Settings
from contimg.conversion.discovery import discover_groups
from tasks import events, records

log = logging.getLogger(__name__)


class ReadyGroupWatcher:
    """Remembers which groups it has announced; :meth:`poll` returns the new ones."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.announced: set[str] = set()

    def poll(self) -> list[str]:
        """Group ids that are ready, not yet converted or failed, and not announced before."""
        s = self.settings
        if not s.incoming_dir.is_dir():
            return []
        groups = discover_groups(s.incoming_dir, tolerance_s=s.group_tolerance_s, settle_s=s.file_settle_s,
                                 timeout_s=s.group_timeout_s, expected_subbands=s.expected_subbands)
        ready = [g.group_id for g in groups if g.is_ready and g.group_id not in self.announced]
        if not ready:
            return []
        done = {gid for gid, row in records.latest_group_states(s).items() if row["state"] in records.FINAL_GROUP_STATES}
        fresh = [gid for gid in ready if gid not in done]
        self.announced.update(ready)
        return fresh

    def announce(self) -> list[str]:
        """Poll and emit ``contimg.group.ready`` for each new ready group."""
        fresh = self.poll()
        for group_id in fresh:
            log.info("group %s is ready", group_id)
            events.emit_group_event(events.GROUP_READY, group_id, settings=self.settings)
        return fresh


def watch_in_background(settings: Settings, *, interval_s: float = 10.0) -> threading.Event:
    """Run a watcher in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    watcher = ReadyGroupWatcher(settings)

    def loop():
        while not stop.is_set():
            try:
                watcher.announce()
            except Exception:  # noqa: BLE001 - keep watching; the sweep is the safety net
                log.exception("watcher poll failed")
            stop.wait(interval_s)

    threading.Thread(target=loop, name="contimg-watcher", daemon=True).start()
    return stop


def main() -> None:
    """Watch in the foreground (``python -m deployments.watcher``: the watcher of a work-pool setup)."""
    from contimg.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    log.info("watching %s for ready groups (Ctrl-C to stop)", settings.incoming_dir)
    stop = watch_in_background(settings)
    try:
        stop.wait()
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
