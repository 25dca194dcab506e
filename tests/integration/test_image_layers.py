"""The diff layer of an image export: base layers read from their tars, the result walked on disk.

The base tree is unpacked with the real unpacker (owners and times as the tars say, so run as
root); the diff must hold exactly what was changed on top, and nothing when nothing was.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from buildsvc.daemon.image_layers import base_tree, write_diff_layer
from buildsvc.sources.unpack import WhiteoutMode, apply_layer
from tests.support.images import entry, tar_entries

pytestmark = pytest.mark.root


def _layers(tmp_path: Path) -> list[Path]:
    first = tar_entries(
        [
            entry("bin", tarfile.DIRTYPE, mode=0o755),
            entry("bin/tool", data=b"#!tool\n", mode=0o755),
            entry("bin/alias", tarfile.SYMTYPE, linkname="tool"),
            entry("etc", tarfile.DIRTYPE, mode=0o755),
            entry("etc/conf", data=b"a=1\n"),
            entry("etc/gone", data=b"x\n"),
            entry("var", tarfile.DIRTYPE, mode=0o755),
            entry("var/old", data=b"old\n"),
        ]
    )
    second = tar_entries(
        [
            entry("etc", tarfile.DIRTYPE, mode=0o755),
            entry("etc/.wh.gone", data=b""),
            entry("etc/link", tarfile.LNKTYPE, linkname="etc/conf"),
            entry("var", tarfile.DIRTYPE, mode=0o755),
            entry("var/.wh..wh..opq", data=b""),
            entry("var/new", data=b"new\n"),
        ]
    )
    paths = []
    for i, tar in enumerate((first, second)):
        path = tmp_path / f"layer{i}.tar.gz"
        path.write_bytes(gzip.compress(tar, mtime=0))
        paths.append(path)
    return paths


def _unpacked(tmp_path: Path, layers: list[Path]) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for layer in layers:
        apply_layer(str(layer), str(root), mode=WhiteoutMode.DELETE)
    return root


def _names(layer: Path) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as tar:
        return tar.getnames()


def test_the_base_tree_applies_whiteouts_opaque_dirs_and_hard_links(tmp_path: Path) -> None:
    tree = base_tree(_layers(tmp_path))
    assert sorted(tree) == ["bin", "bin/alias", "bin/tool", "etc", "etc/conf", "etc/link", "var", "var/new"]
    assert tree["etc/link"] == tree["etc/conf"]
    assert tree["bin/alias"].link == "tool"


def test_an_untouched_tree_has_no_changes(tmp_path: Path) -> None:
    layers = _layers(tmp_path)
    root = _unpacked(tmp_path, layers)
    written = write_diff_layer(root, base_tree(layers), tmp_path / "diff.tar.gz")
    assert written.entries == 0


def test_the_diff_holds_new_changed_and_deleted_entries_only(tmp_path: Path) -> None:
    layers = _layers(tmp_path)
    root = _unpacked(tmp_path, layers)
    (root / "etc" / "conf").write_text("a=2\n")  # changed content, and etc/link with it (one inode)
    (root / "bin" / "new").write_text("fresh\n")
    (root / "var" / "new").unlink()
    os.chmod(root / "bin" / "tool", 0o700)
    written = write_diff_layer(root, base_tree(layers), tmp_path / "diff.tar.gz")
    names = _names(tmp_path / "diff.tar.gz")
    assert names == ["bin", "bin/new", "bin/tool", "etc/conf", "etc/link", "var", "var/.wh.new"]
    assert written.entries == len(names)


def test_same_size_and_time_but_other_bytes_is_a_change(tmp_path: Path) -> None:
    # The base's times are whole seconds (from a tar): equal times prove nothing, the bytes decide.
    layers = _layers(tmp_path)
    root = _unpacked(tmp_path, layers)
    target = root / "var" / "new"
    before = target.stat()
    target.write_bytes(b"NEW\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    write_diff_layer(root, base_tree(layers), tmp_path / "diff.tar.gz")
    assert _names(tmp_path / "diff.tar.gz") == ["var/new"]
