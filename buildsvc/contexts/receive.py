"""A build's local dirs as the solver gets them: trees made from the context store, and the events
that record how each one arrived (``LocalContextReceived``, appended with ``SolveRequested``).

Sent contexts (a manifest digest the client uploaded) and directories read on this host (a daemon
given host paths, or the embedded engine) go the same way: into the store, then out as a tree, so
every build's inputs are content-addressed and ``.dockerignore`` applies to both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from buildsvc.contexts.dockerignore import scan_rules
from buildsvc.contexts.known_digests import KnownDigests
from buildsvc.contexts.scan import scan_dir
from buildsvc.contexts.store import ContextStore, ContextTransfer
from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev

__all__ = ["ReceivedContexts", "receive_contexts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedContexts:
    """What a solve needs of its local dirs."""

    dirs: dict[str, Path] = field(default_factory=dict)
    """Name -> the tree made from the store (what the frontend and the solver read)."""
    digests: dict[str, str] = field(default_factory=dict)
    """Name -> manifest digest (recorded in ``SolveRequested``)."""
    events: tuple[ev.LocalContextReceived, ...] = ()

    def handed_to(self, build_ref: str) -> ReceivedContexts:
        """The same dirs as another build gets them from this one (a gateway job's solves): the same
        manifests, recorded in ``build_ref``'s stream with ``source`` ``job`` and nothing sent again.
        """
        events = tuple(
            replace(
                e,
                build_ref=build_ref,
                source="job",
                host_path="",
                files_uploaded=0,
                bytes_uploaded=0,
                files_reused=e.files,
            )
            for e in self.events
        )
        return replace(self, events=events)


def _event(
    build_ref: str, name: str, transfer: ContextTransfer, source: str, host_path: str = ""
) -> ev.LocalContextReceived:
    return ev.LocalContextReceived(
        build_ref=build_ref,
        name=name,
        manifest_digest=transfer.manifest_digest,
        files=transfer.files,
        bytes_total=transfer.bytes_total,
        files_uploaded=transfer.files_uploaded,
        bytes_uploaded=transfer.bytes_uploaded,
        files_reused=transfer.files_reused,
        source=source,
        host_path=host_path,
    )


def receive_contexts(
    store: ContextStore,
    build_ref: str,
    *,
    sent: Mapping[str, str] | None = None,
    host_dirs: Mapping[str, Path] | None = None,
    host_source: str = "host",
    frontend: str = "",
    frontend_attrs: Mapping[str, str] | None = None,
) -> ReceivedContexts:
    """Trees and events for ``sent`` (name -> manifest digest already uploaded) and ``host_dirs``
    (name -> a directory on this host, scanned with the frontend's ``.dockerignore`` rules).
    """
    sent = dict(sent or {})
    host_dirs = dict(host_dirs or {})
    both = sorted(set(sent) & set(host_dirs))
    if both:
        raise InvalidInput(f"local {both[0]!r} was given both as a sent context and as a host path")
    dirs: dict[str, Path] = {}
    digests: dict[str, str] = {}
    events: list[ev.LocalContextReceived] = []
    for name, digest in sorted(sent.items()):
        try:
            manifest = store.load_manifest(digest)
            dirs[name] = store.materialize(manifest)
        except InvalidInput as e:
            raise InvalidInput(f"local {name}: {e}") from None
        digests[name] = digest
        events.append(_event(build_ref, name, store.transfer(manifest), "upload"))
    rules = scan_rules(frontend, frontend_attrs or {}, host_dirs)
    for name, path in sorted(host_dirs.items()):
        try:
            rule = rules[name]
            known = KnownDigests.for_dir(path, include=rule.include, exclude=rule.exclude)
            scan = scan_dir(path, rule, known=known)
        except InvalidInput as e:
            raise InvalidInput(f"local {name}: {e}") from None
        transfer = store.ingest(scan)
        dirs[name] = store.materialize(scan.manifest)
        digests[name] = transfer.manifest_digest
        events.append(_event(build_ref, name, transfer, host_source, str(scan.root)))
    return ReceivedContexts(dirs=dirs, digests=digests, events=tuple(events))
