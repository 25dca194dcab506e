"""A build's progress as the API model gives it: :class:`StatusUpdate` and the typed updates in it.

Part of :mod:`buildsvc.api.model` (which names them all), kept apart so a quiet build's client does
not make these classes at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from buildsvc.api.model import FINAL_EVENT_TYPES

__all__ = ["BuildUpdate", "StatusUpdate", "VertexLog", "VertexUpdate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexUpdate:
    """A vertex changed state: ``started``, ``cached``, ``completed``, ``failed`` or ``interrupted``."""

    digest: str
    state: str
    name: str = ""
    worker: str = ""
    error: str = ""
    exit_code: int | None = None
    duration_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexLog:
    """A piece of a vertex's output."""

    vertex: str
    data: bytes
    stream: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildUpdate:
    """The build changed state: ``requested``, ``running``, ``completed``, ``failed``, ``cancelled``."""

    status: str
    error: str = ""
    vertex: str = ""
    exit_code: int | None = None
    source_location: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusUpdate:
    """One event of a build, with the typed update progress displays use (if it has one)."""

    position: int
    time: datetime
    type: str
    payload_json: str
    vertex: VertexUpdate | None = None
    log: VertexLog | None = None
    build: BuildUpdate | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The event's payload as a JSON object."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value

    @property
    def final(self) -> bool:
        """Whether this update ends the build."""
        return self.type in FINAL_EVENT_TYPES
