"""A build's local dirs, from the command line to the context store (a daemon's, or our own).

With a daemon each dir is scanned here (``.dockerignore`` applied, symlinks sent as symlinks) and
only the files the daemon lacks are uploaded; the Solve then names each by manifest digest. The
embedded engine scans, ingests and materializes through the same store under its own root, so a
build sees the same files whichever way it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsvc.contexts import ContextTransfer, KnownDigests, scan_dir, scan_rules

if TYPE_CHECKING:
    from buildsvc.api.client import Client
    from buildsvc.contexts import ReceivedContexts

__all__ = ["embedded_contexts", "send_local_dirs"]


def _say(progress: str, name: str, t: ContextTransfer, verb: str) -> None:
    if progress in ("quiet", "rawjson"):
        return
    click.echo(
        f"context {name}: {t.files} files, {t.bytes_total} bytes; {verb} {t.files_uploaded} "
        f"({t.bytes_uploaded} bytes), {t.files_reused} already there",
        err=True,
    )


def send_local_dirs(
    client: Client,
    local_dirs: Mapping[str, Path],
    *,
    frontend: str,
    frontend_attrs: Mapping[str, str],
    progress: str,
) -> dict[str, ContextTransfer]:
    """Upload each dir to the daemon; name -> what was sent (``manifest_digest`` names it in a Solve)."""
    rules = scan_rules(frontend, frontend_attrs, local_dirs)
    sent: dict[str, ContextTransfer] = {}
    for name, path in sorted(local_dirs.items()):
        rule = rules[name]
        known = KnownDigests.for_dir(path, include=rule.include, exclude=rule.exclude)
        transfer = client.sync_dir(scan_dir(path, rule, known=known))
        _say(progress, name, transfer, "sent")
        sent[name] = transfer
    return sent


def embedded_contexts(
    root: Path,
    build_ref: str,
    local_dirs: Mapping[str, Path],
    *,
    frontend: str,
    frontend_attrs: Mapping[str, str],
    progress: str,
) -> ReceivedContexts:
    """The dirs through the context store under ``root`` (the embedded engine's own)."""
    # The receiving side (it records events), which a build through a daemon never loads.
    from buildsvc.contexts import ContextStore, receive_contexts

    received = receive_contexts(
        ContextStore.under(root),
        build_ref,
        host_dirs=local_dirs,
        host_source="embedded",
        frontend=frontend,
        frontend_attrs=frontend_attrs,
    )
    for event in received.events:
        transfer = ContextTransfer(
            manifest_digest=event.manifest_digest,
            files=event.files,
            bytes_total=event.bytes_total,
            files_uploaded=event.files_uploaded,
            bytes_uploaded=event.bytes_uploaded,
            files_reused=event.files_reused,
        )
        _say(progress, event.name, transfer, "stored")
    return received
