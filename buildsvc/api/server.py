"""The Control servicer: Solve, Status, Cancel, ListWorkers, Info, DiskUsage, Prune, the build history.

Solve runs the engine as ``buildsvc build`` does in-process. Status never keeps progress in
memory: it reads the build's stream from the log and then follows it, so a client that connects
late, or again after losing its connection, sees the whole build. :class:`SolveGate` is how a
shutdown stops new solves and lets the running ones finish (see ``buildsvc daemon``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa

from buildsvc import __version__
from buildsvc.api import convert
from buildsvc.api.debug_session import debug_session
from buildsvc.api.errors import DaemonUnavailable, abort_with
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.api.log_reads import read_events, rows_to_json
from buildsvc.api.model import (
    FINAL_EVENT_TYPES,
    BuildRecord,
    DaemonInfo,
    HistoryEvent,
    SolveOptions,
    worker_record,
)
from buildsvc.api.peercred import actor_of
from buildsvc.api.status_wake import StreamWaker
from buildsvc.api.updates import status_update
from buildsvc.contexts import ContextStore, ReceivedContexts, receive_contexts
from buildsvc.daemon.cache_exports import (
    CacheOptions,
    check_cache_options,
    export_caches,
    frontend_attrs_with_imports,
    import_caches,
    inline_cache_for,
    watch_cache_exports,
)
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.exporters import check_exporter, run_exporters
from buildsvc.daemon.frontend import run_frontend
from buildsvc.daemon.gateway import GatewayJob, GatewayJobs
from buildsvc.daemon.history import recent_builds, update_build_history
from buildsvc.daemon.leak_report import report_to_json
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.outputs import CLIENT_OUTPUT, OutputStaging, is_client_output
from buildsvc.daemon.prune import context_store_usage, disk_usage, prune
from buildsvc.daemon.rerun import plan_rerun
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.events.subscription import Subscription
from buildsvc.projections.builds import get_build, list_builds
from buildsvc.projections.schema import projection_checkpoints
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.errors import BuildRefInUse
from buildsvc.solver.worker import Terminal

__all__ = ["ControlServicer", "SolveGate"]

_ENDED = {"completed", "failed", "cancelled"}


class SolveGate:
    """The solves running in this daemon, and whether it takes new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._accepting = True
        self._active: dict[str, threading.Event] = {}

    @contextmanager
    def admit(self, build_ref: str) -> Iterator[threading.Event]:
        """Hold a slot for ``build_ref``; yields the event that cancels it."""
        with self._cond:
            if not self._accepting:
                raise DaemonUnavailable("daemon is shutting down")
            if build_ref in self._active:
                raise BuildRefInUse(build_ref)
            cancel = threading.Event()
            self._active[build_ref] = cancel
        try:
            yield cancel
        finally:
            with self._cond:
                del self._active[build_ref]
                self._cond.notify_all()

    def is_active(self, build_ref: str) -> bool:
        """Whether ``build_ref`` is being solved here."""
        with self._cond:
            return build_ref in self._active

    def stop_accepting(self) -> None:
        """Refuse every Solve from now on."""
        with self._cond:
            self._accepting = False

    def wait_idle(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the running solves to end; returns those still running."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return sorted(self._active)

    def cancel_all(self) -> list[str]:
        """Cancel every running solve (the solver records each as cancelled)."""
        with self._cond:
            for cancel in self._active.values():
                cancel.set()
            return sorted(self._active)


def _exporters(specs: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    checked: list[Mapping[str, str]] = []
    for n, spec in enumerate(specs):
        try:
            check_exporter(spec)
        except InvalidInput as e:
            raise InvalidInput(f"exporter: {e}") from e
        kind, dest = spec["type"], spec.get("dest", "")
        if is_client_output(spec):
            # Staged for the client to download (daemon/outputs.py), numbered by its position.
            if dest:
                raise InvalidInput(f"exporter {kind}: give dest= (daemon host) or client-dest=, not both")
            checked.append({**spec, CLIENT_OUTPUT: str(n)})
            continue
        # The daemon's working directory means nothing to the client: only absolute paths.
        if kind != "image" and not Path(dest).is_absolute():
            raise InvalidInput(
                f"exporter {kind}: dest= must be an absolute path on the daemon host, got {dest!r}"
            )
        checked.append(spec)
    return checked


def _local_dirs(dirs: Mapping[str, Path]) -> dict[str, Path]:
    for name, path in dirs.items():
        if not path.is_absolute() or not path.is_dir():
            raise InvalidInput(f"local {name}: {path} is not a directory on the daemon host (absolute path)")
    return dict(dirs)


class ControlServicer(pb_grpc.ControlServicer):
    """The daemon's Control service over one engine."""

    def __init__(
        self,
        engine: Engine,
        gate: SolveGate,
        *,
        poll_interval: float = 0.05,
        status_wait: float = 10.0,
        wake_fallback: float = 1.0,
    ) -> None:
        self.engine = engine
        self.state = engine.state
        self.gate = gate
        self.poll_interval = poll_interval
        self.wake_fallback = wake_fallback
        """On PostgreSQL, Status is woken by NOTIFY and reads anyway this often (the fallback)."""
        self._waker: StreamWaker | None = None
        self._waker_lock = threading.Lock()
        self.status_wait = status_wait
        """How long Status waits for a build that is neither in the log nor running here."""
        self.peer_nonce: str | None = None
        """Set by ``serve`` when a unix socket's relay tells each call's peer credentials."""
        self.gateway_jobs = GatewayJobs()
        """Builds whose frontend runs in the client, for the LLBBridge servicer (same socket)."""
        self.contexts = ContextStore.under(engine.state.root)
        """Local dirs sent with the Content service (served beside this one, see serve.py)."""
        self.outputs = OutputStaging(engine.state.root, engine.state.store)
        # Any solve here may ask for a cache export: its layers are made as its steps commit.
        watch_cache_exports(engine)
        """Outputs staged for their clients' Content Download (see buildsvc.daemon.outputs)."""

    # --- Solve, Cancel ------------------------------------------------------------------------------

    def Solve(self, request: pb.SolveRequest, context: grpc.ServicerContext) -> pb.SolveResponse:
        """Run a build to its end (exporting on the daemon host)."""
        try:
            return self._solve(self._attributed(convert.solve_from_pb(request), context), context)
        except BaseException as e:
            abort_with(context, e)

    def _attributed(self, options: SolveOptions, context: grpc.ServicerContext) -> SolveOptions:
        """The options with the actor the transport verified (unix peer uid/gid, TLS subject).

        The client's own claim is kept only where the transport proves nothing (plaintext loopback
        TCP), and marked as such.
        """
        verified = actor_of(context, self.peer_nonce)
        return replace(options, actor=verified or f"unverified:{options.actor}")

    def _solve(
        self, options: SolveOptions, context: grpc.ServicerContext, *, terminal: Terminal | None = None
    ) -> pb.SolveResponse:
        exporters = _exporters(options.exporters)
        if options.frontend_inputs and (options.frontend or options.definition_json):
            raise InvalidInput(
                "frontend inputs go to a client-side frontend: "
                "a Solve with neither a definition nor a frontend"
            )
        options = replace(options, build_ref=options.build_ref or uuid.uuid4().hex[:25])
        rerun = None
        if options.rerun_of:  # `build --rerun`: definition, options and contexts from the record
            given = bool(
                options.definition_json or options.frontend or options.local_dirs or options.local_contexts
            )
            rerun = plan_rerun(
                self.state.store,
                options.rerun_of,
                contexts=self.contexts,
                from_failure=options.from_failure,
                inputs_given=given,
                debug_command=options.debug_command,
                debug_ref=options.build_ref,
            )
            options = replace(
                options,
                **rerun.solve_options(options.exporters, options.cache_exports, options.cache_imports),
            )
            exporters = _exporters(options.exporters)
        cache = check_cache_options(
            options.cache_exports,
            options.cache_imports,
            options.frontend_attrs,
            absolute_paths=True,
            outputs=exporters,
        )
        # As BuildKit's daemon: the frontend learns the imports through its cache-imports option.
        options = replace(
            options, frontend_attrs=frontend_attrs_with_imports(options.frontend_attrs, cache.imports)
        )
        # Sent contexts and daemon-host dirs alike become trees made from the context store.
        received = receive_contexts(
            self.contexts,
            options.build_ref,
            sent=options.local_contexts,
            host_dirs=_local_dirs(options.local_dirs),
            frontend=options.frontend,
            frontend_attrs=options.frontend_attrs,
        )
        local_dirs = received.dirs
        if not options.frontend and not options.definition_json:
            return self._gateway_job(options, exporters, received, context, cache)
        image_config: dict[str, Any] | None = rerun.image_config if rerun is not None else None
        if options.frontend:
            made = run_frontend(options.frontend, options.frontend_attrs, local_dirs, self.engine.images)
            definition, image_config = made.definition, made.image_config
        else:
            definition = Definition.from_json(options.definition_json)
        ref = options.build_ref or uuid.uuid4().hex[:25]
        with self.gate.admit(ref) as cancel:
            # A client that goes away takes its build with it, as in BuildKit; after a normal end
            # setting the event changes nothing.
            context.add_callback(cancel.set)

            def export(result: ResultRef | None) -> Mapping[str, str]:
                inline = inline_cache_for(result, definition, cache.exports)
                response = dict(
                    run_exporters(
                        self.engine,
                        result,
                        ref,
                        exporters,
                        image_config=image_config,
                        inline_cache=inline,
                        actor=options.actor,
                    )
                )
                made = export_caches(
                    self.engine,
                    result,
                    ref,
                    definition,
                    cache.exports,
                    exporter_response=response,
                    actor=options.actor,
                )
                return {**response, **made}

            import_caches(self.engine, ref, cache.imports, actor=options.actor)
            result = self.engine.solver.solve(
                SolveRequest(
                    definition=definition,
                    build_ref=ref,
                    local_dirs=local_dirs,
                    actor=options.actor,
                    frontend=rerun.frontend if rerun is not None else options.frontend,
                    frontend_attrs=options.frontend_attrs,
                    exporters=exporters,  # recorded, so a restarted daemon can finish the build
                    cache_exports=options.cache_exports,  # recorded too: a resume runs those left
                    cache_imports=options.cache_imports,
                    image_config=image_config,
                    local_contexts=received.digests,
                    received=(*received.events, *(rerun.events if rerun is not None else ())),
                    rerun_of=options.rerun_of,
                    reuse=rerun.reuse if rerun is not None else {},
                    terminal=terminal,
                ),
                cancel=cancel,
                # Nothing to export: no export step (and no commit of its own before it).
                export=export if exporters or cache.exports else None,
            )
        return pb.SolveResponse(ref=result.build_ref, exporter_response=dict(result.exporter_response))

    def Debug(
        self, request_iterator: Iterator[pb.DebugRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.DebugResponse]:
        """``history debug REF`` on a terminal: a process on a pty in place of REF's failed step."""
        try:
            yield from debug_session(
                request_iterator,
                context,
                solve=lambda options, ctx, terminal: self._solve(options, ctx, terminal=terminal),
                attributed=lambda options: self._attributed(options, context),
            )
        except BaseException as e:
            abort_with(context, e)

    def _gateway_job(
        self,
        options: SolveOptions,
        exporters: Sequence[Mapping[str, str]],
        received: ReceivedContexts,
        context: grpc.ServicerContext,
        cache: CacheOptions,
    ) -> pb.SolveResponse:
        """Neither a definition nor a frontend: the client runs the frontend over LLBBridge (issue 7)."""
        ref = options.build_ref or uuid.uuid4().hex[:25]
        with self.gate.admit(ref) as cancel:
            context.add_callback(cancel.set)  # a client that goes away ends its job, refs released
            job = GatewayJob(
                self.engine,
                ref,
                cancel=cancel,
                contexts=received,  # each of its solves records the same manifests
                inputs=options.frontend_inputs,
                actor=options.actor,
                frontend_attrs=options.frontend_attrs,
                cache_exports=cache.exports,
            )
            import_caches(
                self.engine, ref, cache.imports, actor=options.actor
            )  # the frontend's solves then find them
            job.start(exporters)
            with self.gateway_jobs.registered(job):
                response = job.finish(exporters)
        return pb.SolveResponse(ref=ref, exporter_response=response)

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CancelResponse:
        """Ask a running build to stop."""
        try:
            if not self.engine.solver.cancel(request.ref) and not self.gateway_jobs.cancel(request.ref):
                raise NotFound(f"no build {request.ref!r} is running on this daemon")
        except BaseException as e:
            abort_with(context, e)
        return pb.CancelResponse()

    # --- Status -------------------------------------------------------------------------------------

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> Iterator[pb.StatusResponse]:
        """The build's events from the log, then as they are recorded, until the build ends."""
        try:
            yield from self._status(request.ref, request.after_position, context)
        except BaseException as e:
            abort_with(context, e)

    def _status(
        self, ref: str, after_position: int, context: grpc.ServicerContext
    ) -> Iterator[pb.StatusResponse]:
        if not ref:
            raise InvalidInput("Status needs a build ref")
        stream = f"build-{ref}"
        seen_version = 0
        began = time.monotonic()
        waker = self._stream_waker()
        # Each read of the stream by version is an indexed read of only this build's events, after a
        # wake-up: this daemon's commit of the stream, or on PostgreSQL another process's NOTIFY; else
        # the fallback interval (on SQLite the poll interval: other processes cannot wake us there).
        fallback = self.wake_fallback if self.state.db.is_postgres else self.poll_interval
        while context.is_active():
            batch = self.state.store.read_stream(stream, after_version=seen_version)
            if batch:
                seen_version = batch[-1].stream_version
                updates = [
                    convert.status_to_pb(status_update(s)) for s in batch if s.position > after_position
                ]
                if updates:
                    yield pb.StatusResponse(updates=updates)
                if any(s.type in FINAL_EVENT_TYPES for s in batch):
                    return
            elif (
                seen_version == 0
                and not self.gate.is_active(ref)
                and time.monotonic() - began > self.status_wait
            ):
                raise NotFound(f"no build {ref!r}")
            # Not past the wait for a build that has not appeared yet (the NotFound above).
            waker.wait(stream, seen_version, fallback if seen_version else min(fallback, self.status_wait))

    def _stream_waker(self) -> StreamWaker:
        """The daemon's one Status wake-up (see ``status_wake``), made once."""
        with self._waker_lock:
            if self._waker is None:
                self._waker = StreamWaker(self.state.store, follow=self.state.db.is_postgres)
            return self._waker

    def close(self) -> None:
        """Stop what the servicer runs in the background (the Status follower)."""
        with self._waker_lock:
            if self._waker is not None:
                self._waker.close()
                self._waker = None

    # --- Workers, Info, DiskUsage -------------------------------------------------------------------

    def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.ServicerContext
    ) -> pb.ListWorkersResponse:
        """The workers this daemon enabled."""
        return pb.ListWorkersResponse(
            workers=[convert.worker_to_pb(worker_record(w)) for w in self.engine.workers]
        )

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        """The daemon's version, id, root and database."""
        return convert.info_to_pb(
            DaemonInfo(
                version=__version__,
                daemon_id=self.engine.daemon_id,
                root=str(self.state.root),
                hostname=socket.gethostname(),
                pid=os.getpid(),
                database=self.state.db.safe_url,
            )
        )

    def DiskUsage(self, request: pb.DiskUsageRequest, context: grpc.ServicerContext) -> pb.DiskUsageResponse:
        """The snapshots on disk, from the snapshots projection (kept inside appends, so current), and
        the context store (measured on disk).
        """
        try:
            records = disk_usage(self.engine)
            contexts = context_store_usage(self.state.root)
        except BaseException as e:
            abort_with(context, e)
        return convert.disk_usage_to_pb(records, contexts)

    def Prune(self, request: pb.PruneRequest, context: grpc.ServicerContext) -> Iterator[pb.PruneResponse]:
        """Remove unreferenced cached results and unneeded local contexts; streams each removed
        snapshot, then each one skipped, then what went from the context store (when anything did).
        """
        try:
            # Who asked (unix peer, TLS subject); a plaintext loopback caller proves nothing.
            actor = actor_of(context, self.peer_nonce) or "unverified:"
            report = prune(
                self.engine,
                all=request.all,
                keep_duration=request.keep_duration_seconds or None,
                filters=dict(request.filters),
                actor=actor,
            )
            # Outputs whose client never came for them: any of a build that no longer runs here.
            self.outputs.discard(
                keep=self.gate.is_active, reason="prune: the client never downloaded it", actor=actor
            )
        except BaseException as e:
            abort_with(context, e)
        for removed in report.removed:
            yield convert.prune_result_to_pb(removed)
        for skipped in report.skipped:
            yield convert.prune_result_to_pb(skipped)
        if not report.contexts.empty:
            yield convert.prune_result_to_pb(report.contexts)

    # --- Build history ------------------------------------------------------------------------------

    def UpdateBuildHistory(
        self, request: pb.UpdateBuildHistoryRequest, context: grpc.ServicerContext
    ) -> pb.UpdateBuildHistoryResponse:
        """Pin, unpin or delete a build's history entry (recorded in ``history-<ref>``)."""
        try:
            actor = actor_of(context, self.peer_nonce) or "unverified:"
            if request.delete:
                update_build_history(self.state.store, request.ref, delete=True, actor=actor)
            else:
                update_build_history(self.state.store, request.ref, pinned=request.pinned, actor=actor)
        except BaseException as e:
            abort_with(context, e)
        return pb.UpdateBuildHistoryResponse()

    # --- Reading the log (issue 5): what `history inspect|logs|replay|provenance` and `leaks` ask ----

    def BuildEvents(
        self, request: pb.BuildEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BuildEventsResponse]:
        """The log's events as stored: one stream's, or the whole log between two positions."""
        try:
            yield from read_events(
                self.state.store,
                ref=request.ref,
                stream_id=request.stream_id,
                after=request.after_position,
                until=request.until_position,
            )
        except BaseException as e:
            abort_with(context, e)

    def Leaks(self, request: pb.LeaksRequest, context: grpc.ServicerContext) -> pb.LeaksResponse:
        """The leak report of this daemon's log and root (the projections caught up first)."""
        try:
            self.state.runner.run_once()
            report = scan_leaks(self.state, build_ref=request.ref or None)
            return pb.LeaksResponse(report_json=json.dumps(report_to_json(report)))
        except BaseException as e:
            abort_with(context, e)

    def ListBuilds(
        self, request: pb.ListBuildsRequest, context: grpc.ServicerContext
    ) -> pb.ListBuildsResponse:
        """The builds projection's rows, newest first, caught up with the log first."""
        try:
            return pb.ListBuildsResponse(
                rows_json=rows_to_json(recent_builds(self.state, limit=request.limit or 50))
            )
        except BaseException as e:
            abort_with(context, e)

    def ListenBuildHistory(
        self, request: pb.BuildHistoryRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BuildHistoryEvent]:
        """The builds in the history, then (unless early_exit) each one that starts or ends."""
        try:
            for event in self._history(request, context):
                yield convert.history_event_to_pb(event)
        except BaseException as e:
            abort_with(context, e)

    def _history(
        self, request: pb.BuildHistoryRequest, context: grpc.ServicerContext
    ) -> Iterator[HistoryEvent]:
        # The projection's rows and its checkpoint are read in one snapshot, so following the log
        # from the checkpoint misses nothing and repeats nothing.
        with self.state.db.read() as conn:
            position = conn.execute(
                sa.select(projection_checkpoints.c.position).where(projection_checkpoints.c.name == "builds")
            ).scalar_one_or_none()
            if request.ref:
                one = get_build(conn, request.ref)
                rows = [one] if one is not None else []
            else:
                rows = list_builds(conn, limit=1000)
        for row in reversed(rows):
            record = _record_of_row(row)
            if request.active_only and record.status in _ENDED:
                continue
            yield HistoryEvent(type="complete" if record.status in _ENDED else "started", record=record)
        if request.early_exit:
            return
        follow = Subscription(self.state.store, after=position or 0, poll_interval=0.2)
        context.add_callback(follow.close)
        for stored in follow:
            event = _history_event(stored)
            if event is None or (request.ref and event.record.build_ref != request.ref):
                continue
            if request.active_only and event.type == "complete":
                continue
            yield event


def _record_of_row(row: Mapping[str, Any]) -> BuildRecord:
    return BuildRecord(
        build_ref=row["build_ref"],
        status=row["status"],
        frontend=row["frontend"],
        actor=row["actor"],
        requested_at=row["requested_at"],
        ended_at=row["ended_at"],
        vertices_total=row["vertices_total"],
        vertices_completed=row["vertices_completed"],
        vertices_cached=row["vertices_cached"],
        error=row["error"],
        error_vertex=row["error_vertex"],
        exit_code=row["exit_code"],
        pinned=row["pinned"],
    )


def _history_event(stored: StoredEvent) -> HistoryEvent | None:
    """A build starting or ending, told from its event (the projection may not have it yet)."""
    if stored.type != ev.SolveStarted.type_name and stored.type not in FINAL_EVENT_TYPES:
        return None
    event = stored.decode()
    match event:
        case ev.SolveStarted(build_ref=ref, vertex_count=count):
            record = BuildRecord(
                build_ref=ref,
                status="running",
                actor=stored.actor,
                requested_at=stored.recorded_at,
                vertices_total=count,
            )
            return HistoryEvent(type="started", record=record)
        case ev.SolveCompleted(build_ref=ref):
            record = BuildRecord(
                build_ref=ref, status="completed", actor=stored.actor, ended_at=stored.recorded_at
            )
        case ev.SolveFailed(build_ref=ref, error=error, vertex=vertex, exit_code=code):
            record = BuildRecord(
                build_ref=ref,
                status="failed",
                actor=stored.actor,
                ended_at=stored.recorded_at,
                error=error,
                error_vertex=vertex or "",
                exit_code=code,
            )
        case ev.SolveCancelled(build_ref=ref, reason=reason):
            record = BuildRecord(
                build_ref=ref,
                status="cancelled",
                actor=stored.actor,
                ended_at=stored.recorded_at,
                error=reason,
            )
        case _:
            return None
    return HistoryEvent(type="complete", record=record)
