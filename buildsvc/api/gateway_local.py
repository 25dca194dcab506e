"""A client-side frontend against the embedded engine: the gateway in this process, no daemon.

``buildsvc build --client-side`` with no daemon answering runs the frontend here as it would against
a daemon: :func:`run_local_build` opens the same :class:`~buildsvc.daemon.gateway.GatewayJob` the
daemon's LLBBridge servicer serves, and :class:`LocalGateway` calls it directly instead of over gRPC.
A frontend written against :class:`~buildsvc.api.gateway_client.Gateway` cannot tell the two apart:
the same solves, refs, reads, errors and events (the job's stream, a build ``<job>-<n>`` per solve,
every ref released with the job's final event).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence

from buildsvc.api.gateway_client import (
    BuildOutcome,
    FileStat,
    FrontendResult,
    Gateway,
    Pong,
    Ref,
    as_result,
)
from buildsvc.api.model import worker_record
from buildsvc.contexts import ReceivedContexts
from buildsvc.daemon.cache_exports import CacheOptions, import_caches, watch_cache_exports
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.gateway import CAPABILITIES, GatewayJob, GatewayResult
from buildsvc.solver.definition import Definition

__all__ = ["LocalGateway", "run_local_build"]


def _ref_id(ref: Ref | str | None) -> str:
    if ref is None:
        return ""
    return ref if isinstance(ref, str) else ref.id


class LocalGateway(Gateway):
    """A gateway job of the embedded engine, called directly."""

    def __init__(self, job: GatewayJob) -> None:
        self.job = job
        self.build_ref = job.build_ref
        self.returned = False

    def solve(
        self,
        definition: Definition | None = None,
        *,
        frontend: str = "",
        options: Mapping[str, str] | None = None,
    ) -> Ref:
        """Solve on the embedded engine; a ref held for the job."""
        ref_id, metadata = self.job.solve(
            # The JSON form, as over the wire: the job checks it the same way either way.
            definition_json=definition.to_json(indent=None).encode() if definition is not None else b"",
            frontend=frontend,
            frontend_attrs=options,
        )
        return Ref(ref_id, metadata)

    def resolve_image_config(self, ref: str, platform: str = "") -> tuple[str, bytes]:
        """A base image's digest and config blob, through the engine's registry client."""
        return self.job.resolve_image_config(ref, platform)

    def read_file(self, ref: Ref | str | None, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a file in ``ref``."""
        return self.job.read_file(_ref_id(ref), path, offset=offset, length=length)

    def read_dir(self, ref: Ref | str | None, path: str = "/", *, include: str = "") -> list[FileStat]:
        """A directory's entries in ``ref``."""
        return self.job.read_dir(_ref_id(ref), path, include_pattern=include)

    def stat_file(self, ref: Ref | str | None, path: str) -> FileStat:
        """A file's metadata in ``ref``."""
        return self.job.stat_file(_ref_id(ref), path)

    def inputs(self) -> dict[str, Definition]:
        """The build's frontend inputs."""
        return {name: Definition.from_json(data) for name, data in self.job.inputs.items()}

    def ping(self) -> Pong:
        """The gateway's capabilities and the engine's workers."""
        return Pong(
            capabilities=CAPABILITIES, workers=tuple(worker_record(w) for w in self.job.engine.workers)
        )

    def warn(self, message: str, *, level: int = 2, detail: Sequence[str] = (), url: str = "") -> None:
        """Record a warning with the build."""
        self.job.warn(message, level=level, detail=detail, url=url)

    def return_(self, result: FrontendResult | None = None, *, error: str | None = None) -> None:
        """The job's one Return."""
        given = (
            GatewayResult(ref_id=_ref_id(result.ref), metadata=dict(result.metadata))
            if result is not None
            else None
        )
        self.job.return_(given, error)
        self.returned = True


def run_local_build(
    engine: Engine,
    fn: Callable[[Gateway], object],
    *,
    build_ref: str | None = None,
    outputs: Sequence[Mapping[str, str]] = (),
    contexts: ReceivedContexts | None = None,
    frontend_attrs: Mapping[str, str] | None = None,
    actor: str = "",
    frontend_inputs: Mapping[str, Definition] | None = None,
    cache: CacheOptions | None = None,
) -> BuildOutcome:
    """Open a gateway job on ``engine``, run ``fn(gateway)``, Return its value and export the result.

    As with a daemon: an error ``fn`` raises is returned (the job fails) and raised here; an
    interrupt cancels the job. Either way the job's refs are released with its final event.
    """
    ref = build_ref or uuid.uuid4().hex[:25]
    cancel = threading.Event()
    job = GatewayJob(
        engine,
        ref,
        cancel=cancel,
        contexts=contexts,
        inputs={name: d.to_json(indent=None).encode() for name, d in (frontend_inputs or {}).items()},
        actor=actor,
        frontend_attrs=frontend_attrs,
        cache_exports=cache.exports if cache is not None else (),
    )
    job.start(outputs)
    if cache is not None:
        if cache.exports:  # the layers of the frontend's solves are made as their steps commit
            watch_cache_exports(engine)
        import_caches(
            engine, ref, cache.imports, actor=actor
        )  # before the frontend's solves, as a daemon does
    gateway = LocalGateway(job)
    try:
        value = fn(gateway)
        if not gateway.returned:
            gateway.return_(as_result(value))
    except BaseException as e:
        if not gateway.returned and isinstance(e, Exception):
            try:
                gateway.return_(error=str(e) or type(e).__name__)
            except Exception:  # the job ended meanwhile; make sure it is over
                cancel.set()
        elif not gateway.returned:
            cancel.set()  # an interrupt: cancelled, as a daemon's job is when its client goes away
        with contextlib.suppress(Exception):  # the end is recorded; fn's error is the one to raise
            job.finish(outputs)
        raise
    return BuildOutcome(build_ref=ref, exporter_response=job.finish(outputs), value=value)
