"""Client-side frontends over LLBBridge against a real daemon, after BuildKit's client/build_test.go.

Every test here is followed by ``check_all_releasable`` (see conftest): whatever the frontend was
given must be released when its job ends, however it ends.
"""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import grpc
import pytest

from buildsvc.api.gateway_client import BUILD_ID_KEY, FrontendResult, Gateway, GrpcGateway, Ref
from buildsvc.api.gen import gateway_pb2 as pb
from buildsvc.api.gen import gateway_pb2_grpc as pb_grpc
from buildsvc.daemon.state import open_state
from buildsvc.errors import Conflict, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.projections import find_leaks
from buildsvc.solver import llb
from buildsvc.solver.errors import SolveError
from tests.integration.api.conftest import Daemon

pytestmark = pytest.mark.root


def _run(script: str, name: str) -> llb.State:
    """A step on the busybox rootfs; a nonce keeps it out of other tests' cache."""
    return llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}; {script}"], name=name).root()


def _leaks_empty(daemon: Daemon) -> bool:
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            return find_leaks(conn).empty
    finally:
        state.close()


def test_empty_solve(daemon: Daemon, rootfs: Path) -> None:
    seen: list[Ref] = []

    def frontend(gw: Gateway) -> None:
        seen.append(gw.solve())  # nothing asked: the empty result, as BuildKit's EmptySolve
        return None

    outcome = daemon.client().build(frontend)
    assert seen == [Ref("", {})]
    events = daemon.events(outcome.build_ref)
    assert isinstance(events[0], ev.SolveRequested) and events[0].frontend == "gateway.v0"
    assert [type(e) for e in events if isinstance(e, ev.GatewayReturned | ev.SolveCompleted)] == [
        ev.GatewayReturned,
        ev.SolveCompleted,
    ]
    assert isinstance(events[-1], ev.SolveCompleted) and events[-1].result_snapshot == ""


def test_failed_solve_reaches_the_client(daemon: Daemon, rootfs: Path) -> None:
    failing = _run("echo broken >&2; exit 3", "RUN fail").marshal()
    seen: list[SolveError] = []

    def frontend(gw: Gateway) -> Ref:
        try:
            return gw.solve(failing)
        except SolveError as e:
            seen.append(e)  # the frontend sees the error with its details, as BuildKit's does
            raise

    ref = "gwfail" + uuid.uuid4().hex[:8]
    with pytest.raises(SolveError) as raised:
        daemon.client().build(frontend, local_dirs={"rootfs": rootfs}, build_ref=ref)
    assert raised.value is seen[0]
    assert failing.output is not None and raised.value.vertex == failing.output.digest
    assert raised.value.name == "RUN fail"
    assert raised.value.exit_code == 3
    assert "broken" in raised.value.log_tail
    events = daemon.events(ref)
    assert any(isinstance(e, ev.GatewaySolveFailed) for e in events)
    assert isinstance(events[-1], ev.SolveFailed)  # the frontend's error ended the job
    assert _leaks_empty(daemon)


def test_no_build_id_is_refused(daemon: Daemon) -> None:
    stub = pb_grpc.LLBBridgeStub(daemon.client().channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Ping(pb.PingRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert BUILD_ID_KEY in str(raised.value.details())


def test_unknown_build_id_is_not_found(daemon: Daemon) -> None:
    gw = GrpcGateway(daemon.client().channel, "no-such-build")
    with pytest.raises(NotFound, match="no such job"):
        gw.ping()


def test_frontend_solves_reads_the_result_and_solves_again(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    first = _run("mkdir /made && echo hello > /made/greeting && ln -s greeting /made/link", "RUN first")

    def frontend(gw: Gateway) -> Ref:
        pong = gw.ping()
        assert "readfile" in pong.capabilities and pong.workers
        ref = gw.solve(first.marshal())
        greeting = gw.read_file(ref, "/made/greeting").decode().strip()
        assert gw.read_file(ref, "made/greeting", offset=1, length=3) == b"ell"
        # A range past the end gives what there is (BuildKit's ReadFile with a range).
        assert gw.read_file(ref, "/made/greeting", offset=4, length=100) == b"o\n"
        assert gw.read_file(ref, "/made/greeting", offset=100, length=5) == b""
        assert gw.read_file(ref, "/made/greeting", offset=2) == b"llo\n"
        assert [s.path for s in gw.read_dir(ref, "/made", include="g*")] == ["greeting"]
        assert [s.path for s in gw.read_dir(ref, "/made")] == ["greeting", "link"]
        assert [s.path for s in gw.read_dir(ref, "/made", include="[kl]i?k")] == ["link"]
        assert gw.read_dir(ref, "/made", include="*.txt") == []
        with pytest.raises(InvalidInput, match=r"\["):
            gw.read_dir(ref, "/made", include="[")
        link = gw.stat_file(ref, "/made/link")
        assert link.linkname == "greeting" and stat.S_ISLNK(link.mode)  # the link, not its target
        target = gw.stat_file(ref, "/made/greeting")
        assert stat.S_ISREG(target.mode) and target.size == len(b"hello\n") and not target.linkname
        with pytest.raises(InvalidInput, match=r"\.\."):
            gw.read_file(ref, "/../etc/passwd")
        with pytest.raises(NotFound):
            gw.read_file(ref, "/made/absent")
        second = first.run(["sh", "-c", f"echo {greeting} world > /made/both"], name="RUN second").root()
        return gw.solve(second.marshal())

    out = tmp_path / "out"
    outcome = daemon.client().build(
        frontend, local_dirs={"rootfs": rootfs}, outputs=[{"type": "local", "dest": str(out)}]
    )
    assert (out / "made" / "both").read_text() == "hello world\n"
    events = daemon.events(outcome.build_ref)
    solves = [e for e in events if isinstance(e, ev.GatewaySolveRequested)]
    assert len(solves) == 2
    # The job's local dir and each of its solves' are named by the same manifest digest.
    received = [e for e in events if isinstance(e, ev.LocalContextReceived)]
    assert [(e.name, e.source) for e in received] == [("rootfs", "host")]  # a path on the daemon host
    digest = received[0].manifest_digest
    assert isinstance(events[0], ev.SolveRequested) and events[0].local_dirs == {"rootfs": digest}
    for solve in solves:
        solve_events = daemon.events(solve.solve_ref)
        assert isinstance(solve_events[0], ev.SolveRequested)
        assert solve_events[0].local_dirs == {"rootfs": digest}
        assert [
            (e.name, e.manifest_digest, e.source, e.files_uploaded)
            for e in solve_events
            if isinstance(e, ev.LocalContextReceived)
        ] == [("rootfs", digest, "job", 0)]
    # The second solve found the first step in the cache: it ran only the new one.
    again = daemon.events(solves[1].solve_ref)
    cached = [e.name for e in again if isinstance(e, ev.VertexCached)]
    assert "RUN first" in cached and "RUN second" not in cached
    given = [e for e in events if isinstance(e, ev.RefAcquired) and e.holder_kind == "gateway"]
    released = {e.ref_id for e in events if isinstance(e, ev.RefReleased)}
    assert len(given) == 2 and {g.ref_id for g in given} <= released
    assert _leaks_empty(daemon)


def test_metadata_returned_through_return(daemon: Daemon, rootfs: Path) -> None:
    def frontend(gw: Gateway) -> FrontendResult:
        ref = gw.solve(_run("echo x > /x", "RUN x").marshal())
        return FrontendResult(ref=ref, metadata={"frontend.answer": b"42", "frontend.raw": b"\xff"})

    outcome = daemon.client().build(frontend, local_dirs={"rootfs": rootfs})
    assert outcome.exporter_response["frontend.answer"] == "42"
    returned = [e for e in daemon.events(outcome.build_ref) if isinstance(e, ev.GatewayReturned)]
    assert returned[0].metadata == {"frontend.answer": "42", "frontend.raw": "base64:/w=="}
    assert returned[0].ref_id.startswith("ref-")


def test_warnings_are_recorded(daemon: Daemon) -> None:
    def frontend(gw: Gateway) -> None:
        gw.warn("deprecated option", detail=["use the new one"], url="https://example.invalid/doc")
        with pytest.raises(InvalidInput, match="message"):
            gw.warn("")

    outcome = daemon.client().build(frontend)
    warnings = [e for e in daemon.events(outcome.build_ref) if isinstance(e, ev.GatewayWarning)]
    assert [(w.message, w.detail, w.url) for w in warnings] == [
        ("deprecated option", ("use the new one",), "https://example.invalid/doc")
    ]


def test_a_second_return_is_refused(daemon: Daemon) -> None:
    def frontend(gw: Gateway) -> None:
        stub = pb_grpc.LLBBridgeStub(daemon.client().channel)  # type: ignore[no-untyped-call]
        metadata = ((BUILD_ID_KEY, gw.build_ref),)
        for request, word in [
            (pb.ReturnRequest(), "neither"),
            (pb.ReturnRequest(result=pb.Result(), error=pb.ReturnError(message="x")), "both"),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                stub.Return(request, metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert word in str(raised.value.details())
        gw.return_(FrontendResult(ref=None))
        with pytest.raises(Conflict, match="returns once"):
            gw.return_(error="too late")

    outcome = daemon.client().build(frontend)
    events = daemon.events(outcome.build_ref)
    assert len([e for e in events if isinstance(e, ev.GatewayReturned)]) == 1
    assert isinstance(events[-1], ev.SolveCompleted)


def test_an_error_returned_by_the_frontend_fails_the_build(daemon: Daemon, rootfs: Path) -> None:
    class Broken(Exception):
        pass

    def frontend(gw: Gateway) -> Ref:
        gw.solve(_run("echo kept > /k", "RUN kept").marshal())
        raise Broken("the frontend gave up")

    ref = "gwerr" + uuid.uuid4().hex[:8]
    with pytest.raises(Broken):
        daemon.client().build(frontend, local_dirs={"rootfs": rootfs}, build_ref=ref)
    events = daemon.events(ref)
    assert isinstance(events[-1], ev.SolveFailed) and events[-1].error == "the frontend gave up"
    assert _leaks_empty(daemon)
