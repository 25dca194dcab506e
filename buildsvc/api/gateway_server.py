"""The LLBBridge servicer: a client-side frontend's calls, routed to its gateway job.

Every call names its job by the build ref in the gRPC metadata key ``buildsvc-buildid`` (BuildKit
sends ``buildkit-buildid``). A call without it is refused (InvalidArgument); a call for a job that is
not running waits up to the registry's wait (3 s) for it to register, since the client opens the job
with a Control Solve and may call here before that request is handled, then fails with NotFound
"no such job". Protobuf stays here; the jobs (:mod:`buildsvc.daemon.gateway`) speak Python.
"""

from __future__ import annotations

import grpc

from buildsvc.api.errors import abort_with
from buildsvc.api.gateway_client import BUILD_ID_KEY
from buildsvc.api.gen import gateway_pb2 as pb
from buildsvc.api.gen import gateway_pb2_grpc as pb_grpc
from buildsvc.api.model import worker_record
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.gateway import CAPABILITIES, FileStat, GatewayJob, GatewayJobs, GatewayResult
from buildsvc.errors import InvalidInput

__all__ = ["BUILD_ID_KEY", "GatewayServicer"]


def _stat_to_pb(s: FileStat) -> pb.Stat:
    return pb.Stat(
        path=s.path,
        mode=s.mode,
        uid=s.uid,
        gid=s.gid,
        size=s.size,
        mod_time=s.mod_time_ns,
        linkname=s.linkname,
    )


class GatewayServicer(pb_grpc.LLBBridgeServicer):
    """LLBBridge over the daemon's gateway jobs."""

    def __init__(self, engine: Engine, jobs: GatewayJobs) -> None:
        self.engine = engine
        self.jobs = jobs

    def _job(self, context: grpc.ServicerContext) -> GatewayJob:
        build_id = next((v for k, v in context.invocation_metadata() if k == BUILD_ID_KEY), "")
        if not isinstance(build_id, str) or not build_id:
            raise InvalidInput(
                f"no build id: a gateway call names its job in the gRPC metadata key {BUILD_ID_KEY!r}"
            )
        return self.jobs.get(build_id)

    def Solve(self, request: pb.SolveRequest, context: grpc.ServicerContext) -> pb.SolveResponse:
        """Solve a definition or run a frontend; the result is a ref held for the job."""
        try:
            ref_id, metadata = self._job(context).solve(
                definition_json=request.definition,
                frontend=request.frontend,
                frontend_attrs=dict(request.frontend_opt),
            )
        except BaseException as e:
            abort_with(context, e)
        return pb.SolveResponse(ref=ref_id, metadata=metadata)

    def ResolveImageConfig(
        self, request: pb.ResolveImageConfigRequest, context: grpc.ServicerContext
    ) -> pb.ResolveImageConfigResponse:
        """A base image's digest and config, through the daemon's registry client."""
        try:
            digest, config = self._job(context).resolve_image_config(request.ref, request.platform)
        except BaseException as e:
            abort_with(context, e)
        return pb.ResolveImageConfigResponse(digest=digest, config=config)

    def ReadFile(self, request: pb.ReadFileRequest, context: grpc.ServicerContext) -> pb.ReadFileResponse:
        """Bytes of a file in one of the job's refs."""
        try:
            data = self._job(context).read_file(
                request.ref,
                request.file_path,
                offset=request.range.offset if request.HasField("range") else 0,
                length=request.range.length if request.HasField("range") else 0,
            )
        except BaseException as e:
            abort_with(context, e)
        return pb.ReadFileResponse(data=data)

    def ReadDir(self, request: pb.ReadDirRequest, context: grpc.ServicerContext) -> pb.ReadDirResponse:
        """A directory's entries in one of the job's refs."""
        try:
            entries = self._job(context).read_dir(
                request.ref, request.dir_path, include_pattern=request.include_pattern
            )
        except BaseException as e:
            abort_with(context, e)
        return pb.ReadDirResponse(entries=[_stat_to_pb(s) for s in entries])

    def StatFile(self, request: pb.StatFileRequest, context: grpc.ServicerContext) -> pb.StatFileResponse:
        """A file's metadata in one of the job's refs."""
        try:
            found = self._job(context).stat_file(request.ref, request.path)
        except BaseException as e:
            abort_with(context, e)
        return pb.StatFileResponse(stat=_stat_to_pb(found))

    def Inputs(self, request: pb.InputsRequest, context: grpc.ServicerContext) -> pb.InputsResponse:
        """The definitions the build was given as frontend inputs."""
        try:
            inputs = self._job(context).inputs
        except BaseException as e:
            abort_with(context, e)
        return pb.InputsResponse(definitions=inputs)

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PongResponse:
        """What this gateway can do, and the daemon's workers."""
        try:
            self._job(context)
        except BaseException as e:
            abort_with(context, e)
        workers = []
        for w in self.engine.workers:
            record = worker_record(w)
            workers.append(
                pb.Worker(
                    name=record.name,
                    executor=record.executor,
                    snapshotter=record.snapshotter,
                    labels=dict(record.labels),
                    platforms=list(record.platforms),
                )
            )
        return pb.PongResponse(capabilities=list(CAPABILITIES), workers=workers)

    def Warn(self, request: pb.WarnRequest, context: grpc.ServicerContext) -> pb.WarnResponse:
        """Record a warning with the build."""
        try:
            self._job(context).warn(
                request.message, level=request.level or 2, detail=list(request.detail), url=request.url
            )
        except BaseException as e:
            abort_with(context, e)
        return pb.WarnResponse()

    def Return(self, request: pb.ReturnRequest, context: grpc.ServicerContext) -> pb.ReturnResponse:
        """The frontend's one answer: a result or an error."""
        try:
            result = (
                GatewayResult(ref_id=request.result.ref, metadata=dict(request.result.metadata))
                if request.HasField("result")
                else None
            )
            error = request.error.message if request.HasField("error") else None
            self._job(context).return_(result, error)
        except BaseException as e:
            abort_with(context, e)
        return pb.ReturnResponse()
