"""Wake Status streams when their build's events commit.

A Status call reads its build's stream by version, then waits for more. Polling each stream every
50 ms costs one query per client per interval and delays every line by up to an interval (the last
line of a build too: a no-op rebuild's client waited ~25 ms for it). The daemon's own appends wake
waiters as they commit (:meth:`SqlEventStore.on_commit`); on PostgreSQL one thread also follows the
log with a :class:`~buildsvc.events.subscription.Subscription` (woken by the ``NOTIFY`` every append
sends), for what other processes append. Either notes, per stream, the last version seen; a Status
call waits until its stream passes the version it has read. The waiter still reads the events
itself, from the stream: the note is only a wake-up, so a missed or late one costs a wait of one
poll interval (the fallback), never an event.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from buildsvc.events.sql_store import SqlEventStore
from buildsvc.events.subscription import Subscription

__all__ = ["StreamWaker"]

# Streams remembered at most: a waiter whose stream was forgotten falls back to polling.
_MAX_STREAMS = 10_000
# How often the follower polls when its LISTEN connection is down.
_FOLLOW_POLL = 0.5


class StreamWaker:
    """Follows the log from now on; :meth:`wait` returns once a stream has passed a version."""

    def __init__(self, store: SqlEventStore, *, follow: bool) -> None:
        """``follow``: also follow the log for other processes' appends (PostgreSQL's NOTIFY)."""
        self._changed = threading.Condition()
        self._versions: OrderedDict[str, int] = OrderedDict()
        store.on_commit(self._note)
        self._follow: Subscription | None = None
        self._thread: threading.Thread | None = None
        if follow:
            self._follow = Subscription(store, after=store.head(), poll_interval=_FOLLOW_POLL)
            self._thread = threading.Thread(target=self._run, name="status-wake", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._follow is not None
        for stored in self._follow:
            self._note(stored.stream_id, stored.stream_version)

    def _note(self, stream: str, version: int) -> None:
        with self._changed:
            if version <= self._versions.get(stream, 0):
                return  # the commit hook and the follower both saw it
            self._versions[stream] = version
            self._versions.move_to_end(stream)
            while len(self._versions) > _MAX_STREAMS:
                self._versions.popitem(last=False)
            self._changed.notify_all()

    def wait(self, stream: str, after_version: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``stream`` to have a version above ``after_version``;
        whether it has (False means: read anyway, as a poll would).
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._versions.get(stream, 0) > after_version, timeout)

    def close(self) -> None:
        """Stop following (within the follower's poll interval)."""
        if self._follow is not None and self._thread is not None:
            self._follow.close()
            self._thread.join(_FOLLOW_POLL * 4)
