"""A local source made from a context-store tree hard links the tree's files (run as root).

The tree is never written once made and the source's snapshot is committed right after its copy,
so the snapshot's files are the tree's own inodes; a later step that writes one writes its own copy
(overlay copy-up, the native snapshotter's copy), and the tree stays as it was. A directory that is
not a store tree is copied, as before. Include/exclude patterns select the same files either way.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.contexts import ContextStore, receive_contexts
from buildsvc.solver import contenthash, llb
from buildsvc.solver.engine import SolveResult
from buildsvc.solver.worker import DirectReads
from tests.integration.solver.conftest import Harness, Images, open_harness

pytestmark = pytest.mark.root

WORKERS = ["runc-overlay", "runc-native"]
INCLUDE = ["a.txt", "bin", "sub", "link", "empty"]
EXCLUDE = ["sub/deep/skip*"]
SELECTED = [
    "a.txt",
    "bin",
    "bin/run.sh",
    "empty",
    "link",
    "sub",
    "sub/deep",
    "sub/deep/x",
    "sub/y",
]


@pytest.fixture(params=WORKERS)
def hw(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[Harness]:
    with open_harness(tmp_path, db_url, worker_names=[request.param]) as harness:
        yield harness


def _host_dir(root: Path) -> Path:
    ctx = root / "host-ctx"
    (ctx / "bin").mkdir(parents=True)
    (ctx / "sub" / "deep").mkdir(parents=True)
    (ctx / "empty").mkdir()
    (ctx / "a.txt").write_text("alpha\n")
    os.chmod(ctx / "a.txt", 0o640)
    (ctx / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(ctx / "bin" / "run.sh", 0o755)
    (ctx / "sub" / "deep" / "x").write_text("x\n")
    (ctx / "sub" / "deep" / "skip.log").write_text("excluded\n")
    (ctx / "sub" / "y").write_text("y\n")
    (ctx / "notes.md").write_text("not included\n")
    (ctx / "link").symlink_to("a.txt")
    os.utime(ctx / "a.txt", ns=(1_000_000_000, 1_000_000_000))
    return ctx


def _received(h: Harness, host: Path, build_ref: str) -> tuple[ContextStore, dict[str, Path]]:
    store = ContextStore.under(h.root)
    return store, receive_contexts(store, build_ref, host_dirs={"context": host}).dirs


def _snapshot_dir(h: Harness, result: SolveResult) -> Path:
    assert result.output is not None and result.output.snapshot_id is not None
    snapshotter = h.engine.workers[0].snapshotter
    assert isinstance(snapshotter, DirectReads)
    found = snapshotter.committed_dir(result.output.snapshot_id)
    assert found is not None
    return Path(found)


def _entries(top: Path) -> dict[str, tuple[int, int, int, int, int, str]]:
    """Relative path -> (type, mode, uid, gid, mtime, content or link target); dirs' mtimes left out."""
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            data = path.read_text()
        else:
            data = ""
        mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        out[path.relative_to(top).as_posix()] = (
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            mtime,
            data,
        )
    return out


def _identity(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def test_a_store_tree_is_linked_into_the_local_source(hw: Harness, tmp_path: Path) -> None:
    host = _host_dir(tmp_path)
    store, dirs = _received(hw, host, "linked")
    tree = dirs["context"]
    assert store.holds_tree(tree)
    whole = _snapshot_dir(hw, hw.solve(llb.local("context").marshal(), build_ref="linked", local_dirs=dirs))
    assert _entries(whole) == _entries(tree)
    for rel in _entries(tree):
        src, dst = tree / rel, whole / rel
        if src.is_dir() and not src.is_symlink():
            assert _identity(src) != _identity(dst), rel  # the snapshot's own directories
        else:
            assert _identity(src) == _identity(dst), rel  # files and symlinks: the tree's inodes

    # Include/exclude select exactly what they select from a copy.
    selected = llb.local("context", include=INCLUDE, exclude=EXCLUDE)
    part = _snapshot_dir(hw, hw.solve(selected.marshal(), build_ref="selected", local_dirs=dirs))
    assert sorted(_entries(part)) == SELECTED
    assert _entries(part) == {rel: e for rel, e in _entries(tree).items() if rel in SELECTED}
    assert _identity(part / "bin" / "run.sh") == _identity(tree / "bin" / "run.sh")

    # What a build reads of it: COPY . /ctx, exported.
    copied = llb.scratch().file(llb.copy(selected, "/", "/ctx/", create_dest_path=True))
    result = hw.solve(copied.marshal(), build_ref="copied", local_dirs=dirs)
    out = hw.export(result, tmp_path / "out")
    assert _entries(out / "ctx") == _entries(part)
    assert (out / "ctx" / "link").readlink() == Path("a.txt")
    assert stat.S_IMODE((out / "ctx" / "bin" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "ctx" / "a.txt").stat().st_mode) == 0o640
    assert _identity(out / "ctx" / "a.txt") != _identity(tree / "a.txt")


def test_a_plain_directory_is_still_copied(hw: Harness, tmp_path: Path) -> None:
    host = _host_dir(tmp_path)
    store = ContextStore.under(hw.root)
    assert not store.holds_tree(host)
    selected = llb.local("context", include=INCLUDE, exclude=EXCLUDE)
    part = _snapshot_dir(hw, hw.solve(selected.marshal(), build_ref="plain", local_dirs={"context": host}))
    assert sorted(_entries(part)) == SELECTED
    assert _entries(part) == {rel: e for rel, e in _entries(host).items() if rel in SELECTED}
    for rel in SELECTED:
        assert _identity(part / rel) != _identity(host / rel), rel
        if not (host / rel).is_dir():
            assert (host / rel).lstat().st_nlink == 1


def test_writing_a_linked_file_leaves_the_tree_alone(hw: Harness, images: Images, tmp_path: Path) -> None:
    host = _host_dir(tmp_path)
    _, dirs = _received(hw, host, "first")
    tree = dirs["context"]
    before = _entries(tree)
    context = llb.local("context")
    source = _snapshot_dir(hw, hw.solve(context.marshal(), build_ref="first", local_dirs=dirs))
    assert _identity(source / "a.txt") == _identity(tree / "a.txt")
    base = llb.image(images.busybox)

    # The local source itself mounted writable (RUN --mount=type=bind,rw): written in place.
    script = "echo more >> /ctx/a.txt && chmod 600 /ctx/bin/run.sh && touch /ctx/sub/y && rm /ctx/sub/deep/x"
    run = base.run(script, mounts=[llb.bind(context, "/ctx")])
    result = hw.solve(run.get_mount("/ctx").marshal(), build_ref="bound", local_dirs=dirs)
    out = hw.export(result, tmp_path / "bound")
    assert (out / "a.txt").read_text() == "alpha\nmore\n"
    assert stat.S_IMODE((out / "bin" / "run.sh").stat().st_mode) == 0o600
    assert not (out / "sub" / "deep" / "x").exists()

    # COPY . /ctx, then a step that appends to a copied file.
    copied = base.file(llb.copy(context, "/", "/ctx/", create_dest_path=True))
    appended = copied.run("echo again >> /ctx/a.txt && chmod 700 /ctx/a.txt").root()
    result = hw.solve(appended.marshal(), build_ref="appended", local_dirs=dirs)
    out = hw.export(result, tmp_path / "appended")
    assert (out / "ctx" / "a.txt").read_text() == "alpha\nagain\n"

    # The tree, and the local source's snapshot (its links), are as they were.
    assert _entries(tree) == before
    assert _entries(source) == before
    assert (tree / "a.txt").read_text() == "alpha\n" and (tree / "a.txt").stat().st_mtime_ns == 1_000_000_000
    assert stat.S_IMODE((tree / "bin" / "run.sh").stat().st_mode) == 0o755
    assert _identity(source / "a.txt") == _identity(tree / "a.txt")

    # A rebuild of the same context reads the same tree and finds it unchanged.
    _, again = _received(hw, host, "again")
    assert again["context"] == tree
    out = hw.export(hw.solve(context.marshal(), build_ref="again", local_dirs=again), tmp_path / "again")
    assert _entries(out) == before


def test_a_new_trees_keys_read_none_of_its_files(
    hw: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tree's manifest holds every file's digest (the store made the tree from blobs of those
    # digests): the local source's content key takes them, and keeps them by inode, so the COPY's
    # key over the source's snapshot (the tree's own inodes) finds them too.
    host = _host_dir(tmp_path)
    _, dirs = _received(hw, host, "keyed")
    tree = dirs["context"]
    assert os.major(tree.stat().st_dev) != 0, "the tree must be on a disk (tmpfs inodes are never kept)"
    read: list[str] = []
    real = contenthash._file_digest

    def counting(path: str) -> bytes:
        read.append(path)
        return real(path)

    monkeypatch.setattr(contenthash, "_file_digest", counting)
    copied = llb.scratch().file(llb.copy(llb.local("context"), "/", "/ctx/", create_dest_path=True))
    out = hw.export(hw.solve(copied.marshal(), build_ref="keyed", local_dirs=dirs), tmp_path / "out")
    assert _entries(out / "ctx") == _entries(tree)
    assert read == []
    # The same key as a walk that reads every file: a plain copy of the tree is not a store tree.
    plain = tmp_path / "plain-copy"
    shutil.copytree(tree, plain, symlinks=True)
    assert contenthash.checksum(plain) == contenthash.checksum(
        tree, digests=contenthash.FileDigests(), known=hw.engine.solver.backends.tree_files(tree)
    )
