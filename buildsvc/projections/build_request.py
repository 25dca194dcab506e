"""What a build was asked to do, from its own stream: the request, its inputs and source locations.

Pure functions of a build's events (``build-<ref>``), used by ``history inspect`` and ``history
provenance`` beside the ``builds`` projection's rows. The recorded definition carries each
vertex's source locations (``locations`` -> ``source_files``), so an error points at its
Dockerfile line years after the build, without the Dockerfile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent

__all__ = ["BuildInput", "BuildRequest", "build_request", "source_locations"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildInput:
    """A source vertex of the build (image, local context, http, git) and the digest it resolved to."""

    vertex: str
    identifier: str
    attrs: dict[str, str]
    digest: str
    """The content-based cache key the solver gave the source once resolved ("" until it ran)."""
    snapshot_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRequest:
    """The SolveRequested of a build and what its later events add about its inputs."""

    build_ref: str
    actor: str
    requested_at: datetime
    frontend: str
    frontend_attrs: dict[str, str]
    definition: Any
    definition_digest: str
    local_dirs: dict[str, str]
    exporters: list[dict[str, str]]
    cache_exports: list[dict[str, str]]
    cache_imports: list[dict[str, str]]
    inputs: list[BuildInput] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)
    """Vertex digest -> ``FILE:LINE[-LINE]`` where it comes from in a source file."""


def source_locations(definition: Any) -> dict[str, str]:
    """``FILE:LINE`` (or ``FILE:FIRST-LAST``) of each vertex that has a recorded source location."""
    if not isinstance(definition, Mapping):
        return {}
    files = [f.get("filename", "") for f in definition.get("source_files") or () if isinstance(f, Mapping)]
    found: dict[str, str] = {}
    for entry in definition.get("vertices") or ():
        if not isinstance(entry, Mapping) or not entry.get("locations"):
            continue
        first = entry["locations"][0]
        file_index = first.get("file", 0)
        name = files[file_index] if 0 <= file_index < len(files) else f"file{file_index}"
        ranges = first.get("ranges") or ()
        if not ranges:
            found[entry["id"]] = name
            continue
        start, end = ranges[0].get("start_line", 0), ranges[-1].get("end_line", 0)
        found[entry["id"]] = f"{name}:{start}" if end in (0, start) else f"{name}:{start}-{end}"
    return found


def _sources(definition: Any) -> dict[str, tuple[str, dict[str, str]]]:
    if not isinstance(definition, Mapping):
        return {}
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for entry in definition.get("vertices") or ():
        op = entry.get("op") if isinstance(entry, Mapping) else None
        source = op.get("source") if isinstance(op, Mapping) else None
        if isinstance(source, Mapping):
            attrs = source.get("attrs") or {}
            out[entry["id"]] = (str(source.get("identifier", "")), {str(k): str(v) for k, v in attrs.items()})
    return out


def build_request(events: Sequence[StoredEvent]) -> BuildRequest | None:
    """The request of the build whose stream is ``events`` (None when it has no SolveRequested)."""
    request: BuildRequest | None = None
    resolved: dict[str, tuple[str, str]] = {}
    for stored in events:
        if stored.type == ev.SolveRequested.type_name and request is None:
            e = stored.decode()
            assert isinstance(e, ev.SolveRequested)
            request = BuildRequest(
                build_ref=e.build_ref,
                actor=stored.actor,
                requested_at=stored.recorded_at,
                frontend=e.frontend,
                frontend_attrs=dict(e.frontend_attrs),
                definition=e.definition,
                definition_digest=e.definition_digest,
                local_dirs=dict(e.local_dirs),
                exporters=[dict(x) for x in e.exporters],
                cache_exports=[dict(x) for x in e.cache_exports],
                cache_imports=[dict(x) for x in e.cache_imports],
                locations=source_locations(e.definition),
            )
        elif stored.type in (ev.VertexCompleted.type_name, ev.VertexCached.type_name):
            done = stored.decode()
            assert isinstance(done, ev.VertexCompleted | ev.VertexCached)
            resolved[done.vertex] = (done.cache_key, done.snapshot_id)
    if request is None:
        return None
    for vertex, (identifier, attrs) in _sources(request.definition).items():
        digest, snapshot = resolved.get(vertex, ("", ""))
        request.inputs.append(
            BuildInput(vertex=vertex, identifier=identifier, attrs=attrs, digest=digest, snapshot_id=snapshot)
        )
    return request
