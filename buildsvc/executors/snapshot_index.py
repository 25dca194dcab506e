"""The on-disk index of a snapshotter: which snapshot keys exist, their kind, parent and directory.

Under the snapshotter's root::

    snapshots/<n>/       the files of snapshot number n (the snapshotter's business)
    metadata/<n>.json    {"key", "kind", "parent"} of snapshot n
    mounts/<n>           where snapshot n is mounted when it needs a kernel mount

Each snapshot has its own small metadata file, so an operation writes one file however many
snapshots there are. The file is one fixed-size record (the JSON padded with spaces to
``_RECORD_SIZE`` bytes), written by a single ``pwrite`` at offset 0: a killed process has either
made that write or not, never half of it (a regular file's write of less than a page is not cut
short by a signal, and a 512-byte record is within one disk sector). A commit rewrites the record in
place rather than renaming a temp file over it, because on this kind of disk the rename frees an
inode per commit, and ext4 without a journal skips every inode freed in the last ~30 s when it
allocates the next one: with a thousand commits a minute each new file, directory and snapshot
scanned past them (a third of a cold file-op solve's system time):

* a prepare is published by the write that fills ``metadata/<n>.json``: a crash before it leaves a
  directory under ``snapshots/`` that no metadata names (or an empty file), removed on open;
* a commit changes only the key and kind, in the same record: one write, all or nothing, and
  directories never need renaming;
* a remove unlinks the metadata before removing the directory: a crash in between leaves an orphan
  directory, removed on open.

Durability: the event log is the truth, not this index. Creating and committing snapshots write
their file without fsync (two fsyncs per file were most of a file-op step's time). What a machine
crash (power loss, not a killed process, whose writes the kernel keeps) can then leave is repaired
on open or against the log, never guessed: a file that was never flushed (missing, empty, or only
zeros) leaves
its directory an orphan, removed on open; a commit whose rename was lost leaves the snapshot active
under its old key, which the log says was committed (so the daemon's recovery removes it as
untracked) while the committed key is missing (the solver then treats its results as not cached,
invariant 3); an unlink that was lost brings back a snapshot the log says was removed (removed
again by recovery); of two files naming one key (a key removed and made again), the newer number
wins. One case is kept durable: the removal of a *committed* snapshot is fsynced before its data is
deleted, so a crash can never bring back a snapshot whose files are half gone; views and
uncommitted actives hold nothing anyone reads once the step is over.

The directory fsync of such a removal is shared: a thread that needs one after its own change joins
a sync that starts after that change (``_DirectorySync``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from buildsvc.errors import BuildsvcError
from buildsvc.executors.errors import (
    InvalidSnapshotKey,
    SnapshotExists,
    SnapshotInUse,
    SnapshotNotFound,
    SnapshotStateError,
)
from buildsvc.solver.worker import SnapshotInfo, SnapshotKind

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_META_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"  # temp files of earlier versions, which renamed one over each record
_RECORD_SIZE = 512
# The single index file of earlier versions, converted to metadata files on open.
_LEGACY_INDEX = "index.json"
# Per-key locks are striped: a bounded set whatever the number of keys. Two keys sharing a stripe
# only serialize with each other; no operation holds two key locks, so sharing cannot deadlock.
_KEY_LOCK_STRIPES = 64


class CorruptSnapshotMetadata(BuildsvcError):
    """A metadata file cannot be read: it was damaged outside buildsvc (writes are atomic)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"snapshot metadata {path} is unreadable: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntry:
    """One snapshot: its public info and the number naming its directory."""

    info: SnapshotInfo
    dir_id: int


class SnapshotIndex:
    """Thread-safe index of one snapshotter's snapshots under ``root``."""

    def __init__(self, root: str) -> None:
        """Open (or create) the index under ``root`` and drop what a crash left half-made."""
        self.root = os.path.abspath(root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        self.mounts_dir = os.path.join(self.root, "mounts")
        self.metadata_dir = os.path.join(self.root, "metadata")
        for d in (self.snapshots_dir, self.mounts_dir, self.metadata_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._metadata_sync = _DirectorySync(self.metadata_dir)
        self._key_locks = tuple(threading.Lock() for _ in range(_KEY_LOCK_STRIPES))
        self._entries: dict[str, IndexEntry] = {}
        # Keys with a file being written or unlinked: taken, though not (or no longer) in _entries.
        self._reserved: set[str] = set()
        # Parent key -> keys of the snapshots on it, including ones still being created.
        self._children: dict[str, set[str]] = {}
        self._migrate_legacy_index()
        self._load()
        self._next_id = self._first_free_id()
        self._remove_orphans()

    def key_lock(self, key: str) -> threading.Lock:
        """The lock serializing operations on snapshot ``key`` (hold it across check and change)."""
        return self._key_locks[hash(key) % _KEY_LOCK_STRIPES]

    def get(self, key: str) -> IndexEntry:
        """The entry for ``key``, or ``SnapshotNotFound``."""
        with self._lock:
            return self._get(key)

    def require(self, key: str, kind: SnapshotKind, operation: str) -> IndexEntry:
        """The entry for ``key``, which must be of ``kind`` to allow ``operation``."""
        with self._lock:
            return self._require(key, kind, operation)

    def all(self) -> list[SnapshotInfo]:
        """Every snapshot, sorted by key."""
        with self._lock:
            return [self._entries[k].info for k in sorted(self._entries)]

    def children(self, key: str) -> list[str]:
        """Keys of the snapshots whose parent is ``key`` (including ones being created)."""
        with self._lock:
            return sorted(self._children.get(key, ()))

    def chain(self, key: str) -> list[IndexEntry]:
        """``key`` and its ancestors, newest first."""
        out = []
        current: str | None = key
        with self._lock:
            while current is not None:
                entry = self._get(current)
                out.append(entry)
                current = entry.info.parent
        return out

    @contextmanager
    def create(self, info: SnapshotInfo) -> Iterator[str]:
        """Create snapshot ``info`` on its committed parent: yields its new, empty directory for the
        caller to fill, then records it. If the block raises, the directory is removed and the key
        freed. While the block runs the key is taken and the parent cannot be removed.
        """
        key, parent = info.key, info.parent
        with self._lock:
            if parent is not None:
                self._require(parent, SnapshotKind.COMMITTED, "make a snapshot on")
            check_key(key)
            if key in self._entries or key in self._reserved:
                raise SnapshotExists(key)
            self._reserved.add(key)
            if parent is not None:
                self._children.setdefault(parent, set()).add(key)
            dir_id = self._next_id
            self._next_id += 1
        path = self.dir_of(dir_id)
        try:
            os.mkdir(path, 0o700)
            yield path
            self._write_metadata(dir_id, info)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            # Only there if the rename succeeded and the directory fsync failed.
            with suppress(FileNotFoundError):
                os.unlink(self._metadata_path(dir_id))
            with self._lock:
                self._reserved.discard(key)
                if parent is not None:
                    self._unlink_child(parent, key)
            raise
        with self._lock:
            self._reserved.discard(key)
            self._entries[key] = IndexEntry(info=info, dir_id=dir_id)

    def rekey(self, old: str, info: SnapshotInfo) -> None:
        """Replace entry ``old`` by ``info`` (same directory, same parent): how a commit is recorded.

        The caller holds ``key_lock(old)``.
        """
        with self._lock:
            entry = self._get(old)
            if info.key in self._entries or info.key in self._reserved:
                raise SnapshotExists(info.key)
            self._reserved.add(info.key)
        try:
            self._write_metadata(entry.dir_id, info)
        except BaseException:
            with self._lock:
                self._reserved.discard(info.key)
            raise
        with self._lock:
            self._reserved.discard(info.key)
            del self._entries[old]
            self._entries[info.key] = IndexEntry(info=info, dir_id=entry.dir_id)
            if info.parent is not None:
                self._unlink_child(info.parent, old)
                self._children.setdefault(info.parent, set()).add(info.key)

    def delete(self, key: str) -> None:
        """Forget ``key`` (first), then remove its directory: a crash in between leaves an orphan.

        The caller holds ``key_lock(key)`` and has checked it is not mounted; the check for children
        is made here, with the removal, so that none can be created in between.
        """
        with self._lock:
            entry = self._get(key)
            children = self._children.get(key)
            if children:
                raise SnapshotInUse(key, sorted(children), mounted=False)
            del self._entries[key]
            self._reserved.add(key)
        metadata = self._metadata_path(entry.dir_id)
        try:
            os.unlink(metadata)
            if entry.info.kind is SnapshotKind.COMMITTED:
                # Durably forgotten before its data goes: never back, half deleted, after a crash.
                self._sync_metadata_dir()
        except BaseException:
            with self._lock:
                self._reserved.discard(key)
                if os.path.exists(metadata):
                    # The unlink itself failed: the snapshot is still there, and still a child.
                    self._entries[key] = entry
                elif entry.info.parent is not None:
                    self._unlink_child(entry.info.parent, key)
            raise
        with self._lock:
            self._reserved.discard(key)
            if entry.info.parent is not None:
                self._unlink_child(entry.info.parent, key)
        shutil.rmtree(self.dir_of(entry.dir_id), ignore_errors=True)

    def dir_of(self, dir_id: int) -> str:
        """The directory holding snapshot number ``dir_id``."""
        return os.path.join(self.snapshots_dir, str(dir_id))

    def mount_point(self, entry: IndexEntry) -> str:
        """Where ``entry`` is mounted when it needs a kernel mount."""
        return os.path.join(self.mounts_dir, str(entry.dir_id))

    # --- in memory (callers hold self._lock) -------------------------------------------------------

    def _get(self, key: str) -> IndexEntry:
        try:
            return self._entries[check_key(key)]
        except KeyError:
            raise SnapshotNotFound(key) from None

    def _require(self, key: str, kind: SnapshotKind, operation: str) -> IndexEntry:
        entry = self._get(key)
        if entry.info.kind is not kind:
            raise SnapshotStateError(key, entry.info.kind.value, operation)
        return entry

    def _unlink_child(self, parent: str, key: str) -> None:
        siblings = self._children.get(parent)
        if siblings is not None:
            siblings.discard(key)
            if not siblings:
                del self._children[parent]

    # --- on disk -----------------------------------------------------------------------------------

    def _metadata_path(self, dir_id: int) -> str:
        return os.path.join(self.metadata_dir, f"{dir_id}{_META_SUFFIX}")

    def _write_metadata(self, dir_id: int, info: SnapshotInfo) -> None:
        # Only one thread writes a given snapshot's file at a time (its creator, or the holder of
        # its key lock). One pwrite of a whole record, in place (see the module's docstring); no
        # fsync: the log is the durable record, and open repairs what a machine crash left.
        fd = os.open(self._metadata_path(dir_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, _record(info), 0)
        finally:
            os.close(fd)

    def _sync_metadata_dir(self) -> None:
        # Makes the rename (or unlink) itself durable, not only the file's content.
        self._metadata_sync.sync()

    def _load(self) -> None:
        for name in os.listdir(self.metadata_dir):
            path = os.path.join(self.metadata_dir, name)
            if name.endswith(_TMP_SUFFIX):
                # An earlier version's, half-written by a crash before its rename: the change it
                # held never happened.
                os.unlink(path)
                continue
            stem = name.removesuffix(_META_SUFFIX)
            if stem == name or not stem.isdigit():
                continue
            raw = _read_bytes(path)
            if not raw.strip(b"\0 "):
                # A file a machine crash caught before its data was flushed (files are written
                # without fsync: empty, or zeros): never published. Its directory is removed as an
                # orphan.
                os.unlink(path)
                continue
            info = _parse_metadata(path, raw)
            dir_id = int(stem)
            earlier = self._entries.get(info.key)
            if earlier is not None:
                # A key removed and made again, whose unlink a machine crash undid: numbers only
                # grow, so the higher one is the newer; the other is dropped as an orphan.
                older = min(dir_id, earlier.dir_id)
                os.unlink(self._metadata_path(older))
                if older == dir_id:
                    continue
            self._entries[info.key] = IndexEntry(info=info, dir_id=dir_id)
        for key, entry in self._entries.items():
            if entry.info.parent is not None:
                self._children.setdefault(entry.info.parent, set()).add(key)

    def _first_free_id(self) -> int:
        # Above every number in use anywhere, mount points included: a number is never reused
        # while anything of an earlier snapshot of that number (a leftover mount) may remain.
        used = [0]
        for d in (self.snapshots_dir, self.mounts_dir):
            used += [int(n) for n in os.listdir(d) if n.isdigit()]
        used += [e.dir_id for e in self._entries.values()]
        return max(used) + 1

    def _remove_orphans(self) -> None:
        known = {str(e.dir_id) for e in self._entries.values()}
        for name in os.listdir(self.snapshots_dir):
            if name not in known:
                shutil.rmtree(os.path.join(self.snapshots_dir, name), ignore_errors=True)

    def _migrate_legacy_index(self) -> None:
        # Write one file per entry, then drop index.json: a crash in between redoes it all on the
        # next open (the files written are the same), so the entries are never lost nor doubled.
        legacy = os.path.join(self.root, _LEGACY_INDEX)
        try:
            with open(legacy, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except ValueError as e:
            raise CorruptSnapshotMetadata(legacy, str(e)) from e
        for raw in data["snapshots"]:
            info = SnapshotInfo(key=raw["key"], kind=SnapshotKind(raw["kind"]), parent=raw["parent"])
            self._write_metadata(int(raw["dir_id"]), info)
        os.unlink(legacy)
        with suppress(FileNotFoundError):
            os.unlink(legacy + _TMP_SUFFIX)


class _DirectorySync:
    """fsync of one directory, shared by the threads that ask for it at the same time.

    A caller's change (rename, unlink) is done before it calls :meth:`sync`; an fsync that *starts*
    after the call covers it. So a caller takes a ticket; if an fsync is running it waits for it to
    end and, unless a later one already covered its ticket, one of the waiters starts the next fsync
    for all of them. A failed fsync fails every caller it was meant to cover.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._issued = 0  # tickets handed out
        self._covered = 0  # every ticket up to this one is durable
        self._running = False
        self._failures: dict[int, BaseException] = {}  # last ticket of a failed fsync -> its error

    def sync(self) -> None:
        """Return once an fsync that started after this call has completed (or raise its error)."""
        with self._cond:
            self._issued += 1
            ticket = self._issued
            while True:
                if self._covered >= ticket:
                    return
                failed = next((e for last, e in self._failures.items() if last >= ticket), None)
                if failed is not None:
                    raise failed
                if not self._running:
                    break
                self._cond.wait()
            self._running = True
            upto = self._issued
            covered_before = self._covered
        error: BaseException | None = None
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as e:
            error = e
        with self._cond:
            self._running = False
            if error is None:
                self._covered = max(self._covered, upto)
            else:
                # Only the tickets this fsync was for fail; later ones get a new try.
                self._failures = {k: v for k, v in self._failures.items() if k > covered_before}
                self._failures[upto] = error
            self._cond.notify_all()
        if error is not None:
            raise error


def _record(info: SnapshotInfo) -> bytes:
    """``info`` as one metadata record: its JSON padded with spaces to ``_RECORD_SIZE`` bytes.

    Every record has that size, so a rewrite in place covers all of the one before (an earlier
    version's unpadded file is shorter still). Two keys of at most 200 plain characters fit.
    """
    data = json.dumps({"key": check_key(info.key), "kind": info.kind.value, "parent": info.parent}).encode()
    if len(data) > _RECORD_SIZE:
        raise ValueError(f"snapshot metadata of {len(data)} bytes does not fit a {_RECORD_SIZE}-byte record")
    return data.ljust(_RECORD_SIZE)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CorruptSnapshotMetadata(path, str(e)) from e


def _parse_metadata(path: str, data: bytes) -> SnapshotInfo:
    try:
        raw: Any = json.loads(data)
        key, kind, parent = raw["key"], SnapshotKind(raw["kind"]), raw["parent"]
        if not isinstance(key, str) or not (parent is None or isinstance(parent, str)):
            raise ValueError("key and parent must be strings")
        check_key(key)
    except (OSError, ValueError, TypeError, KeyError, InvalidSnapshotKey) as e:
        raise CorruptSnapshotMetadata(path, str(e) or type(e).__name__) from e
    return SnapshotInfo(key=key, kind=kind, parent=parent)


def check_key(key: str) -> str:
    """Return ``key`` if it can name a snapshot, else raise ``InvalidSnapshotKey``."""
    if not _KEY.match(key):
        raise InvalidSnapshotKey(key)
    return key
