"""Applying layer tars: whiteouts per snapshot kind, metadata, and refusing malicious layers."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from buildsvc.sources import (
    DigestMismatch,
    ImageStore,
    InvalidImage,
    RegistryClient,
    UnsafeLayer,
    WhiteoutMode,
    apply_layer,
    parse_reference,
)
from tests.integration.sources.conftest import make_snapshotter
from tests.support.images import build_image, entry, make_layer, push_image, tar_entries

pytestmark = pytest.mark.root


def write_blob(tmp_path: Path, tar: bytes, compression: str = "gzip") -> str:
    layer = make_layer(tar, compression)
    path = tmp_path / f"layer.{compression}"
    path.write_bytes(layer.blob)
    return str(path)


def snapshot_of(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under ``root`` with its mode and content (or link target)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            content: bytes | str = b""
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, content)
    return out


def malicious_layers(outside: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes | None]]]:
    sym, reg = tarfile.SYMTYPE, tarfile.REGTYPE
    return {
        "dotdot": [entry("../evil", data=b"x")],
        "dotdot-inner": [entry("a/../../evil", data=b"x")],
        "absolute": [entry(f"{outside}/evil", data=b"x")],
        "abs-symlink-then-file": [
            entry("escape", sym, linkname=str(outside)),
            entry("escape/evil", reg, data=b"x"),
        ],
        "rel-symlink-then-file": [
            entry("deep", tarfile.DIRTYPE, mode=0o755),
            entry("deep/escape", sym, linkname="../../outside"),
            entry("deep/escape/evil", data=b"x"),
        ],
        "symlink-chain": [
            entry("a", sym, linkname="b"),
            entry("b", sym, linkname=str(outside)),
            entry("a/evil", data=b"x"),
        ],
        "dir-then-symlink-then-file": [
            entry("deep/inner/ok", data=b"x"),
            entry("deep", sym, linkname=str(outside)),
            entry("deep/inner/evil", data=b"x"),
        ],
        "symlink-then-dir": [
            entry("escape", sym, linkname=str(outside)),
            entry("escape/sub", tarfile.DIRTYPE),
        ],
        "hardlink-dotdot": [entry("hl", tarfile.LNKTYPE, linkname="../outside/secret")],
        "hardlink-via-symlink": [
            entry("escape", sym, linkname=str(outside)),
            entry("hl", tarfile.LNKTYPE, linkname="escape/secret"),
        ],
        "whiteout-via-symlink": [
            entry("escape", sym, linkname=str(outside)),
            entry("escape/.wh.secret", data=b""),
        ],
        "opaque-via-symlink": [
            entry("escape", sym, linkname=str(outside)),
            entry("escape/.wh..wh..opq", data=b""),
        ],
    }


CASES = sorted(malicious_layers(Path("/x")))


@pytest.mark.parametrize("mode", list(WhiteoutMode))
@pytest.mark.parametrize("case", CASES)
def test_malicious_layer_is_refused_and_writes_nothing_outside(
    case: str, mode: WhiteoutMode, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me\n")
    target = tmp_path / "work" / "target"
    target.mkdir(parents=True)
    blob = write_blob(tmp_path / "work", tar_entries(malicious_layers(outside)[case]))
    before = snapshot_of(outside), sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "work"))

    with pytest.raises(UnsafeLayer) as info:
        apply_layer(blob, str(target), mode=mode, layer="sha256:bad")

    assert "sha256:bad" in str(info.value) and info.value.member in str(info.value)
    after = snapshot_of(outside), sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "work"))
    assert after == before, "a malicious layer changed something outside its target"
    assert not (Path("/evil")).exists()


def test_malicious_image_pull_leaves_no_snapshot(
    store: ImageStore, client: RegistryClient, repo: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = tar_entries(malicious_layers(outside)["abs-symlink-then-file"])
    image = build_image([make_layer(tar, "gzip")])
    push_image(client, parse_reference(f"{repo}:evil"), image)
    for kind in ("overlay", "native"):
        snapshotter = make_snapshotter(kind, tmp_path / kind)
        with pytest.raises(UnsafeLayer):
            store.pull(f"{repo}:evil", snapshotter)
        assert snapshotter.list() == [], f"{kind}: the refused layer's snapshot was kept"
    assert os.listdir(outside) == []


def test_overlay_mode_writes_overlay_whiteouts(tmp_path: Path, busybox_tars: list[bytes]) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()

    apply_layer(write_blob(tmp_path, busybox_tars[1]), str(upper), mode=WhiteoutMode.OVERLAY)

    whiteout = os.lstat(upper / "doomed.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(upper / "opq")) == ["new.txt"]
    assert not any(name.startswith(".wh.") for _, _, files in os.walk(upper) for name in files)


def test_delete_mode_deletes_and_clears_opaque_dirs(tmp_path: Path, busybox_tars: list[bytes]) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    apply_layer(write_blob(tmp_path, busybox_tars[0], "zstd"), str(tree), mode=WhiteoutMode.DELETE)
    assert (tree / "doomed.txt").exists() and (tree / "opq" / "sub" / "deep.txt").exists()

    apply_layer(write_blob(tmp_path, busybox_tars[1], "none"), str(tree), mode=WhiteoutMode.DELETE)

    assert not (tree / "doomed.txt").exists()
    assert sorted(os.listdir(tree / "opq")) == ["new.txt"]
    assert (tree / "etc" / "motd").read_text() == "top\n"


def test_metadata_devices_and_fifos_are_kept(tmp_path: Path) -> None:
    tar = tar_entries(
        [
            entry("dev", tarfile.DIRTYPE, mode=0o755),
            (_device("dev/null", 1, 3), None),
            entry("run.fifo", tarfile.FIFOTYPE, mode=0o600),
            entry("setuid", data=b"#!/bin/sh\n", mode=0o4755, uid=1234, gid=4321),
            entry("dangling", tarfile.SYMTYPE, linkname="/nowhere/at/all"),
        ]
    )
    target = tmp_path / "t"
    target.mkdir()

    result = apply_layer(write_blob(tmp_path, tar), str(target), mode=WhiteoutMode.DELETE)

    null = os.lstat(target / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(target / "run.fifo").st_mode)
    st = os.lstat(target / "setuid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (
        0o4755,
        1234,
        4321,
        1_700_000_000,
    )
    assert os.readlink(target / "dangling") == "/nowhere/at/all"
    assert os.lstat(target / "dev").st_mtime == 1_700_000_000
    assert result.skipped_devices == 0 and result.entries == 5


def test_xattrs_are_kept_on_files_and_directories(tmp_path: Path) -> None:
    # A regular file's metadata is set through its open descriptor, a directory's by its path.
    # A binary value (a file capability's shape) comes back byte for byte.
    binary = bytes([1, 0, 0, 2, 0x20, 0, 0, 0, 0xFF, 0xFE])
    xattrs = {"user.origin": "layer one", "user.blob": binary.decode("utf-8", "surrogateescape")}
    members = [entry("etc", tarfile.DIRTYPE, mode=0o755), entry("etc/tool", data=b"x", mode=0o4711, uid=7)]
    for info, _ in members:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    target = tmp_path / "t"
    target.mkdir()

    apply_layer(write_blob(tmp_path, tar_entries(members)), str(target), mode=WhiteoutMode.OVERLAY)

    for path in (target / "etc", target / "etc" / "tool"):
        assert os.getxattr(path, "user.origin") == b"layer one"
        assert os.getxattr(path, "user.blob") == binary
    st = os.lstat(target / "etc" / "tool")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o4711, 7, 1_700_000_000)


def test_diff_id_mismatch_and_garbage_are_refused(tmp_path: Path, busybox_tars: list[bytes]) -> None:
    target = tmp_path / "t"
    target.mkdir()
    blob = write_blob(tmp_path, busybox_tars[1], "zstd")
    with pytest.raises(DigestMismatch) as info:
        apply_layer(blob, str(target), mode=WhiteoutMode.DELETE, expected_diff_id="sha256:" + "1" * 64)
    assert info.value.expected == "sha256:" + "1" * 64
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(InvalidImage):
        apply_layer(str(garbage), str(target), mode=WhiteoutMode.DELETE)


def _device(name: str, major: int, minor: int) -> tarfile.TarInfo:
    info, _ = entry(name, tarfile.CHRTYPE, mode=0o666)
    info.devmajor, info.devminor = major, minor
    return info
