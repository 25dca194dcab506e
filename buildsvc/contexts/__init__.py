"""Local contexts, content-addressed: what BuildKit's session filesync does, in our own way.

The sending side scans a directory into a :class:`Manifest` (``scan``, honouring ``.dockerignore``
through ``dockerignore``); the daemon keeps file bytes as blobs named by their sha256 and manifests
named by theirs (``store``), so a rebuild after a one-line edit sends one file; a build's local dirs
are trees made from a manifest (``receive``), and ``LocalContextReceived`` records each in the log.
No gRPC here: the wire is in :mod:`buildsvc.api.content_server` and :mod:`buildsvc.api.client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsvc.contexts.dockerignore import read_ignore_file, scan_rules
from buildsvc.contexts.known_digests import KnownDigests
from buildsvc.contexts.manifest import Entry, InvalidManifest, Manifest, check_digest, parse_manifest
from buildsvc.contexts.scan import Scan, ScanRules, scan_dir
from buildsvc.contexts.transfer import ContextTransfer

if TYPE_CHECKING:
    from buildsvc.contexts.receive import ReceivedContexts, receive_contexts
    from buildsvc.contexts.store import ContextStore, MissingBlobs


def __getattr__(name: str) -> Any:
    # The daemon's side (it records events, so it loads the event catalog) on first use: the
    # sending client imports this package on every build and never receives.
    if name in ("ReceivedContexts", "receive_contexts"):
        from buildsvc.contexts import receive

        return getattr(receive, name)
    # The store (blobs, trees; ctypes and shutil with it) is the receiving side's too.
    if name in ("ContextStore", "MissingBlobs"):
        from buildsvc.contexts import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContextStore",
    "ContextTransfer",
    "Entry",
    "InvalidManifest",
    "KnownDigests",
    "Manifest",
    "MissingBlobs",
    "ReceivedContexts",
    "Scan",
    "ScanRules",
    "check_digest",
    "parse_manifest",
    "read_ignore_file",
    "receive_contexts",
    "scan_dir",
    "scan_rules",
]
