"""The snapshot index on its own: one metadata file per snapshot, and what a crash leaves behind.

No root needed: the index only makes directories and files. A crash is reproduced by leaving on
disk exactly what the interrupted operation would have left, then opening the index again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from buildsvc.executors import SnapshotExists, SnapshotInUse, SnapshotNotFound, SnapshotStateError
from buildsvc.executors.snapshot_index import CorruptSnapshotMetadata, SnapshotIndex, _DirectorySync
from buildsvc.solver.worker import SnapshotInfo, SnapshotKind

ACTIVE, COMMITTED, VIEW = SnapshotKind.ACTIVE, SnapshotKind.COMMITTED, SnapshotKind.VIEW


def info(key: str, kind: SnapshotKind = ACTIVE, parent: str | None = None) -> SnapshotInfo:
    return SnapshotInfo(key=key, kind=kind, parent=parent)


def make(index: SnapshotIndex, key: str, kind: SnapshotKind = ACTIVE, parent: str | None = None) -> str:
    with index.create(info(key, kind, parent)) as path:
        Path(path, "fs").mkdir()
    return path


def commit(index: SnapshotIndex, key: str, active: str) -> None:
    entry = index.get(active)
    with index.key_lock(active):
        index.rekey(active, info(key, COMMITTED, entry.info.parent))


def listing(index: SnapshotIndex) -> list[tuple[str, str, str | None]]:
    return [(i.key, i.kind.value, i.parent) for i in index.all()]


def metadata_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "metadata"))


def test_one_metadata_file_per_snapshot_and_reopen(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    commit(index, "base", "a")
    make(index, "child", parent="base")
    make(index, "v", VIEW, parent="base")
    base, child = index.get("base"), index.get("child")
    assert metadata_files(tmp_path) == sorted(f"{e.dir_id}.json" for e in (base, child, index.get("v")))
    assert json.loads((tmp_path / "metadata" / f"{base.dir_id}.json").read_text()) == {
        "key": "base",
        "kind": "committed",
        "parent": None,
    }
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == listing(index)
    assert reopened.get("child") == child
    assert reopened.children("base") == ["child", "v"]
    with index.key_lock("child"):
        index.delete("child")
    assert metadata_files(tmp_path) == sorted(f"{e.dir_id}.json" for e in (base, index.get("v")))
    assert not os.path.exists(index.dir_of(child.dir_id))


def test_half_written_metadata_of_a_crashed_prepare_is_dropped(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "kept")
    # A prepare that crashed while writing its metadata: its directory, and a truncated temp file.
    crashed = tmp_path / "snapshots" / "7"
    (crashed / "fs").mkdir(parents=True)
    (tmp_path / "metadata" / "7.json.tmp").write_text('{"key": "lost", "ki')
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == [("kept", "active", None)]
    assert not crashed.exists()
    assert metadata_files(tmp_path) == [f"{index.get('kept').dir_id}.json"]
    # The number is not handed out again, and the key is free.
    make(reopened, "lost")
    assert reopened.get("lost").dir_id > 7


def test_half_written_metadata_of_a_crashed_commit_leaves_it_active(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    path = make(index, "act")
    Path(path, "fs", "file").write_text("data")
    dir_id = index.get("act").dir_id
    (tmp_path / "metadata" / f"{dir_id}.json.tmp").write_text('{"key": "done", "kind": "comm')
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == [("act", "active", None)]
    assert Path(reopened.dir_of(dir_id), "fs", "file").read_text() == "data"
    commit(reopened, "done", "act")
    assert listing(SnapshotIndex(str(tmp_path))) == [("done", "committed", None)]


def test_crash_between_forgetting_and_removing_leaves_an_orphan_removed_on_open(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "gone")
    dir_id = index.get("gone").dir_id
    # What a remove leaves if it crashes after unlinking the metadata, before removing the directory.
    os.unlink(tmp_path / "metadata" / f"{dir_id}.json")
    reopened = SnapshotIndex(str(tmp_path))
    assert reopened.all() == []
    assert not os.path.exists(reopened.dir_of(dir_id))


def test_unreadable_metadata_is_an_error_naming_the_file(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    path = tmp_path / "metadata" / f"{index.get('a').dir_id}.json"
    path.write_text("{not json")
    with pytest.raises(CorruptSnapshotMetadata) as e:
        SnapshotIndex(str(tmp_path))
    assert e.value.path == str(path)
    path.write_text(json.dumps({"key": "../x", "kind": "active", "parent": None}))
    with pytest.raises(CorruptSnapshotMetadata, match="invalid snapshot key"):
        SnapshotIndex(str(tmp_path))


def test_metadata_a_machine_crash_left_empty_is_dropped_with_its_directory(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "kept")
    make(index, "unflushed")
    lost = index.get("unflushed").dir_id
    # Written without fsync: a power loss can leave the renamed file with no content.
    (tmp_path / "metadata" / f"{lost}.json").write_bytes(b"")
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == [("kept", "active", None)]
    assert not os.path.exists(reopened.dir_of(lost))
    assert metadata_files(tmp_path) == [f"{index.get('kept').dir_id}.json"]


def test_a_key_named_twice_after_a_machine_crash_keeps_the_newer_snapshot(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "layer")
    old = index.get("layer").dir_id
    old_file = (tmp_path / "metadata" / f"{old}.json").read_bytes()
    with index.key_lock("layer"):
        index.delete("layer")
    make(index, "layer")
    new = index.get("layer").dir_id
    # The removal's unlink was not flushed: the old file is back beside the new one.
    (tmp_path / "metadata" / f"{old}.json").write_bytes(old_file)
    Path(index.dir_of(old), "fs").mkdir(parents=True)
    reopened = SnapshotIndex(str(tmp_path))
    assert reopened.get("layer").dir_id == new > old
    assert metadata_files(tmp_path) == [f"{new}.json"]
    assert not os.path.exists(reopened.dir_of(old))


class CountingFsync:
    """Counts os.fsync calls (and does them)."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.real(fd)


def test_only_removing_a_committed_snapshot_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = SnapshotIndex(str(tmp_path))
    counter = CountingFsync()
    monkeypatch.setattr(os, "fsync", counter)
    make(index, "a")
    commit(index, "base", "a")
    make(index, "v", VIEW, parent="base")
    make(index, "scratch")
    for key in ("v", "scratch"):
        with index.key_lock(key):
            index.delete(key)
    assert counter.calls == 0  # the log is the durable record of these
    with index.key_lock("base"):
        index.delete("base")
    assert counter.calls == 1  # forgotten for good before its data goes
    assert index.all() == []


def test_legacy_single_index_file_is_converted(tmp_path: Path) -> None:
    for n in (3, 5):
        (tmp_path / "snapshots" / str(n) / "fs").mkdir(parents=True)
    (tmp_path / "snapshots" / "4").mkdir()  # an orphan of the old index
    legacy = {
        "next_id": 6,
        "snapshots": [
            {"key": "base", "kind": "committed", "parent": None, "dir_id": 3},
            {"key": "act", "kind": "active", "parent": "base", "dir_id": 5},
        ],
    }
    (tmp_path / "index.json").write_text(json.dumps(legacy))
    index = SnapshotIndex(str(tmp_path))
    assert listing(index) == [("act", "active", "base"), ("base", "committed", None)]
    assert index.get("act").dir_id == 5
    assert not (tmp_path / "index.json").exists()
    assert metadata_files(tmp_path) == ["3.json", "5.json"]
    assert sorted(os.listdir(tmp_path / "snapshots")) == ["3", "5"]
    assert listing(SnapshotIndex(str(tmp_path))) == listing(index)


def test_a_failed_create_frees_its_key_and_directory(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    commit(index, "base", "a")
    made: list[str] = []

    def fill_then_fail() -> None:
        with index.create(info("broken", parent="base")) as path:
            made.append(path)
            Path(path, "fs").mkdir()
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fill_then_fail()
    assert not os.path.exists(made[0])
    assert index.children("base") == []
    with pytest.raises(SnapshotNotFound):
        index.get("broken")
    make(index, "broken", parent="base")
    assert metadata_files(tmp_path) == sorted(f"{index.get(k).dir_id}.json" for k in ("base", "broken"))


def test_a_key_being_created_is_taken_and_keeps_its_parent(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    commit(index, "base", "a")
    make(index, "b")
    with index.create(info("new", parent="base")):
        with pytest.raises(SnapshotExists):
            make(index, "new")
        with pytest.raises(SnapshotExists):
            commit(index, "new", "b")
        with index.key_lock("base"), pytest.raises(SnapshotInUse) as e:
            index.delete("base")
        assert e.value.children == ("new",)
        # Not visible until recorded.
        with pytest.raises(SnapshotNotFound):
            index.get("new")
    assert index.get("new").info.parent == "base"


def test_kinds_are_checked_with_the_reservation(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "act")
    with pytest.raises(SnapshotStateError):
        make(index, "on-active", parent="act")
    with pytest.raises(SnapshotNotFound):
        make(index, "orphan", parent="missing")
    assert [i.key for i in index.all()] == ["act"]
    assert sorted(os.listdir(tmp_path / "snapshots")) == [str(index.get("act").dir_id)]


def test_numbers_are_not_reused_while_a_mount_point_remains(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    (tmp_path / "mounts" / "40").mkdir()  # left by a process that died with it mounted
    reopened = SnapshotIndex(str(tmp_path))
    make(reopened, "b")
    assert reopened.get("b").dir_id == 41


def test_concurrent_operations_on_different_keys(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "a")
    commit(index, "base", "a")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                make(index, f"t{n}-{i}", parent="base")
                commit(index, f"t{n}-{i}-c", f"t{n}-{i}")
                if i % 2:
                    with index.key_lock(f"t{n}-{i}-c"):
                        index.delete(f"t{n}-{i}-c")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = ["base", *sorted(f"t{n}-{i}-c" for n in range(8) for i in range(0, 20, 2))]
    assert [i.key for i in index.all()] == expected
    assert index.children("base") == expected[1:]
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == listing(index)
    assert len(metadata_files(tmp_path)) == len(expected)
    assert len(os.listdir(tmp_path / "snapshots")) == len(expected)


class BlockingFsync:
    """Stands in for os.fsync on directories: the first call blocks until released; counts calls."""

    def __init__(self, fail_first: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.fail_first = fail_first
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30)
            if self.fail_first:
                raise OSError(5, "Input/output error")
        self.real(fd)


def test_threads_needing_the_directory_synced_at_once_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = _DirectorySync(str(tmp_path))
    fake = BlockingFsync()
    monkeypatch.setattr(os, "fsync", fake)
    done: list[int] = []

    def caller(i: int) -> None:
        sync.sync()
        done.append(i)

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    assert fake.entered.wait(30)
    # These changes were made after the running fsync started: it does not cover them.
    waiters = [threading.Thread(target=caller, args=(i,)) for i in range(1, 5)]
    for t in waiters:
        t.start()
    while sync._issued < 5:  # every waiter has its ticket
        threading.Event().wait(0.01)
    assert done == []
    fake.release.set()
    for t in [first, *waiters]:
        t.join(30)
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert fake.calls == 2  # the first caller's, then one for the four that came during it


def test_a_failed_directory_fsync_fails_its_caller_and_the_next_callers_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = _DirectorySync(str(tmp_path))
    fake = BlockingFsync(fail_first=True)
    monkeypatch.setattr(os, "fsync", fake)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            sync.sync()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    assert fake.entered.wait(30)
    later = threading.Thread(target=sync.sync)
    later.start()
    while sync._issued < 2:
        threading.Event().wait(0.01)
    fake.release.set()
    t.join(30)
    later.join(30)
    assert [str(e) for e in errors] == ["[Errno 5] Input/output error"]
    assert fake.calls == 2  # the later caller was not covered by the failed fsync: it ran its own


def test_a_commit_rewrites_its_record_in_place(tmp_path: Path) -> None:
    # No temp file renamed over it: the same inode, no inode freed (see the module's docstring).
    index = SnapshotIndex(str(tmp_path))
    make(index, "act")
    path = tmp_path / "metadata" / f"{index.get('act').dir_id}.json"
    before = path.stat()
    commit(index, "done", "act")
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert metadata_files(tmp_path) == [path.name]
    assert json.loads(path.read_bytes()) == {"key": "done", "kind": "committed", "parent": None}


def test_the_longest_keys_fit_one_record(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    longest = "k" * 200
    make(index, "a")
    commit(index, longest, "a")
    make(index, "b" * 200, parent=longest)
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == listing(index)
    assert {os.path.getsize(tmp_path / "metadata" / name) for name in metadata_files(tmp_path)} == {512}


def test_an_unpadded_file_of_an_earlier_version_is_read_and_rewritten(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "act")
    path = tmp_path / "metadata" / f"{index.get('act').dir_id}.json"
    path.write_text(json.dumps({"key": "act", "kind": "active", "parent": None}))
    reopened = SnapshotIndex(str(tmp_path))
    commit(reopened, "a-longer-committed-key", "act")
    assert listing(SnapshotIndex(str(tmp_path))) == [("a-longer-committed-key", "committed", None)]


def test_metadata_a_machine_crash_left_as_zeros_is_dropped_with_its_directory(tmp_path: Path) -> None:
    index = SnapshotIndex(str(tmp_path))
    make(index, "kept")
    make(index, "unflushed")
    lost = index.get("unflushed").dir_id
    # The file's size reached the disk, its block did not: zeros.
    (tmp_path / "metadata" / f"{lost}.json").write_bytes(bytes(512))
    reopened = SnapshotIndex(str(tmp_path))
    assert listing(reopened) == [("kept", "active", None)]
    assert not os.path.exists(reopened.dir_of(lost))
