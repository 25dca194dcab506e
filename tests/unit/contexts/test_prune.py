"""Pruning the context store: manifests not kept go with their trees and the blobs only they named."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from buildsvc.contexts import ContextStore, Manifest, scan_dir
from buildsvc.contexts.prune import GRACE_SECONDS, context_usage, prune_store

_OLD = time.time() - GRACE_SECONDS - 60


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _age(*paths: Path) -> None:
    """Make files (and everything under a directory) older than the grace period."""
    for top in paths:
        os.utime(top, (_OLD, _OLD), follow_symlinks=False)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (_OLD, _OLD), follow_symlinks=False)


def _context(store: ContextStore, src: Path, files: dict[str, str], mtime_ns: int | None = None) -> Manifest:
    """A dir of ``files`` ingested and made into a tree, as an embedded build does (``mtime_ns``:
    every file's time, for files meant to differ from another context's in metadata only).
    """
    src.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:  # an unchanged file keeps its mtime
            path.write_text(text)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))
    scan = scan_dir(src)
    store.ingest(scan)
    store.materialize(scan.manifest)
    return scan.manifest


def _tree(store: ContextStore, manifest: Manifest) -> Path:
    return store.trees / manifest.digest.removeprefix("sha256:")


def _recent(store: ContextStore) -> list[str]:
    return [digest for digest, _ in json.loads((store.trees / "recent.json").read_text())]


def test_a_removed_manifest_takes_its_tree_and_the_blobs_only_it_named(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    kept = _context(store, tmp_path / "kept", {"shared": "both\n", "mine": "kept only\n"}, mtime_ns=1)
    gone = _context(
        store, tmp_path / "gone", {"shared": "both\n", "theirs": "gone only\n", "d/x": "x\n"}, mtime_ns=2
    )
    os.chmod(_tree(store, gone) / "d", 0o555)  # a read-only directory in the tree
    store.receive_manifest(gone.canonical())  # its .missing note too
    _age(store.root)

    pruned = prune_store(store, keep={kept.digest})

    assert pruned.manifests == (gone.digest,)
    assert (pruned.trees_removed, pruned.blobs_removed) == (1, 2)  # "gone only" and "x"
    # Each inode once: the two blobs, which were the tree's own files, and the tree's copy of
    # "shared" (another time than the kept tree's, whose file the blob "both" is).
    assert pruned.bytes_reclaimed == len("gone only\n") + len("x\n") + len("both\n")
    assert not store.has_manifest(gone.digest)
    assert not list(store.manifests.glob(gone.digest.removeprefix("sha256:") + ".*"))
    assert not _tree(store, gone).exists()
    assert not store.has_blob(_sha(b"gone only\n")) and not store.has_blob(_sha(b"x\n"))
    assert store.has_blob(_sha(b"both\n")) and store.has_blob(_sha(b"kept only\n"))
    assert (_tree(store, kept) / "mine").read_text() == "kept only\n"
    assert list(store.tmp.iterdir()) == []  # the tree went through tmp/ and is gone from there too
    assert prune_store(store, keep={kept.digest}).empty


def test_a_young_manifest_no_build_names_stays_with_its_blobs(tmp_path: Path) -> None:
    # A client's Missing call stored it and is uploading its blobs: its Solve has not come yet.
    store = ContextStore(tmp_path / "contexts")
    uploading = _context(store, tmp_path / "src", {"a": "a\n"})
    assert prune_store(store, keep=set()).empty
    assert store.has_manifest(uploading.digest) and store.has_blob(_sha(b"a\n"))
    # Received again after it aged: young again.
    _age(store.root)
    store.receive_manifest(uploading.canonical())
    assert prune_store(store, keep=set()).empty
    _age(store.root)
    assert prune_store(store, keep=set()).manifests == (uploading.digest,)
    assert not store.has_blob(_sha(b"a\n"))


def test_orphan_blobs_and_stale_partial_writes_go_once_old(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    for data in (b"old orphan", b"young orphan"):
        writer = store.open_blob(_sha(data), data.decode())
        writer.write(data)
        writer.commit()
    stale_file = store.tmp_path("blob")
    stale_file.write_bytes(b"half")
    stale_dir = store.tmp_path("tree")
    (stale_dir / "ro").mkdir(parents=True)
    (stale_dir / "ro" / "f").write_text("f")
    os.chmod(stale_dir / "ro", 0o555)
    _age(store.blob_path(_sha(b"old orphan")), stale_file, stale_dir)
    young_tmp = store.tmp_path("blob")
    young_tmp.write_bytes(b"being written")

    pruned = prune_store(store, keep=set())

    assert (pruned.manifests, pruned.blobs_removed, pruned.bytes_reclaimed) == ((), 1, len(b"old orphan"))
    assert not store.has_blob(_sha(b"old orphan")) and store.has_blob(_sha(b"young orphan"))
    assert list(store.tmp.iterdir()) == [young_tmp]


def test_what_a_prune_cut_short_left_goes_with_the_next(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    manifest = _context(store, tmp_path / "src", {"a": "a\n"})
    store.receive_manifest(manifest.canonical())
    hex_name = manifest.digest.removeprefix("sha256:")
    (store.manifests / f"{hex_name}.json").unlink()  # the manifest went, its tree and note did not
    _age(store.root)

    pruned = prune_store(store, keep=set())

    assert (pruned.manifests, pruned.trees_removed, pruned.blobs_removed) == ((), 1, 1)
    assert not _tree(store, manifest).exists() and not (store.manifests / f"{hex_name}.missing").exists()
    assert _recent(store) == []


def test_with_candidates_only_those_go_and_nothing_else_is_swept(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    first = _context(store, tmp_path / "one", {"a": "one\n"})
    second = _context(store, tmp_path / "two", {"a": "two\n"})
    orphan = store.open_blob(_sha(b"orphan"), "orphan")
    orphan.write(b"orphan")
    orphan.commit()
    _age(store.root)

    pruned = prune_store(store, keep=set(), candidates={first.digest})

    assert pruned.manifests == (first.digest,) and pruned.blobs_removed == 1
    assert store.has_manifest(second.digest) and _tree(store, second).is_dir()
    assert store.has_blob(_sha(b"orphan"))  # not the build's: only a whole-store prune sweeps it


def test_recent_trees_forget_the_removed_ones_and_later_trees_link_from_a_kept_one(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    src = tmp_path / "src"
    files = {f"f{n}": f"file {n}\n" for n in range(4)}
    kept = _context(store, src, files)
    gone = _context(store, src, {**files, "extra": "extra\n"})
    assert _recent(store) == [gone.digest, kept.digest]
    _age(store.root)

    prune_store(store, keep={kept.digest})

    assert _recent(store) == [kept.digest]
    # The kept manifest's tree is still there and made once; a new one links from it.
    assert store.materialize(store.load_manifest(kept.digest)) == _tree(store, kept)
    edited = _context(store, src, {**files, "f0": "edited\n"})
    new_tree = _tree(store, edited)
    assert (new_tree / "f1").stat().st_ino == (_tree(store, kept) / "f1").stat().st_ino
    assert (new_tree / "f0").read_text() == "edited\n"


def test_a_tree_file_another_tree_links_is_not_counted_as_reclaimed(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    src = tmp_path / "src"
    kept = _context(store, src, {"big": "b" * 1000})
    gone = _context(store, src, {"big": "b" * 1000, "small": "s"})
    assert (_tree(store, gone) / "big").stat().st_ino == (_tree(store, kept) / "big").stat().st_ino
    _age(store.root)

    pruned = prune_store(store, keep={kept.digest})

    # The blob of "s", which was the tree's file; "big" lives on in the kept tree.
    assert pruned.bytes_reclaimed == 1
    assert (_tree(store, kept) / "big").read_text() == "b" * 1000


def test_a_file_a_snapshot_still_links_is_not_counted_as_reclaimed(tmp_path: Path) -> None:
    # A local source's snapshot hard-links the tree's files, which may be the blobs' own inodes.
    store = ContextStore(tmp_path / "contexts")
    gone = _context(store, tmp_path / "src", {"linked": "in a snapshot\n", "alone": "a\n"})
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    os.link(_tree(store, gone) / "linked", snapshot / "linked")
    _age(store.root)

    pruned = prune_store(store, keep=set())

    assert (pruned.trees_removed, pruned.blobs_removed) == (1, 2)
    assert pruned.bytes_reclaimed == len("a\n")
    assert (snapshot / "linked").read_text() == "in a snapshot\n"


def test_usage_counts_manifests_blobs_and_trees_once_per_inode(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "contexts")
    assert context_usage(store).total_bytes == 0
    src = tmp_path / "src"
    _context(store, src, {"big": "b" * 1000})
    _context(store, src, {"big": "b" * 1000, "small": "s"})
    usage = context_usage(store)
    assert (usage.manifests, usage.blobs, usage.blob_bytes) == (2, 2, 1001)
    # Each tree file is a blob's own inode ("big" is one inode in both trees): counted as blobs.
    assert (usage.trees, usage.tree_bytes) == (2, 0)
    assert usage.total_bytes == 1001
