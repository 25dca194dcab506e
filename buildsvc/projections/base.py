"""What a projection is: a pure function of the log, applied in batches to tables it owns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from buildsvc.events.envelope import StoredEvent

__all__ = ["Projection"]


class Projection(Protocol):
    """A read model rebuilt from events alone."""

    @property
    def name(self) -> str:
        """Stable name (the checkpoint key and the CLI's argument)."""
        ...

    @property
    def tables(self) -> Sequence[sa.Table]:
        """The tables it owns: emptied on rebuild, covered by its digest (parents before children)."""
        ...

    @property
    def event_types(self) -> frozenset[str]:
        """The event types it reads; all others leave its rows unchanged (and are skipped unread)."""
        ...

    @property
    def inline(self) -> bool:
        """Whether appends apply it in their own transaction (for read models the engine reads at once)."""
        ...

    def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        """Apply a batch of events, in order, inside the caller's transaction.

        Must be deterministic and depend on nothing but the events and the rows it owns.
        """
        ...
