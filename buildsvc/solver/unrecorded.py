"""A build's last events that the store did not take, kept on local disk until it answers again.

A database outage longer than the retry bound (``RetryPolicy.max_delay``) fails the append of a
solve's step with ``StoreUnavailable``; the solve then stops and fails. Its end (the refs released,
``SolveFailed`` naming the database, or ``SolveCompleted`` when only the last append met the
outage) cannot be written either. Leaving it unwritten would leave a build the log calls running
while nothing runs it, and a later start would resume a build this process already gave up on.

So the end is written to ``<solver state>/unrecorded/<ref>.json`` first (fsync, rename: the local
disk is the one store we still have), then a background thread appends it as soon as the store
answers and deletes the file. The events keep the ids they were given when they were first
tried, so an append whose commit went through but whose answer was lost is not stored twice
(appends are idempotent by event id). A daemon started on the same root appends whatever files the
last process left before it looks for unfinished builds, so such a build is recorded failed there,
never resumed.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from buildsvc.errors import StoreUnavailable
from buildsvc.events.codec import decode_payload, encode_payload
from buildsvc.events.envelope import NewEvent
from buildsvc.events.store import EventStore

__all__ = ["UnrecordedEnds"]


class UnrecordedEnds:
    """The builds' ends waiting for the store (see the module doc)."""

    def __init__(self, directory: Path, store: EventStore, *, retry_every: float = 1.0) -> None:
        self.directory = directory
        self.store = store
        self.retry_every = retry_every
        self._lock = threading.Lock()  # one writer of the files at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def keep(
        self, build_ref: str, batches: Sequence[Sequence[NewEvent]], *, actor: str, trace_id: str
    ) -> None:
        """Write ``batches`` (the build's end) to disk and have them appended when the store answers.

        Each batch is appended as it was first tried, whole: a store takes an append again as a
        no-op only when every event id in it is the same.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{build_ref}.json"
        body = {
            "stream": f"build-{build_ref}",
            "actor": actor,
            "trace_id": trace_id,
            "batches": [
                [
                    {
                        "id": str(e.event_id),
                        "type": e.event.type_name,
                        "version": e.event.schema_version,
                        "payload": encode_payload(e.event),
                    }
                    for e in batch
                ]
                for batch in batches
            ],
        }
        with self._lock:
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unrecorded-ends", daemon=True)
                self._thread.start()
        self._wake.set()

    def pending(self) -> list[str]:
        """The build refs whose end waits for the store."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def write_pending(self) -> list[str]:
        """Append every kept end the store takes now; returns their build refs.

        Raises ``StoreUnavailable`` when the store still does not answer (what was not written
        stays on disk).
        """
        written: list[str] = []
        with self._lock:
            for ref in self.pending():
                path = self.directory / f"{ref}.json"
                body = json.loads(path.read_text(encoding="utf-8"))
                for batch in body["batches"]:
                    events = [
                        NewEvent(
                            event=decode_payload(e["type"], e["version"], e["payload"]),
                            event_id=uuid.UUID(e["id"]),
                        )
                        for e in batch
                    ]
                    # A crash after some batches: appending those again is a no-op (same ids).
                    self.store.append(body["stream"], events, actor=body["actor"], trace_id=body["trace_id"])
                path.unlink()
                written.append(ref)
        return written

    def close(self) -> None:
        """Stop the background writer (kept ends stay on disk for the next start)."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.retry_every)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self.write_pending()
            except StoreUnavailable:
                continue  # still away: the next round tries again
            except Exception:  # a file we cannot read must not stop the others' retries
                continue
            if not self.pending():
                with self._lock:
                    if not self.pending():
                        self._thread = None
                        return
