"""A build's events as the status updates progress displays read (the Status stream's content).

Apart from :mod:`buildsvc.api.model` because it needs the event catalog, which a client talking to a
daemon never loads: it receives these updates already made.
"""

from __future__ import annotations

import json

from buildsvc.api.model import BuildUpdate, StatusUpdate, VertexLog, VertexUpdate
from buildsvc.events import catalog as ev
from buildsvc.events.codec import encode_payload
from buildsvc.events.envelope import StoredEvent

__all__ = ["status_update"]


def _update_of(event: object) -> VertexUpdate | VertexLog | BuildUpdate | None:
    match event:
        case ev.VertexStarted(vertex=v, name=name, worker=worker):
            return VertexUpdate(digest=v, state="started", name=name, worker=worker)
        case ev.VertexCached(vertex=v, name=name):
            return VertexUpdate(digest=v, state="cached", name=name)
        case ev.VertexCompleted(vertex=v, worker=worker, duration_ms=ms, exit_code=code):
            return VertexUpdate(digest=v, state="completed", worker=worker, duration_ms=ms, exit_code=code)
        case ev.VertexFailed(vertex=v, error=error, worker=worker, duration_ms=ms, exit_code=code):
            return VertexUpdate(
                digest=v, state="failed", error=error, worker=worker, duration_ms=ms, exit_code=code
            )
        case ev.VertexInterrupted(vertex=v, reason=reason):
            return VertexUpdate(digest=v, state="interrupted", error=reason)
        case ev.VertexLogChunk(vertex=v, data=data, stream=stream):
            return VertexLog(vertex=v, data=data, stream=stream)
        case ev.SolveRequested():
            return BuildUpdate(status="requested")
        case ev.SolveStarted():
            return BuildUpdate(status="running")
        case ev.SolveCompleted():
            return BuildUpdate(status="completed")
        case ev.SolveFailed(error=error, vertex=vertex, exit_code=code, source_location=where):
            return BuildUpdate(
                status="failed", error=error, vertex=vertex or "", exit_code=code, source_location=where
            )
        case ev.SolveCancelled(reason=reason):
            return BuildUpdate(status="cancelled", error=reason)
    return None


def status_update(stored: StoredEvent) -> StatusUpdate:
    """The update a build's event makes (every event makes one; rawjson progress prints them all)."""
    event = stored.decode()
    update = _update_of(event)
    return StatusUpdate(
        position=stored.position,
        time=stored.recorded_at,
        type=stored.type,
        payload_json=json.dumps(encode_payload(event), sort_keys=True),
        vertex=update if isinstance(update, VertexUpdate) else None,
        log=update if isinstance(update, VertexLog) else None,
        build=update if isinstance(update, BuildUpdate) else None,
    )
