"""``buildsvc workers``: the workers a daemon enabled, or those this machine can run (embedded)."""

from __future__ import annotations

import click

from buildsvc.api.model import WorkerRecord, worker_record
from buildsvc.cli.common import FORMAT_OPTION, Options, echo_json, print_table
from buildsvc.cli.remote import connect_from

__all__ = ["COMMANDS"]


def _embedded(ctx: click.Context) -> list[WorkerRecord]:
    # Imported here: a command that talks to a daemon needs none of the engine.
    from buildsvc.daemon.state import default_root
    from buildsvc.executors import detect_workers

    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    root = opts.root or default_root()
    return [worker_record(w) for w in detect_workers(str(root / "workers"))]


@click.command("workers")
@FORMAT_OPTION
@click.pass_context
def workers(ctx: click.Context, fmt: str) -> None:
    """List the workers (executor + snapshotter) builds run on."""
    client = connect_from(ctx)
    records = client.list_workers() if client is not None else _embedded(ctx)
    if fmt == "json":
        echo_json(
            [
                {
                    "name": r.name,
                    "executor": r.executor,
                    "snapshotter": r.snapshotter,
                    "platforms": list(r.platforms),
                    "labels": dict(r.labels),
                }
                for r in records
            ]
        )
        return
    print_table(
        None,
        ["NAME", "EXECUTOR", "SNAPSHOTTER", "PLATFORMS", "LABELS"],
        [
            [
                r.name,
                r.executor,
                r.snapshotter,
                ",".join(r.platforms),
                ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())),
            ]
            for r in records
        ],
    )


COMMANDS = [workers]
