"""Pulling images from a real registry into the overlay and native snapshotters."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from buildsvc.solver.worker import Change, ChangeKind, SnapshotKind, Snapshotter
from buildsvc.sources import (
    ContentStore,
    Descriptor,
    DigestMismatch,
    ImageNotFound,
    ImageStore,
    NoMatchingPlatform,
    Reference,
    RegistryClient,
    parse_platform,
    parse_reference,
)
from tests.integration.sources.conftest import make_snapshotter
from tests.support.images import (
    ARM64,
    build_image,
    entry,
    make_layer,
    push_image,
    push_index,
    tar_entries,
)
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root


@contextmanager
def mounted(snapshotter: Snapshotter, key: str) -> Iterator[Path]:
    view = f"view-{uuid.uuid4().hex[:8]}"
    snapshotter.view(view, key)
    try:
        yield Path(snapshotter.mount(view).path)
    finally:
        snapshotter.unmount(view)
        snapshotter.remove(view)


def assert_busybox_with_whiteouts(root: Path) -> None:
    assert (root / "etc" / "motd").read_text() == "top\n"
    assert not (root / "doomed.txt").exists(), "the whiteout of layer 2 was not applied"
    assert sorted(os.listdir(root / "opq")) == ["new.txt"], "the opaque dir kept lower content"
    hello, link = os.lstat(root / "hello.txt"), os.lstat(root / "hello-link")
    assert hello.st_ino == link.st_ino
    assert stat.S_IMODE(hello.st_mode) == 0o755
    assert (hello.st_uid, hello.st_gid) == (1000, 1000)
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    assert os.access(root / "bin" / "busybox", os.X_OK)


def test_pull_gzip_and_zstd_layers_applies_whiteouts(
    snapshotter: Snapshotter, store: ImageStore, client: RegistryClient, repo: str, busybox_tars: list[bytes]
) -> None:
    image = build_image([make_layer(busybox_tars[0], "gzip"), make_layer(busybox_tars[1], "zstd")])
    pushed = push_image(client, parse_reference(f"{repo}:v1"), image)

    pulled = store.pull(f"docker-image://{repo}:v1", snapshotter, key_prefix="img-")

    assert pulled.manifest_digest == pushed
    assert pulled.source == f"{repo}:v1"
    assert pulled.config.env == ("PATH=/bin:/usr/bin", "GREETING=hi")
    assert pulled.config.cmd == ("/bin/sh",)
    assert len(pulled.snapshot_keys) == 2 and pulled.top_snapshot == pulled.snapshot_keys[-1]
    assert all(snapshotter.stat(k).kind is SnapshotKind.COMMITTED for k in pulled.snapshot_keys)
    assert snapshotter.stat(pulled.snapshot_keys[1]).parent == pulled.snapshot_keys[0]
    # Only committed layer snapshots are left: no half-made active snapshot.
    assert sorted(s.key for s in snapshotter.list()) == sorted(pulled.snapshot_keys)
    assert Change(kind=ChangeKind.DELETED, path="/doomed.txt") in snapshotter.changes(pulled.snapshot_keys[1])
    assert pulled.top_snapshot is not None
    with mounted(snapshotter, pulled.top_snapshot) as root:
        assert_busybox_with_whiteouts(root)


def test_docker_schema2_image_pulls(
    store: ImageStore, client: RegistryClient, repo: str, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    image = build_image([make_layer(t, "gzip", docker=True) for t in busybox_tars], docker=True)
    pushed = push_image(client, parse_reference(f"{repo}:docker"), image)
    snapshotter = make_snapshotter("native", tmp_path / "native")

    pulled = store.pull(f"{repo}:docker", snapshotter)

    assert pulled.manifest_digest == pushed
    assert pulled.top_snapshot is not None
    with mounted(snapshotter, pulled.top_snapshot) as root:
        assert_busybox_with_whiteouts(root)


def test_second_pull_downloads_nothing_and_reuses_snapshots(
    store: ImageStore,
    client: RegistryClient,
    registry: TestRegistry,
    repo: str,
    busybox_tars: list[bytes],
    tmp_path: Path,
) -> None:
    image = build_image([make_layer(busybox_tars[0], "gzip"), make_layer(busybox_tars[1], "gzip")])
    push_image(client, parse_reference(f"{repo}:v1"), image)
    overlay = make_snapshotter("overlay", tmp_path / "overlay")
    first = store.pull(f"{repo}:v1", overlay)
    assert len(first.downloaded) == 3  # the config and two layers

    served = len(registry.requests())
    again = store.pull(f"{repo}:v1", overlay)
    other = store.pull(f"{repo}:v1", make_snapshotter("native", tmp_path / "native"))

    assert again.downloaded == () and other.downloaded == ()
    blob_gets = [r for r in registry.requests()[served:] if "/blobs/" in r[1]]
    assert blob_gets == [], "a cached pull fetched blobs from the registry"
    assert again.snapshot_keys == first.snapshot_keys
    assert len(overlay.list()) == 2, "the second pull made new snapshots instead of reusing them"


def test_index_picks_host_platform_or_requested_one(
    store: ImageStore, client: RegistryClient, repo: str, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    layers = [make_layer(busybox_tars[0], "gzip"), make_layer(busybox_tars[1], "zstd")]
    amd64 = build_image(layers, env=("ARCH=amd64",))
    arm64 = build_image(layers, platform=ARM64, env=("ARCH=arm64",))
    index_digest = push_index(client, parse_reference(repo), [arm64, amd64], tag="multi")
    snapshotter = make_snapshotter("overlay", tmp_path / "overlay")

    default = store.pull(f"{repo}:multi", snapshotter)
    arm = store.pull(f"{repo}:multi", snapshotter, platform=parse_platform("linux/arm64"))

    assert (default.manifest_digest, default.config.env) == (amd64.digest, ("ARCH=amd64",))
    assert (arm.manifest_digest, arm.config.env) == (arm64.digest, ("ARCH=arm64",))
    assert default.index_digest == arm.index_digest == index_digest
    with pytest.raises(NoMatchingPlatform) as info:
        store.pull(f"{repo}:multi", snapshotter, platform=parse_platform("linux/s390x"))
    assert info.value.available == ("linux/arm64/v8", "linux/amd64")
    assert "linux/s390x" in str(info.value) and "linux/arm64/v8, linux/amd64" in str(info.value)


def test_digest_references(
    store: ImageStore, client: RegistryClient, repo: str, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    image = build_image([make_layer(busybox_tars[0], "zstd")])
    digest = push_image(client, parse_reference(f"{repo}:pinned"), image)
    snapshotter = make_snapshotter("native", tmp_path / "native")

    by_digest = store.pull(f"{repo}@{digest}", snapshotter)
    by_both = store.pull(f"{repo}:pinned@{digest}", snapshotter)

    assert by_digest.manifest_digest == by_both.manifest_digest == digest
    unknown = "sha256:" + "0" * 64
    with pytest.raises(ImageNotFound) as info:
        store.pull(f"{repo}@{unknown}", snapshotter)
    assert unknown in str(info.value)


def test_missing_tag_is_not_found(store: ImageStore, repo: str, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound) as info:
        store.pull(f"{repo}:nope", make_snapshotter("native", tmp_path / "native"))
    assert f"{repo}:nope" in str(info.value)


def test_corrupt_blob_is_an_error_and_never_used(
    store: ImageStore,
    client: RegistryClient,
    registry: TestRegistry,
    repo: str,
    busybox_tars: list[bytes],
    tmp_path: Path,
) -> None:
    # A layer no other test shares: the registry stores each blob once for all repositories.
    unique = tar_entries([entry("unique.txt", data=uuid.uuid4().bytes)])
    bad = make_layer(unique, "gzip")
    image = build_image([make_layer(busybox_tars[0], "gzip"), bad])
    push_image(client, parse_reference(f"{repo}:corrupt"), image)
    on_disk = registry.blob_path(bad.descriptor.digest)
    data = bytearray(on_disk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # Same size, different bytes: only the digest can tell.
    on_disk.write_bytes(bytes(data))
    snapshotter = make_snapshotter("overlay", tmp_path / "overlay")

    with pytest.raises(DigestMismatch) as info:
        store.pull(f"{repo}:corrupt", snapshotter)

    assert info.value.expected == bad.descriptor.digest
    assert bad.descriptor.digest in str(info.value)
    assert not store.content.has(bad.descriptor.digest), "the corrupt blob was kept in the cache"
    # Only the (good) base layer was unpacked; nothing on the corrupt one.
    assert [s.key for s in snapshotter.list()] == [image.layers[0].diff_id]


def test_later_layers_download_while_earlier_ones_wait(
    store: ImageStore,
    client: RegistryClient,
    repo: str,
    busybox_tars: list[bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first layer's download is held until the second one's has begun: a pull that fetched
    # one layer after the other would hold it for the whole wait and never see the second start.
    unique = tar_entries([entry("unique.txt", data=uuid.uuid4().bytes)])
    image = build_image([make_layer(busybox_tars[0], "gzip"), make_layer(unique, "gzip")])
    push_image(client, parse_reference(f"{repo}:ahead"), image)
    first, second = (layer.descriptor.digest for layer in image.layers)
    second_started = threading.Event()
    overlapped: list[bool] = []
    fetch_blob = client.fetch_blob

    def watched(ref: Reference, desc: Descriptor, content: ContentStore) -> str:
        if desc.digest == second:
            second_started.set()
        elif desc.digest == first:
            overlapped.append(second_started.wait(timeout=10))
        return fetch_blob(ref, desc, content)

    monkeypatch.setattr(client, "fetch_blob", watched)
    snapshotter = make_snapshotter("overlay", tmp_path / "overlay")

    pulled = store.pull(f"{repo}:ahead", snapshotter)

    assert overlapped == [True], "the second layer's download did not start before the first one's ended"
    assert pulled.downloaded == (image.manifest.config.digest, first, second)  # the manifest's order
    with mounted(snapshotter, pulled.snapshot_keys[-1]) as root:
        assert (root / "unique.txt").exists() and os.access(root / "bin" / "busybox", os.X_OK)
