"""Kernel mounts through mount(2)/umount2(2): options, read-only binds, clear failures (run as root)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from buildsvc.executors import MountFailure
from buildsvc.executors.mounts import (
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    is_mounted,
    mount,
    parse_options,
    unmount,
)

pytestmark = pytest.mark.root


def test_options_split_into_flags_and_data_as_mount8_does() -> None:
    assert parse_options(["ro", "nosuid", "lowerdir=/a:/b", "index=off"]) == (
        MS_RDONLY | MS_NOSUID,
        "lowerdir=/a:/b,index=off",
    )
    assert parse_options(["ro", "nodev", "rw", "defaults"]) == (MS_NODEV, "")
    assert parse_options([]) == (0, "")


def test_tmpfs_with_flags_and_data(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    mount("tmpfs", "tmpfs", str(target), ["nosuid", "nodev", "size=1m", "mode=0710"])
    try:
        assert is_mounted(str(target))
        st = os.statvfs(target)
        assert st.f_flag & os.ST_NOSUID
        assert st.f_flag & os.ST_NODEV
        assert not st.f_flag & os.ST_RDONLY
        assert st.f_blocks * st.f_frsize == 1 << 20
        assert target.stat().st_mode & 0o777 == 0o710
    finally:
        unmount(str(target))
    assert not is_mounted(str(target))


def test_read_only_bind_is_read_only_and_keeps_inherited_flags(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    target.mkdir()
    mount("tmpfs", "tmpfs", str(source), ["nosuid"])
    try:
        Path(source, "f").write_text("x")
        mount("bind", str(source), str(target), ["ro"])
        try:
            assert Path(target, "f").read_text() == "x"
            with pytest.raises(OSError, match="Read-only file system"):
                Path(target, "g").write_text("y")
            assert os.statvfs(target).f_flag & os.ST_NOSUID
            # The source itself stays writable.
            Path(source, "g").write_text("y")
        finally:
            unmount(str(target))
        mount("bind", str(source), str(target))
        try:
            Path(target, "h").write_text("z")
        finally:
            unmount(str(target))
    finally:
        unmount(str(source))


def test_failures_are_mount_failures_naming_command_and_cause(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(MountFailure, match="does not support filesystem type 'nosuchfs'") as e:
        mount("nosuchfs", "none", str(target))
    assert e.value.target == str(target)
    assert "mount -t nosuchfs none" in e.value.message
    missing = tmp_path / "missing"
    with pytest.raises(MountFailure, match=f"{missing} does not exist"):
        mount("bind", str(missing), str(target), ["ro"])
    with pytest.raises(MountFailure, match="mount -t overlay -o lowerdir=") as bad:
        mount("overlay", "overlay", str(target), [f"lowerdir={missing}"])
    assert os.strerror(errno.ENOENT) in bad.value.message or os.strerror(errno.EINVAL) in bad.value.message
    assert not is_mounted(str(target))


def test_unmount_of_what_is_not_mounted_is_a_no_op(tmp_path: Path) -> None:
    unmount(str(tmp_path))
    unmount(str(tmp_path / "missing"))
