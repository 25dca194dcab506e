"""OverlaySnapshotter (real overlay mounts) and NativeSnapshotter: the same behaviours."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from buildsvc.executors import (
    InvalidSnapshotKey,
    OciRuntimeExecutor,
    SnapshotExists,
    SnapshotInUse,
    SnapshotNotFound,
    SnapshotStateError,
    mounts,
)
from buildsvc.executors.mounts import is_mounted, mounts_under
from buildsvc.executors.overlay import OverlaySnapshotter
from buildsvc.solver.worker import ChangeKind, SnapshotKind, Snapshotter
from tests.integration.executors.conftest import Runner, commit_busybox, make_snapshotter

pytestmark = pytest.mark.root


def write_layer(snapshotter: Snapshotter, key: str, parent: str | None, files: dict[str, str | None]) -> None:
    """Commit ``key`` on ``parent`` with ``files`` written (``None`` deletes the path)."""
    snapshotter.prepare(key + "-active", parent)
    mount = snapshotter.mount(key + "-active")
    try:
        for rel, content in files.items():
            path = Path(mount.path, rel)
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    finally:
        snapshotter.unmount(key + "-active")
    snapshotter.commit(key, key + "-active")


def read_view(snapshotter: Snapshotter, parent: str) -> dict[str, str]:
    """Files (relative path -> text) seen through a read-only view of ``parent``."""
    snapshotter.view("v", parent)
    mount = snapshotter.mount("v")
    try:
        assert mount.readonly
        with pytest.raises(OSError, match="Read-only"):
            Path(mount.path, "new").write_text("x")
        seen = {}
        for dirpath, _, files in os.walk(mount.path):
            for name in files:
                p = os.path.join(dirpath, name)
                seen[os.path.relpath(p, mount.path)] = Path(p).read_text()
        return seen
    finally:
        snapshotter.unmount("v")
        snapshotter.remove("v")


def kinds(snapshotter: Snapshotter, key: str) -> list[tuple[str, str]]:
    return [(c.kind.value, c.path) for c in snapshotter.changes(key)]


def test_three_stacked_layers(snapshotter: Snapshotter) -> None:
    write_layer(snapshotter, "l1", None, {"a": "1", "d/x": "x1"})
    write_layer(snapshotter, "l2", "l1", {"b": "2", "a": "1b"})
    write_layer(snapshotter, "l3", "l2", {"c": "3", "d/y": "y3"})
    assert read_view(snapshotter, "l3") == {"a": "1b", "b": "2", "c": "3", "d/x": "x1", "d/y": "y3"}
    assert read_view(snapshotter, "l1") == {"a": "1", "d/x": "x1"}
    assert kinds(snapshotter, "l1") == [("added", "/a"), ("added", "/d"), ("added", "/d/x")]
    assert kinds(snapshotter, "l2") == [("modified", "/a"), ("added", "/b")]
    assert kinds(snapshotter, "l3") == [("added", "/c"), ("modified", "/d"), ("added", "/d/y")]
    assert [(i.key, i.kind, i.parent) for i in snapshotter.list()] == [
        ("l1", SnapshotKind.COMMITTED, None),
        ("l2", SnapshotKind.COMMITTED, "l1"),
        ("l3", SnapshotKind.COMMITTED, "l2"),
    ]


def test_deleting_a_lower_file(snapshotter: Snapshotter, tmp_path: Path) -> None:
    write_layer(snapshotter, "l1", None, {"a": "1", "keep": "k"})
    write_layer(snapshotter, "l2", "l1", {"a": None})
    write_layer(snapshotter, "l3", "l2", {"a2": "new"})
    assert read_view(snapshotter, "l3") == {"keep": "k", "a2": "new"}
    assert kinds(snapshotter, "l2") == [("deleted", "/a")]
    assert kinds(snapshotter, "l3") == [("added", "/a2")]
    if snapshotter.name == "overlay":
        # On disk the deletion is an overlay whiteout: a 0/0 character device in the layer.
        (whiteout,) = [p for p in tmp_path.rglob("a") if stat.S_ISCHR(p.lstat().st_mode)]
        assert whiteout.lstat().st_rdev == 0


def test_replaced_directory_hides_lower_content(snapshotter: Snapshotter) -> None:
    write_layer(snapshotter, "l1", None, {"d/old": "o", "d/same": "s1"})
    snapshotter.prepare("act", "l1")
    mount = snapshotter.mount("act")
    try:
        for name in os.listdir(Path(mount.path, "d")):
            Path(mount.path, "d", name).unlink()
        os.rmdir(Path(mount.path, "d"))
        os.mkdir(Path(mount.path, "d"))
        Path(mount.path, "d", "same").write_text("s2")
    finally:
        snapshotter.unmount("act")
    snapshotter.commit("l2", "act")
    assert read_view(snapshotter, "l2") == {"d/same": "s2"}
    changes = kinds(snapshotter, "l2")
    assert ("deleted", "/d/old") in changes or ("deleted", "/d") in changes
    assert changes[-1] in {("added", "/d/same"), ("modified", "/d/same")}


def test_remove_refused_while_child_or_mount_depends(snapshotter: Snapshotter) -> None:
    write_layer(snapshotter, "base", None, {"a": "1"})
    snapshotter.prepare("child", "base")
    with pytest.raises(SnapshotInUse) as e:
        snapshotter.remove("base")
    assert e.value.children == ("child",)
    snapshotter.mount("child")
    with pytest.raises(SnapshotInUse) as mounted:
        snapshotter.remove("child")
    assert mounted.value.mounted
    with pytest.raises(SnapshotInUse):
        snapshotter.commit("c", "child")
    snapshotter.unmount("child")
    snapshotter.remove("child")
    snapshotter.remove("base")
    assert snapshotter.list() == []
    with pytest.raises(SnapshotNotFound):
        snapshotter.stat("base")


def test_an_active_on_scratch_is_used_in_place_and_guarded_while_in_use(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    snapshotter.prepare("scratch")
    mount = snapshotter.mount("scratch")
    # No lower to stack: its own directory, no kernel mount (mkfile on scratch pays for none).
    assert mounts_under(str(tmp_path)) == []
    assert not mount.readonly
    Path(mount.path, "f").write_text("x")
    with pytest.raises(SnapshotInUse) as e:
        snapshotter.commit("done", "scratch")
    assert e.value.mounted
    with pytest.raises(SnapshotInUse):
        snapshotter.remove("scratch")
    snapshotter.unmount("scratch")
    snapshotter.commit("done", "scratch")
    assert read_view(snapshotter, "done") == {"f": "x"}


def test_overlay_unmount_of_an_active_on_scratch_makes_no_umount_call(
    overlay: OverlaySnapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay.prepare("scratch")
    overlay.mount("scratch")
    calls: list[str] = []
    monkeypatch.setattr(mounts, "unmount", calls.append)
    overlay.unmount("scratch")
    # Nothing was mounted: no syscall to pay, and the snapshot is free to commit.
    assert calls == []
    overlay.commit("done", "scratch")
    assert overlay.stat("done").kind is SnapshotKind.COMMITTED


def test_kinds_and_keys_are_checked(snapshotter: Snapshotter) -> None:
    write_layer(snapshotter, "base", None, {"a": "1"})
    with pytest.raises(SnapshotExists):
        snapshotter.prepare("base")
    with pytest.raises(SnapshotStateError):
        snapshotter.commit("again", "base")
    with pytest.raises(SnapshotStateError):
        snapshotter.mount("base")
    with pytest.raises(InvalidSnapshotKey):
        snapshotter.prepare("../escape")
    snapshotter.prepare("act", "base")
    with pytest.raises(SnapshotStateError):
        snapshotter.prepare("on-active", "act")
    with pytest.raises(SnapshotNotFound):
        snapshotter.prepare("x", "missing")


def test_index_survives_reopen(snapshotter: Snapshotter, tmp_path: Path) -> None:
    write_layer(snapshotter, "l1", None, {"a": "1"})
    write_layer(snapshotter, "l2", "l1", {"b": "2"})
    reopened = make_snapshotter(snapshotter.name, tmp_path / "snapshots")
    assert [i.key for i in reopened.list()] == ["l1", "l2"]
    assert read_view(reopened, "l2") == {"a": "1", "b": "2"}


def test_native_copy_keeps_links_modes_owners(tmp_path: Path) -> None:
    native = make_snapshotter("native", tmp_path / "native")
    native.prepare("a")
    root = Path(native.mount("a").path)
    (root / "f").write_text("data")
    os.chown(root / "f", 1234, 4321)
    os.chmod(root / "f", 0o4750)  # after chown, which clears setuid
    os.link(root / "f", root / "hard")
    (root / "sym").symlink_to("/f")
    os.mkfifo(root / "fifo")
    native.unmount("a")
    native.commit("base", "a")
    native.prepare("b", "base")
    copy = Path(native.mount("b").path)
    try:
        st = (copy / "f").lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4750, 1234, 4321)
        assert (copy / "hard").lstat().st_ino == st.st_ino
        assert os.readlink(copy / "sym") == "/f"
        assert stat.S_ISFIFO((copy / "fifo").lstat().st_mode)
        assert st.st_mtime_ns == (root / "f").lstat().st_mtime_ns
    finally:
        native.unmount("b")
    assert native.changes("b") == []


@pytest.mark.parametrize("kind", ["overlay", "native"])
def test_exec_on_each_snapshotter(executor: OciRuntimeExecutor, tmp_path: Path, kind: str) -> None:
    snapshotter = make_snapshotter(kind, tmp_path / kind)
    commit_busybox(snapshotter)
    runner = Runner(executor, snapshotter)
    runner.run("sh", "-c", "echo hi > /hi && rm /etc/group", commit_as="step")
    assert [(c.kind, c.path) for c in snapshotter.changes("step")] == [
        (ChangeKind.MODIFIED, "/etc"),
        (ChangeKind.DELETED, "/etc/group"),
        (ChangeKind.ADDED, "/hi"),
    ]
    assert runner.run("cat", "/hi", base="step").out == "hi\n"
    mount_dir = tmp_path / kind / "mounts"
    assert not any(is_mounted(str(p)) for p in mount_dir.iterdir())
