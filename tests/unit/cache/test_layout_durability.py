"""What the layout store fsyncs, and how it recovers what a crash can leave unsynced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from buildsvc.cache.config import CacheConfigError
from buildsvc.cache.layout import LayoutStore


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files fsynced through the layout module (the temporary names)."""
    names: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        names.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)  # layout calls os.fsync through the module
    return names


def test_only_blobs_and_a_tagging_index_are_fsynced(tmp_path: Path, fsynced: list[str]) -> None:
    store = LayoutStore(tmp_path / "c", create=True)
    assert fsynced == []  # the marker and the empty index: rewritten when a crash cut them short
    assert (tmp_path / "c" / "oci-layout").read_text() == '{"imageLayoutVersion":"1.0.0"}'
    digest = store.put_bytes(b"config")
    assert len(fsynced) == 1
    store.put_bytes(b"config")  # present and whole: not written again
    assert len(fsynced) == 1
    store.tag({"mediaType": "application/json", "digest": digest, "size": 6}, "latest")
    assert len(fsynced) == 2
    assert all(Path(name).parent == tmp_path / "c" for name in fsynced[1:])  # index.json's temp file
    assert store.resolve(tag="latest")["digest"] == digest


def test_an_empty_marker_and_index_left_by_a_crash_are_recovered(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "c", create=True)
    (tmp_path / "c" / "oci-layout").write_bytes(b"")
    (tmp_path / "c" / "index.json").write_bytes(b"")
    with pytest.raises(CacheConfigError, match="no cache tagged 'latest'"):
        store.resolve(tag="latest")  # empty index: no entries, not an error about JSON
    again = LayoutStore(tmp_path / "c", create=True)
    assert (tmp_path / "c" / "oci-layout").read_text() == '{"imageLayoutVersion":"1.0.0"}'
    digest = again.put_bytes(b"root")
    again.tag({"mediaType": "application/json", "digest": digest, "size": 4}, "latest")
    assert again.resolve(tag="latest")["digest"] == digest
    (tmp_path / "c" / "index.json").write_bytes(b"{not json")
    with pytest.raises(CacheConfigError, match="not JSON"):
        again.resolve(tag="latest")  # a non-empty broken index is still an error, never "no tags"


def test_a_torn_small_blob_in_place_is_written_again(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "c", create=True)
    digest = store.put_bytes(b"config bytes")
    for torn in (b"", b"config bytez"):
        store.blob_path(digest).write_bytes(torn)
        with pytest.raises(CacheConfigError, match="corrupt"):
            store.read_blob(digest)
        assert store.put_bytes(b"config bytes") == digest
        assert store.read_blob(digest) == b"config bytes"


def test_a_blob_of_many_chunks_is_verified_whole(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "c", create=True)
    data = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB: several reads, the last one short
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.blob_path(digest)
    path.write_bytes(data)
    assert store.verify_blob(digest, len(data)) == len(data)
    assert store.verified_identity(digest, 0)[2] == len(data)
    flipped = bytearray(data)
    flipped[-3] ^= 1  # in the last, short read
    path.write_bytes(flipped)
    with pytest.raises(CacheConfigError, match="corrupt"):
        store.verify_blob(digest, len(data))
    path.write_bytes(data[:-1])
    with pytest.raises(CacheConfigError, match="corrupt"):
        store.verify_blob(digest, len(data))
