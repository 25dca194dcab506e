"""The event log: event types, their envelope, the store and its subscriptions.

Everything buildsvc knows is an event appended here; every other package writes through
:class:`EventStore` and reads back from it.
"""

from __future__ import annotations

from buildsvc.events import catalog
from buildsvc.events.codec import (
    Event,
    EventSchemaError,
    UnknownEventType,
    decode_payload,
    encode_payload,
    event_type,
    registered_types,
    upcaster,
)
from buildsvc.events.database import Database, InvalidDatabaseURL, RetryPolicy, open_database
from buildsvc.events.envelope import AppendResult, NewEvent, StoredEvent
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.events.store import ANY, NO_STREAM, EventIdConflict, EventStore, StreamVersionConflict
from buildsvc.events.subscription import Subscription
from buildsvc.events.verify import ChainProblem, VerifyReport, verify_events

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendResult",
    "ChainProblem",
    "Database",
    "Event",
    "EventIdConflict",
    "EventSchemaError",
    "EventStore",
    "InvalidDatabaseURL",
    "NewEvent",
    "RetryPolicy",
    "SqlEventStore",
    "StoredEvent",
    "StreamVersionConflict",
    "Subscription",
    "UnknownEventType",
    "VerifyReport",
    "catalog",
    "decode_payload",
    "encode_payload",
    "event_type",
    "open_database",
    "registered_types",
    "upcaster",
    "verify_events",
]
