"""Apply events to projections exactly once, one runner at a time, and rebuild them from the log.

Exactly once: a projection's rows and its checkpoint are written in one transaction, and that
transaction first locks the projection's checkpoint row (``SELECT ... FOR UPDATE``, or in an
append the ``UPDATE`` that advances it; SQLite's write lock does the same) and re-reads the
position there. Whoever applies a batch — a runner, or an append applying an inline projection —
does it under that lock and only from the stored position, so no event is applied twice or
skipped, whatever runs concurrently.

One runner at a time: runners (in one process or in several daemons on one database) take a lease
on a projection (``owner``, ``lease_until`` in its checkpoint row) and renew it with every batch; a
runner that finds the lease held by a live owner stands by, and takes over once the lease expires.

Inline projections (the ones the solver must read at once, such as the ref state) are applied in
the append's own transaction while they are ``live``: every append that carries an event type the
projection reads applies it there, under the checkpoint row's lock, and appends of other types cost
it nothing (its rows could not change). So a live inline projection is always at the head. While it
is ``rebuilding``, appends leave it alone and a runner catches it up; the runner's batches take the
append lock, so the step back to ``live`` happens with no append in flight and no event falls
between the runner and the appends.

Rebuild: one transaction empties the projection's tables and sets its checkpoint to position 0 with
status ``rebuilding``; runners then catch it up in batches. A rebuild that is killed stays
``rebuilding`` at its last committed batch, and running it again continues from there.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.errors import NotFound
from buildsvc.events.envelope import StoredEvent, format_time
from buildsvc.events.rows import driver_errors
from buildsvc.events.sql_store import APPEND_LOCK_KEY, SqlEventStore
from buildsvc.events.subscription import Subscription
from buildsvc.projections.base import Projection
from buildsvc.projections.schema import projection_checkpoints as checkpoints

__all__ = ["InlineProjections", "ProjectionRunner", "ProjectionStatus", "UnknownProjection"]

LIVE = "live"
REBUILDING = "rebuilding"


class UnknownProjection(NotFound):
    """A projection name that is not registered."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"no projection named {name!r} (there are: {', '.join(known)})")
        self.name = name


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectionStatus:
    """Where a projection is, against the head of the log."""

    name: str
    position: int
    head: int
    status: str
    owner: str | None
    lease_until: datetime | None
    inline: bool

    @property
    def lag(self) -> int:
        """Events the projection has not applied yet."""
        return max(self.head - self.position, 0)


def _now() -> datetime:
    return datetime.now(UTC)


def ensure_checkpoints(conn: Connection, names: Sequence[str]) -> None:
    """Create missing checkpoint rows (at position 0, live): safe when two processes race."""
    existing = set(conn.execute(sa.select(checkpoints.c.name).where(checkpoints.c.name.in_(names))).scalars())
    for name in names:
        if name in existing:
            continue
        values = {"name": name, "position": 0, "status": LIVE, "updated_at": _now()}
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(checkpoints).values(values).on_conflict_do_nothing())
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(checkpoints).values(values).on_conflict_do_nothing())


_ADVANCE_PG = (
    "UPDATE projection_checkpoints SET position = %s "
    "WHERE name = ANY(%s::text[]) AND status = %s RETURNING name"
)

_ADVANCE_SQLITE: dict[int, str] = {}
"""The same UPDATE on SQLite, by the number of projections it advances (a handful of texts)."""


class InlineProjections:
    """An append hook that applies live inline projections in the append's transaction."""

    def __init__(self, projections: Sequence[Projection]) -> None:
        self.projections = [p for p in projections if p.inline]
        self._advance = (
            checkpoints.update()
            .where(checkpoints.c.name.in_(sa.bindparam("names", expanding=True)))
            .where(checkpoints.c.status == LIVE)
            .values(position=sa.bindparam("position"))
            .returning(checkpoints.c.name)
        )

    def __call__(self, conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None:
        types = {e.type for e in appended}
        wanted = [p for p in self.projections if not p.event_types.isdisjoint(types)]
        if not wanted:
            return
        # One statement both locks and advances every wanted checkpoint that is live, and says which
        # were (RETURNING): the same row locks ``SELECT ... FOR UPDATE`` took, one round trip fewer.
        # A rebuild that changes a status first holds that row's lock; this UPDATE waits for it and
        # then re-checks ``status = live`` on the committed row (PostgreSQL re-evaluates the WHERE of
        # a row it waited for; SQLite has one writer), so a projection being rebuilt is left alone
        # exactly as before. The rows written below are in the same transaction as the new position.
        names, position = [p.name for p in wanted], appended[-1].position
        if conn.dialect.name == "postgresql":  # straight to the driver: once per append, on its clock
            with driver_errors(conn):
                pg = conn.connection.driver_connection
                found = pg.execute(_ADVANCE_PG, (position, names, LIVE), prepare=True)  # type: ignore[union-attr]
                live = {name for (name,) in found}
        elif conn.dialect.name == "sqlite":  # the same on the sqlite3 connection, one text per count
            sql = _ADVANCE_SQLITE.get(len(names))
            if sql is None:
                sql = _ADVANCE_SQLITE[len(names)] = (
                    "UPDATE projection_checkpoints SET position = ? "
                    f"WHERE name IN ({', '.join('?' * len(names))}) AND status = ? RETURNING name"
                )
            with driver_errors(conn):
                lite = conn.connection.driver_connection
                live = {name for (name,) in lite.execute(sql, (position, *names, LIVE)).fetchall()}  # type: ignore[union-attr]
        else:
            live = set(conn.execute(self._advance, {"names": names, "position": position}).scalars())
        for p in wanted:
            if p.name in live:
                p.apply(conn, appended)


class ProjectionRunner:
    """Catches projections up with the log, under leases, and rebuilds them."""

    def __init__(
        self,
        store: SqlEventStore,
        projections: Sequence[Projection],
        *,
        owner: str | None = None,
        lease_seconds: float = 15.0,
        batch_size: int = 2000,
    ) -> None:
        self.store = store
        self.db = store.db
        self.projections = {p.name: p for p in projections}
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=lease_seconds)
        self.batch_size = batch_size
        self.db.run(self._ensure, what="create projection checkpoints")

    def _ensure(self) -> None:
        with self.db.write() as conn:
            ensure_checkpoints(conn, list(self.projections))

    def projection(self, name: str) -> Projection:
        """The registered projection called ``name``."""
        try:
            return self.projections[name]
        except KeyError:
            raise UnknownProjection(name, list(self.projections)) from None

    # --- leases ------------------------------------------------------------------------------------

    def try_lease(self, name: str) -> bool:
        """Take or renew the lease on ``name``; False when another live runner holds it."""

        def once() -> bool:
            now = _now()
            with self.db.write() as conn:
                result = conn.execute(
                    checkpoints.update()
                    .where(
                        checkpoints.c.name == name,
                        sa.or_(
                            checkpoints.c.owner.is_(None),
                            checkpoints.c.owner == self.owner,
                            checkpoints.c.lease_until < now,
                        ),
                    )
                    .values(owner=self.owner, lease_until=now + self.lease)
                )
                return result.rowcount == 1

        return self.db.run(once, what=f"lease projection {name}")

    def release_all(self) -> None:
        """Give up every lease this runner holds (when a process is done with its runner)."""

        def once() -> None:
            with self.db.write() as conn:
                conn.execute(
                    checkpoints.update()
                    .where(checkpoints.c.owner == self.owner)
                    .values(owner=None, lease_until=None)
                )

        self.db.run(once, what="release projection leases")

    def release_lease(self, name: str) -> None:
        """Give the lease up so another runner can take over at once."""

        def once() -> None:
            with self.db.write() as conn:
                conn.execute(
                    checkpoints.update()
                    .where(checkpoints.c.name == name, checkpoints.c.owner == self.owner)
                    .values(owner=None, lease_until=None)
                )

        self.db.run(once, what=f"release projection {name}")

    # --- applying ----------------------------------------------------------------------------------

    def apply_batch(self, name: str, *, limit: int | None = None) -> int:
        """Apply the next batch of events to ``name`` under the lock; returns how many were applied.

        The caller should hold the lease; this checks it again inside the transaction, so a runner
        whose lease was taken over stops instead of racing the new owner.
        """
        return self._apply_batch(name, limit or self.batch_size)[0]

    def _apply_batch(self, name: str, limit: int, ahead: _ReadAhead | None = None) -> tuple[int, str, bool]:
        """(events applied, status afterwards, whether this runner still owns the lease)."""
        projection = self.projection(name)

        def once() -> tuple[int, str, bool]:
            with self.db.write() as conn:
                if projection.inline and self.db.is_postgres:
                    # No append may be in flight while an inline projection's runner decides.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK_KEY})
                row = conn.execute(
                    sa.select(checkpoints.c.position, checkpoints.c.status, checkpoints.c.owner)
                    .where(checkpoints.c.name == name)
                    .with_for_update()
                ).one()
                if row.owner != self.owner:
                    return 0, row.status, False
                if projection.inline and row.status == LIVE:
                    return 0, LIVE, True  # appends keep it at the head
                batch = ahead.take(row.position) if ahead is not None else None
                if batch is None:
                    batch = self.store.read_batch_in(conn, row.position, limit)
                values: dict[str, Any] = {"lease_until": _now() + self.lease, "updated_at": _now()}
                if batch:
                    projection.apply(conn, batch)
                    values["position"] = batch[-1].position
                status = LIVE if len(batch) < limit else row.status
                values["status"] = status
                conn.execute(checkpoints.update().where(checkpoints.c.name == name).values(values))
                return len(batch), status, True

        return self.db.run(once, what=f"apply projection {name}")

    def catch_up(self, name: str, *, stop: Callable[[], bool] = lambda: False) -> int:
        """Apply batches to ``name`` until it reaches the head; returns events applied (0 without lease)."""
        total = 0
        if not self.try_lease(name):
            return 0
        while not stop():
            applied, status, owner = self._apply_batch(name, self.batch_size)
            total += applied
            if not owner or (status == LIVE and applied < self.batch_size):
                break
        return total

    def run_once(self) -> dict[str, int]:
        """Catch every projection up once (those whose lease another runner holds are skipped)."""
        return {name: self.catch_up(name) for name in self.projections}

    def follow(
        self,
        stop: threading.Event,
        *,
        on_applied: Callable[[dict[str, int]], None] = lambda _: None,
    ) -> None:
        """Keep every projection caught up until ``stop`` is set, then give the leases up.

        Wakes on each new event, and at least three times per lease period to renew its leases (or
        to take over from a runner that died).
        """
        idle = self.lease.total_seconds() / 3
        wake = threading.Event()
        wakeups = Subscription(self.store, after=self.store.head(), poll_interval=min(idle, 1.0))

        def watch() -> None:
            for _ in wakeups:
                wake.set()

        watcher = threading.Thread(target=watch, name="projection-wakeups", daemon=True)
        watcher.start()
        try:
            while not stop.is_set():
                on_applied(self.run_once())
                wake.wait(idle)
                wake.clear()
        finally:
            wakeups.close()
            self.release_all()

    # --- rebuilding --------------------------------------------------------------------------------

    def start_rebuild(self, name: str) -> bool:
        """Empty ``name`` and restart it from position 0; False if a rebuild is already under way."""
        projection = self.projection(name)

        def once() -> bool:
            with self.db.write() as conn:
                row = conn.execute(
                    sa.select(checkpoints.c.status).where(checkpoints.c.name == name).with_for_update()
                ).one()
                if row.status == REBUILDING:
                    return False
                for table in reversed(projection.tables):
                    conn.execute(table.delete())
                conn.execute(
                    checkpoints.update()
                    .where(checkpoints.c.name == name)
                    .values(position=0, status=REBUILDING, updated_at=_now())
                )
                return True

        return self.db.run(once, what=f"start rebuilding {name}")

    def rebuild(
        self,
        name: str,
        *,
        progress: Callable[[int], None] = lambda _: None,
        wait_seconds: float = 60.0,
        batch_size: int = 10_000,
    ) -> None:
        """Rebuild ``name`` from the log (or continue a rebuild that was interrupted)."""
        self.start_rebuild(name)
        deadline = time.monotonic() + wait_seconds
        owner = self.try_lease(name)
        status = REBUILDING
        ahead = _ReadAhead(self.store, self.status(name).position, batch_size)
        try:
            while status == REBUILDING:
                if owner:
                    applied, status, owner = self._apply_batch(name, batch_size, ahead)
                    progress(applied)
                    deadline = time.monotonic() + wait_seconds
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"projection {name} is held by another runner that made no progress")
                else:
                    time.sleep(0.2)  # another runner holds the lease and is doing the work
                    owner = self.try_lease(name)
                    status = self.status(name).status
        finally:
            ahead.close()
        self.release_lease(name)

    # --- reading -----------------------------------------------------------------------------------

    def status(self, name: str) -> ProjectionStatus:
        """Position, head and lease of one projection."""
        return next(s for s in self.statuses() if s.name == self.projection(name).name)

    def statuses(self) -> list[ProjectionStatus]:
        """Position, head and lease of every projection."""

        def once() -> list[ProjectionStatus]:
            with self.db.read() as conn:
                head = self.store.head_in(conn)
                rows = {
                    r.name: r
                    for r in conn.execute(
                        sa.select(checkpoints).where(checkpoints.c.name.in_(list(self.projections)))
                    )
                }
            return [
                ProjectionStatus(
                    name=name,
                    # A live inline projection is at the head by construction (see the docstring).
                    position=head if p.inline and rows[name].status == LIVE else rows[name].position,
                    head=head,
                    status=rows[name].status,
                    owner=rows[name].owner,
                    lease_until=rows[name].lease_until,
                    inline=p.inline,
                )
                for name, p in self.projections.items()
            ]

        return self.db.run(once, what="read projection status")

    def digest(self, name: str) -> str:
        """sha256 over the projection's rows in key order: equal iff the read models are equal."""
        projection = self.projection(name)

        def once() -> str:
            h = hashlib.sha256()
            with self.db.read() as conn:
                for table in projection.tables:
                    h.update(f"table {table.name}\n".encode())
                    order = list(table.primary_key.columns)
                    for row in conn.execute(sa.select(table).order_by(*order)):
                        h.update(_canonical_row(row).encode())
                        h.update(b"\n")
            return h.hexdigest()

        return self.db.run(once, what=f"digest projection {name}")


def _canonical_row(row: Any) -> str:
    parts = []
    for value in row:
        if isinstance(value, datetime):
            parts.append(format_time(value))
        elif isinstance(value, bytes | memoryview):
            parts.append(bytes(value).hex())
        else:
            parts.append(repr(value))
    return "\x1f".join(parts)


class _ReadAhead:
    """Reads the next batches of the log on its own connection while the current one is applied.

    A rebuild alternates Python work (decoding, folding) with waits on the database (reading,
    copying rows in); reading ahead in a thread fills those waits. Events are immutable and appends
    are serialized, so a batch read outside the applying transaction is the same batch; ``take``
    hands one over only if it starts right after the checkpoint the transaction holds, and the
    caller reads the batch itself otherwise.
    """

    def __init__(self, store: SqlEventStore, after: int, limit: int, depth: int = 2) -> None:
        self._queue: queue.Queue[list[StoredEvent] | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, after, limit), name="projection-read-ahead", daemon=True
        )
        self._thread.start()
        self._done = False

    def _run(self, store: SqlEventStore, after: int, limit: int) -> None:
        try:
            while not self._stop.is_set():
                batch = store.read_batch(after, limit)
                self._put(batch)
                if len(batch) < limit:
                    break
                after = batch[-1].position
        except Exception:
            pass  # the applier falls back to reading in its own transaction
        self._put(None)

    def _put(self, item: list[StoredEvent] | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self, after: int) -> list[StoredEvent] | None:
        """The batch right after ``after``, or None when the read-ahead cannot supply it."""
        if self._done:
            return None
        batch = self._queue.get()
        if batch is None:
            self._done = True
            return None
        if batch and batch[0].position != after + 1:
            self.close()  # someone else moved the checkpoint: stop guessing
            return None
        return batch

    def close(self) -> None:
        """Stop reading ahead."""
        self._done = True
        self._stop.set()
        self._thread.join(timeout=5)
