"""The build history: listing it (``history ls``, ``ListBuilds``), pinning and deleting an entry
(``UpdateBuildHistory``, ``buildsvc history pin|rm``).

Both are events in ``history-<ref>`` (``BuildHistoryPinned``, ``BuildHistoryDeleted``) that the builds
projection folds; the build's own events stay in the log. Whether the build exists, has ended or was
deleted already is read from the log itself, so the answer never waits for the projection.
"""

from __future__ import annotations

from typing import Any

from buildsvc.daemon.state import State
from buildsvc.errors import Conflict, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.store import EventStore
from buildsvc.projections.builds import list_builds

__all__ = ["recent_builds", "update_build_history"]

_FINAL = frozenset({ev.SolveCompleted.type_name, ev.SolveFailed.type_name, ev.SolveCancelled.type_name})


def recent_builds(state: State, *, limit: int) -> list[dict[str, Any]]:
    """The builds projection's rows, newest first, caught up with the log first."""
    state.runner.run_once()
    with state.db.read() as conn:
        return list_builds(conn, limit=limit)


def update_build_history(
    store: EventStore,
    build_ref: str,
    *,
    pinned: bool | None = None,
    delete: bool = False,
    actor: str = "",
) -> None:
    """Pin (``pinned=True``), unpin (``False``) or ``delete`` the history entry of ``build_ref``.

    NotFound when the log has no such build or its entry was deleted; Conflict when deleting a build
    that has not ended (cancel it first); InvalidInput when asked for neither or both.
    """
    if not build_ref:
        raise InvalidInput("a build ref is needed")
    if delete == (pinned is not None):
        raise InvalidInput("update the build history with either a pin or a delete")
    build = store.read_stream(f"build-{build_ref}")
    if not build:
        raise NotFound(f"no build {build_ref!r} in the history")
    history = store.read_stream(f"history-{build_ref}")
    if any(s.type == ev.BuildHistoryDeleted.type_name for s in history):
        raise NotFound(f"the history entry of build {build_ref!r} was deleted")
    event: Event
    if delete:
        if not any(s.type in _FINAL for s in build):
            raise Conflict(f"build {build_ref!r} has not ended: cancel it before deleting its history")
        event = ev.BuildHistoryDeleted(build_ref=build_ref, reason="deleted by request")
    else:
        assert pinned is not None
        event = ev.BuildHistoryPinned(build_ref=build_ref, pinned=pinned)
    # The expected version makes a concurrent delete and pin of the same entry fail instead of racing.
    store.append(f"history-{build_ref}", [event], expected_version=len(history), actor=actor)
