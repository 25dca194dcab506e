"""``buildsvc demo``: the state store at work on the embedded default, with no server.

Until the build engine lands, the demo records the events a two-step build and its fully cached
rebuild produce (clearly labelled as simulated), then shows what the log gives back: the build
history, the leak report, the verified hash chains and the projection digests before and after a
rebuild from the log.
"""

from __future__ import annotations

import getpass
import os
import uuid

import click

from buildsvc.cli.common import console, open_from, print_table
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.events.verify import verify_events
from buildsvc.projections import find_leaks
from buildsvc.projections.builds import get_build

__all__ = ["COMMANDS"]

_STEPS = [("sha256:" + "1" * 64, "[1/2] RUN apk add gcc"), ("sha256:" + "2" * 64, "[2/2] COPY . /src")]


def _record_build(store: SqlEventStore, actor: str, cached: bool) -> str:
    build = uuid.uuid4().hex[:12]
    stream = f"build-{build}"

    def emit(*events: Event) -> None:
        store.append(stream, list(events), actor=actor)

    emit(ev.SolveRequested(build_ref=build, frontend="dockerfile.v0", client="buildsvc demo"))
    emit(ev.SolveStarted(build_ref=build, vertex_count=len(_STEPS)))
    for vertex, name in _STEPS:
        key = "cachekey-" + vertex[-8:]
        if cached:
            emit(
                ev.VertexCached(
                    build_ref=build, vertex=vertex, name=name, cache_key=key, snapshot_id=f"snap-{key}"
                )
            )
            continue
        snap, ref = f"snap-{key}", f"ref-{uuid.uuid4().hex[:8]}"
        emit(
            ev.SnapshotCreated(snapshot_id=snap, worker="runc-overlay", snapshotter="overlayfs"),
            ev.RefAcquired(
                ref_id=ref, snapshot_id=snap, holder_kind="vertex", holder_id=vertex, build_ref=build
            ),
            ev.VertexStarted(build_ref=build, vertex=vertex, name=name, worker="runc-overlay", cache_key=key),
        )
        emit(ev.VertexLogChunk(build_ref=build, vertex=vertex, data=f"running {name}\n".encode()))
        emit(
            ev.SnapshotCommitted(snapshot_id=snap, size_bytes=4096),
            ev.VertexCompleted(
                build_ref=build, vertex=vertex, worker="runc-overlay", duration_ms=42, exit_code=0
            ),
            ev.CacheRecordAdded(cache_key=key, vertex=vertex, snapshot_id=snap, build_ref=build),
            ev.RefAcquired(ref_id=f"{ref}-cache", snapshot_id=snap, holder_kind="cache", holder_id=key),
            ev.RefReleased(ref_id=ref, snapshot_id=snap, reason="vertex done"),
        )
    emit(ev.SolveCompleted(build_ref=build))
    return build


@click.command("demo")
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Record a simulated build and its cached rebuild, then read them back from the log."""
    state = open_from(ctx)
    console.print(f"[bold]state store:[/] {state.db.safe_url}")
    console.print("[dim]simulated build events (the build engine is not in this version yet)[/]")
    actor = os.environ.get("USER") or getpass.getuser()
    first = _record_build(state.store, actor, cached=False)
    second = _record_build(state.store, actor, cached=True)
    state.runner.run_once()
    with state.db.read() as conn:
        builds = [get_build(conn, first), get_build(conn, second)]
        leaks = find_leaks(conn)
    print_table(
        "build history (from the builds projection)",
        ["REF", "STATUS", "BY", "VERTICES", "COMPLETED", "CACHED"],
        [
            [
                b["build_ref"],
                b["status"],
                b["actor"],
                b["vertices_total"],
                b["vertices_completed"],
                b["vertices_cached"],
            ]
            for b in builds
            if b is not None
        ],
    )
    console.print(f"leaks: {len(leaks.refs)} leaked refs, {len(leaks.snapshots)} unreferenced snapshots")
    report = verify_events(state.store.read_all(batch_size=5000))
    console.print(
        f"verify: {report.events} events in {report.streams} streams, {len(report.problems)} problems"
    )
    for name in state.runner.projections:
        before = state.runner.digest(name)
        state.runner.rebuild(name)
        after = state.runner.digest(name)
        same = "same" if before == after else "DIFFERENT"
        console.print(f"projection {name}: digest {before[:16]} before rebuild, {after[:16]} after ({same})")
    if not report.ok or before != after:
        raise SystemExit(1)


COMMANDS = [demo]
