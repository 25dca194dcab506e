"""The JSON form: hand-written files load, every op kind round-trips, decoding errors name the vertex."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from buildsvc.solver import llb
from buildsvc.solver.definition import Definition, Location, Range, SourceFile
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import (
    CacheOptions,
    CacheSharing,
    CopyAction,
    DiffOp,
    Edge,
    ExecOp,
    FileAction,
    FileOp,
    MergeOp,
    Meta,
    MkdirAction,
    MkfileAction,
    Mount,
    MountType,
    NetMode,
    Op,
    OpMetadata,
    Owner,
    ProgressGroup,
    RmAction,
    SecretOptions,
    SourceOp,
    SSHOptions,
    SymlinkAction,
    TmpfsOptions,
    Vertex,
    WorkerConstraints,
)

EXAMPLE = Path(__file__).parent / "data" / "example.llb.json"
CHECKSUM = "sha256:" + "0123456789abcdef" * 4


def test_hand_written_example_loads_and_validates() -> None:
    definition = Definition.from_json(EXAMPLE.read_text())
    order = definition.topological_order()
    assert len(order) == len(definition.vertices) == 8
    assert definition.output is not None
    final = definition.vertices[definition.output.digest]
    assert isinstance(final.op, MergeOp)
    position = {v.digest: i for i, v in enumerate(order)}
    assert all(position[e.digest] < position[v.digest] for v in order for e in v.inputs)
    # What the output needs comes first; the unused oci-layout source comes last.
    assert order[-2:][0] == final
    assert isinstance(order[-1].op, SourceOp) and order[-1].op.scheme == "oci-layout"
    build = next(v for v in order if isinstance(v.op, ExecOp))
    assert definition.name_of(build.digest) == "RUN make"
    assert isinstance(build.op, ExecOp)
    assert build.op.network is NetMode.NONE
    assert build.op.mounts[2].cache == CacheOptions(id="make-cache", sharing=CacheSharing.LOCKED)
    md = definition.metadata[build.digest]
    assert md.ignore_cache
    assert md.constraints == WorkerConstraints(worker="runc-overlay", labels={"arch": "amd64"})
    assert definition.locations[build.digest] == (
        Location(file=0, ranges=(Range(start_line=2, end_line=2),)),
    )
    assert definition.source_files[0].data.startswith(b"FROM busybox")


def test_hand_written_shorthands_are_decoded() -> None:
    definition = Definition.from_json(EXAMPLE.read_text())
    ops = [v.op for v in definition.topological_order()]
    context = next(op for op in ops if isinstance(op, SourceOp) and op.scheme == "local")
    # List-valued attrs are stored JSON-encoded, as BuildKit stores them.
    assert context.attrs["local.excludepatterns"] == '["*.pyc",".git"]'
    image = next(op for op in ops if isinstance(op, SourceOp) and op.scheme == "docker-image")
    assert image.identifier == "docker-image://docker.io/library/busybox:latest"
    file_op = next(op for op in ops if isinstance(op, FileOp))
    mkdir, _, mkfile, _, _ = (a.action for a in file_op.actions)
    assert isinstance(mkdir, MkdirAction)
    assert mkdir.mode == 0o750  # from the octal string "0750"
    assert mkdir.owner == Owner(user=1000, group="staff")
    assert isinstance(mkfile, MkfileAction)
    assert (mkfile.mode, mkfile.data) == (0o644, b"1.0\n")  # decimal 420 is 0o644


def test_example_survives_a_round_trip_with_digests_as_ids() -> None:
    loaded = Definition.from_json(EXAMPLE.read_text())
    text = loaded.to_json()
    again = Definition.from_json(text)
    assert again == loaded
    assert again.to_json() == text
    ids = [v["id"] for v in json.loads(text)["vertices"]]
    assert ids == [v.digest for v in loaded.topological_order()]


def _source(identifier: str, **attrs: str) -> Vertex:
    return Vertex(op=SourceOp(identifier=identifier, attrs=attrs))


A = _source("local://a")
B = _source("local://b")

ROUND_TRIP_OPS: dict[str, Op] = {
    "source-image": SourceOp(identifier="docker-image://alpine:3.20"),
    "source-local": SourceOp(
        identifier="local://context",
        attrs={"local.includepattern": '["src/**"]', "local.followpaths": '["a"]'},
    ),
    "source-https": SourceOp(identifier="https://example.com/x", attrs={"http.checksum": CHECKSUM}),
    "source-http": SourceOp(identifier="http://example.com/x", attrs={"http.perm": "0644"}),
    "source-oci": SourceOp(identifier=f"oci-layout://store@{CHECKSUM}"),
    "exec": ExecOp(
        meta=Meta(args=("sh", "-c", "ünïcode"), env=("A=1",), cwd="/w", hostname="h", valid_exit_codes=(1,)),
        mounts=(
            Mount(dest="/", input=0, output=0),
            Mount(dest="/ro", input=1, selector="sub", readonly=True),
            Mount(dest="/c", type=MountType.CACHE, cache=CacheOptions(id="c", sharing=CacheSharing.PRIVATE)),
            Mount(dest="/t", type=MountType.TMPFS, tmpfs=TmpfsOptions(size=10)),
            Mount(dest="/s", type=MountType.SECRET, secret=SecretOptions(id="s", mode=0o444)),
            Mount(dest="/ssh", type=MountType.SSH, ssh=SSHOptions()),
            Mount(dest="/out", output=1),
        ),
        network=NetMode.HOST,
    ),
    "file": FileOp(
        actions=(
            FileAction(input=0, action=MkfileAction(path="/bin", data=b"\x00\xff", mode=0o755)),
            FileAction(input=2, secondary_input=1, action=CopyAction(src="*.c", dest="/src/", mode=0o600)),
            FileAction(input=3, action=RmAction(path="/x", allow_not_found=True)),
            FileAction(input=4, action=SymlinkAction(oldpath="../x", newpath="/y", timestamp=0)),
            FileAction(input=5, output=0, action=MkdirAction(path="/d", owner=Owner(user="root"))),
        )
    ),
    "merge": MergeOp(inputs=(1, 0)),
    "diff": DiffOp(lower=None, upper=1),
}


@pytest.mark.parametrize("kind", list(ROUND_TRIP_OPS))
def test_every_op_kind_round_trips(kind: str) -> None:
    op = ROUND_TRIP_OPS[kind]
    inputs = () if isinstance(op, SourceOp) else (Edge(digest=A.digest), Edge(digest=B.digest))
    vertex = Vertex(op=op, inputs=inputs)
    metadata = OpMetadata(
        description={"llb.customname": kind},
        ignore_cache=True,
        constraints=WorkerConstraints(labels={"os": "linux"}),
        progress_group=ProgressGroup(id="p", name="P", weak=True),
    )
    definition = Definition(
        vertices={v.digest: v for v in (A, B, vertex)},
        output=Edge(digest=vertex.digest),
        metadata={vertex.digest: metadata},
        source_files=(SourceFile(filename="f", data=b"x", language="Dockerfile"),),
        locations={
            vertex.digest: (Location(file=0, ranges=(Range(start_line=1, end_line=2, end_column=3),)),)
        },
    )
    definition.validate()
    loaded = Definition.from_json(definition.to_json())
    assert loaded.vertices[vertex.digest] == vertex
    # A and B are unreachable from the source ops' output but are kept.
    assert loaded == definition


def test_builder_definition_round_trips() -> None:
    base = llb.image("busybox").with_env("A", "1")
    built = base.run(["make"], mounts=[llb.cache_mount("/c", "c"), llb.tmpfs("/t", size=5)], name="make")
    out = built.root().file(llb.mkfile("/f", "x").symlink("f", "/g"), name="files")
    definition = llb.merge([out, llb.local("ctx")]).marshal()
    assert Definition.from_json(definition.to_json()) == definition


def test_scratch_output_is_null() -> None:
    definition = llb.scratch().marshal()
    assert definition.output is None
    assert json.loads(definition.to_json()) == {"version": 1, "vertices": [], "output": None}
    assert Definition.from_json(definition.to_json()) == definition


def test_ids_are_labels_and_identical_vertices_collapse() -> None:
    doc = {
        "vertices": [
            {"id": "one", "op": {"source": {"identifier": "local://ctx"}}},
            {"id": "two", "op": {"source": {"identifier": "local://ctx"}}},
            {"id": "m", "inputs": ["one", {"vertex": "two"}], "op": {"merge": {"inputs": [0, 1]}}},
        ],
        "output": {"vertex": "m", "index": 0},
    }
    definition = Definition.from_dict(doc)
    assert len(definition.vertices) == 2
    merge = definition.vertices[definition.output.digest if definition.output else ""]
    assert merge.inputs[0] == merge.inputs[1] == Edge(digest=_source("local://ctx").digest)


def test_ids_shaped_like_digests_are_still_recomputed() -> None:
    wrong = "sha256:" + "f" * 64
    doc = {"vertices": [{"id": wrong, "op": {"source": {"identifier": "local://ctx"}}}], "output": wrong}
    definition = Definition.from_dict(doc)
    assert list(definition.vertices) == [_source("local://ctx").digest]


def _doc(*vertices: dict[str, Any], output: object = "v") -> dict[str, Any]:
    return {"version": 1, "vertices": list(vertices), "output": output}


def _exec_json(**exec_fields: Any) -> dict[str, Any]:
    body = {"meta": {"args": ["true"]}, "mounts": [{"dest": "/", "output": 0}]}
    body.update(exec_fields)
    return {"id": "v", "op": {"exec": body}, "metadata": {"description": {"llb.customname": "my step"}}}


@pytest.mark.parametrize(
    ("vertex", "message"),
    [
        ({"id": "v", "op": {"build": {}}}, "unknown op type 'build'"),
        ({"id": "v", "op": {"source": {}, "exec": {}}}, "expected an object with one key"),
        ({"id": "v", "op": {"source": {"identifer": "x"}}}, "unknown field 'identifer'"),
        ({"id": "v", "op": {"source": {}}}, "missing field 'identifier'"),
        ({"id": "v", "op": {"source": {"identifier": 3}}}, "expected a string, got a number"),
        (_exec_json(network="bridge"), "network: unknown value 'bridge'"),
        (_exec_json(mounts=[{"dest": "/", "type": "nfs"}]), "mounts[0].type: unknown value 'nfs'"),
        (_exec_json(mounts=[{"dest": "/", "input": True}]), "expected an integer, got a boolean"),
        (_exec_json(meta={"args": "true"}), "meta.args: expected a list"),
        (
            {"id": "v", "op": {"file": {"actions": [{"input": None}]}}},
            "missing an action",
        ),
        (
            {"id": "v", "op": {"file": {"actions": [{"mkdir": {"path": "/a"}, "rm": {"path": "/a"}}]}}},
            "exactly one action",
        ),
        (
            {"id": "v", "op": {"file": {"actions": [{"mkdir": {"path": "/a", "mode": "rwx"}}]}}},
            'octal mode like "0755"',
        ),
        (
            {"id": "v", "op": {"file": {"actions": [{"mkfile": {"path": "/a", "data_base64": "!!"}}]}}},
            "not valid base64",
        ),
        (
            {
                "id": "v",
                "op": {"file": {"actions": [{"mkfile": {"path": "/a", "data": "x", "data_base64": ""}}]}},
            },
            "not both",
        ),
        (
            {"id": "v", "op": {"merge": {"inputs": [0]}}, "inputs": [{"vertex": "v", "index": -1}]},
            "non-negative",
        ),
        ({"id": "v", "op": {"diff": {}}, "metadata": {"colour": "red"}}, "unknown field 'colour'"),
        ({"id": "v", "op": {"diff": {}}, "extra": 1}, "unknown field 'extra'"),
    ],
)
def test_decoding_errors_name_the_vertex(vertex: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Definition.from_dict(_doc(vertex))
    assert info.value.vertex == "v"
    assert message in info.value.reason
    assert "vertex v" in str(info.value)


def test_decoding_error_shows_the_custom_name() -> None:
    with pytest.raises(DefinitionError, match="my step"):
        Definition.from_dict(_doc(_exec_json(network="bridge")))


def test_dangling_reference_in_json() -> None:
    doc = _doc({"id": "v", "inputs": ["nope"], "op": {"merge": {"inputs": [0]}}})
    with pytest.raises(DefinitionError, match="unknown vertex 'nope'") as info:
        Definition.from_dict(doc)
    assert (info.value.vertex, info.value.name) == ("v", "merge")


def test_cycle_in_json() -> None:
    doc = _doc(
        {"id": "x", "inputs": ["y"], "op": {"merge": {"inputs": [0]}}},
        {"id": "y", "inputs": ["x"], "op": {"merge": {"inputs": [0]}}},
        {"id": "v", "inputs": ["x"], "op": {"merge": {"inputs": [0]}}},
    )
    with pytest.raises(DefinitionError, match=r"cycle: x -> y -> x") as info:
        Definition.from_dict(doc)
    assert info.value.vertex == "x"


def test_self_loop_in_json() -> None:
    with pytest.raises(DefinitionError, match="cycle: v -> v"):
        Definition.from_dict(_doc({"id": "v", "inputs": ["v"], "op": {"merge": {"inputs": [0]}}}))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "not valid JSON"),
        ('{"vertices": [], "vertices": []}', "duplicate key 'vertices'"),
        ("[]", "expected an object, got a list"),
        ('{"version": 2, "vertices": []}', "unsupported version 2"),
        ('{"vertices": {}}', "expected a list of vertices"),
        ('{"vertices": [], "output": "ghost"}', "output refers to unknown vertex 'ghost'"),
        ('{"vertices": [{"op": {}}]}', "vertices[0] must be an object with a non-empty string 'id'"),
        ('{"vertices": [], "stuff": 1}', "unknown field 'stuff'"),
    ],
)
def test_document_level_errors(doc: str, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Definition.from_json(doc)
    assert message in str(info.value)


def test_duplicate_ids_are_refused() -> None:
    source = {"id": "v", "op": {"source": {"identifier": "local://a"}}}
    with pytest.raises(DefinitionError, match="two vertices have this id") as info:
        Definition.from_dict(_doc(source, source))
    assert info.value.vertex == "v"


def test_from_json_validates_unless_told_not_to() -> None:
    doc = json.dumps(_doc(_exec_json(meta={"args": []})))
    with pytest.raises(DefinitionError, match="exec has no args"):
        Definition.from_json(doc)
    loaded = Definition.from_json(doc, validate=False)
    with pytest.raises(DefinitionError, match="exec has no args"):
        loaded.validate()


def test_the_documented_example_loads() -> None:
    from buildsvc.solver import definition as module

    doc = module.__doc__ or ""
    example = doc.split("::\n", 1)[1].split("\n- ", 1)[0]
    loaded = Definition.from_json(example)
    assert loaded.output is not None
    assert loaded.name_of(loaded.output.digest) == "say hi"
