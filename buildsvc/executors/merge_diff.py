"""MergeOp and DiffOp as plain directory operations (for snapshotters that cannot stack layers).

``merge_into(dest, sources)`` lays the sources over each other, later ones on top: a file replaces
what an earlier source had at its path (a file replaces a directory and vice versa), directories are
merged and take the later source's metadata.

``diff_into(dest, lower, upper)`` writes what turns ``lower`` into ``upper``: entries added or
modified in ``upper`` (with the directories that lead to them), and **a whiteout for each deleted
path**: a character device 0/0, the overlayfs and OCI-layer convention this code base already uses
(``changes.py``). Why keep deletions: BuildKit defines a diff so that ``merge(lower, diff(lower,
upper))`` equals ``upper``; dropping deletions would silently resurrect deleted files when the diff is
rebased. ``merge_into`` applies a whiteout by removing the path and never copies the whiteout itself,
so a merged tree holds none; the overlay snapshotter reads them natively when a diff is stacked as a
layer. The price: a diff used directly as a root filesystem on the copying snapshotter shows its
whiteouts as 0/0 devices (``record_deletions=False`` leaves them out for such uses).

Modes, owners, times, symlinks, devices and xattrs are kept; files hard linked together in one
source stay hard linked together in ``dest``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsvc.executors.copy import EntryWriter, collect
from buildsvc.solver.patterns import Selector

__all__ = ["diff_into", "is_whiteout", "merge_into"]

_ALL = Selector()


def is_whiteout(st: os.stat_result) -> bool:
    """Whether ``st`` is a whiteout (a character device numbered 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def merge_into(dest: Path, sources: Sequence[Path], *, link: bool = False) -> None:
    """Overlay ``sources`` (bottom first) onto the directory ``dest``; whiteouts delete what is below.

    With ``link``, files are hard linked to the sources' instead of copied (directories are still
    made, with their metadata): only for sources no one writes to again, on ``dest``'s filesystem
    (an entry that cannot be linked is copied).
    """
    top = os.path.abspath(dest)
    writers: list[EntryWriter] = []
    for source in sources:
        # One writer per source: hard links are kept within a source, never across two of them.
        writer = EntryWriter(top, always_replace=True, link_files=link)
        writers.append(writer)
        src = os.path.abspath(source)
        writer.write(src, os.lstat(src), top, overwrite_dir_metadata=True)
        _overlay(src, top, writer)
    for writer in writers:
        writer.finish()


def _overlay(src_dir: str, dst_dir: str, writer: EntryWriter) -> None:
    for name in sorted(os.listdir(src_dir), key=os.fsencode):
        src = os.path.join(src_dir, name)
        dst = os.path.join(dst_dir, name)
        st = os.lstat(src)
        if is_whiteout(st):
            _remove(dst)
            continue
        writer.write(src, st, dst, overwrite_dir_metadata=True)
        if stat.S_ISDIR(st.st_mode):
            _overlay(src, dst, writer)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


@dataclass(frozen=True, slots=True)
class _Change:
    rel: str
    host: str | None
    """``None``: a deletion (written as a whiteout)."""
    whole_tree: bool = False
    """Copy everything below too (an added directory)."""


def diff_into(dest: Path, lower: Path | None, upper: Path | None, *, record_deletions: bool = True) -> None:
    """Write into the empty directory ``dest`` the changes from ``lower`` to ``upper`` (``None``: scratch)."""
    top = os.path.abspath(dest)
    low = os.path.abspath(lower) if lower is not None else None
    up = os.path.abspath(upper) if upper is not None else None
    changes: list[_Change] = []
    _diff_dir(low, up, "", changes, record_deletions=record_deletions)
    writer = EntryWriter(top, always_replace=True)
    if up is not None:
        writer.write(up, os.lstat(up), top, overwrite_dir_metadata=True)
    for change in changes:
        dst = os.path.join(top, change.rel)
        if change.host is None:
            os.mknod(dst, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            continue
        if not change.whole_tree:
            writer.write(change.host, os.lstat(change.host), dst)
            continue
        for entry in collect(change.host, _ALL):
            writer.write(entry.host, entry.st, os.path.join(dst, entry.rel) if entry.rel else dst)
    writer.finish()


def _diff_dir(
    low_dir: str | None, up_dir: str | None, rel: str, out: list[_Change], *, record_deletions: bool
) -> None:
    low_names = set(_listdir(low_dir))
    up_names = set(_listdir(up_dir))
    for name in sorted(low_names | up_names, key=os.fsencode):
        child_rel = f"{rel}/{name}" if rel else name
        up = os.path.join(up_dir, name) if up_dir is not None and name in up_names else None
        low = os.path.join(low_dir, name) if low_dir is not None and name in low_names else None
        if up is None:
            if record_deletions and low is not None:
                out.append(_Change(child_rel, None))
            continue
        up_st = os.lstat(up)
        low_st = os.lstat(low) if low is not None else None
        up_is_dir = stat.S_ISDIR(up_st.st_mode)
        if low is None or low_st is None or stat.S_IFMT(low_st.st_mode) != stat.S_IFMT(up_st.st_mode):
            out.append(_Change(child_rel, up, whole_tree=up_is_dir))
            continue
        if not up_is_dir:
            if _differs(low, up, low_st, up_st):
                out.append(_Change(child_rel, up))
            continue
        below: list[_Change] = []
        _diff_dir(low, up, child_rel, below, record_deletions=record_deletions)
        if below or _dir_differs(low_st, up_st):
            out.append(_Change(child_rel, up))
            out.extend(below)


def _listdir(path: str | None) -> list[str]:
    return os.listdir(path) if path is not None else []


def _dir_differs(a: os.stat_result, b: os.stat_result) -> bool:
    # A directory's mtime moves whenever its entries do; those changes are found entry by entry.
    return (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid)


def _differs(low: str, up: str, a: os.stat_result, b: os.stat_result) -> bool:
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return False
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return True
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(low) != os.readlink(up)
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev != b.st_rdev
    if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
        return True
    if stat.S_ISREG(a.st_mode) and a.st_mtime_ns % 1_000_000_000 == 0:
        # Whole-second times (from a tar) make "same size, same time" weak evidence: compare bytes.
        return not _same_bytes(low, up)
    return False


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True
