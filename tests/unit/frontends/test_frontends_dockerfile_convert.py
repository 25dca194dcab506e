"""Lowering Dockerfiles to definitions: the ops, the graphs, args, names and the image config."""

from __future__ import annotations

import json

import pytest

from buildsvc.frontends.dockerfile import DockerfileError
from buildsvc.solver import llb
from buildsvc.solver.ops import (
    CopyAction,
    ExecOp,
    FileOp,
    MkdirAction,
    MkfileAction,
    MountType,
    NetMode,
    Owner,
    SourceOp,
)
from tests.unit.frontends.fakes import (
    FakeConfig,
    FakeResolver,
    build,
    by_name,
    copies,
    digest_of,
    env_of,
    exec_op,
    names,
    output_vertex,
    sources,
)

BUSYBOX = "docker.io/library/busybox:latest"
PINNED = f"{BUSYBOX}@{digest_of(BUSYBOX)}"


def test_single_stage_pins_the_base_and_applies_its_config() -> None:
    resolver = FakeResolver(
        {
            BUSYBOX: FakeConfig(
                env=("PATH=/custom", "HOME=/home/app"),
                working_dir="/home/app",
                user="app",
                entrypoint=("/entry",),
                cmd=("serve",),
                labels={"base": "yes"},
            )
        }
    )
    result = build(
        """
        FROM busybox
        RUN make all
        """,
        resolver,
    )
    d = result.definition
    assert [s.identifier for s in sources(d)] == [f"docker-image://{PINNED}"]
    run = exec_op(d, "[stage-0 2/2] RUN make all")
    assert run.meta.args == ("/bin/sh", "-c", "make all")
    assert env_of(run) == {"PATH": "/custom", "HOME": "/home/app"}
    assert run.meta.cwd == "/home/app"
    assert run.meta.user == "app"
    assert by_name(d, "[stage-0 1/2] FROM ").op == SourceOp(identifier=f"docker-image://{PINNED}")
    cfg = result.image_config
    assert cfg["os"] == "linux"
    assert cfg["config"] == {
        "Env": ["PATH=/custom", "HOME=/home/app"],
        "WorkingDir": "/home/app",
        "User": "app",
        "Entrypoint": ["/entry"],
        "Cmd": ["serve"],
        "Labels": {"base": "yes"},
    }
    assert resolver.calls[0][0] == BUSYBOX


def test_exec_form_and_shell_instruction() -> None:
    d = build(
        """
        FROM busybox
        RUN ["echo", "a b"]
        SHELL ["/bin/bash", "-eo", "pipefail", "-c"]
        RUN echo x | cat
        """
    ).definition
    assert exec_op(d, "[stage-0 2/3] RUN [").meta.args == ("echo", "a b")
    assert exec_op(d, "[stage-0 3/3]").meta.args == ("/bin/bash", "-eo", "pipefail", "-c", "echo x | cat")


def test_scratch_gets_default_path_and_no_image_source() -> None:
    result = build(
        """
        FROM scratch
        COPY a /a
        """
    )
    assert [s.scheme for s in sources(result.definition)] == ["local"]
    assert result.image_config["config"]["Env"] == [f"PATH={llb.DEFAULT_PATH}"]


def test_env_expansion_uses_the_environment_before_the_instruction() -> None:
    result = build(
        """
        FROM busybox
        ENV A=1
        ENV A=2 B=$A C="x ${A}" D='$A'
        ENV E ${UNSET:-legacy form}
        RUN env
        """
    )
    env = env_of(exec_op(result.definition, "[stage-0 2/2] RUN env"))
    assert (env["A"], env["B"], env["C"], env["D"], env["E"]) == ("2", "1", "x 1", "$A", "legacy form")
    assert result.image_config["config"]["Env"][-4:] == ["A=2", "B=1", "C=x 1", "D=$A", "E=legacy form"][-4:]


def test_workdir_makes_a_directory_and_relative_paths_follow_it() -> None:
    d = build(
        """
        FROM busybox
        USER app
        WORKDIR /srv
        WORKDIR data/../sub
        RUN pwd
        COPY f rel/
        """
    ).definition
    mkdir = by_name(d, "[stage-0 3/5] WORKDIR data/../sub").op
    assert isinstance(mkdir, FileOp)
    action = mkdir.actions[0].action
    assert isinstance(action, MkdirAction)
    assert (action.path, action.make_parents, action.owner) == ("/srv/sub", True, Owner(user="app"))
    assert exec_op(d, "[stage-0 4/5] RUN pwd").meta.cwd == "/srv/sub"
    assert copies(d, "[stage-0 5/5] COPY")[0].dest == "/srv/sub/rel/"


def test_workdir_root_makes_no_step() -> None:
    d = build(
        """
        FROM busybox
        WORKDIR /
        RUN true
        """
    ).definition
    assert names(d) == [f"[stage-0 1/3] FROM {PINNED}", "[stage-0 2/3] RUN true"]


def test_copy_from_context_is_keyed_by_include_patterns() -> None:
    d = build(
        """
        FROM busybox
        COPY --chown=10:20 --chmod=0640 src/*.py README.md /app/
        ADD --link conf /etc/conf
        """
    ).definition
    (local,) = [s for s in sources(d) if s.scheme == "local"]
    assert local.identifier == "local://context"
    assert json.loads(local.attrs["local.includepattern"]) == ["README.md", "conf", "src/*.py"]
    assert (
        d.name_of(next(k for k, v in d.vertices.items() if v.op == local)) == "[internal] load build context"
    )
    first, second = copies(d, "[stage-0 2/3] COPY")
    assert (first.src, first.dest, first.owner, first.mode) == (
        "/src/*.py",
        "/app/",
        Owner(user=10, group=20),
        0o640,
    )
    assert (
        first.allow_wildcard
        and first.allow_empty_wildcard
        and first.follow_symlinks
        and first.create_dest_path
    )
    assert first.dir_contents_only and not first.attempt_unpack
    assert second.src == "/README.md"
    (add,) = copies(d, "[stage-0 3/3] ADD --link conf /etc/conf")
    assert (add.src, add.dest, add.attempt_unpack) == ("/conf", "/etc/conf", True)


def test_copy_of_whole_context_has_no_include_filter() -> None:
    d = build(
        """
        FROM busybox
        COPY . /src
        COPY a /a
        """
    ).definition
    (local,) = [s for s in sources(d) if s.scheme == "local"]
    assert "local.includepattern" not in local.attrs


def test_copy_outside_the_context_is_refused() -> None:
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:2: COPY source '\.\./secret' is outside the build context"
    ):
        build(
            """
            FROM busybox
            COPY ../secret /x
            """
        )


def test_multi_stage_copy_from_stage_index_and_image_and_unused_stage() -> None:
    resolver = FakeResolver(
        {
            BUSYBOX: FakeConfig(),
            "docker.io/library/alpine:3": FakeConfig(),
            "docker.io/library/unused:1": FakeConfig(),
        }
    )
    result = build(
        """
        FROM busybox AS build
        WORKDIR /src
        RUN make > out
        FROM unused:1 AS never
        RUN exit 1
        FROM scratch
        COPY --from=build /src/out /bin/app
        COPY --from=0 out2 /bin/
        COPY --from=alpine:3 /etc/os-release /
        CMD ["/bin/app"]
        """,
        resolver,
    )
    d = result.definition
    assert [c[0] for c in resolver.calls] == [BUSYBOX, "docker.io/library/alpine:3"]
    assert not any("exit 1" in n for n in names(d))
    build_run = by_name(d, "[build 3/3] RUN make > out")
    c1 = copies(d, "[stage-2 1/3] COPY --from=build")
    assert c1[0].src == "/src/out"  # --from sources are relative to the stage's root, not its workdir
    c2 = copies(d, "[stage-2 2/3] COPY --from=0 out2 /bin/")
    assert c2[0].src == "/out2"
    assert by_name(d, "FROM docker.io/library/alpine:3@").op == SourceOp(
        identifier=f"docker-image://docker.io/library/alpine:3@{digest_of('docker.io/library/alpine:3')}"
    )
    copy_vertex = by_name(d, "[stage-2 1/3]")
    assert copy_vertex.inputs[0].digest == build_run.digest
    assert result.image_config["config"]["Cmd"] == ["/bin/app"]
    assert result.target == "stage-2"


def test_target_picks_a_stage_and_skips_later_ones() -> None:
    resolver = FakeResolver()
    result = build(
        """
        FROM busybox AS base
        ENV STAGE=base
        FROM base AS test
        RUN echo $STAGE
        FROM nothing-resolvable
        """,
        resolver,
        target="test",
    )
    run = exec_op(result.definition, "[test 1/1] RUN echo base")
    assert env_of(run)["STAGE"] == "base"
    assert output_vertex(result.definition).op == run
    assert [c[0] for c in resolver.calls] == [BUSYBOX]
    assert "STAGE=base" in result.image_config["config"]["Env"]


def test_arg_scoping_meta_args_build_args_and_defaults() -> None:
    resolver = FakeResolver({BUSYBOX: FakeConfig(), "docker.io/library/busybox:1.36": FakeConfig()})
    result = build(
        """
        ARG TAG=latest
        ARG GLOBAL=g
        ARG NOVALUE
        FROM busybox:${TAG}
        RUN echo "global=$GLOBAL tag=$TAG"
        ARG GLOBAL
        ARG LOCAL=l-$GLOBAL
        ARG FROMCLI=default
        RUN echo $GLOBAL $LOCAL $FROMCLI
        """,
        resolver,
        **{"build-arg:TAG": "1.36", "build-arg:FROMCLI": "cli", "build-arg:UNDECLARED": "x"},
    )
    d = result.definition
    assert resolver.calls[0][0] == "docker.io/library/busybox:1.36"
    before = exec_op(d, '[stage-0 2/3] RUN echo "global=$GLOBAL tag=$TAG"')
    assert "GLOBAL" not in env_of(before) and "TAG" not in env_of(before)
    after = exec_op(d, "[stage-0 3/3] RUN echo g l-g cli")
    assert {k: env_of(after)[k] for k in ("GLOBAL", "LOCAL", "FROMCLI")} == {
        "GLOBAL": "g",
        "LOCAL": "l-g",
        "FROMCLI": "cli",
    }
    assert "UNDECLARED" not in env_of(after)
    # ARGs never reach the image config.
    assert not any(
        e.startswith(("GLOBAL=", "LOCAL=", "FROMCLI=")) for e in result.image_config["config"]["Env"]
    )


def test_arg_default_args_are_predefined() -> None:
    d = build(
        """
        FROM busybox
        ARG TARGETARCH
        ARG TARGETOS
        RUN echo $TARGETOS
        """
    ).definition
    run = exec_op(d, "[stage-0 2/2] RUN echo linux")
    assert env_of(run)["TARGETOS"] == "linux" and env_of(run)["TARGETARCH"]


def test_run_mounts_cache_bind_tmpfs_and_network() -> None:
    d = build(
        """
        FROM busybox AS tools
        FROM busybox
        WORKDIR /w
        RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked \\
            --mount=type=bind,source=requirements.txt,target=req.txt \\
            --mount=type=bind,from=tools,source=/bin,target=/tools,rw \\
            --mount=type=tmpfs,target=/tmp,size=64m \\
            --mount=type=cache,target=/var/cache/apt,uid=1000,mode=0700 \\
            --network=none \\
            pip install -r req.txt
        RUN --network=host true
        """
    ).definition
    run = exec_op(d, "[stage-1 3/4] RUN --mount=type=cache")
    mounts = {m.dest: m for m in run.mounts}
    assert run.network is NetMode.NONE
    pip = mounts["/root/.cache"]
    assert pip.type is MountType.CACHE and pip.cache is not None
    assert (pip.cache.id, pip.cache.sharing.value, pip.input) == ("pip", "locked", None)
    req = mounts["/w/req.txt"]
    assert (req.type, req.readonly, req.selector) == (MountType.BIND, True, "/requirements.txt")
    tools = mounts["/tools"]
    assert (tools.readonly, tools.selector, tools.output) == (False, "/bin", 1)
    tmp = mounts["/tmp"]
    assert tmp.type is MountType.TMPFS and tmp.tmpfs is not None and tmp.tmpfs.size == 64 << 20
    apt = mounts["/var/cache/apt"]
    assert apt.cache is not None and apt.cache.id == "/var/cache/apt" and apt.selector == "/cache"
    perms = by_name(d, "[internal] setting cache mount permissions").op
    assert isinstance(perms, FileOp)
    mkdir = perms.actions[0].action
    assert isinstance(mkdir, MkdirAction) and (mkdir.mode, mkdir.owner) == (0o700, Owner(user=1000, group=0))
    (local,) = [s for s in sources(d) if s.scheme == "local"]
    assert json.loads(local.attrs["local.includepattern"]) == ["requirements.txt"]
    assert exec_op(d, "[stage-1 4/4] RUN --network=host true").network is NetMode.HOST


def test_heredoc_run_and_copy() -> None:
    d = build(
        """
        FROM busybox
        ENV WHO=world
        RUN <<EOF
        echo one
        echo two
        EOF
        COPY <<EOT /greeting
        hello $WHO
        EOT
        """
    ).definition
    run = exec_op(d, "[stage-0 2/3] RUN <<EOF (echo one...)")
    assert run.meta.args == ("/bin/sh", "-c", "echo one\necho two\n")
    inline = by_name(d, "[internal] preparing inline document").op
    assert isinstance(inline, FileOp)
    mkfile = inline.actions[0].action
    assert isinstance(mkfile, MkfileAction) and mkfile.data == b"hello world\n"
    assert copies(d, "[stage-0 3/3] COPY <<EOT /greeting")[0].src == "/EOT"


def test_a_heredoc_fed_to_a_command_is_handed_to_the_shell_whole() -> None:
    # "<<EOT sh" is not a heredoc-only RUN (found by the corpus, 13-heredocs): the shell gets the text.
    d = build(
        """
        FROM busybox
        RUN <<EOT sh
        echo piped
        EOT
        """
    ).definition
    run = exec_op(d, "[stage-0 2/2] RUN <<EOT sh (echo piped)")
    assert run.meta.args == ("/bin/sh", "-c", "<<EOT sh\necho piped\nEOT")


def test_add_url_makes_an_https_source() -> None:
    checksum = "sha256:" + "b" * 64
    d = build(
        f"""
        FROM busybox
        ADD --checksum={checksum} https://example.com/files/tool.tar.gz /opt/
        """
    ).definition
    (http,) = [s for s in sources(d) if s.scheme == "https"]
    assert http.identifier == "https://example.com/files/tool.tar.gz"
    assert (http.attrs["http.filename"], http.attrs["http.checksum"]) == ("tool.tar.gz", checksum)
    # The download and the copy share the step's name, as in BuildKit.
    (file_op,) = [v.op for v in d.vertices.values() if isinstance(v.op, FileOp)]
    (copy,) = [a.action for a in file_op.actions]
    assert isinstance(copy, CopyAction)
    assert (copy.src, copy.dest, copy.attempt_unpack) == ("/tool.tar.gz", "/opt/", False)


def test_image_config_metadata_instructions() -> None:
    result = build(
        """
        FROM busybox
        LABEL org.opencontainers.image.title="my app" "with space"=yes
        EXPOSE 80 443/tcp 53/udp 8000-8001
        VOLUME ["/data", "/logs"]
        VOLUME /cache
        STOPSIGNAL SIGINT
        HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD curl -f http://localhost/
        ENTRYPOINT ["/entry"]
        USER 1000:1000
        """
    )
    cfg = result.image_config["config"]
    assert cfg["Labels"] == {"org.opencontainers.image.title": "my app", "with space": "yes"}
    assert cfg["ExposedPorts"] == {"443/tcp": {}, "53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/"],
        "Interval": 30 * 10**9,
        "Timeout": 90 * 10**9,
        "Retries": 3,
    }
    assert cfg["Entrypoint"] == ["/entry"]
    assert "Cmd" not in cfg  # a new ENTRYPOINT drops the base image's CMD
    assert cfg["User"] == "1000:1000"


def test_cmd_shell_form_and_healthcheck_none() -> None:
    cfg = build(
        """
        FROM busybox
        CMD echo hi
        ENTRYPOINT ["/e"]
        HEALTHCHECK NONE
        """
    ).image_config["config"]
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]  # set in this stage, so ENTRYPOINT keeps it
    assert cfg["Healthcheck"] == {"Test": ["NONE"]}


def test_step_numbers_are_padded_like_buildkit() -> None:
    lines = "\n".join(f"RUN echo {i}" for i in range(10))
    d = build(f"FROM busybox\n{lines}\n").definition
    assert "[stage-0  2/11] RUN echo 0" in names(d)
    assert "[stage-0 11/11] RUN echo 9" in names(d)


def test_every_vertex_points_at_its_dockerfile_line() -> None:
    result = build(
        """
        FROM busybox AS a
        RUN one
        FROM busybox
        COPY --from=a /x /x
        COPY y /y
        """
    )
    d = result.definition
    assert d.source_files[0].filename == "Dockerfile"
    assert d.source_files[0].data.startswith(b"FROM busybox AS a")
    assert set(d.locations) == set(d.vertices)

    def lines(prefix: str) -> list[tuple[int, int]]:
        digest = by_name(d, prefix).digest
        return [(r.start_line, r.end_line) for loc in d.locations[digest] for r in loc.ranges]

    assert lines("[a 2/2] RUN one") == [(2, 2)]
    assert lines("[stage-1 2/3] COPY --from=a") == [(4, 4)]
    assert lines("[internal] load build context") == [(5, 5)]
    # The same FROM in two stages is one vertex, pointing at both lines.
    assert sorted(lines("[stage-1 1/3] FROM")) == [(1, 1), (3, 3)]


def test_multiline_run_keeps_its_line_range() -> None:
    d = build("FROM busybox\nRUN echo a && \\\n    echo b\n").definition
    digest = by_name(d, "[stage-0 2/2] RUN echo a").digest
    (loc,) = d.locations[digest]
    assert [(r.start_line, r.end_line) for r in loc.ranges] == [(2, 3)]


def test_identical_builds_give_identical_definitions() -> None:
    text = "FROM busybox\nCOPY a /a\nRUN x\n"
    assert build(text).definition.to_json() == build(text).definition.to_json()


def test_from_stage_with_workdir_and_env_inherits_them() -> None:
    d = build(
        """
        FROM busybox AS base
        WORKDIR /app
        ENV MODE=prod
        FROM base
        RUN ./start
        """
    ).definition
    run = exec_op(d, "[stage-1 1/1] RUN ./start")
    assert run.meta.cwd == "/app" and env_of(run)["MODE"] == "prod"
    assert isinstance(by_name(d, "[base 2/2] WORKDIR /app").op, FileOp)


def test_exec_op_types() -> None:
    d = build("FROM busybox\nRUN true\n").definition
    assert isinstance(output_vertex(d).op, ExecOp)
