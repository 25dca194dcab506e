"""On SQLite, the projection tables SQLAlchemy passes through untouched skip its statement layer.

``RowBuffer`` (loads and flushes), the cache index's upsert, removal and lookup, and the inline
checkpoint advance run their own SQL on the sqlite3 connection under the SQLAlchemy one. Real SQLite
files: each scenario runs once on the driver path and once on SQLAlchemy's Core path (the reference),
on two databases, and must see and leave the same rows; tables with types SQLAlchemy converts
(``UtcDateTime``, ``Boolean``) stay on the Core path and still round-trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import (
    CacheRecordAdded,
    CacheRecordRemoved,
    DaemonStarted,
    DaemonStopped,
    RefAcquired,
    RefReleased,
    SnapshotCommitted,
    SnapshotCreated,
    SnapshotRemoved,
    SolveCompleted,
    SolveFailed,
    SolveRequested,
)
from buildsvc.events.codec import Event
from buildsvc.events.database import Database
from buildsvc.projections import attach_projections, cache_index, rows
from buildsvc.projections.cache_index import SqlCacheIndex
from buildsvc.projections.rows import RowBuffer, flush_together, load_together, sqlite_plain
from buildsvc.projections.schema import (
    build_vertices,
    builds,
    cache_records,
    ended_scopes,
    projection_checkpoints,
    refs,
    snapshots,
)
from tests.support.databases import open_test_database

PATHS = ("driver", "core")

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[dict[str, Database]]:
    """A fresh, migrated SQLite database per path."""
    opened = {path: open_test_database(f"sqlite:///{tmp_path / path}.db") for path in PATHS}
    yield opened
    for db in opened.values():
        db.dispose()


def buffer(conn: sa.Connection, table: sa.Table, path: str) -> RowBuffer:
    """A buffer on the driver path, or one held to SQLAlchemy's Core path."""
    b = RowBuffer(conn, table)
    if path == "core":
        b._lite = None
    assert (b._lite is not None) == (path == "driver")
    return b


def shown(row: dict[str, Any] | None) -> str:
    """A row with its values' types (1 and True, "1" and 1 differ)."""
    return "None" if row is None else repr(sorted(row.items()))


def table_rows(db: Database, table: sa.Table) -> list[str]:
    with db.read() as conn:
        return [repr(tuple(r)) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]


class Statements:
    """SQL that went through SQLAlchemy's execution (the driver path sends none of it)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.seen: list[str] = []

    def __enter__(self) -> Statements:
        sa.event.listen(self.db.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.db.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(statement)

    def naming(self, *tables: sa.Table) -> list[str]:
        """Statements on ``tables`` but the refs projection's own scope-end UPDATE (refs.py's)."""
        return [
            s
            for s in self.seen
            if any(t.name in s for t in tables) and not s.startswith("UPDATE refs SET holder_ended_position=")
        ]


def ref_row(ref_id: str, position: int, **changes: Any) -> dict[str, Any]:
    return {
        "ref_id": ref_id,
        "snapshot_id": f"snap-{ref_id}",
        "holder_kind": "vertex",
        "holder_id": f"sha256:{ref_id}",
        "build_ref": "b1",
        "scope": "build:b1",
        "acquired_position": position,
        "released_position": None,
        "release_reason": "",
        "holder_ended_position": None,
    } | changes


def snapshot_row(sid: str, position: int, **changes: Any) -> dict[str, Any]:
    return {
        "snapshot_id": sid,
        "worker": "runc-overlay",
        "snapshotter": "overlayfs",
        "parent": None,
        "kind": "active",
        "state": "created",
        "size_bytes": 0,
        "active_refs": 0,
        "created_position": position,
        "removed_position": None,
    } | changes


def record_row(key: str, output: int, worker: str, snapshot: str) -> dict[str, Any]:
    return {
        "cache_key": key,
        "output": output,
        "worker": worker,
        "vertex": f"v-{key}",
        "snapshot_id": snapshot,
        "build_ref": "b1",
        "source": "local",
        "size_bytes": 2**40 + output,
        "created_position": 3,
    }


def refs_and_snapshots(db: Database, path: str) -> list[str]:
    """Inserts, NULLs, missing keys, updates, deletes and a delete-then-insert, together and alone."""
    seen: list[str] = []
    with db.write() as conn:
        r, s, e = buffer(conn, refs, path), buffer(conn, snapshots, path), buffer(conn, ended_scopes, path)
        for i in range(4):
            r.insert(ref_row(f"r{i}", i + 1, holder_ended_position=9 if i == 3 else None))
            s.insert(snapshot_row(f"s{i}", i + 1, parent=f"s{i - 1}" if i else None))
        s.insert(snapshot_row("big", 5, size_bytes=2**40 + 1, state="committed", worker="wörker ☃"))
        e.insert({"scope": "build:gone", "position": 1})
        e.insert({"scope": "build:kept", "position": 2})
        flush_together([r, e, s])
    with db.write() as conn:
        r, s, e = buffer(conn, refs, path), buffer(conn, snapshots, path), buffer(conn, ended_scopes, path)
        load_together(
            [
                (r, ["r0", "r1", "r2", "missing", "r0"]),
                (s, ["s0", "s1", "big", "nope"]),
                (e, ["build:gone", "build:kept", "build:never"]),
            ]
        )
        seen += [shown(r.get(k)) for k in ("r0", "r1", "r2", "missing")]
        seen += [shown(s.get(k)) for k in ("s0", "s1", "big", "nope")]
        seen += [shown(e.get(k)) for k in ("build:gone", "build:kept", "build:never")]
        released = r.get("r0")
        assert released is not None
        released.update(released_position=7, release_reason='it\'s "done", ? %s')
        r.changed(released)
        r.delete("r1")
        r.delete("r2")  # deleted and inserted again in one flush
        r.insert(ref_row("r2", 8, holder_kind="cache", scope="cache:k"))
        r.insert(ref_row("r9", 9))
        snap = s.get("s1")
        assert snap is not None
        snap.update(parent=None, active_refs=3, size_bytes=2**33)
        s.changed(snap)
        s.delete("s0")
        e.delete("build:gone")
        e.delete("build:never")  # not there: nothing to do
        flush_together([r, e, s])
    with db.write() as conn:  # each buffer on its own (load / flush), not together
        s = buffer(conn, snapshots, path)
        s.load(["s2", "s3"])
        third = s.get("s3")
        assert third is not None
        third.update(state="removed", removed_position=11)
        s.changed(third)
        s.insert(snapshot_row("s4", 12))
        s.delete("s2")
        s.flush()
        s.flush()  # nothing left to write
    with db.read() as conn:
        r, s = buffer(conn, refs, path), buffer(conn, snapshots, path)
        r.load(["r0", "r1", "r2", "r3", "r9"])
        seen += [shown(r.get(k)) for k in ("r0", "r1", "r2", "r3", "r9")]
        seen += [shown(s.get(k)) for k in ("s0", "s1", "s2", "s3", "s4", "big")]
    return seen


def cache_records_by_composite_key(db: Database, path: str) -> list[str]:
    """A three-column key: loads by it and by its first column, and writes that touch only their row."""
    seen: list[str] = []
    with db.write() as conn:
        c = buffer(conn, cache_records, path)
        for key, output, worker in [
            ("k1", 0, "w1"),
            ("k1", 1, "w1"),
            ("k1", 0, "w2"),
            ("k2", 0, "w1"),
            ("k2", 0, "w2"),
            ("k2", 1, "w1"),
        ]:
            c.insert(record_row(key, output, worker, f"snap-{key}-{output}-{worker}"))
        c.flush()
    with db.write() as conn:
        c = buffer(conn, cache_records, path)
        c.load([("k1", 0, "w1"), ("k1", 1, "w1"), ("k3", 0, "w1")])
        seen += [shown(c.get(k)) for k in [("k1", 0, "w1"), ("k1", 0, "w2"), ("k3", 0, "w1")]]
        c.load_by_first(["k2", "k4"])
        seen += [shown(c.get(k)) for k in [("k2", 0, "w1"), ("k2", 1, "w1"), ("k4", 0, "w1")]]
        row = c.get(("k1", 0, "w1"))
        assert row is not None
        row.update(snapshot_id="replaced", size_bytes=1)
        c.changed(row)
        c.delete(("k1", 1, "w1"))  # shares k1 with two rows, output 1 with one, w1 with three
        c.delete(("k2", 0, "w2"))
        other = c.get(("k2", 1, "w1"))
        assert other is not None
        other.update(source="import:registry")
        c.changed(other)
        c.insert(record_row("k4", 0, "w1", "new"))
        c.flush()
    with db.read() as conn:
        c = buffer(conn, cache_records, path)
        c.load_by_first(["k1", "k2", "k4"])
        keys = [("k1", 0, "w1"), ("k1", 1, "w1"), ("k1", 0, "w2"), ("k2", 0, "w1"), ("k2", 0, "w2")]
        seen += [shown(c.get(k)) for k in [*keys, ("k2", 1, "w1"), ("k4", 0, "w1")]]
    return seen


@pytest.mark.parametrize("scenario", [refs_and_snapshots, cache_records_by_composite_key])
def test_driver_path_reads_and_writes_the_rows_sqlalchemy_does(
    dbs: dict[str, Database], scenario: Callable[[Database, str], list[str]]
) -> None:
    seen = {}
    for path, db in dbs.items():
        with Statements(db) as statements:
            seen[path] = scenario(db, path)
        by_sqlalchemy = statements.naming(refs, snapshots, ended_scopes, cache_records)
        assert (path, not by_sqlalchemy) == (path, path == "driver")
    assert seen["driver"] == seen["core"]
    for table in (refs, snapshots, ended_scopes, cache_records):
        assert table_rows(dbs["driver"], table) == table_rows(dbs["core"], table), table.name


def test_composite_key_writes_touch_only_their_row(dbs: dict[str, Database]) -> None:
    cache_records_by_composite_key(dbs["driver"], "driver")
    with dbs["driver"].read() as conn:
        left = conn.execute(
            sa.select(cache_records.c.cache_key, cache_records.c.output, cache_records.c.worker)
            .add_columns(cache_records.c.snapshot_id, cache_records.c.source)
            .order_by(*cache_records.primary_key.columns)
        ).all()
    assert [tuple(r) for r in left] == [
        ("k1", 0, "w1", "replaced", "local"),
        ("k1", 0, "w2", "snap-k1-0-w2", "local"),
        ("k2", 0, "w1", "snap-k2-0-w1", "local"),
        ("k2", 1, "w1", "snap-k2-1-w1", "import:registry"),
        ("k4", 0, "w1", "new", "local"),
    ]


def test_each_path_reads_the_rows_the_other_wrote(dbs: dict[str, Database]) -> None:
    refs_and_snapshots(dbs["driver"], "driver")
    cache_records_by_composite_key(dbs["core"], "core")
    for db in dbs.values():
        loaded = {}
        for path in PATHS:
            with db.read() as conn:
                r, s, c = (
                    buffer(conn, refs, path),
                    buffer(conn, snapshots, path),
                    buffer(conn, cache_records, path),
                )
                r.load(["r0", "r2", "r3", "r9", "gone"])
                s.load(["s1", "s3", "s4", "big"])
                c.load_by_first(["k1", "k2", "k4"])
                loaded[path] = [shown(b._rows[k]) for b in (r, s, c) for k in sorted(b._rows, key=repr)]
        assert loaded["driver"] == loaded["core"]
        assert any(str(2**40 + 1) in row for row in loaded["driver"]) or db is dbs["core"]


def insert_ref(db: Database, path: str, row: dict[str, Any]) -> None:
    with db.write() as conn:
        r = buffer(conn, refs, path)
        r.insert(row)
        r.flush()


def test_driver_errors_are_sqlalchemy_errors(dbs: dict[str, Database]) -> None:
    for path, db in dbs.items():
        insert_ref(db, path, ref_row("dup", 1))
        with pytest.raises(sa.exc.IntegrityError):
            insert_ref(db, path, ref_row("dup", 2))  # the same key again: the primary key refuses it
        with pytest.raises(sa.exc.IntegrityError):
            insert_ref(db, path, ref_row("null", 3, holder_kind=None))  # NOT NULL
        assert table_rows(db, refs) == [repr(tuple(ref_row("dup", 1).values()))]
        insert_ref(db, path, ref_row("after", 4))  # the connection is still good
        assert len(table_rows(db, refs)) == 2


def test_plain_tables_are_the_ones_sqlalchemy_passes_through() -> None:
    assert all(sqlite_plain(t) for t in (refs, snapshots, ended_scopes, cache_records))
    assert not any(sqlite_plain(t) for t in (builds, build_vertices, projection_checkpoints))
    metadata = sa.MetaData()

    def one(name: str, column: sa.Column[Any]) -> sa.Table:
        return sa.Table(name, metadata, sa.Column("id", sa.String(10), primary_key=True), column)

    assert sqlite_plain(one("ints", sa.Column("n", sa.BigInteger().with_variant(sa.Integer(), "sqlite"))))
    assert sqlite_plain(one("text", sa.Column("t", sa.Text(), nullable=True)))
    converted: list[tuple[str, sa.Column[Any]]] = [
        ("flag", sa.Column("f", sa.Boolean())),
        ("when", sa.Column("w", sa.DateTime(timezone=True))),
        ("doc", sa.Column("d", sa.JSON())),
        ("color", sa.Column("c", sa.Enum("red", "blue"))),
        ("real", sa.Column("r", sa.Numeric(10, 2))),
        ("defaulted", sa.Column("n", sa.Integer(), default=0)),
        ("renamed", sa.Column("n", sa.Integer(), key="other")),
    ]
    for name, column in converted:
        assert not sqlite_plain(one(name, column)), name
    assert not sqlite_plain(sa.Table("only_key", metadata, sa.Column("id", sa.String(10), primary_key=True)))


@SQLITE_ONLY
def test_tables_sqlalchemy_converts_still_round_trip(db: Database) -> None:
    requested = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    build = {
        "build_ref": "b1",
        "status": "requested",
        "frontend": "dockerfile.v0",
        "actor": "me",
        "trace_id": "t",
        "requested_at": requested,
        "started_at": None,
        "ended_at": None,
        "vertices_total": 2,
        "vertices_completed": 0,
        "vertices_cached": 0,
        "vertices_failed": 0,
        "vertices_interrupted": 0,
        "error": "",
        "error_vertex": "",
        "exit_code": None,
        "first_position": 1,
        "last_position": 1,
        "pinned": True,
        "deleted": False,
    }
    vertex = {
        "build_ref": "b1",
        "vertex": "v1",
        "name": "RUN true",
        "status": "queued",
        "worker": "",
        "runs": 0,
        "started_at": requested,
        "ended_at": None,
        "duration_ms": None,
        "exit_code": None,
        "error": "",
    }
    with db.write() as conn:
        b, v = RowBuffer(conn, builds), RowBuffer(conn, build_vertices)
        assert b._lite is None and v._lite is None  # SQLAlchemy's types convert these values
        missing = {c.name for c in build_vertices.columns} - set(vertex)
        b.insert(dict(build))
        v.insert(dict(vertex) | {c: None for c in missing})
        flush_together([b, v])
    ended = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    with db.write() as conn:
        b, v = RowBuffer(conn, builds), RowBuffer(conn, build_vertices)
        load_together([(b, ["b1"])])
        v.load_by_first(["b1"])
        row = b.get("b1")
        assert row is not None
        assert shown(row) == shown(build)
        assert type(row["pinned"]) is bool and row["requested_at"].tzinfo is not None
        row.update(status="completed", ended_at=ended, pinned=False, deleted=True)
        b.changed(row)
        vrow = v.get(("b1", "v1"))
        assert vrow is not None and vrow["started_at"] == requested
        v.delete(("b1", "v1"))
        flush_together([b, v])
    with db.read() as conn:
        b, v = RowBuffer(conn, builds), RowBuffer(conn, build_vertices)
        b.load(["b1"])
        v.load_by_first(["b1"])
        assert shown(b.get("b1")) == shown(
            build | {"status": "completed", "ended_at": ended, "pinned": False, "deleted": True}
        )
        assert v.get(("b1", "v1")) is None


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_batched_writes_of_a_plain_table_match_rows_by_every_key_column(db: Database) -> None:
    # The contract test's table has a Boolean (SQLAlchemy's path on SQLite); this one is plain, so
    # SQLite takes the driver path and PostgreSQL the pipeline.
    pairs = sa.Table(
        "rowbuffer_plain_pairs",
        sa.MetaData(),
        sa.Column("a", sa.String(20), primary_key=True),
        sa.Column("b", sa.Integer(), primary_key=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    pairs.create(db.engine)
    with db.write() as conn:
        rows = RowBuffer(conn, pairs)
        assert (rows._lite is not None) == (db.engine.dialect.name == "sqlite")
        for a in ("x", "y"):
            for b in (1, 2):
                rows.insert({"a": a, "b": b, "note": None, "n": 0})
        flush_together([rows])
    with db.write() as conn:
        rows = RowBuffer(conn, pairs)
        load_together([(rows, [("x", 1), ("x", 2), ("y", 2), ("w", 1)])])
        assert rows.get(("w", 1)) is None
        changed = rows.get(("x", 2))
        assert changed is not None
        changed.update(note='it\'s, "quoted" {x} ?', n=2**40)
        rows.changed(changed)
        rows.delete(("y", 2))  # only this pair: ("y", 1) and ("x", 2) share a column with it
        rows.insert({"a": "z", "b": 2, "note": "", "n": -1})
        flush_together([rows])
    assert table_rows(db, pairs) == [
        repr(("x", 1, None, 0)),
        repr(("x", 2, 'it\'s, "quoted" {x} ?', 2**40)),
        repr(("y", 1, None, 0)),
        repr(("z", 2, "", -1)),
    ]


# --- end to end: appends, the cache index, a rebuild ----------------------------------------------


def history() -> list[list[Event]]:
    """Appends touching every table of the refs and cache index projections, scopes ended and reopened."""
    appends: list[list[Event]] = [[DaemonStarted(daemon_id="d1")]]
    for b in range(3):
        ref = f"b{b}"
        appends.append([SolveRequested(build_ref=ref)])
        for v in range(3):
            sid, active = f"s{b}{v}", f"a{b}{v}"
            appends.append(
                [
                    SnapshotCreated(snapshot_id=active, worker="w", snapshotter="overlayfs"),
                    RefAcquired(
                        ref_id=f"r{b}{v}",
                        snapshot_id=active,
                        holder_kind="vertex",
                        holder_id="x",
                        build_ref=ref,
                    ),
                    SnapshotCommitted(snapshot_id=sid, size_bytes=2**33 + v, from_active=active, parent=None),
                    RefReleased(ref_id=f"r{b}{v}", snapshot_id=active),
                    RefAcquired(
                        ref_id=f"c{b}{v}", snapshot_id=sid, holder_kind="cache", holder_id=f"k{b}{v}"
                    ),
                    CacheRecordAdded(cache_key=f"k{b}{v}", vertex="v", snapshot_id=sid, output=0, worker="w"),
                    CacheRecordAdded(cache_key=f"k{b}{v}", vertex="v", snapshot_id=sid, output=1, worker="w"),
                    CacheRecordAdded(
                        cache_key=f"k{b}{v}", vertex="v", snapshot_id=sid, output=0, worker="w2"
                    ),
                ]
            )
            appends.append(
                [RefAcquired(ref_id=f"held{b}{v}", snapshot_id=sid, holder_kind="daemon", holder_id="d1")]
            )
        appends.append(
            [SolveFailed(build_ref=ref, error="boom") if b == 1 else SolveCompleted(build_ref=ref)]
        )
    appends += [
        [CacheRecordRemoved(cache_key="k00")],
        [CacheRecordAdded(cache_key="k01", vertex="v", snapshot_id="s02", output=0, worker="w")],  # replaced
        [
            CacheRecordAdded(
                cache_key="k00", vertex="v", snapshot_id="s00", output=2, worker="w"
            ),  # reopened
            CacheRecordRemoved(cache_key="k10"),
            CacheRecordAdded(cache_key="k10", vertex="v", snapshot_id="s11", output=0, worker="w"),
        ],
        [SnapshotRemoved(snapshot_id="s20"), DaemonStopped(daemon_id="d1")],
        [
            DaemonStarted(daemon_id="d1"),
            RefAcquired(ref_id="late", snapshot_id="s21", holder_kind="daemon", holder_id="d1"),
        ],
        [DaemonStopped(daemon_id="d1")],
    ]
    return appends


LOOKED_UP = [(f"k{b}{v}", worker) for b in range(3) for v in range(3) for worker in ("w", "w2", "x")]


def test_appends_leave_the_same_projections_and_rebuild_to_them(
    dbs: dict[str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    digests, lookups = {}, {}
    for path, db in dbs.items():
        with monkeypatch.context() as patched:
            if path == "core":
                patched.setattr(rows, "sqlite_plain", lambda _table: False)
                patched.setattr(cache_index, "sqlite_plain", lambda _table: False)
            store = SqlEventStore(db)
            runner = attach_projections(store)
            with Statements(db) as statements:
                for events in history():
                    store.append("s", events)
                index = SqlCacheIndex(db)
                lookups[path] = {(k, w): index.lookup(k, w) for k, w in LOOKED_UP}
            by_sqlalchemy = statements.naming(refs, snapshots, ended_scopes, cache_records)
            assert (path, not by_sqlalchemy) == (path, path == "driver")
            digests[path] = {name: runner.digest(name) for name in ("refs", "cache_index")}
            for name in ("refs", "cache_index"):
                runner.rebuild(name, batch_size=4)
                assert runner.status(name).status == "live"
                assert runner.digest(name) == digests[path][name], (path, name)
    assert digests["driver"] == digests["core"]
    assert lookups["driver"] == lookups["core"]
    # (key, worker) -> output -> snapshot: k00 removed, then recorded again on output 2 only; k01's
    # output 0 on w recorded again (the later record wins); k10 removed and recorded again at once.
    found = lookups["driver"]
    assert (found["k00", "w"], found["k00", "w2"], found["k00", "x"]) == ({2: "s00"}, {}, {})
    assert (found["k01", "w"], found["k01", "w2"]) == ({0: "s02", 1: "s01"}, {0: "s01"})
    assert (found["k10", "w"], found["k10", "w2"]) == ({0: "s11"}, {})
    assert (found["k22", "w"], found["k22", "w2"]) == ({0: "s22", 1: "s22"}, {0: "s22"})
    for table in (refs, snapshots, ended_scopes, cache_records):
        assert table_rows(dbs["driver"], table) == table_rows(dbs["core"], table), table.name
