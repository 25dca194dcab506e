"""A batch-sized cache of a table's rows, so a projection applies thousands of events per round trip.

A projection loads the rows a batch of events touches (one SELECT ... IN), changes them as plain
dicts, and writes back only what changed (one executemany INSERT and one executemany UPDATE).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["RowBuffer"]

Row = dict[str, Any]


class RowBuffer:
    """Rows of one table keyed by its primary key, loaded on demand and flushed in bulk."""

    def __init__(self, conn: Connection, table: sa.Table) -> None:
        self.conn = conn
        self.table = table
        self.key_columns = [c.name for c in table.primary_key.columns]
        self._rows: dict[Hashable, Row | None] = {}
        self._new: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._deleted: set[Hashable] = set()

    def _key(self, row: Row) -> Hashable:
        if len(self.key_columns) == 1:
            key: Hashable = row[self.key_columns[0]]
            return key
        return tuple(row[c] for c in self.key_columns)

    def load(self, keys: Iterable[Hashable]) -> None:
        """Fetch the rows for ``keys`` that are not cached yet (missing ones are remembered as missing)."""
        wanted = [k for k in set(keys) if k not in self._rows]
        if not wanted:
            return
        for k in wanted:
            self._rows[k] = None
        cols = [self.table.c[c] for c in self.key_columns]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            if len(cols) == 1:
                cond = cols[0].in_(chunk)
            else:
                cond = sa.tuple_(*cols).in_([tuple(k) for k in chunk])  # type: ignore[arg-type]
            for r in self.conn.execute(sa.select(self.table).where(cond)).mappings():
                row = dict(r)
                self._rows[self._key(row)] = row

    def get(self, key: Hashable) -> Row | None:
        """The row for ``key`` (load it first), or None."""
        if key not in self._rows:
            self.load([key])
        return self._rows[key]

    def insert(self, row: Row) -> Row:
        """Add a new row (its key must not exist)."""
        key = self._key(row)
        self._rows[key] = row
        self._new.add(key)
        return row

    def delete(self, key: Hashable) -> None:
        """Remove the row for ``key`` (if there is one)."""
        if self.get(key) is None:
            return
        self._rows[key] = None
        self._dirty.discard(key)
        if key in self._new:
            self._new.discard(key)
        else:
            self._deleted.add(key)

    def changed(self, row: Row) -> None:
        """Mark ``row`` (a dict this buffer returned) as modified."""
        key = self._key(row)
        if key not in self._new:
            self._dirty.add(key)

    def flush(self) -> None:
        """Write the new, changed and deleted rows."""
        t = self.table
        if self._deleted:
            keys = [k if isinstance(k, tuple) else (k,) for k in self._deleted]
            delete = t.delete().where(*[t.c[c] == sa.bindparam(f"_k_{c}") for c in self.key_columns])
            self.conn.execute(
                delete, [{f"_k_{c}": v for c, v in zip(self.key_columns, k, strict=True)} for k in keys]
            )
        if self._new:
            self.conn.execute(self.table.insert(), [self._rows[k] or {} for k in self._new])
        if self._dirty:
            params = []
            for k in self._dirty:
                row = self._rows[k]
                assert row is not None
                # Key columns are bound under another name: SQLAlchemy reserves column names for SET.
                params.append(
                    {c: v for c, v in row.items() if c not in self.key_columns}
                    | {f"_k_{c}": row[c] for c in self.key_columns}
                )
            values: dict[str, Any] = {
                c.name: sa.bindparam(c.name) for c in t.columns if c.name not in self.key_columns
            }
            stmt = (
                t.update()
                .where(*[t.c[c] == sa.bindparam(f"_k_{c}") for c in self.key_columns])
                .values(values)
            )
            self.conn.execute(stmt, params)
        self._new.clear()
        self._dirty.clear()
        self._deleted.clear()
