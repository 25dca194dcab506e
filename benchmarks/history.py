"""History benchmarks: ``history replay`` of a 1,000-vertex build and ``leaks`` over 100,000 refs.

Each figure is printed beside the time to read the same events raw from PostgreSQL (psycopg,
``SELECT ... ORDER BY position``) in the same run; the ratio is what counts. The log is made in a
fresh database (``CREATE DATABASE bench_history_<random>``, dropped at the end) on the server at
``$BUILDSVC_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).

    .venv/bin/python -m benchmarks.history [--vertices 1000] [--refs 100000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.projections.replay import Cut, replay

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROUNDS = 5


def _best(fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def _key() -> str:
    return f"sha256:{secrets.token_hex(32)}"


def build_of(vertices: int, build_ref: str) -> list[Event]:
    """A chain of ``vertices`` exec steps, with the snapshot, ref and cache events a real solve records."""
    ids = [_key() for _ in range(vertices)]
    definition = {
        "version": 1,
        "vertices": [
            {
                "id": v,
                "op": {"exec": {"meta": {"args": ["true"]}}},
                "inputs": [{"vertex": ids[i - 1], "index": 0}],
            }
            if i
            else {"id": v, "op": {"source": {"identifier": "local://context"}}}
            for i, v in enumerate(ids)
        ],
        "output": {"vertex": ids[-1], "index": 0},
    }
    events: list[Event] = [
        ev.SolveRequested(build_ref=build_ref, definition=definition, definition_digest=ids[-1]),
        ev.SolveStarted(build_ref=build_ref, vertex_count=vertices),
    ]
    parent: str | None = None
    for i, vertex in enumerate(ids):
        active, layer, key = f"a-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}", _key()
        held = f"r-{uuid.uuid4().hex}"
        events += [
            ev.VertexStarted(build_ref=build_ref, vertex=vertex, name=f"step {i}", worker="w"),
            ev.SnapshotCreated(snapshot_id=active, worker="w", parent=parent),
            ev.SnapshotCommitted(snapshot_id=layer, from_active=active, parent=parent),
            ev.VertexCompleted(
                build_ref=build_ref, vertex=vertex, worker="w", snapshot_id=layer, cache_key=key
            ),
            ev.CacheRecordAdded(
                cache_key=key, vertex=vertex, snapshot_id=layer, worker="w", build_ref=build_ref
            ),
            ev.RefAcquired(
                ref_id=held, snapshot_id=layer, holder_kind="cache", holder_id=key, build_ref=build_ref
            ),
        ]
        parent = layer
    events.append(ev.SolveCompleted(build_ref=build_ref))
    return events


def refs_of(count: int) -> list[tuple[str, list[Event]]]:
    """``count`` refs taken and given back by builds of 100 refs each (one snapshot per build)."""
    out = []
    for b in range(count // 100):
        ref, snap = f"b{b}", f"snap-{b}"
        events: list[Event] = [ev.SnapshotCreated(snapshot_id=snap, worker="w", kind="view")]
        ids = [f"r-{b}-{i}" for i in range(100)]
        events += [
            ev.RefAcquired(ref_id=r, snapshot_id=snap, holder_kind="solve", holder_id=ref, build_ref=ref)
            for r in ids
        ]
        events += [ev.RefReleased(ref_id=r, snapshot_id=snap) for r in ids]
        events += [ev.SnapshotRemoved(snapshot_id=snap), ev.SolveCompleted(build_ref=ref)]
        out.append((f"build-{ref}", events))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--refs", type=int, default=100_000)
    args = parser.parse_args()
    admin = os.environ.get("BUILDSVC_TEST_PG_URL") or DEFAULT_PG_URL
    name = f"bench_history_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as root:
            _run(url, Path(root), args.vertices, args.refs)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _raw(url: str, upto: int) -> Callable[[], int]:
    def read() -> int:
        with psycopg.connect(url) as c:
            rows = c.execute(
                "SELECT position, event_id, stream_id, stream_version, type, schema_version, payload, "
                "recorded_at, actor, trace_id, hash FROM events WHERE position <= %s ORDER BY position",
                (upto,),
            ).fetchall()
        return len(rows)

    return read


def _run(url: str, root: Path, vertices: int, ref_count: int) -> None:
    state = open_state(root, url)
    try:
        build = build_of(vertices, "big")
        for i in range(0, len(build), 500):
            state.store.append("build-big", build[i : i + 500])
        head = state.store.head()
        ours = _best(lambda: replay(state.store.read_all(batch_size=5000), "big", Cut(position=head)))
        raw = _best(_raw(url, head))
        print(
            f"history replay, {vertices}-vertex build ({head} events): {ours * 1000:.0f} ms; "
            f"raw read of the same events {raw * 1000:.0f} ms; ratio {ours / raw:.1f}x (aim < 1 s)"
        )
        began = time.perf_counter()
        for stream, events in refs_of(ref_count):
            state.store.append(stream, events)
        print(f"  (wrote {ref_count} refs in {time.perf_counter() - began:.1f} s)")
        head = state.store.head()
        state.runner.run_once()
        ours = _best(lambda: scan_leaks(state))
        raw = _best(_raw(url, head))
        print(
            f"leaks over {ref_count} refs ({head} events): {ours * 1000:.0f} ms; raw read of the log "
            f"{raw * 1000:.0f} ms; ratio {ours / raw:.2f}x (aim < 2 s)"
        )
    finally:
        state.close()


if __name__ == "__main__":
    main()
