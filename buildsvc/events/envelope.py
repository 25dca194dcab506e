"""What surrounds an event in the log: ids, positions, metadata and the stream's hash chain.

``hash = sha256(prev_hash || canonical_bytes)`` where ``prev_hash`` is the hash of the stream's
previous event (32 zero bytes for the first) and ``canonical_bytes`` is the canonical JSON of the
envelope fields that the writer chose: event id, stream id, stream version, type, schema version,
payload, recorded time, actor and trace id. The global position is left out on purpose: it is
assigned by the store, and tampering with order is caught by stream versions and the position gaps
that ``verify`` reports.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from buildsvc.events.codec import Event, EventSchemaError, decode_payload
from buildsvc.ids import new_uuid

__all__ = ["GENESIS_HASH", "AppendResult", "NewEvent", "StoredEvent", "chain_hash", "format_time"]

GENESIS_HASH = bytes(32)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event about to be appended, with the id its writer chose (so a retry is recognised)."""

    event: Event
    event_id: uuid.UUID = field(default_factory=new_uuid)


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
    payload_json: str
    """The payload exactly as stored: its canonical JSON text (parsed only when asked for)."""
    recorded_at: datetime
    actor: str
    trace_id: str
    hash: bytes

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as a JSON object (parsed on every call: keep the result if you need it twice)."""
        value = orjson.loads(self.payload_json)
        if not isinstance(value, dict):
            raise EventSchemaError(self.type, "stored payload is not a JSON object")
        return value

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
            payload_json=self.payload_json,
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
    payload_json: str,
    recorded_at: datetime,
    actor: str,
    trace_id: str,
) -> bytes:
    """The canonical bytes of an envelope: ``canonical_json`` of its fields as one object.

    ``payload_json`` must itself be canonical JSON (it is what the store writes), so it is spliced
    in as it is instead of being parsed and written again; the result is byte for byte what
    ``canonical_json`` gives for the whole object (keys sorted, no spaces, UTF-8).
    """
    return CanonicalEncoder(stream_id=stream_id, recorded_at=recorded_at, actor=actor, trace_id=trace_id)(
        event_id=event_id,
        stream_version=stream_version,
        type_name=type_name,
        schema_version=schema_version,
        payload_json=payload_json,
    )


class CanonicalEncoder:
    """Canonical bytes for the events of one append, which share stream, time, actor and trace id.

    The shared fields are encoded once per append instead of once per event.
    """

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, *, stream_id: str, recorded_at: datetime, actor: str, trace_id: str) -> None:
        self._head = '{"actor":' + _text(actor) + ',"event_id":"'
        self._middle = '","schema_version":'
        self._tail = (
            f'"recorded_at":"{format_time(recorded_at)}",',
            f',"stream_id":{_text(stream_id)},"stream_version":',
            f',"trace_id":{_text(trace_id)},"type":',
        )

    def __call__(
        self,
        *,
        event_id: uuid.UUID,
        stream_version: int,
        type_name: str,
        schema_version: int,
        payload_json: str,
    ) -> bytes:
        """The canonical bytes of one event of the append."""
        recorded, stream, trace = self._tail
        return (
            f'{self._head}{event_id}","payload":{payload_json},{recorded}"schema_version":{schema_version:d}'
            f"{stream}{stream_version:d}{trace}{_type_text(type_name)}}}"
        ).encode()


@functools.lru_cache(maxsize=256)
def _type_text(type_name: str) -> str:
    return _text(type_name)


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def chain_hash(prev_hash: bytes, data: bytes) -> bytes:
    """``sha256(prev_hash || data)``."""
    return hashlib.sha256(prev_hash + data).digest()
