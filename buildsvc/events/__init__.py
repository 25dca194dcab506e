"""The event log: event types, their envelope, the store and its subscriptions.

Everything buildsvc knows is an event appended here; every other package writes through
:class:`EventStore` and reads back from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from buildsvc.events.envelope import AppendResult, NewEvent, StoredEvent
from buildsvc.events.store import ANY, NO_STREAM, EventIdConflict, EventStore, StreamVersionConflict

if TYPE_CHECKING:
    from buildsvc.events import catalog
    from buildsvc.events.database import Database, InvalidDatabaseURL, RetryPolicy, open_database
    from buildsvc.events.sql_store import SqlEventStore
    from buildsvc.events.subscription import Subscription
    from buildsvc.events.verify import ChainProblem, VerifyReport, verify_events

# The SQL side (SQLAlchemy, about 0.2 s to import) loads on first use: a client that only names events
# (the API model, the CLI talking to a daemon) never pays for it. So does the catalog (see
# codec._registered: decoding a stored event loads it).
_LAZY = {
    "catalog": "",
    "Database": "database",
    "InvalidDatabaseURL": "database",
    "RetryPolicy": "database",
    "open_database": "database",
    "SqlEventStore": "sql_store",
    "Subscription": "subscription",
    "ChainProblem": "verify",
    "VerifyReport": "verify",
    "verify_events": "verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not module:
        return importlib.import_module(f"buildsvc.events.{name}")
    return getattr(importlib.import_module(f"buildsvc.events.{module}"), name)


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
