"""``buildsvc du``: the snapshots and the context store on disk, from a daemon or from the state
(embedded).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from buildsvc.api.model import ContextsPruned, ContextStoreUsage, UsageRecord
from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table
from buildsvc.cli.remote import connect_from

__all__ = ["COMMANDS", "contexts_pruned_json", "usage_json"]


def usage_json(record: UsageRecord) -> dict[str, Any]:
    """A usage record as ``--format json`` prints it."""
    fields = dataclasses.asdict(record)
    fields["cache_keys"] = list(record.cache_keys)
    return fields


def context_usage_json(usage: ContextStoreUsage) -> dict[str, Any]:
    """The context store's usage as ``--format json`` prints it."""
    return {**dataclasses.asdict(usage), "total_bytes": usage.total_bytes}


def contexts_pruned_json(pruned: ContextsPruned) -> dict[str, Any]:
    """What a prune removed from the context store, as ``prune --format json`` prints it."""
    return {**dataclasses.asdict(pruned), "manifests": list(pruned.manifests)}


@click.command("du")
@FORMAT_OPTION
@click.pass_context
def du(ctx: click.Context, fmt: str) -> None:
    """Show the disk usage of the build cache (every snapshot not removed).

    Then the context store's: the local dirs builds were sent (manifests, blobs, trees).
    """
    client = connect_from(ctx)
    if client is not None:
        report = client.disk_usage_report()
        records, contexts = list(report.snapshots), report.contexts
    else:
        from buildsvc.daemon.prune import context_store_usage, usage_records

        state = open_from(ctx)
        with state.db.read() as conn:
            records = usage_records(conn)
        contexts = context_store_usage(state.root)
    if fmt == "json":
        echo_json({"snapshots": [usage_json(r) for r in records], "contexts": context_usage_json(contexts)})
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
    click.echo(
        f"context store: {contexts.manifests} manifests, "
        f"{contexts.blobs} blobs ({contexts.blob_bytes} bytes), "
        f"{contexts.trees} trees (~{contexts.tree_bytes} bytes: files trees share counted once)"
    )


COMMANDS = [du]
