"""The on-disk index of a snapshotter: which snapshot keys exist, their kind, parent and directory.

One JSON file replaced atomically (write, fsync, rename), so a commit (which only changes an
entry's kind and key) is all-or-nothing, and directories never need renaming. A directory under
``snapshots/`` that the index does not name was left by a crash mid-prepare and is removed on open.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from buildsvc.executors.errors import (
    InvalidSnapshotKey,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotStateError,
)
from buildsvc.solver.worker import SnapshotInfo, SnapshotKind

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntry:
    """One snapshot: its public info and the number naming its directory."""

    info: SnapshotInfo
    dir_id: int


class SnapshotIndex:
    """Thread-safe index of one snapshotter's snapshots under ``root``."""

    def __init__(self, root: str) -> None:
        """Open (or create) the index under ``root`` and drop directories it does not name."""
        self.root = os.path.abspath(root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        self.mounts_dir = os.path.join(self.root, "mounts")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.mounts_dir, mode=0o700, exist_ok=True)
        self._path = os.path.join(self.root, "index.json")
        self._lock = threading.RLock()
        self._entries: dict[str, IndexEntry] = {}
        self._next_id = 1
        self._load()
        self._remove_orphans()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index lock across a check and the change it guards."""
        with self._lock:
            yield

    def get(self, key: str) -> IndexEntry:
        """The entry for ``key``, or ``SnapshotNotFound``."""
        with self._lock:
            try:
                return self._entries[check_key(key)]
            except KeyError:
                raise SnapshotNotFound(key) from None

    def require(self, key: str, kind: SnapshotKind, operation: str) -> IndexEntry:
        """The entry for ``key``, which must be of ``kind`` to allow ``operation``."""
        entry = self.get(key)
        if entry.info.kind is not kind:
            raise SnapshotStateError(key, entry.info.kind.value, operation)
        return entry

    def all(self) -> list[SnapshotInfo]:
        """Every snapshot, sorted by key."""
        with self._lock:
            return [self._entries[k].info for k in sorted(self._entries)]

    def children(self, key: str) -> list[str]:
        """Keys of the snapshots whose parent is ``key``."""
        with self._lock:
            return sorted(k for k, e in self._entries.items() if e.info.parent == key)

    def chain(self, key: str) -> list[IndexEntry]:
        """``key`` and its ancestors, newest first."""
        out = []
        current: str | None = key
        while current is not None:
            entry = self.get(current)
            out.append(entry)
            current = entry.info.parent
        return out

    def new_dir(self, key: str) -> tuple[int, str]:
        """Reserve a directory for a new snapshot ``key``; the caller fills it, then ``add``s."""
        with self._lock:
            check_key(key)
            if key in self._entries:
                raise SnapshotExists(key)
            dir_id = self._next_id
            self._next_id += 1
            path = self.dir_of(dir_id)
            os.makedirs(path, mode=0o700)
            return dir_id, path

    def add(self, info: SnapshotInfo, dir_id: int) -> None:
        """Record a snapshot whose directory is ready."""
        with self._lock:
            if info.key in self._entries:
                raise SnapshotExists(info.key)
            self._entries[info.key] = IndexEntry(info=info, dir_id=dir_id)
            self._save()

    def rekey(self, old: str, info: SnapshotInfo) -> None:
        """Replace entry ``old`` by ``info`` (same directory): how a commit is recorded."""
        with self._lock:
            if info.key in self._entries:
                raise SnapshotExists(info.key)
            entry = self._entries.pop(old)
            self._entries[info.key] = IndexEntry(info=info, dir_id=entry.dir_id)
            self._save()

    def delete(self, key: str) -> None:
        """Forget ``key`` (first), then remove its directory: a crash in between leaves an orphan."""
        with self._lock:
            entry = self._entries.pop(key)
            self._save()
            shutil.rmtree(self.dir_of(entry.dir_id), ignore_errors=True)

    def dir_of(self, dir_id: int) -> str:
        """The directory holding snapshot number ``dir_id``."""
        return os.path.join(self.snapshots_dir, str(dir_id))

    def mount_point(self, entry: IndexEntry) -> str:
        """Where ``entry`` is mounted when it needs a kernel mount."""
        return os.path.join(self.mounts_dir, str(entry.dir_id))

    def _load(self) -> None:
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        self._next_id = int(data["next_id"])
        for raw in data["snapshots"]:
            info = SnapshotInfo(key=raw["key"], kind=SnapshotKind(raw["kind"]), parent=raw["parent"])
            self._entries[info.key] = IndexEntry(info=info, dir_id=int(raw["dir_id"]))

    def _save(self) -> None:
        data = {
            "next_id": self._next_id,
            "snapshots": [
                {"key": e.info.key, "kind": e.info.kind.value, "parent": e.info.parent, "dir_id": e.dir_id}
                for e in self._entries.values()
            ],
        }
        tmp = self._path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def _remove_orphans(self) -> None:
        known = {str(e.dir_id) for e in self._entries.values()}
        for name in os.listdir(self.snapshots_dir):
            if name not in known:
                shutil.rmtree(os.path.join(self.snapshots_dir, name), ignore_errors=True)


def check_key(key: str) -> str:
    """Return ``key`` if it can name a snapshot, else raise ``InvalidSnapshotKey``."""
    if not _KEY.match(key):
        raise InvalidSnapshotKey(key)
    return key
