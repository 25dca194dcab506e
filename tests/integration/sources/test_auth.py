"""Registry authentication against a real registry with htpasswd (basic) auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.sources import (
    AuthenticationFailed,
    Credentials,
    ImageStore,
    RegistryClient,
    RegistryOptions,
    parse_reference,
)
from tests.integration.sources.conftest import make_snapshotter
from tests.support.images import build_image, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path_factory.mktemp("auth-registry"), users={"alice": "s3cret"}) as reg:
        yield reg


def test_basic_auth_pull_and_push(
    auth_registry: TestRegistry, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    host = auth_registry.host
    ref = parse_reference(f"{host}/private/app:v1")
    good = RegistryOptions(
        insecure=True, credentials={host: Credentials(username="alice", password="s3cret")}
    )
    bad = RegistryOptions(insecure=True, credentials={host: Credentials(username="alice", password="wrong")})
    image = build_image([make_layer(busybox_tars[1], "gzip")])
    with RegistryClient(good) as client:
        pushed = push_image(client, ref, image)
        pulled = ImageStore(str(tmp_path / "c1"), registry=client).pull(
            str(ref), make_snapshotter("native", tmp_path / "n1")
        )
    assert pulled.manifest_digest == pushed

    for options in (RegistryOptions(insecure=True), bad):
        with RegistryClient(options) as client, pytest.raises(AuthenticationFailed) as info:
            ImageStore(str(tmp_path / "c2"), registry=client).pull(
                str(ref), make_snapshotter("native", tmp_path / "n2")
            )
        assert info.value.status == 401
