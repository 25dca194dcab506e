"""The cache index is written by upserts: an append that records a result reads no cache record first,
and the rows are those the log says (the later record of a key wins; a removal drops every output).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import CacheRecordAdded, CacheRecordRemoved
from buildsvc.events.database import Database
from buildsvc.projections import attach_projections
from buildsvc.projections.schema import cache_records


def added(key: str, snapshot: str, output: int = 0) -> CacheRecordAdded:
    return CacheRecordAdded(cache_key=key, vertex="v", snapshot_id=snapshot, output=output, worker="w")


def records(db: Database) -> list[tuple[str, int, str]]:
    with db.read() as conn:
        query = sa.select(cache_records.c.cache_key, cache_records.c.output, cache_records.c.snapshot_id)
        return sorted((r[0], r[1], r[2]) for r in conn.execute(query))


def test_records_are_upserted_without_reading_them_first(store: SqlEventStore, db: Database) -> None:
    attach_projections(store)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", seen)
    try:
        store.append("s", [added("k1", "a"), added("k1", "b"), added("k2", "c", output=1)])
        store.append("s", [added("k2", "d", output=1), added("k3", "e")])
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", seen)
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT") and "cache_records" in s]
    assert records(db) == [("k1", 0, "b"), ("k2", 1, "d"), ("k3", 0, "e")]

    # Removed, and added again in one append: the later record is there, the removed key's others not.
    store.append("s", [added("k3", "f", output=1), CacheRecordRemoved(cache_key="k3"), added("k3", "g")])
    store.append("s", [added("k1", "h", output=2), CacheRecordRemoved(cache_key="k1")])
    assert records(db) == [("k2", 1, "d"), ("k3", 0, "g")]
