"""What the log says was left behind: the records :func:`buildsvc.projections.refs.find_leaks`
returns, apart from its SQL so that a client can read a daemon's leak report without it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LeakReport", "LeakedRef", "UnreferencedSnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LeakedRef:
    """A ref whose holder ended without releasing it."""

    ref_id: str
    snapshot_id: str
    holder_kind: str
    holder_id: str
    build_ref: str
    acquired_position: int
    holder_ended_position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnreferencedSnapshot:
    """A snapshot on disk that no unreleased ref keeps alive."""

    snapshot_id: str
    worker: str
    state: str
    size_bytes: int
    created_position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeakReport:
    """Everything the log says was left behind."""

    refs: tuple[LeakedRef, ...]
    snapshots: tuple[UnreferencedSnapshot, ...]

    @property
    def empty(self) -> bool:
        """No leaked ref and no unreferenced snapshot."""
        return not self.refs and not self.snapshots
