"""A pinned image whose manifests the content store holds is resolved without the registry (as
BuildKit resolves a digest from its content store); a tag, or anything not held, is asked of it.

Against a real registry (Debian's docker-registry): its request log says what was asked, and a
stopped registry says nothing was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.frontends.dockerfile.config import Platform
from buildsvc.frontends.dockerfile.resolver import RegistryImageResolver
from buildsvc.solver.worker import Platform as WorkerPlatform
from buildsvc.sources import (
    ImageStore,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    ResolvedImage,
    parse_platform,
    parse_reference,
)
from buildsvc.sources.adapter import StoreImageSource
from tests.support.images import ARM64, TestImage, build_image, make_layer, push_image, push_index
from tests.support.registry import TestRegistry

AMD64 = parse_platform("linux/amd64")


def manifest_gets(registry: TestRegistry, since: int) -> list[str]:
    return [path for method, path, _ in registry.requests()[since:] if "/manifests/" in path]


def same_answer(ours: ResolvedImage, registry: ResolvedImage) -> None:
    assert ours.name == registry.name
    assert ours.digest == registry.digest
    assert ours.index_digest == registry.index_digest
    assert ours.manifest_bytes == registry.manifest_bytes
    assert ours.manifest == registry.manifest


def two_platforms(busybox_tars: list[bytes]) -> tuple[TestImage, TestImage]:
    layers = [make_layer(busybox_tars[0], "gzip")]
    return build_image(layers, env=("ARCH=amd64",)), build_image(layers, platform=ARM64, env=("ARCH=arm64",))


def test_a_pinned_index_or_manifest_held_is_resolved_from_the_store_as_the_registry_would(
    store: ImageStore,
    client: RegistryClient,
    registry: TestRegistry,
    repo: str,
    busybox_tars: list[bytes],
) -> None:
    amd64, arm64 = two_platforms(busybox_tars)
    index = push_index(client, parse_reference(repo), [arm64, amd64], tag="multi")
    pinned = [f"{repo}@{index}", f"{repo}:multi@{index}", f"{repo}@{amd64.digest}"]
    # What the registry answers, asked directly.
    expected = {ref: client.resolve(parse_reference(ref), AMD64) for ref in pinned}
    expected_arm = client.resolve(parse_reference(f"{repo}@{index}"), ARM64)

    # Resolving by tag reads the index and the host's manifest from the registry, and keeps both.
    by_tag = store.resolve(parse_reference(f"{repo}:multi"), AMD64)
    assert (by_tag.index_digest, by_tag.digest) == (index, amd64.digest)
    assert store.content.has(index) and store.content.has(amd64.digest)

    served = len(registry.requests())
    for ref in pinned:
        same_answer(store.resolve(parse_reference(ref), AMD64), expected[ref])
    assert manifest_gets(registry, served) == [], "a pinned digest held in the store was asked again"

    # The arm64 manifest is not held: the registry is asked (the index and the child), and what it
    # answered is kept, so the next resolve for arm64 asks nothing.
    same_answer(store.resolve(parse_reference(f"{repo}@{index}"), ARM64), expected_arm)
    path = f"/v2/{repo.partition('/')[2]}/manifests"
    assert manifest_gets(registry, served) == [f"{path}/{index}", f"{path}/{arm64.digest}"]
    same_answer(store.resolve(parse_reference(f"{repo}@{index}"), ARM64), expected_arm)
    assert len(manifest_gets(registry, served)) == 2


def test_a_tag_is_asked_of_the_registry_every_time(
    store: ImageStore, client: RegistryClient, registry: TestRegistry, repo: str, busybox_tars: list[bytes]
) -> None:
    amd64, _ = two_platforms(busybox_tars)
    first = push_image(client, parse_reference(f"{repo}:moving"), amd64)
    assert store.resolve(parse_reference(f"{repo}:moving"), AMD64).digest == first

    other = build_image([make_layer(busybox_tars[1], "gzip")])
    moved = push_image(client, parse_reference(f"{repo}:moving"), other)
    served = len(registry.requests())
    assert store.resolve(parse_reference(f"{repo}:moving"), AMD64).digest == moved != first
    assert len(manifest_gets(registry, served)) == 1


def test_a_corrupt_held_manifest_is_not_used_the_registry_is_asked(
    store: ImageStore, client: RegistryClient, registry: TestRegistry, repo: str, busybox_tars: list[bytes]
) -> None:
    amd64, _ = two_platforms(busybox_tars)
    digest = push_image(client, parse_reference(f"{repo}:v1"), amd64)
    store.resolve(parse_reference(f"{repo}:v1"), AMD64)
    held = Path(store.content.path(digest))
    held.write_bytes(held.read_bytes().replace(b"layers", b"LAYERS"))  # bytes that no longer hash to it

    served = len(registry.requests())
    resolved = store.resolve(parse_reference(f"{repo}@{digest}"), AMD64)

    assert resolved.digest == digest and resolved.manifest_bytes == amd64.manifest_bytes
    assert len(manifest_gets(registry, served)) == 1


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path / "own-registry") as reg:
        yield reg


def test_with_the_registry_down_a_held_pinned_image_still_resolves_and_a_tag_does_not(
    own_registry: TestRegistry, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    repo = f"{own_registry.host}/down/busybox"
    options = RegistryOptions(insecure=True, attempts=1)
    with RegistryClient(options) as pusher:
        amd64, _ = two_platforms(busybox_tars)
        digest = push_image(pusher, parse_reference(f"{repo}:v1"), amd64)
    content = str(tmp_path / "content")
    with RegistryClient(options) as first:
        # What a build does: the frontend resolves the tag and pins it; the solver resolves the pin.
        pinned, config = RegistryImageResolver.for_store(ImageStore(content, registry=first)).resolve(
            f"{repo}:v1", Platform(os="linux", architecture="amd64")
        )
        assert pinned == digest and config.env == ("ARCH=amd64",)
    own_registry.stop()

    # A new process's store on the same root, its registry gone.
    with RegistryClient(options) as later:
        store = ImageStore(content, registry=later)
        source = StoreImageSource(store)
        platform = WorkerPlatform(os="linux", architecture="amd64")
        assert source.resolve(f"docker-image://{repo}@{digest}", platform) == digest
        assert source.resolve(f"docker-image://{repo}:v1@{digest}", platform) == digest
        again, config = RegistryImageResolver(later, store.content).resolve(
            f"{repo}@{digest}", Platform(os="linux", architecture="amd64")
        )
        assert again == digest and config.env == ("ARCH=amd64",)
        with pytest.raises(RegistryError):
            source.resolve(f"docker-image://{repo}:v1", platform)
