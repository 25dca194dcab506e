"""MergeOp and DiffOp on real directories: overlay order, metadata, links and deletions."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from buildsvc.executors.merge_diff import diff_into, is_whiteout, merge_into
from buildsvc.solver.contenthash import checksum


def write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            p.mkdir(exist_ok=True)
        elif content.startswith("->"):
            p.symlink_to(content[2:])
        else:
            p.write_text(content)
    return root


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_merge_later_sources_win(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"same": "a", "only_a": "a", "d/x": "a", "was_dir/y": "a", "was_file": "a"})
    b = write(tmp_path / "b", {"same": "b", "d/z": "b", "was_dir": "now a file", "was_file/inner": "b"})
    os.chmod(b / "d", 0o700)
    out = tmp_path / "out"
    out.mkdir()
    merge_into(out, [a, b])
    assert (out / "same").read_text() == "b"
    assert (out / "only_a").read_text() == "a"
    assert sorted(os.listdir(out / "d")) == ["x", "z"]
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o700  # the upper directory's metadata
    assert (out / "was_dir").read_text() == "now a file"
    assert (out / "was_file/inner").read_text() == "b"


def test_merge_keeps_symlinks_modes_times_and_hard_links(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"f": "x", "l": "->/abs/target"})
    os.chmod(a / "f", 0o4711)
    os.utime(a / "f", ns=(5, 1_000_000_007))
    os.link(a / "f", a / "hard")
    out = tmp_path / "out"
    out.mkdir()
    merge_into(out, [a])
    assert os.readlink(out / "l") == "/abs/target"
    st = os.stat(out / "f")
    assert stat.S_IMODE(st.st_mode) == 0o4711 and st.st_mtime_ns == 1_000_000_007
    assert st.st_ino == os.stat(out / "hard").st_ino
    assert checksum(out) == checksum(a)


@pytest.mark.root
def test_merge_keeps_ownership(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"d/f": "x"})
    os.chown(a / "d", 11, 12)
    os.chown(a / "d/f", 13, 14)
    out = tmp_path / "out"
    out.mkdir()
    merge_into(out, [a])
    assert (os.stat(out / "d").st_uid, os.stat(out / "d/f").st_gid) == (11, 14)


@pytest.mark.root
def test_diff_holds_additions_modifications_and_whiteouts(tmp_path: Path) -> None:
    lower = write(
        tmp_path / "lower", {"keep": "k", "edit": "old", "gone": "g", "dir/gone2": "g", "dir/stay": "s"}
    )
    upper = write(
        tmp_path / "upper", {"keep": "k", "edit": "new", "dir/stay": "s", "dir/new": "n", "added/x": "x"}
    )
    # "keep" and "dir/stay" are identical to lower (same bytes, mode and time): not in the diff.
    for rel in ("keep", "dir/stay"):
        st = os.stat(lower / rel)
        os.utime(upper / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "diff"
    out.mkdir()
    diff_into(out, lower, upper)
    assert listing(out) == ["added", "added/x", "dir", "dir/gone2", "dir/new", "edit", "gone"]
    assert is_whiteout(os.lstat(out / "gone")) and is_whiteout(os.lstat(out / "dir/gone2"))
    assert (out / "edit").read_text() == "new"

    # The point of keeping deletions: merge(lower, diff(lower, upper)) == upper.
    rebased = tmp_path / "rebased"
    rebased.mkdir()
    merge_into(rebased, [lower, out])
    assert listing(rebased) == listing(upper)
    assert checksum(rebased) == checksum(upper)


def test_diff_without_recording_deletions(tmp_path: Path) -> None:
    lower = write(tmp_path / "lower", {"gone": "g", "d/gone": "g"})
    upper = write(tmp_path / "upper", {"d/": "", "new": "n"})
    os.chmod(upper / "d", 0o711)  # a metadata change alone puts a directory in the diff
    out = tmp_path / "diff"
    out.mkdir()
    diff_into(out, lower, upper, record_deletions=False)
    assert listing(out) == ["d", "new"]
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o711


def test_diff_notices_type_changes_and_same_time_edits(tmp_path: Path) -> None:
    lower = write(tmp_path / "lower", {"t": "file", "s": "1234", "l": "->a"})
    upper = write(tmp_path / "upper", {"t/inside": "now a dir", "s": "5678", "l": "->b"})
    # Same size, same whole-second time (as from a tar): only the bytes tell them apart.
    os.utime(lower / "s", ns=(0, 2_000_000_000))
    os.utime(upper / "s", ns=(0, 2_000_000_000))
    out = tmp_path / "diff"
    out.mkdir()
    diff_into(out, lower, upper)
    assert listing(out) == ["l", "s", "t", "t/inside"]
    assert os.readlink(out / "l") == "b" and (out / "s").read_text() == "5678"


def test_diff_from_scratch_is_the_upper_tree(tmp_path: Path) -> None:
    upper = write(tmp_path / "upper", {"a/b": "x", "l": "->a"})
    out = tmp_path / "diff"
    out.mkdir()
    diff_into(out, None, upper)
    assert checksum(out) == checksum(upper)


@pytest.mark.root
def test_a_whiteout_with_nothing_below_is_dropped_by_merge(tmp_path: Path) -> None:
    lower = write(tmp_path / "lower", {"x": "x"})
    upper = write(tmp_path / "upper", {})
    out = tmp_path / "diff"
    out.mkdir()
    diff_into(out, lower, upper)
    merged = tmp_path / "merged"
    merged.mkdir()
    merge_into(merged, [out])
    assert listing(merged) == []


def test_a_linking_merge_shares_files_and_still_layers_in_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"same": "a", "only_a": "a", "d/x": "a", "l": "->/abs"})
    b = write(tmp_path / "b", {"same": "b", "d/z": "b"})
    os.chmod(b / "d", 0o700)
    out = tmp_path / "out"
    out.mkdir()
    merge_into(out, [a, b], link=True)
    assert os.stat(out / "same").st_ino == os.stat(b / "same").st_ino
    assert os.stat(out / "only_a").st_ino == os.stat(a / "only_a").st_ino
    assert os.lstat(out / "l").st_ino == os.lstat(a / "l").st_ino  # the symlink itself, not followed
    # Directories are the merge's own, with the upper source's metadata.
    assert os.stat(out / "d").st_ino not in (os.stat(a / "d").st_ino, os.stat(b / "d").st_ino)
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o700
    assert sorted(os.listdir(out / "d")) == ["x", "z"]
    assert (a / "same").read_text() == "a"  # replacing a linked entry unlinks it, never writes it


def test_a_linking_merge_copies_what_it_cannot_link(tmp_path: Path) -> None:
    # /dev/shm is another filesystem than the test's tmp dir: link(2) fails with EXDEV.
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm must be another filesystem for this test")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        a = write(Path(other) / "a", {"f": "x"})
        out = tmp_path / "out"
        out.mkdir()
        merge_into(out, [a], link=True)
        assert (out / "f").read_text() == "x"
        assert os.stat(out / "f").st_ino != os.stat(a / "f").st_ino
