"""Hashing a local cache's next blob ahead: handed over verified only while the file is unchanged.

While one layer of a chain is unpacked, the digest checks of the chain's next layers run in the
background (when their blobs cannot be unpacked ahead), so they overlap it. The check is of the file
as it was then: a blob written to since (even with its old bytes, or its mtime put back) is checked again
by the unpack, and one changed while it is unpacked is never committed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from buildsvc.cache.config import CacheConfigError
from buildsvc.cache.export import PlannedRecord, write_cache
from buildsvc.cache.imports import ImportLayer
from buildsvc.cache.layers import LayerBlob, write_layer
from buildsvc.cache.local import LocalSource, LocalTarget
from buildsvc.daemon.cache_exports import _from_file, _unpack_chain, _unpack_layer
from buildsvc.errors import NotFound
from buildsvc.executors.native import NativeSnapshotter
from buildsvc.solver.worker import Change, ChangeKind

K1 = "sha256:" + hashlib.sha256(b"k1").hexdigest()
K2 = "sha256:" + hashlib.sha256(b"k2").hexdigest()


def two_layer_cache(tmp_path: Path) -> Path:
    """A layout whose records are a bottom layer and a second one on top of it (plain tars)."""
    blobs: dict[str, LayerBlob] = {}
    for n in (1, 2):
        root = tmp_path / f"s{n}"
        root.mkdir()
        (root / f"f{n}").write_bytes(os.urandom(256 * 1024 + n))
        blobs[f"s{n}"] = write_layer(
            root,
            [Change(kind=ChangeKind.ADDED, path=f"/f{n}")],
            tmp_path / f"b{n}",
            compression="uncompressed",
        )
    store = tmp_path / "cache"
    write_cache(
        [
            PlannedRecord(key=K1, output=0, snapshot="s1"),
            PlannedRecord(key=K2, output=0, snapshot="s2", inputs=((K1, 0),)),
        ],
        {"s1": None, "s2": "s1"}.get,
        blobs.__getitem__,
        LocalTarget(str(store), "latest"),
    )
    return store


def layers(source: LocalSource) -> tuple[ImportLayer, ImportLayer]:
    top = next(r for r in source.records if r.key == K2)
    bottom, upper = top.layers
    return bottom, upper


def hashed_ahead(source: LocalSource, upper: ImportLayer) -> None:
    source.prefetch([upper])
    source._ahead[upper.blob].exception()  # wait for the background check to end


def test_a_blob_hashed_ahead_is_handed_over_verified(tmp_path: Path) -> None:
    source = LocalSource(str(two_layer_cache(tmp_path)))
    _, upper = layers(source)
    hashed_ahead(source, upper)
    blob = source.blob(upper.blob, upper.size, tmp_path, upper.diff_id)
    assert blob.verified and not blob.check_on_unpack and blob.read == upper.size
    assert not blob.changed()
    # Written to after it was handed over (the same bytes): the unpack's last check says so.
    blob.path.write_bytes(blob.path.read_bytes())
    assert blob.changed()


def test_a_blob_not_hashed_ahead_is_not_handed_over_verified(tmp_path: Path) -> None:
    source = LocalSource(str(two_layer_cache(tmp_path)))
    bottom, upper = layers(source)
    hashed_ahead(source, upper)
    assert bottom.blob not in source._ahead
    assert not source.blob(bottom.blob, bottom.size, tmp_path, bottom.diff_id).verified


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_blob_changed_around_its_check_ahead_is_checked_again(tmp_path: Path, when: str) -> None:
    store = two_layer_cache(tmp_path)
    source = LocalSource(str(store))
    _, upper = layers(source)
    path = store / "blobs" / "sha256" / upper.blob.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    if when == "before":
        path.write_bytes(bytes(data))  # the check ahead fails
    hashed_ahead(source, upper)
    if when == "after":
        stat = path.stat()
        path.write_bytes(bytes(data))  # corrupt, same size, mtime put back
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    blob = source.blob(upper.blob, upper.size, tmp_path, upper.diff_id)
    # Not taken as verified: the unpack hashes it (and finds it corrupt).
    assert not blob.verified and blob.check_on_unpack


def test_a_layer_whose_blob_changed_while_unpacked_is_not_committed(tmp_path: Path) -> None:
    source = LocalSource(str(two_layer_cache(tmp_path)))
    bottom, _ = layers(source)
    worker = SimpleNamespace(snapshotter=NativeSnapshotter(str(tmp_path / "snapshots")))
    blob = source.blob(bottom.blob, bottom.size, tmp_path, bottom.diff_id)
    with pytest.raises(CacheConfigError, match="changed while it was unpacked"):
        _unpack_layer(worker, bottom, _from_file(bottom, blob.path, blob.verified), changed=lambda: True)
    with pytest.raises(NotFound):
        worker.snapshotter.stat(bottom.key)
    assert worker.snapshotter.list() == []
    _unpack_layer(worker, bottom, _from_file(bottom, blob.path, blob.verified), changed=blob.changed)
    assert worker.snapshotter.stat(bottom.key).parent is None


@pytest.mark.parametrize("upper_on_worker", [False, True])
def test_a_chain_hashes_its_next_layers_ahead_unless_already_on_the_worker(
    tmp_path: Path, upper_on_worker: bool
) -> None:
    source = LocalSource(str(two_layer_cache(tmp_path)))
    bottom, upper = layers(source)
    snapshotter = NativeSnapshotter(str(tmp_path / "snapshots"))
    worker = SimpleNamespace(info=SimpleNamespace(name="w"), snapshotter=snapshotter)
    if upper_on_worker:  # made meanwhile (another import's hit): nothing to unpack or check ahead
        snapshotter.prepare("bottom.active", None)
        snapshotter.commit(bottom.key, "bottom.active")
        snapshotter.prepare("upper.active", bottom.key)
        snapshotter.commit(upper.key, "upper.active")
    asked: list[list[str]] = []
    prefetch = source.prefetch

    def spy(following: Sequence[ImportLayer]) -> None:
        asked.append([x.key for x in following])
        prefetch(following)

    source.prefetch = spy  # type: ignore[method-assign,assignment]
    made: list[ImportLayer] = []
    _unpack_chain(worker, source, [bottom, upper], tmp_path, made)
    if upper_on_worker:
        assert made == [] and asked == [] and upper.blob not in source._ahead
    else:
        assert asked[0] == [upper.key]  # while the bottom layer was unpacked
        assert [x.key for x in made] == [bottom.key, upper.key]
