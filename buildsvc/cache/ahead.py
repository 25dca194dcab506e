"""Layer blobs made while the build runs, for a solve that asked for a cache export.

A solve records its cache exports in ``SolveRequested`` before it starts; from then on, each step's
committed result (``CacheRecordAdded``) can become its layer blob at once, in the background,
instead of all of them at the export's end. :class:`LayersAhead` watches the appends of one event
store: an append hook (run inside the append's transaction, so it only notes what it saw, no I/O)
picks out those events of builds with cache exports, and an ``on_commit`` listener hands what a
committed append noted to one background thread, which asks ``make`` for each layer, one at a
time (the build needs the other core). Nothing happens for a solve that exports no cache (the hook
compares each appended event's type, nothing more) or for ``type=inline`` alone (no layer blob).

What ``make`` writes goes to the layer store (:mod:`buildsvc.cache.layer_store`), whose notes carry
the snapshot's identity: the export takes a blob made ahead only if its snapshot is still the one it
was made from, waits for one being made, and makes what is missing itself. When the export starts
(:meth:`LayersAhead.finish`) or the solve ends, the build's layers not started yet are dropped: its
snapshots are then held only until the export ends, and the export has both cores.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from buildsvc.cache.layer_store import LayerFormat
from buildsvc.cache.options import parse_export
from buildsvc.errors import BuildsvcError

__all__ = ["AppendedRow", "LayersAhead", "export_formats"]

_log = logging.getLogger(__name__)

_ENDS = frozenset({"SolveCompleted", "SolveFailed", "SolveCancelled"})
_BUILD_STREAM = "build-"
_NO_EXPORTS = '"cache_exports":[]'


class AppendedRow(Protocol):
    """An event as an append hook sees it (the event log's ``StoredEvent``): all this reads of it."""

    @property
    def stream_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def payload_json(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...


MakeLayer = Callable[[str, str, LayerFormat], None]
"""``make(worker, snapshot, fmt)``: write (or find) that layer blob in the layer store."""


def export_formats(cache_exports: Iterable[Mapping[str, str]]) -> tuple[LayerFormat, ...]:
    """The layer formats the cache exports ``cache_exports`` (as recorded) write, once each."""
    formats: dict[LayerFormat, None] = {}
    for attrs in cache_exports:
        try:
            spec = parse_export(attrs)
        except BuildsvcError:
            continue  # refused before the solve anyway
        if spec.type != "inline":  # the image exporter writes the image's own layers
            formats[LayerFormat(spec.compression, spec.compression_level, spec.oci_mediatypes)] = None
    return tuple(formats)


class LayersAhead:
    """Makes the layers of builds with cache exports as their steps commit (see the module doc).

    Attach with ``store.add_hook(ahead.hook)`` and ``store.on_commit(ahead.committed)``.
    """

    def __init__(self, make: MakeLayer) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._builds: dict[str, tuple[LayerFormat, ...]] = {}
        """Build stream -> its layer formats, from its committed ``SolveRequested`` to its end."""
        self._noted: dict[str, list[tuple[str, Any]]] = {}
        """Build stream -> what appends not yet known to be committed hold: ("begin", formats),
        ("layer", (worker, snapshot)), ("end", None)."""
        self._queue: deque[tuple[str, str, str, LayerFormat]] = deque()
        self._queued: set[tuple[str, str, str, LayerFormat]] = set()
        self._running = False

    # --- the store's side (fast: called on the appending thread) --------------------------------

    def hook(self, conn: object, appended: Sequence[AppendedRow], head_before: int) -> None:
        """In an append's transaction: note the rows that matter (no I/O; rolled back, they are
        noted again when the append is retried, and a layer made for nothing is only work).
        """
        for row in appended:
            kind = row.type
            if kind == "SolveRequested":
                # Most solves export no cache: known from the canonical text, with no parse of the
                # definition it carries (a quote inside a JSON string is escaped, so no value
                # can look like this).
                if _NO_EXPORTS in row.payload_json or not row.stream_id.startswith(_BUILD_STREAM):
                    continue
                formats = export_formats(row.payload.get("cache_exports") or ())
                if formats:
                    self._note(row.stream_id, ("begin", formats))
            elif kind == "CacheRecordAdded" or kind in _ENDS:
                with self._lock:
                    watched = row.stream_id in self._builds or row.stream_id in self._noted
                if not watched:
                    continue
                if kind == "CacheRecordAdded":
                    payload = row.payload
                    self._note(row.stream_id, ("layer", (payload.get("worker", ""), payload["snapshot_id"])))
                else:
                    self._note(row.stream_id, ("end", None))

    def committed(self, stream_id: str, version: int) -> None:
        """After an append of ``stream_id`` commits: queue the layers its rows named."""
        if not self._noted:  # most appends: nothing to do, and no lock taken
            return
        with self._lock:
            noted = self._noted.pop(stream_id, None)
            if not noted:
                return
            for what, value in noted:
                if what == "begin":
                    self._builds[stream_id] = value
                elif what == "end":
                    self._drop(stream_id)
                elif stream_id in self._builds:
                    worker, snapshot = value
                    for fmt in self._builds[stream_id]:
                        job = (stream_id, worker, snapshot, fmt)
                        if job not in self._queued:
                            self._queued.add(job)
                            self._queue.append(job)
            start = bool(self._queue) and not self._running
            self._running = self._running or start
        if start:
            threading.Thread(target=self._run, name="cache-layers-ahead", daemon=True).start()

    # --- the export's side --------------------------------------------------------------------

    def finish(self, build_ref: str) -> None:
        """The build's export starts: no more layers made ahead for it (one being made is finished,
        and the export waits for it through the layer store's lock).
        """
        with self._lock:
            self._drop(f"{_BUILD_STREAM}{build_ref}")

    def watching(self, build_ref: str) -> bool:
        """Whether layers of ``build_ref`` are being made ahead."""
        with self._lock:
            return f"{_BUILD_STREAM}{build_ref}" in self._builds

    # --- the background thread -----------------------------------------------------------------

    def _drop(self, stream_id: str) -> None:
        # Under self._lock.
        self._builds.pop(stream_id, None)
        self._noted.pop(stream_id, None)
        if any(job[0] == stream_id for job in self._queue):
            self._queue = deque(job for job in self._queue if job[0] != stream_id)
            self._queued = set(self._queue)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                job = self._queue.popleft()
                self._queued.discard(job)
            _, worker, snapshot, fmt = job
            try:
                self._make(worker, snapshot, fmt)
            except Exception as e:  # only work saved: the export makes the layer itself
                _log.debug("layer of %s made ahead failed: %s", snapshot, e)

    def _note(self, stream_id: str, item: tuple[str, Any]) -> None:
        with self._lock:
            self._noted.setdefault(stream_id, []).append(item)
