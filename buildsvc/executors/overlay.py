"""``OverlaySnapshotter``: snapshots as overlayfs layers, as containerd's overlay snapshotter.

Each snapshot owns ``snapshots/<n>/fs``. A committed snapshot's ``fs`` is a layer; an active one's
``fs`` is the overlay upper directory (with ``work`` beside it) over the parent chain as lowerdirs,
newest first. Committing only changes the index: the upper directory, whiteouts included, becomes a
layer in place. An active snapshot with no parent has no lower to stack: it is used in place, its
``fs`` directly, with no kernel mount (as the native snapshotter's actives); a view is a read-only
overlay of its parent's chain (a read-only bind when the chain is one layer).
"""

from __future__ import annotations

import builtins
import os

from buildsvc.executors import mounts
from buildsvc.executors.changes import overlay_changes
from buildsvc.executors.errors import SnapshotInUse, SnapshotStateError
from buildsvc.executors.snapshot_index import IndexEntry, SnapshotIndex
from buildsvc.solver.worker import Change, SnapshotInfo, SnapshotKind, SnapshotMount


class OverlaySnapshotter:
    """A ``Snapshotter`` on overlayfs (needs root and a kernel with overlay)."""

    def __init__(self, root: str) -> None:
        """Keep snapshots, their index and their mount points under ``root``."""
        self._index = SnapshotIndex(root)
        # Actives with no parent, "mounted" in place without a kernel mount: remembered to refuse
        # their commit or removal while in use. Each key is added and checked under its key lock.
        self._in_use: set[str] = set()

    @property
    def name(self) -> str:
        """``overlay``."""
        return "overlay"

    def prepare(self, key: str, parent: str | None = None) -> SnapshotInfo:
        """Create an active snapshot (an empty upper dir) on the committed ``parent``."""
        return self._create(key, parent, SnapshotKind.ACTIVE)

    def view(self, key: str, parent: str) -> SnapshotInfo:
        """Create a read-only view of the committed ``parent``."""
        return self._create(key, parent, SnapshotKind.VIEW)

    def mount(self, key: str) -> SnapshotMount:
        """Mount an active snapshot (read-write) or a view (read-only) under our root."""
        with self._index.key_lock(key):
            entry = self._index.get(key)
            kind = entry.info.kind
            if kind is SnapshotKind.COMMITTED:
                raise SnapshotStateError(key, kind.value, "mount (make a view of it)")
            if kind is SnapshotKind.ACTIVE and entry.info.parent is None:
                self._in_use.add(key)
                return SnapshotMount(key=key, path=self._layer(entry), readonly=False)
            target = self._index.mount_point(entry)
            readonly = kind is SnapshotKind.VIEW
            if not mounts.is_mounted(target):
                os.makedirs(target, exist_ok=True)
                fstype, source, options = self._mount_args(entry)
                try:
                    mounts.mount(fstype, source, target, options)
                except BaseException:
                    os.rmdir(target)
                    raise
            return SnapshotMount(key=key, path=target, readonly=readonly)

    def committed_dir(self, key: str) -> str | None:
        """A committed layer with no parent holds its whole tree: read it in place (``DirectReads``).

        None for a layer on a parent: its tree is the stack, which only an overlay view shows.
        """
        entry = self._index.get(key)
        if entry.info.kind is not SnapshotKind.COMMITTED or entry.info.parent is not None:
            return None
        return self._layer(entry)

    def upper_dir(self, key: str) -> str:
        """The directory of ``key``'s own layer (``fs``): an active one's upper dir, a committed layer.

        Layer unpacking writes overlay whiteouts into an active one itself, and a layer export reads
        a committed one's changed files there: neither needs a mount (the caller holds ``key``).
        """
        with self._index.key_lock(key):
            entry = self._index.get(key)
            if entry.info.kind is SnapshotKind.VIEW:
                raise SnapshotStateError(key, entry.info.kind.value, "read its upper directory")
            return self._layer(entry)

    def unmount(self, key: str) -> None:
        """Unmount ``key`` if it is mounted."""
        with self._index.key_lock(key):
            entry = self._index.get(key)
            self._in_use.discard(key)
            if entry.info.kind is SnapshotKind.ACTIVE and entry.info.parent is None:
                # Used in place (see ``mount``): no kernel mount was made, so an umount(2) could
                # only fail; a file-op step's snapshot on scratch saves that syscall and a stat.
                return
            target = self._index.mount_point(entry)
            mounts.unmount(target)
            if os.path.isdir(target):
                os.rmdir(target)

    def commit(self, key: str, active_key: str) -> SnapshotInfo:
        """Make the unmounted active snapshot ``active_key`` the committed layer ``key``."""
        with self._index.key_lock(active_key):
            entry = self._index.require(active_key, SnapshotKind.ACTIVE, "commit")
            if active_key in self._in_use or mounts.is_mounted(self._index.mount_point(entry)):
                raise SnapshotInUse(active_key, [], mounted=True)
            info = SnapshotInfo(key=key, kind=SnapshotKind.COMMITTED, parent=entry.info.parent)
            # The overlay work dir (empty between mounts) stays until the snapshot is removed: freeing
            # its two inodes at every commit would make each later file a little slower to create
            # (see ``snapshot_index``: ext4 without a journal skips recently freed inodes).
            self._index.rekey(active_key, info)
            return info

    def remove(self, key: str) -> None:
        """Delete ``key``; refused (``SnapshotInUse``) while it has children or is mounted."""
        with self._index.key_lock(key):
            entry = self._index.get(key)
            children = self._index.children(key)
            mounted = key in self._in_use or mounts.is_mounted(self._index.mount_point(entry))
            if children or mounted:
                raise SnapshotInUse(key, children, mounted)
            self._index.delete(key)

    def stat(self, key: str) -> SnapshotInfo:
        """Describe ``key``."""
        return self._index.get(key).info

    def list(self) -> builtins.list[SnapshotInfo]:
        """Describe every snapshot."""
        return self._index.all()

    def changes(self, key: str) -> builtins.list[Change]:
        """The layer of an active or committed snapshot, from its upper dir and whiteouts."""
        entry = self._index.get(key)
        if entry.info.kind is SnapshotKind.VIEW:
            raise SnapshotStateError(key, entry.info.kind.value, "diff")
        lowers = [self._layer(e) for e in self._index.chain(key)[1:]]
        return overlay_changes(self._layer(entry), lowers)

    def _create(self, key: str, parent: str | None, kind: SnapshotKind) -> SnapshotInfo:
        info = SnapshotInfo(key=key, kind=kind, parent=parent)
        with self._index.create(info) as path:
            if kind is SnapshotKind.ACTIVE:
                os.mkdir(os.path.join(path, "fs"), 0o755)
                if parent is not None:  # only an overlay mount needs a work dir
                    os.mkdir(os.path.join(path, "work"), 0o700)
        return info

    def _mount_args(self, entry: IndexEntry) -> tuple[str, str, builtins.list[str]]:
        lowers = [self._layer(e) for e in self._index.chain(entry.info.key)[1:]]
        if entry.info.kind is SnapshotKind.VIEW:
            if len(lowers) == 1:
                return "bind", lowers[0], ["ro"]
            return "overlay", "overlay", ["ro", f"lowerdir={':'.join(lowers)}", "index=off"]
        upper = self._layer(entry)
        work = os.path.join(self._index.dir_of(entry.dir_id), "work")
        # index=off: a layer is the lower of many mounts with different uppers; the inode index
        # would tie a lower to its first upper and refuse the others.
        return (
            "overlay",
            "overlay",
            [f"lowerdir={':'.join(lowers)}", f"upperdir={upper}", f"workdir={work}", "index=off"],
        )

    def _layer(self, entry: IndexEntry) -> str:
        return os.path.join(self._index.dir_of(entry.dir_id), "fs")
