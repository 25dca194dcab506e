"""The event store on PostgreSQL and SQLite, through SQLAlchemy Core.

Why no reader ever skips an event
---------------------------------
A reader that follows the log asks for "everything after the last position I saw". That is only
safe if no event can later commit with a position *below* one the reader already passed: with a
plain sequence, transaction A can take position 7, transaction B take 8 and commit first, a reader
see 8, and A's 7 appear afterwards behind the reader's back (the late-commit problem).

We serialize appends: every append transaction first takes one transaction-scoped lock
(``pg_advisory_xact_lock`` on PostgreSQL; SQLite's database write lock through ``BEGIN IMMEDIATE``),
then assigns positions as ``max(position) + 1`` and holds the lock until it commits. So positions
are handed out in commit order, and they are gapless (a rolled-back append leaves no hole, which
also lets ``verify`` report a deleted event as a gap).

The alternative, recording ``pg_current_xact_id()`` with each row and reading only below
``pg_snapshot_xmin(pg_current_snapshot())``, lets writers run in parallel but makes every reader's
checkpoint a pair (xid, position), works only on PostgreSQL, and holds readers back behind any long
transaction anyway. A build service appends a few thousand events a second at most, one writer at a
time takes ~0.3 ms of lock each, and the simple rule is easy to prove: we took the lock.
``tests/contract/test_ordering.py`` holds a writer's transaction open while another commits, and
races concurrent writers against a following reader.

The optimistic append
---------------------
Reading the state (head, the stream's version and last hash) costs a round trip on PostgreSQL. A
store remembers the state its own last appends left; when it knows a stream, it takes the lock and
inserts at once with the positions, versions and hashes that state implies. If anything was
appended since (by any writer), the position it chose is taken and the insert fails on the primary
key: the transaction rolls back and the append is done the careful way. Positions only ever come
from appends, so a free position proves the remembered state was current.

Group commit
------------
A commit costs a flush to disk and, with inline projections attached, a few round trips of its
own; one append at a time, that cost caps a busy solver's throughput. So appends of one store that
arrive while another append of it is being committed wait, and go together in the next
transaction: the first waiter to find no commit in flight leads, takes every queued append (up to
``_MAX_GROUP``) and writes them in arrival order under the one append lock, runs the hooks once over
all their rows, and commits once. Nothing is acknowledged before that commit, so durability is what
it was (every acknowledged event is committed), and positions are still handed out under the lock
in commit order (invariant 4 holds as before). Each caller still gets its own result: its own
positions, its own ``StreamVersionConflict``, its own duplicate answer. A group the database
refuses as a whole (an event id stored elsewhere, a hook that fails) is rolled back and its appends
are done again one transaction each, so one bad append fails only its own caller.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.errors import StoreUnavailable
from buildsvc.events.codec import Event, canonical_json, encode_payload
from buildsvc.events.database import Database
from buildsvc.events.envelope import (
    GENESIS_HASH,
    AppendResult,
    CanonicalEncoder,
    NewEvent,
    StoredEvent,
    chain_hash,
)
from buildsvc.events.rows import rows_for
from buildsvc.events.schema import events as events_table
from buildsvc.events.store import ANY, EventIdConflict, StreamVersionConflict

__all__ = ["APPEND_LOCK_KEY", "NOTIFY_CHANNEL", "AppendHook", "SqlEventStore"]

APPEND_LOCK_KEY = 0x6275696C64737663  # "buildsvc" as a 64-bit advisory lock key
NOTIFY_CHANNEL = "buildsvc_events"
# At most this many appends share one transaction (a bound on a group's size and its time).
_MAX_GROUP = 64

Payload = tuple[uuid.UUID, str, int, str]
"""(event id, type name, schema version, canonical payload text) of one new event."""

_COLUMNS = (
    events_table.c.position,
    events_table.c.event_id,
    events_table.c.stream_id,
    events_table.c.stream_version,
    events_table.c.type,
    events_table.c.schema_version,
    events_table.c.payload,
    events_table.c.recorded_at,
    events_table.c.actor,
    events_table.c.trace_id,
    events_table.c.hash,
)


class AppendHook(Protocol):
    """Work done inside an append's transaction (inline projections), after the rows are inserted."""

    def __call__(self, conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None: ...


@dataclass(slots=True)
class _Request:
    """One caller's append, waiting for (or written by) a group commit."""

    stream_id: str
    payloads: list[Payload]
    expected_version: int | None
    actor: str
    trace_id: str
    result: AppendResult | None = None
    error: BaseException | None = None
    done: bool = False


def _row_to_event(row: Any) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        event_id=row[1],
        stream_id=row[2],
        stream_version=row[3],
        type=row[4],
        schema_version=row[5],
        payload_json=canonical_json(row[6]),
        recorded_at=row[7],
        actor=row[8],
        trace_id=row[9],
        hash=bytes(row[10]),
    )


class SqlEventStore:
    """An :class:`~buildsvc.events.store.EventStore` on a :class:`Database`."""

    def __init__(self, db: Database, *, hooks: Sequence[AppendHook] = ()) -> None:
        self.db = db
        self._hooks = list(hooks)
        self._committed: list[Callable[[str, int], None]] = []
        self._rows = rows_for(db.engine.dialect.name)
        self._known = _KnownStreams()
        # Group commit (see the module docstring): appends waiting for the next transaction, and
        # whether some caller is writing one now.
        self._group_cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._leading = False
        self._lock_params = (APPEND_LOCK_KEY, NOTIFY_CHANNEL)
        t = events_table
        self._head_sql = sa.select(sa.func.coalesce(sa.func.max(t.c.position), 0))
        self._read_stream_sql = (
            sa.select(*_COLUMNS)
            .where(t.c.stream_id == sa.bindparam("stream_id"), t.c.stream_version > sa.bindparam("after"))
            .order_by(t.c.stream_version)
        )

    def add_hook(self, hook: AppendHook) -> None:
        """Run ``hook`` in every later append's transaction."""
        self._hooks.append(hook)

    def on_commit(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(stream_id, version)`` after each later append of this process commits
        (a wake-up for waiters in this process; appends by other processes are not seen here).
        """
        self._committed.append(listener)

    # --- writing ----------------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent | Event],
        *,
        expected_version: int | None = ANY,
        actor: str = "",
        trace_id: str = "",
    ) -> AppendResult:
        """Append ``events`` to ``stream_id`` in one transaction (see the module docstring)."""
        if not events:
            raise ValueError("append needs at least one event")
        new = [e if isinstance(e, NewEvent) else NewEvent(event=e) for e in events]
        # Encode (and so validate) before touching the database: bad input writes nothing.
        payloads = [
            (
                n.event_id,
                type(n.event).type_name,
                n.event.schema_version,
                canonical_json(encode_payload(n.event)),
            )
            for n in new
        ]
        request = _Request(stream_id, payloads, expected_version, actor, trace_id)
        self._commit_with_group(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _commit_with_group(self, request: _Request) -> None:
        """Queue ``request``; lead a group commit whenever none is in flight, until it is done."""
        with self._group_cond:
            self._queue.append(request)
        while True:
            with self._group_cond:
                while not request.done and self._leading:
                    self._group_cond.wait()
                if request.done:
                    return
                self._leading = True
                group = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_GROUP))]
            try:
                self._commit_group(group)
            finally:
                with self._group_cond:
                    for r in group:
                        if r.result is None and r.error is None:  # the leader was interrupted
                            r.error = StoreUnavailable(
                                f"append to {r.stream_id}: interrupted, outcome unknown"
                            )
                        r.done = True
                    self._leading = False
                    self._group_cond.notify_all()
            for r in group:
                if r.result is not None:
                    for listener in self._committed:
                        listener(r.stream_id, r.result.stream_version)

    def _commit_group(self, group: list[_Request]) -> None:
        """Write ``group`` in one transaction; each request gets its result or error."""
        if len(group) > 1:
            try:
                self.db.run(lambda: self._group_once(group), what=f"append {len(group)} batches")
                return
            except StoreUnavailable as e:
                for r in group:
                    r.error = e
                return
            except Exception:  # each append again on its own, for its own error
                for r in group:
                    r.result = r.error = None
        for r in group:
            try:
                r.result = self.db.run(partial(self._append_once, r), what=f"append to {r.stream_id}")
            except Exception as e:  # handed to the caller that made the request
                r.error = e

    def _group_once(self, group: list[_Request]) -> None:
        """One attempt at a group's transaction: optimistic when every stream is known, else careful."""
        for r in group:
            r.result = r.error = None
        if self._rows.optimistic:
            planned = self._plan_known(group)
            if planned is not None:
                stored_by_request, head_before = planned
                try:
                    with self.db.write() as conn:
                        rows = [e for stored in stored_by_request for e in stored]
                        self._rows.lock_and_insert(conn, self._lock_params, rows)
                        for hook in self._hooks:
                            hook(conn, rows, head_before)
                except sa.exc.IntegrityError:
                    pass  # another process appended since, or a retried event id: read the state
                else:
                    self._finish(group, stored_by_request)
                    return
        self._group_careful(group)

    def _plan_known(self, group: list[_Request]) -> tuple[list[list[StoredEvent]], int] | None:
        """Seal every request from the remembered state, or None when some stream is not known (or an
        expected version does not match it: the careful path then reports the conflict).
        """
        states: dict[str, tuple[int, bytes]] = {}
        head = head_before = -1
        stored_by_request: list[list[StoredEvent]] = []
        for r in group:
            state = states.get(r.stream_id)
            if state is None:
                known = self._known.get(r.stream_id)
                if known is None:
                    return None
                if head < 0:
                    head = head_before = known[0]
                state = (known[1], known[2])
            if r.expected_version not in (None, state[0]):
                return None
            stored = self._seal(r.stream_id, r.payloads, head, state[0], state[1], r.actor, r.trace_id)
            stored_by_request.append(stored)
            head = stored[-1].position
            states[r.stream_id] = (stored[-1].stream_version, stored[-1].hash)
        return stored_by_request, head_before

    def _group_careful(self, group: list[_Request]) -> None:
        """Read each request's state under the lock (own rows of this transaction included)."""
        stored_by_request: list[list[StoredEvent]] = []
        with self.db.write() as conn:
            rows: list[StoredEvent] = []
            head_before: int | None = None
            for r in group:
                head, version, last_hash, duplicate = self._rows.state(
                    conn, self._lock_params, r.stream_id, r.payloads[0][0]
                )
                head_before = head if head_before is None else head_before
                stored: list[StoredEvent] = []
                if duplicate is not None:
                    try:
                        r.result = self._existing(conn, r.stream_id, [p[0] for p in r.payloads])
                    except EventIdConflict as e:
                        r.error = e
                elif r.expected_version is not None and r.expected_version != version:
                    r.error = StreamVersionConflict(r.stream_id, r.expected_version, version)
                else:
                    prev_hash = last_hash if last_hash is not None else GENESIS_HASH
                    stored = self._seal(
                        r.stream_id, r.payloads, head, version, prev_hash, r.actor, r.trace_id
                    )
                    self._rows.insert(conn, stored)  # a reused id fails the group: each goes alone then
                    rows += stored
                stored_by_request.append(stored)
            if rows:
                assert head_before is not None
                for hook in self._hooks:
                    hook(conn, rows, head_before)
        self._finish(group, stored_by_request)

    def _finish(self, group: list[_Request], stored_by_request: list[list[StoredEvent]]) -> None:
        """After the commit: remember the streams' states and hand out the results."""
        for r, stored in zip(group, stored_by_request, strict=True):
            if not stored:
                continue  # a duplicate or a conflict: its result or error is set
            last = stored[-1]
            self._known.put(r.stream_id, (last.position, last.stream_version, last.hash))
            r.result = AppendResult(
                positions=tuple(s.position for s in stored), stream_version=last.stream_version
            )

    def _append_once(self, r: _Request) -> AppendResult:
        """One append in its own transaction (a group of one, or a group's append done again alone)."""
        known = self._known.get(r.stream_id) if self._rows.optimistic else None
        if known is not None and r.expected_version in (None, known[1]):
            try:
                return self._append_with(r.stream_id, r.payloads, known, r.actor, r.trace_id, optimistic=True)
            except sa.exc.IntegrityError:
                pass  # another process appended since, or this is a retried event id: read the state
        return self._append_with(
            r.stream_id, r.payloads, None, r.actor, r.trace_id, expected_version=r.expected_version
        )

    def _append_with(
        self,
        stream_id: str,
        payloads: list[Payload],
        known: tuple[int, int, bytes] | None,
        actor: str,
        trace_id: str,
        *,
        optimistic: bool = False,
        expected_version: int | None = None,
    ) -> AppendResult:
        with self.db.write() as conn:
            if known is not None:
                head_before, version, prev_hash = known
            else:
                head_before, version, last_hash, duplicate = self._rows.state(
                    conn, self._lock_params, stream_id, payloads[0][0]
                )
                if duplicate is not None:
                    return self._existing(conn, stream_id, [p[0] for p in payloads])
                if expected_version is not None and expected_version != version:
                    raise StreamVersionConflict(stream_id, expected_version, version)
                prev_hash = last_hash if last_hash is not None else GENESIS_HASH
            stored = self._seal(stream_id, payloads, head_before, version, prev_hash, actor, trace_id)
            if optimistic:
                self._rows.lock_and_insert(conn, self._lock_params, stored)
            else:
                try:
                    self._rows.insert(conn, stored)
                except sa.exc.IntegrityError as e:
                    # Only a reused event id can collide: positions and versions are assigned under the lock.
                    raise EventIdConflict(_first_conflicting_id(conn, payloads), "in another append") from e
            for hook in self._hooks:
                hook(conn, stored, head_before)
        last = stored[-1]
        self._known.put(stream_id, (last.position, last.stream_version, last.hash))
        return AppendResult(positions=tuple(s.position for s in stored), stream_version=last.stream_version)

    @staticmethod
    def _seal(
        stream_id: str,
        payloads: list[Payload],
        head_before: int,
        version: int,
        prev_hash: bytes,
        actor: str,
        trace_id: str,
    ) -> list[StoredEvent]:
        """Positions, versions and the hash chain for the new events."""
        now = datetime.now(UTC)
        encode = CanonicalEncoder(stream_id=stream_id, recorded_at=now, actor=actor, trace_id=trace_id)
        stored: list[StoredEvent] = []
        for i, (event_id, type_name, schema_version, payload) in enumerate(payloads, start=1):
            digest = chain_hash(
                prev_hash,
                encode(
                    event_id=event_id,
                    stream_version=version + i,
                    type_name=type_name,
                    schema_version=schema_version,
                    payload_json=payload,
                ),
            )
            stored.append(
                StoredEvent(
                    position=head_before + i,
                    event_id=event_id,
                    stream_id=stream_id,
                    stream_version=version + i,
                    type=type_name,
                    schema_version=schema_version,
                    payload_json=payload,
                    recorded_at=now,
                    actor=actor,
                    trace_id=trace_id,
                    hash=digest,
                )
            )
            prev_hash = digest
        return stored

    def _existing(self, conn: Connection, stream_id: str, event_ids: list[uuid.UUID]) -> AppendResult:
        t = events_table
        rows = conn.execute(
            sa.select(t.c.event_id, t.c.stream_id, t.c.position, t.c.stream_version)
            .where(t.c.event_id.in_(event_ids))
            .order_by(t.c.position)
        ).all()
        found = {r.event_id: r for r in rows}
        for event_id in event_ids:
            row = found.get(event_id)
            if row is None:
                raise EventIdConflict(str(event_ids[0]), "but this append also has new event ids")
            if row.stream_id != stream_id:
                raise EventIdConflict(str(event_id), f"in stream {row.stream_id!r}, not {stream_id!r}")
        return AppendResult(
            positions=tuple(found[i].position for i in event_ids),
            stream_version=max(r.stream_version for r in rows),
            duplicate=True,
        )

    # --- reading ----------------------------------------------------------------------------------

    def head(self) -> int:
        """The newest committed position (0 for an empty log)."""

        def once() -> int:
            with self.db.read() as conn:
                return self.head_in(conn)

        return self.db.run(once, what="read the log head")

    def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[StoredEvent]:
        """A stream's events after ``after_version``, in version order."""

        def once() -> list[StoredEvent]:
            with self.db.read() as conn:
                result = conn.execute(self._read_stream_sql, {"stream_id": stream_id, "after": after_version})
                return [_row_to_event(r) for r in result]

        return self.db.run(once, what=f"read stream {stream_id}")

    def read_batch(self, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events after global position ``after``."""

        def once() -> list[StoredEvent]:
            with self.db.read() as conn:
                return self.read_batch_in(conn, after, limit)

        return self.db.run(once, what="read the log")

    def read_batch_in(self, conn: Connection, after: int, limit: int) -> list[StoredEvent]:
        """:meth:`read_batch` inside the caller's transaction."""
        return self._rows.read_after(conn, after, limit)

    def head_in(self, conn: Connection) -> int:
        """:meth:`head` inside the caller's transaction."""
        return int(conn.execute(self._head_sql).scalar_one())

    def read_all(
        self, *, after: int = 0, batch_size: int = 1000, limit: int | None = None
    ) -> Iterator[StoredEvent]:
        """Every event after ``after`` in global order, fetched ``batch_size`` at a time."""
        remaining = limit
        while remaining is None or remaining > 0:
            n = batch_size if remaining is None else min(batch_size, remaining)
            batch = self.read_batch(after, n)
            yield from batch
            if len(batch) < n:
                return
            after = batch[-1].position
            if remaining is not None:
                remaining -= len(batch)


def _first_conflicting_id(conn: Connection, payloads: list[Payload]) -> str:
    # The transaction is aborted on PostgreSQL; this lookup is best effort for the message.
    ids = [p[0] for p in payloads]
    try:
        with conn.engine.connect() as other:
            row = other.execute(
                sa.select(events_table.c.event_id).where(events_table.c.event_id.in_(ids)).limit(1)
            ).first()
        return str(row.event_id) if row is not None else str(ids[0])
    except sa.exc.SQLAlchemyError:
        return str(ids[0])


class _KnownStreams:
    """The state this store's own appends left, per stream (bounded): ``(head, version, last hash)``.

    Only the head of the newest append is a usable guess: an older entry's head is behind the log
    by construction, so a guess for a stream is the stream's version and hash with the latest head.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._lock = threading.Lock()
        self._head = 0
        self._streams: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._capacity = capacity

    def get(self, stream_id: str) -> tuple[int, int, bytes] | None:
        with self._lock:
            entry = self._streams.get(stream_id)
            return None if entry is None else (self._head, entry[0], entry[1])

    def put(self, stream_id: str, state: tuple[int, int, bytes]) -> None:
        head, version, last_hash = state
        with self._lock:
            self._head = max(self._head, head)
            self._streams[stream_id] = (version, last_hash)
            self._streams.move_to_end(stream_id)
            while len(self._streams) > self._capacity:
                self._streams.popitem(last=False)
