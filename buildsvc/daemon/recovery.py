"""A daemon's start after a crash: clear what the dead process left on disk, then take up its builds.

:func:`sweep_root` kills and deletes the containers the dead process's runtime left running (a
SIGKILLed daemon leaves ``runc run`` in its own session) and unmounts every snapshot mount under
the workers' directories; nothing of ours runs at that moment, and a later mount of the same
snapshot mounts it again. :func:`unfinished_builds` finds every solve without an end that ran on
this root; :func:`take_up` resumes each (or, with ``--no-resume``, records it cancelled), each in
its own thread held in the API's ``SolveGate`` like a Solve, so Status, Cancel and a shutdown see it.
The solver does the recorded part (see :mod:`buildsvc.solver.resume`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from buildsvc.cache.options import parse_export
from buildsvc.contexts import ContextStore
from buildsvc.daemon.cache_exports import export_caches, import_caches_again, inline_cache_for
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.exporters import run_exporters
from buildsvc.daemon.gateway import JOB_FRONTEND
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.outputs import OutputStaging
from buildsvc.daemon.state import State
from buildsvc.errors import BuildsvcError, Conflict
from buildsvc.events import catalog as ev
from buildsvc.executors import OciRuntimeExecutor
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.projections.schema import builds, projection_checkpoints
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.recording import DAEMON_ACTOR
from buildsvc.solver.resume import ResumePlan, read_plan

__all__ = [
    "GATEWAY_JOB_CANCELLED",
    "Admission",
    "Recovery",
    "locate_local_dirs",
    "lock_root",
    "sweep_root",
    "take_up",
    "unfinished_builds",
]

GATEWAY_JOB_CANCELLED = (
    "daemon restarted: a gateway job's frontend runs in its client, and the restart disconnected it; "
    "run the build again"
)
_ENDED = ("completed", "failed", "cancelled")
_SOLVE_TYPES = (ev.SolveRequested.type_name, ev.SolveStarted.type_name)
_END_TYPES = (ev.SolveCompleted.type_name, ev.SolveFailed.type_name, ev.SolveCancelled.type_name)


class Admission(Protocol):
    """Where running solves are held (the API's SolveGate): shutdown waits for and cancels them."""

    def admit(self, build_ref: str) -> AbstractContextManager[threading.Event]:
        """Hold a slot for ``build_ref``; yields the event that cancels it."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What a start found and did."""

    containers: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()
    """Snapshots on disk no event accounted for, removed."""
    resumed: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    threads: tuple[threading.Thread, ...] = ()

    def describe(self) -> str:
        """One line for the daemon's log."""
        return (
            f"recovery: {len(self.containers)} container(s), {len(self.mounts)} mount(s) and "
            f"{len(self.untracked)} unrecorded snapshot(s) left by a dead process removed; "
            f"resuming {len(self.resumed)} build(s)"
            + (f": {', '.join(self.resumed)}" if self.resumed else "")
            + (f"; cancelled {len(self.cancelled)}: {', '.join(self.cancelled)}" if self.cancelled else "")
        )


_held: list[int] = []  # the root locks this process holds, open until it exits


def lock_root(root: Path) -> None:
    """Hold ``<root>/daemon.lock`` for this process's life; Conflict when a live daemon holds it.

    The kernel drops the lock with the process however it ends (SIGKILL too), so a restart after a
    crash always gets it, and a second daemon on a root whose daemon still runs never sweeps its
    containers or resumes its builds.
    """
    root.mkdir(parents=True, exist_ok=True)
    path = root / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Conflict(
            f"another buildsvc daemon (pid {owner}) is running on root {root}; it owns the builds there "
            "(stop it first, or give this daemon its own --root)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held.append(fd)


def sweep_root(engine: Engine) -> tuple[list[str], list[str]]:
    """Remove leftover containers and mounts under the root: (container ids, mount points)."""
    containers: list[str] = []
    for worker in engine.workers:
        if isinstance(worker.executor, OciRuntimeExecutor):
            containers += worker.executor.sweep()
    # Deepest first: a view's mount may sit inside another snapshot's directory.
    points = sorted(mounts_under(str(engine.state.root / "workers")), key=len, reverse=True)
    for point in points:
        unmount(point)
    return containers, points


def remove_untracked_snapshots(engine: Engine) -> list[str]:
    """Delete snapshots on disk that the log does not hold live; returns their keys.

    A process killed after a snapshotter made a snapshot and before its event was written (or after
    SnapshotRemoved was recorded and before the data went) leaves data no event accounts for; left
    there, it blocks the removal of its parent. Children go before parents: repeat until no more go.
    """
    snapshotters = {w.name: w.snapshotter for w in engine.workers}
    left = [u for u in scan_leaks(engine.state).untracked if u.snapshot_id and u.worker in snapshotters]
    removed: list[str] = []
    while left:
        still: list[Any] = []
        for u in left:
            try:
                snapshotters[u.worker].remove(u.snapshot_id)
                removed.append(u.snapshot_id)
            except Conflict:
                still.append(u)  # a child of it is still there
        if len(still) == len(left):
            break
        left = still
    return removed


def unfinished_builds(state: State) -> list[str]:
    """Builds whose solve has no end, oldest first: the builds projection up to its checkpoint,
    corrected by the events after it (the projection may lag; the log is the truth).
    """
    with state.db.read() as conn:
        checkpoint = conn.execute(
            sa.select(projection_checkpoints.c.position).where(projection_checkpoints.c.name == "builds")
        ).scalar_one_or_none()
        rows = conn.execute(
            sa.select(builds.c.build_ref)
            .where(builds.c.status.not_in(_ENDED))
            .order_by(builds.c.first_position)
        ).scalars()
        found = dict.fromkeys(rows)
    for stored in state.store.read_all(after=checkpoint or 0, batch_size=5000):
        if stored.type in _SOLVE_TYPES:
            found.setdefault(stored.stream_id.removeprefix("build-"))
        elif stored.type in _END_TYPES:
            found.pop(stored.stream_id.removeprefix("build-"), None)
    return list(found)


def _ran_on_this_root(state: State, plan: ResumePlan, cache: dict[str, str | None]) -> bool:
    """Whether the daemon that last ran the build had this root (else it is not ours to resume)."""
    daemon = plan.previous_daemon_id
    if not daemon:
        return True  # recorded before solves named their daemon: the root is the only one we know
    if daemon not in cache:
        started = state.store.read_stream(f"daemon-{daemon}")
        first = started[0].decode() if started else None
        cache[daemon] = first.root if isinstance(first, ev.DaemonStarted) else None
    root = cache[daemon]
    return root is None or Path(root) == state.root


def locate_local_dirs(plan: ResumePlan, contexts: ContextStore) -> dict[str, Path]:
    """Where each local dir of a resumed build is read from now; a dir found nowhere is left out
    (the solver then fails the build naming it).

    A dir the daemon received into its context store (``LocalContextReceived``, or a manifest digest
    recorded in ``SolveRequested.local_dirs``) is made again from its manifest; otherwise the host
    path recorded when the build was asked for is read again.
    """
    found: dict[str, Path] = {}
    for name, recorded in plan.local_dirs.items():
        digest = plan.local_manifests.get(name) or (recorded if recorded.startswith("sha256:") else "")
        if digest:
            try:
                found[name] = contexts.materialize(contexts.load_manifest(digest))
            except BuildsvcError:
                continue  # never received here, or blobs gone: missing
        elif Path(recorded).is_dir():
            found[name] = Path(recorded)
    return found


def take_up(
    engine: Engine,
    gate: Admission,
    *,
    resume: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> Recovery:
    """Sweep the root, then resume (or cancel) every unfinished build of this root.

    First this process takes the root's lock (a daemon still alive on the root owns its builds:
    a second one refuses to start rather than resume them under it), then it records the ends an
    earlier process kept through a database outage (those builds are over, never resumed).
    """
    lock_root(engine.state.root)
    recorded = engine.solver.unrecorded.write_pending()
    if recorded:
        log(f"recovery: recorded the end of {len(recorded)} build(s) kept through a database outage")
    containers, points = sweep_root(engine)
    untracked = remove_untracked_snapshots(engine)
    # Outputs staged for clients of the dead process: none will come for them (a resumed build
    # stages its outputs again, for `build --ref` to fetch).
    OutputStaging(engine.state.root, engine.state.store).discard(
        keep=lambda _ref: False, reason="daemon restarted before the client downloaded it", actor=DAEMON_ACTOR
    )
    owners: dict[str, str | None] = {}
    resumed: list[str] = []
    cancelled: list[str] = []
    threads: list[threading.Thread] = []
    plans = [read_plan(engine.state.store, ref) for ref in unfinished_builds(engine.state)]
    ours = [p for p in plans if p is not None and _ran_on_this_root(engine.state, p, owners)]
    # A gateway job's frontend ran in its client, which the restart cut off: nothing can go on
    # asking for solves, so the job and the solves it asked for are cancelled, never resumed.
    job_of = {solve: p.build_ref for p in ours if p.frontend == JOB_FRONTEND for solve in p.gateway_solves}
    for plan in ours:
        ref = plan.build_ref
        reason = ""
        if not resume:
            reason = "daemon restarted with --no-resume"
        elif plan.frontend == JOB_FRONTEND:
            reason = GATEWAY_JOB_CANCELLED
        elif ref in job_of:
            reason = f"daemon restarted: the gateway job {job_of[ref]} that asked for this solve is cancelled"
        if reason:
            engine.solver.abandon(plan, reason)
            cancelled.append(ref)
            continue
        thread = threading.Thread(
            target=_resume_one, args=(engine, gate, plan, log), name=f"resume-{ref[:12]}", daemon=True
        )
        threads.append(thread)
        resumed.append(ref)
    for thread in threads:
        thread.start()
    return Recovery(
        containers=tuple(containers),
        mounts=tuple(points),
        untracked=tuple(untracked),
        resumed=tuple(resumed),
        cancelled=tuple(cancelled),
        threads=tuple(threads),
    )


def _resume_one(engine: Engine, gate: Admission, plan: ResumePlan, log: Callable[[str], None]) -> None:
    ref = plan.build_ref
    pending = plan.pending_exports()
    done = plan.done_export_response()
    image_config = plan.image_config if isinstance(plan.image_config, Mapping) else None

    caches_left, caches_done = plan.cache_exports_left()
    try:
        definition = Definition.from_dict(plan.definition)
    except BuildsvcError as e:  # recorded by an older or broken writer: nothing can run it
        engine.solver.abandon(plan, f"daemon restarted: the recorded definition cannot be read: {e}")
        log(f"build {ref} not resumed: {e}")
        return

    def export(result: ResultRef | None) -> Mapping[str, str]:
        # Exports and cache exports that completed before the restart are not repeated; their
        # responses still count.
        inline = inline_cache_for(result, definition, [parse_export(spec) for _, spec in caches_left])
        fresh = run_exporters(
            engine, result, ref, pending, image_config=image_config, inline_cache=inline, actor=plan.actor
        )
        caches = dict(caches_done)
        for n, spec in caches_left:
            made = export_caches(
                engine,
                result,
                ref,
                definition,
                [parse_export(spec)],
                exporter_response={**done, **fresh},
                actor=plan.actor,
            )
            caches.update({k.replace("cache.export.0.", f"cache.export.{n}."): v for k, v in made.items()})
        return {**done, **fresh, **caches}

    try:
        with gate.admit(ref) as cancel:
            for error in import_caches_again(
                engine, ref, plan.cache_imports, plan.frontend_attrs, actor=plan.actor
            ):
                log(f"resumed build {ref}: a cache import failed, its steps run instead: {error}")
            engine.solver.solve(
                SolveRequest(
                    definition=definition,
                    build_ref=ref,
                    local_dirs=locate_local_dirs(plan, ContextStore.under(engine.state.root)),
                    actor=plan.actor,
                    trace_id=plan.trace_id,
                    frontend=plan.frontend,
                    frontend_attrs=plan.frontend_attrs,
                    exporters=plan.exporters,
                    cache_exports=plan.cache_exports,
                    cache_imports=plan.cache_imports,
                    image_config=image_config,
                ),
                cancel=cancel,
                export=export,
                resume=plan,
            )
    except BaseException as e:  # recorded by the solver; the daemon goes on
        log(f"resumed build {ref} ended in error: {e}")
        return
    log(f"resumed build {ref} completed")
