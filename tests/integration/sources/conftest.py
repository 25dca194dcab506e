"""A real registry (Debian's docker-registry) and real snapshotters for the image-source tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.executors import NativeSnapshotter, OverlaySnapshotter
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver.worker import Snapshotter
from buildsvc.sources import ImageStore, RegistryClient, RegistryOptions
from tests.support.images import busybox_layer_tars
from tests.support.registry import TestRegistry

_repos = itertools.count()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(RegistryOptions(insecure=True, attempts=2, retry_wait=0.05)) as c:
        yield c


@pytest.fixture
def repo(registry: TestRegistry) -> str:
    """A repository name no other test uses."""
    return f"{registry.host}/test/repo{next(_repos)}"


@pytest.fixture(scope="session")
def busybox_tars(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return busybox_layer_tars(tmp_path_factory.mktemp("busybox"))


@pytest.fixture
def store(tmp_path: Path, client: RegistryClient) -> ImageStore:
    return ImageStore(str(tmp_path / "content"), registry=client)


def make_snapshotter(kind: str, root: Path) -> Snapshotter:
    return OverlaySnapshotter(str(root)) if kind == "overlay" else NativeSnapshotter(str(root))


@pytest.fixture(params=["overlay", "native"])
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Snapshotter:
    return make_snapshotter(str(request.param), tmp_path / f"snapshots-{request.param}")


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path: Path) -> Iterator[None]:
    yield
    leaked = mounts_under(str(tmp_path))
    for point in sorted(leaked, key=len, reverse=True):
        unmount(point)
    assert leaked == [], f"mounts left behind: {leaked}"
