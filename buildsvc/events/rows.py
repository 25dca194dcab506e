"""The event table's hot paths in each driver's own SQL: append and read, without the ORM-free but
still costly SQLAlchemy statement layer (about 100 µs per statement, most of an append's budget).

SQLAlchemy keeps the engine, the pool, the transactions and every other query; the three
statements an append needs and the one a read needs go to the DBAPI cursor of the same
connection, in the same transaction. Each backend's column encodings are kept here, matched to
what SQLAlchemy's types write (see ``schema.py``), so both paths read each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events.envelope import StoredEvent

__all__ = ["EventRows", "PostgresRows", "SqliteRows", "StreamState", "driver_errors", "rows_for"]

_COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, {payload}, recorded_at, actor, "
    "trace_id, hash"
)

StreamState = tuple[int, int, bytes | None, int | None]
"""(head position, stream version, stream's last hash, stored position of the first event id)."""


class EventRows:
    """What differs between backends on the hot paths."""

    optimistic = False
    """Whether appends may skip the state read when the store knows the state (round trips cost)."""

    lock_sql: str | None = None
    state_sql: str
    insert_sql: str
    read_after_sql: str

    def driver(self, conn: Connection) -> Any:
        """The DBAPI connection under ``conn`` (same transaction)."""
        return conn.connection.driver_connection

    def translated(self, conn: Connection) -> AbstractContextManager[None]:
        """See :func:`driver_errors`."""
        return driver_errors(conn)

    def state(
        self, conn: Connection, lock: tuple[Any, ...], stream_id: str, first_id: uuid.UUID
    ) -> StreamState:
        """Take the append lock (where there is one) and read the stream's state."""
        raise NotImplementedError

    def lock_and_insert(self, conn: Connection, lock: tuple[Any, ...], events: Sequence[StoredEvent]) -> None:
        """Take the append lock and insert without reading the state first (see ``SqlEventStore``)."""
        raise NotImplementedError

    def insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Insert the rows."""
        with self.translated(conn):
            cur = self.driver(conn).cursor()
            try:
                if len(events) == 1:
                    cur.execute(self.insert_sql, self.row(events[0]))  # executemany costs extra round trips
                else:
                    cur.executemany(self.insert_sql, [self.row(e) for e in events])
            finally:
                cur.close()

    def row(self, e: StoredEvent) -> tuple[Any, ...]:
        """One event as insert parameters."""
        raise NotImplementedError

    def read_after(self, conn: Connection, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events after ``after``, in order."""
        with self.translated(conn):
            cur = self.driver(conn).cursor()
            try:
                cur.execute(self.read_after_sql, (after, limit))
                rows = cur.fetchall()
            finally:
                cur.close()
        return [self.event(r) for r in rows]

    def event(self, r: Any) -> StoredEvent:
        """One row as a stored event."""
        raise NotImplementedError


_UNNEST_UP_TO = 512
"""Events an append inserts in the round trip of its lock (one INSERT over arrays); more go by COPY."""


class PostgresRows(EventRows):
    """psycopg 3: the lock and the state query share one round trip (pipeline mode)."""

    optimistic = True

    lock_sql = "SELECT pg_advisory_xact_lock(%s), pg_notify(%s, '')"
    state_sql = (
        "SELECT (SELECT coalesce(max(position), 0) FROM events), last.stream_version, last.hash, "
        "(SELECT position FROM events WHERE event_id = %s) "
        "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT stream_version, hash FROM events "
        "WHERE stream_id = %s ORDER BY stream_version DESC LIMIT 1) AS last ON true"
    )
    insert_sql = (
        "INSERT INTO events (position, event_id, stream_id, stream_version, type, schema_version, payload, "
        "recorded_at, actor, trace_id, hash) VALUES (%s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s)"
    )
    insert_unnest_sql = (
        "INSERT INTO events (position, event_id, stream_id, stream_version, type, schema_version, payload, "
        "recorded_at, actor, trace_id, hash) SELECT position, event_id, stream_id, stream_version, type, "
        "schema_version, payload::json, recorded_at, actor, trace_id, hash FROM unnest(%b::int8[], "
        "%b::uuid[], %b::text[], %b::int4[], %b::text[], %b::int2[], %b::text[], %b::timestamptz[], "
        "%b::text[], %b::text[], %b::bytea[]) AS u(position, event_id, stream_id, stream_version, type, "
        "schema_version, payload, recorded_at, actor, trace_id, hash)"
    )
    copy_sql = (
        "COPY events (position, event_id, stream_id, stream_version, type, schema_version, payload, "
        "recorded_at, actor, trace_id, hash) FROM STDIN"
    )
    # payload::text: the stored text as it is (json keeps it verbatim), parsed only when asked for.
    read_after_sql = (
        f"SELECT {_COLUMNS.format(payload='payload::text')} FROM events "
        "WHERE position > %s ORDER BY position LIMIT %s"
    )

    def state(
        self, conn: Connection, lock: tuple[Any, ...], stream_id: str, first_id: uuid.UUID
    ) -> StreamState:
        """Lock, notify and read the state in one round trip."""
        pg = self.driver(conn)
        with self.translated(conn), pg.pipeline(), pg.cursor() as cur:
            cur.execute(self.lock_sql, lock)
            cur.execute(self.state_sql, (first_id, stream_id))
            head, version, last_hash, duplicate = cur.fetchone()
        return head, version or 0, bytes(last_hash) if last_hash is not None else None, duplicate

    def lock_and_insert(self, conn: Connection, lock: tuple[Any, ...], events: Sequence[StoredEvent]) -> None:
        """Take the append lock and insert, with no state read in between (the optimistic append).

        The events go in the same round trip as the lock (pipeline mode), as one INSERT over column
        arrays; a large batch is copied after it (COPY cannot run in a pipeline, and costs two round
        trips of its own).
        """
        pg = self.driver(conn)
        if len(events) > _UNNEST_UP_TO:
            with self.translated(conn), pg.cursor() as cur:
                cur.execute(self.lock_sql, lock)
            self.insert(conn, events)
            return
        with self.translated(conn), pg.pipeline(), pg.cursor() as cur:
            cur.execute(self.lock_sql, lock)
            if len(events) == 1:
                cur.execute(self.insert_sql, self.row(events[0]))
            else:  # one statement over column arrays: no COPY round trips of its own
                cur.execute(
                    self.insert_unnest_sql, tuple(list(c) for c in zip(*map(self.row, events), strict=True))
                )

    def insert(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """One INSERT for a single event; COPY for a batch (the fastest path into PostgreSQL)."""
        if len(events) == 1:
            super().insert(conn, events)
            return
        with self.translated(conn):
            cur = self.driver(conn).cursor()
            try:
                with cur.copy(self.copy_sql) as copy:
                    for e in events:
                        copy.write_row(self.row(e))
            finally:
                cur.close()

    def row(self, e: StoredEvent) -> tuple[Any, ...]:
        """Parameters in psycopg's types."""
        return (
            e.position,
            e.event_id,
            e.stream_id,
            e.stream_version,
            e.type,
            e.schema_version,
            e.payload_json,
            e.recorded_at,
            e.actor,
            e.trace_id,
            e.hash,
        )

    def event(self, r: Any) -> StoredEvent:
        """psycopg already gives UUIDs, aware datetimes and bytes."""
        return StoredEvent(
            position=r[0],
            event_id=r[1],
            stream_id=r[2],
            stream_version=r[3],
            type=r[4],
            schema_version=r[5],
            payload_json=r[6],
            recorded_at=r[7],
            actor=r[8],
            trace_id=r[9],
            hash=r[10],
        )


class SqliteRows(EventRows):
    """sqlite3: UUIDs as 32 hex digits and times as naive UTC text, as SQLAlchemy's types store them."""

    state_sql = (
        "SELECT (SELECT coalesce(max(position), 0) FROM events), "
        "(SELECT stream_version FROM events WHERE stream_id = ? ORDER BY stream_version DESC LIMIT 1), "
        "(SELECT hash FROM events WHERE stream_id = ? ORDER BY stream_version DESC LIMIT 1), "
        "(SELECT position FROM events WHERE event_id = ?)"
    )
    insert_sql = (
        "INSERT INTO events (position, event_id, stream_id, stream_version, type, schema_version, payload, "
        "recorded_at, actor, trace_id, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    read_after_sql = (
        f"SELECT {_COLUMNS.format(payload='payload')} FROM events "
        "WHERE position > ? ORDER BY position LIMIT ?"
    )

    def state(
        self, conn: Connection, lock: tuple[Any, ...], stream_id: str, first_id: uuid.UUID
    ) -> StreamState:
        """The write lock was taken by BEGIN IMMEDIATE; read the state."""
        with self.translated(conn):
            cur = self.driver(conn).cursor()
            try:
                head, version, last_hash, duplicate = cur.execute(
                    self.state_sql, (stream_id, stream_id, first_id.hex)
                ).fetchone()
            finally:
                cur.close()
        return head, version or 0, last_hash, duplicate

    def row(self, e: StoredEvent) -> tuple[Any, ...]:
        """Parameters in the text forms SQLAlchemy's Uuid and DateTime use on SQLite."""
        return (
            e.position,
            e.event_id.hex,
            e.stream_id,
            e.stream_version,
            e.type,
            e.schema_version,
            e.payload_json,
            e.recorded_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
            e.actor,
            e.trace_id,
            e.hash,
        )

    def event(self, r: Any) -> StoredEvent:
        """Parse the text forms back."""
        return StoredEvent(
            position=r[0],
            event_id=uuid.UUID(hex=r[1]),
            stream_id=r[2],
            stream_version=r[3],
            type=r[4],
            schema_version=r[5],
            payload_json=r[6],
            recorded_at=datetime.fromisoformat(r[7]).replace(tzinfo=UTC),
            actor=r[8],
            trace_id=r[9],
            hash=r[10],
        )


@contextmanager
def driver_errors(conn: Connection) -> Iterator[None]:
    """Raise driver errors as SQLAlchemy's, as if SQLAlchemy had run the statement.

    So retries see the same errors on both paths, and a connection that died is invalidated
    (dropped from the pool) instead of being handed out again.
    """
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as e:
        disconnect = conn.dialect.is_disconnect(e, conn.connection.dbapi_connection, None)
        if disconnect:
            conn.invalidate(e)
        raise sa.exc.DBAPIError.instance(
            None, None, e, dbapi.Error, connection_invalidated=disconnect, dialect=conn.dialect
        ) from e


def rows_for(dialect: str) -> EventRows:
    """The hot-path SQL of a backend."""
    if dialect == "postgresql":
        return PostgresRows()
    if dialect == "sqlite":
        return SqliteRows()
    raise ValueError(f"no event-table SQL for the {dialect} backend")
