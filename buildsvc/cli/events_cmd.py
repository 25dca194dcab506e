"""``buildsvc events tail|verify``: the raw log."""

from __future__ import annotations

import json

import click

from buildsvc.cli.common import open_from
from buildsvc.events.codec import canonical_json
from buildsvc.events.envelope import StoredEvent, format_time
from buildsvc.events.subscription import Subscription
from buildsvc.events.verify import verify_events

__all__ = ["COMMANDS"]


@click.group("events")
def events_group() -> None:
    """Read and check the event log."""


def _as_json(ev: StoredEvent) -> str:
    return json.dumps(
        {
            "position": ev.position,
            "event_id": str(ev.event_id),
            "stream_id": ev.stream_id,
            "stream_version": ev.stream_version,
            "type": ev.type,
            "schema_version": ev.schema_version,
            "recorded_at": format_time(ev.recorded_at),
            "actor": ev.actor,
            "trace_id": ev.trace_id,
            "hash": ev.hash.hex(),
            "payload": ev.payload,
        },
        sort_keys=False,
    )


def _as_line(ev: StoredEvent) -> str:
    payload = canonical_json(ev.payload)
    if len(payload) > 160:
        payload = payload[:157] + "..."
    actor = f" by {ev.actor}" if ev.actor else ""
    return (
        f"{ev.position:>8} {format_time(ev.recorded_at)} {ev.stream_id}@{ev.stream_version} "
        f"{ev.type}{actor} {payload}"
    )


@events_group.command("tail")
@click.option(
    "--after", type=int, default=None, help="Start after this global position (default: the last 10)."
)
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep printing new events.")
@click.option("--format", "fmt", type=click.Choice(["line", "json"]), default="line", show_default=True)
@click.pass_context
def tail(ctx: click.Context, after: int | None, follow: bool, fmt: str) -> None:
    """Print events as they are appended (one per line; ``--format json`` for JSON lines)."""
    state = open_from(ctx)
    start = after if after is not None else max(state.store.head() - 10, 0)
    render = _as_json if fmt == "json" else _as_line
    if not follow:
        for ev in state.store.read_all(after=start):
            click.echo(render(ev))
        return
    subscription = Subscription(state.store, after=start, poll_interval=0.5)
    try:
        for ev in subscription:
            click.echo(render(ev))
    except KeyboardInterrupt:
        subscription.close()


@events_group.command("verify")
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Walk every stream's hash chain; exit 1 naming each edited, deleted or reordered event."""
    state = open_from(ctx)
    report = verify_events(state.store.read_all(batch_size=5000))
    for problem in report.problems:
        click.echo(str(problem), err=True)
    summary = f"{report.events} events in {report.streams} streams, head {report.head}"
    if report.ok:
        click.echo(f"ok: {summary}: every hash chain verifies")
        return
    click.echo(f"FAILED: {summary}: {len(report.problems)} problem(s); first: {report.problems[0]}", err=True)
    raise SystemExit(1)


COMMANDS = [events_group]
