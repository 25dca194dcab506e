"""``buildsvc history ...`` and ``buildsvc leaks``: builds as the log has them.

``ls``, ``rm`` and ``pin`` go through the daemon when one answers (``ListBuilds``,
``UpdateBuildHistory``), else they read the state or record the event in it directly; the read
commands get the log as ``cli/log_source.py`` says.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from buildsvc.api.peercred import local_actor
from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table
from buildsvc.cli.debug_cmd import debug
from buildsvc.cli.remote import connect_from
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events.envelope import StoredEvent, format_time

if TYPE_CHECKING:
    from buildsvc.cli.log_source import LogSource
    from buildsvc.daemon.leak_report import RootLeakReport
    from buildsvc.projections.build_request import BuildRequest

# Each command imports what it uses where it runs. `history ls` through a daemon is a list call; the
# folds of `inspect`, `trace`, `replay` need the event catalog, not SQLAlchemy (about 0.3 s) or the
# rest of the engine (buildsvc.daemon), which only the commands without a daemon load.

__all__ = ["COMMANDS"]


@click.group("history")
def history_group() -> None:
    """Builds as the log recorded them."""


@history_group.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@FORMAT_OPTION
@click.pass_context
def ls(ctx: click.Context, limit: int, fmt: str) -> None:
    """List builds, newest first."""
    client = connect_from(ctx)
    if client is not None:
        rows = client.list_builds(limit=limit)
    else:
        from buildsvc.daemon.history import recent_builds

        rows = recent_builds(open_from(ctx), limit=limit)
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
    """Show one build from the log: request, who asked, inputs, each vertex, the error and its line.

    Works while the build runs (its rows are caught up from the log first).
    """
    from buildsvc.cli.log_source import log_source
    from buildsvc.projections.build_request import build_request

    source = log_source(ctx)
    build = source.build(ref)
    if build is None:
        raise NotFound(f"no build {ref!r} in the history")
    request = build_request(source.stream(f"build-{ref}"))
    locations = request.locations if request is not None else {}
    if request is not None:
        _add_queued(build, request)
    for v in build["vertices"]:
        v["source_location"] = locations.get(v["vertex"], "")
    build["error_location"] = locations.get(build["error_vertex"], "")
    if fmt == "json":
        echo_json(build | {"request": _request_json(request)})
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
        click.echo(f"{key + ':':<14}{_plain_text(build[key])}")
    if request is not None:
        _echo_request(request)
    counts = (
        "vertices_total",
        "vertices_completed",
        "vertices_cached",
        "vertices_failed",
        "vertices_interrupted",
    )
    click.echo("vertices:     " + ", ".join(f"{k.removeprefix('vertices_')} {build[k]}" for k in counts))
    if build["error"]:
        where = f" at {build['error_location']}" if build["error_location"] else ""
        click.echo(
            f"error:        {build['error']}{where}"
            f" (vertex {build['error_vertex']}, exit {build['exit_code']})"
        )
    print_table(
        None,
        ["VERTEX", "NAME", "STATUS", "WORKER", "RUNS", "STARTED", "ENDED", "EXIT", "SOURCE", "ERROR"],
        [
            [
                v["vertex"][:19],
                v["name"],
                v["status"],
                v["worker"],
                v["runs"],
                v["started_at"],
                v["ended_at"],
                v["exit_code"],
                v["source_location"],
                v["error"][:50],
            ]
            for v in build["vertices"]
        ],
    )


def _add_queued(build: dict[str, Any], request: BuildRequest) -> None:
    from buildsvc.projections.build_rows import queued_vertex

    # The definition names every vertex; those no event mentioned yet are still queued.
    seen = {v["vertex"] for v in build["vertices"]}
    definition = request.definition if isinstance(request.definition, dict) else {}
    for entry in definition.get("vertices") or ():
        if entry.get("id") in seen:
            continue
        name = ((entry.get("metadata") or {}).get("description") or {}).get("llb.customname", "")
        build["vertices"].append(queued_vertex(build["build_ref"], entry["id"], name))


def _plain_text(value: Any) -> str:
    if value is None:
        return ""
    return format_time(value) if isinstance(value, datetime) else str(value)


def _request_json(request: BuildRequest | None) -> dict[str, Any] | None:
    if request is None:
        return None
    found = dataclasses.asdict(request)
    del found["locations"]
    return found


def _echo_request(request: BuildRequest) -> None:
    if request.frontend_attrs:
        options = " ".join(f"{k}={v}" for k, v in sorted(request.frontend_attrs.items()))
        click.echo(f"{'options:':<14}{options}")
    click.echo(f"{'definition:':<14}{request.definition_digest or '(empty)'}")
    for name, value in sorted(request.local_dirs.items()):
        click.echo(f"{'local:':<14}{name}={value}")
    for spec in request.exporters:
        click.echo(f"{'output:':<14}" + ",".join(f"{k}={v}" for k, v in spec.items()))
    for item in request.inputs:
        click.echo(f"{'input:':<14}{item.identifier} {item.digest or '(not resolved)'}")


def _stream(source: LogSource, ref: str) -> list[StoredEvent]:
    events = source.stream(f"build-{ref}")
    if not events:
        raise NotFound(f"no build {ref!r} in the log")
    return events


@history_group.command("trace")
@click.argument("ref")
@FORMAT_OPTION
@click.pass_context
def trace(ctx: click.Context, ref: str, fmt: str) -> None:
    """Print the spans of a build (the solve and each vertex), rebuilt from its events."""
    from buildsvc.cli.log_source import log_source
    from buildsvc.projections.timeline import build_spans

    spans = build_spans(_stream(log_source(ctx), ref))
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
@click.option("--follow", "-f", is_flag=True, help="Keep printing a running build's output until it ends.")
@click.pass_context
def logs(ctx: click.Context, ref: str, follow: bool) -> None:
    """Print a build's output as it printed it, each line under its vertex's ``#N`` number."""
    from buildsvc.api.updates import status_update
    from buildsvc.cli.log_source import log_source
    from buildsvc.cli.progress import PlainProgress

    if follow:  # through the daemon when one answers (across its restart), else from the log
        client = connect_from(ctx)  # first: it loads grpc without what a client never uses
        from buildsvc.cli.attach import follow_build, result_of

        printer = PlainProgress(out=sys.stdout)
        final = follow_build(client, lambda: open_from(ctx).store, ref, printer)
        if final is not None:
            result_of(final, ref)  # a failed or cancelled build exits 1 with its error
            click.echo(f"build {ref} completed", err=True)
        return
    printer = PlainProgress(out=sys.stdout)
    for stored in _stream(log_source(ctx), ref):
        printer.feed(status_update(stored))


def _parse_at(text: str, origin: datetime | None) -> datetime:
    """``--at``: an ISO-8601 time (UTC when no zone is given), or ``+SECONDS`` after the build's start."""
    if text.startswith("+"):
        try:
            offset = float(text[1:])
        except ValueError:
            raise InvalidInput(f"--at {text!r}: expected +SECONDS (e.g. +2.5) or an ISO-8601 time") from None
        if origin is None:
            raise InvalidInput(f"--at {text!r}: the build has no recorded start to count from")
        return origin + timedelta(seconds=offset)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"--at {text!r}: expected an ISO-8601 time (2024-05-01T12:00:00Z) or +SECONDS"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@history_group.command("replay")
@click.argument("ref")
@click.option(
    "--at", "at_text", metavar="TIME", help="Replay up to TIME (ISO-8601, or +SECONDS from the start)."
)
@click.option("--position", type=click.IntRange(min=0), help="Replay up to this global log position.")
@click.option(
    "--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), help="Write a Gantt chart page."
)
@FORMAT_OPTION
@click.pass_context
def replay_cmd(
    ctx: click.Context, ref: str, at_text: str | None, position: int | None, html_file: Path | None, fmt: str
) -> None:
    """Rebuild, from events alone, the build and the daemon at a moment (default: the build's end)."""
    if at_text is not None and position is not None:
        raise InvalidInput("give --at or --position, not both")
    from buildsvc.cli.common import console
    from buildsvc.cli.log_source import log_source
    from buildsvc.cli.replay_render import gantt_html, print_timeline, replay_json
    from buildsvc.projections.replay import Cut, replay

    source = log_source(ctx)
    own = _stream(source, ref)
    until = 0  # a time cut ends the fold where it passes; a position cut ends the read there too
    if at_text is not None:
        cut = Cut(at=_parse_at(at_text, own[0].recorded_at))
    else:
        # By default the moment the build's last event was recorded (or still is, while it runs).
        cut = Cut(position=position if position is not None else own[-1].position)
        until = cut.position or 0
    replayed = replay(source.log(until=until), ref, cut)
    if html_file is not None:
        html_file.write_text(gantt_html(replayed), encoding="utf-8")
    if fmt == "json":
        echo_json(replay_json(replayed))
        return
    print_timeline(console, replayed)
    if html_file is not None:
        click.echo(f"wrote {html_file}")


@history_group.command("provenance")
@click.argument("ref")
@click.option(
    "-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here."
)
@click.pass_context
def provenance(ctx: click.Context, ref: str, output: Path | None) -> None:
    """Write an in-toto statement with a SLSA provenance v1 predicate, built from the log."""
    from buildsvc.cli.log_source import log_source
    from buildsvc.events import catalog as ev
    from buildsvc.projections.provenance import provenance_statement

    source = log_source(ctx)
    events = _stream(source, ref)
    started = next((s for s in events if s.type == ev.SolveStarted.type_name), None)
    daemon_id = started.payload.get("daemon_id", "") if started is not None else ""
    daemon_events = source.stream(f"daemon-{daemon_id}") if daemon_id else []
    try:
        statement = provenance_statement(events, daemon_events)
    except ValueError as e:
        raise InvalidInput(f"build {ref!r}: {e}") from None
    text = json.dumps(statement, indent=2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {output}")


@history_group.command("rm")
@click.argument("ref")
@click.pass_context
def rm(ctx: click.Context, ref: str) -> None:
    """Delete a build from the history (its events stay in the log)."""
    client = connect_from(ctx)
    if client is not None:
        client.update_build_history(ref, delete=True)
    else:
        from buildsvc.daemon.history import update_build_history

        update_build_history(open_from(ctx).store, ref, delete=True, actor=local_actor())
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
        from buildsvc.daemon.history import update_build_history

        update_build_history(open_from(ctx).store, ref, pinned=not unpin, actor=local_actor())
    click.echo(f"{'unpinned' if unpin else 'pinned'} {ref}")


@click.command("leaks")
@click.option("--ref", "build_ref", help="Only refs of this build (the disk checks are skipped).")
@FORMAT_OPTION
@click.pass_context
def leaks(ctx: click.Context, build_ref: str | None, fmt: str) -> None:
    """Report what was left behind: from the log, checked against the root's disk.

    Refs whose holder ended without releasing them (with the events of their life), snapshots
    nothing references, data on disk no live snapshot accounts for, snapshots and cache records
    whose data is gone, and mounts left under the root. Exits 1 when there is a leak.
    """
    from buildsvc.daemon.leak_report import report_from_json, report_to_json

    client = connect_from(ctx)
    if client is not None:  # the daemon scans its own root
        report = report_from_json(client.leaks(build_ref=build_ref or ""))
    else:
        from buildsvc.daemon.leaks import scan_leaks

        state = open_from(ctx)
        state.runner.run_once()
        report = scan_leaks(state, build_ref=build_ref)
    if fmt == "json":
        echo_json(report_to_json(report))
    else:
        _print_leaks(report)
    if not report.empty:
        raise SystemExit(1)


def _print_leaks(report: RootLeakReport) -> None:
    if report.refs:
        print_table(
            "leaked refs",
            ["REF", "SNAPSHOT", "HOLDER", "BUILD", "LIFE"],
            [
                [
                    r.ref.ref_id,
                    r.ref.snapshot_id,
                    f"{r.ref.holder_kind}:{r.ref.holder_id}",
                    r.ref.build_ref,
                    "; ".join(f"@{e.position} {e.type} ({e.stream_id})" for e in r.life),
                ]
                for r in report.refs
            ],
        )
    if report.unreferenced:
        print_table(
            "unreferenced snapshots",
            ["SNAPSHOT", "WORKER", "STATE", "SIZE", "CREATED AT"],
            [
                [s.snapshot_id, s.worker, s.state, s.size_bytes, s.created_position]
                for s in report.unreferenced
            ],
        )
    if report.untracked:
        print_table(
            "data on disk no live snapshot accounts for",
            ["WORKER", "PATH", "SNAPSHOT", "WHY"],
            [[u.worker, u.path, u.snapshot_id, u.reason] for u in report.untracked],
        )
    if report.missing:
        print_table(
            "data gone",
            ["KIND", "SNAPSHOT", "WORKER", "CACHE KEY", "WHY"],
            [[m.kind, m.snapshot_id, m.worker, m.cache_key, m.reason] for m in report.missing],
        )
    if report.mounts:
        print_table(
            "mounts left behind",
            ["PATH", "SNAPSHOT", "WHY"],
            [[m.path, m.snapshot_id, m.reason] for m in report.mounts],
        )
    if report.empty:
        click.echo("no leaks")


history_group.add_command(debug)  # buildsvc/cli/debug_cmd.py (issue 5)

COMMANDS = [history_group, leaks]
