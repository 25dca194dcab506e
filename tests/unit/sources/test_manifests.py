"""Manifest, index and config parsing; chain ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from buildsvc.sources import InvalidImage, NoMatchingPlatform, UnsupportedMediaType, chain_ids
from buildsvc.sources.manifests import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    Index,
    Manifest,
    parse_image_config,
    parse_manifest_or_index,
    select_manifest,
)
from buildsvc.sources.platforms import ImagePlatform

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def test_chain_ids_follow_the_oci_formula() -> None:
    second = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {D3}".encode()).hexdigest()
    assert chain_ids([D1, D2, D3]) == [D1, second, third]
    assert chain_ids([]) == []


def test_docker_manifest_and_index_by_shape() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D1, "size": 1},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2, "size": 2}
        ],
    }
    parsed = parse_manifest_or_index("r", json.dumps(manifest).encode(), None)
    assert isinstance(parsed, Manifest) and parsed.layers[0].digest == D2
    index = {"schemaVersion": 2, "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": D3, "size": 3}]}
    assert isinstance(parse_manifest_or_index("r", json.dumps(index).encode(), None), Index)


@pytest.mark.parametrize(
    ("doc", "content_type", "error"),
    [
        (b"not json", None, InvalidImage),
        (b'{"schemaVersion": 1, "fsLayers": []}', None, UnsupportedMediaType),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', None, UnsupportedMediaType),
        (b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:zz", "size": 1}]}', OCI_INDEX, InvalidImage),
    ],
)
def test_bad_documents(doc: bytes, content_type: str | None, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_manifest_or_index("host/repo:tag", doc, content_type)
    assert "host/repo:tag" in str(info.value)


def test_select_manifest_lists_available_platforms() -> None:
    index = Index(media_type=OCI_INDEX, manifests=())
    with pytest.raises(NoMatchingPlatform) as info:
        select_manifest("r", index, ImagePlatform(os="linux", architecture="amd64"))
    assert info.value.available == () and "available: none" in str(info.value)


def test_config_needs_one_diff_id_per_layer_and_string_lists() -> None:
    config = {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"diff_ids": [D1]},
        "config": {"Env": ["A=1"]},
    }
    parsed = parse_image_config("r", json.dumps(config).encode())
    assert parsed.diff_ids == (D1,) and parsed.env == ("A=1",) and parsed.cmd == ()
    with pytest.raises(InvalidImage):
        parse_image_config("r", json.dumps({"rootfs": {}}).encode())
    with pytest.raises(InvalidImage):
        parse_image_config("r", json.dumps({**config, "config": {"Cmd": "sh"}}).encode())
