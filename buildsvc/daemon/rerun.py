"""``buildsvc build --rerun REF [--from-failure]``: a recorded build run again, from its events.

Everything comes from the log, never from the client's disk: the definition as it was solved (a
Dockerfile build's frontend is not run again, so the same base image digests are used), its
frontend options and image config, its exporters (unless new ones are given) and cache options,
and its local dirs by the content-addressed manifests the daemon received
(``LocalContextReceived``), made again from the daemon's context store. The rerun is a build of
its own, whose ``SolveRequested`` records ``rerun_of``. A build whose contexts a prune removed since
cannot be run again: the refusal says when and by whom (``LocalContextsPruned``).

With ``--from-failure`` the build must have failed at a vertex: every vertex that completed
before the failure is taken from the record (its recorded outputs, verified on disk; a result that
is gone is recorded ``VertexResultMissing`` and runs again), so the run starts at the failed step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from buildsvc.contexts.store import ContextStore
from buildsvc.daemon.context_prune import CONTEXTS_STREAM
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.store import EventStore
from buildsvc.solver.definition import Definition
from buildsvc.solver.ops import Edge, ExecOp, OpMetadata, Vertex
from buildsvc.solver.resume import CompletedVertex, recorded_results

__all__ = ["Rerun", "debug_definition", "plan_rerun"]

_GATEWAY_FRONTEND = "gateway.v0"  # see buildsvc.daemon.gateway.JOB_FRONTEND


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerun:
    """What the daemon solves for a rerun, from the record, and what to reuse."""

    rerun_of: str
    definition_json: bytes
    frontend: str = ""
    """The recorded frontend (recorded again; not run again: its definition is the one above)."""
    frontend_attrs: Mapping[str, str] = field(default_factory=dict)
    exporters: tuple[Mapping[str, str], ...] = ()
    cache_exports: tuple[Mapping[str, str], ...] = ()
    cache_imports: tuple[Mapping[str, str], ...] = ()
    local_contexts: Mapping[str, str] = field(default_factory=dict)
    """Local dir name -> manifest digest in the daemon's context store."""
    image_config: dict[str, Any] | None = None
    reuse: Mapping[str, CompletedVertex] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    """Recorded with the rerun's SolveRequested (``BuildDebugged`` for a debug build)."""

    def solve_options(
        self,
        exporters: Sequence[Mapping[str, str]],
        cache_exports: Sequence[Mapping[str, str]],
        cache_imports: Sequence[Mapping[str, str]],
    ) -> dict[str, Any]:
        """The Solve's options to replace (the exporters and cache options given win)."""
        return {
            "definition_json": self.definition_json,
            "frontend": "",
            "frontend_attrs": dict(self.frontend_attrs),
            "exporters": tuple(exporters) or self.exporters,
            "local_contexts": dict(self.local_contexts),
            "cache_exports": tuple(cache_exports) or self.cache_exports,
            "cache_imports": tuple(cache_imports) or self.cache_imports,
        }


def plan_rerun(
    store: EventStore,
    ref: str,
    *,
    from_failure: bool = False,
    inputs_given: bool = False,
    debug_command: Sequence[str] = (),
    debug_ref: str = "",
    contexts: ContextStore | None = None,
) -> Rerun:
    """The rerun of build ``ref`` from its events, or InvalidInput/NotFound naming why not.

    ``inputs_given``: the request also carried a definition, frontend or local dirs (refused).
    ``contexts``: the context store its dirs are made from, checked to still hold their manifests.
    ``debug_command`` (``history debug``): the build ``debug_ref`` runs it in place of the failed
    step, on that step's inputs from the record, and stops there (no exports).
    """
    if debug_command:
        from_failure = True
    if inputs_given:
        raise InvalidInput("--rerun takes its definition and local dirs from the record: give neither")
    stored = store.read_stream(f"build-{ref}")
    events = [s.decode() for s in stored if s.type != ev.VertexLogChunk.type_name]
    requested = next((e for e in events if isinstance(e, ev.SolveRequested)), None)
    if requested is None:
        raise NotFound(f"--rerun {ref}: no build {ref!r} in the log")
    if requested.frontend == _GATEWAY_FRONTEND or requested.definition is None:
        raise InvalidInput(
            f"--rerun {ref}: the build was a gateway job, whose frontend ran in its client; "
            "run that client again"
        )
    manifests = {e.name: e.manifest_digest for e in events if isinstance(e, ev.LocalContextReceived)}
    for name, recorded in requested.local_dirs.items():
        if name not in manifests and recorded.startswith("sha256:"):
            manifests[name] = recorded
    missing = sorted(set(requested.local_dirs) - set(manifests))
    if missing:
        raise InvalidInput(
            f"--rerun {ref}: local dir {missing[0]!r} was not kept content-addressed by this daemon "
            "(recorded before contexts were), so its content is not known"
        )
    if contexts is not None:
        _check_kept(store, contexts, ref, manifests)
    reuse: dict[str, CompletedVertex] = {}
    definition_json = json.dumps(requested.definition, sort_keys=True).encode()
    debugged: list[Event] = []
    if from_failure:
        what = "history debug" if debug_command else "--from-failure"
        failed = next((e for e in events if isinstance(e, ev.SolveFailed)), None)
        if failed is None or not failed.vertex:
            state = "did not fail" if failed is None else "did not fail at a vertex"
            raise InvalidInput(f"{what}: build {ref} {state}; use --rerun alone")
        reuse = {v: c for v, c in recorded_results(stored).items() if v != failed.vertex}
        if debug_command:
            definition = debug_definition(Definition.from_json(definition_json), failed.vertex, debug_command)
            definition_json = definition.to_json(indent=None).encode()
            debugged.append(
                ev.BuildDebugged(
                    build_ref=debug_ref, debugged=ref, vertex=failed.vertex, command=tuple(debug_command)
                )
            )
    return Rerun(
        rerun_of=ref,
        definition_json=definition_json,
        frontend=requested.frontend,
        frontend_attrs=dict(requested.frontend_attrs),
        exporters=() if debug_command else tuple(requested.exporters),
        cache_exports=() if debug_command else tuple(requested.cache_exports),
        cache_imports=tuple(requested.cache_imports),
        local_contexts=manifests,
        image_config=requested.image_config if isinstance(requested.image_config, dict) else None,
        reuse=reuse,
        events=tuple(debugged),
    )


def _check_kept(store: EventStore, contexts: ContextStore, ref: str, manifests: Mapping[str, str]) -> None:
    """NotFound when ``contexts`` no longer holds a manifest of ``manifests``, naming the prune."""
    gone = [(name, digest) for name, digest in sorted(manifests.items()) if not contexts.has_manifest(digest)]
    if not gone:
        return
    name, digest = gone[0]
    raise NotFound(
        f"--rerun {ref}: the context of local dir {name!r} ({digest}) {_why_gone(store, digest)}; "
        "build again from the directory instead"
    )


def _why_gone(store: EventStore, digest: str) -> str:
    """When and by whom ``digest`` was pruned, from the last ``LocalContextsPruned`` naming it."""
    for stored in reversed(store.read_stream(CONTEXTS_STREAM)):
        pruned = stored.decode()
        if isinstance(pruned, ev.LocalContextsPruned) and digest in pruned.manifests:
            by = f" by {stored.actor}" if stored.actor else ""
            return f"was pruned from the context store at {stored.recorded_at:%Y-%m-%d %H:%M:%S} UTC{by}"
    return "is no longer in the context store"


def debug_definition(definition: Definition, vertex: str, command: Sequence[str]) -> Definition:
    """``definition`` cut at ``vertex`` (an exec), whose process is ``command`` instead, never cached.

    Its inputs and mounts are the step's own, so the command sees what the step saw; what it
    changes lands in a new snapshot on top of them, never in a recorded one.
    """
    step = definition.vertices.get(vertex)
    if step is None or not isinstance(step.op, ExecOp):
        kind = "missing from its definition" if step is None else f"a {step.op.kind} step"
        raise InvalidInput(
            f"history debug: the failed step {vertex} is {kind}; only a RUN (exec) step can be debugged"
        )
    root = next((m for m in step.op.mounts if m.dest == "/"), None)
    op = replace(step.op, meta=replace(step.op.meta, args=tuple(command)))
    debug = Vertex(op=op, inputs=step.inputs)
    old = definition.metadata.get(vertex) or OpMetadata()
    name = definition.name_of(vertex) or vertex
    metadata = {
        **definition.metadata,
        debug.digest: replace(
            old, ignore_cache=True, description={**old.description, "llb.customname": f"debug {name}"}
        ),
    }
    output = root.output if root is not None and root.output is not None else 0
    return Definition(
        vertices={**definition.vertices, debug.digest: debug},
        output=Edge(digest=debug.digest, index=output),
        metadata=metadata,
        source_files=definition.source_files,
        locations=definition.locations,
    )
