"""A real multi-stage Dockerfile built by the engine: runc, overlayfs, the test registry, a context.

The base image comes from Debian's ``docker-registry`` on a loopback port, resolved by the
registry-backed resolver the daemon uses; the result is exported and its files checked.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import open_state
from buildsvc.events.catalog import VertexCached
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.frontends.dockerfile import build_definition
from buildsvc.frontends.dockerfile.resolver import RegistryImageResolver
from buildsvc.solver.engine import SolveRequest
from buildsvc.solver.errors import SolveError
from buildsvc.solver.ops import SourceOp
from buildsvc.sources import ContentStore, RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry
from tests.support.releasable import check_engine_releasable

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT/busybox:latest`` with ``GREETING=hi`` and working dir ``/`` in its config."""
    work = tmp_path_factory.mktemp("frontend-images")
    with (
        TestRegistry(work / "registry") as registry,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        ref = f"{registry.host}/busybox:latest"
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(ref), build_image(layers), tag="latest")
        yield ref


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    state = open_state(tmp_path / "root", db_url)
    eng = open_engine(state, insecure_registries=True)
    try:
        yield eng
        check_engine_releasable(eng)  # what the test's builds made can all be let go
    finally:
        eng.close()
        state.close()
        leaked = mounts_under(str(tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"


def _context(root: Path) -> Path:
    ctx = root / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (ctx / "src" / "util.c").write_text("/* util */\n")
    (ctx / "src" / "notes.txt").write_text("not copied\n")
    (ctx / "VERSION").write_text("1.2.3\n")
    (ctx / "unused.bin").write_text("never keyed\n")
    return ctx


DOCKERFILE = textwrap.dedent(
    """\
    ARG BASE
    FROM ${BASE} AS build
    ARG FLAVOUR=plain
    ENV OUT=/out
    WORKDIR /work
    COPY src/*.c ./src/
    COPY VERSION .
    RUN --mount=type=cache,target=/cache,id=frontend-test \\
        mkdir -p $OUT && ls src > $OUT/sources && \\
        echo "$GREETING $FLAVOUR $(cat VERSION)" > $OUT/greeting && \\
        date +%s%N >> /cache/runs && wc -l < /cache/runs > $OUT/cache-runs
    RUN ["/bin/sh", "-c", "id -u > /out/uid; pwd > /out/pwd"]

    FROM ${BASE} AS unused
    RUN exit 1

    FROM scratch
    COPY --from=build --chmod=0600 /out/ /result/
    COPY --from=build /work/src/main.c /result/main.c
    COPY <<EOF /result/inline.txt
    inline body
    EOF
    CMD ["/result/greeting"]
    """
)


def test_multi_stage_dockerfile_builds_and_exports(engine: Engine, busybox: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    content = ContentStore(str(tmp_path / "content"))
    resolver = RegistryImageResolver(engine.registry, content)
    result = build_definition(
        DOCKERFILE, options={"build-arg:BASE": busybox, "build-arg:FLAVOUR": "fancy"}, resolver=resolver
    )
    image_refs = [
        v.op.identifier
        for v in result.definition.vertices.values()
        if isinstance(v.op, SourceOp) and v.op.scheme == "docker-image"
    ]
    assert len(image_refs) == 1 and "@sha256:" in image_refs[0]  # pinned; the unused stage is not there
    assert result.image_config["config"]["Cmd"] == ["/result/greeting"]

    solved = engine.solver.solve(SolveRequest(definition=result.definition, local_dirs={"context": ctx}))
    out = tmp_path / "out"
    engine.export_local(solved.output, out, build_ref=solved.build_ref)

    assert sorted(p.name for p in (out / "result").iterdir()) == [
        "cache-runs",
        "greeting",
        "inline.txt",
        "main.c",
        "pwd",
        "sources",
        "uid",
    ]
    assert (out / "result" / "greeting").read_text() == "hi fancy 1.2.3\n"  # image env + ARG + context file
    assert (out / "result" / "sources").read_text() == "main.c\nutil.c\n"  # the wildcard copied only *.c
    assert (out / "result" / "pwd").read_text() == "/work\n"
    assert (out / "result" / "uid").read_text() == "0\n"
    assert (out / "result" / "inline.txt").read_text() == "inline body\n"
    assert (out / "result" / "greeting").stat().st_mode & 0o777 == 0o600
    assert (out / "result" / "main.c").read_text().startswith("int main")

    # Editing a context file no COPY reads changes nothing: the build is fully cached.
    (ctx / "unused.bin").write_text("changed\n")
    (ctx / "src" / "notes.txt").write_text("changed too\n")
    again = engine.solver.solve(SolveRequest(definition=result.definition, local_dirs={"context": ctx}))
    out2 = tmp_path / "out2"
    engine.export_local(again.output, out2, build_ref=again.build_ref)
    assert (out2 / "result" / "cache-runs").read_text() == "1\n"  # the RUN did not run again
    # Not even the context source ran: its include patterns leave the edited files out of its key.
    cached = {
        e.name
        for e in (r.decode() for r in engine.state.store.read_stream(f"build-{again.build_ref}"))
        if isinstance(e, VertexCached)
    }
    assert "[internal] load build context" in cached

    # Editing a copied file runs the RUN again, and the cache mount kept the first run's record.
    (ctx / "VERSION").write_text("2.0.0\n")
    third = engine.solver.solve(SolveRequest(definition=result.definition, local_dirs={"context": ctx}))
    out3 = tmp_path / "out3"
    engine.export_local(third.output, out3, build_ref=third.build_ref)
    assert (out3 / "result" / "greeting").read_text() == "hi fancy 2.0.0\n"
    assert (out3 / "result" / "cache-runs").read_text() == "2\n"


def test_a_failing_step_is_named_like_buildkit_and_points_at_its_line(
    engine: Engine, busybox: str, tmp_path: Path
) -> None:
    text = f"FROM {busybox}\nRUN true\nRUN echo boom >&2; exit 3\n"
    resolver = RegistryImageResolver(engine.registry, ContentStore(str(tmp_path / "content")))
    result = build_definition(text, options={}, resolver=resolver)
    with pytest.raises(SolveError) as info:
        engine.solver.solve(SolveRequest(definition=result.definition, local_dirs={}))
    err = info.value
    assert err.exit_code == 3
    assert err.name == "[stage-0 3/3] RUN echo boom >&2; exit 3"
    assert err.vertex is not None
    (loc,) = result.definition.locations[err.vertex]
    assert [(r.start_line, r.end_line) for r in loc.ranges] == [(3, 3)]
    assert err.source_location == "Dockerfile:3"
    assert " 3 | >>> RUN echo boom >&2; exit 3" in err.source_excerpt.splitlines()
