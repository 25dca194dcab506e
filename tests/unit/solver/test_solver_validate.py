"""Definition.validate(): every malformed definition is refused with a message naming the vertex."""

from __future__ import annotations

import pickle

import pytest

from buildsvc.errors import InvalidInput
from buildsvc.solver.definition import Definition, Location, Range, SourceFile
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import (
    CacheOptions,
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
    Op,
    OpMetadata,
    Owner,
    ProgressGroup,
    RmAction,
    SecretOptions,
    SourceOp,
    SymlinkAction,
    TmpfsOptions,
    Vertex,
    WorkerConstraints,
    output_count,
)

SRC = Vertex(op=SourceOp(identifier="local://a"))
SRC2 = Vertex(op=SourceOp(identifier="local://b"))
IN = (Edge(digest=SRC.digest), Edge(digest=SRC2.digest))
NAME = "the step"
CHECKSUM = "sha256:" + "ab" * 32


def _definition(op: Op, inputs: tuple[Edge, ...] = IN) -> tuple[Definition, Vertex]:
    vertex = Vertex(op=op, inputs=inputs)
    definition = Definition(
        vertices={v.digest: v for v in (SRC, SRC2, vertex)},
        output=Edge(digest=vertex.digest) if output_count(op) else None,
        metadata={vertex.digest: OpMetadata(description={"llb.customname": NAME})},
    )
    return definition, vertex


def _refused(op: Op, inputs: tuple[Edge, ...] = IN) -> DefinitionError:
    definition, vertex = _definition(op, inputs)
    with pytest.raises(DefinitionError) as info:
        definition.validate()
    error = info.value
    assert error.vertex == vertex.digest
    assert error.name == NAME
    assert vertex.digest in str(error) and NAME in str(error)
    return error


def _exec(*mounts: Mount, args: tuple[str, ...] = ("true",), **meta: object) -> ExecOp:
    root = (Mount(dest="/", input=0, output=0),)
    return ExecOp(meta=Meta(args=args, **meta), mounts=mounts or root)  # type: ignore[arg-type]


def _root(*more: Mount) -> tuple[Mount, ...]:
    return (Mount(dest="/", input=0, output=0), *more)


def _file(*actions: FileAction) -> FileOp:
    return FileOp(actions=actions)


def _one(action: MkdirAction | MkfileAction | RmAction | CopyAction | SymlinkAction) -> FileOp:
    secondary = 1 if isinstance(action, CopyAction) else None
    return _file(FileAction(input=0, secondary_input=secondary, output=0, action=action))


def _src(identifier: str, **attrs: str) -> SourceOp:
    return SourceOp(identifier=identifier, attrs=attrs)


VALID: dict[str, Op] = {
    "exec": _exec(*_root(Mount(dest="/c", type=MountType.CACHE, cache=CacheOptions(id="x")))),
    "copy-relative-src-with-dotdot": _one(CopyAction(src="../../etc/passwd", dest="/x")),
    "copy-from-scratch": _file(
        FileAction(input=0, secondary_input=None, output=0, action=CopyAction(src="a", dest="/a"))
    ),
    "chain": _file(
        FileAction(input=0, action=MkdirAction(path="/a")),
        FileAction(input=2, output=0, action=MkfileAction(path="/a/b")),
    ),
    "dotdot-inside": _one(MkdirAction(path="/a/../b")),
    "symlink-relative-target": _one(SymlinkAction(oldpath="../../x", newpath="/l")),
    "mode-max": _one(MkdirAction(path="/a", mode=0o7777)),
    "merge": MergeOp(inputs=(0, 1)),
    "diff-scratch": DiffOp(lower=None, upper=0),
    "exec-selector-relative": _exec(*_root(Mount(dest="/s", input=1, selector="sub/dir", readonly=True))),
    "image": _src("docker-image://busybox"),
    "https": _src("https://example.com/f", **{"http.checksum": CHECKSUM, "http.perm": "0755"}),
    "oci": _src(f"oci-layout://store@{CHECKSUM}"),
    "local": _src("local://ctx", **{"local.includepattern": '["a/*"]'}),
}


@pytest.mark.parametrize("kind", list(VALID))
def test_valid_definitions_pass(kind: str) -> None:
    op = VALID[kind]
    definition, _ = _definition(op, () if isinstance(op, SourceOp) else IN)
    definition.validate()


REFUSED: dict[str, tuple[Op, str]] = {
    # exec
    "empty args": (_exec(args=()), "exec has no args"),
    "empty args[0]": (_exec(args=("",)), "args[0] is empty"),
    "NUL in arg": (_exec(args=("echo", "a\0b")), "NUL byte"),
    "env without =": (_exec(env=("FOO",)), "is not KEY=VALUE"),
    "env without key": (_exec(env=("=x",)), "is not KEY=VALUE"),
    "relative cwd": (_exec(cwd="src"), "cwd 'src' must be absolute"),
    "escaping cwd": (_exec(cwd="/../x"), "escapes its root"),
    "exit code": (_exec(valid_exit_codes=(256,)), "valid exit code 256"),
    "no mounts": (ExecOp(meta=Meta(args=("true",)), mounts=()), "no mounts"),
    "no root": (_exec(Mount(dest="/x", input=0, output=0)), "no root mount"),
    "relative dest": (
        _exec(*_root(Mount(dest="tmp", type=MountType.TMPFS))),
        "mount dest 'tmp' must be absolute",
    ),
    "escaping dest": (_exec(*_root(Mount(dest="/a/../../etc", input=1))), "escapes its root"),
    "two at one dest": (_exec(*_root(Mount(dest="/a/"), Mount(dest="/a"))), "two mounts at '/a'"),
    "mount input range": (_exec(*_root(Mount(dest="/a", input=2))), "input 2 is out of range"),
    "mount input negative": (_exec(*_root(Mount(dest="/a", input=-1))), "input -1 is out of range"),
    "cache without id": (_exec(*_root(Mount(dest="/c", type=MountType.CACHE))), "a cache mount needs an id"),
    "cache empty id": (
        _exec(*_root(Mount(dest="/c", type=MountType.CACHE, cache=CacheOptions(id="")))),
        "a cache mount needs an id",
    ),
    "cache output": (
        _exec(*_root(Mount(dest="/c", type=MountType.CACHE, cache=CacheOptions(id="c"), output=1))),
        "a cache mount has no output",
    ),
    "tmpfs input": (_exec(*_root(Mount(dest="/t", type=MountType.TMPFS, input=0))), "takes no input"),
    "tmpfs size": (
        _exec(*_root(Mount(dest="/t", type=MountType.TMPFS, tmpfs=TmpfsOptions(size=-1)))),
        "tmpfs size -1 is negative",
    ),
    "options for other type": (
        _exec(*_root(Mount(dest="/t", tmpfs=TmpfsOptions(size=1)))),
        "is a bind mount but has tmpfs options",
    ),
    "secret without options": (
        _exec(*_root(Mount(dest="/s", type=MountType.SECRET))),
        "needs secret options",
    ),
    "secret mode": (
        _exec(*_root(Mount(dest="/s", type=MountType.SECRET, secret=SecretOptions(id="s", mode=0o10000)))),
        "is not permission bits",
    ),
    "readonly output": (_exec(*_root(Mount(dest="/r", input=1, readonly=True, output=1))), "read-only"),
    "root not bind": (
        _exec(Mount(dest="/", type=MountType.CACHE, cache=CacheOptions(id="c"))),
        "root mount must be a bind mount",
    ),
    "exec output numbering": (_exec(Mount(dest="/", input=0, output=1)), "numbered 0..0"),
    "exec duplicate outputs": (_exec(*_root(Mount(dest="/a", output=0))), "once each"),
    # file
    "no actions": (_file(), "file op has no actions"),
    "relative mkdir": (_one(MkdirAction(path="a/b")), "path 'a/b' must be absolute"),
    "NUL in mkfile": (_one(MkfileAction(path="/a\0b")), "NUL byte"),
    "empty rm path": (_one(RmAction(path="")), "path is empty"),
    "escaping copy dest": (_one(CopyAction(src="a", dest="/x/../../y")), "copy dest '/x/../../y' escapes"),
    "relative copy dest": (_one(CopyAction(src="a", dest="y")), "must be absolute"),
    "empty copy src": (_one(CopyAction(src="", dest="/y")), "copy src is empty"),
    "NUL copy src": (_one(CopyAction(src="a\0", dest="/y")), "NUL byte"),
    "escaping symlink": (_one(SymlinkAction(oldpath="x", newpath="/../l")), "escapes its root"),
    "empty pattern": (
        _one(CopyAction(src="a", dest="/y", include_patterns=("",))),
        "include pattern is empty",
    ),
    "mode too big": (_one(MkdirAction(path="/a", mode=0o10000)), "mode 4096 is not permission bits"),
    "negative mode": (_one(MkfileAction(path="/a", mode=-1)), "is not permission bits"),
    "copy mode": (_one(CopyAction(src="a", dest="/b", mode=0o20000)), "is not permission bits"),
    "owner name with colon": (_one(MkdirAction(path="/a", owner=Owner(user="a:b"))), "contains ':'"),
    "owner negative id": (_one(MkdirAction(path="/a", owner=Owner(group=-1))), "not a valid id"),
    "negative timestamp": (_one(MkdirAction(path="/a", timestamp=-5)), "before the Unix epoch"),
    "action input range": (
        _file(FileAction(input=2, output=0, action=RmAction(path="/a"))),
        "input 2 is out of range",
    ),
    "action refers to itself": (
        _file(
            FileAction(input=0, action=RmAction(path="/a")),
            FileAction(input=3, output=0, action=RmAction(path="/b")),
        ),
        "action 1 (rm): input 3 is out of range",
    ),
    "secondary on mkdir": (
        _file(FileAction(input=0, secondary_input=1, output=0, action=MkdirAction(path="/a"))),
        "only copy takes a secondary input",
    ),
    "copy secondary range": (
        _file(FileAction(input=0, secondary_input=5, output=0, action=CopyAction(src="a", dest="/a"))),
        "secondary input 5 is out of range",
    ),
    "file output numbering": (
        _file(FileAction(input=0, output=3, action=RmAction(path="/a"))),
        "numbered 0..0",
    ),
    # merge / diff
    "merge empty": (MergeOp(inputs=()), "merge has no inputs"),
    "merge range": (MergeOp(inputs=(0, 2)), "merge input 2 is out of range"),
    "diff range": (DiffOp(lower=0, upper=7), "diff upper 7 is out of range"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(case: str) -> None:
    op, reason = REFUSED[case]
    assert reason in _refused(op).reason


SOURCE_REFUSED: dict[str, tuple[SourceOp, str]] = {
    "unknown scheme": (_src("git://github.com/x/y"), "unknown source scheme 'git'"),
    "no scheme": (_src("busybox"), "unknown source scheme ''"),
    "unknown attr": (
        _src("local://ctx", **{"local.includepatterns": "[]"}),
        "unknown attribute 'local.includepatterns'",
    ),
    "http attr on local": (
        _src("local://ctx", **{"http.checksum": CHECKSUM}),
        "unknown attribute 'http.checksum'",
    ),
    "empty local name": (_src("local://"), "local source name is empty"),
    "patterns not a list": (
        _src("local://ctx", **{"local.excludepatterns": "*.pyc"}),
        "JSON list of strings",
    ),
    "bad image": (_src("docker-image://Busy Box"), "in image reference 'Busy Box'"),
    "oci without digest": (_src("oci-layout://store"), "oci-layout://PATH@sha256"),
    "oci short digest": (_src("oci-layout://store@sha256:abc"), "oci-layout://PATH@sha256"),
    "checksum md5": (_src("https://e.com/f", **{"http.checksum": "md5:" + "a" * 32}), "is not 'sha256:<64"),
    "checksum upper": (_src("https://e.com/f", **{"http.checksum": CHECKSUM.upper()}), "is not 'sha256:<64"),
    "checksum short": (_src("https://e.com/f", **{"http.checksum": "sha256:abc"}), "is not 'sha256:<64"),
    "url without host": (_src("https:///path"), "invalid URL"),
    "filename with slash": (_src("https://e.com/f", **{"http.filename": "a/b"}), "plain file name"),
    "perm not octal": (_src("http://e.com/f", **{"http.perm": "rwx"}), "not an octal mode"),
    "perm too big": (_src("http://e.com/f", **{"http.perm": "77777"}), "not permission bits"),
}


@pytest.mark.parametrize("case", list(SOURCE_REFUSED))
def test_source_refused(case: str) -> None:
    op, reason = SOURCE_REFUSED[case]
    error = _refused(op, inputs=())
    assert reason in error.reason


def test_source_with_inputs() -> None:
    assert "a source op takes no inputs" in _refused(_src("local://x")).reason


def test_input_asking_for_a_missing_output() -> None:
    error = _refused(MergeOp(inputs=(0,)), inputs=(Edge(digest=SRC.digest, index=1),))
    assert "input 0 asks for output 1" in error.reason and "1 output(s)" in error.reason


def test_dangling_input() -> None:
    ghost = "sha256:" + "0" * 64
    definition, vertex = _definition(MergeOp(inputs=(0,)), inputs=(Edge(digest=ghost),))
    with pytest.raises(DefinitionError, match=f"input refers to unknown vertex {ghost}") as info:
        definition.validate()
    assert (info.value.vertex, info.value.name) == (vertex.digest, NAME)
    with pytest.raises(DefinitionError):
        definition.topological_order()


def test_vertex_stored_under_the_wrong_digest() -> None:
    wrong = "sha256:" + "1" * 64
    definition = Definition(vertices={wrong: SRC}, output=Edge(digest=wrong))
    with pytest.raises(DefinitionError, match="but its op hashes to") as info:
        definition.validate()
    assert info.value.vertex == wrong and info.value.name == "local://a"


def test_cycle_between_mislabelled_vertices() -> None:
    # Real digests cannot form a cycle; keys that lie about them can.
    x, y = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    vx = Vertex(op=MergeOp(inputs=(0,)), inputs=(Edge(digest=y),))
    vy = Vertex(op=MergeOp(inputs=(0,)), inputs=(Edge(digest=x),))
    definition = Definition(vertices={x: vx, y: vy}, output=Edge(digest=x))
    with pytest.raises(DefinitionError, match=f"cycle: {x} -> {y} -> {x}") as info:
        definition.topological_order()
    assert info.value.vertex == x


def test_output_errors() -> None:
    ghost = "sha256:" + "0" * 64
    with pytest.raises(DefinitionError, match="output refers to unknown vertex"):
        Definition(vertices={SRC.digest: SRC}, output=Edge(digest=ghost)).validate()
    with pytest.raises(DefinitionError, match="output asks for output 1"):
        Definition(vertices={SRC.digest: SRC}, output=Edge(digest=SRC.digest, index=1)).validate()


def test_metadata_errors() -> None:
    ghost = "sha256:" + "0" * 64
    base = {SRC.digest: SRC}
    with pytest.raises(DefinitionError, match="metadata for unknown vertex"):
        Definition(vertices=base, output=None, metadata={ghost: OpMetadata()}).validate()
    bad_worker = OpMetadata(constraints=WorkerConstraints(worker=""))
    with pytest.raises(DefinitionError, match="worker constraint is empty") as info:
        Definition(vertices=base, output=None, metadata={SRC.digest: bad_worker}).validate()
    assert info.value.vertex == SRC.digest
    bad_group = OpMetadata(progress_group=ProgressGroup(id=""))
    with pytest.raises(DefinitionError, match="progress group id is empty"):
        Definition(vertices=base, output=None, metadata={SRC.digest: bad_group}).validate()


def test_location_errors() -> None:
    base = {SRC.digest: SRC}
    with pytest.raises(DefinitionError, match="refers to file 0, but there are 0"):
        Definition(vertices=base, output=None, locations={SRC.digest: (Location(file=0),)}).validate()
    backwards = Location(file=0, ranges=(Range(start_line=3, end_line=2),))
    with pytest.raises(DefinitionError, match="not a forward range"):
        Definition(
            vertices=base,
            output=None,
            source_files=(SourceFile(filename="Dockerfile"),),
            locations={SRC.digest: (backwards,)},
        ).validate()


def test_definition_error_is_invalid_input_and_survives_pickling() -> None:
    error = _refused(_exec(args=()))
    assert isinstance(error, InvalidInput)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.vertex, copy.name, copy.reason, str(copy)) == (
        error.vertex,
        error.name,
        error.reason,
        str(error),
    )
    assert str(DefinitionError("bad")) == "invalid definition: bad"


def test_name_falls_back_to_a_summary_of_the_op() -> None:
    vertex = Vertex(op=_exec(args=("make", "-j4")), inputs=IN[:1])
    definition = Definition(vertices={SRC.digest: SRC, vertex.digest: vertex}, output=None)
    assert definition.name_of(vertex.digest) == "make -j4"
    ok = Definition.from_vertices([SRC, vertex, SRC], Edge(digest=vertex.digest))
    assert list(ok.vertices) == [SRC.digest, vertex.digest]
    ok.validate()
