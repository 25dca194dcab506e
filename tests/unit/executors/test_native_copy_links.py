"""The native snapshotter's tree copy keeps hard links as links between its own copies, and a hard-linked
symlink stays a symlink: following it would link whatever it names on the host into the snapshot.
(Linux's link(2) does not follow; the copy asks for that explicitly, so it holds wherever it runs.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buildsvc.executors.native import copy_tree


def test_a_hard_linked_symlink_is_copied_as_symlinks_never_as_its_target(tmp_path: Path) -> None:
    host_file = tmp_path / "host-secret"
    host_file.write_text("host only\n")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(str(host_file), src / "a")  # absolute: names a host path when followed on the host
    os.link(src / "a", src / "b", follow_symlinks=False)  # a second name for the symlink itself
    assert os.lstat(src / "b").st_nlink == 2
    dst = tmp_path / "dst"
    copy_tree(str(src), str(dst))
    for name in ("a", "b"):
        st = os.lstat(dst / name)
        assert stat.S_ISLNK(st.st_mode), name
        assert os.readlink(dst / name) == str(host_file)
        assert st.st_ino != os.stat(host_file).st_ino
    assert os.lstat(dst / "a").st_ino == os.lstat(dst / "b").st_ino  # still one inode, as in the source
    assert os.stat(host_file).st_nlink == 1


def test_hard_linked_files_stay_linked_among_the_copies_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("data")
    os.link(src / "x", src / "y")
    dst = tmp_path / "dst"
    copy_tree(str(src), str(dst))
    assert os.stat(dst / "x").st_ino == os.stat(dst / "y").st_ino
    assert os.stat(dst / "x").st_ino != os.stat(src / "x").st_ino
    assert (dst / "y").read_text() == "data"
