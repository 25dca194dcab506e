"""The layout store (concurrent tags, verified blobs) and layer blobs (whiteouts, compressions)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from buildsvc.cache.config import CacheConfigError
from buildsvc.cache.layers import write_layer
from buildsvc.cache.layout import LayoutStore
from buildsvc.solver.worker import Change, ChangeKind
from buildsvc.sources.unpack import WhiteoutMode, apply_layer

_TAGGER = """
import sys
from buildsvc.cache.layout import LayoutStore
store = LayoutStore(sys.argv[1], create=True)
for n in range(int(sys.argv[3])):
    digest = store.put_bytes(f"{sys.argv[2]}-{n}".encode())
    entry = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": 1}
    store.tag(entry, f"{sys.argv[2]}-{n}")
"""


def test_concurrent_exports_to_one_dir_keep_every_tag(tmp_path: Path) -> None:
    store = tmp_path / "cache"
    writers = [subprocess.Popen([sys.executable, "-c", _TAGGER, str(store), f"w{i}", "25"]) for i in range(6)]
    assert [w.wait(120) for w in writers] == [0] * 6
    index = json.loads((store / "index.json").read_text())
    tags = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert tags == sorted(f"w{i}-{n}" for i in range(6) for n in range(25))
    assert not [p for p in os.listdir(store) if p.startswith(".tmp-")]


def test_a_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "c", create=True)
    digest = store.put_bytes(b"hello")
    assert store.read_blob(digest) == b"hello"
    store.blob_path(digest).write_bytes(b"hellp")
    with pytest.raises(CacheConfigError, match="corrupt"):
        store.read_blob(digest)
    with pytest.raises(CacheConfigError, match="corrupt"):
        store.verify_blob(digest, 5)
    with pytest.raises(CacheConfigError, match="no cache tagged 'latest'"):
        store.resolve(tag="latest")
    with pytest.raises(CacheConfigError, match="not an OCI layout"):
        LayoutStore(tmp_path / "nothing")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_a_layer_carries_files_whiteouts_and_opaque_dirs(tmp_path: Path, compression: str) -> None:
    root = tmp_path / "snapshot"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "new.conf").write_text("new\n")
    (root / "opaque").mkdir()
    (root / "opaque" / "only").write_text("x")
    changes = [
        Change(kind=ChangeKind.MODIFIED, path="/etc"),
        Change(kind=ChangeKind.ADDED, path="/etc/new.conf"),
        Change(kind=ChangeKind.DELETED, path="/etc/old.conf"),
        Change(kind=ChangeKind.DELETED, path="/opaque"),
        Change(kind=ChangeKind.ADDED, path="/opaque"),
        Change(kind=ChangeKind.ADDED, path="/opaque/only"),
    ]
    blob = write_layer(root, changes, tmp_path / "layer", compression=compression)
    assert blob.size == (tmp_path / "layer").stat().st_size
    # The same snapshot gives the same blob.
    assert write_layer(root, changes, tmp_path / "again", compression=compression).digest == blob.digest
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "old.conf").write_text("old")
    (lower / "opaque").mkdir()
    (lower / "opaque" / "hidden").write_text("h")
    result = apply_layer(str(blob.path), str(lower), mode=WhiteoutMode.DELETE, expected_diff_id=blob.diff_id)
    assert result.diff_id == blob.diff_id
    assert sorted(str(p.relative_to(lower)) for p in lower.rglob("*")) == [
        "etc",
        "etc/new.conf",
        "opaque",
        "opaque/only",
    ]
    if compression == "uncompressed":
        with tarfile.open(blob.path) as tar:
            assert ".wh.old.conf" in " ".join(tar.getnames())


def test_a_layer_keeps_big_files_whole_and_hard_links_as_links(tmp_path: Path) -> None:
    root = tmp_path / "snapshot"
    root.mkdir()
    big = os.urandom(3 * 1024 * 1024 + 7)  # several copy chunks and a partial tar block
    (root / "big").write_bytes(big)
    os.link(root / "big", root / "twin")
    changes = [Change(kind=ChangeKind.ADDED, path="/big"), Change(kind=ChangeKind.ADDED, path="/twin")]
    blob = write_layer(root, changes, tmp_path / "layer", compression="uncompressed")
    assert blob.size % tarfile.RECORDSIZE == 0
    with tarfile.open(blob.path) as tar:
        twin = tar.getmember("twin")
        assert twin.islnk() and twin.linkname == "big"
        extracted = tar.extractfile("big")
        assert extracted is not None and extracted.read() == big
    # A second layer starts with no memory of the first one's files: no link to them.
    again = write_layer(root, changes[1:], tmp_path / "again", compression="uncompressed")
    with tarfile.open(again.path) as tar:
        assert tar.getmember("twin").isreg()


def test_a_local_store_links_a_blob_in_when_asked_and_copies_otherwise(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"layer bytes")
    digest = "sha256:" + hashlib.sha256(b"layer bytes").hexdigest()
    linked = LayoutStore(tmp_path / "linked", create=True)
    assert linked.put_file(digest, source, link=True) == len(b"layer bytes")
    assert linked.blob_path(digest).stat().st_ino == source.stat().st_ino
    copied = LayoutStore(tmp_path / "copied", create=True)
    copied.put_file(digest, source)
    assert copied.blob_path(digest).stat().st_ino != source.stat().st_ino
    assert copied.blob_path(digest).read_bytes() == b"layer bytes"
