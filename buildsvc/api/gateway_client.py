"""Client-side frontends: ``client.build(fn)`` runs ``fn(gateway)`` here and its solves on the daemon.

::

    def frontend(gw: Gateway) -> Ref:
        base = gw.solve(llb.local("rootfs").run(["sh", "-c", "echo hi > /out"]).root().marshal())
        text = gw.read_file(base, "/out")
        return gw.solve(...)                  # or FrontendResult(ref, metadata={...})

    outcome = client.build(frontend, outputs=[{"type": "local", "dest": "/tmp/out"}])

As BuildKit's ``client.Build``: a Control Solve with neither a definition nor a frontend opens a job
on the daemon, and the frontend talks to that job over LLBBridge on the same connection, naming it by
the build ref in the metadata key ``buildsvc-buildid``. What ``fn`` returns (a :class:`Ref`, ``None``
for an empty result, or a :class:`FrontendResult` with metadata) is sent with Return and exported like
any build's result; if ``fn`` raises, the error is returned instead and raised here. Refs are valid
for the job only: the daemon releases all of them when it ends.

:class:`Gateway` is the interface a frontend is written against; :class:`GrpcGateway` speaks
LLBBridge to a daemon, and :class:`buildsvc.api.gateway_local.LocalGateway` calls a job of the
embedded engine in this process (``buildsvc build --client-side`` with no daemon), so the same
frontend code runs either way.
"""

from __future__ import annotations

import abc
import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from buildsvc.api.errors import error_from_rpc
from buildsvc.api.gen import gateway_pb2 as pb
from buildsvc.api.gen import gateway_pb2_grpc as pb_grpc
from buildsvc.api.model import SolveOptions, WorkerRecord
from buildsvc.daemon.gateway_types import IMAGE_CONFIG_KEY, FileStat
from buildsvc.frontends.dockerfile import ImageConfigLike, Platform, build_definition
from buildsvc.solver.definition import Definition
from buildsvc.sources.manifests import parse_image_config

if TYPE_CHECKING:
    from buildsvc.api.client import Client

__all__ = [
    "BUILD_ID_KEY",
    "BuildOutcome",
    "FileStat",
    "FrontendResult",
    "Gateway",
    "as_result",
    "GatewayImageResolver",
    "GrpcGateway",
    "Pong",
    "Ref",
    "dockerfile_frontend",
    "run_client_build",
]

BUILD_ID_KEY = "buildsvc-buildid"


@dataclass(frozen=True, slots=True)
class Ref:
    """A result the job holds for the frontend (``id`` empty: an empty filesystem)."""

    id: str
    metadata: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendResult:
    """What a frontend returns when it has metadata to go with its result."""

    ref: Ref | None
    metadata: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """The gateway's capabilities and the daemon's workers."""

    capabilities: tuple[str, ...]
    workers: tuple[WorkerRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOutcome:
    """A finished client-side build: its ref, the exporters' response and what ``fn`` returned."""

    build_ref: str
    exporter_response: Mapping[str, str]
    value: Any = None


def _stat(message: pb.Stat) -> FileStat:
    return FileStat(
        path=message.path,
        mode=message.mode,
        uid=message.uid,
        gid=message.gid,
        size=message.size,
        mod_time_ns=message.mod_time,
        linkname=message.linkname,
    )


def _ref_id(ref: Ref | str | None) -> str:
    if ref is None:
        return ""
    return ref if isinstance(ref, str) else ref.id


class Gateway(abc.ABC):
    """The frontend's side of one job: solves, file reads, warnings, and the one Return.

    Errors are buildsvc's own (``SolveError`` with the failed vertex, its exit code and log tail,
    ``NotFound``, ``InvalidInput``...), the same from a daemon as in this process.
    """

    build_ref: str
    returned: bool
    """Whether the job's one Return was sent."""

    @abc.abstractmethod
    def solve(
        self,
        definition: Definition | None = None,
        *,
        frontend: str = "",
        options: Mapping[str, str] | None = None,
    ) -> Ref:
        """Solve ``definition`` (or run ``frontend`` with ``options``); a ref to its result, held for
        the job (neither: the empty result). ``options`` may take a frontend input as a local dir:
        ``context:DIR=input:NAME``.
        """

    @abc.abstractmethod
    def resolve_image_config(self, ref: str, platform: str = "") -> tuple[str, bytes]:
        """A base image's digest and config blob, as the engine's registry client sees them."""

    @abc.abstractmethod
    def read_file(self, ref: Ref | str | None, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a file in ``ref`` from ``offset`` (``length`` 0: to the end; past it: fewer)."""

    @abc.abstractmethod
    def read_dir(self, ref: Ref | str | None, path: str = "/", *, include: str = "") -> list[FileStat]:
        """The entries of a directory in ``ref`` whose names match ``include`` (a glob; empty: all)."""

    @abc.abstractmethod
    def stat_file(self, ref: Ref | str | None, path: str) -> FileStat:
        """A file's metadata in ``ref`` (a symlink itself, with its ``linkname``)."""

    @abc.abstractmethod
    def inputs(self) -> dict[str, Definition]:
        """The definitions the build was given as frontend inputs."""

    @abc.abstractmethod
    def ping(self) -> Pong:
        """The gateway's capabilities and the engine's workers."""

    @abc.abstractmethod
    def warn(self, message: str, *, level: int = 2, detail: Sequence[str] = (), url: str = "") -> None:
        """Record a warning with the build."""

    @abc.abstractmethod
    def return_(self, result: FrontendResult | None = None, *, error: str | None = None) -> None:
        """Send the job's one Return: a result or an error (``build`` does this with ``fn``'s value)."""


class GrpcGateway(Gateway):
    """A job on a daemon, over LLBBridge (the build ref in the metadata key ``buildsvc-buildid``)."""

    def __init__(self, channel: grpc.Channel, build_ref: str, *, addr: str = "") -> None:
        self.build_ref = build_ref
        self._stub = pb_grpc.LLBBridgeStub(channel)  # type: ignore[no-untyped-call]  # generated
        self._addr = addr
        self._metadata = ((BUILD_ID_KEY, build_ref),)
        self.returned = False

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self._addr) from None

    def solve(
        self,
        definition: Definition | None = None,
        *,
        frontend: str = "",
        options: Mapping[str, str] | None = None,
    ) -> Ref:
        """Solve ``definition`` (or run ``frontend`` with ``options``) on the daemon; a ref to its result."""
        request = pb.SolveRequest(
            definition=definition.to_json(indent=None).encode() if definition is not None else b"",
            frontend=frontend,
            frontend_opt=dict(options or {}),
        )
        response: pb.SolveResponse = self._call("Solve", request)
        return Ref(response.ref, dict(response.metadata))

    def resolve_image_config(self, ref: str, platform: str = "") -> tuple[str, bytes]:
        """A base image's digest and config blob, as the daemon's registry client sees them."""
        response: pb.ResolveImageConfigResponse = self._call(
            "ResolveImageConfig", pb.ResolveImageConfigRequest(ref=ref, platform=platform)
        )
        return response.digest, response.config

    def read_file(self, ref: Ref | str | None, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Bytes of a file in ``ref`` (``length`` 0: to the end)."""
        request = pb.ReadFileRequest(ref=_ref_id(ref), file_path=path)
        if offset or length:
            request.range.CopyFrom(pb.FileRange(offset=offset, length=length))
        response: pb.ReadFileResponse = self._call("ReadFile", request)
        return response.data

    def read_dir(self, ref: Ref | str | None, path: str = "/", *, include: str = "") -> list[FileStat]:
        """The entries of a directory in ``ref`` whose names match ``include`` (a glob; empty: all)."""
        request = pb.ReadDirRequest(ref=_ref_id(ref), dir_path=path, include_pattern=include)
        response: pb.ReadDirResponse = self._call("ReadDir", request)
        return [_stat(s) for s in response.entries]

    def stat_file(self, ref: Ref | str | None, path: str) -> FileStat:
        """A file's metadata in ``ref`` (a symlink itself)."""
        response: pb.StatFileResponse = self._call(
            "StatFile", pb.StatFileRequest(ref=_ref_id(ref), path=path)
        )
        return _stat(response.stat)

    def inputs(self) -> dict[str, Definition]:
        """The definitions the build was given as frontend inputs."""
        response: pb.InputsResponse = self._call("Inputs", pb.InputsRequest())
        return {name: Definition.from_json(data) for name, data in response.definitions.items()}

    def ping(self) -> Pong:
        """The gateway's capabilities and the daemon's workers."""
        response: pb.PongResponse = self._call("Ping", pb.PingRequest())
        return Pong(
            capabilities=tuple(response.capabilities),
            workers=tuple(
                WorkerRecord(
                    name=w.name,
                    executor=w.executor,
                    snapshotter=w.snapshotter,
                    labels=dict(w.labels),
                    platforms=tuple(w.platforms),
                )
                for w in response.workers
            ),
        )

    def warn(self, message: str, *, level: int = 2, detail: Sequence[str] = (), url: str = "") -> None:
        """Record a warning with the build."""
        self._call("Warn", pb.WarnRequest(level=level, message=message, detail=list(detail), url=url))

    def return_(
        self,
        result: FrontendResult | None = None,
        *,
        error: str | None = None,
    ) -> None:
        """Send the job's one Return: a result or an error (``build`` does this with ``fn``'s value)."""
        request = pb.ReturnRequest()
        if result is not None:
            request.result.CopyFrom(pb.Result(ref=_ref_id(result.ref), metadata={**result.metadata}))
        if error is not None:
            request.error.CopyFrom(pb.ReturnError(message=error))
        self._call("Return", request)
        self.returned = True


def as_result(value: object) -> FrontendResult:
    """What a frontend function returned, as the result its Return sends."""
    if isinstance(value, FrontendResult):
        return value
    if value is None or isinstance(value, Ref):
        return FrontendResult(ref=value, metadata=value.metadata if isinstance(value, Ref) else {})
    raise TypeError(f"a frontend returns a Ref, a FrontendResult or None, not {type(value).__name__}")


def run_client_build(
    client: Client,
    fn: Callable[[Gateway], object],
    *,
    build_ref: str | None = None,
    outputs: Sequence[Mapping[str, str]] = (),
    local_dirs: Mapping[str, Path] | None = None,
    frontend_attrs: Mapping[str, str] | None = None,
    actor: str = "",
    local_contexts: Mapping[str, str] | None = None,
    frontend_inputs: Mapping[str, Definition] | None = None,
    cache_exports: Sequence[Mapping[str, str]] = (),
    cache_imports: Sequence[Mapping[str, str]] = (),
) -> BuildOutcome:
    """Open a job on the daemon, run ``fn(gateway)`` here, Return its value; the exporters' response.

    ``frontend_inputs`` are definitions ``fn`` gets from ``gateway.inputs()`` (BuildKit's
    FrontendInputs), and that its frontend solves can use as local dirs (``context:DIR=input:NAME``).
    """
    ref = build_ref or uuid.uuid4().hex[:25]
    options = SolveOptions(
        build_ref=ref,
        definition_json=b"",
        frontend_attrs=dict(frontend_attrs or {}),
        exporters=tuple(dict(o) for o in outputs),
        local_dirs=dict(local_dirs or {}),
        actor=actor,
        local_contexts=dict(local_contexts or {}),
        frontend_inputs={
            name: d.to_json(indent=None).encode() for name, d in (frontend_inputs or {}).items()
        },
        cache_exports=tuple(dict(c) for c in cache_exports),  # run by the job on the returned result
        cache_imports=tuple(dict(c) for c in cache_imports),
    )
    done: dict[str, Any] = {}

    def solve() -> None:
        try:
            done["response"] = client.solve(options)
        except BaseException as e:
            done["error"] = e

    job = threading.Thread(target=solve, name=f"gateway-job-{ref}", daemon=True)
    job.start()
    gateway = GrpcGateway(client.channel, ref, addr=client.addr)
    try:
        value = fn(gateway)
        if not gateway.returned:
            gateway.return_(as_result(value))
    except BaseException as e:
        if not job.is_alive() and "error" in done:
            # The job never opened (bad options): that is the error, not the frontend's NotFound.
            raise done["error"] from None
        if not gateway.returned and job.is_alive():
            try:
                gateway.return_(error=str(e) or type(e).__name__)
            except Exception:  # the frontend's error is the one to show; make sure the job ends
                with contextlib.suppress(Exception):  # it ended meanwhile
                    client.cancel(ref)
        job.join()
        raise
    job.join()
    if "error" in done:
        raise done["error"]
    return BuildOutcome(build_ref=ref, exporter_response=done["response"], value=value)


# --- the Dockerfile frontend, run in the client ----------------------------------------------------


class GatewayImageResolver:
    """Base images resolved by the daemon (its registry client, credentials and insecure-registry
    settings, and its content store, which keeps the config for the pull that follows), so the digest
    the client-side frontend pins is the one the daemon's solver will pull.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def resolve(self, ref: str, platform: Platform) -> tuple[str, ImageConfigLike]:
        """The image's digest and config for ``platform``."""
        digest, blob = self.gateway.resolve_image_config(ref, str(platform))
        return digest, parse_image_config(ref, blob)


def dockerfile_frontend(dockerfile: str, options: Mapping[str, str]) -> Callable[[Gateway], FrontendResult]:
    """``dockerfile.v0`` as a client-side frontend: lowered here, solved on the daemon, and its image
    config returned as ``containerimage.config`` metadata for image exporters (as BuildKit's).
    """

    def frontend(gateway: Gateway) -> FrontendResult:
        made = build_definition(dockerfile, options=options, resolver=GatewayImageResolver(gateway))
        ref = gateway.solve(made.definition)
        config = json.dumps(made.image_config, sort_keys=True).encode()
        return FrontendResult(ref=ref, metadata={IMAGE_CONFIG_KEY: config})

    return frontend
