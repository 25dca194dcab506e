"""How the solver writes what it does: a build's events, batched per step, and the refs it holds.

Invariant 2 of the design ("record, then act; act, then record") is kept by one rule: events that
announce a side effect are flushed before the side effect starts, and events that confirm one are
recorded after it ends. Everything between two side effects goes in one atomic append, so a vertex
costs about two appends however many facts it records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from buildsvc.errors import StoreUnavailable
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.envelope import NewEvent
from buildsvc.events.store import EventStore
from buildsvc.ids import new_hex

__all__ = ["DAEMON_ACTOR", "BuildRecorder", "HeldRef", "LogWriter", "StepRecorder"]

DAEMON_ACTOR = "daemon"
"""The actor of what the daemon records on its own (start, stop, recovery), not for a caller."""


class BuildRecorder:
    """Appends one build's events to its stream (``build-<ref>``).

    Appends of one build go to the store one at a time, in the order they were asked for: those
    asked for while one is being written wait and then go together, as one batch (a build's
    parallel steps cost one append between them, and its stream is in the order its steps
    recorded, whatever the threads). Facts that announce no side effect can be deferred, to ride
    with the next append (see :meth:`defer`).
    """

    def __init__(self, store: EventStore, build_ref: str, *, actor: str = "", trace_id: str = "") -> None:
        self.store = store
        self.build_ref = build_ref
        self.stream = f"build-{build_ref}"
        self.actor = actor
        self.trace_id = trace_id
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._deferred: list[Event] = []
        self._deferred_since = 0.0
        self._on_written: list[Callable[[], None]] = []
        self._unwritten: list[list[NewEvent]] = []
        self._waiting: list[_Pending] = []
        self._writing = False
        self._before: list[Callable[[], None]] = []

    def append(self, events: Sequence[Event], *, expected_version: int | None = None) -> None:
        """Append the deferred events and ``events`` atomically (nothing when both are empty).

        A batch the store did not take (``StoreUnavailable``: an outage past the retry bound) is
        kept whole, with its event ids, and tried again, as it was, before the next append (an
        append is idempotent only as a whole: see :meth:`take_unwritten`).
        """
        with self._turn:
            mine = _Pending([*self._deferred, *events], expected_version, self._on_written)
            self._deferred, self._on_written = [], []
            self._waiting.append(mine)
        while True:
            with self._turn:
                while not mine.done and self._writing:
                    self._turn.wait()
                if mine.done:
                    break
                # Lead: write the appends waiting now, in order, as one batch (an append with an
                # expected version goes alone: its check is about its own events).
                self._writing = True
                group = self._take_group()
            self._write_group(group)
        if mine.error is not None:
            raise mine.error

    def _take_group(self) -> list[_Pending]:
        first = self._waiting[0]
        n = 1
        if first.expected_version is None:
            while n < len(self._waiting) and self._waiting[n].expected_version is None:
                n += 1
        group, self._waiting = self._waiting[:n], self._waiting[n:]
        return group

    def _write_group(self, group: list[_Pending]) -> None:
        with self._lock:
            batches, self._unwritten = self._unwritten, []
            before = list(self._before)
        new = [NewEvent(event=e) for p in group for e in p.events]
        if new:
            batches.append(new)
        error: BaseException | None = None
        try:
            try:
                for write_first in before:  # see write_before_appends: nothing goes ahead of them
                    write_first()
            except StoreUnavailable:
                with self._lock:
                    self._unwritten = [*batches, *self._unwritten]
                raise
            for i, batch in enumerate(batches):
                try:
                    self._store_append(batch, group[0].expected_version if batch is new else None)
                except StoreUnavailable:
                    with self._lock:
                        self._unwritten = [*batches[i:], *self._unwritten]
                    raise
                except Exception:
                    if batch is not new or len(group) == 1:
                        raise
                    # Refused as a whole (a bad event): each caller's own events alone, each
                    # caller its own outcome, as if they had not been put together.
                    self._write_alone(group)
                    return
        except BaseException as e:
            error = e
        self._end_group(group, [error] * len(group))

    def _write_alone(self, group: list[_Pending]) -> None:
        errors: list[BaseException | None] = []
        for p in group:
            try:
                if p.events:
                    self._store_append([NewEvent(event=e) for e in p.events], p.expected_version)
                errors.append(None)
            except BaseException as e:
                errors.append(e)
        self._end_group(group, errors)

    def _end_group(self, group: list[_Pending], errors: Sequence[BaseException | None]) -> None:
        """Hand each caller its outcome, let the next leader go, then run what waited for the write."""
        with self._turn:
            for p, error in zip(group, errors, strict=True):
                p.error = error
                p.done = True
            self._writing = False
            self._turn.notify_all()
        for p, error in zip(group, errors, strict=True):
            if error is None:
                for callback in p.on_written:
                    callback()

    def _store_append(self, batch: list[NewEvent], expected_version: int | None) -> None:
        self.store.append(
            self.stream, batch, expected_version=expected_version, actor=self.actor, trace_id=self.trace_id
        )

    def take_unwritten(self) -> list[list[NewEvent]]:
        """The batches the store did not take, in order (no longer kept here)."""
        with self._lock:
            unwritten, self._unwritten = self._unwritten, []
            return unwritten

    def defer(self, events: Sequence[Event], on_written: Callable[[], None] | None = None) -> None:
        """Keep facts that announce no side effect (a cache hit, a step's end) for the next append,
        so a build costs one append per step started rather than two, and none per cache hit;
        ``on_written`` is called once they are in the log.
        """
        with self._lock:
            if not self._deferred:
                self._deferred_since = time.monotonic()
            self._deferred.extend(events)
            if on_written is not None:
                self._on_written.append(on_written)

    def write_before_appends(self, write: Callable[[], None]) -> None:
        """Call ``write`` before each later append of this build is written (once per ``write``).

        For facts another stream holds back (a lazy cache import's hits, see
        ``buildsvc.solver.worker.RemoteCache``): ``write`` writes what it holds, so whatever this
        build records next (a ref on an imported snapshot, the solve's end) is in the log after them.
        When it raises, the append fails as a store error would (``write`` keeps what it holds).
        """
        with self._lock:
            if write not in self._before:
                self._before.append(write)

    def flush_deferred(self, *, older_than: float = 0.0) -> None:
        """Write the deferred facts now if there are any (and the oldest waited ``older_than`` s)."""
        with self._lock:
            due = bool(self._deferred) and time.monotonic() - self._deferred_since >= older_than
        if due:
            self.append([])

    def settle(self) -> None:
        """Write what is deferred and wait for the appends already under way: on return, every fact
        recorded or deferred before the call is in the log (an empty check is not enough: the
        deferred facts may have just left with another thread's append, not yet committed).
        """
        self.append([])

    def step(self) -> StepRecorder:
        """A buffer for the events of one step (a vertex, the solve's end)."""
        return StepRecorder(self)


class _Pending:
    """One caller's append, waiting for its turn (or written by another caller's)."""

    __slots__ = ("done", "error", "events", "expected_version", "on_written")

    def __init__(
        self, events: list[Event], expected_version: int | None, on_written: list[Callable[[], None]]
    ) -> None:
        self.events = events
        self.expected_version = expected_version
        self.on_written = on_written
        self.done = False
        self.error: BaseException | None = None


class HeldRef:
    """One acquisition of a snapshot, released exactly once."""

    __slots__ = ("holder_id", "holder_kind", "ref_id", "released", "snapshot_id")

    def __init__(self, snapshot_id: str, holder_kind: str, holder_id: str) -> None:
        self.ref_id = f"ref-{new_hex()}"
        self.snapshot_id = snapshot_id
        self.holder_kind = holder_kind
        self.holder_id = holder_id
        self.released = False


class StepRecorder:
    """Events of one step, buffered until the next side effect (or the end of the step)."""

    def __init__(self, build: BuildRecorder) -> None:
        self.build = build
        self.pending: list[Event] = []

    def record(self, *events: Event) -> None:
        """Buffer events (written at the next :meth:`flush`)."""
        self.pending.extend(events)

    def flush(self) -> None:
        """Write what is buffered (and the build's deferred facts), atomically."""
        if self.pending:  # deferred facts ride along with a real write, never cause one
            events, self.pending = self.pending, []
            self.build.append(events)

    def defer(self, on_written: Callable[[], None] | None = None) -> None:
        """Hand what is buffered to the build's deferred facts instead of writing it now."""
        events, self.pending = self.pending, []
        self.build.defer(events, on_written)

    def acquire(self, snapshot_id: str, holder_kind: str, holder_id: str) -> HeldRef:
        """Record a new ref on ``snapshot_id`` (buffered)."""
        ref = HeldRef(snapshot_id, holder_kind, holder_id)
        self.record(
            ev.RefAcquired(
                ref_id=ref.ref_id,
                snapshot_id=snapshot_id,
                holder_kind=holder_kind,
                holder_id=holder_id,
                build_ref=self.build.build_ref,
            )
        )
        return ref

    def release(self, ref: HeldRef, reason: str = "") -> None:
        """Record the release of ``ref`` (buffered); releasing twice is a no-op."""
        if ref.released:
            return
        ref.released = True
        self.record(ev.RefReleased(ref_id=ref.ref_id, snapshot_id=ref.snapshot_id, reason=reason))


class LogWriter:
    """Turns a process's output into VertexLogChunk events: batched, in order, flushed at least every
    ``interval`` seconds while output keeps coming and once at the end; keeps a tail for errors.
    """

    def __init__(
        self,
        build: BuildRecorder,
        vertex: str,
        *,
        interval: float = 0.25,
        max_chunk: int = 32 * 1024,
        tail_bytes: int = 4096,
        on_chunk: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.build = build
        self.vertex = vertex
        self.interval = interval
        self.max_chunk = max_chunk
        self.tail_bytes = tail_bytes
        self.on_chunk = on_chunk
        self._lock = threading.Lock()
        # Output not written yet, as (stream, bytes) runs in arrival order: stdout and stderr
        # interleave in the log as the process wrote them, not stream by stream.
        self._runs: list[tuple[int, bytearray]] = []
        self._buffered = 0
        self._offsets = {1: 0, 2: 0}
        self._last_flush = time.monotonic()
        self._tail = bytearray()
        # Set inside ``ticking``: the ticker thread starts with the first output (a file op has none).
        self._stop_ticker: threading.Event | None = None
        self._ticker: threading.Thread | None = None

    def stdout(self, data: bytes) -> None:
        """Output callback for stdout."""
        self._write(1, data)

    def stderr(self, data: bytes) -> None:
        """Output callback for stderr."""
        self._write(2, data)

    def _write(self, stream: int, data: bytes) -> None:
        with self._lock:
            if self._runs and self._runs[-1][0] == stream:
                self._runs[-1][1].extend(data)
            else:
                self._runs.append((stream, bytearray(data)))
            self._buffered += len(data)
            self._tail += data
            del self._tail[: max(len(self._tail) - self.tail_bytes, 0)]
            if self.on_chunk is not None:
                self.on_chunk(stream, data)
            if self._stop_ticker is not None and self._ticker is None:
                self._ticker = self._start_ticker(self._stop_ticker)
            if self._buffered >= self.max_chunk or time.monotonic() - self._last_flush >= self.interval:
                self._flush_locked()

    def flush(self) -> None:
        """Write whatever output is buffered."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._runs:
            return
        events: list[Event] = []
        runs, self._runs, self._buffered = self._runs, [], 0
        for stream, buffer in runs:
            data = bytes(buffer)
            events.append(
                ev.VertexLogChunk(
                    build_ref=self.build.build_ref,
                    vertex=self.vertex,
                    data=data,
                    stream=stream,
                    offset=self._offsets[stream],
                )
            )
            self._offsets[stream] += len(data)
        self._last_flush = time.monotonic()
        self.build.append(events)

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Flush every ``interval`` seconds while the block runs, so quiet processes still show output.

        The thread that does it starts with the block's first output: a step that writes none (a
        file op) costs no thread.
        """
        with self._lock:
            stop = self._stop_ticker = threading.Event()
        try:
            yield
        finally:
            with self._lock:
                ticker, self._ticker, self._stop_ticker = self._ticker, None, None
            stop.set()
            if ticker is not None:
                ticker.join()
            self.flush()

    def _start_ticker(self, stop: threading.Event) -> threading.Thread:
        def tick() -> None:
            while not stop.wait(self.interval):
                self.flush()

        ticker = threading.Thread(target=tick, name=f"log-{self.vertex[:19]}", daemon=True)
        ticker.start()
        return ticker

    @property
    def tail(self) -> str:
        """The last few KiB of output (both streams, in arrival order), as text."""
        with self._lock:
            return bytes(self._tail).decode("utf-8", "replace")
