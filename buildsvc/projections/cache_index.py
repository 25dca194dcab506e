"""The cache index: for each cache key, output and worker, the snapshot that holds the result.

Inline, because the solver looks keys up while it walks a graph and must see a record the moment
the vertex that made it completes. A record removed (prune, or its data found missing) is gone from
the index; the same key recorded again later is a new record.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from buildsvc.events import catalog as ev
from buildsvc.events.database import Database
from buildsvc.events.envelope import StoredEvent
from buildsvc.events.rows import driver_errors
from buildsvc.projections.refs import unreleased_refs
from buildsvc.projections.rows import pg_type, sqlite_plain
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
        """Fold a batch of cache record events into the index.

        A record is written by an upsert (the later record of a key wins, as it always has), so
        the append that carries it pays no SELECT for the row it may replace.
        """
        relevant = [(s, s.decode()) for s in events if s.type in _HANDLED]
        if not relevant:
            return
        pending: dict[tuple[str, int, str], dict[str, object]] = {}
        for stored, event in relevant:
            match event:
                case ev.CacheRecordAdded():
                    pending[(event.cache_key, event.output, event.worker)] = {
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
                case ev.CacheRecordRemoved(cache_key=cache_key):
                    # Every output on every worker goes, those added earlier in this batch too.
                    _upsert(conn, list(pending.values()))
                    pending.clear()
                    if _sqlite_plain(conn):
                        with driver_errors(conn):
                            conn.connection.driver_connection.execute(_SQLITE_DELETE, (cache_key,))  # type: ignore[union-attr]
                    else:
                        conn.execute(cache_records.delete().where(cache_records.c.cache_key == cache_key))
        _upsert(conn, list(pending.values()))


_COLUMNS = [c.name for c in cache_records.columns]
_KEY_COLUMNS = [c.name for c in cache_records.primary_key.columns]
_PG_UPSERT = (  # one statement over column arrays, whatever the number of records
    f"INSERT INTO cache_records ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM unnest("
    + ", ".join(f"%b::{pg_type(c)}[]" for c in cache_records.columns)
    + f") AS u({', '.join(_COLUMNS)}) ON CONFLICT ({', '.join(_KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c not in _KEY_COLUMNS)
)
# SQLite: the same upsert as one executemany of a constant text (prepared once by sqlite3).
_SQLITE_UPSERT = (
    f"INSERT INTO cache_records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT ({', '.join(_KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in _KEY_COLUMNS)
)
_SQLITE_DELETE = "DELETE FROM cache_records WHERE cache_key = ?"


def _sqlite_plain(conn: Connection) -> bool:
    """On SQLite, whether SQLAlchemy would pass the table's values through untouched (so sqlite3
    may): judged on first use there (``sqlite_plain`` remembers it), so a PostgreSQL process never
    loads the SQLite dialect to judge it.
    """
    return conn.dialect.name == "sqlite" and sqlite_plain(cache_records)


def _upsert(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Insert ``rows`` (distinct keys), replacing the records they name: one round trip on PostgreSQL."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        pg = conn.connection.driver_connection
        with driver_errors(conn), pg.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(_PG_UPSERT, tuple([r[c] for r in rows] for c in _COLUMNS))
        return
    if _sqlite_plain(conn):
        with driver_errors(conn):
            lite = conn.connection.driver_connection
            params = [tuple([r[c] for c in _COLUMNS]) for r in rows]
            if len(params) == 1:
                lite.execute(_SQLITE_UPSERT, params[0])  # type: ignore[union-attr]
            else:
                lite.executemany(_SQLITE_UPSERT, params)  # type: ignore[union-attr]
        return
    stmt = sqlite_insert(cache_records)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=_KEY_COLUMNS,
            set_={c: stmt.excluded[c] for c in _COLUMNS if c not in _KEY_COLUMNS},
        ),
        rows,
    )


_LOOKUP_SQL = "SELECT output, snapshot_id FROM cache_records WHERE cache_key = %s AND worker = %s"
_SQLITE_LOOKUP = "SELECT output, snapshot_id FROM cache_records WHERE cache_key = ? AND worker = ?"


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
                if self.db.is_postgres:
                    # Straight to the driver: SQLAlchemy's statement compilation, execution context
                    # and result wrapping cost twice the round trip itself, once per vertex.
                    with driver_errors(conn):
                        pg = conn.connection.driver_connection
                        found = pg.execute(_LOOKUP_SQL, (cache_key, worker), prepare=True)  # type: ignore[union-attr]
                        return dict(found.fetchall())
                if _sqlite_plain(conn):  # the same on the sqlite3 connection, in ``read``'s transaction
                    with driver_errors(conn):
                        lite = conn.connection.driver_connection
                        return dict(lite.execute(_SQLITE_LOOKUP, (cache_key, worker)).fetchall())  # type: ignore[union-attr]
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
