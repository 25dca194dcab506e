"""Gateway jobs: builds whose frontend runs in the client (BuildKit's LLBBridge, the daemon's side).

A Control Solve with neither a definition nor a frontend opens a :class:`GatewayJob` under its build
ref and registers it in :class:`GatewayJobs`; the client-side frontend then asks the job for solves,
reads files from their results and finally returns a result or an error. The job is a build like any
other in the log: ``SolveRequested`` (frontend ``gateway.v0``) and ``SolveStarted`` open its stream,
and it ends with ``SolveCompleted`` (after the returned result is exported), ``SolveFailed`` or
``SolveCancelled``.

Each solve the frontend asks for runs as a build of its own (``<job>-<n>``, linked from the job's
stream by ``GatewaySolveRequested``). While that solve still holds its result, the job takes a ref of
its own on it (``RefAcquired`` with holder ``gateway``, recorded in the job's stream) and hands that
ref's id to the client. The job keeps those refs, and only those, until it ends, and releases every
one of them in the same append as its final event, whichever way it ends: returned, failed,
cancelled, or its client gone (the servicer turns a dropped connection into a cancel). So nothing a
client-side frontend does can leave a ref behind, which is where BuildKit's TestNoSnapshotLeak failed.

The job's local dirs are the ones it received (content-addressed, :mod:`buildsvc.contexts`); each of
its solves records the same manifests (``LocalContextReceived`` with source ``job``), so every solve
in the log names the exact files it read. Frontend inputs (BuildKit's FrontendInputs: definitions the
caller passed with the Solve, recorded as ``FrontendInputReceived``) are what Inputs returns; a
frontend solve can take one as a local dir with the option ``context:DIR=input:NAME`` (e.g.
``context:context=input:src`` builds a Dockerfile on a context made by LLB): the input is solved as
one of the job's solves and its files go through the context store like any local dir.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from buildsvc.cache.options import CacheExportSpec
from buildsvc.contexts import ContextStore, ReceivedContexts, receive_contexts
from buildsvc.daemon.cache_exports import export_caches, inline_cache_for
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.exporters import run_exporters
from buildsvc.daemon.frontend import FRONTENDS, run_frontend
from buildsvc.daemon.gateway_types import IMAGE_CONFIG_KEY, FileStat
from buildsvc.errors import Conflict, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.store import NO_STREAM, StreamVersionConflict
from buildsvc.executors.paths import clean_container_path, resolve_in_root
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.errors import BuildRefInUse, SolveCancelled, SolveError
from buildsvc.solver.patterns import match_component
from buildsvc.sources import host_platform, parse_platform, parse_reference

__all__ = [
    "CAPABILITIES",
    "INPUT_CONTEXT_PREFIX",
    "JOB_FRONTEND",
    "FileStat",
    "GatewayJob",
    "GatewayJobs",
    "GatewayResult",
    "IMAGE_CONFIG_KEY",
    "MAX_READ_BYTES",
]

JOB_FRONTEND = "gateway.v0"
"""The frontend a gateway job is recorded with."""
MAX_READ_BYTES = 3 * 1024 * 1024
"""The most one ReadFile returns: gRPC refuses messages over 4 MiB by default; read larger files in
ranges."""
INPUT_CONTEXT_PREFIX = "context:"
"""Frontend option ``context:DIR=input:NAME``: the frontend reads local dir DIR from input NAME."""
CAPABILITIES = (
    "solve.definition",
    "solve.frontend.inputcontext",
    *(f"solve.frontend.{name}" for name in FRONTENDS),
    "resolveimageconfig",
    "readfile",
    "readfile.range",
    "readdir",
    "statfile",
    "inputs",
    "warn",
    "return",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayResult:
    """What a frontend returns: one of the job's refs (empty: no files) and metadata."""

    ref_id: str = ""
    metadata: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Returned:
    result: GatewayResult | None
    error: str | None


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def _clean(path: str, what: str) -> str:
    # Frontends name files relative to the result's root ("Dockerfile") or absolutely ("/etc/os-release").
    return clean_container_path(path if path.startswith("/") else f"/{path}", what=what)


def _input_definition(name: str, data: bytes) -> Definition:
    if not name:
        raise InvalidInput("a frontend input needs a name")
    try:
        return Definition.from_json(data)
    except InvalidInput as e:
        raise InvalidInput(f"frontend input {name!r}: {e}") from None


def _stat_of(name: str, host: str) -> FileStat:
    st = os.lstat(host)
    return FileStat(
        path=name,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        mod_time_ns=st.st_mtime_ns,
        linkname=os.readlink(host) if stat.S_ISLNK(st.st_mode) else "",
    )


class GatewayJob:
    """One build whose frontend runs in the client: the refs it was given, and whether it returned."""

    def __init__(
        self,
        engine: Engine,
        build_ref: str,
        *,
        cancel: threading.Event,
        contexts: ReceivedContexts | None = None,
        inputs: Mapping[str, bytes] | None = None,
        actor: str = "",
        frontend_attrs: Mapping[str, str] | None = None,
        cache_exports: Sequence[CacheExportSpec] = (),
    ) -> None:
        self.engine = engine
        self.cache_exports = tuple(cache_exports)
        """``--export-cache`` of the job: run on the returned result, as a Solve's are."""
        self.build_ref = build_ref
        self.cancel = cancel
        """Set by the caller to end the job (its client went away, a Cancel, a shutdown)."""
        self.contexts = contexts or ReceivedContexts()
        """The job's local dirs as received (trees from the context store, their digests and events)."""
        self.local_dirs = dict(self.contexts.dirs)
        self.inputs = dict(inputs or {})
        """Frontend inputs: name -> definition in its JSON form (what Inputs returns)."""
        self._input_definitions = {name: _input_definition(name, data) for name, data in self.inputs.items()}
        self.actor = actor
        self.frontend_attrs = dict(frontend_attrs or {})
        self.stream = f"build-{build_ref}"
        self._lock = threading.Lock()
        self._refs: dict[str, ResultRef] = {}
        self._definitions: dict[str, Definition] = {}
        """The definition each ref's solve ran (a cache export of the returned ref needs it)."""
        self._solves = 0
        self._running: set[threading.Event] = set()
        self._returned: _Returned | None = None
        self._return_event = threading.Event()
        self._ended = False
        self._final_recorded = False

    # --- what the frontend asks for ---------------------------------------------------------------

    def solve(
        self,
        *,
        definition_json: bytes = b"",
        frontend: str = "",
        frontend_attrs: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, bytes]]:
        """Solve a definition, or what a frontend makes; returns the new ref's id and the metadata."""
        attrs = dict(frontend_attrs or {})
        if definition_json and frontend:
            raise InvalidInput("a gateway Solve takes a definition or a frontend, not both")
        wanted = self._input_contexts(attrs, frontend)
        self._check_open()
        metadata: dict[str, bytes] = {}
        from_inputs = self._input_dirs(wanted)
        local_dirs = {**self.local_dirs, **from_inputs.dirs}
        if not definition_json and not frontend:
            # As BuildKit: an empty request solves to the empty result (still recorded as a solve).
            definition = llb.scratch().marshal()
        elif frontend:
            frontend_opts = {k: v for k, v in attrs.items() if not k.startswith(INPUT_CONTEXT_PREFIX)}
            made = run_frontend(frontend, frontend_opts, local_dirs, self.engine.images)
            definition = made.definition
            metadata[IMAGE_CONFIG_KEY] = json.dumps(made.image_config, sort_keys=True).encode()
        else:
            definition = Definition.from_json(definition_json)
        stop = threading.Event()
        with self._lock:
            if self._ended:
                raise self._ended_error()
            self._solves += 1
            solve_ref = f"{self.build_ref}-{self._solves}"
            self._running.add(stop)
        own = self.contexts.handed_to(solve_ref)
        received = ReceivedContexts(
            dirs=local_dirs,
            digests={**own.digests, **from_inputs.digests},
            events=(
                *(e for e in own.events if e.name not in from_inputs.dirs),
                *(replace(e, build_ref=solve_ref) for e in from_inputs.events),
            ),
        )
        try:
            self._record(
                ev.GatewaySolveRequested(
                    build_ref=self.build_ref,
                    solve_ref=solve_ref,
                    frontend=frontend,
                    frontend_attrs=attrs,
                    definition_digest=definition.output.digest if definition.output else "",
                )
            )
            given: list[str] = []

            def hand_over(result: ResultRef | None) -> Mapping[str, str]:
                # Called while the solve still holds its result: the job's ref takes over from it.
                given.append(self._hold(solve_ref, result, definition))
                return {}

            try:
                self.engine.solver.solve(
                    SolveRequest(
                        definition=definition,
                        build_ref=solve_ref,
                        local_dirs=received.dirs,
                        actor=self.actor,
                        frontend=frontend,
                        frontend_attrs=attrs,
                        # The manifests, not the trees' paths, name the solve's local dirs in the log.
                        local_contexts=received.digests,
                        received=received.events,
                    ),
                    cancel=stop,
                    export=hand_over,
                )
            except BaseException as e:
                if not given:
                    self._record(
                        ev.GatewaySolveFailed(
                            build_ref=self.build_ref, solve_ref=solve_ref, error=str(e) or type(e).__name__
                        )
                    )
                raise
        finally:
            with self._lock:
                self._running.discard(stop)
        return given[0], metadata

    def _input_contexts(self, attrs: Mapping[str, str], frontend: str) -> dict[str, str]:
        """The ``context:DIR=input:NAME`` options: local dir name -> frontend input name."""
        wanted: dict[str, str] = {}
        for key, value in attrs.items():
            if not key.startswith(INPUT_CONTEXT_PREFIX):
                continue
            directory = key.removeprefix(INPUT_CONTEXT_PREFIX)
            if not frontend:
                raise InvalidInput(f"option {key}: a frontend's option, and this Solve has no frontend")
            if not directory or not value.startswith("input:"):
                raise InvalidInput(
                    f"option {key}={value}: expected context:DIR=input:NAME "
                    "(a local dir made from a frontend input)"
                )
            name = value.removeprefix("input:")
            if name not in self._input_definitions:
                given = ", ".join(sorted(self._input_definitions)) or "none"
                raise NotFound(f"option {key}={value}: no frontend input {name!r} (this job has: {given})")
            wanted[directory] = name
        return wanted

    def _input_dirs(self, wanted: Mapping[str, str]) -> ReceivedContexts:
        """Each wanted dir made from its input's result, through the context store.

        The input is solved as one of the job's solves (recorded, its ref held for the job); its
        files are read through a view and stored like any local dir, so the frontend and the solver
        see a plain tree and the log names it by manifest digest (source ``input:NAME``). As in
        BuildKit, ``.dockerignore`` applies to local dirs only, not to an input's files.
        """
        dirs: dict[str, Path] = {}
        digests: dict[str, str] = {}
        events: list[ev.LocalContextReceived] = []
        store = ContextStore.under(self.engine.state.root)
        solved: dict[str, str] = {}  # an input that makes two dirs is solved once
        for directory, name in sorted(wanted.items()):
            if name not in solved:
                solved[name], _ = self.solve(definition_json=self.inputs[name])
            with self._root_or_empty(solved[name]) as root:
                got = receive_contexts(
                    store, self.build_ref, host_dirs={directory: root}, host_source=f"input:{name}"
                )
            dirs[directory] = got.dirs[directory]
            digests[directory] = got.digests[directory]
            events.extend(replace(e, host_path="") for e in got.events)
        return ReceivedContexts(dirs=dirs, digests=digests, events=tuple(events))

    def resolve_image_config(self, ref: str, platform: str = "") -> tuple[str, bytes]:
        """Pin ``ref`` by digest and return its config blob (a pinned digest the store holds: from there)."""
        self._check_open()
        reference = parse_reference(ref)
        wanted = parse_platform(platform) if platform else host_platform()
        store = self.engine.images
        resolved = store.resolve(reference, wanted)  # a held, pinned digest: no network
        config = resolved.manifest.config
        if not store.content.has(config.digest):
            store.registry.fetch_blob(reference, config, store.content)
        return resolved.index_digest or resolved.digest, store.content.read(config.digest)

    def read_file(self, ref_id: str, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        """Up to ``length`` bytes (0: all) of a file in a result, from ``offset``."""
        if offset < 0 or length < 0:
            raise InvalidInput(f"ReadFile {path!r}: offset and length must not be negative")
        if length > MAX_READ_BYTES:
            raise InvalidInput(f"ReadFile {path!r}: length {length} is over {MAX_READ_BYTES} bytes")
        clean = _clean(path, "ReadFile path")
        with self._root(ref_id, path) as root:
            host = resolve_in_root(str(root), clean)
            try:
                with open(host, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
                        raise InvalidInput(f"ReadFile {path!r}: is a directory")
                    want = length or max(size - offset, 0)
                    if want > MAX_READ_BYTES:
                        raise InvalidInput(
                            f"ReadFile {path!r}: {size} bytes is over {MAX_READ_BYTES}; read it in ranges"
                        )
                    f.seek(offset)
                    return f.read(want)
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(f"ReadFile {path!r}: no such file in ref {ref_id}") from None
            except IsADirectoryError:
                raise InvalidInput(f"ReadFile {path!r}: is a directory") from None

    def read_dir(self, ref_id: str, path: str, *, include_pattern: str = "") -> list[FileStat]:
        """The entries of a directory in a result (names matching ``include_pattern``), by name."""
        clean = _clean(path or "/", "ReadDir path")
        if include_pattern:
            match_component(include_pattern, "")  # a malformed pattern fails here, naming itself
        with self._root(ref_id, path) as root:
            host = resolve_in_root(str(root), clean)
            try:
                names = sorted(os.listdir(host))
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(f"ReadDir {path!r}: no such directory in ref {ref_id}") from None
            return [
                _stat_of(name, os.path.join(host, name))
                for name in names
                if not include_pattern or match_component(include_pattern, name)
            ]

    def stat_file(self, ref_id: str, path: str) -> FileStat:
        """A file's metadata (a symlink itself, not what it points to)."""
        clean = _clean(path, "StatFile path")
        with self._root(ref_id, path) as root:
            parent, _, name = clean.rpartition("/")
            host = resolve_in_root(str(root), parent or "/")
            try:
                return _stat_of(path, os.path.join(host, name) if name else host)
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(f"StatFile {path!r}: no such file in ref {ref_id}") from None

    def warn(self, message: str, *, level: int = 2, detail: Sequence[str] = (), url: str = "") -> None:
        """Record a warning with the build."""
        if not message:
            raise InvalidInput("Warn needs a message")
        self._check_open()
        self._record(
            ev.GatewayWarning(
                build_ref=self.build_ref, message=message, level=level, detail=tuple(detail), url=url
            )
        )

    def return_(self, result: GatewayResult | None, error: str | None) -> None:
        """Accept the frontend's one Return: exactly one of a result or an error."""
        if result is not None and error is not None:
            raise InvalidInput("Return takes exactly one of a result or an error, and got both")
        if result is None and error is None:
            raise InvalidInput("Return takes exactly one of a result or an error, and got neither")
        with self._lock:
            if self._returned is not None:
                raise Conflict(f"job {self.build_ref} has returned already; a job returns once")
            if self._ended:
                raise self._ended_error()
            if result is not None and result.ref_id and result.ref_id not in self._refs:
                raise NotFound(f"Return: job {self.build_ref} has no ref {result.ref_id!r}")
            self._record(
                ev.GatewayReturned(
                    build_ref=self.build_ref,
                    ref_id=result.ref_id if result is not None else "",
                    metadata={
                        k: _text(v) for k, v in (result.metadata if result is not None else {}).items()
                    },
                    error=error or "",
                )
            )
            self._returned = _Returned(result=result, error=error)
        self._return_event.set()

    # --- the job's life ---------------------------------------------------------------------------

    def start(self, exporters: Sequence[Mapping[str, str]]) -> None:
        """Open the job's stream (a build ref used before is refused)."""
        try:
            self.engine.state.store.append(
                self.stream,
                [
                    ev.SolveRequested(
                        build_ref=self.build_ref,
                        frontend=JOB_FRONTEND,
                        frontend_attrs=self.frontend_attrs,
                        local_dirs={
                            **{name: str(path) for name, path in self.local_dirs.items()},
                            **self.contexts.digests,
                        },
                        exporters=tuple(dict(e) for e in exporters),
                    ),
                    *self.contexts.events,
                    *(
                        ev.FrontendInputReceived(
                            build_ref=self.build_ref,
                            name=name,
                            definition=definition.to_dict(),
                            definition_digest=definition.output.digest if definition.output else "",
                        )
                        for name, definition in sorted(self._input_definitions.items())
                    ),
                    ev.SolveStarted(build_ref=self.build_ref, daemon_id=self.engine.daemon_id),
                ],
                expected_version=NO_STREAM,
                actor=self.actor,
            )
        except StreamVersionConflict:
            raise BuildRefInUse(self.build_ref) from None

    def finish(self, exporters: Sequence[Mapping[str, str]], *, poll: float = 0.1) -> dict[str, str]:
        """Wait for the Return (or the cancel), export the result (outputs, then the job's cache
        exports of the returned ref's solve), and end the job; every ref released.

        Raises SolveCancelled when the job was cancelled first, SolveError for a returned error, and
        an export's own error when the export fails (the job is recorded as failed then).
        """
        try:
            while not self._return_event.wait(poll):
                if self.cancel.is_set():
                    break
            with self._lock:
                returned = self._returned
                self._ended = True  # from here on no Return, solve or read is taken
            if returned is None:
                reason = "the client went away or cancelled the job before it returned"
                self._end(ev.SolveCancelled(build_ref=self.build_ref, reason=reason))
                raise SolveCancelled(self.build_ref, reason)
            if returned.error is not None:
                message = returned.error or "the frontend failed (no message)"
                self._end(ev.SolveFailed(build_ref=self.build_ref, error=message))
                raise SolveError(self.build_ref, message)
            result = returned.result or GatewayResult()
            output = self._refs.get(result.ref_id) if result.ref_id else None
            config_json = result.metadata.get(IMAGE_CONFIG_KEY)
            image_config: dict[str, Any] | None = json.loads(config_json) if config_json else None
            response = {k: _text(v) for k, v in result.metadata.items() if k != IMAGE_CONFIG_KEY}
            definition = self._definitions.get(result.ref_id) if result.ref_id else None
            definition = definition or Definition(vertices={}, output=None)  # empty: nothing to export
            inline = inline_cache_for(output, definition, self.cache_exports)
            response.update(
                run_exporters(
                    self.engine,
                    output,
                    self.build_ref,
                    exporters,
                    image_config=image_config,
                    inline_cache=inline,
                    actor=self.actor,
                )
            )
            response.update(
                export_caches(
                    self.engine,
                    output,
                    self.build_ref,
                    definition,
                    self.cache_exports,
                    exporter_response=response,
                    actor=self.actor,
                )
            )
            self._end(
                ev.SolveCompleted(
                    build_ref=self.build_ref,
                    result_snapshot=(output.snapshot_id or "") if output is not None else "",
                    exporter_response=response,
                )
            )
            return response
        except BaseException as e:
            self._end(ev.SolveFailed(build_ref=self.build_ref, error=str(e) or type(e).__name__))
            raise

    # --- inside ---------------------------------------------------------------------------------

    def _end(self, final: Event) -> None:
        """Release every ref the job holds with its final event, in one append (once)."""
        with self._lock:
            self._ended = True
            if self._final_recorded:
                return
            for stop in self._running:
                stop.set()  # a solve still running for the frontend has no one to hand its result to
            events: list[Event] = [
                ev.RefReleased(ref_id=ref_id, snapshot_id=r.snapshot_id or "", reason="gateway job ended")
                for ref_id, r in self._refs.items()
            ]
            events.append(final)
            self.engine.state.store.append(self.stream, events, actor=self.actor)
            self._final_recorded = True
            self._refs = {}
        self._return_event.set()

    def _ended_error(self) -> SolveCancelled:
        return SolveCancelled(self.build_ref, "the gateway job has ended")

    def _check_open(self) -> None:
        with self._lock:
            if self._ended:
                raise self._ended_error()

    def _record(self, *events: Event) -> None:
        self.engine.state.store.append(self.stream, list(events), actor=self.actor)

    def _hold(self, solve_ref: str, result: ResultRef | None, definition: Definition) -> str:
        with self._lock:
            if self._ended:
                raise self._ended_error()
            if result is None or result.snapshot_id is None:
                self._record(ev.GatewaySolveCompleted(build_ref=self.build_ref, solve_ref=solve_ref))
                return ""
            ref_id = f"ref-{os.urandom(16).hex()}"
            self._record(
                ev.RefAcquired(
                    ref_id=ref_id,
                    snapshot_id=result.snapshot_id,
                    holder_kind="gateway",
                    holder_id=self.build_ref,
                    build_ref=self.build_ref,
                ),
                ev.GatewaySolveCompleted(
                    build_ref=self.build_ref,
                    solve_ref=solve_ref,
                    ref_id=ref_id,
                    snapshot_id=result.snapshot_id,
                ),
            )
            self._refs[ref_id] = result
            self._definitions[ref_id] = definition
            return ref_id

    def _result(self, ref_id: str) -> ResultRef | None:
        with self._lock:
            if self._ended:
                raise self._ended_error()
            if not ref_id:
                return None
            try:
                return self._refs[ref_id]
            except KeyError:
                raise NotFound(f"job {self.build_ref} has no ref {ref_id!r}") from None

    @contextmanager
    def _root_or_empty(self, ref_id: str) -> Iterator[Path]:
        """The result's files, or an empty directory for the empty result."""
        with self.engine.view(self._result(ref_id), self.build_ref, self.actor) as root:
            if root is not None:
                yield root
                return
        with tempfile.TemporaryDirectory(prefix="buildsvc-empty-") as empty:
            yield Path(empty)

    @contextmanager
    def _root(self, ref_id: str, path: str) -> Iterator[Path]:
        """The result's files through a recorded read-only view, for as long as the block runs."""
        result = self._result(ref_id)
        with self.engine.view(result, self.build_ref, self.actor) as root:
            if root is None:
                raise NotFound(f"{path!r}: the empty result has no files")
            yield root


_ENDED_KEPT = 256
"""How many ended jobs stay reachable (see ``GatewayJobs._ended``)."""


class GatewayJobs:
    """The gateway jobs running in this daemon, by build ref."""

    def __init__(self, *, register_wait: float = 3.0) -> None:
        self.register_wait = register_wait
        """How long a call for an unknown job waits for it to register (BuildKit waits 3 s)."""
        self._cond = threading.Condition()
        self._jobs: dict[str, GatewayJob] = {}
        self._ended: OrderedDict[str, GatewayJob] = OrderedDict()
        """Jobs that ended lately: a late call gets the job's own answer (it has ended, it returned
        already), not "no such job", which the frontend could not tell from a wrong build id."""

    @contextmanager
    def registered(self, job: GatewayJob) -> Iterator[GatewayJob]:
        """Make ``job`` reachable by its build ref while the block runs."""
        with self._cond:
            if job.build_ref in self._jobs:
                raise BuildRefInUse(job.build_ref)
            self._jobs[job.build_ref] = job
            self._cond.notify_all()
        try:
            yield job
        finally:
            with self._cond:
                self._jobs.pop(job.build_ref, None)
                self._ended[job.build_ref] = job
                while len(self._ended) > _ENDED_KEPT:
                    self._ended.popitem(last=False)

    def get(self, build_ref: str) -> GatewayJob:
        """The job ``build_ref`` (running, or lately ended), waiting a little for one still starting."""
        deadline = time.monotonic() + self.register_wait
        with self._cond:
            while (job := self._jobs.get(build_ref) or self._ended.get(build_ref)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotFound(f"no such job {build_ref!r}")
                self._cond.wait(left)
            return job

    def cancel(self, build_ref: str) -> bool:
        """Cancel a running job; False when there is none."""
        with self._cond:
            job = self._jobs.get(build_ref)
        if job is None:
            return False
        job.cancel.set()
        return True
