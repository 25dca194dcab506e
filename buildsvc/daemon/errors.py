"""Errors raised by the daemon's engine (leaves of the tree drawn in ``buildsvc/errors.py``)::

Conflict
└── SnapshotInUse        a snapshot removal refused: something still holds the snapshot
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from buildsvc.errors import Conflict

__all__ = ["SnapshotHolder", "SnapshotInUse"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotHolder:
    """What keeps a snapshot alive: an unreleased ref, or a live snapshot stacked on it.

    ``kind`` is the ref's holder kind (``solve``, ``vertex``, ``export``, ``gateway``, ``daemon``) with
    ``id`` its holder id, or ``child`` with ``id`` the child snapshot; ``build`` is the build the ref
    (or the child's ref) belongs to, ``""`` when none.
    """

    kind: str
    id: str
    build: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.id}" + (f" (build {self.build})" if self.build else "")


class SnapshotInUse(Conflict):
    """A snapshot cannot be removed while refs or child snapshots hold it."""

    def __init__(self, worker: str, snapshot_id: str, holders: Sequence[SnapshotHolder]) -> None:
        self.worker = worker
        self.snapshot_id = snapshot_id
        self.holders = tuple(holders)
        listed = "; ".join(str(h) for h in self.holders)
        super().__init__(f"snapshot {snapshot_id} on worker {worker} is in use by: {listed}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the typed attributes when the error crosses a process boundary.
        return (SnapshotInUse, (self.worker, self.snapshot_id, self.holders))
