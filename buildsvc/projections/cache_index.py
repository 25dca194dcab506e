"""The cache index: for each cache key, output and worker, the snapshot that holds the result.

Inline, because the solver looks keys up while it walks a graph and must see a record the moment
the vertex that made it completes. A record removed (prune, or its data found missing) is gone from
the index; the same key recorded again later is a new record.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events import catalog as ev
from buildsvc.events.database import Database
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.refs import unreleased_refs
from buildsvc.projections.rows import RowBuffer, flush_together
from buildsvc.projections.schema import cache_records

__all__ = ["CacheIndexProjection", "SqlCacheIndex"]

_HANDLED = {ev.CacheRecordAdded.type_name, ev.CacheRecordRemoved.type_name}


class CacheIndexProjection:
    """Rows of live cache records."""

    name = "cache_index"
    tables: Sequence[sa.Table] = (cache_records,)
    inline = True
    event_types = frozenset(_HANDLED)

    def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Fold a batch of cache record events into the index."""
        relevant = [(s, s.decode()) for s in events if s.type in _HANDLED]
        if not relevant:
            return
        rows = RowBuffer(conn, cache_records)
        for stored, event in relevant:
            match event:
                case ev.CacheRecordAdded():
                    key = (event.cache_key, event.output, event.worker)
                    existing = rows.get(key)
                    values = {
                        "cache_key": event.cache_key,
                        "output": event.output,
                        "worker": event.worker,
                        "vertex": event.vertex,
                        "snapshot_id": event.snapshot_id,
                        "build_ref": event.build_ref,
                        "source": event.source,
                        "size_bytes": event.size_bytes,
                        "created_position": stored.position,
                    }
                    if existing is None:
                        rows.insert(values)
                    else:
                        existing.update(values)
                        rows.changed(existing)
                case ev.CacheRecordRemoved(cache_key=cache_key):
                    # Every output on every worker goes: flush first so rows added in this batch go too.
                    rows.flush()
                    conn.execute(cache_records.delete().where(cache_records.c.cache_key == cache_key))
                    rows = RowBuffer(conn, cache_records)
        flush_together([rows])  # a few new records: pipelined INSERTs, not a COPY


class SqlCacheIndex:
    """Looks cache keys up in the projection (the solver's ``CacheIndex`` port)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._query = sa.select(
            cache_records.c.output, cache_records.c.snapshot_id, cache_records.c.source
        ).where(
            cache_records.c.cache_key == sa.bindparam("key"), cache_records.c.worker == sa.bindparam("worker")
        )

    def lookup(self, cache_key: str, worker: str) -> dict[int, str]:
        """Output index -> snapshot id of the record for ``cache_key`` on ``worker`` (empty on a miss)."""

        def once() -> dict[int, str]:
            with self.db.read_statement() as conn:  # one SELECT: no BEGIN/COMMIT round trips
                return {
                    r.output: r.snapshot_id
                    for r in conn.execute(self._query, {"key": cache_key, "worker": worker})
                }

        return self.db.run(once, what="look up the cache index")

    def cache_refs(self, cache_key: str) -> list[tuple[str, str]]:
        """``(ref id, snapshot id)`` of the unreleased refs held by the records of ``cache_key``."""

        def once() -> list[tuple[str, str]]:
            with self.db.read() as conn:
                return [(r.ref_id, r.snapshot_id) for r in unreleased_refs(conn, holder=("cache", cache_key))]

        return self.db.run(once, what="read the cache record's refs")
