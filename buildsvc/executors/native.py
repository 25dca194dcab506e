"""``NativeSnapshotter``: every snapshot a full copy of its parent's tree (no overlayfs needed).

Like containerd's native snapshotter: slower and bigger, but it works on any filesystem. The copy
keeps symlinks as symlinks, modes, ownership, times, device nodes and fifos, and hard links between
files of the copied tree. An active snapshot is used in place; a view is a read-only bind mount.
"""

from __future__ import annotations

import builtins
import os
import shutil
import stat

from buildsvc.executors import mounts
from buildsvc.executors.changes import tree_changes
from buildsvc.executors.errors import SnapshotInUse, SnapshotStateError
from buildsvc.executors.snapshot_index import IndexEntry, SnapshotIndex
from buildsvc.solver.worker import Change, SnapshotInfo, SnapshotKind, SnapshotMount


class NativeSnapshotter:
    """A ``Snapshotter`` that copies trees (views need root for their bind mount)."""

    def __init__(self, root: str) -> None:
        """Keep snapshots, their index and view mount points under ``root``."""
        self._index = SnapshotIndex(root)
        # An active snapshot is "mounted" without a kernel mount; remember it to refuse removal.
        # Each key is added and checked only under that key's lock.
        self._in_use: set[str] = set()

    @property
    def name(self) -> str:
        """``native``."""
        return "native"

    def prepare(self, key: str, parent: str | None = None) -> SnapshotInfo:
        """Create an active snapshot holding a copy of the committed ``parent``."""
        return self._create(key, parent, SnapshotKind.ACTIVE)

    def view(self, key: str, parent: str) -> SnapshotInfo:
        """Create a read-only view of the committed ``parent`` (no copy)."""
        return self._create(key, parent, SnapshotKind.VIEW)

    def mount(self, key: str) -> SnapshotMount:
        """The active snapshot's own directory, or a read-only bind mount for a view."""
        with self._index.key_lock(key):
            entry = self._index.get(key)
            kind = entry.info.kind
            if kind is SnapshotKind.COMMITTED:
                raise SnapshotStateError(key, kind.value, "mount (make a view of it)")
            if kind is SnapshotKind.ACTIVE:
                self._in_use.add(key)
                return SnapshotMount(key=key, path=self._fs(entry), readonly=False)
            assert entry.info.parent is not None
            target = self._index.mount_point(entry)
            if not mounts.is_mounted(target):
                os.makedirs(target, exist_ok=True)
                mounts.mount("bind", self._fs(self._index.get(entry.info.parent)), target, ["ro"])
            return SnapshotMount(key=key, path=target, readonly=True)

    def committed_dir(self, key: str) -> str | None:
        """Every committed snapshot is a whole tree: read it in place (``DirectReads``)."""
        entry = self._index.get(key)
        if entry.info.kind is not SnapshotKind.COMMITTED:
            return None
        return self._fs(entry)

    def unmount(self, key: str) -> None:
        """Release ``key``'s mount, if any."""
        with self._index.key_lock(key):
            entry = self._index.get(key)
            self._in_use.discard(key)
            target = self._index.mount_point(entry)
            mounts.unmount(target)
            if os.path.isdir(target):
                os.rmdir(target)

    def commit(self, key: str, active_key: str) -> SnapshotInfo:
        """Make the unmounted active snapshot ``active_key`` the committed snapshot ``key``."""
        with self._index.key_lock(active_key):
            entry = self._index.require(active_key, SnapshotKind.ACTIVE, "commit")
            if active_key in self._in_use:
                raise SnapshotInUse(active_key, [], mounted=True)
            info = SnapshotInfo(key=key, kind=SnapshotKind.COMMITTED, parent=entry.info.parent)
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
        """Compare ``key``'s tree with its parent's."""
        entry = self._index.get(key)
        if entry.info.kind is SnapshotKind.VIEW:
            raise SnapshotStateError(key, entry.info.kind.value, "diff")
        parent = entry.info.parent
        return tree_changes(self._fs(entry), self._fs(self._index.get(parent)) if parent else None)

    def _create(self, key: str, parent: str | None, kind: SnapshotKind) -> SnapshotInfo:
        info = SnapshotInfo(key=key, kind=kind, parent=parent)
        # The copy runs under no lock: while it does, the key is taken and the parent kept.
        with self._index.create(info) as path:
            if kind is SnapshotKind.ACTIVE:
                fs = os.path.join(path, "fs")
                if parent is None:
                    os.mkdir(fs, 0o755)
                else:
                    copy_tree(self._fs(self._index.get(parent)), fs)
        return info

    def _fs(self, entry: IndexEntry) -> str:
        return os.path.join(self._index.dir_of(entry.dir_id), "fs")


def copy_tree(src: str, dst: str) -> None:
    """Copy the tree ``src`` to the new directory ``dst``, keeping metadata and hard links."""
    links: dict[tuple[int, int], str] = {}
    _copy_entry(src, dst, os.lstat(src), links)
    dir_times: list[tuple[str, os.stat_result]] = [(dst, os.lstat(src))]
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else os.path.join(dst, rel)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            st = os.lstat(s)
            d = os.path.join(target_dir, name)
            _copy_entry(s, d, st, links)
            if stat.S_ISDIR(st.st_mode):
                dir_times.append((d, st))
    # Directory times last: creating entries inside a directory changes its mtime.
    for d, st in reversed(dir_times):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_entry(src: str, dst: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> None:
    mode = st.st_mode
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        first = links.get((st.st_dev, st.st_ino))
        if first is not None:
            os.link(first, dst, follow_symlinks=False)  # a linked symlink stays one (as Linux link(2) does)
            return
        links[(st.st_dev, st.st_ino)] = dst
    if stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        os.mknod(dst, mode, st.st_rdev)
    else:
        # Sockets are not content; a build leaves them behind only by accident.
        return
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(mode):
        os.chmod(dst, stat.S_IMODE(mode))
    if not stat.S_ISDIR(mode):
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
