"""``buildsvc prune``: remove cached results nothing but their cache records holds, and the local
contexts no build needs any more.
"""

from __future__ import annotations

import click

from buildsvc.api.model import ContextsPruned, PruneSkipped, UsageRecord
from buildsvc.api.peercred import local_actor
from buildsvc.cli.common import FORMAT_OPTION, echo_json, open_from, print_table
from buildsvc.cli.du_cmd import contexts_pruned_json, usage_json
from buildsvc.cli.remote import connect_from
from buildsvc.daemon.usage import FILTER_KEYS

__all__ = ["COMMANDS"]


def _filters(values: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or key not in FILTER_KEYS or not wanted:
            raise click.BadParameter(
                f"{value!r} is not KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}", param_hint="--filter"
            )
        found[key] = wanted
    return found


@click.command("prune")
@click.option(
    "--all", "all_", is_flag=True, help="Also remove the newest build's results and local contexts."
)
@click.option(
    "--keep-duration",
    type=click.FloatRange(min=0),
    help="Keep cache records and builds' local contexts younger than this many seconds.",
)
@click.option(
    "--filter",
    "filter_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only results matching: worker=NAME, build=REF, id=PREFIX (repeatable).",
)
@FORMAT_OPTION
@click.pass_context
def prune_command(
    ctx: click.Context, all_: bool, keep_duration: float | None, filter_values: tuple[str, ...], fmt: str
) -> None:
    """Remove cached results that no build uses (children before their parents).

    Also the local contexts builds were sent that no build needs any more (the context store).
    """
    filters = _filters(filter_values)
    client = connect_from(ctx)
    removed: list[UsageRecord] = []
    skipped: list[PruneSkipped] = []
    contexts = ContextsPruned()
    if client is not None:
        for result in client.prune_results(all=all_, keep_duration=keep_duration, filters=filters):
            if isinstance(result, PruneSkipped):
                skipped.append(result)
            elif isinstance(result, ContextsPruned):
                contexts = result
            else:
                removed.append(result)
    else:
        from buildsvc.daemon.engine import open_engine
        from buildsvc.daemon.prune import prune

        state = open_from(ctx)
        with open_engine(state) as engine:
            report = prune(
                engine, all=all_, keep_duration=keep_duration, filters=filters, actor=local_actor()
            )
        removed, skipped, contexts = list(report.removed), list(report.skipped), report.contexts
    reclaimed = sum(r.size_bytes for r in removed) + contexts.bytes_reclaimed
    if fmt == "json":
        echo_json(
            {
                "removed": [usage_json(r) for r in removed],
                "skipped": [
                    {"snapshot_id": s.snapshot_id, "worker": s.worker, "reason": s.reason} for s in skipped
                ],
                "contexts": contexts_pruned_json(contexts),
                "reclaimed_bytes": reclaimed,
            }
        )
        return
    if removed:
        print_table(
            "removed",
            ["ID", "WORKER", "PARENT", "SIZE", "CACHE KEYS"],
            [[r.snapshot_id, r.worker, r.parent, r.size_bytes, len(r.cache_keys)] for r in removed],
        )
    if skipped:
        print_table(
            "skipped",
            ["ID", "WORKER", "REASON"],
            [[s.snapshot_id, s.worker, s.reason] for s in skipped],
        )
    if not contexts.empty:
        click.echo(
            f"context store: {len(contexts.manifests)} manifests, {contexts.trees_removed} trees and "
            f"{contexts.blobs_removed} blobs removed ({contexts.bytes_reclaimed} bytes)"
        )
    click.echo(
        f"total: {reclaimed} bytes reclaimed from {len(removed)} snapshots"
        + (" and the context store" if not contexts.empty else "")
    )


COMMANDS = [prune_command]
