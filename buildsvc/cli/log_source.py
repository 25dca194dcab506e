"""Where the read commands get the log from: the daemon (``BuildEvents``) or the state directly.

``history inspect|logs|trace|replay|provenance`` fold events with pure projections. With a daemon
(``--addr``, or one answering at the default socket) the events come from it, so the command never
opens a root or database of its own; embedded, they are read from the state as before. Either way
the same projections print the same thing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import click

from buildsvc.cli.common import open_from
from buildsvc.cli.remote import connect_from
from buildsvc.events.envelope import StoredEvent
from buildsvc.projections.build_rows import fold_build

if TYPE_CHECKING:
    # grpc loads through connect_from, which leaves out what a client never uses.
    from buildsvc.api.client import Client
    from buildsvc.daemon.state import State

__all__ = ["DaemonLog", "LocalLog", "LogSource", "log_source"]


class LogSource(Protocol):
    """The reads the history commands make of the log."""

    def stream(self, stream_id: str) -> list[StoredEvent]:
        """One stream's events in version order."""
        ...

    def log(self, *, until: int = 0) -> Iterable[StoredEvent]:
        """The whole log in position order (up to ``until``; 0: to its end)."""
        ...

    def build(self, build_ref: str) -> dict[str, Any] | None:
        """The build's history row with its vertices (None when absent or deleted)."""
        ...


class LocalLog:
    """The log of a state this process opened (the embedded mode)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def stream(self, stream_id: str) -> list[StoredEvent]:
        return self.state.store.read_stream(stream_id)

    def log(self, *, until: int = 0) -> Iterable[StoredEvent]:
        for stored in self.state.store.read_all(batch_size=5000):
            if until and stored.position > until:
                return
            yield stored

    def build(self, build_ref: str) -> dict[str, Any] | None:
        # Folded from the log, not read from the builds projection's rows: a daemon on the same
        # state holds that projection's lease, and its rows can trail the log by a catch-up.
        return folded_build(self, build_ref)


class DaemonLog:
    """The log as a daemon serves it (``BuildEvents``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def stream(self, stream_id: str) -> list[StoredEvent]:
        return list(self.client.build_events(stream_id=stream_id))

    def log(self, *, until: int = 0) -> Iterable[StoredEvent]:
        return self.client.build_events(until_position=until)

    def build(self, build_ref: str) -> dict[str, Any] | None:
        return folded_build(self, build_ref)


def folded_build(source: LogSource, build_ref: str) -> dict[str, Any] | None:
    """The builds projection's row for ``build_ref``, folded from the build's own events and its
    history entry's (pins, deletion), merged back into log order (None when absent or deleted).
    """
    own = source.stream(f"build-{build_ref}")
    history = source.stream(f"history-{build_ref}")
    return fold_build(heapq.merge(own, history, key=lambda s: s.position), build_ref)


def log_source(ctx: click.Context) -> LogSource:
    """The daemon's log when a daemon is to be used, else the state's."""
    client = connect_from(ctx)
    if client is not None:
        return DaemonLog(client)
    return LocalLog(open_from(ctx))
