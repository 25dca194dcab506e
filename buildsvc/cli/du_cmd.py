"""``buildsvc du``: the snapshots on disk, from a daemon or from the state (embedded)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from buildsvc.api.model import UsageRecord
from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table
from buildsvc.cli.remote import connect_from
from buildsvc.daemon.prune import usage_records

__all__ = ["COMMANDS", "usage_json"]


def usage_json(record: UsageRecord) -> dict[str, Any]:
    """A usage record as ``--format json`` prints it."""
    fields = dataclasses.asdict(record)
    fields["cache_keys"] = list(record.cache_keys)
    return fields


@click.command("du")
@FORMAT_OPTION
@click.pass_context
def du(ctx: click.Context, fmt: str) -> None:
    """Show the disk usage of the build cache (every snapshot not removed)."""
    client = connect_from(ctx)
    if client is not None:
        records = client.disk_usage()
    else:
        state = open_from(ctx)
        with state.db.read() as conn:
            records = usage_records(conn)
    if fmt == "json":
        echo_json([usage_json(r) for r in records])
        return
    print_table(
        None,
        ["ID", "WORKER", "PARENT", "KIND", "IN USE", "SHARED", "SIZE", "CACHE KEYS"],
        [
            [
                r.snapshot_id,
                r.worker,
                r.parent,
                r.kind,
                "yes" if r.in_use else "",
                "yes" if r.shared else "",
                r.size_bytes,
                len(r.cache_keys),
            ]
            for r in records
        ],
    )
    click.echo(f"total: {sum(r.size_bytes for r in records)} bytes in {len(records)} snapshots")


COMMANDS = [du]
