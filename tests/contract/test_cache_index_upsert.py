"""The cache index is written by upserts: an append that records a result reads no cache record first,
and the rows are those the log says (the later record of a key wins; a removal drops every output).
"""

from __future__ import annotations

from typing import Any

import pytest
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


def spy_on_psycopg(monkeypatch: pytest.MonkeyPatch, statements: list[str]) -> None:
    """Record what psycopg cursors run: on PostgreSQL the projections write through psycopg
    itself, past SQLAlchemy's events."""
    import psycopg

    for name in ("execute", "executemany", "copy"):
        original = getattr(psycopg.Cursor, name)

        def spy(cursor: Any, query: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            statements.append(query if isinstance(query, str) else repr(query))
            return _original(cursor, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, name, spy)


def test_records_are_upserted_without_reading_them_first(
    store: SqlEventStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    attach_projections(store)
    statements: list[str] = []
    if db.engine.dialect.name == "postgresql":
        spy_on_psycopg(monkeypatch, statements)

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def trace(dbapi_conn: Any, *_: Any) -> None:
        # On SQLite the projections write through the sqlite3 connection itself, past SQLAlchemy's
        # events: its own trace callback sees those statements.
        if hasattr(dbapi_conn, "set_trace_callback"):
            dbapi_conn.set_trace_callback(statements.append)

    def untrace(dbapi_conn: Any, *_: Any) -> None:
        if hasattr(dbapi_conn, "set_trace_callback"):
            dbapi_conn.set_trace_callback(None)

    sa.event.listen(db.engine, "before_cursor_execute", seen)
    sa.event.listen(db.engine, "checkout", trace)
    sa.event.listen(db.engine, "checkin", untrace)
    try:
        store.append("s", [added("k1", "a"), added("k1", "b"), added("k2", "c", output=1)])
        store.append("s", [added("k2", "d", output=1), added("k3", "e")])
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", seen)
        sa.event.remove(db.engine, "checkout", trace)
        sa.event.remove(db.engine, "checkin", untrace)
    assert [s for s in statements if "cache_records" in s]  # the statements were seen at all
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT") and "cache_records" in s]
    assert records(db) == [("k1", 0, "b"), ("k2", 1, "d"), ("k3", 0, "e")]

    # Removed, and added again in one append: the later record is there, the removed key's others not.
    store.append("s", [added("k3", "f", output=1), CacheRecordRemoved(cache_key="k3"), added("k3", "g")])
    store.append("s", [added("k1", "h", output=2), CacheRecordRemoved(cache_key="k1")])
    assert records(db) == [("k2", 1, "d"), ("k3", 0, "g")]
