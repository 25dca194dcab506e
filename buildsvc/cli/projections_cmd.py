"""``buildsvc projections rebuild|digest|status|run``: the read models and their runner."""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta

import click

from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table

__all__ = ["COMMANDS"]


@click.group("projections")
def projections_group() -> None:
    """Rebuild, check and run the projections (read models) of the log."""


@projections_group.command("rebuild")
@click.argument("name", required=False)
@click.pass_context
def rebuild(ctx: click.Context, name: str | None) -> None:
    """Drop NAME (default: every projection) and rebuild it from the log; resumes an interrupted rebuild."""
    state = open_from(ctx)
    names = [state.runner.projection(name).name] if name else list(state.runner.projections)
    for n in names:
        started = time.monotonic()
        applied = 0

        def progress(count: int) -> None:
            nonlocal applied
            applied += count

        state.runner.rebuild(n, progress=progress)
        elapsed = time.monotonic() - started
        rate = f", {applied / elapsed:,.0f} events/s" if elapsed > 0 and applied else ""
        click.echo(f"{n}: rebuilt from {applied} events in {elapsed:.2f}s{rate}")


@projections_group.command("digest")
@click.argument("name", required=False)
@FORMAT_OPTION
@click.pass_context
def digest(ctx: click.Context, name: str | None, fmt: str) -> None:
    """Print a digest of each projection's rows: equal before and after a rebuild."""
    state = open_from(ctx)
    names = [state.runner.projection(name).name] if name else list(state.runner.projections)
    digests = {n: state.runner.digest(n) for n in names}
    if fmt == "json":
        echo_json(digests)
    else:
        for n, d in digests.items():
            click.echo(f"{n} sha256:{d}")


@projections_group.command("status")
@FORMAT_OPTION
@click.pass_context
def status(ctx: click.Context, fmt: str) -> None:
    """Show each projection's position, lag, state and lease."""
    state = open_from(ctx)
    statuses = state.runner.statuses()
    if fmt == "json":
        echo_json(
            [
                {
                    "name": s.name,
                    "position": s.position,
                    "head": s.head,
                    "lag": s.lag,
                    "status": s.status,
                    "inline": s.inline,
                    "owner": s.owner,
                    "lease_until": s.lease_until,
                }
                for s in statuses
            ]
        )
        return
    print_table(
        None,
        ["NAME", "POSITION", "HEAD", "LAG", "STATUS", "INLINE", "OWNER", "LEASE UNTIL"],
        [[s.name, s.position, s.head, s.lag, s.status, s.inline, s.owner, s.lease_until] for s in statuses],
    )


@projections_group.command("run")
@click.option("--once", is_flag=True, help="Catch up once and exit instead of following the log.")
@click.option("--lease-seconds", type=float, default=15.0, show_default=True)
@click.pass_context
def run(ctx: click.Context, once: bool, lease_seconds: float) -> None:
    """Apply new events to the projections, as the only active runner (others stand by)."""
    state = open_from(ctx)
    runner = state.runner
    runner.lease = timedelta(seconds=lease_seconds)
    click.echo(f"runner {runner.owner}", err=True)
    if once:
        _report(runner.run_once())
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        runner.follow(stop, on_applied=_report)
    except KeyboardInterrupt:
        stop.set()


def _report(applied: dict[str, int]) -> None:
    for n, count in applied.items():
        if count:
            click.echo(f"{n}: applied {count}", err=True)


COMMANDS = [projections_group]
