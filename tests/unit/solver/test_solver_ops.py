"""Vertex digests: stable, canonical, sensitive to every op field and blind to metadata."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from buildsvc.solver.ops import (
    CacheOptions,
    CacheSharing,
    CopyAction,
    DiffOp,
    Edge,
    ExecOp,
    FileAction,
    FileOp,
    FrozenDict,
    MergeOp,
    Meta,
    MkdirAction,
    MkfileAction,
    Mount,
    MountType,
    NetMode,
    Op,
    Owner,
    RmAction,
    SecretOptions,
    SecurityMode,
    SourceOp,
    SSHOptions,
    SymlinkAction,
    TmpfsOptions,
    Vertex,
    describe_op,
    output_count,
)

BASE = Edge(digest="sha256:" + "a" * 64, index=0)
OTHER = Edge(digest="sha256:" + "b" * 64, index=1)

# One instance of each op kind with every field set away from its default, so that changing any
# single field is a visible change. Validity does not matter for digests.
FULL_OWNER = Owner(user=1000, group="staff")
FULL_OPS: dict[str, Op] = {
    "source": SourceOp(identifier="local://context", attrs={"local.sharedkeyhint": "ctx"}),
    "exec": ExecOp(
        meta=Meta(
            args=("make", "all"),
            env=("A=1",),
            cwd="/src",
            user="build",
            hostname="box",
            valid_exit_codes=(0, 3),
        ),
        mounts=(
            Mount(
                dest="/",
                input=0,
                selector="/sub",
                output=0,
                readonly=True,
                type=MountType.CACHE,
                cache=CacheOptions(id="c", sharing=CacheSharing.LOCKED),
                tmpfs=TmpfsOptions(size=1024),
                secret=SecretOptions(id="s", uid=1, gid=2, mode=0o440, optional=True),
                ssh=SSHOptions(id="agent", uid=1, gid=2, mode=0o660, optional=True),
            ),
        ),
        network=NetMode.NONE,
        security=SecurityMode.INSECURE,
    ),
    "file": FileOp(
        actions=(
            FileAction(
                input=0,
                secondary_input=1,
                output=0,
                action=CopyAction(
                    src="a",
                    dest="/b",
                    owner=FULL_OWNER,
                    mode=0o600,
                    follow_symlinks=True,
                    dir_contents_only=True,
                    attempt_unpack=True,
                    create_dest_path=True,
                    allow_wildcard=True,
                    allow_empty_wildcard=True,
                    include_patterns=("*.c",),
                    exclude_patterns=("*.o",),
                    always_replace_existing=True,
                    timestamp=5,
                ),
            ),
            FileAction(
                input=1,
                secondary_input=0,
                output=1,
                action=MkdirAction(path="/d", mode=0o700, make_parents=True, owner=FULL_OWNER, timestamp=7),
            ),
            FileAction(
                input=1,
                secondary_input=0,
                output=2,
                action=MkfileAction(path="/f", data=b"hi", mode=0o600, owner=FULL_OWNER, timestamp=9),
            ),
            FileAction(
                input=1,
                secondary_input=0,
                output=3,
                action=RmAction(path="/r", allow_not_found=True, allow_wildcard=True),
            ),
            FileAction(
                input=1,
                secondary_input=0,
                output=4,
                action=SymlinkAction(oldpath="t", newpath="/l", owner=FULL_OWNER, timestamp=11),
            ),
        )
    ),
    "merge": MergeOp(inputs=(0, 1)),
    "diff": DiffOp(lower=0, upper=1),
}


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, bytes):
        return value + b"x"
    if isinstance(value, enum.Enum):
        members = list(type(value))
        return members[(members.index(value) + 1) % len(members)]
    if isinstance(value, tuple):
        return (*value, value[-1])
    if isinstance(value, Mapping):
        return {**value, "extra.key": "v"}
    raise AssertionError(f"no change defined for {value!r}")


def _variants(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every copy of ``obj`` with exactly one leaf field changed, plus dropped tuple items."""
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        where = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            for sub, new in _variants(value, where + "."):
                yield sub, dataclasses.replace(obj, **{f.name: new})
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                for sub, new in _variants(item, f"{where}[{i}]."):
                    yield sub, dataclasses.replace(obj, **{f.name: (*value[:i], new, *value[i + 1 :])})
            yield f"{where}[-1] dropped", dataclasses.replace(obj, **{f.name: value[:-1]})
        else:
            yield where, dataclasses.replace(obj, **{f.name: _changed(value)})


def _non_default_fields(obj: Any) -> Iterator[str]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            yield f.name
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            yield f.name
        if dataclasses.is_dataclass(value):
            yield from _non_default_fields(value)
        if isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    yield from _non_default_fields(item)


@pytest.mark.parametrize("kind", list(FULL_OPS))
def test_samples_set_every_field(kind: str) -> None:
    # Otherwise the variant test below would not cover the fields left at their defaults.
    assert list(_non_default_fields(FULL_OPS[kind])) == []


@pytest.mark.parametrize("kind", list(FULL_OPS))
def test_changing_any_op_field_changes_the_digest(kind: str) -> None:
    base = Vertex(op=FULL_OPS[kind], inputs=(BASE, OTHER))
    seen = {base.digest: "(unchanged)"}
    variants = list(_variants(base.op))
    assert len(variants) >= len(dataclasses.fields(base.op))
    for where, op in variants:
        digest = Vertex(op=op, inputs=base.inputs).digest
        assert digest not in seen, f"changing {where} gave the same digest as {seen.get(digest)}"
        seen[digest] = where


def test_changing_an_input_changes_the_digest() -> None:
    op = MergeOp(inputs=(0,))
    digests = {
        Vertex(op=op, inputs=(BASE,)).digest,
        Vertex(op=op, inputs=(OTHER,)).digest,
        Vertex(op=op, inputs=(Edge(digest=BASE.digest, index=1),)).digest,
        Vertex(op=op, inputs=(BASE, OTHER)).digest,
        Vertex(op=op, inputs=(OTHER, BASE)).digest,
    }
    assert len(digests) == 5


def test_canonical_bytes_are_pinned() -> None:
    vertex = Vertex(
        op=ExecOp(meta=Meta(args=("true",)), mounts=(Mount(dest="/", input=0, output=0),)),
        inputs=(BASE,),
    )
    expected = (
        '{"inputs":[{"digest":"sha256:' + "a" * 64 + '","index":0}],'
        '"op":{"exec":{"meta":{"args":["true"]},"mounts":[{"dest":"/","input":0,"output":0}]}}}'
    )
    assert vertex.canonical_bytes() == expected.encode()
    assert vertex.digest == "sha256:" + hashlib.sha256(expected.encode()).hexdigest()


def test_digest_is_stable_across_releases() -> None:
    # Pinned: a change here changes every cache key and every recorded definition.
    vertex = Vertex(op=SourceOp(identifier="docker-image://busybox"))
    assert vertex.canonical_bytes() == (
        b'{"inputs":[],"op":{"source":{"identifier":"docker-image://docker.io/library/busybox:latest"}}}'
    )
    assert vertex.digest == "sha256:ee6b831f9e648b3c22eee0ae7b2e4693aaffe4a9bf2e5723d09ab6df459772cf"


def test_canonical_form_is_sorted_compact_utf8() -> None:
    op = SourceOp(identifier="local://ctx", attrs={"local.sharedkeyhint": "é", "local.followpaths": "[]"})
    raw = Vertex(op=op).canonical_bytes()
    assert b" " not in raw
    assert "é".encode() in raw
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_fields_at_their_defaults_are_left_out() -> None:
    explicit = Mount(dest="/", input=0, output=0, readonly=False, type=MountType.BIND, selector="")
    implicit = Mount(dest="/", input=0, output=0)
    meta = Meta(args=("true",), cwd="/", env=())
    a = Vertex(op=ExecOp(meta=meta, mounts=(explicit,), network=NetMode.SANDBOX), inputs=(BASE,))
    b = Vertex(op=ExecOp(meta=Meta(args=("true",)), mounts=(implicit,)), inputs=(BASE,))
    assert a.digest == b.digest
    assert b'"network"' not in a.canonical_bytes()


def test_explicit_zero_is_not_a_default_when_the_default_is_none() -> None:
    root_owned = MkdirAction(path="/d", owner=Owner(user=0, group=0))
    unowned = MkdirAction(path="/d", owner=Owner())
    assert Vertex(op=FileOp(actions=(FileAction(action=root_owned),))).digest != (
        Vertex(op=FileOp(actions=(FileAction(action=unowned),))).digest
    )


def test_modes_are_octal_strings_and_binary_data_is_base64() -> None:
    op = FileOp(actions=(FileAction(action=MkfileAction(path="/f", data=b"\xff\x00", mode=0o600)),))
    doc = json.loads(Vertex(op=op).canonical_bytes())
    mkfile = doc["op"]["file"]["actions"][0]["mkfile"]
    assert mkfile == {"path": "/f", "data_base64": "/wA=", "mode": "0600"}


def test_docker_image_identifiers_are_normalized_on_construction() -> None:
    short = SourceOp(identifier="docker-image://busybox")
    full = SourceOp(identifier="docker-image://docker.io/library/busybox:latest")
    assert short.identifier == full.identifier
    assert Vertex(op=short).digest == Vertex(op=full).digest
    # Unparsable references are kept as written, for validate() to report.
    assert SourceOp(identifier="docker-image://Bad").identifier == "docker-image://Bad"


def test_ops_are_immutable_and_hashable() -> None:
    op = SourceOp(identifier="local://ctx", attrs={"local.sharedkeyhint": "x"})
    assert isinstance(op.attrs, FrozenDict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.identifier = "local://other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        op.attrs["k"] = "v"  # type: ignore[index]
    vertex = Vertex(op=op)
    assert hash(vertex) == hash(Vertex(op=op))
    assert {vertex, Vertex(op=op)} == {vertex}


def test_output_count_per_op_kind() -> None:
    assert output_count(FULL_OPS["source"]) == 1
    assert output_count(FULL_OPS["merge"]) == 1
    exec_op = ExecOp(
        meta=Meta(args=("true",)),
        mounts=(Mount(dest="/", output=0), Mount(dest="/a"), Mount(dest="/b", output=1)),
    )
    assert output_count(exec_op) == 2
    assert output_count(FULL_OPS["file"]) == 5


def test_describe_op_summarizes() -> None:
    assert describe_op(FULL_OPS["source"]) == "local://context"
    assert describe_op(FULL_OPS["exec"]) == "make all"
    assert describe_op(FULL_OPS["file"]) == "copy a /b (+4)"
    long = ExecOp(meta=Meta(args=("x" * 100,)), mounts=())
    assert len(describe_op(long)) == 60
