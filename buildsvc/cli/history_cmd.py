"""``buildsvc history ls|inspect|trace|logs|rm|pin`` and ``buildsvc leaks``: builds as the log has them.

``rm`` and ``pin`` go through the daemon when one answers (``UpdateBuildHistory``), else they record
the event in the state directly.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from buildsvc.api.model import status_update
from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table
from buildsvc.cli.progress import PlainProgress
from buildsvc.cli.remote import connect_from
from buildsvc.daemon.history import update_build_history
from buildsvc.daemon.state import State
from buildsvc.errors import NotFound
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections import find_leaks
from buildsvc.projections.builds import get_build, list_builds
from buildsvc.projections.timeline import build_spans

__all__ = ["COMMANDS"]


@click.group("history")
def history_group() -> None:
    """Builds as the log recorded them."""


@history_group.command("ls")
@click.option("--limit", type=int, default=50, show_default=True)
@FORMAT_OPTION
@click.pass_context
def ls(ctx: click.Context, limit: int, fmt: str) -> None:
    """List builds, newest first."""
    state = open_from(ctx)
    state.runner.run_once()
    with state.db.read() as conn:
        rows = list_builds(conn, limit=limit)
    if fmt == "json":
        echo_json(rows)
        return
    print_table(
        None,
        ["REF", "STATUS", "FRONTEND", "BY", "STARTED", "ENDED", "VERTICES", "CACHED", "ERROR"],
        [
            [
                r["build_ref"],
                r["status"],
                r["frontend"],
                r["actor"],
                r["started_at"],
                r["ended_at"],
                r["vertices_total"],
                r["vertices_cached"],
                r["error"][:60],
            ]
            for r in rows
        ],
    )


@history_group.command("inspect")
@click.argument("ref")
@FORMAT_OPTION
@click.pass_context
def inspect(ctx: click.Context, ref: str, fmt: str) -> None:
    """Show one build and each of its vertices."""
    state = open_from(ctx)
    state.runner.run_once()
    with state.db.read() as conn:
        build = get_build(conn, ref)
    if build is None:
        raise NotFound(f"no build {ref!r} in the history")
    if fmt == "json":
        echo_json(build)
        return
    for key in (
        "build_ref",
        "status",
        "frontend",
        "actor",
        "trace_id",
        "requested_at",
        "started_at",
        "ended_at",
    ):
        click.echo(f"{key + ':':<14}{build[key] or ''}")
    counts = (
        "vertices_total",
        "vertices_completed",
        "vertices_cached",
        "vertices_failed",
        "vertices_interrupted",
    )
    click.echo("vertices:     " + ", ".join(f"{k.removeprefix('vertices_')} {build[k]}" for k in counts))
    if build["error"]:
        click.echo(
            f"error:        {build['error']} (vertex {build['error_vertex']}, exit {build['exit_code']})"
        )
    print_table(
        None,
        ["VERTEX", "NAME", "STATUS", "WORKER", "RUNS", "DURATION MS", "EXIT", "ERROR"],
        [
            [
                v["vertex"][:19],
                v["name"],
                v["status"],
                v["worker"],
                v["runs"],
                v["duration_ms"],
                v["exit_code"],
                v["error"][:50],
            ]
            for v in build["vertices"]
        ],
    )


def _stream(state: State, ref: str) -> list[StoredEvent]:
    events = state.store.read_stream(f"build-{ref}")
    if not events:
        raise NotFound(f"no build {ref!r} in the log")
    return events


@history_group.command("trace")
@click.argument("ref")
@FORMAT_OPTION
@click.pass_context
def trace(ctx: click.Context, ref: str, fmt: str) -> None:
    """Print the spans of a build (the solve and each vertex), rebuilt from its events."""
    state = open_from(ctx)
    spans = build_spans(_stream(state, ref))
    if fmt == "json":
        echo_json(
            [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "trace_id": s.trace_id,
                    "start": s.start,
                    "end": s.end,
                    "duration_ms": s.duration_ms,
                    "status": s.status,
                    "vertex": s.vertex,
                    "worker": s.worker,
                }
                for s in spans
            ]
        )
        return
    if spans and spans[0].trace_id:
        click.echo(f"trace {spans[0].trace_id}")
    for s in spans:
        indent = "" if s.kind == "solve" else "  "
        took = f"{s.duration_ms:.1f} ms" if s.duration_ms is not None else "running"
        where = f" on {s.worker}" if s.worker else ""
        click.echo(f"{indent}{s.name}  [{s.status}] {took}{where}")


@history_group.command("logs")
@click.argument("ref")
@click.pass_context
def logs(ctx: click.Context, ref: str) -> None:
    """Print a build's output as it printed it, each line under its vertex's ``#N`` number."""
    state = open_from(ctx)
    printer = PlainProgress(out=sys.stdout)
    for stored in _stream(state, ref):
        printer.feed(status_update(stored))


@history_group.command("rm")
@click.argument("ref")
@click.pass_context
def rm(ctx: click.Context, ref: str) -> None:
    """Delete a build from the history (its events stay in the log)."""
    client = connect_from(ctx)
    if client is not None:
        client.update_build_history(ref, delete=True)
    else:
        update_build_history(open_from(ctx).store, ref, delete=True)
    click.echo(f"deleted {ref}")


@history_group.command("pin")
@click.argument("ref")
@click.option("--unpin", is_flag=True, help="Unpin instead.")
@click.pass_context
def pin(ctx: click.Context, ref: str, unpin: bool) -> None:
    """Pin a build's history entry (or unpin it)."""
    client = connect_from(ctx)
    if client is not None:
        client.update_build_history(ref, pinned=not unpin)
    else:
        update_build_history(open_from(ctx).store, ref, pinned=not unpin)
    click.echo(f"{'unpinned' if unpin else 'pinned'} {ref}")


@click.command("leaks")
@click.option("--ref", "build_ref", help="Only refs of this build.")
@FORMAT_OPTION
@click.pass_context
def leaks(ctx: click.Context, build_ref: str | None, fmt: str) -> None:
    """Report refs whose holder ended without releasing them, and snapshots nothing references.

    Exits 1 when there is a leak, so scripts can check for them.
    """
    state = open_from(ctx)
    state.runner.run_once()
    with state.db.read() as conn:
        report = find_leaks(conn, build_ref=build_ref)
    if fmt == "json":
        echo_json(
            {
                "refs": [_fields(r) for r in report.refs],
                "snapshots": [_fields(s) for s in report.snapshots],
            }
        )
    else:
        if report.refs:
            print_table(
                "leaked refs",
                ["REF", "SNAPSHOT", "HOLDER", "BUILD", "ACQUIRED AT", "HOLDER ENDED AT"],
                [
                    [
                        r.ref_id,
                        r.snapshot_id,
                        f"{r.holder_kind}:{r.holder_id}",
                        r.build_ref,
                        r.acquired_position,
                        r.holder_ended_position,
                    ]
                    for r in report.refs
                ],
            )
        if report.snapshots:
            print_table(
                "unreferenced snapshots",
                ["SNAPSHOT", "WORKER", "STATE", "SIZE", "CREATED AT"],
                [
                    [s.snapshot_id, s.worker, s.state, s.size_bytes, s.created_position]
                    for s in report.snapshots
                ],
            )
        if report.empty:
            click.echo("no leaks")
    if not report.empty:
        raise SystemExit(1)


def _fields(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


COMMANDS = [history_group, leaks]
