"""A plain tar on disk is unpacked by the kernel-copy path: the same tree as the streamed path.

Imported cache layers with ``compression=uncompressed`` take this path (file data copied from the
blob with ``copy_file_range``, the blob hashed by a second thread); gzip takes the streamed one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from buildsvc.sources.errors import DigestMismatch, InvalidImage
from buildsvc.sources.unpack import WhiteoutMode, apply_layer


def layer_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o644, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 1_000_000, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("dir", tarfile.DIRTYPE, mode=0o750)
        add("dir/big", tarfile.REGTYPE, os.urandom(3 * 1024 * 1024 + 17), mode=0o600)
        add("dir/empty", tarfile.REGTYPE)
        add("dir/small", tarfile.REGTYPE, b"hello\n", mode=0o755)
        add("dir/hard", tarfile.LNKTYPE, link="dir/small")
        add("dir/sym", tarfile.SYMTYPE, link="small")
        add("dir/.wh.gone", tarfile.REGTYPE)
    return out.getvalue()


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (st.st_mode, os.readlink(path))
        elif path.is_file():
            out[rel] = (st.st_mode, path.read_bytes())
        else:
            out[rel] = (st.st_mode, f"{st.st_nlink}")
    return out


def test_plain_and_gzip_layers_unpack_to_the_same_tree_with_the_same_diff_id(tmp_path: Path) -> None:
    data = layer_tar()
    plain, gz = tmp_path / "layer.tar", tmp_path / "layer.tar.gz"
    plain.write_bytes(data)
    gz.write_bytes(gzip.compress(data))
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    results = []
    for blob in (plain, gz):
        target = tmp_path / f"out-{blob.name}"
        target.mkdir()
        results.append(
            apply_layer(str(blob), str(target), mode=WhiteoutMode.DELETE, expected_diff_id=diff_id)
        )
    assert [r.diff_id for r in results] == [diff_id, diff_id]
    assert tree(tmp_path / "out-layer.tar") == tree(tmp_path / "out-layer.tar.gz")
    assert (tmp_path / "out-layer.tar" / "dir" / "hard").stat().st_ino == (
        tmp_path / "out-layer.tar" / "dir" / "small"
    ).stat().st_ino
    assert (tmp_path / "out-layer.tar" / "dir" / "big").stat().st_mtime == 1_000_000


def test_a_flipped_byte_in_a_plain_layer_is_a_digest_mismatch(tmp_path: Path) -> None:
    data = bytearray(layer_tar())
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0xFF  # inside dir/big's data: the tar still reads
    blob = tmp_path / "layer.tar"
    blob.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DigestMismatch):
        apply_layer(str(blob), str(tmp_path / "out"), mode=WhiteoutMode.DELETE, expected_diff_id=diff_id)


def test_a_truncated_plain_layer_is_refused_naming_it(tmp_path: Path) -> None:
    data = layer_tar()
    blob = tmp_path / "layer.tar"
    blob.write_bytes(data[: 2 * 1024 * 1024])  # ends inside dir/big
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidImage, match="sha256:abc"):
        apply_layer(str(blob), str(tmp_path / "out"), mode=WhiteoutMode.DELETE, layer="sha256:abc")


def test_a_blob_verified_as_fetched_is_not_hashed_again_and_a_gzip_one_always_is(tmp_path: Path) -> None:
    data = layer_tar()
    plain, gz = tmp_path / "layer.tar", tmp_path / "layer.tar.gz"
    plain.write_bytes(data)
    gz.write_bytes(gzip.compress(data))
    claimed = "sha256:" + "0" * 64  # what the caller vouches for is what comes back for a plain tar
    (tmp_path / "a").mkdir()
    assert (
        apply_layer(
            str(plain), str(tmp_path / "a"), mode=WhiteoutMode.DELETE, verified_diff_id=claimed
        ).diff_id
        == claimed
    )
    (tmp_path / "b").mkdir()
    with pytest.raises(DigestMismatch):
        apply_layer(
            str(gz),
            str(tmp_path / "b"),
            mode=WhiteoutMode.DELETE,
            expected_diff_id=claimed,
            verified_diff_id=claimed,
        )
