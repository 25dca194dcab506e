"""The inline cache (``moby.buildkit.cache.v0``): written as BuildKit does, read back checked."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from buildsvc.cache.config import CacheConfigError, config_json, parse_config
from buildsvc.cache.imports import chain_ids, import_records
from buildsvc.cache.inline import INLINE_CACHE_KEY, InlineCache, image_manifest_parts, parse_inline
from buildsvc.cache.manifest import BlobRef

KEY = "sha256:" + "a" * 64
VERTEX = "sha256:" + "b" * 64
LAYERS = [
    BlobRef(digest="sha256:" + "1" * 64, size=10, media_type="application/vnd.oci.image.layer.v1.tar+gzip"),
    BlobRef(digest="sha256:" + "2" * 64, size=20, media_type="application/vnd.oci.image.layer.v1.tar+gzip"),
]
DIFF_IDS = ["sha256:" + "3" * 64, "sha256:" + "4" * 64]
CONFIG = BlobRef(digest="sha256:" + "5" * 64, size=1, media_type="application/vnd.oci.image.config.v1+json")


def image_config(value: object) -> bytes:
    doc: dict[str, Any] = {"rootfs": {"type": "layers", "diff_ids": DIFF_IDS}, INLINE_CACHE_KEY: value}
    return json.dumps(doc).encode()


def test_the_value_is_base64_of_the_records_pointing_at_the_top_image_layer() -> None:
    value = InlineCache(key=KEY, vertex=VERTEX).value(len(LAYERS))
    assert json.loads(base64.b64decode(value)) == [
        {"digest": KEY, "layers": [{"layer": 1}], "buildsvc.vertex": VERTEX}
    ]


def test_read_back_the_record_rebuilds_the_image_layer_chain_with_its_vertex() -> None:
    value = InlineCache(key=KEY, vertex=VERTEX).value(len(LAYERS))
    config, root = parse_inline(image_config(value), CONFIG, LAYERS, "img")
    [record] = import_records(config, root, "img")
    assert (record.key, record.output, record.vertex) == (KEY, 0, VERTEX)
    assert [layer.blob for layer in record.layers] == [layer.digest for layer in LAYERS]
    assert record.snapshot == chain_ids(DIFF_IDS)[-1]
    # The rebuilt config is an ordinary one: it survives a write and a parse unchanged.
    assert parse_config(config_json(config), "again") == config


def test_another_output_keeps_its_key_and_index() -> None:
    value = InlineCache(key=KEY, output=1).value(len(LAYERS))
    config, _ = parse_inline(image_config(value), CONFIG, LAYERS, "img")
    assert [(r.key, r.output) for r in config.records] == [(KEY, 1)]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (json.dumps({"rootfs": {"diff_ids": DIFF_IDS}}).encode(), "has no inline cache"),
        (image_config("not base64!"), "is not base64 JSON"),
        (
            json.dumps(
                {"rootfs": {"diff_ids": DIFF_IDS[:1]}, INLINE_CACHE_KEY: InlineCache(key=KEY).value(2)}
            ).encode(),
            "rootfs.diff_ids do not match",
        ),
        (
            image_config(
                base64.b64encode(json.dumps([{"digest": KEY, "layers": [{"layer": 5}]}]).encode()).decode()
            ),
            "is not a layer index",
        ),
    ],
)
def test_a_bad_inline_cache_is_an_error_naming_the_problem(config: bytes, problem: str) -> None:
    with pytest.raises(CacheConfigError, match=problem):
        parse_inline(config, CONFIG, LAYERS, "img")


def test_an_image_manifest_is_told_from_a_cache_root() -> None:
    config: dict[str, Any] = {"mediaType": CONFIG.media_type, "digest": CONFIG.digest, "size": 1}
    image: dict[str, Any] = {
        "schemaVersion": 2,
        "config": config,
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in LAYERS],
    }
    found = image_manifest_parts(json.dumps(image).encode(), "img")
    assert found is not None and found[0].digest == CONFIG.digest and found[1] == LAYERS
    cache_root = {
        **image,
        "config": {**config, "mediaType": "application/vnd.buildkit.cacheconfig.v0"},
    }
    assert image_manifest_parts(json.dumps(cache_root).encode(), "cache") is None
    index = {"schemaVersion": 2, "manifests": []}
    assert image_manifest_parts(json.dumps(index).encode(), "cache") is None
