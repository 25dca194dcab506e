"""A batch-sized cache of a table's rows, so a projection applies thousands of events per round trip.

A projection loads the rows a batch of events touches (one SELECT by the first key column), changes
them as plain dicts, and writes back only what changed: new rows in one COPY on PostgreSQL (one
executemany on SQLite), changed rows in one executemany UPDATE.

An inline projection runs inside an append's commit, where each round trip is paid by the solver
waiting for that append; there ``load_together`` and ``flush_together`` send the statements of
several buffers in one psycopg pipeline (one round trip), each buffer's deletes, few new rows and
updates as one statement apiece over ``unnest`` of column arrays (a COPY costs two round trips of its
own and cannot be pipelined).

On SQLite a table whose columns SQLAlchemy passes through untouched (strings and integers: see
``sqlite_plain``) skips SQLAlchemy's statement layer as well: its SELECT, DELETE, INSERT and UPDATE
texts are built once per table and run on the sqlite3 connection under the SQLAlchemy one (same
transaction), each write one ``executemany`` of a constant text that sqlite3 keeps prepared. Building,
caching and compiling the Core statements cost more than SQLite's work on them, on every append.

Loading by the first key column only (``= ANY(array)`` on PostgreSQL, ``IN`` on SQLite) keeps the
statement text constant, so it is prepared once, and uses the primary key's index on both; a
composite ``(a, b) IN (...)`` is a full scan on SQLite.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events.rows import driver_errors

__all__ = ["RowBuffer", "flush_together", "load_together", "pg_type", "sqlite_plain"]

_COPY_FROM_ROWS = 64
"""New rows of one table from which a COPY beats pipelined INSERTs."""

Row = dict[str, Any]

_SQLITE_PLAIN_TYPES = (sa.String, sa.Text, sa.Integer, sa.BigInteger, sa.SmallInteger)
"""Types whose values SQLAlchemy hands to sqlite3 and back as they are (exact classes: no Enum)."""

_LOAD_TEXTS = 64
"""Key counts up to which a table's SQLite SELECT text is kept (beyond, it is built per call)."""


def sqlite_plain(table: sa.Table) -> bool:
    """Whether SQLAlchemy passes every column of ``table`` through untouched on SQLite.

    Strings and integers only (a Variant such as the positions' ``BigInteger`` / ``Integer`` is
    judged by the type SQLite gets), with no bind or result processor, no SQL-side expression and no
    client-side default: then sqlite3 given the same values writes and reads the same rows.
    """
    plain = _SQLITE_PLAIN.get(table)
    if plain is None:
        plain = _SQLITE_PLAIN[table] = _judge_sqlite_plain(table)
    return plain


def _judge_sqlite_plain(table: sa.Table) -> bool:
    from sqlalchemy.dialects import sqlite  # the dialect module is loaded on SQLite anyway

    dialect = sqlite.dialect()
    for column in table.columns:
        kind = column.type.dialect_impl(dialect)
        if (
            type(kind) not in _SQLITE_PLAIN_TYPES
            or kind.bind_processor(dialect) is not None
            or kind.result_processor(dialect, None) is not None
            or kind._has_bind_expression
            or kind._has_column_expression
            or column.key != column.name
            or column.default is not None
            or column.onupdate is not None
        ):
            return False
    return len(table.primary_key.columns) < len(table.columns)  # an UPDATE needs a column to set


_SQLITE_PLAIN: dict[sa.Table, bool] = {}


@dataclass(slots=True)
class _SqliteSql:
    """A plain table's statement texts on SQLite, built once (see :func:`_sqlite_sql`)."""

    columns: list[str]
    select: str
    """``SELECT <columns> FROM t WHERE first IN (``: the placeholders and ``)`` follow."""
    delete: str
    insert: str
    update: str
    update_columns: list[str]
    """The UPDATE's parameters in order: the other columns (SET), then the key columns (WHERE)."""
    loads: dict[int, str] = field(default_factory=dict)

    def load(self, count: int) -> str:
        """The SELECT for ``count`` first-column values."""
        text = self.loads.get(count)
        if text is None:
            text = f"{self.select}{', '.join('?' * count)})"
            if count <= _LOAD_TEXTS:
                self.loads[count] = text
        return text


_SQLITE_SQL: dict[sa.Table, _SqliteSql] = {}


def _sqlite_sql(table: sa.Table) -> _SqliteSql:
    sql = _SQLITE_SQL.get(table)
    if sql is not None:
        return sql
    t = _quote(table.name)
    columns = [c.name for c in table.columns]
    keys = [c.name for c in table.primary_key.columns]
    others = [c for c in columns if c not in keys]
    names = ", ".join(_quote(c) for c in columns)
    match = " AND ".join(f"{_quote(c)} = ?" for c in keys)
    sql = _SQLITE_SQL[table] = _SqliteSql(
        columns=columns,
        select=f"SELECT {names} FROM {t} WHERE {_quote(keys[0])} IN (",
        delete=f"DELETE FROM {t} WHERE {match}",
        insert=f"INSERT INTO {t} ({names}) VALUES ({', '.join('?' * len(columns))})",
        update=f"UPDATE {t} SET {', '.join(f'{_quote(c)} = ?' for c in others)} WHERE {match}",
        update_columns=others + keys,
    )
    return sql


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
        # Key of each cached row by the row's identity, so ``changed`` costs one lookup.
        self._key_of: dict[int, Hashable] = {}
        self._complete_prefixes: set[Hashable] = set()
        # The table's own SQL on SQLite when SQLAlchemy would pass its values through untouched.
        self._lite = _sqlite_sql(table) if conn.dialect.name == "sqlite" and sqlite_plain(table) else None

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
        composite = len(self.key_columns) > 1
        firsts = list({k[0] for k in wanted}) if composite else wanted  # type: ignore[index]
        if self._lite is not None:
            self._take(self._lite.columns, self._sqlite_select(firsts))
            return
        for r in self.conn.execute(self._load_statement(), {"keys": firsts}).mappings():
            row = dict(r)
            key = self._key(row)
            self._rows[key] = row
            self._key_of[id(row)] = key

    def load_by_first(self, values: Iterable[Hashable]) -> None:
        """Fetch every row whose first key column is one of ``values`` (a composite key's prefix)."""
        wanted = list(set(values))
        if not wanted:
            return
        if self._lite is not None:
            names = self._lite.columns
            found = (dict(zip(names, record, strict=True)) for record in self._sqlite_select(wanted))
        else:
            found = (dict(r) for r in self.conn.execute(self._load_statement(), {"keys": wanted}).mappings())
        for row in found:
            key = self._key(row)
            if key not in self._rows or self._rows[key] is None:
                self._rows[key] = row
                self._key_of[id(row)] = key
        self._complete_prefixes.update(wanted)

    def _load_statement(self) -> sa.Select[Any]:
        first = self.table.c[self.key_columns[0]]
        if self.conn.dialect.name == "postgresql":
            # Here, not at the top: importing the dialect costs an embedded (SQLite) process ~40 ms.
            from sqlalchemy.dialects import postgresql

            keys = sa.bindparam("keys", type_=postgresql.ARRAY(first.type))
            return sa.select(self.table).where(first == sa.any_(keys))
        return sa.select(self.table).where(first.in_(sa.bindparam("keys", expanding=True)))

    def get(self, key: Hashable) -> Row | None:
        """The row for ``key`` (load it first), or None."""
        if key not in self._rows:
            if isinstance(key, tuple) and key[0] in self._complete_prefixes:
                return None  # load_by_first fetched every row with this prefix
            self.load([key])
        return self._rows[key]

    def insert(self, row: Row) -> Row:
        """Add a new row (its key must not exist)."""
        key = self._key(row)
        self._rows[key] = row
        self._key_of[id(row)] = key
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
        key = self._key_of[id(row)]
        if key not in self._new:
            self._dirty.add(key)

    def flush(self) -> None:
        """Write the new, changed and deleted rows."""
        if self._lite is not None:
            self._sqlite_flush(self._lite)
            return
        t = self.table
        if self._deleted:
            keys = [k if isinstance(k, tuple) else (k,) for k in self._deleted]
            delete = t.delete().where(*[t.c[c] == sa.bindparam(f"_k_{c}") for c in self.key_columns])
            self.conn.execute(
                delete, [{f"_k_{c}": v for c, v in zip(self.key_columns, k, strict=True)} for k in keys]
            )
        if self._new:
            self._insert([self._rows[k] or {} for k in self._new])
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

    # --- SQLite: the table's own SQL on the sqlite3 connection ----------------------------------------

    def _sqlite_select(self, firsts: list[Any]) -> list[tuple[Any, ...]]:
        """The rows (in column order) whose first key column is one of ``firsts``."""
        assert self._lite is not None
        sql = self._lite.load(len(firsts))
        with driver_errors(self.conn):
            cur = self._sqlite_cursor()
            try:
                found: list[tuple[Any, ...]] = cur.execute(sql, firsts).fetchall()
                return found
            finally:
                cur.close()

    def _sqlite_flush(self, lite: _SqliteSql) -> None:
        """``flush`` in the table's own SQL: deletes, inserts, updates, one ``executemany`` each."""
        writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        if self._deleted:
            writes.append((lite.delete, [k if isinstance(k, tuple) else (k,) for k in self._deleted]))
        if self._new:
            columns = lite.columns
            rows = [self._rows[k] or {} for k in self._new]
            writes.append((lite.insert, [tuple([r[c] for c in columns]) for r in rows]))
        if self._dirty:
            order = lite.update_columns
            changed = []
            for k in self._dirty:
                row = self._rows[k]
                assert row is not None
                changed.append(tuple([row[c] for c in order]))
            writes.append((lite.update, changed))
        if writes:
            with driver_errors(self.conn):
                cur = self._sqlite_cursor()
                try:
                    for sql, params in writes:
                        if len(params) == 1:
                            cur.execute(sql, params[0])
                        else:
                            cur.executemany(sql, params)
                finally:
                    cur.close()
        self._new.clear()
        self._dirty.clear()
        self._deleted.clear()

    def _sqlite_cursor(self) -> Any:
        """A cursor of the sqlite3 connection under ``conn``, in its transaction.

        The transaction is begun first if need be, as SQLAlchemy's first statement would begin it.
        """
        if not self.conn.in_transaction():
            self.conn.begin()
        return self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    # --- one pipeline for several buffers (PostgreSQL) ------------------------------------------------

    def _plain(self) -> bool:
        """Whether rows can skip SQLAlchemy's type processing (no TypeDecorator column), as COPY does."""
        return self.conn.dialect.name == "postgresql" and not any(
            isinstance(c.type, sa.TypeDecorator) for c in self.table.columns
        )

    def _wanted(self, keys: Iterable[Hashable]) -> list[Hashable]:
        wanted = [k for k in set(keys) if k not in self._rows]
        for k in wanted:
            self._rows[k] = None
        if len(self.key_columns) > 1:
            return list({k[0] for k in wanted})  # type: ignore[index]
        return wanted

    def _take(self, names: list[str], records: list[tuple[Any, ...]]) -> None:
        for record in records:
            row = dict(zip(names, record, strict=True))
            key = self._key(row)
            self._rows[key] = row
            self._key_of[id(row)] = key

    def _pending(self) -> list[tuple[str, tuple[list[Any], ...]]]:
        """(SQL, one array per column) for the deletes, the few new rows and the updates, in flush order.

        Each is one statement over ``unnest`` of column arrays, not one statement per row: an append
        that moves a dozen refs and snapshots costs the server four statements instead of forty
        (each planned, executed and acknowledged on its own), and the client four binds.
        """
        t = f'"{self.table.name}"'
        keys = self.key_columns
        columns = [c.name for c in self.table.columns]
        types = {c.name: pg_type(c) for c in self.table.columns}

        def arrays(names: list[str], rows: list[tuple[Any, ...]]) -> tuple[str, tuple[list[Any], ...]]:
            source = ", ".join(f"%b::{types[c]}[]" for c in names)
            alias = ", ".join(f'"{c}"' for c in names)
            return f"unnest({source}) AS u({alias})", tuple(list(col) for col in zip(*rows, strict=True))

        match = " AND ".join(f't."{c}" = u."{c}"' for c in keys)
        statements: list[tuple[str, tuple[list[Any], ...]]] = []
        if self._deleted:
            source, params = arrays(keys, [k if isinstance(k, tuple) else (k,) for k in self._deleted])
            statements.append((f"DELETE FROM {t} AS t USING {source} WHERE {match}", params))
        if self._new and len(self._new) < _COPY_FROM_ROWS:
            rows = [self._rows[k] or {} for k in self._new]
            source, params = arrays(columns, [tuple(r[c] for c in columns) for r in rows])
            names = ", ".join(f'"{c}"' for c in columns)
            statements.append((f"INSERT INTO {t} ({names}) SELECT {names} FROM {source}", params))
            self._new.clear()
        if self._dirty:
            others = [c for c in columns if c not in keys]
            changed = []
            for k in self._dirty:
                row = self._rows[k]
                assert row is not None
                changed.append(tuple(row[c] for c in others) + tuple(row[c] for c in keys))
            source, params = arrays(others + keys, changed)
            sets = ", ".join(f'"{c}" = u."{c}"' for c in others)
            statements.append((f"UPDATE {t} AS t SET {sets} FROM {source} WHERE {match}", params))
        self._deleted.clear()
        self._dirty.clear()
        return statements

    def _insert(self, rows: list[Row]) -> None:
        columns = [c.name for c in self.table.columns]
        if self.conn.dialect.name != "postgresql":
            self.conn.execute(self.table.insert(), rows)
            return
        names = ", ".join(f'"{c}"' for c in columns)
        types = [pg_type(c) for c in self.table.columns]
        with driver_errors(self.conn):
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                # Binary COPY with declared types: psycopg's C dumpers, no text formatting per value.
                with cursor.copy(f'COPY "{self.table.name}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row([row[c] for c in columns])
            finally:
                cursor.close()


def load_together(loads: Sequence[tuple[RowBuffer, Iterable[Hashable]]]) -> None:
    """``buffer.load(keys)`` for each pair, the SELECTs in one round trip on PostgreSQL."""
    if not loads or not all(b._plain() for b, _ in loads):
        for buffer, keys in loads:
            buffer.load(keys)
        return
    conn = loads[0][0].conn
    pending = [(b, w) for b, keys in loads if (w := b._wanted(keys))]
    if not pending:
        return
    pg = conn.connection.driver_connection
    with driver_errors(conn), pg.pipeline():  # type: ignore[union-attr]
        cursors = []
        for buffer, wanted in pending:
            first = buffer.table.c[buffer.key_columns[0]]
            cur = pg.cursor()  # type: ignore[union-attr]
            cur.execute(
                f'SELECT * FROM "{buffer.table.name}" WHERE "{first.name}" = ANY(%b::{pg_type(first)}[])',
                (wanted,),
            )
            cursors.append(cur)
        for (buffer, _), cur in zip(pending, cursors, strict=True):
            records = cur.fetchall()
            buffer._take([d.name for d in cur.description or ()], records)
            cur.close()


def flush_together(buffers: Sequence[RowBuffer]) -> None:
    """``flush()`` each buffer, their statements in one round trip on PostgreSQL (large inserts by COPY)."""
    if not buffers or not all(b._plain() for b in buffers):
        for buffer in buffers:
            buffer.flush()
        return
    conn = buffers[0].conn
    statements = [s for b in buffers for s in b._pending()]
    if statements:
        pg = conn.connection.driver_connection
        with driver_errors(conn), pg.pipeline(), pg.cursor() as cur:  # type: ignore[union-attr]
            for sql, params in statements:
                cur.execute(sql, params)
    for buffer in buffers:
        buffer.flush()  # what is left: inserts large enough for a COPY


def pg_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type name binary COPY needs for a projection column."""
    kind = column.type
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl  # type: ignore[assignment]
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, sa.BigInteger):
        return "int8"
    if isinstance(kind, sa.Integer):
        return "int4"
    if isinstance(kind, sa.DateTime):
        return "timestamptz"
    if isinstance(kind, sa.String | sa.Text):
        return "text"
    raise TypeError(f"no binary COPY type for column {column.name} ({column.type})")
