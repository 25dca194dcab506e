"""Inline projections in an append's transaction: statements batched into few round trips, same rows.

``load_together`` / ``flush_together`` (one pipeline on PostgreSQL, plain calls on SQLite) must
leave exactly the rows ``load`` / ``flush`` leave; and the single checkpoint UPDATE an append makes
must still leave alone a projection whose rebuild committed while the append waited for its row.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from buildsvc.events import SqlEventStore
from buildsvc.events.catalog import RefAcquired, SnapshotCreated
from buildsvc.events.database import Database
from buildsvc.projections import attach_projections
from buildsvc.projections.rows import RowBuffer, flush_together, load_together
from buildsvc.projections.schema import ended_scopes, projection_checkpoints, refs, snapshots


def snapshot_row(sid: str, position: int) -> dict[str, object]:
    return {
        "snapshot_id": sid,
        "worker": "w",
        "snapshotter": "overlay",
        "parent": None,
        "kind": "active",
        "state": "active",
        "size_bytes": 0,
        "active_refs": 0,
        "created_position": position,
        "removed_position": None,
    }


def table_rows(db: Database, table: sa.Table) -> list[tuple[object, ...]]:
    with db.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]


@pytest.mark.parametrize("new_rows", [3, 200])  # one INSERT over unnest, and a COPY
def test_batched_loads_and_flushes_leave_the_rows_plain_ones_leave(
    store: SqlEventStore, db: Database, new_rows: int
) -> None:
    attach_projections(store)
    results = []
    for together in (False, True):
        prefix = f"t{int(together)}-"
        with db.write() as conn:
            snaps = RowBuffer(conn, snapshots)
            scopes = RowBuffer(conn, ended_scopes)
            for i in range(new_rows):
                snaps.insert(snapshot_row(f"{prefix}{i}", i))
            scopes.insert({"scope": f"{prefix}gone", "position": 1})
            scopes.insert({"scope": f"{prefix}kept", "position": 2})
            (flush_together if together else lambda bs: [b.flush() for b in bs])([snaps, scopes])
        with db.write() as conn:
            snaps = RowBuffer(conn, snapshots)
            scopes = RowBuffer(conn, ended_scopes)
            keys = [f"{prefix}0", f"{prefix}1", f"{prefix}missing"]
            if together:
                load_together([(snaps, keys), (scopes, [f"{prefix}gone", f"{prefix}kept"])])
            else:
                snaps.load(keys)
                scopes.load([f"{prefix}gone", f"{prefix}kept"])
            assert snaps.get(f"{prefix}missing") is None
            first = snaps.get(f"{prefix}0")
            assert first is not None and first["created_position"] == 0
            first.update(state="removed", removed_position=9)
            snaps.changed(first)
            scopes.delete(f"{prefix}gone")
            kept = scopes.get(f"{prefix}kept")
            assert kept is not None
            scopes.delete(f"{prefix}kept")  # deleted and inserted again in one flush
            scopes.insert({"scope": f"{prefix}kept", "position": 7})
            (flush_together if together else lambda bs: [b.flush() for b in bs])([snaps, scopes])
        results.append(
            [
                [r[1:] if t is snapshots else r for r in table_rows(db, t) if str(r[0]).startswith(prefix)]
                for t in (snapshots, ended_scopes)
            ]
        )
    plain, batched = results
    strip = [[r[1:] for r in rows] for rows in plain]  # keys differ only by their prefix
    assert [[r[1:] for r in rows] for rows in batched] == strip
    assert len(batched[0]) == new_rows
    assert [r[1] for r in table_rows(db, ended_scopes) if str(r[0]).startswith("t1-")] == [7]


# PostgreSQL only: on SQLite (one writer) an append cannot be waiting on a row lock.
@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_an_append_waiting_on_a_rebuild_leaves_the_projection_to_it(
    store: SqlEventStore, db: Database
) -> None:
    runner = attach_projections(store)
    store.append("s", [SnapshotCreated(snapshot_id="before")])
    start = runner.status("refs").position
    # A rebuild's first transaction, held open: it owns the checkpoint row's lock.
    rebuild = db.engine.connect()
    tx = rebuild.begin()
    rebuild.execute(
        projection_checkpoints.update()
        .where(projection_checkpoints.c.name == "refs")
        .values(position=0, status="rebuilding")
    )
    rebuild.execute(refs.delete())
    done = threading.Event()

    def append() -> None:
        store.append(
            "s", [RefAcquired(ref_id="r1", snapshot_id="before", holder_kind="solve", holder_id="b")]
        )
        done.set()

    appender = threading.Thread(target=append)
    appender.start()
    with db.engine.connect() as probe:
        # Until the append's UPDATE is waiting for the rebuild's row lock (not a timing assertion).
        while not probe.execute(
            sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()")
        ).scalar():
            assert not done.is_set(), "the append did not wait for the checkpoint row"
            time.sleep(0.01)
            probe.rollback()
    tx.commit()
    rebuild.close()
    appender.join()
    status = runner.status("refs")
    assert (status.status, status.position) == ("rebuilding", 0)
    assert table_rows(db, refs) == []  # the append applied nothing onto the emptied tables
    assert start > 0


def test_batched_writes_match_rows_by_every_column_of_a_composite_key(db: Database) -> None:
    pairs = sa.Table(
        "rowbuffer_pairs",
        sa.MetaData(),
        sa.Column("a", sa.String(20), primary_key=True),
        sa.Column("b", sa.Integer(), primary_key=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("flag", sa.Boolean(), nullable=False),
    )
    pairs.create(db.engine)
    with db.write() as conn:
        rows = RowBuffer(conn, pairs)
        for a in ("x", "y"):
            for b in (1, 2):
                rows.insert({"a": a, "b": b, "note": None, "flag": False})
        flush_together([rows])
    with db.write() as conn:
        rows = RowBuffer(conn, pairs)
        load_together([(rows, [("x", 1), ("x", 2), ("y", 2)])])
        changed = rows.get(("x", 2))
        assert changed is not None
        changed.update(note='it\'s, "quoted" {x}', flag=True)
        rows.changed(changed)
        rows.delete(("y", 2))  # only this pair: ("y", 1) and ("x", 2) share a column with it
        rows.insert({"a": "z", "b": 2**40 % 1000, "note": "", "flag": True})
        flush_together([rows])
    assert table_rows(db, pairs) == [
        ("x", 1, None, False),
        ("x", 2, 'it\'s, "quoted" {x}', True),
        ("y", 1, None, False),
        ("z", 2**40 % 1000, "", True),
    ]
