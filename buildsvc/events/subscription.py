"""Follow the log: catch up from a position, then deliver new events as they commit.

On PostgreSQL every append sends ``NOTIFY buildsvc_events`` inside its transaction, so the
notification arrives only once the events are visible; the subscriber LISTENs before it reads, so
a notification between its last read and its wait is never lost. The notification is only a
wake-up: what is delivered always comes from reading ``position > last seen``, which is safe because
appends are serialized (see ``sql_store``). Without a LISTEN connection (SQLite, or when it drops)
the subscriber polls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from buildsvc.events.envelope import StoredEvent
from buildsvc.events.sql_store import NOTIFY_CHANNEL, SqlEventStore

if TYPE_CHECKING:  # ~0.09 s to import: only a PostgreSQL subscriber needs it (see ``_listen``)
    import psycopg

__all__ = ["Subscription"]


class Subscription:
    """An iterator over every event after ``after``, live; stop it with :meth:`close`."""

    def __init__(
        self,
        store: SqlEventStore,
        *,
        after: int = 0,
        batch_size: int = 1000,
        poll_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.position = after
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._listener: psycopg.Connection[tuple[object, ...]] | None = None

    def close(self) -> None:
        """Stop the iteration (from any thread); the current wait ends within one poll interval."""
        self._stop.set()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._stop.is_set()

    def __iter__(self) -> Iterator[StoredEvent]:
        try:
            while not self._stop.is_set():
                self._listen()
                batch = self.store.read_batch(self.position, self.batch_size)
                for stored in batch:
                    self.position = stored.position
                    yield stored
                    if self._stop.is_set():
                        return
                if len(batch) < self.batch_size:
                    self._wait()
        finally:
            self._unlisten()

    def _listen(self) -> None:
        if self._listener is not None or not self.store.db.is_postgres:
            return
        import psycopg

        try:
            url = self.store.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listener = conn
        except psycopg.Error:
            self._listener = None  # fall back to polling; the next wait tries again

    def _wait(self) -> None:
        if self._listener is None:
            self._stop.wait(self.poll_interval)
            return
        import psycopg

        try:
            # Any notification means "something committed"; drain them all and read.
            for _ in self._listener.notifies(timeout=self.poll_interval, stop_after=1):
                break
        except psycopg.Error:
            self._unlisten()
            time.sleep(min(self.poll_interval, 0.1))

    def _unlisten(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None
