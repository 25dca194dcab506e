"""Resolving a pinned digest from the content store: no HTTP client is made when every manifest is
held, and a held manifest that does not name its own media type is asked of the registry (whose
``Content-Type`` header decides it, and is not kept).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from buildsvc.sources import ContentStore, RegistryClient, RegistryOptions, parse_reference
from buildsvc.sources.images import resolve_image
from buildsvc.sources.manifests import DOCKER_MANIFEST, OCI_LAYER_GZIP, OCI_MANIFEST, sha256_digest
from buildsvc.sources.platforms import ImagePlatform

AMD64 = ImagePlatform(os="linux", architecture="amd64")


class _Registry(httpx.Client):
    """Serves one manifest with one Content-Type; counts clients made and requests served."""

    made = 0
    served: ClassVar[list[str]] = []
    body = b""
    content_type = ""

    def __init__(self, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(**kwargs, transport=httpx.MockTransport(self._serve))

    def _serve(self, request: httpx.Request) -> httpx.Response:
        type(self).served.append(request.url.path)
        return httpx.Response(200, content=self.body, headers={"Content-Type": self.content_type})


def manifest(media_type: str | None) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 2,
        },
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + "d" * 64, "size": 3}],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> type[_Registry]:
    monkeypatch.setattr(httpx, "Client", _Registry)
    _Registry.made, _Registry.served = 0, []
    return _Registry


def test_a_held_pinned_manifest_is_resolved_without_making_an_http_client(
    registry: type[_Registry], tmp_path: Path
) -> None:
    data = manifest(OCI_MANIFEST)
    content = ContentStore(str(tmp_path))
    digest = content.put(data)
    with RegistryClient(RegistryOptions(insecure_hosts=frozenset({"reg:5000"}))) as client:
        resolved = resolve_image(client, content, parse_reference(f"reg:5000/busybox@{digest}"), AMD64)
    assert (resolved.digest, resolved.manifest_bytes, resolved.manifest.media_type) == (
        digest,
        data,
        OCI_MANIFEST,
    )
    assert (registry.made, registry.served) == (0, [])


def test_a_held_manifest_without_its_media_type_is_asked_of_the_registry(
    registry: type[_Registry], tmp_path: Path
) -> None:
    # Without "mediaType" in the body, the registry's Content-Type says Docker schema2 here: the
    # store alone would have guessed OCI from the shape.
    data = manifest(None)
    registry.body, registry.content_type = data, DOCKER_MANIFEST
    content = ContentStore(str(tmp_path))
    digest = content.put(data)
    assert digest == sha256_digest(data)
    with RegistryClient(RegistryOptions(insecure_hosts=frozenset({"reg:5000"}))) as client:
        resolved = resolve_image(client, content, parse_reference(f"reg:5000/busybox@{digest}"), AMD64)
    assert resolved.manifest.media_type == DOCKER_MANIFEST
    assert registry.served == [f"/v2/busybox/manifests/{digest}"]


def test_a_manifest_resolved_from_the_registry_is_kept_by_its_digest(
    registry: type[_Registry], tmp_path: Path
) -> None:
    data = manifest(OCI_MANIFEST)
    registry.body, registry.content_type = data, OCI_MANIFEST
    content = ContentStore(str(tmp_path))
    with RegistryClient(RegistryOptions(insecure_hosts=frozenset({"reg:5000"}))) as client:
        by_tag = resolve_image(client, content, parse_reference("reg:5000/busybox:latest"), AMD64)
        assert content.read(by_tag.digest) == data
        pinned = resolve_image(client, content, parse_reference(f"reg:5000/busybox@{by_tag.digest}"), AMD64)
    assert pinned.manifest_bytes == data
    assert registry.served == ["/v2/busybox/manifests/latest"]
