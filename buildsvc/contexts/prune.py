"""Pruning the context store and measuring it (``buildsvc prune``, ``buildsvc du``): files only.

Which manifests builds still need is the daemon's to say (:mod:`buildsvc.daemon.context_prune`
reads the log); given those, :func:`prune_store` removes

- every candidate manifest that is not kept and whose file is older than :data:`GRACE_SECONDS`
  (its ``.json`` and ``.missing``), with the tree made from it (``trees/<hex>``, the manifest's hex);
- every blob that only removed manifests named (a blob a remaining manifest names stays);
- when the whole store is pruned (no candidates given), what no manifest explains any more and is
  older than the grace period: blobs no manifest names, trees and ``.missing`` notes whose manifest
  is gone (a prune cut short), and partial writes left in ``tmp/``;

and ``trees/recent.json`` stops naming the trees removed.

Prune runs while the daemon serves builds, and the store has no lock for it to take: every write
goes to ``tmp/`` and is renamed into place, and every reader copes with a file that is gone (a
missing tree is made again, a lost link is copied). The grace period covers what the log cannot
name yet: a manifest a client's ``Missing`` call stored whose blobs are still being uploaded, its
Solve not sent, or one a build is making its tree from before its ``SolveRequested`` is recorded
(the store touches a manifest stored again or made into a tree, so its file's time says when it was
last received or used). A Solve that comes after its blobs were pruned all the same (prune removed
a blob the ``Missing`` call had answered "stored" a moment before) fails with
:class:`~buildsvc.contexts.store.MissingBlobs` naming the files, before anything of it is recorded;
``buildsvc build`` then sends its dirs again and solves once more.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from buildsvc.contexts.manifest import InvalidManifest, parse_manifest
from buildsvc.contexts.store import ContextStore, force_rmtree

__all__ = ["GRACE_SECONDS", "ContextStoreUsage", "ContextsPruned", "context_usage", "prune_store"]

GRACE_SECONDS = 15 * 60
"""How long a file no build names yet is kept: a manifest between the client's ``Missing`` call and
its Solve (the uploads of a large context take minutes on a slow link), blobs copied in before their
manifest is stored, a partial write in ``tmp/``. Longer than any upload, short enough that an
abandoned one does not hold its files for long."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextStoreUsage:
    """What the context store holds (``DiskUsage``)."""

    manifests: int
    blobs: int
    blob_bytes: int
    trees: int
    tree_bytes: int
    """Approximate: each file counted once however many trees link it (and not at all when it is a
    blob's own inode), but a file a local source's snapshot links too is counted here and in the
    snapshot."""

    @property
    def total_bytes(self) -> int:
        """Blob and tree bytes, summed."""
        return self.blob_bytes + self.tree_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextsPruned:
    """What a prune removed from the context store."""

    manifests: tuple[str, ...] = ()
    """The digests of the manifests removed, sorted."""
    blobs_removed: int = 0
    trees_removed: int = 0
    bytes_reclaimed: int = 0
    """The bytes of the blobs and tree files whose last link went, each inode once."""

    @property
    def empty(self) -> bool:
        """Whether nothing was removed."""
        return not (self.manifests or self.blobs_removed or self.trees_removed or self.bytes_reclaimed)


# --- usage -----------------------------------------------------------------------------------------


def context_usage(store: ContextStore) -> ContextStoreUsage:
    """Count and measure the store's manifests, blobs and trees (a ``stat`` per file)."""
    blobs = _blob_inodes(store)
    trees = list(_trees(store))
    return ContextStoreUsage(
        manifests=len(_manifests(store)),
        blobs=len(blobs),
        blob_bytes=sum(blobs.values()),
        trees=len(trees),
        # A tree's file may be its blob's own inode (see ContextStore._take_blob): counted once.
        tree_bytes=sum(size for key, size in _inode_sizes(trees).items() if key not in blobs),
    )


# --- prune -----------------------------------------------------------------------------------------


def prune_store(
    store: ContextStore,
    *,
    keep: Collection[str],
    candidates: Collection[str] | None = None,
    grace: float = GRACE_SECONDS,
) -> ContextsPruned:
    """Remove the manifests of ``candidates`` (every manifest when None) that ``keep`` does not name,
    and what only they needed (see the module docstring); returns what went.
    """
    old_before = time.time() - grace
    chosen = {
        digest
        for digest, mtime in _manifests(store).items()
        if (candidates is None or digest in candidates) and digest not in keep and mtime < old_before
    }
    # What nothing explains any more is swept too when the whole store is pruned.
    sweep_before = old_before if candidates is None else None
    their_blobs = _named_blobs(store, chosen)
    for digest in chosen:
        _remove_manifest(store, digest)
    trees_removed, tree_bytes = _prune_trees(store, {_hex(d) for d in chosen}, sweep_before)
    blobs_removed, blob_bytes = _prune_blobs(store, their_blobs, sweep_before)
    if sweep_before is not None:
        _sweep_stale(store, sweep_before)
    return ContextsPruned(
        manifests=tuple(sorted(chosen)),
        blobs_removed=blobs_removed,
        trees_removed=trees_removed,
        bytes_reclaimed=blob_bytes + tree_bytes,
    )


def _prune_trees(store: ContextStore, names: set[str], sweep_before: float | None) -> tuple[int, int]:
    """Remove the trees ``names`` (and, with ``sweep_before``, those whose manifest is gone);
    returns how many and the bytes freed.
    """
    if sweep_before is not None:
        names |= _trees_without_manifest(store, sweep_before)
    removed = _remove_trees(store, names)
    store.forget_recent({"sha256:" + name for name in names})
    return removed


def _prune_blobs(store: ContextStore, candidates: set[str], sweep_before: float | None) -> tuple[int, int]:
    """Remove the blobs of ``candidates`` no remaining manifest names (and, with ``sweep_before``,
    every blob no manifest names); returns how many and their bytes.
    """
    # Listed after the manifests went: one stored meanwhile keeps the blobs it names.
    still_named = _named_blobs(store, _manifests(store))
    dead = candidates - still_named
    if sweep_before is not None:
        dead |= {name for name, _ in _blobs(store, old_before=sweep_before) if name not in still_named}
    return _remove_blobs(store, dead)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _manifests(store: ContextStore) -> dict[str, float]:
    """Every stored manifest's digest and the time its file was last written or touched."""
    found: dict[str, float] = {}
    for entry in _scan(store.manifests):
        if entry.name.endswith(".json"):
            mtime = _mtime(entry)
            if mtime is not None:
                found["sha256:" + entry.name.removesuffix(".json")] = mtime
    return found


def _named_blobs(store: ContextStore, digests: Collection[str]) -> set[str]:
    """The hex names of the blobs the manifests ``digests`` name, read from their files (not through
    :meth:`ContextStore.load_manifest`: its few parsed manifests are the daemon's next builds').
    """
    named: set[str] = set()
    for digest in digests:
        try:
            manifest = parse_manifest((store.manifests / f"{_hex(digest)}.json").read_bytes())
        except (OSError, InvalidManifest):
            continue  # gone meanwhile, or unreadable: load_manifest refuses it, no tree needs its blobs
        named.update(_hex(d) for d in manifest.blobs())
    return named


def _remove_manifest(store: ContextStore, digest: str) -> None:
    # The manifest first: a build that asks for it from now on is told it is gone, before its
    # tree and blobs go.
    for suffix in (".json", ".missing"):
        (store.manifests / f"{_hex(digest)}{suffix}").unlink(missing_ok=True)


def _trees(store: ContextStore) -> Iterator[Path]:
    for entry in _scan(store.trees):
        if entry.is_dir(follow_symlinks=False) and _is_digest_hex(entry.name):
            yield Path(entry.path)


def _trees_without_manifest(store: ContextStore, old_before: float) -> set[str]:
    """Trees whose manifest is gone (a prune cut short between the two); a tree being made is in
    ``tmp/`` until it is whole, so every tree here has its manifest unless one was removed.
    """
    manifests = {_hex(d) for d in _manifests(store)}
    return {tree.name for tree in _trees(store) if tree.name not in manifests and _older(tree, old_before)}


def _remove_trees(store: ContextStore, names: Collection[str]) -> tuple[int, int]:
    """Remove ``trees/<name>`` for each of ``names`` present; returns how many and the bytes freed."""
    present = [store.trees / name for name in sorted(names) if (store.trees / name).is_dir()]
    freed = _freed_bytes(present)
    for tree in present:
        # Out of trees/ in one rename first: materialize reuses a tree that exists, and must never
        # find one half removed.
        doomed = store.tmp_path("pruned")
        try:
            os.rename(tree, doomed)
        except OSError:
            doomed = tree
        force_rmtree(doomed)
    return len(present), freed


def _remove_blobs(store: ContextStore, names: Collection[str]) -> tuple[int, int]:
    """Remove the blobs ``names`` names; returns how many were there and the bytes freed: a blob
    that is a tree's file (see ``ContextStore._take_blob``) lives on while a snapshot links it.
    """
    count = size = 0
    for name in sorted(names):
        path = store.blobs / name
        try:
            st = path.stat()
            path.unlink()
        except FileNotFoundError:
            continue
        count += 1
        if st.st_nlink == 1:
            size += st.st_size
    return count, size


def _sweep_stale(store: ContextStore, old_before: float) -> None:
    """Remove partial writes in ``tmp/`` and ``.missing`` notes whose manifest is gone, when older
    than ``old_before``: a crash (or a prune cut short) left them, nothing will finish them.
    """
    for entry in _scan(store.manifests):
        if not entry.name.endswith(".missing") or not _older(entry, old_before):
            continue
        if not (store.manifests / entry.name.replace(".missing", ".json")).exists():
            Path(entry.path).unlink(missing_ok=True)
    for entry in _scan(store.tmp):
        if not _older(entry, old_before):
            continue
        if entry.is_dir(follow_symlinks=False):
            force_rmtree(Path(entry.path))
        else:
            Path(entry.path).unlink(missing_ok=True)


# --- files -----------------------------------------------------------------------------------------


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _mtime(entry: os.DirEntry[str] | Path) -> float | None:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None  # removed since it was listed


def _older(entry: os.DirEntry[str] | Path, old_before: float) -> bool:
    mtime = _mtime(entry)
    return mtime is not None and mtime < old_before


def _is_digest_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _blobs(store: ContextStore, *, old_before: float | None = None) -> Iterator[tuple[str, int]]:
    """Each blob's hex name and size (only those older than ``old_before`` when given)."""
    for entry in _scan(store.blobs):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if old_before is None or st.st_mtime < old_before:
            yield entry.name, st.st_size


def _blob_inodes(store: ContextStore) -> dict[tuple[int, int], int]:
    """(device, inode) -> size of every blob."""
    found: dict[tuple[int, int], int] = {}
    for entry in _scan(store.blobs):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        found[(st.st_dev, st.st_ino)] = st.st_size
    return found


def _inode_sizes(trees: Collection[Path]) -> dict[tuple[int, int], int]:
    """The size of every file of ``trees``, once per inode (trees hard-link the files they share)."""
    return {key: size for key, (size, _, _) in _inodes(trees).items()}


def _freed_bytes(trees: Collection[Path]) -> int:
    """The bytes removing ``trees`` frees: the files all of whose links are in them."""
    return sum(size for size, links, seen in _inodes(trees).values() if seen >= links)


def _inodes(trees: Collection[Path]) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(device, inode) -> (size, link count, links found in ``trees``) of their non-directories."""
    found: dict[tuple[int, int], tuple[int, int, int]] = {}
    for tree in trees:
        for dirpath, _, filenames in os.walk(tree):
            for name in filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                _, _, seen = found.get(key, (0, 0, 0))
                found[key] = (st.st_size, st.st_nlink, seen + 1)
    return found
