"""The cache config's JSON shape and checks, export/import options and their deprecated forms."""

from __future__ import annotations

import json

import pytest

from buildsvc.cache.config import (
    CacheConfig,
    CacheConfigError,
    CacheInput,
    CacheLayer,
    CacheRecord,
    CacheResult,
    LayerAnnotations,
    config_json,
    parse_config,
)
from buildsvc.cache.export import Step, plan_records
from buildsvc.cache.manifest import build_root, parse_root
from buildsvc.cache.options import legacy_export, legacy_import, parse_export, parse_import
from buildsvc.errors import InvalidInput

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64
K = "sha256:" + "c" * 64


def sample() -> CacheConfig:
    ann = LayerAnnotations(media_type="application/vnd.oci.image.layer.v1.tar+gzip", diff_id=E, size=3)
    return CacheConfig(
        layers=(
            CacheLayer(blob=D, parent=-1, annotations=ann),
            CacheLayer(blob=E, parent=0, annotations=ann),
        ),
        records=(
            CacheRecord(key=K, results=(CacheResult(layer=0),)),
            CacheRecord(key=K, output=2, results=(CacheResult(layer=1),), inputs=((CacheInput(link=0),),)),
        ),
    )


def test_config_is_written_in_buildkits_shape_and_reads_back() -> None:
    data = config_json(sample())
    doc = json.loads(data)
    assert doc["layers"][1] == {
        "blob": E,
        "parent": 0,
        "annotations": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "diffID": E, "size": 3},
    }
    assert doc["records"][0] == {"digest": K, "layers": [{"layer": 0}]}
    assert doc["records"][1]["inputs"] == [[{"selector": "", "link": 0}]]
    assert doc["records"][1]["digest"] != K  # output 2 has its own digest
    assert parse_config(data, "t") == sample()
    assert sample().chain(1) == [0, 1]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("[]", "not a JSON object"),
        ('{"layers": [{"blob": "sha256:x"}]}', "layers[0].blob is not a sha256 digest"),
        (json.dumps({"layers": [{"blob": D, "parent": 5}]}), "parent is not a layer index"),
        (json.dumps({"layers": [{"blob": D, "parent": 1}, {"blob": E, "parent": 0}]}), "cycle"),
        (json.dumps({"records": [{"digest": K, "layers": [{"layer": 0}]}]}), "is not a layer index"),
        (json.dumps({"records": [{"digest": K, "inputs": [[{"link": 0}]]}]}), "link is not a record index"),
    ],
)
def test_a_malformed_config_is_refused_naming_the_problem(doc: str, problem: str) -> None:
    with pytest.raises(CacheConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc.encode(), "store")


def test_root_documents_name_the_config_and_every_layer_once() -> None:
    config = config_json(sample())
    for image_manifest in (False, True):
        data, media_type = build_root(config, K, sample().layers, oci=True, image_manifest=image_manifest)
        root = parse_root(data, "t")
        assert root.config.digest == K and set(root.layers) == {D, E}
        assert media_type.endswith("manifest.v1+json" if image_manifest else "index.v1+json")
    with pytest.raises(CacheConfigError, match="0 cache configs"):
        parse_root(b'{"manifests": []}', "t")


def test_min_plans_the_result_only_and_max_every_step_linked_to_its_inputs() -> None:
    steps = {
        "v1": Step(vertex="v1", key="k1", outputs=("s1",)),
        "v2": Step(vertex="v2", key="k2", outputs=("s2",), inputs=(("v1", 0),)),
        "v3": Step(vertex="v3", key="k3", outputs=("s3", None), inputs=(("v2", 0),)),
    }
    assert [(r.key, r.snapshot, r.inputs) for r in plan_records(steps, ("v3", 0), "min")] == [
        ("k3", "s3", ())
    ]
    planned = plan_records(steps, ("v3", 0), "max")
    assert [(r.key, r.inputs) for r in planned] == [("k1", ()), ("k2", (("k1", 0),)), ("k3", (("k2", 0),))]


def test_export_options_are_checked() -> None:
    spec = parse_export({"type": "local", "store": "/c", "mode": "max", "compression": "zstd"})
    assert (spec.dest, spec.mode, spec.compression, spec.tag) == ("/c", "max", "zstd", "latest")
    assert parse_export({"type": "registry", "ref": "r/x:y", "ignore-error": "true"}).ignore_error
    for attrs, message in (
        ({"type": "registry"}, "ref= is required"),
        (
            {"type": "local", "dest": "/c", "oci-mediatypes": "false", "compression": "zstd"},
            "needs oci-mediatypes",
        ),
        ({"type": "local", "dest": "/c", "image-manifest": "maybe"}, "true or false"),
        ({"type": "local", "dest": "/c", "compression-level": "99"}, "compression-level"),
    ):
        with pytest.raises(InvalidInput, match=message):
            parse_export(attrs)
    imp = parse_import({"type": "local", "src": "/c", "digest": K})
    assert (imp.src, imp.digest) == ("/c", K)
    with pytest.raises(InvalidInput, match="digest="):
        parse_import({"type": "local", "src": "/c", "digest": "sha256:short"})


def test_deprecated_forms_translate_with_a_warning() -> None:
    exports, warnings = legacy_export(["reg/x:c"], ["mode=max", "registry.insecure=true"])
    assert exports == [{"type": "registry", "ref": "reg/x:c", "mode": "max", "registry.insecure": "true"}]
    assert len(warnings) == 2 and all("deprecated" in w for w in warnings)
    assert legacy_export(["type=local,dest=/c"], []) == ([{"type": "local", "dest": "/c"}], [])
    with pytest.raises(InvalidInput, match="exactly one"):
        legacy_export(["a/b:c", "d/e:f"], ["mode=max"])
    imports, warnings = legacy_import(["reg/x:c", "type=local,src=/c"])
    assert imports == [{"type": "registry", "ref": "reg/x:c"}, {"type": "local", "src": "/c"}]
    assert len(warnings) == 1


def test_a_record_keeps_its_vertex_through_the_config_and_plans_carry_it() -> None:
    ann = LayerAnnotations(media_type="application/vnd.oci.image.layer.v1.tar", diff_id=E, size=1)
    config = CacheConfig(
        layers=(CacheLayer(blob=D, parent=-1, annotations=ann),),
        records=(CacheRecord(key=K, results=(CacheResult(layer=0),), vertex=E),),
    )
    assert json.loads(config_json(config))["records"][0]["buildsvc.vertex"] == E
    assert parse_config(config_json(config), "here") == config
    bad = config_json(config).replace(f'"buildsvc.vertex":"{E}"'.encode(), b'"buildsvc.vertex":"v1"')
    with pytest.raises(CacheConfigError, match=r"buildsvc\.vertex is not a sha256 digest"):
        parse_config(bad, "here")
    steps = {"v": Step(vertex="v", key=K, outputs=("snap",))}
    assert [r.vertex for r in plan_records(steps, ("v", 0), "min")] == ["v"]
    assert [r.vertex for r in plan_records(steps, ("v", 0), "max")] == ["v"]
