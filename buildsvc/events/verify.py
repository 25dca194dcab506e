"""Walk every stream's hash chain and the global order: find edited, deleted or reordered events.

What each check catches:

- a stored hash that does not match ``sha256(prev_hash || canonical bytes)``: the event was edited
  (or one before it in its stream was replaced);
- a stream version that skips or repeats: an event was deleted from, or moved within, the stream;
- a hole in the global positions (which are gapless by construction): an event was deleted.

After a problem the walk continues from the stored hash, so one edit is reported once, not as a
cascade through the rest of the stream.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from buildsvc.events.codec import canonical_json
from buildsvc.events.envelope import GENESIS_HASH, StoredEvent, chain_hash

__all__ = ["ChainProblem", "VerifyReport", "verify_events"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainProblem:
    """One place where the log is not what was written."""

    kind: str
    """``edited``, ``deleted`` or ``reordered``."""
    position: int
    stream_id: str
    stream_version: int
    event_id: str
    detail: str

    def __str__(self) -> str:
        return (
            f"{self.kind}: position {self.position}, stream {self.stream_id!r} version {self.stream_version} "
            f"(event {self.event_id}): {self.detail}"
        )


@dataclass(slots=True, kw_only=True)
class VerifyReport:
    """The outcome of a walk over the whole log."""

    events: int = 0
    streams: int = 0
    head: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems


def verify_events(events: Iterable[StoredEvent]) -> VerifyReport:
    """Check events given in global position order."""
    report = VerifyReport()
    last: dict[str, tuple[int, bytes]] = {}
    expected_position = 1
    for ev in events:
        report.events += 1
        if ev.position != expected_position:
            missing = (
                f"position {expected_position}"
                if ev.position == expected_position + 1
                else f"positions {expected_position}..{ev.position - 1}"
            )
            report.problems.append(_problem("deleted", ev, f"{missing} missing from the global order"))
        expected_position = ev.position + 1
        version, prev_hash = last.get(ev.stream_id, (0, GENESIS_HASH))
        if ev.stream_version != version + 1:
            if ev.stream_version > version + 1:
                report.problems.append(
                    _problem(
                        "deleted",
                        ev,
                        f"stream versions {version + 1}..{ev.stream_version - 1} are missing here "
                        "(deleted, or moved later in the log)",
                    )
                )
            else:
                report.problems.append(
                    _problem("reordered", ev, f"version {ev.stream_version} comes after version {version}")
                )
        computed = chain_hash(prev_hash, ev.canonical_bytes())
        if computed != ev.hash:
            computed = _rehash_reformatted(prev_hash, ev) or computed
        if computed != ev.hash:
            report.problems.append(
                _problem(
                    "edited",
                    ev,
                    f"stored hash {ev.hash.hex()[:16]}… but the content hashes to {computed.hex()[:16]}…",
                )
            )
        last[ev.stream_id] = (max(version, ev.stream_version), ev.hash)
        report.head = ev.position
    report.streams = len(last)
    return report


def _problem(kind: str, ev: StoredEvent, detail: str) -> ChainProblem:
    return ChainProblem(
        kind=kind,
        position=ev.position,
        stream_id=ev.stream_id,
        stream_version=ev.stream_version,
        event_id=str(ev.event_id),
        detail=detail,
    )


def _rehash_reformatted(prev_hash: bytes, ev: StoredEvent) -> bytes | None:
    """The hash of ``ev`` with its payload text made canonical again, or None if it is not JSON.

    The store writes canonical JSON; a tool that rewrote a row with the same content in another
    layout (spaces, key order) changed no fact, so that is not reported as an edit.
    """
    try:
        text = canonical_json(json.loads(ev.payload_json))
    except ValueError:
        return None
    return chain_hash(prev_hash, dataclasses.replace(ev, payload_json=text).canonical_bytes())
