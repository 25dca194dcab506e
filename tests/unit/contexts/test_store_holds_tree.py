"""``ContextStore.holds_tree``: only a tree directory the store made counts (its files may be linked)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildsvc.contexts import ContextStore, scan_dir


def _tree(tmp_path: Path) -> tuple[ContextStore, Path]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f\n")
    scan = scan_dir(src)
    store = ContextStore(tmp_path / "root" / "contexts")
    store.ingest(scan)
    return store, store.materialize(scan.manifest)


def test_a_tree_the_store_made_counts(tmp_path: Path) -> None:
    store, tree = _tree(tmp_path)
    assert tree.parent == store.trees
    assert store.holds_tree(tree)
    # The same store opened again (as the engine does), and a relative path to the same directory.
    assert ContextStore.under(tmp_path / "root").holds_tree(tree)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert store.holds_tree(tree.relative_to(tmp_path))
    finally:
        os.chdir(cwd)


def test_a_path_into_around_or_beside_a_tree_does_not(tmp_path: Path) -> None:
    store, tree = _tree(tmp_path)
    assert not store.holds_tree(tree / "sub")  # inside a tree
    assert not store.holds_tree(tree / "sub" / "f")
    assert not store.holds_tree(tree / "sub" / "..")  # the tree itself, but through ".."
    assert not store.holds_tree(store.trees / "x" / ".." / tree.name)
    assert not store.holds_tree(store.trees)
    assert not store.holds_tree(store.trees / "recent.json")
    assert not store.holds_tree(store.trees / ("0" * 64))  # no such tree
    assert not store.holds_tree(tmp_path / "src")  # the host directory it was made from

    # A directory with a tree's name but not in trees/ (a copy beside it, in tmp/, elsewhere).
    for where in (store.tmp, store.root, tmp_path):
        copy = where / tree.name
        shutil.copytree(tree, copy, symlinks=True)
        assert not store.holds_tree(copy)

    # A directory in trees/ named like a tree the store never made (no manifest of that name).
    stray = store.trees / ("a" * 64)
    stray.mkdir()
    assert not store.holds_tree(stray)

    # Another store's tree.
    other = ContextStore(tmp_path / "other" / "contexts")
    assert not other.holds_tree(tree)


def test_a_symlink_to_a_tree_does_not(tmp_path: Path) -> None:
    store, tree = _tree(tmp_path)
    outside = tmp_path / tree.name
    outside.symlink_to(tree)
    assert not store.holds_tree(outside)
    named = tmp_path / "context"
    named.symlink_to(tree)
    assert not store.holds_tree(named)
    # A symlink in trees/ with the name of a tree the store made, pointing at another tree.
    store2, tree2 = _tree(tmp_path / "second")
    shutil.rmtree(tree2)
    os.symlink(tree, tree2)
    assert not store2.holds_tree(tree2)


def test_the_engine_gives_a_trees_files_from_its_manifest_and_none_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The solver's tree_files: a hint for the content key, never a reason for it to fail.
    from buildsvc.daemon.engine import _ContextTrees
    from buildsvc.errors import NotFound

    _, tree = _tree(tmp_path)
    trees = _ContextTrees(tmp_path / "root")
    files = trees.files(tree)
    assert files is not None and sorted(files) == ["sub/f"]
    assert files["sub/f"].size == 2
    assert trees.files(tmp_path / "src") is None  # not a tree of the store

    def gone(self: ContextStore, digest: str) -> None:
        raise NotFound(f"context {digest} is not in the context store")

    monkeypatch.setattr(ContextStore, "load_manifest", gone)
    assert trees.files(tree) is None
