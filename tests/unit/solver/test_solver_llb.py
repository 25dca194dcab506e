"""The llb builder: the graphs it makes, how it dedupes, and the errors it gives."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import (
    CacheOptions,
    CacheSharing,
    CopyAction,
    DiffOp,
    Edge,
    ExecOp,
    FileOp,
    MergeOp,
    MkdirAction,
    MkfileAction,
    Mount,
    MountType,
    NetMode,
    Op,
    Owner,
    SecretOptions,
    SecurityMode,
    SourceOp,
    SSHOptions,
    SymlinkAction,
    TmpfsOptions,
    Vertex,
    WorkerConstraints,
)

CHECKSUM = "sha256:" + "0123456789abcdef" * 4


def _output_vertex(definition: Definition) -> Vertex:
    assert definition.output is not None
    return definition.vertices[definition.output.digest]


_T = TypeVar("_T", bound=Op)


def _op(state: llb.State, kind: type[_T]) -> _T:
    op = _output_vertex(state.marshal()).op
    assert isinstance(op, kind)
    return op


def test_public_api_is_pinned() -> None:
    assert sorted(llb.__all__) == [
        "DEFAULT_PATH",
        "ExecState",
        "FileActions",
        "RunMount",
        "State",
        "bind",
        "cache_mount",
        "copy",
        "diff",
        "https",
        "image",
        "local",
        "merge",
        "mkdir",
        "mkfile",
        "oci_layout",
        "rm",
        "scratch",
        "secret",
        "ssh",
        "symlink",
        "tmpfs",
    ]
    assert all(hasattr(llb, name) for name in llb.__all__)


# -- sources ----------------------------------------------------------------------------------------


def test_sources() -> None:
    assert (
        _op(llb.image("alpine:3.20"), SourceOp).identifier == "docker-image://docker.io/library/alpine:3.20"
    )
    local = _op(
        llb.local("context", include=["src/**"], exclude=["*.pyc"], follow_paths=["a"], shared_key_hint="k"),
        SourceOp,
    )
    assert local.identifier == "local://context"
    assert dict(local.attrs) == {
        "local.includepattern": '["src/**"]',
        "local.excludepatterns": '["*.pyc"]',
        "local.followpaths": '["a"]',
        "local.sharedkeyhint": "k",
    }
    http = _op(llb.https("https://e.com/t.tgz", checksum=CHECKSUM, filename="t.tgz", perm=0o755), SourceOp)
    assert http.identifier == "https://e.com/t.tgz"
    assert dict(http.attrs) == {"http.checksum": CHECKSUM, "http.filename": "t.tgz", "http.perm": "0755"}
    assert _op(llb.oci_layout("store", CHECKSUM), SourceOp).identifier == f"oci-layout://store@{CHECKSUM}"


def test_source_errors() -> None:
    with pytest.raises(DefinitionError, match="not an http"):
        llb.https("ftp://e.com/x")
    with pytest.raises(DefinitionError, match="needs a name"):
        llb.local("")
    with pytest.raises(DefinitionError, match="sha256:<64") as info:
        llb.https("https://e.com/x", checksum="sha256:short").marshal()
    assert info.value.name == "https://e.com/x"


def test_scratch_marshals_to_an_empty_definition() -> None:
    definition = llb.scratch().marshal()
    assert definition.output is None and not definition.vertices
    assert llb.scratch().is_scratch and llb.scratch().output is None


# -- run --------------------------------------------------------------------------------------------


def test_run_shell_string_and_state_meta() -> None:
    base = llb.image("busybox").with_env("A", "1").with_cwd("/src").with_cwd("sub").with_user("app")
    assert (base.env, base.cwd, base.user) == ({"A": "1"}, "/src/sub", "app")
    op = _op(base.run("make all", env={"B": "2"}), ExecOp)
    assert op.meta.args == ("/bin/sh", "-c", "make all")
    assert op.meta.env == ("A=1", "B=2", f"PATH={llb.DEFAULT_PATH}")
    assert (op.meta.cwd, op.meta.user) == ("/src/sub", "app")
    assert op.mounts == (Mount(dest="/", input=0, output=0),)


def test_run_overrides() -> None:
    base = llb.image("busybox").with_env("PATH", "/bin").with_cwd("/w")
    op = _op(
        base.run(
            ["ls", "-l"],
            env={"PATH": "/usr/bin"},
            cwd="x",
            user="nobody",
            hostname="box",
            network="none",
            security=SecurityMode.INSECURE,
            valid_exit_codes=[0, 1],
        ),
        ExecOp,
    )
    assert op.meta.args == ("ls", "-l")
    assert op.meta.env == ("PATH=/usr/bin",)
    assert (op.meta.cwd, op.meta.user, op.meta.hostname) == ("/w/x", "nobody", "box")
    assert (op.network, op.security, op.meta.valid_exit_codes) == (
        NetMode.NONE,
        SecurityMode.INSECURE,
        (0, 1),
    )


def test_state_meta_carries_into_later_runs_and_file_results() -> None:
    base = llb.image("busybox").with_env("A", "1").with_cwd("/w")
    after = base.run("true").root().file(llb.mkdir("d")).run("true")
    op = _op(after, ExecOp)
    assert "A=1" in op.meta.env and op.meta.cwd == "/w"


def test_run_on_scratch_has_a_scratch_root() -> None:
    op = _op(llb.scratch().run(["/init"]), ExecOp)
    assert op.mounts == (Mount(dest="/", input=None, output=0),)
    assert _output_vertex(llb.scratch().run(["/init"]).marshal()).inputs == ()


def test_mounts_and_their_results() -> None:
    base = llb.image("busybox")
    src = llb.local("ctx")
    run = base.run(
        "build",
        cwd="/w",
        mounts=[
            llb.bind(src, "src", readonly=True, selector="app"),
            llb.bind(llb.scratch(), "/out"),
            llb.cache_mount("/root/.cache", "pip", sharing="locked"),
            llb.tmpfs("/tmp", size=1 << 20),
            llb.secret("/run/secrets/t", "token", optional=True),
            llb.ssh(),
        ],
    )
    op = _op(run, ExecOp)
    assert op.mounts == (
        Mount(dest="/", input=0, output=0),
        Mount(dest="/w/src", input=1, selector="app", readonly=True),
        Mount(dest="/out", input=None, output=1),
        Mount(
            dest="/root/.cache",
            type=MountType.CACHE,
            cache=CacheOptions(id="pip", sharing=CacheSharing.LOCKED),
        ),
        Mount(dest="/tmp", type=MountType.TMPFS, tmpfs=TmpfsOptions(size=1 << 20)),
        Mount(dest="/run/secrets/t", type=MountType.SECRET, secret=SecretOptions(id="token", optional=True)),
        Mount(dest="/run/buildkit/ssh_agent.0", type=MountType.SSH, ssh=SSHOptions()),
    )
    out = run.get_mount("/out")
    assert out.output == Edge(digest=run.output.digest if run.output else "", index=1)
    assert run.get_mount("src") is src  # relative to the run's cwd; read-only: unchanged
    assert run.root().output == Edge(digest=out.output.digest if out.output else "", index=0)
    with pytest.raises(ValueError, match=r"cache mount at '/root/\.cache' has no result"):
        run.get_mount("/root/.cache")
    with pytest.raises(ValueError, match="no mount at '/nope'"):
        run.get_mount("/nope")
    # The /out result marshals to a definition whose output is output 1 of the exec.
    definition = out.marshal()
    assert definition.output is not None and definition.output.index == 1


def test_readonly_root_is_not_a_result() -> None:
    base = llb.image("busybox")
    run = base.run("test -f /x", readonly_root=True, mounts=[llb.bind(llb.scratch(), "/report")])
    assert run.root() is base
    op = _op(run.get_mount("/report"), ExecOp)
    assert op.mounts[0] == Mount(dest="/", input=0, readonly=True)
    assert op.mounts[1].output == 0


def test_run_errors() -> None:
    base = llb.image("busybox")
    with pytest.raises(DefinitionError, match="at least one argument"):
        base.run([])
    with pytest.raises(DefinitionError, match="unknown network 'bridge'"):
        base.run("true", network="bridge")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="unknown sharing 'global'"):
        llb.cache_mount("/c", "c", sharing="global")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="needs an id"):
        llb.cache_mount("/c", "")
    with pytest.raises(DefinitionError, match="invalid environment variable name"):
        base.with_env("A=B", "x")
    with pytest.raises(DefinitionError, match="NUL"):
        base.with_cwd("/a\0")
    bad = base.run("true", mounts=[llb.secret("/s", "")], name="with secret")
    with pytest.raises(DefinitionError, match="id is empty") as info:
        bad.marshal()
    assert info.value.name == "with secret"
    assert bad.output is not None and info.value.vertex == bad.output.digest


# -- file -------------------------------------------------------------------------------------------


def test_file_chain_indexes() -> None:
    base = llb.image("busybox").with_cwd("/app")
    src = llb.local("ctx").with_cwd("/sub")
    state = base.file(
        llb.mkdir("out", 0o700, make_parents=True, owner="1000:staff")
        .copy(src, "a.txt", "out/", mode=0o600, include=["*.txt"], create_dest_path=True)
        .mkfile("out/v", "1\n", owner=0)
        .symlink("v", "out/version")
        .rm("/app/out/../tmp", allow_not_found=True)
        .copy(llb.scratch(), "x", "/x", allow_empty_wildcard=True)
    )
    vertex = _output_vertex(state.marshal())
    assert isinstance(vertex.op, FileOp)
    assert len(vertex.inputs) == 2  # base, src
    actions = vertex.op.actions
    assert [(a.input, a.secondary_input, a.output) for a in actions] == [
        (0, None, None),
        (2, 1, None),
        (3, None, None),
        (4, None, None),
        (5, None, None),
        (6, None, 0),
    ]
    mkdir, copy, mkfile, symlink, rm, copy2 = (a.action for a in actions)
    assert mkdir == MkdirAction(
        path="/app/out", mode=0o700, make_parents=True, owner=Owner(user=1000, group="staff")
    )
    assert isinstance(copy, CopyAction)
    assert (copy.src, copy.dest, copy.mode, copy.include_patterns) == (
        "/sub/a.txt",
        "/app/out/",
        0o600,
        ("*.txt",),
    )
    assert mkfile == MkfileAction(path="/app/out/v", data=b"1\n", owner=Owner(user=0, group=0))
    assert symlink == SymlinkAction(oldpath="v", newpath="/app/out/version")
    assert getattr(rm, "path", None) == "/app/tmp"
    assert isinstance(copy2, CopyAction) and copy2.src == "/x"


def test_file_on_scratch_and_dotdot_clamped() -> None:
    state = llb.scratch().file(llb.mkfile("/../../etc/passwd", b"x"))
    vertex = _output_vertex(state.marshal())
    assert vertex.inputs == ()
    assert isinstance(vertex.op, FileOp)
    action = vertex.op.actions[0]
    assert action.input is None
    assert getattr(action.action, "path", None) == "/etc/passwd"


def test_file_timestamps_and_owner_forms() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    state = llb.scratch().file(
        llb.mkdir("/a", timestamp=when, owner=Owner(user="app")).mkdir("/b", owner="www", timestamp=12)
    )
    a, b = (x.action for x in _op(state, FileOp).actions)
    assert isinstance(a, MkdirAction) and isinstance(b, MkdirAction)
    assert a.timestamp == 1704164645_678901_000
    assert a.owner == Owner(user="app")
    assert (b.owner, b.timestamp) == (Owner(user="www"), 12)
    with pytest.raises(DefinitionError, match="no time zone"):
        llb.mkdir("/a", timestamp=datetime(2024, 1, 1))


def test_file_errors_name_the_vertex() -> None:
    with pytest.raises(DefinitionError, match="at least one action"):
        llb.scratch().file(llb.FileActions())
    state = llb.scratch().file(llb.mkdir("/a", mode=0o17777), name="bad mkdir")
    with pytest.raises(DefinitionError, match="mode 8191 is not permission bits") as info:
        state.marshal()
    assert info.value.name == "bad mkdir"


# -- merge and diff ---------------------------------------------------------------------------------


def test_merge() -> None:
    a, b = llb.image("busybox"), llb.local("ctx")
    assert llb.merge([]).is_scratch
    assert llb.merge([llb.scratch(), a, llb.scratch()]) is a
    merged = llb.merge([a, llb.scratch(), b, a], name="all")
    vertex = _output_vertex(merged.marshal())
    assert isinstance(vertex.op, MergeOp)
    assert vertex.op.inputs == (0, 1, 0)
    assert len(vertex.inputs) == 2


def test_diff() -> None:
    a = llb.image("busybox")
    b = a.run("touch /x").root()
    assert llb.diff(llb.scratch(), b) is b
    op = _op(llb.diff(a, b), DiffOp)
    assert (op.lower, op.upper) == (0, 1)
    op2 = _op(llb.diff(a, llb.scratch()), DiffOp)
    assert (op2.lower, op2.upper) == (0, None)


# -- dedup, metadata, marshal -----------------------------------------------------------------------


def test_identical_steps_become_one_vertex() -> None:
    left = llb.image("busybox").run("make").root()
    right = llb.image("docker.io/library/busybox:latest").run("make").root()
    assert left.output == right.output
    definition = llb.merge([left, right, llb.image("busybox").run("make test").root()]).marshal()
    kinds = sorted(type(v.op).__name__ for v in definition.vertices.values())
    assert kinds == ["ExecOp", "ExecOp", "MergeOp", "SourceOp"]


def test_diamond_graph_marshals_each_vertex_once_in_topological_order() -> None:
    base = llb.image("busybox")
    left = base.run("a").root()
    right = base.run("b").root()
    definition = llb.merge([left, right]).marshal()
    order = definition.topological_order()
    assert len(order) == len(definition.vertices) == 4
    position = {v.digest: i for i, v in enumerate(order)}
    assert all(position[e.digest] < position[v.digest] for v in order for e in v.inputs)


def test_metadata_is_recorded_but_not_hashed() -> None:
    constraints = WorkerConstraints(worker="runc-overlay", labels={"arch": "amd64"})
    named = llb.image("busybox").run("make", name="compile", ignore_cache=True, constraints=constraints)
    plain = llb.image("busybox").run("make")
    assert named.output == plain.output
    definition = named.marshal()
    assert definition.output is not None
    md = definition.metadata[definition.output.digest]
    assert (md.name, md.ignore_cache, md.constraints) == ("compile", True, constraints)
    assert plain.output is not None and plain.output.digest not in plain.marshal().metadata


def test_duplicate_vertices_keep_the_first_metadata_and_any_ignore_cache() -> None:
    first = llb.image("busybox", name="first")
    second = llb.image("busybox", name="second", ignore_cache=True)
    definition = llb.merge([first, second, first]).marshal()
    assert first.output is not None
    md = definition.metadata[first.output.digest]
    assert (md.name, md.ignore_cache) == ("first", True)


def test_marshal_output_serializes_to_the_documented_json() -> None:
    state = llb.image("busybox").run(["echo", "hi"], name="say hi")
    doc = json.loads(state.marshal().to_json())
    assert doc["version"] == 1
    source, run = doc["vertices"]
    assert source["op"] == {"source": {"identifier": "docker-image://docker.io/library/busybox:latest"}}
    assert run["inputs"] == [{"vertex": source["id"], "index": 0}]
    assert run["op"]["exec"]["meta"]["args"] == ["echo", "hi"]
    assert run["metadata"] == {"description": {"llb.customname": "say hi"}}
    assert doc["output"] == {"vertex": run["id"], "index": 0}


def test_the_module_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = llb.__doc__ or ""
    code = doc.split("::\n", 1)[1].split("\nRelative paths", 1)[0]
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(code), namespace)
    assert isinstance(namespace["definition"], Definition)
    assert '"llb.customname": "install deps"' in capsys.readouterr().out
