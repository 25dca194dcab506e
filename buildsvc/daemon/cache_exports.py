"""Cache export and import around a solve (``--export-cache``, ``--import-cache``), recorded.

Import runs before the solve (and again before a resumed one, see :func:`import_caches_again`) and
is lazy, as BuildKit's: it reads the cache config and offers its
records (``CacheImported`` in its own stream ``cache-import-<id>``, counting the records offered and
those the index already has on the worker); a record's layers are fetched, verified and unpacked only
when the solver's lookup for its key misses locally (:class:`LazyImports`, the solver's remote
cache). The unpack is recorded in the import's stream: committed snapshots keyed by chain id
(content-addressed, remaking is harmless), ``CacheRecordAdded`` with ``source=import:<type>`` and a
ref held by the record; a hit's events are held and written just before the build's next append
(one append for an all-hit build's hits, and before anything the build records on them). A blob
missing from a local layout is a clear error at import time (or, with ``ignore-error=true``, its
record is left out); a blob that fails its digest check at hit time is ``CacheImportMiss`` (written
at once) and the step runs: never a wrong hit. A plain tar is verified by the unpacker's diff-id
hash in the same read, anything else by hashing it first. A local hit on overlay starts unpacking
the plain-tar layers above it (the next steps') ahead, verified, into private directories
(:mod:`buildsvc.daemon.cache_unpack_ahead`), and the hits that need them move them into their
snapshots; otherwise it starts hashing those blobs in the background, and the next hit takes such
a blob as verified if the file is unchanged (checked again before the commit). An imported record
carries the vertex the cache names (empty for BuildKit's caches).

Export runs in the solve's export step, while the solve still holds its results: the records the
mode picks, their snapshot chains as layers (a layer per snapshot, written once per snapshot and
compression, then reused from ``<root>/cache/layers``), recorded as ``CacheExportStarted`` then
``CacheExportCompleted`` or ``CacheExportFailed`` in the build's stream. Layers are made two at a
time, and a local export hard-links them into the layout when it can. A solve that records a cache
export in its request has its layers made as its steps commit (:func:`watch_cache_exports`,
:mod:`buildsvc.cache.ahead`): the export then takes those blobs, each only if its snapshot is still
the one it was made from (:mod:`buildsvc.cache.layer_store`). ``type=inline`` is written by the
image exporter (:func:`inline_cache_for` gives it the record) and only recorded here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import sqlalchemy as sa

from buildsvc.cache.ahead import LayersAhead
from buildsvc.cache.config import CacheConfigError
from buildsvc.cache.export import Step, plan_records, write_cache
from buildsvc.cache.imports import ImportLayer, ImportRecord
from buildsvc.cache.inline import InlineCache
from buildsvc.cache.layer_store import Identity, LayerFormat, LayerStore
from buildsvc.cache.layers import LayerBlob, write_layer
from buildsvc.cache.local import BlobAccess, LocalSource, LocalTarget
from buildsvc.cache.options import CacheExportSpec, CacheImportSpec
from buildsvc.daemon.cache_registry import RegistrySource, RegistryTarget
from buildsvc.daemon.cache_specs import (
    CACHE_IMPORTS_OPTION,
    CacheOptions,
    check_cache_options,
    frontend_attrs_with_imports,
)
from buildsvc.daemon.cache_unpack_ahead import UnpackAhead, move_staged
from buildsvc.daemon.registry_push import client_for
from buildsvc.errors import BuildsvcError, Conflict, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.executors import Worker
from buildsvc.keyed_locks import KeyedLocks
from buildsvc.projections.schema import cache_records
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef
from buildsvc.solver.worker import Change, SnapshotKind, Snapshotter
from buildsvc.solver.worker import Worker as SolverWorker
from buildsvc.sources import RegistryClient, apply_layer
from buildsvc.sources.errors import DigestMismatch, InvalidImage, RegistryError
from buildsvc.sources.unpack import WhiteoutMode

if TYPE_CHECKING:  # the engine imports the solver, SQLAlchemy...: not for a client
    from buildsvc.daemon.engine import Engine

__all__ = [
    "CACHE_IMPORTS_OPTION",
    "CacheOptions",
    "check_cache_options",
    "export_caches",
    "frontend_attrs_with_imports",
    "import_caches",
    "import_caches_again",
    "inline_cache_for",
    "watch_cache_exports",
]


def inline_cache_for(
    result: ResultRef | None, definition: Definition, exports: Sequence[CacheExportSpec]
) -> InlineCache | None:
    """The record an image output carries when ``type=inline`` is asked for (and there is a result)."""
    if not any(e.type == "inline" for e in exports):
        return None
    if result is None or result.snapshot_id is None or definition.output is None:
        return None  # an empty result: no layer to point at, nothing to reuse
    return InlineCache(key=result.cache_key, output=definition.output.index, vertex=definition.output.digest)


# --- import ---------------------------------------------------------------------------------------


class _Source(Protocol):
    manifest_digest: str
    records: list[ImportRecord]
    bytes_read: int
    where: str

    def blob(self, digest: str, size: int, work: Path, diff_id: str = "") -> BlobAccess: ...

    def prefetch(self, layers: Sequence[ImportLayer]) -> None:
        """Get ready (read only) the blobs of ``layers``, the next ones of a chain being unpacked."""
        ...


_unpacks = KeyedLocks()
_AHEAD = 4
"""How many of a chain's next layers are unpacked (or their blobs hashed) ahead of the one unpacked."""


def import_caches(engine: Engine, build_ref: str, imports: Sequence[CacheImportSpec], *, actor: str) -> None:
    """Import each source before a solve (see the module doc); raises on a failure unless ignored.

    What the import records (and a hit's unpack, later) is for ``actor``, who asked for the build.
    """
    for spec in imports:
        _import_one(engine, build_ref, spec, actor)


def import_caches_again(
    engine: Engine,
    build_ref: str,
    cache_imports: Sequence[Mapping[str, str]],
    frontend_attrs: Mapping[str, str],
    *,
    actor: str,
) -> list[str]:
    """A resumed build's imports, read again from its recorded options; the errors, if any.

    The offers of the process that died were held in its memory only: without this, the resumed
    solve would run the steps the import would have served. The imports are those the build was
    asked with (``SolveRequested.cache_imports``, and the frontend's ``cache-imports`` option that
    names them all again, counted once). A source that fails now is recorded (``CacheImported``
    with its error) and left out: the build was accepted, it goes on and runs those steps.
    """
    try:
        wanted = check_cache_options((), cache_imports, frontend_attrs).imports
    except InvalidInput as e:
        return [str(e)]
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    errors: list[str] = []
    for spec in wanted:
        key = (spec.type, tuple(sorted((k, v) for k, v in spec.attrs.items() if k != "type")))
        if key in seen:
            continue
        seen.add(key)
        try:
            _import_one(engine, build_ref, spec, actor)
        except Exception as e:  # whatever it was, the resumed build must go on (and end, recorded)
            errors.append(str(e) or type(e).__name__)
    return errors


@dataclass(slots=True, kw_only=True)
class _Offer:
    """An imported cache key's records (by output), unpacked only when a lookup hits it."""

    source: _Source
    spec: CacheImportSpec
    stream: str
    build_ref: str
    actor: str
    """Who asked for the import (the build's actor): the unpack is recorded for them."""
    records: dict[int, ImportRecord]
    outputs: dict[int, str] | None = None
    """Once unpacked: output -> snapshot (an empty dict: it failed, a miss from then on)."""


class LazyImports:
    """The solver's :class:`~buildsvc.solver.worker.RemoteCache`: imported records, unpacked when read.

    As BuildKit's importer: an import reads the cache config and offers its records; a lookup that
    misses locally takes an offered record's snapshot ids (:meth:`offered`) without its layers, and
    they are fetched, verified and unpacked (:meth:`materialize`) when something reads the result.
    The unpack is recorded in the import's stream (snapshots, ``CacheRecordAdded`` with
    ``source=import:<type>``, the cache's ref); a blob that fails its check is ``CacheImportMiss``
    there and the step runs. A hit's events are held (:meth:`flush`) until the build that took it
    appends next (the solver hands ``write_before``): an all-hit build of N steps costs one append
    for its hits, not N. Until they are written the offer stays and answers with its snapshots
    once they are (another solve that asks flushes them first); a miss is written at once.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._offers: dict[tuple[str, str], _Offer] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[_Offer, str, list[Event]]] = []
        """Hits not written yet: (offer, worker, events), in the order they were unpacked."""
        self._flush_lock = threading.Lock()
        self._ahead: UnpackAhead | None = None
        # One registry client per ``insecure`` setting for the engine's life: a client per hit
        # cost more than fetching a 10 MB layer (its TLS context alone).
        self._clients: dict[bool, RegistryClient] = {}
        self._client_scopes = contextlib.ExitStack()

    def client(self, insecure: bool) -> RegistryClient:
        """The registry client hits of an import with ``registry.insecure=insecure`` fetch with."""
        with self._lock:
            if insecure not in self._clients:
                self._clients[insecure] = self._client_scopes.enter_context(
                    client_for(self.engine.registry, insecure=insecure)
                )
            return self._clients[insecure]

    def offer(self, worker: str, offer: _Offer) -> None:
        """Make the records of one key findable (a later import of the same key replaces it)."""
        key = next(iter(offer.records.values())).key
        with self._lock:
            current = self._offers.get((worker, key))
            if current is None or current.outputs is not None:
                self._offers[(worker, key)] = offer

    def offered(self, cache_key: str, worker: SolverWorker) -> Mapping[int, str]:
        """The snapshots the offered result of ``cache_key`` has once unpacked (see the class doc)."""
        offer = self._offers.get((worker.info.name, cache_key))
        if offer is None:
            return {}
        if offer.outputs is not None:  # unpacked already (its events maybe held), or failed: {}
            return offer.outputs
        return {output: record.snapshot for output, record in offer.records.items()}

    def materialize(
        self,
        cache_key: str,
        worker: SolverWorker,
        build_ref: str,
        write_before: Callable[[Callable[[], None]], None] | None = None,
    ) -> Mapping[int, str]:
        """Unpack and record the offered result of ``cache_key`` (see the class doc).

        ``write_before`` (the build's ``write_before_appends``) is handed :meth:`flush`, and the
        hit's events wait for the build's next append; without it they are written before this returns.
        """
        offer = self._offers.get((worker.info.name, cache_key))
        if offer is None:
            return {}
        made_here = False
        with _unpacks.hold(f"materialize/{worker.info.name}/{cache_key}"):
            if offer.outputs is None:
                outputs, events = self._unpack(offer, worker)
                if outputs:
                    with self._lock:
                        self._pending.append((offer, worker.info.name, events))
                offer.outputs = outputs
                made_here = True
            outputs = offer.outputs
        if outputs:
            if write_before is not None and made_here:
                write_before(self.flush)
            else:
                # Unpacked by an earlier call (maybe another build's, held for its next append):
                # in the log before this caller records anything on it.
                self.flush()
        return outputs

    def flush(self) -> None:
        """Write the hits held back (one append per import stream and actor); raises the store's error
        (what was not written is kept for the next call). Once written, a hit's offer is withdrawn:
        the cache index answers for it.
        """
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            batches: dict[tuple[str, str], list[tuple[_Offer, str, list[Event]]]] = {}
            for item in pending:
                batches.setdefault((item[0].stream, item[0].actor), []).append(item)
            for n, ((stream, actor), items) in enumerate(batches.items()):
                events = [e for _, _, held in items for e in held]
                try:
                    self.engine.state.store.append(stream, events, actor=actor)
                except BaseException:
                    unwritten = [item for _, rest in list(batches.items())[n:] for item in rest]
                    with self._lock:
                        self._pending[:0] = unwritten
                    raise
                with self._lock:
                    for offer, worker_name, _ in items:
                        if self._offers.get((worker_name, offer_key(offer))) is offer:
                            del self._offers[(worker_name, offer_key(offer))]

    def _unpack(self, offer: _Offer, worker: SolverWorker) -> tuple[dict[int, str], list[Event]]:
        """The record's snapshots (output -> snapshot) and the events that record them, not written;
        a miss (no snapshots) is written here, with what was made removed.
        """
        events: list[Event] = []
        outputs: dict[int, str] = {}
        made: list[ImportLayer] = []  # the current record's new layers
        spec = offer.spec
        try:
            # Neither source writes to its ``work`` directory any more (a local blob is read in
            # place, a registry one goes to the content store or straight into its snapshot):
            # no temporary directory made and removed per hit.
            work = self.engine.state.root
            if isinstance(offer.source, RegistrySource):
                offer.source.client = self.client(spec.insecure)  # the import's own one is closed
            for output, record in sorted(offer.records.items()):
                # The chain's next layers are unpacked (local, plain tars: see cache_unpack_ahead),
                # or at least checked, while the one before them is unpacked.
                ahead = self._stage_ahead(offer.source, worker, record)
                made = []
                try:
                    _, size = _unpack_chain(worker, offer.source, record.layers, Path(work), made, ahead)
                finally:
                    # Layers committed before a later one of the chain failed are recorded too.
                    events.extend(_snapshot_events(worker, made))
                events.extend(_record_events(worker, record, offer.build_ref, spec, size))
                outputs[output] = record.snapshot
        except BuildsvcError as e:
            # The record is a miss, never a hit on a blob that failed its check. Records unpacked
            # before it stay (recorded, held by their cache records).
            events.append(
                ev.CacheImportMiss(build_ref=offer.build_ref, cache_key=offer_key(offer), error=str(e))
            )
            if self._ahead is not None:  # a record that missed: what was staged for it is not taken
                self._ahead.drop([layer.key for record in offer.records.values() for layer in record.layers])
            self.flush()  # the hits held back first: the log reads in the order things were made
            self.engine.state.store.append(offer.stream, events, actor=offer.actor)
            self._discard(worker, made, actor=offer.actor)
            return {}, []
        return outputs, events

    def _stage_ahead(self, source: _Source, worker: SolverWorker, record: ImportRecord) -> UnpackAhead | None:
        """Start unpacking ahead the layers of ``record``'s chain after the first missing one (the hit
        unpacks that one now); None when ``source`` and the worker do not allow it (then its blobs
        are hashed ahead instead).

        Only the record's own chain: hits are taken lazily, so a record is unpacked when something
        reads it (the top of a cached chain, at an export; the input of a step that runs), and the
        layers above it are not wanted then.
        """
        if not isinstance(source, LocalSource) or not isinstance(worker.snapshotter, _HasUpperDir):
            return None
        with self._lock:
            if self._ahead is None:
                self._ahead = UnpackAhead(self.engine.state.root)
            ahead = self._ahead
        own = [layer for layer in record.layers if not _committed(worker, layer.key)]
        ahead.stage(own[1:], lambda layer: source.store.blob_path(layer.blob))
        return ahead

    def _discard(self, worker: SolverWorker, layers: Sequence[ImportLayer], *, actor: str) -> None:
        """Remove the layers a failed record's unpack made (recorded, top first): no record holds them.

        One another import stacked on or holds meanwhile is refused (``Conflict``) and stays: it is
        referenced then.
        """
        for layer in reversed(layers):
            try:
                self.engine.remove_snapshot(
                    worker.info.name, layer.key, reason="cache import: a layer above it failed", actor=actor
                )
            except Conflict:
                continue


def offer_key(offer: _Offer) -> str:
    """The cache key an offer's records share."""
    return next(iter(offer.records.values())).key


_lazy_guard = threading.Lock()


def _lazy_imports(engine: Engine) -> LazyImports:
    """The engine's lazy imports, installed as the solver's remote cache on first use."""
    with _lazy_guard:
        current = engine.solver.remote_cache
        if isinstance(current, LazyImports):
            return current
        lazy = LazyImports(engine)
        engine.solver.remote_cache = lazy
        return lazy


def _import_one(engine: Engine, build_ref: str, spec: CacheImportSpec, actor: str) -> None:
    stream = f"cache-import-{uuid.uuid4().hex[:16]}"
    worker = engine.workers[0]
    lazy = _lazy_imports(engine)
    lazy.flush()  # hits held back are in the cache index before it is asked what it has
    with client_for(engine.registry, insecure=spec.insecure) as client:
        try:
            source: _Source
            if spec.type == "local":
                source = LocalSource(spec.src, tag=spec.tag, digest=spec.digest)
            else:
                source = RegistrySource(client, spec.ref, engine.images.content, digest=spec.digest)
        except BuildsvcError as e:
            _import_failed(engine, stream, build_ref, spec, str(e), actor=actor)
            if spec.ignore_error:
                return
            raise
    offered = matched = skipped = 0
    errors: list[str] = []
    by_key: dict[str, dict[int, ImportRecord]] = {}
    for record in source.records:
        if _has_record(engine, record, worker):
            matched += 1
            continue
        if isinstance(source, LocalSource):
            # A blob missing from the layout is known without reading it: a clear error now.
            try:
                for layer in record.layers:
                    source.check_present(layer.blob, layer.size)
            except BuildsvcError as e:
                errors.append(str(e))
                if not spec.ignore_error:
                    _import_failed(engine, stream, build_ref, spec, str(e), actor=actor)
                    raise
                skipped += 1
                continue
        by_key.setdefault(record.key, {})[record.output] = record
        offered += 1
    for records in by_key.values():
        lazy.offer(
            worker.name,
            _Offer(
                source=source, spec=spec, stream=stream, build_ref=build_ref, actor=actor, records=records
            ),
        )
    engine.state.store.append(
        stream,
        [
            ev.CacheImported(
                build_ref=build_ref,
                type=spec.type,
                attrs=dict(spec.attrs),
                manifest_digest=source.manifest_digest,
                records=offered,
                records_matched=matched,
                records_skipped=skipped,
                layers=0,
                bytes_read=source.bytes_read,
                error="; ".join(errors),
                offered=tuple(f"{key}#{output}" for key, records in by_key.items() for output in records),
            ),
        ],
        actor=actor,
    )


def _record_events(
    worker: SolverWorker, record: ImportRecord, build_ref: str, spec: CacheImportSpec, size: int
) -> list[Event]:
    return [
        ev.CacheRecordAdded(
            cache_key=record.key,
            vertex=record.vertex,
            snapshot_id=record.snapshot,
            output=record.output,
            worker=worker.info.name,
            build_ref=build_ref,
            source=f"import:{spec.type}",
            size_bytes=size,
        ),
        ev.RefAcquired(
            ref_id=f"ref-{uuid.uuid4().hex}",
            snapshot_id=record.snapshot,
            holder_kind="cache",
            holder_id=record.key,
            build_ref=build_ref,
        ),
    ]


def _import_failed(
    engine: Engine,
    stream: str,
    build_ref: str,
    spec: CacheImportSpec,
    error: str,
    *,
    actor: str,
) -> None:
    engine.state.store.append(
        stream,
        [ev.CacheImported(build_ref=build_ref, type=spec.type, attrs=dict(spec.attrs), error=error)],
        actor=actor,
    )


def _has_record(engine: Engine, record: ImportRecord, worker: Worker) -> bool:
    with engine.state.db.read() as conn:
        found = conn.execute(
            sa.select(cache_records.c.snapshot_id).where(
                cache_records.c.cache_key == record.key,
                cache_records.c.output == record.output,
                cache_records.c.worker == worker.name,
            )
        ).first()
    return found is not None


def _unpack_chain(
    worker: SolverWorker,
    source: _Source,
    chain: Sequence[ImportLayer],
    work: Path,
    made: list[ImportLayer],
    ahead: UnpackAhead | None = None,
) -> tuple[int, int]:
    """Unpack the layers of ``chain`` not yet on the worker, each appended to ``made`` once committed
    (so a caller sees them even when a later layer fails): (bytes read, blob bytes).
    """
    moved = 0
    for n, layer in enumerate(chain):
        with _unpacks.hold(f"{worker.info.name}/{layer.key}"):
            if _committed(worker, layer.key):
                if ahead is not None:
                    ahead.drop([layer.key])  # made meanwhile (another import's hit)
                continue
            # Keep the next ones unpacking (or their blobs hashing) while this one is unpacked:
            # each once, a few ahead.
            following = [x for x in chain[n + 1 : n + 1 + _AHEAD] if not _committed(worker, x.key)]
            if ahead is not None and isinstance(source, LocalSource):
                ahead.stage(following, lambda x: source.store.blob_path(x.blob))
            else:
                source.prefetch(following)
            moved += _unpack_from(worker, source, layer, work, ahead)
            made.append(layer)
    return moved, sum(layer.size for layer in chain)


def _unpack_from(
    worker: SolverWorker, source: _Source, layer: ImportLayer, work: Path, ahead: UnpackAhead | None = None
) -> int:
    """Unpack one layer from ``source`` as snapshot ``layer.key``: the bytes read for it."""
    staged = ahead.take(layer) if ahead is not None else None
    if staged is not None:
        # Unpacked and verified ahead: its entries are moved in. Should that fail (another
        # filesystem...), the half-filled snapshot is gone and the layer is unpacked as usual.
        try:
            _unpack_layer(worker, layer, move_staged(staged))
            return layer.size
        except OSError as e:
            if e.errno == errno.EXDEV and ahead is not None:
                ahead.usable = False  # the snapshots are on another filesystem: stage no more
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    try:
        if isinstance(source, RegistrySource) and not source.content.has(layer.blob):
            # Straight from the download into the snapshot: the bytes are written once. A download
            # that breaks off leaves nothing (its snapshot is discarded) and is fetched again below,
            # with the client's retries.
            try:
                fill = functools.partial(source.unpack_streamed, layer.blob, layer.size, layer.diff_id)
                _unpack_layer(worker, layer, fill)
                return layer.size
            except RegistryError as e:
                if e.status is not None:
                    raise  # the registry said no: asking again would hear the same
        blob = source.blob(layer.blob, layer.size, work, layer.diff_id)
        verified = blob.verified and layer.blob == layer.diff_id
        _unpack_layer(worker, layer, _from_file(layer, blob.path, verified), changed=blob.changed)
        return blob.read
    except (DigestMismatch, InvalidImage) as e:
        # The unpack was the blob's digest check (a download hashed as it was unpacked, or a plain
        # tar read in place, see LocalSource.blob): it failed, the layer was discarded, and the
        # blob is what is wrong.
        raise CacheConfigError(str(source.where), f"layer blob {layer.blob} is corrupt ({e})") from e


def _from_file(layer: ImportLayer, blob: Path, verified: bool) -> Callable[[str, WhiteoutMode], None]:
    """Fill a snapshot directory from a blob file; ``verified``: hashed to its digest already, so a
    plain tar is not hashed again.
    """

    def fill(target: str, mode: WhiteoutMode) -> None:
        apply_layer(
            str(blob),
            target,
            mode=mode,
            layer=layer.blob,
            expected_diff_id=layer.diff_id,
            verified_diff_id=layer.diff_id if verified else None,
        )

    return fill


def _committed(worker: SolverWorker, key: str) -> bool:
    try:
        info = worker.snapshotter.stat(key)
    except NotFound:
        return False
    return info.kind is SnapshotKind.COMMITTED


@runtime_checkable
class _HasUpperDir(Protocol):
    """A snapshotter that says where an active snapshot's writes land (the overlay one)."""

    def upper_dir(self, key: str) -> str: ...


def _unpack_layer(
    worker: SolverWorker,
    layer: ImportLayer,
    fill: Callable[[str, WhiteoutMode], None],
    *,
    changed: Callable[[], bool] = lambda: False,
) -> None:
    """Unpack one layer as snapshot ``layer.key`` with ``fill`` (directory, whiteout mode);
    ``changed`` is asked before it is committed. Whatever ``fill`` raises, the snapshot is discarded.
    """
    snapshotter = worker.snapshotter
    active = f"{layer.key}.import-{uuid.uuid4().hex[:12]}"
    snapshotter.prepare(active, layer.parent)
    try:
        if isinstance(snapshotter, _HasUpperDir):
            # Straight into the upper directory, no mount: overlay whiteouts over a parent; a
            # bottom layer has nothing below to hide, so its whiteouts are carried out instead.
            fill(snapshotter.upper_dir(active), WhiteoutMode.OVERLAY if layer.parent else WhiteoutMode.DELETE)
        else:
            target = snapshotter.mount(active)
            try:
                fill(target.path, WhiteoutMode.DELETE)
            finally:
                snapshotter.unmount(active)
        if changed():
            raise CacheConfigError(layer.blob, f"layer blob {layer.blob} changed while it was unpacked")
        try:
            snapshotter.commit(layer.key, active)
        except Conflict:
            if not _committed(worker, layer.key):
                raise
            snapshotter.remove(active)
    except BaseException:
        with contextlib.suppress(NotFound):
            snapshotter.remove(active)
        raise


def _snapshot_events(worker: SolverWorker, made: Sequence[ImportLayer]) -> list[Event]:
    events: list[Event] = []
    for layer in made:
        # Content-addressed layers are made, then recorded (as image layers): remaking one is harmless.
        events.append(
            ev.SnapshotCreated(
                snapshot_id=layer.key,
                worker=worker.info.name,
                snapshotter=worker.snapshotter.name,
                parent=layer.parent,
                kind="committed",
            )
        )
        events.append(ev.SnapshotCommitted(snapshot_id=layer.key, size_bytes=layer.size, parent=layer.parent))
    return events


# --- export ---------------------------------------------------------------------------------------


def export_caches(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    definition: Definition,
    exports: Sequence[CacheExportSpec],
    *,
    exporter_response: Mapping[str, str] | None = None,
    actor: str,
) -> dict[str, str]:
    """Run each export (see the module doc); returns ``cache.export.<n>.digest`` keys for the response.
    What it records is for ``actor``, who asked for the build.

    An inline export was written by the image exporter (see :func:`inline_cache_for`); here it is
    recorded, with the image's manifest digest from ``exporter_response``.
    """
    # What is still queued to be made ahead is made by the export now, with both cores.
    watch_cache_exports(engine).finish(build_ref)
    response: dict[str, str] = {}
    for n, spec in enumerate(exports):
        digest = _export_one(engine, result, build_ref, definition, spec, exporter_response or {}, actor)
        if digest:
            response[f"cache.export.{n}.digest"] = digest
    return response


def _export_one(
    engine: Engine,
    result: ResultRef | None,
    build_ref: str,
    definition: Definition,
    spec: CacheExportSpec,
    exporter_response: Mapping[str, str],
    actor: str,
) -> str:
    export_id = uuid.uuid4().hex[:16]
    stream = f"build-{build_ref}"

    def record(event: Event) -> None:
        engine.state.store.append(stream, [event], actor=actor)

    record(
        ev.CacheExportStarted(
            build_ref=build_ref, export_id=export_id, type=spec.type, attrs=dict(spec.attrs), mode=spec.mode
        )
    )
    try:
        if spec.type == "inline":
            image_digest = exporter_response.get("containerimage.digest", "")
            if not image_digest:
                raise InvalidInput(
                    "export-cache type=inline: no image output carried it "
                    "(add --output type=image,... or type=oci,...)"
                )
            has_result = inline_cache_for(result, definition, [spec]) is not None
            record(_inline_completed(build_ref, export_id, image_digest, has_result))
            return image_digest
        records = []
        if result is not None and result.snapshot_id is not None and definition.output is not None:
            steps = {
                digest: Step(
                    vertex=digest,
                    key=key,
                    outputs=outputs,
                    inputs=tuple((e.digest, e.index) for e in definition.vertices[digest].inputs),
                )
                for digest, (key, outputs) in result.steps.items()
            }
            records = plan_records(steps, (definition.output.digest, definition.output.index), spec.mode)
        worker: SolverWorker = result.worker if result is not None else engine.workers[0]
        layers = _LayerCache(engine, worker, build_ref, spec, actor)
        with client_for(engine.registry, insecure=spec.insecure) as client:
            target = (
                # Linked, not copied: _LayerCache notices a blob changed in place (its mtime).
                LocalTarget(spec.dest, spec.tag, link_blobs=True)
                if spec.type == "local"
                else RegistryTarget(client, spec.ref)
            )
            summary = write_cache(
                records,
                layers.parent_of,
                layers.layer_of,
                target,
                oci=spec.oci_mediatypes,
                image_manifest=spec.image_manifest,
            )
    except BaseException as e:
        record(
            ev.CacheExportFailed(
                build_ref=build_ref,
                export_id=export_id,
                error=str(e) or type(e).__name__,
                ignored=spec.ignore_error,
            )
        )
        if spec.ignore_error and isinstance(e, Exception):
            return ""
        raise
    record(
        ev.CacheExportCompleted(
            build_ref=build_ref,
            export_id=export_id,
            manifest_digest=summary.manifest_digest,
            records=summary.records,
            layers=summary.layers,
            layers_written=summary.layers_written,
            bytes_written=summary.bytes_written,
        )
    )
    return summary.manifest_digest


def _inline_completed(build_ref: str, export_id: str, image_digest: str, has_result: bool) -> Event:
    return ev.CacheExportCompleted(
        build_ref=build_ref,
        export_id=export_id,
        manifest_digest=image_digest,
        records=1 if has_result else 0,
        layers=0,  # the image's own layers: the image exporter wrote and recorded them
        layers_written=0,
        bytes_written=0,
    )


class _LayerCache:
    """Each committed snapshot's layer blob, written once per format and reused after.

    The blobs live in the root's layer store (:mod:`buildsvc.cache.layer_store`), which trusts one
    only while its snapshot is the one it was made from; those made while the build ran
    (:func:`watch_cache_exports`) are taken as they are, one being made is waited for.
    """

    def __init__(
        self, engine: Engine, worker: SolverWorker, build_ref: str, spec: CacheExportSpec, actor: str
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.build_ref = build_ref
        self.actor = actor
        self.format = _format_of(spec)
        self.store = _layer_store(engine)

    def parent_of(self, snapshot: str) -> str | None:
        return self.worker.snapshotter.stat(snapshot).parent

    @contextlib.contextmanager
    def _changed_files(self, snapshot: str) -> Iterator[Path | None]:
        """A directory holding every file ``snapshot`` adds or changes, at its path.

        An overlay layer's own directory is that (copy-up copies whole files), read unmounted; the
        solve holding the result keeps it and its parents. Other snapshotters: a mounted view.
        """
        snapshotter = self.worker.snapshotter
        if isinstance(snapshotter, _HasUpperDir):
            yield Path(snapshotter.upper_dir(snapshot))
            return
        view = ResultRef(worker=self.worker, snapshot_id=snapshot, cache_key="")
        with self.engine.view(view, self.build_ref, self.actor) as root:
            yield root

    def layer_of(self, snapshot: str) -> LayerBlob:
        snapshotter = self.worker.snapshotter

        def make(dest: Path) -> LayerBlob:
            changes = snapshotter.changes(snapshot)
            with self._changed_files(snapshot) as root:
                return _write(root, changes, dest, self.format)

        return self.store.get(snapshot, self.format, lambda: _identity(snapshotter, snapshot), make)


def _format_of(spec: CacheExportSpec) -> LayerFormat:
    return LayerFormat(spec.compression, spec.compression_level, spec.oci_mediatypes)


def _layer_store(engine: Engine) -> LayerStore:
    return LayerStore(engine.state.root / "cache" / "layers")


def _write(root: Path | None, changes: Sequence[Change], dest: Path, fmt: LayerFormat) -> LayerBlob:
    return write_layer(root, changes, dest, compression=fmt.compression, level=fmt.level, oci=fmt.oci)


def _identity(snapshotter: Snapshotter, snapshot: str) -> Identity:
    """What tells this committed snapshot from another one under its key: on overlay, its layer
    directory (path, inode, times: a key removed and made again, or a layer written to, differs).
    """
    info = snapshotter.stat(snapshot)
    if not isinstance(snapshotter, _HasUpperDir):
        return (info.kind.value, info.parent)
    path = snapshotter.upper_dir(snapshot)
    st = os.stat(path)
    return (info.kind.value, info.parent, path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


# --- layers made while the build runs -------------------------------------------------------------

_watchers: weakref.WeakKeyDictionary[SqlEventStore, LayersAhead] = weakref.WeakKeyDictionary()
_watchers_guard = threading.Lock()


def watch_cache_exports(engine: Engine) -> LayersAhead:
    """Make the layers of solves that ask for a cache export as their steps commit (once per store).

    Called before the first solve that may export a cache records its request: by the daemon as it
    starts serving, by an embedded build or gateway that names a cache export. Only overlay results
    are made ahead: other snapshotters' layers are read through a mounted view, which is recorded,
    so they are left to the export.
    """
    store = engine.state.store
    with _watchers_guard:
        ahead = _watchers.get(store)
        if ahead is None:
            ahead = LayersAhead(_make_ahead(engine.workers, _layer_store(engine)))
            store.add_hook(ahead.hook)
            store.on_commit(ahead.committed)
            _watchers[store] = ahead
        return ahead


def _make_ahead(workers: Sequence[Worker], store: LayerStore) -> Callable[[str, str, LayerFormat], None]:
    # No reference to the engine or the store: the watcher lives as long as the store's hooks do.
    by_name = {w.name: w for w in workers}

    def make(worker_name: str, snapshot: str, fmt: LayerFormat) -> None:
        worker = by_name.get(worker_name)
        if worker is None:
            return
        snapshotter = worker.snapshotter
        if not isinstance(snapshotter, _HasUpperDir):
            return
        upper = snapshotter

        def write(dest: Path) -> LayerBlob:
            return _write(Path(upper.upper_dir(snapshot)), snapshotter.changes(snapshot), dest, fmt)

        store.get(snapshot, fmt, lambda: _identity(snapshotter, snapshot), write)

    return make
