"""unpack_tar writes a daemon's tar under DEST only: crafted tars cannot reach outside it."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from buildsvc.api.unpack import entry_parts, unpack_tar
from buildsvc.errors import InvalidInput


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_000_000
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 2_000_000
    return info, None


def test_entries_symlinks_hard_links_modes_and_times_are_kept(tmp_path: Path) -> None:
    tar = _tar(
        tmp_path / "t.tar",
        _dir("d", 0o750),
        _file("d/run", b"#!/bin/sh\n", 0o4755),
        _link("d/abs", "/etc/passwd"),
        _link("d/up", "../../x"),
        _link("d/hard", "d/run", tarfile.LNKTYPE),
        _dir("ro", 0o555),
        _file("ro/f", b"read only dir\n"),
    )
    dest = tmp_path / "dest"
    assert unpack_tar(tar, dest) == 7
    assert (dest / "d" / "run").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((dest / "d" / "run").stat().st_mode) == 0o4755
    assert (dest / "d" / "run").stat().st_mtime == 1_000_000
    assert os.readlink(dest / "d" / "abs") == "/etc/passwd"
    assert os.readlink(dest / "d" / "up") == "../../x"
    assert (dest / "d" / "hard").stat().st_ino == (dest / "d" / "run").stat().st_ino
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o750
    assert (dest / "d").stat().st_mtime == 2_000_000  # set after its contents were written
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro" / "f").read_text() == "read only dir\n"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((_file("../evil", b"x"),), r"climbs out"),
        ((_file("/abs/evil", b"x"),), r"absolute path"),
        ((_link("esc", "{outside}"), _file("esc/evil", b"x")), r"esc is a symlink"),
        ((_link("hard", "../outside/secret", tarfile.LNKTYPE),), r"climbs out"),
    ],
)
def test_a_crafted_tar_writes_nothing_outside_dest(
    tmp_path: Path, members: tuple[tuple[tarfile.TarInfo, bytes | None], ...], message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    for info, _ in members:
        info.linkname = info.linkname.replace("{outside}", str(outside))
    tar = _tar(tmp_path / "t.tar", *members)
    dest = tmp_path / "a" / "dest"
    with pytest.raises(InvalidInput, match=message):
        unpack_tar(tar, dest)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a" / "evil").exists()
    assert (outside / "secret").stat().st_nlink == 1


def test_what_dest_held_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").symlink_to(victim)  # a directory entry replaces the link
    (dest / "f").symlink_to(victim / "f")  # a file entry replaces the link, not its target
    (dest / "keep").write_text("mine")
    unpack_tar(_tar(tmp_path / "t.tar", _dir("d"), _file("d/x", b"1"), _file("f", b"2")), dest)
    assert list(victim.iterdir()) == []
    assert not (dest / "d").is_symlink() and (dest / "d" / "x").read_bytes() == b"1"
    assert not (dest / "f").is_symlink() and (dest / "f").read_bytes() == b"2"
    assert (dest / "keep").read_text() == "mine"  # merged into, as the daemon-host export does


def test_entry_names() -> None:
    assert entry_parts("./a//b/") == ["a", "b"]
    assert entry_parts(".") == []
    with pytest.raises(InvalidInput):
        entry_parts("a/../../b")
