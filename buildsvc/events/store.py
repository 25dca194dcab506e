"""The port every part of buildsvc writes its facts through and reads them back from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from buildsvc.errors import Conflict
from buildsvc.events.codec import Event
from buildsvc.events.envelope import AppendResult, NewEvent, StoredEvent

__all__ = ["ANY", "NO_STREAM", "EventIdConflict", "EventStore", "StreamVersionConflict"]

ANY: int | None = None
"""``expected_version`` that skips the optimistic check."""
NO_STREAM = 0
"""``expected_version`` for a stream that must not exist yet."""


class StreamVersionConflict(Conflict):
    """An append expected a stream version that is not the stream's current one."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r}: expected version {expected}, but it is at version {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class EventIdConflict(Conflict):
    """An event id is already stored, but not as part of the same append (a reused id)."""

    def __init__(self, event_id: str, detail: str) -> None:
        super().__init__(f"event id {event_id} is already stored {detail}")
        self.event_id = event_id


class EventStore(Protocol):
    """An append-only log of events in streams, with one global order."""

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent | Event],
        *,
        expected_version: int | None = ANY,
        actor: str = "",
        trace_id: str = "",
    ) -> AppendResult:
        """Append atomically; retried appends of the same event ids return the stored positions."""
        ...

    def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[StoredEvent]:
        """A stream's events in version order."""
        ...

    def read_all(
        self, *, after: int = 0, batch_size: int = 1000, limit: int | None = None
    ) -> Iterator[StoredEvent]:
        """Every event after global position ``after``, in order, fetched in batches."""
        ...

    def head(self) -> int:
        """The global position of the newest committed event (0 when empty)."""
        ...
