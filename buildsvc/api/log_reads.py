"""``BuildEvents``: the log's events as stored, in batches, for the read commands of a remote client;
``ListBuilds``' rows as JSON.

The client folds them with the same pure projections the embedded commands use (``projections/``),
so ``history inspect|logs|replay|trace|provenance`` print the same whether they read the log
themselves or ask the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from buildsvc.api import convert
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.errors import InvalidInput
from buildsvc.events.envelope import StoredEvent, format_time
from buildsvc.events.store import EventStore

__all__ = ["read_events", "rows_to_json"]

# Big enough that a 100,000-event replay is a few hundred messages, small enough to stay far below
# gRPC's 4 MB message limit with ordinary payloads.
_BATCH = 500
_BATCH_BYTES = 2 * 1024 * 1024


def read_events(
    store: EventStore, *, ref: str = "", stream_id: str = "", after: int = 0, until: int = 0
) -> Iterator[pb.BuildEventsResponse]:
    """Batches of ``build-<ref>``'s events, or ``stream_id``'s, or (neither) the whole log, after
    position ``after`` and up to ``until`` (0: the end of the log as it is now).
    """
    if ref and stream_id:
        raise InvalidInput("BuildEvents: give ref or stream_id, not both")
    if after < 0 or until < 0:
        raise InvalidInput(f"BuildEvents: positions must not be negative (after {after}, until {until})")
    stream = f"build-{ref}" if ref else stream_id
    found: Iterable[StoredEvent]
    if stream:
        found = (s for s in store.read_stream(stream) if s.position > after)
    else:
        # The end as it is now: a log that keeps growing does not keep the call going.
        until = until or store.head()
        found = store.read_all(after=after, batch_size=5000)
    yield from _batches(found, until)


def _batches(found: Iterable[StoredEvent], until: int) -> Iterator[pb.BuildEventsResponse]:
    batch: list[pb.LogEvent] = []
    size = 0
    for stored in found:
        if until and stored.position > until:
            break
        batch.append(convert.stored_event_to_pb(stored))
        size += len(stored.payload_json)
        if len(batch) >= _BATCH or size >= _BATCH_BYTES:
            yield pb.BuildEventsResponse(events=batch)
            batch, size = [], 0
    if batch:
        yield pb.BuildEventsResponse(events=batch)


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    """Projection rows as JSON, times in the log's text form (as ``--format json`` prints them), so
    a client prints a daemon's rows exactly as it prints those it read itself.
    """
    return json.dumps(list(rows), default=_time_text)


def _time_text(value: object) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
