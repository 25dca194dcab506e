"""What ``DiskUsage`` and ``Prune`` report, apart from :mod:`buildsvc.daemon.prune` so that clients (the
API model, the CLI) can name these records without importing the engine (a second of start-up).
"""

from __future__ import annotations

from dataclasses import dataclass

# The context store's records are the store's own (no engine behind them either).
from buildsvc.contexts.prune import ContextsPruned, ContextStoreUsage

__all__ = ["FILTER_KEYS", "ContextStoreUsage", "ContextsPruned", "DiskUsage", "PruneSkipped", "UsageRecord"]

FILTER_KEYS = ("worker", "build", "id")
"""What a prune's ``--filter KEY=VALUE`` may name (the command line checks them before it asks)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """A snapshot on disk (``DiskUsage``), from the snapshots projection."""

    snapshot_id: str
    worker: str
    snapshotter: str
    parent: str
    kind: str
    state: str
    size_bytes: int
    active_refs: int
    """Unreleased refs on it, a cache record's among them."""
    in_use: bool = False
    """Whether something other than a cache record holds it (a build, an export...)."""
    shared: bool = False
    """Whether other live snapshots are stacked on it (it is their layer)."""
    cache_keys: tuple[str, ...] = ()
    """The cache records whose result it is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneSkipped:
    """A snapshot prune would have removed but could not (held since it looked, or already gone)."""

    snapshot_id: str
    worker: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskUsage:
    """What ``DiskUsage`` reports: the snapshots, oldest first, and the context store."""

    snapshots: tuple[UsageRecord, ...]
    contexts: ContextStoreUsage
