"""The solver: walks a definition's graph, runs or reuses each vertex, and records all of it.

One :class:`Solver` serves a daemon. Its graph is shared: when two solves reach a vertex with the
same cache key on the same worker at the same time, one runs it and the other waits for that run
and takes its result. Vertices run in parallel (up to ``max_parallel``) as soon as their inputs are
ready; the first failure cancels the rest of the solve.

Refs: each result a solve uses (built, cached or shared) gets a ref held by the solve, and each
result built gets a ref held by its cache record. When the solve ends — completed, failed or
cancelled — it releases every ref it holds in the same append as its final event, so the leak
report is empty after any solve.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from buildsvc.errors import BuildsvcError, ExecutionError, InvalidInput, StoreUnavailable
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.store import NO_STREAM, EventStore, StreamVersionConflict
from buildsvc.keyed_locks import KeyedLocks
from buildsvc.solver.cachekeys import cache_key
from buildsvc.solver.context import VertexContext
from buildsvc.solver.definition import Definition
from buildsvc.solver.errors import BuildRefInUse, SolveCancelled, SolveError
from buildsvc.solver.handlers import Backends, OpHandler, handler_for
from buildsvc.solver.ops import Op, OpMetadata, Vertex, output_count
from buildsvc.solver.recording import DAEMON_ACTOR, BuildRecorder, HeldRef, LogWriter, StepRecorder
from buildsvc.solver.resume import CompletedVertex, ResumePlan, missing_local_dirs, repair
from buildsvc.solver.source_excerpt import SourceExcerpt, locate
from buildsvc.solver.unrecorded import UnrecordedEnds
from buildsvc.solver.worker import RemoteCache, Terminal, Worker, select_worker

__all__ = ["DEFAULT_MAX_PARALLEL", "CacheIndex", "ResultRef", "SolveRequest", "SolveResult", "Solver"]

_tracer = trace.get_tracer("buildsvc.solver")
_FLUSH_AFTER = 0.5
"""Seconds a deferred fact (a step's end, a cache hit) waits for another append to ride with: long
enough that a solve of cache hits is one append, short enough for a progress display."""
DEFAULT_MAX_PARALLEL = 32
"""Vertices a solver runs at once unless told otherwise (BuildKit's ``max-parallelism`` is unbounded
by default). Small steps spend most of their time waiting for the append that announces them,
and appends asked for while one is in flight go together (group commit): with four threads a
cold graph of file ops made an append for every two steps; with sixteen, several times fewer; with
thirty-two, a cold 1,000-step graph took ~20% less time again (fewer, larger appends)."""
_RUNNER_SLICE = 0.05
"""Seconds a runner keeps its pool thread while its solve has vertices queued (see ``_walk``)."""


class CacheIndex(Protocol):
    """Where the solver finds earlier results (the cache-index projection)."""

    def lookup(self, cache_key: str, worker: str) -> Mapping[int, str]:
        """Output index -> snapshot id recorded for ``cache_key`` on ``worker`` (empty on a miss)."""
        ...

    def cache_refs(self, cache_key: str) -> Sequence[tuple[str, str]]:
        """``(ref id, snapshot id)`` of the refs the records of ``cache_key`` hold, not released yet."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveRequest:
    """One build to solve."""

    definition: Definition
    build_ref: str = field(default_factory=lambda: uuid.uuid4().hex[:25])
    local_dirs: Mapping[str, Path] = field(default_factory=dict)
    """Local source name -> directory holding what the client sent."""
    actor: str = ""
    trace_id: str = ""
    frontend: str = ""
    frontend_attrs: Mapping[str, str] = field(default_factory=dict)
    # Recorded in SolveRequested so that a restarted daemon can finish the build (see resume).
    exporters: Sequence[Mapping[str, str]] = ()
    cache_exports: Sequence[Mapping[str, str]] = ()
    cache_imports: Sequence[Mapping[str, str]] = ()
    image_config: Mapping[str, object] | None = None
    # Contexts from the context store (buildsvc.contexts): name -> manifest digest, recorded in
    # SolveRequested in place of the directory, and the events that say how each arrived.
    local_contexts: Mapping[str, str] = field(default_factory=dict)
    received: Sequence[Event] = ()
    # ``build --rerun``: the build run again (recorded), and the results of its vertices to take
    # from the record (``--from-failure``), each verified on disk as a resume's are.
    rerun_of: str = ""
    reuse: Mapping[str, CompletedVertex] = field(default_factory=dict)
    # ``history debug``'s interactive shell: the output vertex (the debug step) runs on this terminal.
    # Not recorded: what is typed there is not the log's business (it may be a password).
    terminal: Terminal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRef:
    """One result: a committed snapshot on a worker (``None`` for an empty filesystem)."""

    worker: Worker
    snapshot_id: str | None
    cache_key: str
    steps: Mapping[str, tuple[str, tuple[str | None, ...]]] = field(default_factory=dict)
    """Every vertex the solve used: digest -> (cache key, output snapshots); for cache exports."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveResult:
    """What a completed solve produced."""

    build_ref: str
    output: ResultRef | None
    exporter_response: Mapping[str, str] = field(default_factory=dict)


ExportFn = Callable[[ResultRef | None], Mapping[str, str]]
"""Called with the result while the solve still holds it; returns the exporter response."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    key: str
    worker: Worker
    outputs: tuple[str | None, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _LazyHit:
    """A vertex whose result is an imported record taken without its layers (see ``_Solve._realize``):
    what running it after all takes, should they fail their check when fetched.
    """

    vertex: Vertex
    name: str
    worker: Worker
    key: str
    inputs: tuple[str | None, ...]


class _VertexFailed(Exception):
    def __init__(
        self, vertex: str, name: str, error: BaseException, exit_code: int | None, tail: str
    ) -> None:
        super().__init__(str(error))
        self.vertex = vertex
        self.name = name
        self.error = error
        self.exit_code = exit_code
        self.tail = tail


_Shared = tuple[tuple[str | None, ...], BuildRecorder]
"""A shared run's outputs and the recorder of the solve that ran it (whose end may be deferred)."""


class _SharedGraph:
    """Runs in flight, by worker and cache key, so concurrent solves run a vertex once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[_Shared]] = {}

    def claim(self, key: str) -> tuple[Future[_Shared], bool]:
        with self._lock:
            existing = self._inflight.get(key)
            if existing is not None:
                return existing, False
            fut: Future[_Shared] = Future()
            self._inflight[key] = fut
            return fut, True

    def done(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)


class Solver:
    """Solves definitions on workers, one shared graph per daemon."""

    def __init__(
        self,
        store: EventStore,
        cache_index: CacheIndex,
        workers: Sequence[Worker],
        backends: Backends,
        *,
        state_dir: Path,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        handler_factory: Callable[[Op, Backends], OpHandler] = handler_for,
        daemon_id: str = "",
    ) -> None:
        if not workers:
            raise InvalidInput("the solver needs at least one worker")
        self.store = store
        self.cache_index = cache_index
        self.workers = list(workers)
        self.backends = backends
        self.state_dir = state_dir
        self.max_parallel = max_parallel
        self.handler_factory = handler_factory
        self.daemon_id = daemon_id
        """Recorded with each solve's start, so a restart knows which process ran it."""
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="vertex")
        self._graph = _SharedGraph()
        # Content checksums by (worker, snapshot, selection): snapshots never change once committed.
        self._content_memo: dict[tuple[str, str, str], str] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # Snapshots the running solves use, counted: a solve's refs on cache hits are written with
        # its next append, so until then only this process knows them (see ``holds``).
        self._pins: Counter[str] = Counter()
        # The cache records this solver made or found, so a rebuild does not ask the database per
        # vertex; a record's data is still checked on disk at every hit, and removals go through
        # ``forget``.
        self._records: dict[tuple[str, str], Mapping[int, str]] = {}
        self.unrecorded = UnrecordedEnds(state_dir / "unrecorded", store)
        """Ends of solves the store did not take during an outage, until it answers again."""
        self.remote_cache: RemoteCache | None = None
        """Imported cache records unpacked on a hit (set by the daemon's first cache import)."""

    def close(self) -> None:
        """Stop the vertex threads (running vertices finish first)."""
        self._pool.shutdown(wait=True)
        self.unrecorded.close()

    def cancel(self, build_ref: str) -> bool:
        """Ask a running solve to stop; False when no such solve is running here."""
        with self._lock:
            event = self._cancels.get(build_ref)
        if event is None:
            return False
        event.set()
        return True

    def solve(
        self,
        request: SolveRequest,
        *,
        cancel: threading.Event | None = None,
        export: ExportFn | None = None,
        resume: ResumePlan | None = None,
    ) -> SolveResult:
        """Solve ``request``; raises SolveError, SolveCancelled or InvalidInput, recorded either way.

        With ``resume`` (a plan read from the build's stream after a daemon restart) the build goes
        on where the dead process left it: see :mod:`buildsvc.solver.resume`.
        """
        request.definition.validate()
        cancel = cancel or threading.Event()
        with self._lock:
            if request.build_ref in self._cancels:
                raise BuildRefInUse(request.build_ref)
            self._cancels[request.build_ref] = cancel
        try:
            with _tracer.start_as_current_span(
                "solve", attributes={"buildsvc.build_ref": request.build_ref}
            ) as span:
                solve = _Solve(self, request, cancel, span, resume)
                try:
                    return solve.run(export)
                except BaseException as e:
                    span.set_status(StatusCode.ERROR, str(e))
                    raise
        finally:
            with self._lock:
                self._cancels.pop(request.build_ref, None)

    def abandon(self, plan: ResumePlan, reason: str) -> None:
        """End a build a dead process left unfinished as cancelled, instead of resuming it.

        Its interrupted vertices are recorded, its partial snapshots removed and the refs the dead
        process held released, in the same appends a resume makes; then ``SolveCancelled``.
        """
        recorder = BuildRecorder(self.store, plan.build_ref, actor=DAEMON_ACTOR)  # no caller: recovery
        recorder.append(
            [
                ev.VertexInterrupted(build_ref=plan.build_ref, vertex=v, reason=reason)
                for v in plan.interrupted
            ]
        )
        recorder.append(
            [
                *repair(plan, self.workers, reason=reason),
                ev.SolveCancelled(build_ref=plan.build_ref, reason=reason),
            ]
        )

    def forget(self, snapshot_id: str) -> None:
        """Drop remembered cache records that point at ``snapshot_id`` (it is being removed), and
        the file digests kept (see :meth:`forget_files`).
        """
        with self._lock:
            for entry, outputs in list(self._records.items()):
                if snapshot_id in outputs.values():
                    del self._records[entry]
        self.forget_files()

    def forget_files(self) -> None:
        """Forget the file digests kept by inode: files they name were deleted (a snapshot, a
        context tree), and their inode numbers may come back (see ``contenthash.FileDigests``).
        """
        self.backends.digests.forget()

    def _lookup(self, key: str, worker: str) -> Mapping[int, str]:
        remembered = self._records.get((worker, key))
        if remembered is not None:
            return remembered
        found = self.cache_index.lookup(key, worker)
        if found:
            self._remember(key, worker, found)
        return found

    def _remember(self, key: str, worker: str, outputs: Mapping[int, str]) -> None:
        with self._lock:
            if len(self._records) > 200_000:
                self._records.clear()
            self._records[(worker, key)] = dict(outputs)

    def holds(self, snapshot_id: str) -> bool:
        """Whether a solve running here uses ``snapshot_id`` (removing it must wait)."""
        with self._lock:
            return self._pins[snapshot_id] > 0

    def _pin(self, snapshots: Sequence[str]) -> None:
        with self._lock:
            self._pins.update(snapshots)

    def _unpin(self, snapshots: Sequence[str]) -> None:
        with self._lock:
            self._pins.subtract(snapshots)
            for snapshot in snapshots:
                if self._pins[snapshot] <= 0:
                    del self._pins[snapshot]

    def _select(self, metadata: OpMetadata) -> Worker:
        constraints = metadata.constraints
        if constraints is None:
            return self.workers[0]
        return select_worker(self.workers, constraints.worker, constraints.labels)


class _Solve:
    """The state of one solve while it runs."""

    def __init__(
        self,
        solver: Solver,
        request: SolveRequest,
        cancel: threading.Event,
        span: Span,
        resume: ResumePlan | None = None,
    ) -> None:
        self.solver = solver
        self.resume = resume
        self.request = request
        self.definition = request.definition
        self.cancel = cancel
        # Vertex spans run on pool threads: they name the solve's span as their parent explicitly.
        self.trace_context = trace.set_span_in_context(span)
        span_context = span.get_span_context()
        trace_id = request.trace_id or (
            format(span_context.trace_id, "032x") if span_context.is_valid else ""
        )
        self.recorder = BuildRecorder(solver.store, request.build_ref, actor=request.actor, trace_id=trace_id)
        self.results: dict[str, _Outcome] = {}
        self.refs: list[HeldRef] = []
        # Results taken from the cache and pinned here, not yet held by a ref of this solve: one
        # is acquired when a step that reads it starts (see _hold_inputs).
        self.unheld: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.lazy: dict[str, _LazyHit] = {}
        """Vertices taken from an imported record whose layers were not fetched yet, by digest."""
        self._realizing = KeyedLocks()
        self.failure: BaseException | None = None
        # ``cancel`` is the caller's; ``abort`` also fires on the first failure, and is what running
        # steps watch.
        self.abort = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def run(self, export: ExportFn | None) -> SolveResult:
        needed = self._needed()
        if self.resume is not None:
            self._begin_resumed(self.resume)
        else:
            self._begin(needed)
        output: ResultRef | None = None
        response: dict[str, str] = {}
        try:
            if self.resume is not None:
                self._check_resumable(self.resume)
            self._walk(needed)
            if self.failure is None:
                if export is not None:
                    self._realize_exported()
                output = self._output()
                if export is not None:
                    self.recorder.flush_deferred()  # exporters record in this stream too, after
                    response = dict(export(output))
                self._record_fetched()
        except BaseException as e:
            self.failure = self.failure or e
        if self.failure is not None:
            self._end_failed(self.failure)
        self._end(
            ev.SolveCompleted(
                build_ref=self.request.build_ref,
                result_snapshot=(output.snapshot_id or "") if output else "",
                exporter_response=response,
            )
        )
        return SolveResult(build_ref=self.request.build_ref, output=output, exporter_response=response)

    def _begin(self, needed: list[Vertex]) -> None:
        d = self.definition
        r = self.request
        try:
            self.recorder.append(
                [
                    ev.SolveRequested(
                        build_ref=r.build_ref,
                        frontend=r.frontend,
                        frontend_attrs=dict(r.frontend_attrs),
                        definition=d.to_dict(),
                        definition_digest=d.output.digest if d.output else "",
                        local_dirs={**{n: str(p) for n, p in r.local_dirs.items()}, **r.local_contexts},
                        exporters=tuple(dict(x) for x in r.exporters),
                        cache_exports=tuple(dict(x) for x in r.cache_exports),
                        cache_imports=tuple(dict(x) for x in r.cache_imports),
                        image_config=dict(r.image_config) if r.image_config is not None else None,
                        rerun_of=r.rerun_of,
                    ),
                    *r.received,
                    ev.SolveStarted(
                        build_ref=r.build_ref, vertex_count=len(needed), daemon_id=self.solver.daemon_id
                    ),
                ],
                expected_version=NO_STREAM,
            )
        except StreamVersionConflict:
            raise BuildRefInUse(self.request.build_ref) from None

    def _begin_resumed(self, plan: ResumePlan) -> None:
        """Record the resume and each interrupted vertex, then clean up what the dead process left."""
        ref = self.request.build_ref
        reason = "daemon restarted"
        # The recovery is the daemon's own doing; what the build does next is its caller's again.
        recovery = BuildRecorder(self.solver.store, ref, actor=DAEMON_ACTOR, trace_id=self.recorder.trace_id)
        recovery.append(
            [
                ev.SolveResumed(
                    build_ref=ref,
                    daemon_id=self.solver.daemon_id,
                    previous_daemon_id=plan.previous_daemon_id,
                    attempt=plan.attempt,
                    interrupted=plan.interrupted,
                ),
                *(ev.VertexInterrupted(build_ref=ref, vertex=v, reason=reason) for v in plan.interrupted),
            ]
        )
        recovery.append(repair(plan, self.solver.workers, reason=reason))

    def _check_resumable(self, plan: ResumePlan) -> None:
        """Fail (recorded) a resumed build whose recorded failure or missing inputs decide it."""
        if plan.failure is not None:
            f = plan.failure
            name = self.definition.name_of(f.vertex) or f.vertex
            # The vertex failed and the process died before the solve's end was recorded.
            error: BaseException = (
                SolveCancelled(self.request.build_ref) if f.error == "cancelled" else ExecutionError(f.error)
            )
            raise _VertexFailed(f.vertex, name, error, f.exit_code, f.log_tail)
        located = {n: self.request.local_dirs.get(n) for n in plan.local_dirs}
        missing = missing_local_dirs(plan, {n: p if p and p.is_dir() else None for n, p in located.items()})
        if missing:
            raise InvalidInput(f"cannot resume build {self.request.build_ref}: " + "; ".join(missing))

    def _needed(self) -> list[Vertex]:
        d = self.definition
        if d.output is None:
            return []
        wanted: set[str] = set()
        stack = [d.output.digest]
        while stack:
            digest = stack.pop()
            if digest not in wanted:
                wanted.add(digest)
                stack.extend(e.digest for e in d.vertices[digest].inputs)
        return [v for v in d.topological_order() if v.digest in wanted]

    def _output(self) -> ResultRef | None:
        out = self.definition.output
        if out is None:
            return None
        outcome = self.results[out.digest]
        steps = {digest: (o.key, o.outputs) for digest, o in self.results.items()}
        return ResultRef(
            worker=outcome.worker, snapshot_id=outcome.outputs[out.index], cache_key=outcome.key, steps=steps
        )

    def _end(self, final: Event) -> None:
        step = self.recorder.step()
        for ref in self.refs:
            step.release(ref, reason="solve ended")
        step.record(final)
        try:
            step.flush()
        except StoreUnavailable as e:
            # The database is away past the retry bound: the end waits on local disk and is
            # recorded when it answers again (see buildsvc.solver.unrecorded).
            r = self.recorder
            self.solver.unrecorded.keep(r.build_ref, r.take_unwritten(), actor=r.actor, trace_id=r.trace_id)
            raise StoreUnavailable(
                f"{e}\nthe end of build {r.build_ref} is kept and recorded when the database answers again"
            ) from e
        finally:
            self.solver._unpin([ref.snapshot_id for ref in self.refs] + list(self.unheld.elements()))

    def _end_failed(self, failure: BaseException) -> None:
        ref = self.request.build_ref
        error = failure.error if isinstance(failure, _VertexFailed) else failure
        if self.cancel.is_set() or isinstance(error, SolveCancelled | KeyboardInterrupt):
            self._end(ev.SolveCancelled(build_ref=ref, reason="cancelled"))
            raise SolveCancelled(ref, "cancelled") from failure
        if isinstance(failure, _VertexFailed):
            source = locate(self.definition, failure.vertex) or SourceExcerpt("", "")
            self._end(
                ev.SolveFailed(
                    build_ref=ref,
                    error=f"{failure.name}: {failure.error}",
                    vertex=failure.vertex,
                    exit_code=failure.exit_code,
                    source_location=source.location,
                )
            )
            raise SolveError(
                ref,
                str(failure.error),
                vertex=failure.vertex,
                name=failure.name,
                exit_code=failure.exit_code,
                log_tail=failure.tail,
                source_location=source.location,
                source_excerpt=source.excerpt,
            ) from failure.error
        self._end(ev.SolveFailed(build_ref=ref, error=str(failure) or type(failure).__name__))
        if isinstance(failure, BuildsvcError):
            raise failure
        raise SolveError(ref, str(failure) or type(failure).__name__) from failure

    # --- scheduling ------------------------------------------------------------------------------

    def _walk(self, order: list[Vertex]) -> None:
        """Run ``order``'s vertices, each once its inputs are done, up to ``max_parallel`` at once.

        Ready vertices wait in this solve's queue, drained by *runners*: pool tasks that take one
        vertex after another rather than a pool task (a future, a lock, a wake-up) per vertex, which
        a thousand cache hits would spend more on than on the hits. A runner gives its thread back
        after a time slice when vertices are still queued, so solves sharing the pool take turns.
        """
        waiting = {v.digest: {e.digest for e in v.inputs} for v in order}
        dependents: dict[str, list[str]] = {}
        for v in order:
            for e in v.inputs:
                dependents.setdefault(e.digest, []).append(v.digest)
        by_digest = {v.digest: v for v in order}
        done = threading.Condition()
        ready: deque[str] = deque(d for d, inputs in waiting.items() if not inputs)
        runners = busy = 0  # pool tasks of this solve; those of them running a vertex
        finished: set[str] = set()
        limit = self.solver.max_parallel

        def start_runners() -> None:
            # Under ``done``: a runner for each queued vertex that no idle runner will take.
            nonlocal runners
            while runners < limit and len(ready) > runners - busy:
                runners += 1
                self.solver._pool.submit(runner)

        def runner() -> None:
            nonlocal runners, busy
            slice_ends = time.monotonic() + _RUNNER_SLICE
            while True:
                with done:
                    if self.cancel.is_set():
                        self.abort.set()  # between steps, at once (the walk below only polls)
                    if not ready or self.abort.is_set():
                        runners -= 1
                        if not runners:
                            done.notify_all()
                        return
                    if time.monotonic() > slice_ends:
                        self.solver._pool.submit(runner)  # to the back of the pool's queue
                        return
                    vertex = by_digest[ready.popleft()]
                    busy += 1
                error: BaseException | None = None
                try:
                    self._process(vertex)
                except BaseException as e:
                    error = e
                with done:
                    busy -= 1
                    if error is not None:
                        if self.failure is None:
                            self.failure = error
                        self.abort.set()  # the first failure stops the rest of the solve
                        continue
                    finished.add(vertex.digest)
                    for dep in dependents.get(vertex.digest, ()):
                        waiting[dep].discard(vertex.digest)
                        if not waiting[dep]:
                            ready.append(dep)
                    start_runners()

        with done:
            start_runners()
        while True:
            with done:
                if not runners:
                    break
                if self.cancel.is_set():
                    self.abort.set()
                done.wait(0.1)
            # Ends and cache hits wait for the build's next append; not for long when none comes
            # (the steps running are quiet, or there are none), so status readers see them.
            self.recorder.flush_deferred(older_than=_FLUSH_AFTER)
        if self.failure is None and len(finished) < len(order):
            self.failure = SolveCancelled(self.request.build_ref)

    # --- one vertex ------------------------------------------------------------------------------

    def _process(self, vertex: Vertex) -> None:
        d = self.definition
        metadata = d.metadata.get(vertex.digest) or OpMetadata()
        name = d.name_of(vertex.digest) or vertex.digest
        inputs = [self.results[e.digest] for e in vertex.inputs]
        worker = self.solver._select(metadata)
        for edge, outcome in zip(vertex.inputs, inputs, strict=True):
            if outcome.worker is not worker and outcome.outputs[edge.index] is not None:
                raise InvalidInput(
                    f"{name}: runs on worker {worker.info.name} but its input {edge.digest} was built on "
                    f"{outcome.worker.info.name}; moving results between workers is not supported"
                )
        snapshots = [o.outputs[e.index] for o, e in zip(inputs, vertex.inputs, strict=True)]
        handler = self.solver.handler_factory(vertex.op, self.solver.backends)
        try:
            content = handler.content_key(vertex, worker, self.request.local_dirs)
        except BaseException as e:
            raise _VertexFailed(vertex.digest, name, e, None, "") from e
        try:
            input_keys = self._input_keys(vertex, handler, worker, inputs, snapshots)
        except BaseException as e:
            raise _VertexFailed(vertex.digest, name, e, None, "") from e
        key = cache_key(vertex.digest, input_keys, content)
        shared_key = f"{worker.info.name}|{key}"
        future, owner = self.solver._graph.claim(shared_key)
        if not owner:
            outputs = self._wait_shared(future, vertex, name)
            self._use(vertex, name, key, worker, outputs)
            if not all(self._exists(worker, s) for s in outputs if s is not None):
                # The other solve took an imported record without its layers: fetched here when read.
                lazy = _LazyHit(vertex=vertex, name=name, worker=worker, key=key, inputs=tuple(snapshots))
                with self.lock:
                    self.lazy[vertex.digest] = lazy
            return
        try:
            outputs = self._resolve(vertex, metadata, name, worker, key, snapshots)
            future.set_result((outputs, self.recorder))
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            self.solver._graph.done(shared_key)
        with self.lock:
            self.results[vertex.digest] = _Outcome(key=key, worker=worker, outputs=outputs)

    def _input_keys(
        self,
        vertex: Vertex,
        handler: OpHandler,
        worker: Worker,
        inputs: list[_Outcome],
        snapshots: list[str | None],
    ) -> list[str | None]:
        """Each input's part of the key; reading an input's content mounts a view (recorded)."""
        defaults: list[str | None] = [
            f"{o.key}#{e.index}" if s is not None else None
            for o, e, s in zip(inputs, vertex.inputs, snapshots, strict=True)
        ]
        step = self.recorder.step()
        ctx: VertexContext | None = None
        memo = self.solver._content_memo

        def read(index: int, selection: str, compute: Callable[[Path], str]) -> str:
            nonlocal ctx
            edge = vertex.inputs[index]
            snapshot = self._realize(edge.digest)[edge.index]
            assert snapshot is not None
            remembered = memo.get((worker.info.name, snapshot, selection))
            if remembered is not None:
                return remembered
            if ctx is None:
                ctx = self._context(vertex, worker, step, LogWriter(self.recorder, vertex.digest))
            root = ctx.read_input(snapshot)
            assert root is not None
            value = compute(root)
            if len(memo) > 100_000:
                memo.clear()
            memo[(worker.info.name, snapshot, selection)] = value
            return value

        try:
            return handler.input_keys(vertex, defaults, read)
        finally:
            if ctx is not None:
                ctx.cleanup()
            step.flush()

    def _context(self, vertex: Vertex, worker: Worker, step: StepRecorder, log: LogWriter) -> VertexContext:
        return VertexContext(
            step=step,
            worker=worker,
            build_ref=self.request.build_ref,
            vertex=vertex.digest,
            name=self.definition.name_of(vertex.digest) or vertex.digest,
            cancel=self.abort,
            state_dir=self.solver.state_dir,
            local_dirs=self.request.local_dirs,
            log=log,
            terminal=self._terminal_for(vertex.digest),
        )

    def _terminal_for(self, digest: str) -> Terminal | None:
        output = self.definition.output
        return self.request.terminal if output is not None and output.digest == digest else None

    def _wait_shared(self, future: Future[_Shared], vertex: Vertex, name: str) -> tuple[str | None, ...]:
        while True:
            if self.abort.is_set():
                raise SolveCancelled(self.request.build_ref)
            try:
                outputs, owner = future.result(timeout=0.2)
                # The run's end (its snapshot, its cache record) goes in the log before any event
                # of this solve names what it made, even when it is in an append under way.
                owner.settle()
                return outputs
            except TimeoutError:
                continue
            except _VertexFailed:
                raise
            except BaseException as e:
                raise _VertexFailed(vertex.digest, name, e, None, "") from e

    def _use(
        self,
        vertex: Vertex,
        name: str,
        key: str,
        worker: Worker,
        outputs: tuple[str | None, ...],
    ) -> None:
        """Take a result made elsewhere (the cache, or another solve's run of the same vertex).

        It is pinned in this process at once; a ref of the solve is recorded only when a step
        that reads it starts (:meth:`_hold_inputs`). A cached result that only leads to other
        cached results is never read, as in BuildKit: a fully cached build of N steps records N
        facts, not 3N (each ref's acquisition and release).
        """
        step = self.recorder.step()
        step.record(
            ev.VertexCached(
                build_ref=self.request.build_ref,
                vertex=vertex.digest,
                name=name,
                cache_key=key,
                snapshot_id=next((s for s in outputs if s), ""),
            )
        )
        taken = [s for s in outputs if s is not None]
        self.solver._pin(taken)
        step.defer()  # a cache hit starts nothing: it is written with the next append
        with self.lock:
            self.unheld.update(taken)
            self.results[vertex.digest] = _Outcome(key=key, worker=worker, outputs=outputs)

    def _hold_inputs(self, inputs: Sequence[str | None], step: StepRecorder) -> None:
        """Acquire the solve's refs on the cached results a step is about to read (recorded with
        its start, before it reads them).
        """
        with self.lock:
            wanted = [s for s in dict.fromkeys(inputs) if s is not None and self.unheld[s] > 0]
            for s in wanted:
                self.unheld[s] -= 1  # that pin is now the ref's, released with it
            self.unheld += Counter()  # drop the zeros
            held = [step.acquire(s, "solve", self.request.build_ref) for s in wanted]
            self.refs.extend(held)

    def _resolve(
        self,
        vertex: Vertex,
        metadata: OpMetadata,
        name: str,
        worker: Worker,
        key: str,
        inputs: list[str | None],
    ) -> tuple[str | None, ...]:
        expected = output_count(vertex.op)
        step = self.recorder.step()
        reused = self._resumed_result(vertex, name, key, worker, expected, step)
        if reused is not None:
            return reused
        if not metadata.ignore_cache:
            hit = self.solver._lookup(key, worker.info.name)
            if hit:
                if len(hit) == expected and all(self._exists(worker, s) for s in hit.values()):
                    cached: tuple[str | None, ...] = tuple(hit[i] for i in range(expected))
                    self._use(vertex, name, key, worker, cached)
                    return cached
                # The record outlived its data: drop it (and release what it held) and build again,
                # never a wrong hit. Snapshots found gone are recorded as gone.
                reason = f"data missing on worker {worker.info.name}"
                self.solver._records.pop((worker.info.name, key), None)
                step.record(ev.CacheRecordRemoved(cache_key=key, reason=reason))
                for ref_id, held_snapshot in self.solver.cache_index.cache_refs(key):
                    step.record(ev.RefReleased(ref_id=ref_id, snapshot_id=held_snapshot, reason=reason))
                for recorded in hit.values():
                    if not self._exists(worker, recorded):
                        step.record(ev.SnapshotRemoved(snapshot_id=recorded, reason=reason))
            remote = self.solver.remote_cache
            offered = remote.offered(key, worker) if remote is not None else {}
            if len(offered) == expected:
                taken: tuple[str | None, ...] = tuple(offered[i] for i in range(expected))
                if all(self._exists(worker, s) for s in taken if s is not None):
                    # Its layers are here already (another record's chain brought them): recorded now.
                    imported = self._fetch_imported(key, worker, expected)
                    if imported is not None:
                        self._use(vertex, name, key, worker, imported)
                        return imported
                else:
                    self._use(vertex, name, key, worker, taken)
                    lazy = _LazyHit(vertex=vertex, name=name, worker=worker, key=key, inputs=tuple(inputs))
                    with self.lock:
                        self.lazy[vertex.digest] = lazy
                    return taken
        return self._run(vertex, name, worker, key, inputs, step)

    def _fetch_imported(self, key: str, worker: Worker, expected: int) -> tuple[str | None, ...] | None:
        """The imported record of ``key``, its layers fetched, checked, unpacked and recorded (the
        events ride with the build's next append: one for many hits); None when one failed its check
        (a miss, recorded by the import).
        """
        remote = self.solver.remote_cache
        if remote is None:
            return None
        got = remote.materialize(key, worker, self.request.build_ref, self.recorder.write_before_appends)
        if len(got) != expected or not all(self._exists(worker, s) for s in got.values()):
            return None
        # Other solves see the record once it is in the log (as a step's own record).
        self.recorder.defer((), on_written=lambda: self.solver._remember(key, worker.info.name, got))
        return tuple(got[i] for i in range(expected))

    def _realize(self, digest: str) -> tuple[str | None, ...]:
        """The outputs of vertex ``digest``, fetched first if it was taken lazily from an import.

        As BuildKit's lazy refs: a hit on an imported record is taken without its layers, and only
        what something reads is fetched (a step that runs on it, a content key, an export), so a
        cached stage nothing reads moves no bytes. Fetching checks every blob: one that fails is a
        miss (recorded by the import) and the vertex runs after all, on its inputs fetched in turn,
        with new snapshots: callers use what this returns, never the ids the hit gave.
        """
        with self._realizing.hold(digest):
            with self.lock:
                lazy = self.lazy.get(digest)
                if lazy is None:
                    return self.results[digest].outputs
            expected = len(self.results[digest].outputs)
            outputs = self._fetch_imported(lazy.key, lazy.worker, expected)
            if outputs is None:
                outputs = self._run(
                    lazy.vertex, lazy.name, lazy.worker, lazy.key, list(lazy.inputs), self.recorder.step()
                )
            with self.lock:
                del self.lazy[digest]
                self.results[digest] = _Outcome(key=lazy.key, worker=lazy.worker, outputs=outputs)
            return outputs

    def _record_fetched(self) -> None:
        """Record the lazy hits whose layers came anyway, with a record fetched on top of theirs
        (nothing more is fetched): the cache index then answers for every result on disk.
        """
        with self.lock:
            lazy = list(self.lazy.values())
        for hit in lazy:
            outputs = self.results[hit.vertex.digest].outputs
            if all(self._exists(hit.worker, s) for s in outputs if s is not None):
                self._realize(hit.vertex.digest)

    def _realized(self, vertex: Vertex, snapshots: Sequence[str | None]) -> list[str | None]:
        """``vertex``'s input snapshots, each fetched first if its vertex was taken lazily."""
        return [
            None if s is None else self._realize(e.digest)[e.index]
            for e, s in zip(vertex.inputs, snapshots, strict=True)
        ]

    def _realize_exported(self) -> None:
        """Fetch what the export reads: the output's vertex, and every vertex for a cache export (it
        writes each step's layers).
        """
        out = self.definition.output
        with self.lock:
            lazy = list(self.lazy)
        wanted = lazy if self.request.cache_exports else [out.digest] if out is not None else []
        for digest in wanted:
            self._realize(digest)

    def _run(
        self,
        vertex: Vertex,
        name: str,
        worker: Worker,
        key: str,
        inputs: list[str | None],
        step: StepRecorder,
    ) -> tuple[str | None, ...]:
        """Run ``vertex`` (a miss), recorded: its start, its log, its end and its cache record."""
        inputs = self._realized(vertex, inputs)
        self._hold_inputs(inputs, step)
        step.record(
            ev.VertexStarted(
                build_ref=self.request.build_ref,
                vertex=vertex.digest,
                name=name,
                worker=worker.info.name,
                cache_key=key,
                attempt=(self.resume.runs.get(vertex.digest, 0) if self.resume else 0) + 1,
            )
        )
        log = LogWriter(self.recorder, vertex.digest)
        ctx = self._context(vertex, worker, step, log)
        started = time.monotonic()
        handler = self.solver.handler_factory(vertex.op, self.solver.backends)
        span = _tracer.start_span(
            f"vertex {name}",
            context=self.trace_context,
            attributes={
                "buildsvc.vertex": vertex.digest,
                "buildsvc.worker": worker.info.name,
                "buildsvc.cache_key": key,
            },
        )
        try:
            with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
                outputs = handler.run(vertex, inputs, ctx)
        except BaseException as e:
            failure: BaseException = e
            try:
                ctx.cleanup()
            except BaseException as cleanup_error:  # the step's own error is the one to report
                failure.__context__ = cleanup_error
            exit_code = getattr(e, "exit_code", None)
            cancelled = self.abort.is_set() or isinstance(e, KeyboardInterrupt | SolveCancelled)
            if cancelled:
                failure = SolveCancelled(self.request.build_ref)
            step.record(
                ev.VertexFailed(
                    build_ref=self.request.build_ref,
                    vertex=vertex.digest,
                    error="cancelled" if cancelled else str(e) or type(e).__name__,
                    worker=worker.info.name,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    exit_code=exit_code if isinstance(exit_code, int) else None,
                    log_tail=log.tail[-2048:],
                )
            )
            step.flush()
            raise _VertexFailed(
                vertex.digest, name, failure, exit_code if isinstance(exit_code, int) else None, log.tail
            ) from e
        ctx.cleanup()
        held: list[HeldRef] = []
        for index, snapshot in enumerate(outputs):
            if snapshot is None:
                continue
            step.record(
                ev.CacheRecordAdded(
                    cache_key=key,
                    vertex=vertex.digest,
                    snapshot_id=snapshot,
                    output=index,
                    worker=worker.info.name,
                    build_ref=self.request.build_ref,
                )
            )
            step.acquire(snapshot, "cache", key)
            held.append(step.acquire(snapshot, "solve", self.request.build_ref))
            self.solver._pin([snapshot])
        step.record(
            ev.VertexCompleted(
                build_ref=self.request.build_ref,
                vertex=vertex.digest,
                worker=worker.info.name,
                duration_ms=int((time.monotonic() - started) * 1000),
                exit_code=0 if vertex.op.kind == "exec" else None,
                snapshot_id=next((s for s in outputs if s), ""),
                cache_key=key,
            )
        )
        with self.lock:  # before the append: if the store does not take it, the solve's end releases them
            self.refs.extend(held)
        # The end announces no side effect: it rides with the build's next append (a dependent's
        # start, at the latest the walk's timed flush), so a step costs one append, not two. Until
        # it is written, a crash leaves the vertex started and not ended: interrupted and run again
        # on a fresh snapshot, its unrecorded result removed (invariant 3). Other solves learn of
        # the record only once it is in the log.
        made = {i: o for i, o in enumerate(outputs) if o is not None}
        step.defer(on_written=lambda: self.solver._remember(key, worker.info.name, made))
        return outputs

    def _resumed_result(
        self, vertex: Vertex, name: str, key: str, worker: Worker, expected: int, step: StepRecorder
    ) -> tuple[str | None, ...] | None:
        """A resumed build's vertex that completed before the restart: its outputs, once each is found
        on disk (never run again); a result that is gone is recorded missing and the vertex runs.
        """
        done = (
            self.resume.completed.get(vertex.digest)
            if self.resume is not None
            else self.request.reuse.get(vertex.digest)
        )
        if done is None or done.cache_key != key or done.worker != worker.info.name:
            return None
        outputs: tuple[str | None, ...] = tuple(done.outputs.get(i) for i in range(expected))
        gone = [s for s in outputs if s is not None and not self._exists(worker, s)]
        if not gone:
            self._use(vertex, name, key, worker, outputs)
            return outputs
        step.record(
            ev.VertexResultMissing(
                build_ref=self.request.build_ref,
                vertex=vertex.digest,
                snapshot_id=gone[0],
                reason=f"snapshot {gone[0]} is not on worker {worker.info.name} "
                + (
                    "after the restart"
                    if self.resume is not None
                    else f"(recorded by {self.request.rerun_of})"
                ),
            )
        )
        return None

    @staticmethod
    def _exists(worker: Worker, snapshot_id: str) -> bool:
        try:
            worker.snapshotter.stat(snapshot_id)
        except BuildsvcError:
            return False
        return True
