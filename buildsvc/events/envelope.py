"""What surrounds an event in the log: ids, positions, metadata and the stream's hash chain.

``hash = sha256(prev_hash || canonical_bytes)`` where ``prev_hash`` is the hash of the stream's
previous event (32 zero bytes for the first) and ``canonical_bytes`` is the canonical JSON of the
envelope fields that the writer chose: event id, stream id, stream version, type, schema version,
payload, recorded time, actor and trace id. The global position is left out on purpose: it is
assigned by the store, and tampering with order is caught by stream versions and the position gaps
that ``verify`` reports.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from buildsvc.events.codec import Event, canonical_json, decode_payload

__all__ = ["GENESIS_HASH", "AppendResult", "NewEvent", "StoredEvent", "chain_hash", "format_time"]

GENESIS_HASH = bytes(32)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event about to be appended, with the id its writer chose (so a retry is recognised)."""

    event: Event
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    """An event as the log holds it."""

    position: int
    """Global position: gapless, and in commit order (see ``sql_store`` for why that holds)."""
    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    """1 for a stream's first event."""
    type: str
    schema_version: int
    payload: dict[str, Any]
    recorded_at: datetime
    actor: str
    trace_id: str
    hash: bytes

    def decode(self) -> Event:
        """The typed event, upcast to the current schema."""
        return decode_payload(self.type, self.schema_version, self.payload)

    def canonical_bytes(self) -> bytes:
        """The bytes the hash chain covers."""
        return canonical_bytes(
            event_id=self.event_id,
            stream_id=self.stream_id,
            stream_version=self.stream_version,
            type_name=self.type,
            schema_version=self.schema_version,
            payload=self.payload,
            recorded_at=self.recorded_at,
            actor=self.actor,
            trace_id=self.trace_id,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """Where appended events landed."""

    positions: tuple[int, ...]
    stream_version: int
    """The stream's version after the append."""
    duplicate: bool = False
    """True when every event id was already stored and nothing was written."""


def format_time(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds: the one text form of a time in canonical bytes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(
    *,
    event_id: uuid.UUID,
    stream_id: str,
    stream_version: int,
    type_name: str,
    schema_version: int,
    payload: dict[str, Any],
    recorded_at: datetime,
    actor: str,
    trace_id: str,
) -> bytes:
    """The canonical bytes of an envelope (see the module docstring)."""
    return canonical_json(
        {
            "event_id": str(event_id),
            "stream_id": stream_id,
            "stream_version": stream_version,
            "type": type_name,
            "schema_version": schema_version,
            "payload": payload,
            "recorded_at": format_time(recorded_at),
            "actor": actor,
            "trace_id": trace_id,
        }
    ).encode("utf-8")


def chain_hash(prev_hash: bytes, data: bytes) -> bytes:
    """``sha256(prev_hash || data)``."""
    return hashlib.sha256(prev_hash + data).digest()
