"""The leak report's records and its JSON (``buildsvc leaks --format json``, the daemon's ``Leaks``
answer), apart from the scan that makes it (:mod:`buildsvc.daemon.leaks`): a client reading a
daemon's report loads neither the engine nor SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from buildsvc.projections.leak_records import LeakedRef, UnreferencedSnapshot

__all__ = [
    "LeftMount",
    "LifeEvent",
    "MissingData",
    "RefLeak",
    "RootLeakReport",
    "UntrackedData",
    "report_from_json",
    "report_to_json",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class LifeEvent:
    """One event in the life of a leaked ref."""

    position: int
    type: str
    stream_id: str
    recorded_at: str
    actor: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefLeak:
    """A ref acquired and never released, with its holder and the events of its life."""

    ref: LeakedRef
    life: tuple[LifeEvent, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UntrackedData:
    """Snapshot data on disk that no live snapshot of the log accounts for."""

    worker: str
    path: str
    snapshot_id: str
    """The key its metadata names ("" when no metadata names the directory)."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MissingData:
    """A snapshot or cache record the log has whose data is gone."""

    kind: str
    """``snapshot`` or ``cache_record``."""
    snapshot_id: str
    worker: str
    cache_key: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LeftMount:
    """A mount under the root that nothing live needs."""

    path: str
    snapshot_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RootLeakReport:
    """Every kind of leak, from the log and from the disk."""

    refs: tuple[RefLeak, ...]
    unreferenced: tuple[UnreferencedSnapshot, ...]
    untracked: tuple[UntrackedData, ...] = ()
    missing: tuple[MissingData, ...] = ()
    mounts: tuple[LeftMount, ...] = ()

    @property
    def empty(self) -> bool:
        """No leak of any kind."""
        return not (self.refs or self.unreferenced or self.untracked or self.missing or self.mounts)


def report_to_json(report: RootLeakReport) -> dict[str, list[dict[str, Any]]]:
    """The report as a JSON object: one list per kind, each item its fields (a ref with its life)."""
    return {
        "refs": [
            dataclasses.asdict(r.ref) | {"life": [dataclasses.asdict(e) for e in r.life]} for r in report.refs
        ],
        "snapshots": [dataclasses.asdict(s) for s in report.unreferenced],
        "untracked": [dataclasses.asdict(u) for u in report.untracked],
        "missing": [dataclasses.asdict(m) for m in report.missing],
        "mounts": [dataclasses.asdict(m) for m in report.mounts],
    }


def report_from_json(found: dict[str, Any]) -> RootLeakReport:
    """The report :func:`report_to_json` made (a missing kind reads as none of it)."""
    try:
        return RootLeakReport(
            refs=tuple(
                RefLeak(
                    ref=LeakedRef(**{k: v for k, v in r.items() if k != "life"}),
                    life=tuple(LifeEvent(**e) for e in r.get("life", ())),
                )
                for r in found.get("refs", ())
            ),
            unreferenced=tuple(UnreferencedSnapshot(**s) for s in found.get("snapshots", ())),
            untracked=tuple(UntrackedData(**u) for u in found.get("untracked", ())),
            missing=tuple(MissingData(**m) for m in found.get("missing", ())),
            mounts=tuple(LeftMount(**m) for m in found.get("mounts", ())),
        )
    except (TypeError, AttributeError) as e:  # another version's fields: say so, not a traceback
        raise ValueError(f"leak report in an unknown shape: {e}") from e
