"""Client-side frontends with no daemon: the gateway of the embedded engine, in this process.

``buildsvc build --client-side`` with no daemon answering, through the console script; and the same
frontend code as the daemon tests, run against :class:`LocalGateway` (including the Dockerfile
frontend resolving its base image through the gateway). Both leave no leak behind.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.api.gateway_client import FrontendResult, Gateway, Ref, dockerfile_frontend
from buildsvc.api.gateway_local import LocalGateway, run_local_build
from buildsvc.contexts import ContextStore, receive_contexts
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.state import State, open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver import llb
from buildsvc.solver.errors import SolveError
from buildsvc.sources import RegistryClient, RegistryOptions, parse_reference
from tests.integration.api.conftest import BUILDSVC, cli_env
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT/busybox:latest`` on a test registry."""
    work = tmp_path_factory.mktemp("gateway-images")
    with (
        TestRegistry(work / "registry") as registry,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        ref = f"{registry.host}/busybox:latest"
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(ref), build_image(layers), tag="latest")
        yield ref


@pytest.fixture
def state(db_url: str, tmp_path: Path) -> Iterator[State]:
    opened = open_state(tmp_path / "root", db_url)
    yield opened
    opened.close()


@pytest.fixture
def engine(state: State, tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(state, insecure_registries=True)
    try:
        yield eng
    finally:
        eng.close()
        leaked = mounts_under(str(tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"
    report = scan_leaks(state)
    assert report.empty, f"leaks: {report}"


def _events(state: State, build_ref: str) -> list[Event]:
    return [s.decode() for s in state.store.read_stream(f"build-{build_ref}")]


def test_build_client_side_without_a_daemon(db_url: str, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("from the context\n")
    (context / "secret.txt").write_text("ignored\n")
    (context / ".dockerignore").write_text("secret.txt\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY *.txt /in/\n")
    out = tmp_path / "out"
    metadata = tmp_path / "metadata.json"
    root = tmp_path / "root"

    def buildsvc(*args: str) -> subprocess.CompletedProcess[str]:
        # No --addr and no daemon at the default socket (a fresh root): the embedded engine.
        return subprocess.run(
            [BUILDSVC, "--root", str(root), "--db", db_url, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=cli_env(),
            check=False,
        )

    done = buildsvc(
        "build",
        "--client-side",
        str(context),
        "-o",
        f"type=local,dest={out}",
        "--metadata-file",
        str(metadata),
        "--progress",
        "plain",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "in").iterdir()) == ["hello.txt"]  # .dockerignore applied
    ref = json.loads(metadata.read_text())["buildsvc.build.ref"]
    assert "COPY" in done.stderr  # progress showed the solve the frontend asked for
    state = open_state(root, db_url, migrate=False)
    try:
        events = _events(state, ref)
        assert isinstance(events[0], ev.SolveRequested) and events[0].frontend == "gateway.v0"
        received = {e.name: e for e in events if isinstance(e, ev.LocalContextReceived)}
        assert {n: e.source for n, e in received.items()} == {"context": "embedded", "dockerfile": "embedded"}
        (solve,) = [e for e in events if isinstance(e, ev.GatewaySolveRequested)]
        solve_events = _events(state, solve.solve_ref)
        assert isinstance(solve_events[0], ev.SolveRequested)
        assert solve_events[0].local_dirs == {n: e.manifest_digest for n, e in received.items()}
        assert isinstance(events[-1], ev.SolveCompleted)
    finally:
        state.close()
    leaks = buildsvc("leaks", "--format", "json")
    assert leaks.returncode == 0, leaks.stdout + leaks.stderr


def test_the_same_frontend_runs_in_process(
    state: State, engine: Engine, rootfs: Path, tmp_path: Path
) -> None:
    """Frontend code as against a daemon, run against the embedded engine's gateway."""
    ref = "local" + uuid.uuid4().hex[:8]
    contexts = receive_contexts(
        ContextStore.under(state.root), ref, host_dirs={"rootfs": rootfs}, host_source="embedded"
    )
    nonce = uuid.uuid4().hex
    first = (
        llb.local("rootfs").run(["sh", "-c", f": {nonce}; echo hello > /greeting"], name="RUN first").root()
    )
    seen: list[Gateway] = []

    def frontend(gw: Gateway) -> FrontendResult:
        seen.append(gw)
        assert "readfile" in gw.ping().capabilities
        made = gw.solve(first.marshal())
        word = gw.read_file(made, "/greeting", offset=0, length=100).decode().strip()
        assert gw.stat_file(made, "/greeting").size == len("hello\n")
        assert [s.path for s in gw.read_dir(made, "/", include="greet*")] == ["greeting"]
        gw.warn("from the embedded gateway")
        second = first.run(["sh", "-c", f"echo {word} again > /again"], name="RUN second").root()
        return FrontendResult(ref=gw.solve(second.marshal()), metadata={"frontend.note": b"local"})

    out = tmp_path / "out"
    outcome = run_local_build(
        engine, frontend, build_ref=ref, contexts=contexts, outputs=[{"type": "local", "dest": str(out)}]
    )
    assert isinstance(seen[0], LocalGateway)
    assert (out / "again").read_text() == "hello again\n"
    assert outcome.exporter_response["frontend.note"] == "local"
    events = _events(state, ref)
    given = [e for e in events if isinstance(e, ev.RefAcquired) and e.holder_kind == "gateway"]
    released = {e.ref_id for e in events if isinstance(e, ev.RefReleased)}
    assert len(given) == 2 and {g.ref_id for g in given} <= released
    assert [e.message for e in events if isinstance(e, ev.GatewayWarning)] == ["from the embedded gateway"]

    # A failed solve reaches the frontend with its details, and the job fails with every ref let go.
    failing = llb.local("rootfs").run(["sh", "-c", f": {nonce}; exit 5"], name="RUN fail").root()

    def broken(gw: Gateway) -> Ref:
        gw.solve(first.marshal())
        return gw.solve(failing.marshal())

    bad_ref = "localbad" + uuid.uuid4().hex[:8]
    with pytest.raises(SolveError) as raised:
        run_local_build(engine, broken, build_ref=bad_ref, contexts=contexts.handed_to(bad_ref))
    assert raised.value.exit_code == 5 and raised.value.name == "RUN fail"
    bad_events = _events(state, bad_ref)
    assert isinstance(bad_events[-1], ev.SolveFailed)
    held = [e.ref_id for e in bad_events if isinstance(e, ev.RefAcquired) and e.holder_kind == "gateway"]
    assert len(held) == 1 and held[0] in {e.ref_id for e in bad_events if isinstance(e, ev.RefReleased)}


def test_the_dockerfile_frontend_resolves_its_base_through_the_local_gateway(
    state: State, engine: Engine, busybox: str, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "name.txt").write_text("world\n")
    ref = "localdf" + uuid.uuid4().hex[:8]
    contexts = receive_contexts(
        ContextStore.under(state.root),
        ref,
        host_dirs={"context": context, "dockerfile": context},
        host_source="embedded",
    )
    dockerfile = (
        f"FROM {busybox}\nCOPY name.txt /name.txt\n"
        f'RUN : {uuid.uuid4().hex}; echo "hello $(cat /name.txt)" > /hello\n'
    )
    out = tmp_path / "out"
    run_local_build(
        engine,
        dockerfile_frontend(dockerfile, {}),
        build_ref=ref,
        contexts=contexts,
        outputs=[{"type": "local", "dest": str(out)}],
    )
    assert (out / "hello").read_text() == "hello world\n"
    (solve,) = [e for e in _events(state, ref) if isinstance(e, ev.GatewaySolveRequested)]
    requested = _events(state, solve.solve_ref)[0]
    assert isinstance(requested, ev.SolveRequested)
    assert requested.definition_digest == solve.definition_digest
