"""Builds through the daemon: Solve and exports, Status from the log, errors, workers (run as root)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest

from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.api.model import SolveOptions, StatusUpdate
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.solver.errors import SolveError
from tests.integration.api.conftest import Daemon, run_definition, solve_options

pytestmark = pytest.mark.root


def test_a_build_over_the_daemon_exports_its_result(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    definition = tmp_path / "def.json"
    definition.write_bytes(
        run_definition("echo hello-from-daemon; mkdir -p /out && echo built > /out/f", "RUN make it")
    )
    out = tmp_path / "out"
    tar = tmp_path / "out.tar"
    done = daemon.cli(
        "build",
        "--llb",
        str(definition),
        "--local",
        f"rootfs={rootfs}",
        "--output",
        f"type=local,dest={out}",
        "--output",
        f"type=tar,dest={tar}",
        "--progress",
        "plain",
        "--ref",
        "over-daemon",
    )
    assert (out / "out" / "f").read_text() == "built\n"
    assert tar.stat().st_size > 0
    # The #N lines come from the Status stream, in the shape the embedded engine prints.
    lines = done.stderr.splitlines()
    assert "#1 local://rootfs" in lines
    assert "#2 RUN make it" in lines
    assert any(line.startswith("#2 ") and line.endswith(" hello-from-daemon") for line in lines)
    assert any(line.startswith("#2 DONE ") for line in lines)
    assert "build over-daemon completed" in lines
    events = daemon.events("over-daemon")
    # The CLI sent the dir over gRPC: the request names it by the manifest the daemon received.
    received = next(e for e in events if isinstance(e, ev.LocalContextReceived))
    assert received.source == "upload" and received.name == "rootfs"
    assert isinstance(events[0], ev.SolveRequested)
    assert events[0].local_dirs == {"rootfs": received.manifest_digest}
    completed = next(e for e in events if isinstance(e, ev.SolveCompleted))
    # Both outputs were staged for the client, which wrote them (tests/integration/api/test_outputs.py).
    response = completed.exporter_response
    assert (response["local.dest"], response["tar.dest"]) == (str(out), str(tar))
    assert response["local.to"] == response["tar.to"] == "client"
    assert daemon.stored("over-daemon")[0].actor  # who asked is recorded


def test_status_after_the_build_shows_the_whole_build(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    options = solve_options(rootfs, "echo one; echo two", "RUN two lines")
    client.solve(options)
    late = list(client.status(options.build_ref))
    logged = daemon.stored(options.build_ref)
    final = next(i for i, s in enumerate(logged) if s.type == "SolveCompleted")
    assert [(u.position, u.type) for u in late] == [(s.position, s.type) for s in logged[: final + 1]]
    text = b"".join(u.log.data for u in late if u.log is not None)
    assert text == b"one\ntwo\n"
    started = [u.vertex for u in late if u.vertex is not None and u.vertex.state == "started"]
    assert [v.name for v in started] == ["local://rootfs", "RUN two lines"]
    assert late[-1].build is not None and late[-1].build.status == "completed"

    # A client that reconnects asks only for what it has not seen.
    middle = late[len(late) // 2].position
    resumed = list(client.status(options.build_ref, after_position=middle))
    assert [u.position for u in resumed] == [u.position for u in late if u.position > middle]


def test_status_while_the_build_runs_follows_it_to_its_end(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    options = solve_options(rootfs, "echo start; sleep 1; echo end", "RUN slow")
    seen: list[StatusUpdate] = []
    # Asked for before the build exists: the daemon waits for it to appear.
    stream = client.status(options.build_ref)
    watcher = threading.Thread(target=lambda: seen.extend(stream))
    watcher.start()
    client.solve(options)
    watcher.join(30)
    assert not watcher.is_alive(), "the Status stream did not end with the build"
    assert seen[0].type == "SolveRequested"
    assert seen[-1].type == "SolveCompleted"
    assert b"".join(u.log.data for u in seen if u.log) == b"start\nend\n"


def test_status_of_an_unknown_build_is_not_found(daemon: Daemon) -> None:
    with pytest.raises(NotFound, match="no build 'nosuch'"):
        list(daemon.client().status("nosuch"))


def test_a_failing_step_is_a_solve_error_with_its_vertex_exit_code_and_output(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    options = solve_options(rootfs, "echo about to fail; exit 3", "RUN fail")
    with pytest.raises(SolveError) as info:
        daemon.client().solve(options)
    error = info.value
    assert error.build_ref == options.build_ref
    assert error.name == "RUN fail"
    assert error.vertex is not None and error.vertex.startswith("sha256:")
    assert error.exit_code == 3
    assert "about to fail" in error.log_tail
    failed = next(e for e in daemon.events(options.build_ref) if isinstance(e, ev.SolveFailed))
    assert failed.vertex == error.vertex and failed.exit_code == 3

    # On the wire: the status code of the table, and the structure in the trailers.
    with grpc.insecure_channel(f"unix:{daemon.addr.removeprefix('unix://')}") as channel:
        stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
        again = solve_options(rootfs, "exit 4", "RUN fail again")
        with pytest.raises(grpc.RpcError) as raw:
            stub.Solve(
                pb.SolveRequest(
                    ref=again.build_ref, definition=again.definition_json, local_dirs={"rootfs": str(rootfs)}
                )
            )
        assert raw.value.code() == grpc.StatusCode.UNKNOWN
        detail = json.loads(dict(raw.value.trailing_metadata())["buildsvc-error"])
        assert detail["type"] == "SolveError"
        assert detail["attrs"]["exit_code"] == 4 and detail["attrs"]["name"] == "RUN fail again"

    # And on the command line: exit status 1 and the same message as without a daemon.
    definition = tmp_path / "fail.json"
    definition.write_bytes(options.definition_json)
    cli = daemon.cli("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", expect=1)
    assert "failed at 'RUN fail' (exit code 3)" in cli.stderr
    assert "about to fail" in cli.stderr


def test_a_bad_request_is_invalid_input_and_the_daemon_stays_up(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    bad = solve_options(rootfs, "true", "RUN x", exporters=({"type": "local", "dest": "relative/dir"},))
    with pytest.raises(InvalidInput, match="absolute path"):
        client.solve(bad)
    with pytest.raises(InvalidInput):
        client.solve(SolveOptions(build_ref="r", definition_json=b"{"))
    assert [w.name for w in client.list_workers()]  # still serving


def test_workers_and_info_over_the_daemon(daemon: Daemon) -> None:
    listed = json.loads(daemon.cli("workers", "--format", "json").stdout)
    assert [w["name"] for w in listed] == ["runc-overlay", "crun-overlay", "runc-native"]
    assert listed[0]["executor"] == "runc" and listed[0]["snapshotter"] == "overlay"
    assert listed[0]["platforms"] and listed[0]["labels"]["buildsvc.worker.executor"] == "runc"
    info = daemon.client().info()
    started = daemon.stored(f"daemon-{info.daemon_id}")[0].decode()
    assert isinstance(started, ev.DaemonStarted) and started.pid == info.pid
    assert info.root == str(daemon.root)


def test_disk_usage_and_build_history(daemon: Daemon, rootfs: Path) -> None:
    client = daemon.client()
    options = solve_options(rootfs, "echo x > /x", "RUN write")
    client.solve(options)
    usage = client.disk_usage()
    assert usage and all(r.state == "committed" for r in usage)
    built = [e.snapshot_id for e in daemon.events(options.build_ref) if isinstance(e, ev.VertexCompleted)]
    by_id = {r.snapshot_id: r for r in usage}
    assert set(built) <= set(by_id)
    # Only the cache record still holds each result: the solve released its refs when it ended.
    assert [by_id[s].active_refs for s in built] == [1] * len(built)
    history = list(client.build_history(build_ref=options.build_ref))
    assert len(history) <= 1  # the builds projection catches up in the background
    follow = client.build_history(follow=True)
    later = solve_options(rootfs, "true", "RUN later")
    threading.Thread(target=client.solve, args=(later,), daemon=True).start()
    kinds = []
    for event in follow:
        if event.record.build_ref == later.build_ref:
            kinds.append((event.type, event.record.status))
            if event.type == "complete":
                break
    assert kinds == [("started", "running"), ("complete", "completed")]
