"""An in-toto statement with a SLSA provenance v1 predicate, built from a build's events alone.

The log has everything SLSA asks for: the request (frontend, options, the definition itself),
the resolved inputs with the digests the solver keyed them by, the daemon that ran the build (its
``DaemonStarted`` names host and version) and the build's start and end times. The subject is what
the build produced: the image digest when an image was exported, and the output vertex's
content-based cache key (the digest of the result tree) always.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent, format_time
from buildsvc.projections.build_request import build_request

__all__ = ["BUILD_TYPE", "PREDICATE_TYPE", "STATEMENT_TYPE", "provenance_statement"]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/buildsvc/buildsvc/build/v1"


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value} if value else {}


def provenance_statement(
    build_events: Sequence[StoredEvent], daemon_events: Sequence[StoredEvent] = ()
) -> dict[str, Any]:
    """The statement for the build whose stream is ``build_events``; ``daemon_events`` is the stream
    of the daemon that ran it (for the builder's identity). ValueError when the build has no request.
    """
    request = build_request(build_events)
    if request is None:
        raise ValueError("the build has no SolveRequested event")
    started = finished = None
    daemon_id = ""
    status = "running"
    output_key = ""
    response: dict[str, str] = {}
    keys: dict[str, str] = {}
    for stored in build_events:
        match stored.decode():
            case ev.SolveStarted(daemon_id=daemon):
                started, daemon_id = stored.recorded_at, daemon
            case ev.VertexCompleted(vertex=v, cache_key=key) | ev.VertexCached(vertex=v, cache_key=key):
                keys[v] = key
            case ev.SolveCompleted(exporter_response=exported):
                finished, status, response = stored.recorded_at, "completed", dict(exported)
            case ev.SolveFailed() | ev.SolveCancelled():
                finished, status = stored.recorded_at, stored.type.removeprefix("Solve").lower()
            case _:
                pass
    output = request.definition.get("output") if isinstance(request.definition, dict) else None
    if isinstance(output, dict):
        output_key = keys.get(str(output.get("vertex")), "")
    host = version = ""
    for stored in daemon_events:
        event = stored.decode()
        if isinstance(event, ev.DaemonStarted):
            host, version, daemon_id = event.hostname, event.version, daemon_id or event.daemon_id
    definition_bytes = json.dumps(request.definition, sort_keys=True, separators=(",", ":")).encode()
    subject = []
    image = response.get("containerimage.digest", "")
    if image:
        subject.append({"name": response.get("image.name", request.build_ref), "digest": _digest_set(image)})
    if output_key:
        subject.append({"name": f"buildsvc-result/{request.build_ref}", "digest": _digest_set(output_key)})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "frontend": request.frontend,
                    "frontendAttrs": request.frontend_attrs,
                    "definition": request.definition,
                    "localDirs": request.local_dirs,
                    "exporters": request.exporters,
                },
                "internalParameters": {"requestedBy": request.actor},
                "resolvedDependencies": [
                    {
                        "uri": item.identifier,
                        "digest": _digest_set(item.digest),
                        "annotations": {"vertex": item.vertex, **item.attrs},
                    }
                    for item in request.inputs
                ],
            },
            "runDetails": {
                "builder": {
                    "id": f"buildsvc://{host or 'unknown-host'}/{daemon_id or 'embedded'}",
                    "version": {"buildsvc": version} if version else {},
                },
                "metadata": {
                    "invocationId": request.build_ref,
                    "startedOn": format_time(started or request.requested_at),
                    **({"finishedOn": format_time(finished)} if finished is not None else {}),
                },
                "byproducts": [
                    {
                        "name": "definition.json",
                        "digest": {"sha256": hashlib.sha256(definition_bytes).hexdigest()},
                        "mediaType": "application/json",
                        "annotations": {"status": status, "definitionDigest": request.definition_digest},
                    }
                ],
            },
        },
    }
