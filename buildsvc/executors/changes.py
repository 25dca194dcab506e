"""Compute what a snapshot changed relative to its parent (the content of its layer).

Two ways, one result: from an overlayfs upper directory (where a deleted lower file is a 0/0
character device, a "whiteout", and a directory whose lower content was replaced carries the
``trusted.overlay.opaque`` xattr), and by comparing two full trees (the native snapshotter).

A replaced (opaque) directory is reported as ``DELETED`` then ``ADDED`` at the same path, then its
new content as ``ADDED``: the same thing a layer tarball says with ``.wh..wh..opq``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from buildsvc.solver.worker import Change, ChangeKind

OPAQUE_XATTR = "trusted.overlay.opaque"

_KIND_ORDER = {ChangeKind.DELETED: 0, ChangeKind.ADDED: 1, ChangeKind.MODIFIED: 2}


def is_whiteout(st: os.stat_result) -> bool:
    """Whether ``st`` is an overlayfs whiteout (a character device numbered 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    """Whether the directory ``path`` in an overlay layer hides the layers below it."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def overlay_changes(upper: str, lowers: Sequence[str]) -> list[Change]:
    """Changes recorded in the overlay layer ``upper`` over ``lowers`` (newest first)."""
    changes: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, upper)
        for name in sorted(dirnames + filenames):
            host = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = "/" + rel
            st = os.lstat(host)
            if is_whiteout(st):
                changes.append(Change(kind=ChangeKind.DELETED, path=path))
                continue
            existed = exists_in_layers(lowers, rel)
            if stat.S_ISDIR(st.st_mode) and existed and is_opaque(host):
                changes.append(Change(kind=ChangeKind.DELETED, path=path))
                changes.append(Change(kind=ChangeKind.ADDED, path=path))
                continue
            if existed and _below_opaque(upper, rel):
                existed = False
            changes.append(Change(kind=ChangeKind.MODIFIED if existed else ChangeKind.ADDED, path=path))
    return sort_changes(changes)


def exists_in_layers(layers: Sequence[str], rel: str) -> bool:
    """Whether ``rel`` exists in the merged view of overlay ``layers`` (newest first)."""
    parts = rel.split("/")
    for layer in layers:
        hidden_below = False
        for i in range(1, len(parts) + 1):
            host = os.path.join(layer, *parts[:i])
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                break
            if is_whiteout(st):
                return False
            if i == len(parts):
                return True
            if not stat.S_ISDIR(st.st_mode):
                # A non-directory here shadows everything below this name in older layers.
                return False
            if is_opaque(host):
                hidden_below = True
        if hidden_below:
            return False
    return False


def tree_changes(new: str, old: str | None) -> list[Change]:
    """Changes that turn the tree ``old`` (``None``: empty) into the tree ``new``."""
    changes: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(new):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, new)
        kept = []
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(dirpath, name))
            old_st = _lstat(os.path.join(old, rel)) if old is not None else None
            if old_st is None:
                changes.append(Change(kind=ChangeKind.ADDED, path="/" + rel))
            elif _differs(st, old_st, os.path.join(dirpath, name), os.path.join(old or "", rel)):
                changes.append(Change(kind=ChangeKind.MODIFIED, path="/" + rel))
            if name in dirnames:
                kept.append(name)
        dirnames[:] = kept
    if old is not None:
        for dirpath, dirnames, filenames in os.walk(old):
            rel_dir = os.path.relpath(dirpath, old)
            descend = []
            for name in dirnames + filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                new_st = _lstat(os.path.join(new, rel))
                if new_st is None:
                    # Only the top of a deleted subtree is reported, as a whiteout would be.
                    changes.append(Change(kind=ChangeKind.DELETED, path="/" + rel))
                elif name in dirnames and stat.S_ISDIR(new_st.st_mode):
                    descend.append(name)
            dirnames[:] = descend
    return sort_changes(changes)


def sort_changes(changes: list[Change]) -> list[Change]:
    """Sort by path; at one path a deletion comes before an addition."""
    return sorted(changes, key=lambda c: (c.path.split("/"), _KIND_ORDER[c.kind]))


def _below_opaque(upper: str, rel: str) -> bool:
    # An entry inside a replaced directory is new even if the same name existed below.
    parts = rel.split("/")
    return any(is_opaque(os.path.join(upper, *parts[:i])) for i in range(1, len(parts)))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _differs(a: os.stat_result, b: os.stat_result, a_path: str, b_path: str) -> bool:
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return True
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(a_path) != os.readlink(b_path)
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev != b.st_rdev
    if stat.S_ISDIR(a.st_mode):
        return a.st_mtime_ns != b.st_mtime_ns
    return a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns
